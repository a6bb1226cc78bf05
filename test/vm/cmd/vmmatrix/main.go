// Command vmmatrix runs Go test packages on every kernel of the matrix and in
// every cell (combination of axis values, e.g. backend × proxy mode), then
// prints one row per kernel and one column per cell.
//
//	go run ./test/vm/cmd/vmmatrix ./pkg/...
//	go run ./test/vm/cmd/vmmatrix -kernels 6.12,host -json ./pkg/... > matrix.json
//
// Test binaries are built once on the host (go test -c). Each (kernel, cell)
// boots one fresh VM that runs all the packages' binaries one after the other
// (-isolate: one VM per package). The exit code is 1 if any cell failed.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"os/signal"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/svctrace/svctrace/test/vm"
)

// harnessPkg is this harness; its tests are not run in the matrix.
const harnessPkg = "github.com/svctrace/svctrace/test/vm"

type options struct {
	matrixFile string
	kernels    string
	cells      string
	run        string
	parallel   int
	timeout    time.Duration
	jsonOut    bool
	verbose    bool
	isolate    bool
	once       bool
	logDir     string
	packages   []string
}

func main() {
	var o options
	flag.StringVar(&o.matrixFile, "matrix", "", "kernel matrix file (default: test/vm/kernels.json of this repository)")
	flag.StringVar(&o.kernels, "kernels", "", "comma-separated kernels to run (default: all)")
	flag.StringVar(&o.cells, "cells", "", "comma-separated cell patterns to run, e.g. 'kprobe/*' (default: all)")
	flag.StringVar(&o.run, "run", "", "passed to the test binaries as -test.run")
	flag.IntVar(&o.parallel, "parallel", 1, "VMs to run at once")
	flag.DurationVar(&o.timeout, "timeout", 10*time.Minute, "limit per test binary (-test.timeout)")
	flag.BoolVar(&o.jsonOut, "json", false, "print the table as JSON on stdout (the text table goes to stderr)")
	flag.BoolVar(&o.verbose, "v", false, "stream the test output (-test.v) to stderr")
	flag.BoolVar(&o.once, "once", false, "ignore the axes: run each package once per kernel (cell \"default\")")
	flag.BoolVar(&o.isolate, "isolate", false, "boot a VM per package (default: one VM per kernel and cell runs all packages)")
	flag.StringVar(&o.logDir, "logdir", "", "keep each run's output in this directory")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: vmmatrix [flags] packages...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	o.packages = flag.Args()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	failed, err := run(ctx, o)
	if err != nil {
		fmt.Fprintln(os.Stderr, "vmmatrix:", err)
		os.Exit(2)
	}
	if failed {
		os.Exit(1)
	}
}

// testPkg is a package whose test binary was built.
type testPkg struct {
	ImportPath string
	Dir        string
	Binary     string
}

// job is one VM boot (or one host run): the test binaries of one cell on
// one kernel, run one after the other.
type job struct {
	row  *vm.Row
	img  *vm.Image
	cell vm.Cell
	pkgs []testPkg
}

