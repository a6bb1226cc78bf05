package record

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"sort"
	"strconv"
	"time"

	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/pipeline"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/svctrace/svctrace/pkg/event"
)

// ReplayConfig configures Replay. The output options mean what they mean
// for a live trace.
type ReplayConfig struct {
	Renderer render.Renderer
	Events   bool
	PerFlow  bool
	Count    int
	// Sinks see the replayed trace as they would a live one (pcapng).
	Sinks []tracer.Sink
	// Warn receives the reader's warnings as they happen; they are also in
	// the Summary.
	Warn io.Writer
}

// Summary is what a replay saw: the counts of `svctrace replay --stats`.
type Summary struct {
	Type   string `json:"type"` // "recording-stats"
	Header Header `json:"header"`
	// Segments is how many files were read; Complete says the recording
	// ended cleanly.
	Segments int  `json:"segments"`
	Complete bool `json:"complete"`
	// Records counts records by type.
	Records map[string]uint64 `json:"records"`
	// First and Last are the kernel times of the first and last event.
	First uint64 `json:"first_ts,omitempty"`
	Last  uint64 `json:"last_ts,omitempty"`
	// Hooks counts events by where they were seen: the event kind, and for
	// netfilter events the hook and the side of NAT ("netfilter PREROUTING
	// before NAT").
	Hooks map[string]uint64 `json:"hooks"`
	// Verdicts counts the replayed verdicts by identifier.
	Verdicts map[string]uint64 `json:"verdicts"`
	// Services counts the replayed paths and verdicts by Service port.
	Services map[string]*ServiceCounts `json:"services"`
	// Paths is how many paths the replay produced; LivePaths and
	// LiveVerdicts how many the live run recorded.
	Paths        uint64 `json:"paths"`
	LivePaths    uint64 `json:"live_paths"`
	LiveVerdicts uint64 `json:"live_verdicts"`
	// Stats are the replayed pipeline's counts.
	Stats    event.Stats `json:"stats"`
	Warnings []string    `json:"warnings,omitempty"`
}

// ServiceCounts are one Service's counts.
type ServiceCounts struct {
	Paths    uint64            `json:"paths"`
	Verdicts map[string]uint64 `json:"verdicts,omitempty"`
}

// HookName is the name Summary.Hooks counts an event under.
func HookName(ev *event.Event) string {
	if ev.Kind == event.KindNetfilter {
		return "netfilter " + ev.Hook.Where(ev.AfterNAT)
	}
	return ev.Kind.String()
}

// RunInfo returns the live trace's description from a recording header.
func (h Header) RunInfo() tracer.RunInfo {
	return tracer.RunInfo{
		Version: h.Svctrace, Kernel: h.Kernel, Node: h.Node, NodeNetns: h.NodeNetns,
		Namespace: h.Namespace, Service: h.Service, Backend: h.Backend, Start: h.Start,
		ClockOffset: h.ClockOffset, Plan: h.Plan, Idle: h.idle(),
	}
}

// idle is the completion delay the live trace used.
func (h Header) idle() time.Duration {
	if h.Idle == 0 {
		return legacyIdle
	}
	return time.Duration(h.Idle)
}

// legacyIdle is the completion delay of the versions that did not record it.
const legacyIdle = 100 * time.Millisecond

// Clock returns the clock that turns the recording's kernel times into wall time.
func (h Header) Clock() render.Clock { return render.Clock{Offset: h.ClockOffset} }

