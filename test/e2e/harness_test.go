package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/kernel"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/testenv"
	"github.com/svctrace/svctrace/pkg/event"
)

// buildBinary builds svctrace once per test process, the way users get it.
var buildBinary = sync.OnceValues(func() (string, error) {
	dir, err := os.MkdirTemp("", "svctrace-e2e-")
	if err != nil {
		return "", err
	}
	// Tests also run the binary as an unprivileged user.
	if err := os.Chmod(dir, 0o755); err != nil {
		return "", err
	}
	bin := filepath.Join(dir, "svctrace")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/svctrace/svctrace/cmd/svctrace").CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, out)
	}
	return bin, nil
})

// binary returns the svctrace binary: $SVCTRACE_BIN (the VM matrix passes a
// prebuilt one) or a fresh build.
func binary(t *testing.T) string {
	t.Helper()
	if b := os.Getenv("SVCTRACE_BIN"); b != "" {
		return b
	}
	if os.Getenv("SVCTRACE_VM_GUEST") != "" {
		t.Fatal("inside a test VM: set SVCTRACE_BIN to a svctrace binary built on the host (make vm-matrix does); building under emulation is too slow")
	}
	b, err := buildBinary()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// backend is the backend under test: $SVCTRACE_TEST_BACKEND, default auto.
func backend() string {
	if b := os.Getenv("SVCTRACE_TEST_BACKEND"); b != "" {
		return b
	}
	return "auto"
}

// requireBackend skips (with the SVCTRACE-NA marker the VM matrix reads)
// when the kernel cannot provide the backend under test for the NAT hook,
// and returns the event source NAT steps must come from.
func requireBackend(t *testing.T) event.Source {
	src, _ := requirePlan(t)
	return src
}

// requirePlan is requireBackend, also returning which hooks the backend
// attaches on this kernel (hook -> implementation).
func requirePlan(t *testing.T) (event.Source, map[string]string) {
	t.Helper()
	testenv.RequireRoot(t)
	b, err := attach.ParseBackend(backend())
	if err != nil {
		t.Fatal(err)
	}
	p, err := attach.Load(attach.Options{Backend: b}) // attach too: some programs load but cannot attach (fentry with 7 arguments on 6.1)
	if err != nil {
		t.Fatalf("load probes: %v", err)
	}
	defer p.Close()
	plan := map[string]string{}
	for _, st := range p.Plan() {
		plan[st.Hook] = st.Impl
	}
	for _, st := range p.Plan() {
		if st.Hook != "nat" {
			continue
		}
		switch st.Impl {
		case "fentry":
			return event.SourceFentry, plan
		case "kprobe":
			return event.SourceKprobe, plan
		case "netfilter":
			if b == attach.BackendNetfilter || b == attach.BackendAuto {
				return event.SourceNetfilter, plan
			}
		}
		reason := fmt.Sprintf("backend %s cannot trace NAT on kernel %s: %s", b, kernel.Release(), strings.Join(st.Tried, "; "))
		fmt.Printf("SVCTRACE-NA: %s\n", reason)
		t.Skipf("kernel feature absent: %s", reason)
	}
	t.Fatal("no nat hook in the plan")
	return 0, nil
}

// proxyMode is the kube-proxy mode under test: $SVCTRACE_TEST_PROXY,
// default iptables.
func proxyMode() lab.ProxyMode {
	if m := os.Getenv("SVCTRACE_TEST_PROXY"); m != "" {
		return lab.ProxyMode(m)
	}
	return lab.ProxyIPTables
}

func upLab(t *testing.T, spec lab.Spec, err error) *lab.Lab {
	t.Helper()
	testenv.RequireRoot(t)
	if err != nil {
		t.Fatal(err)
	}
	spec.Proxy.Mode = proxyMode()
	w, err := lab.NewRuleWriter(spec.Proxy.Mode)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Available(); err != nil {
		reason := fmt.Sprintf("proxy mode %s on kernel %s: %v", spec.Proxy.Mode, kernel.Release(), err)
		fmt.Printf("SVCTRACE-NA: %s\n", reason)
		t.Skipf("kernel feature absent: %s", reason)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts := []lab.Option{lab.WithManifestsDir(t.TempDir())}
	if os.Getenv("SVCTRACE_VM_GUEST") != "" {
		// Under emulation, with other VMs on the same cores, a healthy
		// connection can take seconds.
		opts = append(opts, lab.WithProbeTimeout(10*time.Second))
	}
	l, err := lab.Up(ctx, spec, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
	})
	return l
}

// trace is a running svctrace process.
type trace struct {
	cmd    *exec.Cmd
	stdout bytes.Buffer
	stderr bytes.Buffer
	done   chan error
}

// startTrace runs svctrace against the lab's node1 (or node) and waits
// until every probe is attached.
func startTrace(t *testing.T, l *lab.Lab, node, svc string, extra ...string) *trace {
	t.Helper()
	ns, err := l.NodeNetns(node)
	if err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(t.TempDir(), "ready")
	args := append([]string{"--svc", svc, "-n", "default", "--manifests", l.ManifestsDir(),
		"--netns", ns, "-o", "json", "--ready-file", ready, "--backend", backend(), "--stats-interval", "0"}, extra...)
	tr := &trace{cmd: exec.Command(binary(t), args...), done: make(chan error, 1)}
	tr.cmd.Stdout, tr.cmd.Stderr = &tr.stdout, &tr.stderr
	launch(t, tr.cmd, tr.done, ready, &tr.stderr)
	return tr
}

// launch starts cmd, kills it at the end of the test if it is still
// running, and waits (up to 30 s) for it to write its ready file; done
// receives cmd.Wait's result.
func launch(t *testing.T, cmd *exec.Cmd, done chan error, ready string, stderr fmt.Stringer) {
	t.Helper()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-done
		}
	})
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			return
		}
		select {
		case err := <-done:
			t.Fatalf("svctrace exited before it was ready: %v\nstderr: %s", err, stderr.String())
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("svctrace not ready after 30s; stderr: %s", stderr.String())
		}
	}
}