func run(ctx context.Context, o options) (failed bool, err error) {
	if len(o.packages) == 0 {
		return false, errors.New("no packages given")
	}
	if o.parallel < 1 {
		return false, errors.New("-parallel must be at least 1")
	}
	if o.matrixFile == "" {
		if o.matrixFile, err = vm.FindMatrixFile("."); err != nil {
			return false, err
		}
	}
	m, err := vm.ReadMatrix(o.matrixFile)
	if err != nil {
		return false, err
	}
	kernels, err := selectKernels(m, o.kernels)
	if err != nil {
		return false, err
	}
	all := m.Cells()
	if o.once {
		all = (&vm.Matrix{}).Cells()
	}
	cells, err := selectCells(all, o.cells)
	if err != nil {
		return false, err
	}
	cache, err := vm.DefaultCacheDir()
	if err != nil {
		return false, err
	}
	if o.logDir != "" {
		if err := os.MkdirAll(o.logDir, 0o755); err != nil {
			return false, err
		}
	}

	start := time.Now()
	buildDir, err := os.MkdirTemp("", "svctrace-vmmatrix-")
	if err != nil {
		return false, err
	}
	defer os.RemoveAll(buildDir)
	pkgs, err := build(ctx, o.packages, buildDir)
	if err != nil {
		return false, err
	}
	if len(pkgs) == 0 {
		return false, errors.New("none of the packages has tests")
	}
	fmt.Fprintf(os.Stderr, "vmmatrix: built %d test binaries in %.1fs\n", len(pkgs), time.Since(start).Seconds())

	table := &vm.Table{Started: start}
	for _, c := range cells {
		table.Cells = append(table.Cells, c.Name)
	}
	var jobs []job
	for _, k := range kernels {
		row := &vm.Row{Kernel: k.Name, Cells: map[string]*vm.CellResult{}}
		table.Rows = append(table.Rows, row)
		t := time.Now()
		img, err := k.Prepare(ctx, cache)
		if err != nil {
			if ctx.Err() != nil {
				return false, err
			}
			fmt.Fprintf(os.Stderr, "vmmatrix: %v\n", err)
			for _, c := range cells {
				row.Cells[c.Name] = &vm.CellResult{Outcome: vm.Outcome{Status: vm.StatusFail, Reason: "kernel not prepared"}}
			}
			continue
		}
		row.Release = img.Release
		if !k.IsHost() {
			fmt.Fprintf(os.Stderr, "vmmatrix: %s: %s ready in %.1fs\n", k.Name, img.Release, time.Since(t).Seconds())
		}
		for _, c := range cells {
			if why, ok := k.NAReason(c.Name); ok {
				row.Cells[c.Name] = &vm.CellResult{Outcome: vm.Outcome{Status: vm.StatusNA, Reason: why}}
				continue
			}
			row.Cells[c.Name] = &vm.CellResult{}
			if o.isolate {
				for _, p := range pkgs {
					jobs = append(jobs, job{row: row, img: img, cell: c, pkgs: []testPkg{p}})
				}
			} else {
				jobs = append(jobs, job{row: row, img: img, cell: c, pkgs: pkgs})
			}
		}
	}

	var mu sync.Mutex // guards the table and stderr
	work := make(chan job)
	var wg sync.WaitGroup
	for range o.parallel {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range work {
				results, outs := runJob(ctx, o, m, j, &mu)
				mu.Lock()
				cr := j.row.Cells[j.cell.Name]
				cr.Packages = append(cr.Packages, results...)
				for i, res := range results {
					fmt.Fprintf(os.Stderr, "vmmatrix: %-6s %-20s %s: %s (%.1fs)\n",
						j.row.Kernel, j.cell.Name, res.Package, res.Outcome, res.Seconds)
					if res.Status == vm.StatusFail && !o.verbose {
						os.Stderr.Write(indent(outs[i]))
					}
				}
				mu.Unlock()
			}
		}()
	}
feed:
	for _, j := range jobs {
		select {
		case work <- j:
		case <-ctx.Done():
			break feed
		}
	}
	close(work)
	wg.Wait()
	if ctx.Err() != nil {
		return false, ctx.Err()
	}
	for _, r := range table.Rows {
		for _, c := range r.Cells {
			if len(c.Packages) == 0 {
				continue
			}
			slices.SortFunc(c.Packages, func(a, b vm.PackageResult) int { return strings.Compare(a.Package, b.Package) })
			outs := make([]vm.Outcome, len(c.Packages))
			for i, p := range c.Packages {
				outs[i] = p.Outcome
			}
			c.Outcome = vm.Combine(outs)
		}
	}
	table.Seconds = round(time.Since(start).Seconds())

	text := io.Writer(os.Stdout)
	if o.jsonOut {
		text = os.Stderr
	}
	fmt.Fprintln(text)
	if err := table.WriteText(text); err != nil {
		return false, err
	}
	fmt.Fprintf(text, "\n%d kernels x %d cells in %.0fs\n", len(table.Rows), len(table.Cells), table.Seconds)
	if o.jsonOut {
		if err := table.WriteJSON(os.Stdout); err != nil {
			return false, err
		}
	}
	return table.Failed(), nil
}

func selectKernels(m *vm.Matrix, list string) ([]vm.Kernel, error) {
	if list == "" {
		return m.Kernels, nil
	}
	var out []vm.Kernel
	for name := range strings.SplitSeq(list, ",") {
		k, err := m.Kernel(strings.TrimSpace(name))
		if err != nil {
			return nil, err
		}
		out = append(out, k)
	}
	return out, nil
}

