// Command bench measures svctrace against its budgets on this machine, in
// one run, and prints each figure with its budget and ratio:
//
//   - kernel overhead on traffic of another Service (tracing attached,
//     nothing of it traced): single-stream TCP throughput (iperf3, from the
//     client pod to a Service DNATed by iptables to iperf3's server in the
//     backend pod) with/without svctrace, interleaved A/B/A/B, medians, with
//     the spread of each side and svctrace's own CPU use; budget >= 97%;
//   - kernel overhead on the traced Service's own traffic (every packet
//     traced): budget >= 85%;
//   - start-up to every probe attached: budget < 1 s; RSS while tracing:
//     budget < 100 MB;
//   - events at a steady offered rate: zero lost at ~200,000 events/s;
//   - the userspace pipeline (decode → correlate → enrich → JSON) on one
//     core: budget >= 1,000,000 events/s (go test -bench).
//
// Run as root: go run ./test/bench (or make bench). Traffic stays inside the
// lab's network namespaces.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/pkg/event"
)

const (
	benchVIP  = "10.96.0.50"
	benchPort = 5201
	// benchPod is the bench Service's own backend (iperf3's server), on
	// node1 beside the lab's pods: the traffic of "another Service" meets
	// nothing of the traced Service's (a pod behind both Services would run
	// the traced Service's device programs on its interface).
	benchPod   = "bench-iperf-5c8d7f9b6-r2k4p"
	benchPodIP = "10.244.1.20"
)

type options struct {
	bin     string
	rounds  int
	stream  time.Duration
	rate    int
	seconds int
	// bpfStats prints per-program run counts and cost of the last traced
	// throughput run of each figure (kernel.bpf_stats_enabled).
	bpfStats bool
	// tracerArgs are added to every svctrace command line (e.g. "--backend kprobe").
	tracerArgs string
	// only, when set, names the figures to measure (see figureNames).
	only map[string]bool
	// settle is the pause before each throughput run (A and B alike).
	settle time.Duration
	// affinity is iperf3's --affinity (client CPU,server CPU), "" for none.
	affinity string
}

// figureNames are the figures -only selects from.
func figureNames() []string {
	return []string{"other", "floor", "traced", "sampled", "startup", "rate", "pipeline"}
}

func (o options) want(name string) bool { return len(o.only) == 0 || o.only[name] }

func main() {
	var o options
	flag.StringVar(&o.bin, "bin", "", "svctrace binary (default: build one)")
	flag.IntVar(&o.rounds, "rounds", 15, "A/B pairs per throughput figure (single pairs spread ±10 % on a busy 2-vCPU VM: the more pairs, the steadier the medians)")
	flag.DurationVar(&o.stream, "stream", 2*time.Second, "length of one throughput run")
	flag.IntVar(&o.rate, "rate", 27000, "UDP request/response exchanges/s offered in the event-rate run (each yields ~8 events: device programs on the backend pod only, repeated route lookups not sent: ~216,000 events/s)")
	flag.IntVar(&o.seconds, "seconds", 10, "length of the event-rate run")
	flag.StringVar(&o.tracerArgs, "tracer-args", "", "extra svctrace arguments for every run, e.g. \"--backend kprobe\" (in a VM kernel)")
	flag.BoolVar(&o.bpfStats, "bpf-stats", false, "print each BPF program's runs and cost during the last traced run of each throughput figure")
	flag.DurationVar(&o.settle, "settle", 500*time.Millisecond, "pause before each throughput run, with or without svctrace (after its start-up, after the previous run's exit)")
	flag.StringVar(&o.affinity, "affinity", "", "iperf3 --affinity for the throughput runs, e.g. 0,1 (client CPU,server CPU); none by default: pinned, iperf3 cannot make room for svctrace's reader on a 2-CPU machine")
	only := flag.String("only", "", "comma-separated figures to measure, of "+strings.Join(figureNames(), ","))
	flag.Parse()
	if *only != "" {
		o.only = map[string]bool{}
		for _, f := range strings.Split(*only, ",") {
			if !slices.Contains(figureNames(), f) {
				fmt.Fprintf(os.Stderr, "bench: unknown figure %q (have %s)\n", f, strings.Join(figureNames(), ","))
				os.Exit(2)
			}
			o.only[f] = true
		}
	}
	if err := run(context.Background(), o); err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
}

// figure is one measured figure against its budget.
type figure struct {
	name   string
	value  string
	budget string
	ratio  float64 // value / budget, >= 1 meets it (for "lower is better" inverted)
	note   string
}