// Replay runs the recording through the same pipeline a live trace uses:
// the same events, metadata changes, device answers and clock, so the same
// paths and verdicts come out. It stops early when ctx ends or Count paths
// were rendered. Corrupt records end it with a *FormatError; a torn final
// record is a warning.
func Replay(ctx context.Context, rd *Reader, cfg ReplayConfig) (*Summary, error) {
	hdr := rd.Header()
	sum := &Summary{Type: "recording-stats", Header: hdr, Records: map[string]uint64{},
		Hooks: map[string]uint64{}, Verdicts: map[string]uint64{}, Services: map[string]*ServiceCounts{}}
	warned := 0
	flushWarnings := func() {
		for ; warned < len(rd.Warnings()); warned++ {
			if cfg.Warn != nil {
				fmt.Fprintf(cfg.Warn, "svctrace: warning: %s\n", rd.Warnings()[warned])
			}
		}
	}
	defer flushWarnings()
	sinksClosed := false
	closeSinks := func() error {
		if sinksClosed {
			return nil
		}
		sinksClosed = true
		var first error
		for _, s := range cfg.Sinks {
			if err := s.Close(); err != nil && first == nil {
				first = err
			}
		}
		return first
	}
	defer closeSinks()

	devs := newDeviceTable()
	var pending *Record
	next := func() (*Record, error) {
		if pending != nil {
			r := pending
			pending = nil
			return r, nil
		}
		r, err := rd.Next()
		if err == nil {
			sum.Records[r.Type]++
		}
		return r, err
	}
	// consequences applies what the live run recorded after an input and
	// before the next: the device answers the pipeline got while handling
	// it, and the paths and verdicts it produced.
	consequences := func() error {
		for {
			r, err := next()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return err
			}
			if r.Input() {
				pending = r
				return nil
			}
			switch r.Type {
			case TypeDevice:
				devs.apply(r.Device)
			case TypeNetns:
				devs.netns[r.Netns.Netns] = r.Netns.Name
			case TypePath:
				sum.LivePaths++
			case TypeVerdict:
				sum.LiveVerdicts++
			}
		}
	}

	// The state before the first event: the first metadata, devices.
	var snap *meta.Snapshot
	var first *Record
	for snap == nil {
		r, err := next()
		if errors.Is(err, io.EOF) {
			rd.warn("the recording has no metadata record: nothing to replay")
			sum.Warnings, sum.Segments, sum.Complete = rd.Warnings(), rd.Segments(), rd.Complete()
			return sum, closeSinks()
		}
		if err != nil {
			return sum, err
		}
		switch r.Type {
		case TypeMetadata:
			snap, first = r.Metadata, r
		case TypeDevice:
			devs.apply(r.Device)
		case TypeNetns:
			devs.netns[r.Netns.Netns] = r.Netns.Name
		case TypeEvent, TypeTick:
			return sum, &FormatError{File: r.File, Line: r.Line, Offset: r.Offset, Err: fmt.Errorf("%s record before any metadata record", r.Type)}
		}
	}
	svc, err := snap.Service(hdr.Namespace, hdr.Service)
	if err != nil {
		return sum, &FormatError{File: first.File, Line: first.Line, Offset: first.Offset,
			Err: fmt.Errorf("the recorded metadata lacks the traced service: %w", err)}
	}
	var devices pipeline.Devices = devs
	for _, s := range cfg.Sinks {
		if err := s.Begin(hdr.RunInfo()); err != nil {
			return sum, err
		}
		if err := s.Metadata(snap); err != nil {
			return sum, err
		}
		devices = s.Devices(devices)
	}
	var sinkErr error
	noteSink := func(err error) {
		if err != nil && sinkErr == nil {
			sinkErr = err
		}
	}
	pcfg := pipeline.Config{
		Snap: snap, Service: svc, Node: hdr.Node, NodeNetns: hdr.NodeNetns, Devices: devices,
		Renderer: cfg.Renderer, Events: cfg.Events, PerFlow: cfg.PerFlow, Count: cfg.Count,
		Idle: hdr.idle(),
		OnPath: func(p *event.Path) {
			sum.Paths++
			sc := sum.Services[p.Service]
			if sc == nil {
				sc = &ServiceCounts{}
				sum.Services[p.Service] = sc
			}
			sc.Paths++
			for _, s := range cfg.Sinks {
				noteSink(s.Path(p))
			}
		},
		OnVerdict: func(v *event.Verdict) {
			sc := sum.Services[v.Service]
			if sc == nil {
				sc = &ServiceCounts{}
				sum.Services[v.Service] = sc
			}
			if sc.Verdicts == nil {
				sc.Verdicts = map[string]uint64{}
			}
			sc.Verdicts[v.Verdict]++
			sum.Verdicts[v.Verdict]++
			for _, s := range cfg.Sinks {
				noteSink(s.Verdict(v))
			}
		},
		OnAdvance: func(now uint64) {
			for _, s := range cfg.Sinks {
				noteSink(s.Advance(now))
			}
		},
	}
	pipe := pipeline.New(pcfg)
	if err := consequences(); err != nil {
		return sum, err
	}
	for n := 0; !pipe.Done() && pipe.Err() == nil && sinkErr == nil; n++ {
		if n%1024 == 0 {
			if err := ctx.Err(); err != nil {
				return sum, err
			}
			flushWarnings()
		}
		r, err := next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return sum, err
		}
		if !r.Input() {
			continue // only before the first input (the consequences of none)
		}
		if err := consequences(); err != nil {
			return sum, err
		}
		switch r.Type {
		case TypeEvent:
			ev := r.Event
			sum.Hooks[HookName(ev)]++
			if sum.First == 0 || ev.Time < sum.First {
				sum.First = ev.Time
			}
			if ev.Time > sum.Last {
				sum.Last = ev.Time
			}
			for _, s := range cfg.Sinks {
				noteSink(s.Event(ev))
			}
			pipe.Event(ev)
		case TypeTick:
			pipe.Advance(r.Tick)
		case TypeMetadata:
			nsvc, err := r.Metadata.Service(hdr.Namespace, hdr.Service)
			if err != nil {
				rd.warn(fmt.Sprintf("%s: line %d: the metadata change lacks the traced service: kept the previous metadata", r.File, r.Line))
				continue
			}
			pipe.SetMetadata(r.Metadata, nsvc)
			for _, s := range cfg.Sinks {
				noteSink(s.Metadata(r.Metadata))
			}
		}
	}
	pipe.Flush()
	sum.Stats = pipe.Stats()
	sum.Stats.Type, sum.Stats.Final = "stats", true
	sum.Segments, sum.Complete = rd.Segments(), rd.Complete()
	renderErr := pipe.Err()
	if err := cfg.Renderer.Stats(&sum.Stats); err != nil && renderErr == nil {
		renderErr = err
	}
	if err := cfg.Renderer.Flush(); err != nil && renderErr == nil {
		renderErr = err
	}
	if cfg.Count == 0 && rd.Complete() && rd.Contiguous() && sum.Paths != sum.LivePaths {
		rd.warn(fmt.Sprintf("the replay gave %d paths, the live trace recorded %d", sum.Paths, sum.LivePaths))
	}
	if v := countVerdicts(sum.Verdicts); cfg.Count == 0 && rd.Complete() && rd.Contiguous() && v != sum.LiveVerdicts {
		rd.warn(fmt.Sprintf("the replay gave %d verdicts, the live trace recorded %d", v, sum.LiveVerdicts))
	}
	sum.Warnings = rd.Warnings()
	if err := closeSinks(); err != nil && renderErr == nil {
		renderErr = err
	}
	if sinkErr != nil && renderErr == nil {
		renderErr = sinkErr
	}
	return sum, renderErr
}

