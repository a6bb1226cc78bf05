// Command vmexec runs a program, typically a Go test binary, inside a VM
// booting one kernel of the matrix, in the current working directory, and
// exits with the program's exit code. It is meant for go test -exec:
//
//	go build -o /tmp/vmexec ./test/vm/cmd/vmexec
//	SVCTRACE_VM_KERNEL=6.12 go test -exec /tmp/vmexec ./pkg/...
//
// With the kernel "host" it execs the program directly.
//
// Flags (before the program): --kernel NAME (default $SVCTRACE_VM_KERNEL),
// --matrix FILE, --modules LIST (default: the matrix's modules), --share DIR,
// --timeout D. Exit code 125 means that vmexec itself failed.
package main

import (
	"cmp"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/svctrace/svctrace/test/vm"
)

// exitHarness is the exit code when vmexec, not the program, failed.
const exitHarness = 125

// Environment variables of vmexec.
const (
	envKernel  = "SVCTRACE_VM_KERNEL"
	envModules = "SVCTRACE_VM_MODULES" // comma-separated; overrides the matrix's list
	envTimeout = "SVCTRACE_VM_TIMEOUT"
	envVerbose = "SVCTRACE_VM_VERBOSE"
)

// stringsFlag collects a repeatable flag.
type stringsFlag []string

func (s *stringsFlag) String() string     { return strings.Join(*s, ",") }
func (s *stringsFlag) Set(v string) error { *s = append(*s, v); return nil }

func main() {
	code, err := run()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmexec:", err)
		os.Exit(exitHarness)
	}
	os.Exit(code)
}

func run() (int, error) {
	var (
		kernel     = flag.String("kernel", os.Getenv(envKernel), "kernel of the matrix to boot, or \"host\" ($"+envKernel+")")
		matrixFile = flag.String("matrix", "", "kernel matrix file (default: the repository's, else the compiled-in copy)")
		modules    = flag.String("modules", "", "comma-separated modules to modprobe first; \"\" for none (default: $"+envModules+", else the matrix's)")
		timeout    = flag.Duration("timeout", 0, "limit for boot and run (default: $"+envTimeout+", else -test.timeout + 5m, else 30m)")
		shares     stringsFlag
	)
	flag.Var(&shares, "share", "host directory the program may write to (repeatable)")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: vmexec [flags] program [args...]\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	args := flag.Args()
	if len(args) == 0 {
		flag.Usage()
		return 0, fmt.Errorf("no program")
	}

	var m *vm.Matrix
	var err error
	if *matrixFile != "" {
		m, err = vm.ReadMatrix(*matrixFile)
	} else {
		m, _, err = vm.LoadDefaultMatrix()
	}
	if err != nil {
		return 0, err
	}
	if *kernel == "" {
		names := make([]string, 0, len(m.Kernels))
		for _, k := range m.Kernels {
			names = append(names, k.Name)
		}
		return 0, fmt.Errorf("no kernel: set %s or --kernel (one of %s)", envKernel, strings.Join(names, ", "))
	}
	k, err := m.Kernel(*kernel)
	if err != nil {
		return 0, err
	}
	if k.IsHost() {
		bin, err := lookPath(args[0])
		if err != nil {
			return 0, err
		}
		return 0, syscall.Exec(bin, args, os.Environ())
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGQUIT)
	defer stop()
	cache, err := vm.DefaultCacheDir()
	if err != nil {
		return 0, err
	}
	img, err := k.Prepare(ctx, cache)
	if err != nil {
		return 0, err
	}
	cwd, err := os.Getwd()
	if err != nil {
		return 0, err
	}
	bin, err := lookPath(args[0])
	if err != nil {
		return 0, err
	}
	args[0] = bin

	mods := m.Modules
	if v, ok := os.LookupEnv(envModules); ok {
		mods = splitList(v)
	}
	flag.Visit(func(f *flag.Flag) {
		if f.Name == "modules" {
			mods = splitList(*modules)
		}
	})
	if *timeout == 0 {
		*timeout = defaultTimeout(args)
	}
	res, err := img.Run(ctx, vm.RunOptions{
		Args:       args,
		Dir:        cwd,
		Env:        vm.PassEnv(os.Environ()),
		Modules:    mods,
		Stdout:     os.Stdout,
		Stderr:     os.Stderr,
		Timeout:    *timeout,
		SharedDirs: sharedDirs(cwd, args, shares),
	})
	if err != nil {
		return 0, err
	}
	if os.Getenv(envVerbose) == "1" {
		fmt.Fprintf(os.Stderr, "vmexec: %s (%s): boot %.1fs, total %.1fs, exit %d\n",
			k.Name, img.Release, res.Boot.Seconds(), res.Duration.Seconds(), res.ExitCode)
	}
	return res.ExitCode, nil
}

// lookPath resolves the program the way a shell would, to an absolute path
// the guest sees at the same place.
func lookPath(p string) (string, error) {
	if !strings.Contains(p, "/") {
		var err error
		if p, err = exec.LookPath(p); err != nil {
			return "", err
		}
	}
	return filepath.Abs(p)
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// outputFlags are go test flags naming files the test binary writes.
func outputFlags() []string {
	return []string{
		"coverprofile", "gocoverdir", "testlogfile", "outputdir", "cpuprofile",
		"memprofile", "blockprofile", "mutexprofile", "trace", "fuzzcachedir",
	}
}

// sharedDirs returns the host directories the program must be able to write
// to: GOCOVERDIR, the directories of go test's output flags, and --share.
func sharedDirs(cwd string, args []string, extra []string) []string {
	var dirs []string
	add := func(d string, isFile bool) {
		if d == "" {
			return
		}
		if !filepath.IsAbs(d) {
			d = filepath.Join(cwd, d)
		}
		if isFile {
			d = filepath.Dir(d)
		}
		if fi, err := os.Stat(d); err == nil && fi.IsDir() {
			dirs = append(dirs, filepath.Clean(d))
		}
	}
	add(os.Getenv("GOCOVERDIR"), false)
	for _, d := range extra {
		add(d, false)
	}
	for i, a := range args[1:] {
		name, val, hasVal := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !strings.HasPrefix(a, "-") {
			continue
		}
		name = strings.TrimPrefix(name, "test.")
		if !slices.Contains(outputFlags(), name) {
			continue
		}
		if !hasVal && i+2 < len(args) {
			val = args[i+2]
		}
		dirOnly := name == "gocoverdir" || name == "outputdir" || name == "fuzzcachedir"
		add(val, !dirOnly)
	}
	// Parents before children, so that nested mounts stack correctly.
	slices.SortFunc(dirs, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(a), len(b)), strings.Compare(a, b))
	})
	return slices.Compact(dirs)
}

func defaultTimeout(args []string) time.Duration {
	if v := os.Getenv(envTimeout); v != "" {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	for _, a := range args[1:] {
		if v, ok := strings.CutPrefix(a, "-test.timeout="); ok {
			if d, err := time.ParseDuration(v); err == nil && d > 0 {
				return d + 5*time.Minute
			}
		}
	}
	return vm.DefaultTimeout
}
