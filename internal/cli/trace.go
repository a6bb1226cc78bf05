package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/internal/tracer"
)

type traceOptions struct {
	stdout, stderr io.Writer

	service    string
	namespace  string
	manifests  string
	backend    string
	netns      string
	output     string
	color      string
	duration   time.Duration
	count      int
	readyFile  string
	events     bool
	all        bool
	perf       bool
	statsEvery time.Duration
	per        string
	node       string

	backendV attach.Backend
	devices  string
	devicesV attach.DeviceHooks
	notices  chan string // from the metadata source (API server lost / back)
	ringSize uint32
	perFlow  uint32
	repeat   time.Duration
	skip     []string
	cpuProf  string
	// helperReads keeps the programs' helper-call reads (attach.Options.NoCast).
	helperReads bool
	// noopPrograms attaches programs that do nothing (attach.Options.NoopPrograms).
	noopPrograms bool
	// wakeupBytes is attach.Options.WakeupBytes.
	wakeupBytes uint32
	memProf     string
	kubeOptions
	recordOptions
}

func (o *traceOptions) addFlags(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&o.service, "svc", "", "the Service to trace (required)")
	o.addKubeFlags(c)
	o.addRecordFlags(c)
	f.StringVar(&o.manifests, "manifests", "", "file or folder of Service, EndpointSlice, Pod and Node objects (YAML or JSON, as 'kubectl get -o yaml' writes them)")
	f.StringVar(&o.devices, "device-hooks", string(attach.DevicesPods), "where device events (received by / queued to an interface) come from: pods (tc programs on the Service's backend pods' interfaces on this machine, where the node's netfilter links are attached and the kernel has tcx, 6.6+: other traffic runs no device program) or all (tracepoints on every interface of every namespace: the client's side and other namespaces too, at a cost to every packet on the machine)")
	f.StringVar(&o.backend, "backend", "auto", "how to attach to kernel functions: auto (fentry, then kprobe, then stable, per hook), fentry, kprobe, or netfilter (tracepoints + BPF netfilter links only)")
	f.StringVar(&o.netns, "netns", "", "network namespace of the node (a path like /run/netns/node1, or a name in /run/netns); default: svctrace's own")
	f.StringVarP(&o.output, "output", "o", "text", "output format: text or json (JSON lines, each with a \"type\")")
	f.StringVar(&o.color, "color", "auto", "colour text output: auto (only on a terminal, unless NO_COLOR is set), always, never")
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (e.g. 30s); default: until Ctrl-C")
	f.IntVar(&o.count, "count", 0, "stop after this many packet paths")
	f.StringVar(&o.readyFile, "ready-file", "", "write this file once every probe is attached (for scripts that start traffic then)")
	f.BoolVar(&o.events, "events", false, "also print every raw kernel event")
	f.BoolVar(&o.all, "all", false, "trace every IPv4 packet, not only the Service's (debugging; expensive)")
	f.BoolVar(&o.perf, "perf-buffer", false, "use a perf event array instead of the ring buffer (automatic on kernels before 5.8)")
	f.DurationVar(&o.statsEvery, "stats-interval", 5*time.Second, "with -o json, emit a stats line this often (0: only at exit)")
	f.StringVar(&o.node, "node", "", "the Node svctrace runs on (default: worked out from the node's addresses and the Node objects)")
	f.StringVar(&o.per, "per", "packet", "one block per packet, or per flow (the first packet of each direction and every failed packet)")
	f.Uint32Var(&o.perFlow, "packets-per-flow", 0, "trace this many packets of each flow direction in full, then only SYN/FIN/RST packets and failures (drops, ICMP errors); 0 traces every packet. Use it on busy Services")
	f.DurationVar(&o.repeat, "route-repeat", time.Second, "a forwarded packet's route lookup whose result (table, device, gateway) repeats the last one sent for its addresses and input device less than this long ago is noted on the packet, not sent again (its path shows that result, marked \"repeat\" in JSON): a quarter fewer events on busy flows. 0 sends every lookup. Needs the netfilter hook (6.4+); failed lookups are always sent")
	f.StringSliceVar(&o.skip, "skip-hooks", nil, "hooks not to attach, comma-separated (see 'svctrace doctor' for the list): less detail, less overhead per packet. E.g. devices,route leaves the device and route-lookup steps out of the paths")
	_ = c.RegisterFlagCompletionFunc("skip-hooks", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		var names []string
		for _, h := range attach.HookNames() {
			names = append(names, h[0]+"\t"+h[1])
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	})
	f.Uint32Var(&o.ringSize, "ring-buffer-size", 0, "ring buffer size in bytes (power of two, multiple of the page size; default 4 MiB)")
	_ = f.MarkHidden("perf-buffer")
	f.BoolVar(&o.helperReads, "helper-reads", false, "read packets and conntrack entries with bpf_probe_read_kernel even where bpf_rdonly_cast is there (testing)")
	_ = f.MarkHidden("helper-reads")
	f.Uint32Var(&o.wakeupBytes, "wakeup-bytes", 64<<10, "wake the event reader once this many bytes are pending (it also polls every 50 ms); 0 wakes it for every event")
	_ = f.MarkHidden("wakeup-bytes")
	f.BoolVar(&o.noopPrograms, "noop-programs", false, "attach every hook with programs that return before looking at the packet: traces nothing (benchmarks: the kernel's cost of the hooks themselves)")
	_ = f.MarkHidden("noop-programs")
	_ = f.MarkHidden("ring-buffer-size")
	f.StringVar(&o.cpuProf, "cpuprofile", "", "write a Go CPU profile of svctrace itself to this file (debugging)")
	_ = f.MarkHidden("cpuprofile")
	f.StringVar(&o.memProf, "memprofile", "", "write a Go heap profile of svctrace itself to this file at exit (debugging)")
	_ = f.MarkHidden("memprofile")
}