func countVerdicts(m map[string]uint64) uint64 {
	var n uint64
	for _, v := range m {
		n += v
	}
	return n
}

// deviceTable answers device questions from what a recording says the
// live resolver answered (and what it answers for devices it cannot find).
type deviceTable struct {
	devs  map[devKey]*devState
	netns map[uint32]string
}

func newDeviceTable() *deviceTable {
	return &deviceTable{devs: map[devKey]*devState{}, netns: map[uint32]string{}}
}

func (t *deviceTable) apply(d *Device) {
	k := devKey{d.Netns, d.Ifindex}
	st := t.devs[k]
	if st == nil {
		st = &devState{}
		t.devs[k] = st
	}
	st.merge(d)
}

func (t *deviceTable) Device(netns, ifindex uint32) string {
	if st := t.devs[devKey{netns, ifindex}]; st != nil && st.hasName {
		return st.name
	}
	return "if" + strconv.FormatUint(uint64(ifindex), 10)
}

func (t *deviceTable) Netns(netns uint32) string { return t.netns[netns] }

func (t *deviceTable) Kind(netns, ifindex uint32) string {
	if st := t.devs[devKey{netns, ifindex}]; st != nil {
		return st.kind
	}
	return ""
}

func (t *deviceTable) Prefixes(netns, ifindex uint32) []netip.Prefix {
	if st := t.devs[devKey{netns, ifindex}]; st != nil {
		return st.prefixes
	}
	return nil
}

// SortedKeys returns a count map's keys, largest count first, then by name.
func SortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i] < keys[j]
	})
	return keys
}