func selectCells(all []vm.Cell, list string) ([]vm.Cell, error) {
	if list == "" {
		return all, nil
	}
	var out []vm.Cell
	for _, c := range all {
		for pat := range strings.SplitSeq(list, ",") {
			ok, err := path.Match(strings.TrimSpace(pat), c.Name)
			if err != nil {
				return nil, fmt.Errorf("-cells: %w", err)
			}
			if ok {
				out = append(out, c)
				break
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("-cells %q matches no cell", list)
	}
	return out, nil
}

// build compiles each package's test binary once, on the host.
func build(ctx context.Context, patterns []string, dir string) ([]testPkg, error) {
	args := append([]string{"list", "-e", "-json=ImportPath,Dir,TestGoFiles,XTestGoFiles,Error"}, patterns...)
	out, err := exec.CommandContext(ctx, "go", args...).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return nil, fmt.Errorf("go list: %w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return nil, fmt.Errorf("go list: %w", err)
	}
	var pkgs []testPkg
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p struct {
			ImportPath   string
			Dir          string
			TestGoFiles  []string
			XTestGoFiles []string
			Error        *struct{ Err string }
		}
		if err := dec.Decode(&p); err != nil {
			return nil, fmt.Errorf("go list: %w", err)
		}
		if p.Error != nil {
			return nil, fmt.Errorf("package %s: %s", p.ImportPath, p.Error.Err)
		}
		if p.ImportPath == harnessPkg || strings.HasPrefix(p.ImportPath, harnessPkg+"/") {
			// Its tests boot VMs themselves.
			fmt.Fprintf(os.Stderr, "vmmatrix: %s: left out (the harness itself)\n", p.ImportPath)
			continue
		}
		if len(p.TestGoFiles)+len(p.XTestGoFiles) == 0 {
			fmt.Fprintf(os.Stderr, "vmmatrix: %s: no test files\n", p.ImportPath)
			continue
		}
		bin := filepath.Join(dir, fmt.Sprintf("%02d-%s.test", len(pkgs), path.Base(p.ImportPath)))
		cmd := exec.CommandContext(ctx, "go", "test", "-c", "-o", bin, p.ImportPath)
		cmd.Stdout = os.Stderr
		cmd.Stderr = os.Stderr
		if err := cmd.Run(); err != nil {
			return nil, fmt.Errorf("go test -c %s: %w", p.ImportPath, err)
		}
		pkgs = append(pkgs, testPkg{ImportPath: p.ImportPath, Dir: p.Dir, Binary: bin})
	}
	return pkgs, nil
}

// lockedWriter serialises writes of concurrent runs to one writer.
type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

// runJob boots one VM (or runs on the host) and runs the job's test
// binaries in it, each in its package directory, with its output and exit
// status in a directory shared with the host.
func runJob(ctx context.Context, o options, m *vm.Matrix, j job, mu *sync.Mutex) ([]vm.PackageResult, [][]byte) {
	results := make([]vm.PackageResult, len(j.pkgs))
	outs := make([][]byte, len(j.pkgs))
	fail := func(reason string, detail []byte) ([]vm.PackageResult, [][]byte) {
		for i, p := range j.pkgs {
			results[i] = vm.PackageResult{Package: p.ImportPath, Outcome: vm.Outcome{Status: vm.StatusFail, Reason: reason}}
			outs[i] = detail
		}
		return results, outs
	}
	dir, err := os.MkdirTemp("", "svctrace-vmmatrix-run-")
	if err != nil {
		return fail("harness: "+err.Error(), nil)
	}
	defer os.RemoveAll(dir)

	testArgs := []string{"-test.v", "-test.count=1", "-test.timeout=" + o.timeout.String()}
	if run := m.RunFor(j.cell.Name, o.run); run != "" {
		testArgs = append(testArgs, "-test.run="+run)
	}
	var script strings.Builder
	for i, p := range j.pkgs {
		base := filepath.Join(dir, fmt.Sprint(i))
		// The braces keep the binary's exit status, which a pipe into
		// tee would lose in a POSIX shell.
		fmt.Fprintf(&script, "echo %s\n", shq("=== vmmatrix: "+p.ImportPath))
		fmt.Fprintf(&script, "date +%%s.%%N > %s\n", shq(base+".start"))
		fmt.Fprintf(&script, "{ cd %s && %s %s; echo $? > %s; } 2>&1 | tee %s\n",
			shq(p.Dir), shq(p.Binary), shJoin(testArgs), shq(base+".status"), shq(base+".log"))
		fmt.Fprintf(&script, "date +%%s.%%N > %s\n", shq(base+".end"))
	}

	var env []string
	var mods []string
	if j.img.Kernel.IsHost() {
		env = os.Environ()
	} else {
		env = vm.PassEnv(os.Environ())
		mods = m.Modules
	}
	env = append(env, j.cell.Env...)
	env = append(env, "SVCTRACE_VM_KERNEL="+j.img.Kernel.Name)
	shared := []string{dir}
	if d := os.Getenv("GOCOVERDIR"); d != "" {
		shared = append(shared, d)
	}
	var stream io.Writer = io.Discard
	if o.verbose {
		prefix := fmt.Sprintf("[%s %s] ", j.row.Kernel, j.cell.Name)
		stream = &prefixWriter{prefix: prefix, w: lockedWriter{mu, os.Stderr}}
	}
	// Stdout and stderr are copied by different goroutines.
	var outMu sync.Mutex
	w := lockedWriter{&outMu, stream}
	var harness bytes.Buffer
	r, err := j.img.Run(ctx, vm.RunOptions{
		Args:       []string{"/bin/sh", "-c", script.String()},
		Env:        env,
		Modules:    mods,
		Stdout:     w,
		Stderr:     lockedWriter{&outMu, io.MultiWriter(&harness, stream)},
		Timeout:    time.Duration(len(j.pkgs))*(o.timeout+time.Minute) + 2*time.Minute,
		SharedDirs: shared,
	})
	if err != nil {
		return fail("harness: "+firstLine(err.Error()), []byte(err.Error()+"\n"))
	}
	boot := round(r.Boot.Seconds())
	for i, p := range j.pkgs {
		base := filepath.Join(dir, fmt.Sprint(i))
		res := vm.PackageResult{Package: p.ImportPath, Boot: boot}
		log, _ := os.ReadFile(base + ".log")
		status, err := os.ReadFile(base + ".status")
		code, convErr := strconv.Atoi(strings.TrimSpace(string(status)))
		switch {
		case err != nil || convErr != nil:
			res.Outcome = vm.Outcome{Status: vm.StatusFail, Reason: "harness: no exit status (did the VM die?)"}
			log = append(log, harness.Bytes()...)
		default:
			res.ExitCode = code
			res.Outcome = vm.Classify(code, log)
		}
		res.Seconds = round(elapsed(base+".start", base+".end"))
		if o.logDir != "" {
			name := strings.NewReplacer("/", "_", ".", "_").Replace(
				fmt.Sprintf("%s__%s__%s", j.row.Kernel, j.cell.Name, p.ImportPath)) + ".log"
			res.Log = filepath.Join(o.logDir, name)
			if err := os.WriteFile(res.Log, log, 0o644); err != nil {
				fmt.Fprintf(os.Stderr, "vmmatrix: %v\n", err)
			}
		}
		results[i], outs[i] = res, log
	}
	return results, outs
}

// elapsed reads two "date +%s.%N" stamps the guest wrote.
func elapsed(start, end string) float64 {
	read := func(f string) float64 {
		b, err := os.ReadFile(f)
		if err != nil {
			return 0
		}
		v, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
		return v
	}
	s, e := read(start), read(end)
	if s == 0 || e < s {
		return 0
	}
	return e - s
}

// shq quotes s for POSIX sh.
func shq(s string) string { return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'" }

func shJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shq(a)
	}
	return strings.Join(q, " ")
}

func round(s float64) float64 { return math.Round(s*100) / 100 }

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

func indent(b []byte) []byte {
	var out bytes.Buffer
	for l := range bytes.Lines(b) {
		out.WriteString("    ")
		out.Write(l)
	}
	if len(b) > 0 && b[len(b)-1] != '\n' {
		out.WriteByte('\n')
	}
	return out.Bytes()
}

// prefixWriter prefixes every line.
type prefixWriter struct {
	prefix string
	w      io.Writer
	mid    bool
}

func (p *prefixWriter) Write(b []byte) (int, error) {
	var out bytes.Buffer
	for l := range bytes.Lines(b) {
		if !p.mid {
			out.WriteString(p.prefix)
		}
		out.Write(l)
		p.mid = l[len(l)-1] != '\n'
	}
	if _, err := p.w.Write(out.Bytes()); err != nil {
		return 0, err
	}
	return len(b), nil
}
