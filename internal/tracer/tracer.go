// Package tracer runs a live trace: it resolves the Service from metadata,
// loads and attaches the probes, programs the in-kernel filter, and drives
// the pipeline read → decode → correlate → enrich → render until its
// context ends, a duration passes or enough paths were seen.
package tracer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/correlate"
	"github.com/svctrace/svctrace/internal/decode"
	"github.com/svctrace/svctrace/internal/enrich"
	"github.com/svctrace/svctrace/internal/kernel"
	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/pipeline"
	"github.com/svctrace/svctrace/internal/procmem"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/pkg/event"
)

// ErrHeadless is returned for a Service without a virtual IP.
var ErrHeadless = errors.New("headless service")

// Config configures a trace.
type Config struct {
	Namespace string
	Service   string
	// Source provides the cluster's Services, EndpointSlices, Pods and Nodes.
	Source meta.Source
	// Attach options (backend, node namespace, transport).
	Attach attach.Options
	// Duration stops the trace after this long (0: until the context ends).
	Duration time.Duration
	// Count stops the trace after this many paths (0: no limit).
	Count int
	// ReadyFile is written once every probe is attached.
	ReadyFile string
	// Renderer receives paths, events and stats.
	Renderer render.Renderer
	// Events also renders every raw event.
	Events bool
	// StatsEvery emits a stats record this often (0: only the final one).
	StatsEvery time.Duration
	// Status, when set, receives a one-line live status (a terminal).
	Status io.Writer
	// TraceAll disables the in-kernel filter (debugging).
	TraceAll bool
	// Warn receives warnings (skipped hooks, lost events).
	Warn io.Writer
	// Idle is the correlator's packet completion delay (0: default).
	Idle time.Duration
	// PerFlow shows only the first packet of each direction of a flow and
	// every packet that failed.
	PerFlow bool
	// Ready is called once every probe is attached and the filter is set.
	Ready func()
	// Node is the node svctrace runs on; empty: worked out from the node
	// namespace's addresses and the Node objects.
	Node string
	// Sinks record or export the trace (recordings, pcapng).
	Sinks []Sink
	// Notices, when set, delivers messages from the metadata source (the
	// API server went away, is back) to render as notice records.
	Notices <-chan string
	// Headers keeps packet header bytes in events (pcapng export).
	Headers bool
	// Version is svctrace's version, for recordings.
	Version string
}

// Notice is a record telling the user something changed during the trace
// (the Service's endpoints, the metadata source's health).
type Notice struct {
	Type    string `json:"type"` // "notice"
	Time    string `json:"time"`
	Message string `json:"message"`
}

// String renders the notice for text output.
func (n Notice) String() string { return "svctrace: " + n.Message }

func notice(msg string) Notice {
	return Notice{Type: "notice", Time: time.Now().UTC().Format(time.RFC3339Nano), Message: msg}
}

// Monotonic returns CLOCK_MONOTONIC in ns: the clock of kernel timestamps.
func Monotonic() uint64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return uint64(ts.Nano())
}

// WallClock returns the offset that turns kernel timestamps into wall time.
func WallClock() render.Clock {
	return render.Clock{Offset: time.Now().UnixNano() - int64(Monotonic())}
}

// ResolveService finds the traced Service and its filter.
func ResolveService(snap *meta.Snapshot, namespace, name string) (*meta.Service, []attach.FilterEntry, error) {
	svc, err := snap.Service(namespace, name)
	if err != nil {
		return nil, nil, err
	}
	if svc.Headless {
		return nil, nil, fmt.Errorf("%w: service %s/%s has no virtual IP (clusterIP: None), so there is no Service path to trace; trace its Pods' addresses instead", ErrHeadless, namespace, name)
	}
	fs := snap.Filter(svc)
	entries := make([]attach.FilterEntry, 0, len(fs.Entries))
	for _, e := range fs.Entries {
		entries = append(entries, attach.FilterEntry{Addr: e.Addr, Port: e.Port, Proto: uint8(e.Proto), Role: uint32(e.Role)})
	}
	return svc, entries, nil
}

// warnSkipped says once per reason which hooks are not traced.
func warnSkipped(w io.Writer, plan []attach.HookStatus) {
	var reasons []string
	hooks := map[string][]string{}
	for _, st := range plan {
		if st.Skipped == "" {
			continue
		}
		if _, ok := hooks[st.Skipped]; !ok {
			reasons = append(reasons, st.Skipped)
		}
		hooks[st.Skipped] = append(hooks[st.Skipped], st.Hook)
	}
	for _, r := range reasons {
		fmt.Fprintf(w, "svctrace: not traced (%s): %s\n", r, strings.Join(hooks[r], ", "))
	}
}