// output is what a trace printed, by record type.
type output struct {
	paths []event.Path
	stats []event.Stats
	other []map[string]any
	raw   string
}

// stop ends the trace with sig and parses its JSON lines.
func (tr *trace) stop(t *testing.T, sig syscall.Signal) output {
	t.Helper()
	stopLaunched(t, tr.cmd, tr.done, sig, &tr.stderr)
	return parse(t, tr.stdout.String())
}

// stopLaunched lets the last packets' paths complete, signals a process
// started by launch and waits (up to 20 s) for it to exit cleanly.
func stopLaunched(t *testing.T, cmd *exec.Cmd, done chan error, sig syscall.Signal, stderr fmt.Stringer) {
	t.Helper()
	time.Sleep(300 * time.Millisecond)
	if err := cmd.Process.Signal(sig); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("svctrace exited with %v; stderr: %s", err, stderr.String())
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("svctrace did not exit after %v", sig)
	}
}

func parse(t *testing.T, s string) output {
	t.Helper()
	out := output{raw: s}
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var head struct{ Type string }
		if err := json.Unmarshal(line, &head); err != nil {
			t.Fatalf("not a JSON line: %q: %v", line, err)
		}
		switch head.Type {
		case "path":
			var p event.Path
			if err := json.Unmarshal(line, &p); err != nil {
				t.Fatal(err)
			}
			out.paths = append(out.paths, p)
		case "stats":
			var st event.Stats
			if err := json.Unmarshal(line, &st); err != nil {
				t.Fatal(err)
			}
			out.stats = append(out.stats, st)
		case "":
			t.Fatalf("JSON line without a type: %s", line)
		default:
			var m map[string]any
			_ = json.Unmarshal(line, &m)
			out.other = append(out.other, m)
		}
	}
	return out
}

// find returns the first path whose original tuple is want.
func (o output) find(t *testing.T, want event.Tuple) *event.Path {
	t.Helper()
	for i := range o.paths {
		if o.paths[i].Original == want {
			return &o.paths[i]
		}
	}
	var seen []string
	for _, p := range o.paths {
		seen = append(seen, p.Original.String())
	}
	t.Fatalf("no path for %s; paths: %v", want, seen)
	return nil
}

// final returns the trace's final stats line.
func (o output) final(t *testing.T) event.Stats {
	t.Helper()
	for _, s := range o.stats {
		if s.Final {
			return s
		}
	}
	t.Fatalf("no final stats line in:\n%s", o.raw)
	return event.Stats{}
}