func run(ctx context.Context, o options) error {
	if os.Geteuid() != 0 {
		return errors.New("needs root (network namespaces, BPF)")
	}
	if o.bin == "" {
		dir, err := os.MkdirTemp("", "svctrace-bench-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		o.bin = filepath.Join(dir, "svctrace")
		if out, err := exec.Command("go", "build", "-o", o.bin, "./cmd/svctrace").CombinedOutput(); err != nil {
			return fmt.Errorf("build: %v: %s", err, out)
		}
	}
	spec, err := lab.Healthy(lab.VariantDefault)
	if err != nil {
		return err
	}
	spec.Pods = append(spec.Pods, lab.PodSpec{Name: benchPod, Node: "node1", IP: benchPodIP, Labels: map[string]string{"app": "bench"}})
	mdir, err := os.MkdirTemp("", "svctrace-bench-manifests-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(mdir)
	l, err := lab.Up(ctx, spec, lab.WithManifestsDir(mdir))
	if err != nil {
		return err
	}
	defer l.Close()
	b, err := newBench(ctx, l, o)
	if err != nil {
		return err
	}
	defer b.close()

	var figs []figure
	ab := []struct {
		key, name, svc string
		extra          []string
		budget         float64
	}{
		// Tracing another Service: nothing of the bench flow is traced.
		{"other", "TCP throughput, other Service traced", "hostnames", nil, 0.97},
		// The same with programs that return at once: what the kernel
		// spends calling the hooks, apart from svctrace's filtering (no budget).
		{"floor", "  the same, programs returning at once", "hostnames", []string{"--noop-programs"}, 0},
		{"traced", "TCP throughput, this Service traced (every packet)", "bench", nil, 0.85},
		{"sampled", "TCP throughput, this Service, --packets-per-flow 32", "bench", []string{"--packets-per-flow", "32"}, 0.85},
	}
	for _, f := range ab {
		if !o.want(f.key) {
			continue
		}
		r, err := b.throughputAB(ctx, f.svc, f.extra...)
		if err != nil {
			return err
		}
		figs = append(figs, ratioFigure(f.name, r, f.budget))
	}
	if o.want("startup") {
		start, m, err := b.startupAndRSS(ctx)
		if err != nil {
			return err
		}
		figs = append(figs,
			figure{name: "start-up to all probes attached", value: start.Round(time.Millisecond).String(), budget: "< 1s",
				ratio: float64(time.Second) / float64(start)},
			figure{name: "RSS while tracing a bulk stream", value: fmt.Sprintf("%.1f MB", float64(m.rss)/1e6), budget: "< 100 MB",
				ratio: 100e6 / float64(m.rss), note: fmt.Sprintf("anon %.1f MB + file %.1f MB at the largest; peak %.1f MB",
					float64(m.anon)/1e6, float64(m.file)/1e6, float64(m.peak)/1e6)})
	}
	if o.want("rate") {
		rate, err := b.eventRate(ctx)
		if err != nil {
			return err
		}
		figs = append(figs, rate)
	}
	if o.want("pipeline") {
		pipe, err := pipelineBench()
		if err != nil {
			return err
		}
		figs = append(figs, pipe)
	}

	fmt.Printf("\nsvctrace benchmarks (kernel %s, %d CPUs%s)\n\n", kernelRelease(), numCPU(), strings.TrimRight(" "+o.tracerArgs, " "))
	fmt.Printf("%-52s %-22s %-12s %-7s %s\n", "figure", "value", "budget", "ratio", "")
	for _, f := range figs {
		if f.budget == "" {
			fmt.Printf("%-52s %-22s %-12s %-7s %s %s\n", f.name, f.value, "-", "-", "info", f.note)
			continue
		}
		ok := "ok"
		if f.ratio < 1 {
			ok = "MISSED"
		}
		fmt.Printf("%-52s %-22s %-12s %-7.2f %s %s\n", f.name, f.value, f.budget, f.ratio, ok, f.note)
	}
	return nil
}

func ratioFigure(name string, r abResult, budget float64) figure {
	if budget == 0 {
		f := ratioFigure(name, r, 1)
		f.budget, f.ratio = "", 0
		return f
	}
	return figure{name: name, value: fmt.Sprintf("%.1f%% (%.0f vs %.0f Mbit/s)", r.ratio*100, r.withMbps, r.withoutMbps),
		budget: fmt.Sprintf(">= %.0f%%", budget*100), ratio: r.ratio / budget,
		note: fmt.Sprintf("medians of %d interleaved runs each; with %s, without %s Mbit/s; each pair's ratio: median %.1f%%, %s; svctrace used %.0f%% of a CPU",
			len(r.with), spread(r.with), spread(r.without), median(r.pairs)*100, spreadPct(r.pairs), median(r.cpu)*100)}
}

// spreadPct is spread for ratios, in per cent.
func spreadPct(xs []float64) string {
	return fmt.Sprintf("%.1f–%.1f%%", slices.Min(xs)*100, slices.Max(xs)*100)
}

// spread is the range of xs, "min–max".
func spread(xs []float64) string {
	return fmt.Sprintf("%.0f–%.0f", slices.Min(xs), slices.Max(xs))
}

type bench struct {
	l         *lab.Lab
	o         options
	node      string
	client    string
	backend   string
	manifests string
	server    *exec.Cmd // iperf3 --server in the backend pod
}

func newBench(ctx context.Context, l *lab.Lab, o options) (*bench, error) {
	b := &bench{l: l, o: o}
	var err error
	if b.node, err = l.NodeNetns("node1"); err != nil {
		return nil, err
	}
	cns, err := l.Netns(lab.CurlPod)
	if err != nil {
		return nil, err
	}
	bns, err := l.Netns(benchPod)
	if err != nil {
		return nil, err
	}
	b.client, b.backend = lab.NetnsPath(cns), lab.NetnsPath(bns)
	// iperf3's server in the backend pod, and a Service for it:
	// kube-proxy-style DNAT of benchVIP:benchPort to it.
	if _, err := exec.LookPath("iperf3"); err != nil {
		return nil, errors.New("iperf3 is missing: make deps installs it")
	}
	b.server = exec.CommandContext(ctx, "nsenter", "--net="+b.backend, "iperf3", "--server", "--port", strconv.Itoa(benchPort))
	if err := b.server.Start(); err != nil {
		return nil, fmt.Errorf("iperf3 server: %w", err)
	}
	backendIP := benchPodIP
	rule := []string{"iptables", "-t", "nat", "-I", "KUBE-SERVICES", "-d", benchVIP + "/32", "-p", "tcp", "--dport", strconv.Itoa(benchPort),
		"-m", "comment", "--comment", "default/bench:bulk cluster IP", "-j", "DNAT", "--to-destination", fmt.Sprintf("%s:%d", backendIP, benchPort)}
	if out, err := l.Exec(ctx, "node1", rule...); err != nil {
		return nil, fmt.Errorf("bench rule: %v: %s", err, out)
	}
	// The manifests: the lab's, plus the bench Service and its endpoints.
	b.manifests, err = os.MkdirTemp("", "svctrace-bench-mf-")
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(l.ManifestsDir())
	if err != nil {
		return nil, err
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(l.ManifestsDir(), e.Name()))
		if err != nil {
			return nil, err
		}
		if err := os.WriteFile(filepath.Join(b.manifests, e.Name()), data, 0o644); err != nil {
			return nil, err
		}
	}
	ready := true
	port := int32(benchPort)
	name := "bulk"
	proto := corev1.ProtocolTCP
	err = meta.WriteManifests(b.manifests,
		&corev1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{Name: "bench", Namespace: "default"},
			Spec: corev1.ServiceSpec{ClusterIP: benchVIP, ClusterIPs: []string{benchVIP},
				Ports: []corev1.ServicePort{{Name: name, Port: benchPort, Protocol: proto, TargetPort: intstr.FromInt32(benchPort)}}}},
		&discoveryv1.EndpointSlice{TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
			ObjectMeta: metav1.ObjectMeta{Name: "bench-x", Namespace: "default",
				Labels: map[string]string{discoveryv1.LabelServiceName: "bench"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{backendIP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready},
				TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: benchPod}}},
			Ports: []discoveryv1.EndpointPort{{Name: &name, Port: &port, Protocol: &proto}}})
	if err != nil {
		return nil, err
	}
	return b, nil
}

