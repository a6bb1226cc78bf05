// Command vmkernels maintains and warms up the kernel matrix of the VM test
// harness (test/vm/kernels.json).
//
//	go run ./test/vm/cmd/vmkernels            # list the matrix
//	go run ./test/vm/cmd/vmkernels -update    # re-pin versions and checksums
//	go run ./test/vm/cmd/vmkernels -check     # are the pinned versions still on the mirror?
//	go run ./test/vm/cmd/vmkernels -prepare   # fetch and build all images into the cache
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/svctrace/svctrace/test/vm"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "vmkernels:", err)
		os.Exit(1)
	}
}

func run() error {
	var (
		matrixFile = flag.String("matrix", "", "kernel matrix file (default: test/vm/kernels.json of this repository)")
		cacheDir   = flag.String("cache", "", "cache directory (default: $SVCTRACE_CACHE or ~/.cache/svctrace)")
		update     = flag.Bool("update", false, "re-resolve the meta-packages and rewrite the matrix file")
		check      = flag.Bool("check", false, "fail if a pinned version is gone from the mirror")
		prepare    = flag.Bool("prepare", false, "fetch, verify and build every kernel image into the cache")
		kernels    = flag.String("kernels", "", "comma-separated kernel names for -prepare (default: all)")
	)
	flag.Parse()
	if flag.NArg() != 0 {
		return fmt.Errorf("unexpected arguments %q", flag.Args())
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	file := *matrixFile
	if file == "" {
		f, err := vm.FindMatrixFile(".")
		if err != nil {
			return err
		}
		file = f
	}
	m, err := vm.ReadMatrix(file)
	if err != nil {
		return err
	}
	cache := *cacheDir
	if cache == "" {
		if cache, err = vm.DefaultCacheDir(); err != nil {
			return err
		}
	}

	switch {
	case *update:
		changed, err := m.Update(ctx, cache, os.Stdout)
		if err != nil {
			return err
		}
		if !changed {
			fmt.Println("matrix is current")
			return nil
		}
		b, err := m.Marshal()
		if err != nil {
			return err
		}
		if err := os.WriteFile(file, b, 0o644); err != nil {
			return fmt.Errorf("write matrix: %w", err)
		}
		fmt.Printf("wrote %s; rebuild vmexec binaries, which embed it\n", file)
		return nil
	case *check:
		if err := m.Check(ctx, cache); err != nil {
			return err
		}
		fmt.Println("all pinned kernels are on the mirror")
		return nil
	case *prepare:
		var errs []error
		for _, k := range m.Kernels {
			if *kernels != "" && !slices.Contains(strings.Split(*kernels, ","), k.Name) {
				continue
			}
			start := time.Now()
			img, err := k.Prepare(ctx, cache)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			fmt.Printf("%-6s %-28s %s (%.1fs)\n", k.Name, img.Release, img.Dir, time.Since(start).Seconds())
		}
		return errors.Join(errs...)
	}
	tw := tabwriter.NewWriter(os.Stdout, 0, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "NAME\tSUITE\tPACKAGE\tVERSION\tN/A")
	for _, k := range m.Kernels {
		var na []string
		for pat, why := range k.NA {
			na = append(na, pat+": "+why)
		}
		slices.Sort(na)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", k.Name, dash(k.Suite), dash(k.Package), dash(k.Version), strings.Join(na, "; "))
	}
	return tw.Flush()
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