// filterChange describes how the filter entries changed ("" if not).
func filterChange(old, next []attach.FilterEntry) string {
	key := func(e attach.FilterEntry) string {
		s := netip.AddrPortFrom(e.Addr, e.Port).String()
		if !e.Addr.IsValid() {
			s = "*:" + strconv.Itoa(int(e.Port))
		}
		if p := event.ProtoName(e.Proto); p != "" {
			s += "/" + p
		}
		return s
	}
	was, is := map[string]bool{}, map[string]bool{}
	for _, e := range old {
		was[key(e)] = true
	}
	for _, e := range next {
		is[key(e)] = true
	}
	var added, removed []string
	for k := range is {
		if !was[k] {
			added = append(added, k)
		}
	}
	for k := range was {
		if !is[k] {
			removed = append(removed, k)
		}
	}
	sort.Strings(added)
	sort.Strings(removed)
	var parts []string
	if len(added) > 0 {
		parts = append(parts, "added "+strings.Join(added, ", "))
	}
	if len(removed) > 0 {
		parts = append(parts, "removed "+strings.Join(removed, ", "))
	}
	return strings.Join(parts, "; ")
}

// NodeOf works out which Node the namespace at path (svctrace's own when
// empty) is, from its addresses and the Nodes' addresses; "" if none match.
func NodeOf(snap *meta.Snapshot, path string) string {
	if path == "" {
		path = "/proc/self/ns/net"
	}
	for _, pf := range enrich.NetnsPrefixes(path) {
		if n, ok := snap.NodeByAddr(pf.Addr()); ok {
			return n.Name
		}
	}
	return ""
}