func (o *traceOptions) complete(c *cobra.Command) error {
	if o.service == "" {
		return usageErr(fmt.Errorf("--svc is required: name the Service to trace (see 'svctrace --help')"))
	}
	if o.per != "packet" && o.per != "flow" {
		return usageErr(fmt.Errorf("--per %q: use packet or flow", o.per))
	}
	if o.output != "text" && o.output != "json" {
		return usageErr(fmt.Errorf("--output %q: use text or json", o.output))
	}
	switch o.color {
	case "auto", "always", "never":
	default:
		return usageErr(fmt.Errorf("--color %q: use auto, always or never", o.color))
	}
	b, err := attach.ParseBackend(o.backend)
	if err != nil {
		return usageErr(err)
	}
	o.backendV = b
	if o.devicesV, err = attach.ParseDeviceHooks(o.devices); err != nil {
		return usageErr(err)
	}
	if err := checkHookNames(o.skip); err != nil {
		return usageErr(err)
	}
	if err := o.completeKube(); err != nil {
		return err
	}
	if err := o.completeRecord(); err != nil {
		return err
	}
	if o.netns != "" && !strings.Contains(o.netns, "/") {
		o.netns = "/run/netns/" + o.netns
	}
	if o.netns != "" {
		if _, err := os.Stat(o.netns); err != nil {
			return usageErr(fmt.Errorf("--netns: %w", err))
		}
	}
	if o.count < 0 || o.duration < 0 {
		return usageErr(errors.New("--count and --duration must not be negative"))
	}
	if o.repeat < 0 {
		return usageErr(errors.New("--route-repeat must not be negative"))
	}
	return nil
}

// defaultMemoryLimit is the Go heap's soft limit while tracing unless
// GOMEMLIMIT says otherwise: the collector works harder as the heap nears
// it, instead of letting it double past what is live (see the README's
// performance section).
const defaultMemoryLimit = 52 << 20

func (o *traceOptions) run(ctx context.Context) error {
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(defaultMemoryLimit)
	}
	if o.cpuProf != "" {
		f, err := os.Create(o.cpuProf)
		if err != nil {
			return usageErr(fmt.Errorf("--cpuprofile: %w", err))
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fmt.Errorf("cpu profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	if o.memProf != "" {
		f, err := os.Create(o.memProf)
		if err != nil {
			return usageErr(fmt.Errorf("--memprofile: %w", err))
		}
		defer func() {
			_ = pprof.Lookup("allocs").WriteTo(f, 0)
			f.Close()
		}()
	}
	var r render.Renderer
	if o.output == "json" {
		r = render.NewJSON(o.stdout)
	} else {
		r = render.NewText(o.stdout, render.TextOptions{
			Color: colorWanted(o.stdout, o.color), Clock: tracer.WallClock(), Events: o.events,
		})
	}
	src, stopSource, err := o.metadataSource(ctx)
	if err != nil {
		return err
	}
	defer stopSource()
	cfg := tracer.Config{
		Namespace: o.namespace,
		Service:   o.service,
		Source:    src,
		Attach: attach.Options{
			Backend:        o.backendV,
			NetnsPath:      o.netns,
			PerfBuffer:     o.perf,
			NoCast:         o.helperReads,
			NoopPrograms:   o.noopPrograms,
			DeviceHooks:    o.devicesV,
			RingBufSize:    o.ringSize,
			PacketsPerFlow: o.perFlow,
			RouteRepeat:    o.repeat,
			SkipHooks:      o.skip,
			WakeupBytes:    o.wakeupBytes,
		},
		Duration:  o.duration,
		Count:     o.count,
		ReadyFile: o.readyFile,
		Renderer:  r,
		Events:    o.events,
		TraceAll:  o.all,
		Warn:      o.stderr,
		PerFlow:   o.per == "flow",
		Node:      o.node,
	}
	if o.output == "json" {
		cfg.StatsEvery = o.statsEvery
	}
	if isTerminal(o.stderr) && o.output == "text" {
		cfg.Status = o.stderr
	}
	cfg.Notices = o.notices
	closeRecord, err := o.applyRecord(&cfg)
	if err != nil {
		return err
	}
	defer closeRecord()
	_, err = tracer.Run(ctx, cfg)
	return err
}

// checkHookNames refuses --skip-hooks names svctrace does not know.
func checkHookNames(names []string) error {
	var known []string
	for _, h := range attach.HookNames() {
		known = append(known, h[0])
	}
	for _, n := range names {
		if !slices.Contains(known, n) {
			return fmt.Errorf("--skip-hooks: unknown hook %q (hooks: %s)", n, strings.Join(known, ", "))
		}
	}
	return nil
}