func (b *bench) close() {
	if b.server != nil && b.server.Process != nil {
		_ = b.server.Process.Kill()
		_ = b.server.Wait()
	}
	os.RemoveAll(b.manifests)
}

// stream runs one iperf3 TCP stream from the client pod to the bench
// Service for o.stream and returns the receiver's Mbit/s. (iperf3 rather
// than a Go client and sink in this process: measured, the run-to-run
// spread of the untraced figure was ±15% with the Go pair, ±3% with iperf3.)
func (b *bench) stream() (float64, error) {
	secs := int(math.Ceil(b.o.stream.Seconds()))
	var out []byte
	var err error
	for attempt := 0; attempt < 20; attempt++ {
		// The server takes a moment to listen, and serves one test at a time.
		args := []string{"--net=" + b.client, "iperf3", "--client", benchVIP, "--port", strconv.Itoa(benchPort),
			"--time", strconv.Itoa(secs), "--json"}
		if b.o.affinity != "" {
			args = append(args, "--affinity", b.o.affinity)
		}
		out, err = exec.Command("nsenter", args...).Output()
		if err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		return 0, fmt.Errorf("iperf3 client: %v: %s", err, out)
	}
	var res struct {
		End struct {
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
		Error string `json:"error"`
	}
	if err := json.Unmarshal(out, &res); err != nil {
		return 0, fmt.Errorf("iperf3 output: %w", err)
	}
	if res.Error != "" || res.End.SumReceived.BitsPerSecond == 0 {
		return 0, fmt.Errorf("iperf3: %s", res.Error)
	}
	return res.End.SumReceived.BitsPerSecond / 1e6, nil
}

type abResult struct {
	with, without []float64
	// pairs are each B run's ratio to the A run just before it: drift of
	// the machine between pairs cancels out of these.
	pairs []float64
	// cpu is svctrace's CPU use (user+system, in CPUs) during each traced run.
	cpu                   []float64
	withMbps, withoutMbps float64
	ratio                 float64
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}

// tracer is a running svctrace process.
type tracer struct {
	cmd    *exec.Cmd
	stdout *os.File // a file, not a pipe: the reader of a pipe could hold svctrace back
	stderr *bytes.Buffer
	diag   *os.File // SVCTRACE_BENCH_STDERR, when set
	start  time.Duration
}

// startTracer starts svctrace on svc and waits until it is attached; with
// keepOutput its JSON output is kept (for the stats line).
func (b *bench) startTracer(ctx context.Context, svc string, keepOutput bool, extra ...string) (*tracer, error) {
	ready := filepath.Join(b.manifests, "ready-"+strconv.FormatInt(time.Now().UnixNano(), 10))
	args := append([]string{"--svc", svc, "--manifests", b.manifests, "--netns", b.node, "-o", "json",
		"--ready-file", ready, "--stats-interval", "0"}, strings.Fields(b.o.tracerArgs)...)
	args = append(args, extra...)
	t := &tracer{cmd: exec.CommandContext(ctx, b.o.bin, args...), stderr: &bytes.Buffer{}}
	// Output goes to /dev/null (nil): a pipe drained by this process would
	// add the bench's own copying to the CPU the traced stream competes for.
	t.cmd.Stdout, t.cmd.Stderr = nil, t.stderr
	if f := os.Getenv("SVCTRACE_BENCH_STDERR"); f != "" {
		// Diagnostics (e.g. GODEBUG=gctrace=1) of every tracer run, appended.
		w, err := os.OpenFile(f, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			return nil, err
		}
		t.diag = w // open until the tracer has exited (svctrace writes to it until then)
		t.cmd.Stderr = io.MultiWriter(t.stderr, w)
	}
	if keepOutput {
		f, err := os.CreateTemp("", "svctrace-bench-out-")
		if err != nil {
			return nil, err
		}
		_ = os.Remove(f.Name())
		t.stdout, t.cmd.Stdout = f, f
	}
	began := time.Now()
	if err := t.cmd.Start(); err != nil {
		return nil, err
	}
	for {
		if _, err := os.Stat(ready); err == nil {
			t.start = time.Since(began)
			return t, nil
		}
		if time.Since(began) > 30*time.Second {
			_ = t.cmd.Process.Kill()
			return nil, fmt.Errorf("svctrace not ready: %s", t.stderr)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (t *tracer) stop() error {
	_ = t.cmd.Process.Signal(syscall.SIGINT)
	err := t.cmd.Wait()
	if t.diag != nil {
		t.diag.Close()
	}
	if err != nil {
		return fmt.Errorf("svctrace: %v: %s", err, t.stderr)
	}
	return nil
}

// throughputAB measures the bench stream without svctrace (A) and with
// svctrace tracing svc (B), interleaved.
func (b *bench) throughputAB(ctx context.Context, svc string, extra ...string) (abResult, error) {
	var r abResult
	if _, err := b.stream(); err != nil { // warm up
		return r, err
	}
	for i := 0; i < b.o.rounds; i++ {
		time.Sleep(b.o.settle)
		a, err := b.stream()
		if err != nil {
			return r, err
		}
		r.without = append(r.without, a)
		args := extra
		if prof := os.Getenv("SVCTRACE_BENCH_CPUPROFILE"); prof != "" && i == b.o.rounds-1 {
			// The last traced run's CPU profile (the event-rate run writes its own after it).
			args = append(append([]string(nil), extra...), "--cpuprofile", prof)
		}
		t, err := b.startTracer(ctx, svc, false, args...)
		if err != nil {
			return r, err
		}
		var before map[int]progStat
		if b.o.bpfStats && i == b.o.rounds-1 {
			restore, err := enableBPFStats()
			if err != nil {
				return r, err
			}
			defer restore()
			if before, err = bpfStats(t.cmd.Process.Pid); err != nil {
				return r, err
			}
		}
		time.Sleep(b.o.settle)
		began := time.Now()
		cpu0 := procCPU(t.cmd.Process.Pid)
		w, err := b.stream()
		r.cpu = append(r.cpu, (procCPU(t.cmd.Process.Pid)-cpu0).Seconds()/time.Since(began).Seconds())
		if before != nil && err == nil {
			after, serr := bpfStats(t.cmd.Process.Pid)
			if serr != nil {
				return r, serr
			}
			printStatsDelta(strings.Join(append([]string{"--svc", svc}, extra...), " "), before, after, time.Since(began))
		}
		if serr := t.stop(); err == nil {
			err = serr
		}
		if err != nil {
			return r, err
		}
		r.with = append(r.with, w)
		r.pairs = append(r.pairs, w/a)
	}
	r.withMbps, r.withoutMbps = median(r.with), median(r.without)
	r.ratio = r.withMbps / r.withoutMbps
	return r, nil
}

// startupAndRSS measures start-up (exec to ready file, median of 3) and the
// peak RSS of svctrace tracing the bench stream.
// memory is svctrace's resident set: the largest seen while tracing (and
// its anonymous and file-backed parts then), and the kernel's high-water mark.
type memory struct{ rss, anon, file, peak int64 }

func (b *bench) startupAndRSS(ctx context.Context) (start time.Duration, m memory, err error) {
	var starts []float64
	for i := 0; i < 3; i++ {
		var extra []string
		if f := os.Getenv("SVCTRACE_BENCH_MEMPROFILE"); f != "" && i == 2 {
			extra = []string{"--memprofile", f}
		}
		t, err := b.startTracer(ctx, "bench", false, extra...)
		if err != nil {
			return 0, memory{}, err
		}
		starts = append(starts, float64(t.start))
		if i == 2 {
			done := make(chan struct{})
			go func() {
				defer close(done)
				_, _ = b.stream()
			}()
			// Sample the resident set while the stream is being traced.
			for {
				select {
				case <-done:
				case <-time.After(200 * time.Millisecond):
					if r := procStatus(t.cmd.Process.Pid, "VmRSS:"); r > m.rss {
						m.rss = r
						m.anon = procStatus(t.cmd.Process.Pid, "RssAnon:")
						m.file = procStatus(t.cmd.Process.Pid, "RssFile:")
						if f := os.Getenv("SVCTRACE_BENCH_SMAPS"); f != "" {
							// Where the resident set is, at its largest.
							data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/smaps", t.cmd.Process.Pid))
							_ = os.WriteFile(f, data, 0o644)
						}
					}
					continue
				}
				break
			}
			m.peak = procStatus(t.cmd.Process.Pid, "VmHWM:")
		}
		if err := t.stop(); err != nil {
			return 0, memory{}, err
		}
	}
	return time.Duration(median(starts)), m, nil
}

// procCPU is the user+system CPU time process pid has used.
func procCPU(pid int) time.Duration {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// Fields after the command name (which may hold spaces) in parentheses.
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(data[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64)        // utime, field 14
	st, _ := strconv.ParseInt(f[12], 10, 64)        // stime, field 15
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ
}

// procStatus reads a size field ("VmRSS:", "VmHWM:") of /proc/PID/status in bytes.
func procStatus(pid int, field string) int64 {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == field {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb * 1024
		}
	}
	return 0
}

// eventRate offers a steady rate of traced UDP packets for o.seconds and
// reads svctrace's final stats: events read, lost.
func (b *bench) eventRate(ctx context.Context) (figure, error) {
	extra := append([]string{"--per", "flow"}, strings.Fields(os.Getenv("SVCTRACE_BENCH_RATE_ARGS"))...)
	if prof := os.Getenv("SVCTRACE_BENCH_CPUPROFILE"); prof != "" {
		extra = append(extra, "--cpuprofile", prof)
	}
	t, err := b.startTracer(ctx, "hostnames", true, extra...)
	if err != nil {
		return figure{}, err
	}
	var sent int
	var maxLag time.Duration // how far the sender fell behind its schedule at worst
	err = lab.InNetns(b.client, func() error {
		c, err := net.Dial("udp4", net.JoinHostPort(lab.HostnamesIP, strconv.Itoa(lab.HostnamesUDPPort)))
		if err != nil {
			return err
		}
		defer c.Close()
		payload := []byte("x")
		interval := time.Second / time.Duration(b.o.rate)
		start := time.Now()
		for time.Since(start) < time.Duration(b.o.seconds)*time.Second {
			due := start.Add(time.Duration(sent) * interval)
			if d := time.Until(due); d > 0 {
				time.Sleep(d)
			} else if -d > maxLag {
				maxLag = -d
			}
			if _, err := c.Write(payload); err == nil {
				sent++
			}
		}
		return nil
	})
	if serr := t.stop(); err == nil {
		err = serr
	}
	if err != nil {
		return figure{}, err
	}
	var st event.Stats
	defer t.stdout.Close()
	if _, err := t.stdout.Seek(0, io.SeekStart); err != nil {
		return figure{}, err
	}
	if keep := os.Getenv("SVCTRACE_BENCH_RATE_OUT"); keep != "" {
		// svctrace's output of the run (with SVCTRACE_BENCH_RATE_ARGS=
		// "--stats-interval 100ms": when any loss happened).
		data, err := io.ReadAll(t.stdout)
		if err != nil {
			return figure{}, err
		}
		if err := os.WriteFile(keep, data, 0o644); err != nil {
			return figure{}, err
		}
		if _, err := t.stdout.Seek(0, io.SeekStart); err != nil {
			return figure{}, err
		}
	}
	sc := bufio.NewScanner(t.stdout)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var s event.Stats
		if json.Unmarshal(sc.Bytes(), &s) == nil && s.Type == "stats" && s.Final {
			st = s
		}
	}
	secs := float64(b.o.seconds)
	rate := float64(st.Events) / secs
	f := figure{name: "events at a steady offered rate, lost", value: fmt.Sprintf("%.0f events/s, %d lost", rate, st.Lost),
		budget: "0 lost at 200k/s", note: fmt.Sprintf("%d packets offered in %ds; sender behind schedule by up to %s", sent, b.o.seconds, maxLag.Round(time.Millisecond))}
	switch {
	case st.Lost > 0:
		f.ratio = 0
	case rate < 200000:
		f.ratio = rate / 200000
		f.note += "; offered rate below the budget's"
	default:
		f.ratio = 1
	}
	return f, nil
}

// pipelineBench runs the userspace pipeline benchmark on one core.
func pipelineBench() (figure, error) {
	out, err := exec.Command("go", "test", "-run", "^$", "-bench", "^BenchmarkPipeline$", "-benchtime", "1000000x", "-cpu", "1", "./internal/pipeline/").CombinedOutput()
	if err != nil {
		return figure{}, fmt.Errorf("pipeline benchmark: %v: %s", err, out)
	}
	m := regexp.MustCompile(`([0-9.]+) ns/op\s+([0-9.]+) events/s\s+([0-9]+) B/op\s+([0-9]+) allocs/op`).FindSubmatch(out)
	if m == nil {
		return figure{}, fmt.Errorf("pipeline benchmark output: %s", out)
	}
	rate, _ := strconv.ParseFloat(string(m[2]), 64)
	return figure{name: "userspace decode→correlate→enrich→JSON, 1 core", value: fmt.Sprintf("%.0f events/s", rate),
		budget: ">= 1000000/s", ratio: rate / 1e6, note: fmt.Sprintf("%s ns/event, %s B/event, %s allocs/event", m[1], m[3], m[4])}, nil
}

func kernelRelease() string {
	var u syscall.Utsname
	if err := syscall.Uname(&u); err != nil {
		return "?"
	}
	var b []byte
	for _, c := range u.Release {
		if c == 0 {
			break
		}
		b = append(b, byte(c))
	}
	return string(b)
}

func numCPU() int {
	n, _ := strconv.Atoi(strings.TrimSpace(runOut("nproc")))
	return n
}

func runOut(name string, args ...string) string {
	out, _ := exec.Command(name, args...).Output()
	return string(out)
}