// Run traces until ctx ends, the duration passes or Count paths were seen.
// It returns the final stats.
func Run(ctx context.Context, cfg Config) (*event.Stats, error) {
	snap, err := cfg.Source.Snapshot(ctx)
	if err != nil {
		return nil, fmt.Errorf("read cluster metadata: %w", err)
	}
	svc, entries, err := ResolveService(snap, cfg.Namespace, cfg.Service)
	if err != nil {
		return nil, err
	}

	b, err := kernel.LoadBTF()
	if err != nil {
		return nil, err
	}
	opts := cfg.Attach
	opts.Headers = cfg.Headers
	opts.BTF = b
	probes, err := attach.Load(opts)
	if err != nil {
		return nil, err
	}
	defer probes.Close()
	reasons, _ := b.DropReasons() // kernels before 5.17 have none: reasons stay empty
	// The kernel's BTF was only needed to load: let it go before tracing.
	b, opts.BTF = nil, nil
	runtime.GC()
	debug.FreeOSMemory()
	_, _ = procmem.TrimExecutable()
	warn := cfg.Warn
	if warn == nil {
		warn = io.Discard
	}
	// Drop locations are named from /proc/kallsyms: read it before tracing,
	// not when the first drop arrives mid-trace (that stalled the reader
	// ~65 ms, long enough for a busy ring buffer to overflow). After the
	// BTF is gone: the two do not add up in the peak resident set.
	syms := &kernel.Symbols{}
	if err := syms.Load(); err != nil {
		fmt.Fprintf(warn, "svctrace: kernel symbols: %v; drop locations are not named\n", err)
	}
	warnSkipped(warn, probes.Plan())
	if skipped, err := probes.SetFilter(entries, cfg.TraceAll); err != nil {
		return nil, fmt.Errorf("program filter: %w", err)
	} else if skipped > 0 {
		fmt.Fprintf(warn, "svctrace: %d IPv6 addresses of the service are not traced (IPv4 only)\n", skipped)
	}
	// Device events from the backend pods' interfaces (the tc flavour):
	// attached now, then kept up with endpoints and pods.
	var devMsgs <-chan string
	var devWatch *deviceWatch
	if probes.UsesDevices() {
		devWatch = newDeviceWatch(probes, []uint32{probes.NetnsInode(), netnsInode("/proc/1/ns/net")})
		addrs := backendAddrs(entries)
		if msg := devWatch.sync(addrs); msg != "" {
			fmt.Fprintf(warn, "svctrace: %s\n", msg)
		}
		wctx, stop := context.WithCancel(ctx)
		defer func() { stop(); devWatch.wait() }()
		devWatch.run(wctx, addrs)
		devMsgs = devWatch.msgs
	}
	reader, err := probes.NewReader()
	if err != nil {
		return nil, err
	}
	defer reader.Close()

	dec := decode.New(decode.Options{DropReasons: reasons, Symbols: syms, Headers: cfg.Headers})
	hints := map[string]string{}
	if cfg.Attach.NetnsPath != "" {
		hints[cfg.Attach.NetnsPath] = "node"
	}
	node := cfg.Node
	if node == "" {
		node = NodeOf(snap, cfg.Attach.NetnsPath)
	}
	clock := WallClock()
	if cfg.Idle <= 0 {
		cfg.Idle = correlate.DefaultIdle // recorded, so that replays use it too
	}
	info := RunInfo{Version: cfg.Version, Kernel: kernel.Release(), Node: node, NodeNetns: probes.NetnsInode(),
		Namespace: svc.Namespace, Service: svc.Name, Backend: string(opts.Backend), Start: time.Now(),
		ClockOffset: clock.Offset, Plan: probes.Plan(), Idle: cfg.Idle}
	var devices pipeline.Devices = enrich.NewDevices(hints)
	sinkErr := func(err error) {
		if err != nil {
			fmt.Fprintf(warn, "svctrace: recording: %v\n", err)
		}
	}
	for _, s := range cfg.Sinks {
		defer func() { sinkErr(s.Close()) }()
		if err := s.Begin(info); err != nil {
			return nil, fmt.Errorf("start recording: %w", err)
		}
		if err := s.Metadata(snap); err != nil {
			return nil, fmt.Errorf("record metadata: %w", err)
		}
		devices = s.Devices(devices)
	}
	pcfg := pipeline.Config{
		Snap: snap, Service: svc, Node: node, NodeNetns: probes.NetnsInode(),
		Devices: devices, Renderer: cfg.Renderer, Events: cfg.Events,
		PerFlow: cfg.PerFlow, Count: cfg.Count, Idle: cfg.Idle,
	}
	if len(cfg.Sinks) > 0 {
		pcfg.OnPath = func(p *event.Path) {
			for _, s := range cfg.Sinks {
				sinkErr(s.Path(p))
			}
		}
		pcfg.OnVerdict = func(v *event.Verdict) {
			for _, s := range cfg.Sinks {
				sinkErr(s.Verdict(v))
			}
		}
		pcfg.OnAdvance = func(now uint64) {
			for _, s := range cfg.Sinks {
				sinkErr(s.Advance(now))
			}
		}
	}
	pipe := pipeline.New(pcfg)
	stats := &event.Stats{}
	feed := func(ev *event.Event) {
		for _, s := range cfg.Sinks {
			sinkErr(s.Event(ev))
		}
		pipe.Event(ev)
	}
	var updates <-chan *meta.Snapshot
	if w, ok := cfg.Source.(meta.Watcher); ok {
		updates = w.Updates()
	}
	applyUpdate := func(next *meta.Snapshot) {
		nsvc, nentries, err := ResolveService(next, cfg.Namespace, cfg.Service)
		if err != nil {
			_ = cfg.Renderer.Record(notice(fmt.Sprintf("service %s/%s: %v; still tracing with the last known addresses", cfg.Namespace, cfg.Service, err)))
			return
		}
		if _, err := probes.SetFilter(nentries, cfg.TraceAll); err != nil {
			fmt.Fprintf(warn, "svctrace: update filter: %v\n", err)
		}
		if devWatch != nil {
			devWatch.update(backendAddrs(nentries))
		}
		if changed := filterChange(entries, nentries); changed != "" {
			_ = cfg.Renderer.Record(notice(fmt.Sprintf("%s/%s changed: %s; filter updated", nsvc.Namespace, nsvc.Name, changed)))
		}
		entries = nentries
		snap = next
		pipe.SetMetadata(next, nsvc)
		for _, s := range cfg.Sinks {
			sinkErr(s.Metadata(next))
		}
	}

	if cfg.ReadyFile != "" {
		if err := os.WriteFile(cfg.ReadyFile, []byte(fmt.Sprintf("%d\n", os.Getpid())), 0o644); err != nil {
			return nil, fmt.Errorf("write ready file: %w", err)
		}
	}

	if cfg.Ready != nil {
		cfg.Ready()
	}
	start := time.Now()
	var deadline time.Time
	if cfg.Duration > 0 {
		deadline = start.Add(cfg.Duration)
	}
	lastStats, lastStatus := start, start
	var statusEvents uint64
	var ev event.Event
	const poll = 50 * time.Millisecond
	pending := false

	collect := func(final bool) {
		ps := pipe.Stats()
		stats.Paths, stats.Verdicts, stats.Evicted = ps.Paths, ps.Verdicts, ps.Evicted
		stats.RouteRepeatsUnknown = ps.RouteRepeatsUnknown
		stats.Elapsed = time.Since(start).Seconds()
		if c, err := probes.Counters(); err == nil {
			stats.Emitted, stats.Lost, stats.Sampled, stats.RouteRepeats = 0, 0, 0, 0
			for i := range c.Emitted {
				stats.Emitted += c.Emitted[i]
				stats.Lost += c.Lost[i]
				stats.Sampled += c.Sampled[i]
				stats.RouteRepeats += c.RouteRepeats[i]
			}
			stats.LostPerCPU = c.Lost
		}
		stats.Lost += reader.LostSamples()
		stats.Final = final
	}

	// The read loop's per-event path is decode and feed only: the clock,
	// the context, the deadline and the pipeline's completions are looked
	// at every 256 events and whenever the ring runs dry (reading the clock
	// and setting the reader's deadline per event cost more than decoding).
	readDeadline := start.Add(poll)
	for !pipe.Done() && pipe.Err() == nil {
		rec, err := reader.Read(readDeadline)
		// The pipeline's clock: while events are being read, the newest
		// event's time (a reader that lags must not complete packets whose
		// later events are still in the ring); once the ring is drained,
		// the kernel's clock (so paths complete when traffic stops).
		var clockNow uint64
		switch {
		case err == nil:
			stats.Events++
			if err := dec.Decode(rec, &ev); err != nil {
				stats.DecodeErrors++
				continue
			}
			feed(&ev)
			if stats.Events%256 != 0 {
				continue // amortise the housekeeping below
			}
			clockNow = ev.Time
		case errors.Is(err, os.ErrDeadlineExceeded):
			clockNow = Monotonic()
		case errors.Is(err, attach.ErrReaderClosed):
			return nil, fmt.Errorf("event reader closed unexpectedly: %w", err)
		default:
			return nil, fmt.Errorf("read events: %w", err)
		}
		if ctx.Err() != nil {
			break
		}
		now := time.Now()
		if !deadline.IsZero() && now.After(deadline) {
			break
		}
		select {
		case next, ok := <-updates:
			if ok {
				applyUpdate(next)
			} else {
				updates = nil
			}
		case msg := <-cfg.Notices:
			_ = cfg.Renderer.Record(notice(msg))
		case msg := <-devMsgs:
			_ = cfg.Renderer.Record(notice(msg))
		default:
		}
		pending = pipe.Advance(clockNow)
		if cfg.StatsEvery > 0 && now.Sub(lastStats) >= cfg.StatsEvery {
			lastStats = now
			collect(false)
			_ = cfg.Renderer.Stats(stats)
		}
		if cfg.Status != nil && now.Sub(lastStatus) >= time.Second {
			collect(false)
			rate := float64(stats.Events-statusEvents) / now.Sub(lastStatus).Seconds()
			statusEvents = stats.Events
			lastStatus = now
			fmt.Fprintf(cfg.Status, "\r\x1b[2Ktracing %s/%s: %.0f events/s, %d paths, %d lost, %s",
				svc.Namespace, svc.Name, rate, stats.Paths, stats.Lost, time.Since(start).Truncate(time.Second))
		}
		_ = cfg.Renderer.Flush()
		wait := poll
		if pending {
			wait = 0 // paths are due: only take what is already there
		}
		readDeadline = now.Add(wait)
	}
	if cfg.Status != nil {
		fmt.Fprint(cfg.Status, "\r\x1b[2K")
	}
	// Drain what the kernel already submitted, then complete every path.
	for !pipe.Done() {
		rec, err := reader.Read(time.Now().Add(10 * time.Millisecond))
		if err != nil {
			break
		}
		stats.Events++
		if dec.Decode(rec, &ev) == nil {
			feed(&ev)
		}
	}
	pipe.Flush()
	collect(true)
	renderErr := pipe.Err()
	if err := cfg.Renderer.Stats(stats); err != nil && renderErr == nil {
		renderErr = err
	}
	if err := cfg.Renderer.Flush(); err != nil && renderErr == nil {
		renderErr = err
	}
	if stats.Lost > 0 {
		fmt.Fprintf(warn, "svctrace: %d events lost (ring buffer full)\n", stats.Lost)
	}
	return stats, renderErr
}
