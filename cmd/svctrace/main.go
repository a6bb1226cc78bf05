// Command svctrace traces a Kubernetes Service's packets through NAT,
// routing and drops with eBPF, and names what went wrong.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/svctrace/svctrace/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Main(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
