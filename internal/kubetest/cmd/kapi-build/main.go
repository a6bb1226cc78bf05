// Command kapi-build builds (or finds in the cache) the etcd, kube-apiserver
// and kube-proxy binaries the Kubernetes API tests run, and prints their
// folder. CI runs it before the tests so that no test spends minutes
// compiling (see hack/build-kapi.sh).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/svctrace/svctrace/internal/kubetest"
)

func main() {
	check := flag.Bool("check", false, "only report whether the binaries are cached (exit 1 if not)")
	flag.Parse()
	if *check {
		b, ok := kubetest.Cached()
		if !ok {
			fmt.Fprintln(os.Stderr, "kapi-build: not cached")
			os.Exit(1)
		}
		fmt.Println(b.Dir)
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	begin := time.Now()
	b, err := kubetest.Build(ctx, func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, format+"\n", args...)
	})
	if err != nil {
		fmt.Fprintf(os.Stderr, "kapi-build: %v\n", err)
		stop()
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "kapi-build: %s ready in %s\n", b.Version, time.Since(begin).Round(time.Second))
	fmt.Println(b.Dir)
}
