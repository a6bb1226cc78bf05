// Package pipeline is the part of svctrace that live tracing and replay
// share: decoded events in, then correlate (per packet, across NAT) →
// enrich (names) → diagnose (verdicts) → render. Time is the events' own
// (kernel ktime), advanced by the caller, so the same events give the same
// paths and verdicts live and from a recording.
package pipeline

import (
	"net/netip"
	"time"

	"github.com/svctrace/svctrace/internal/correlate"
	"github.com/svctrace/svctrace/internal/diagnose"
	"github.com/svctrace/svctrace/internal/enrich"
	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/pkg/event"
)

// Devices names devices and namespaces and knows their addresses.
type Devices interface {
	enrich.DeviceNamer
	diagnose.Devices
}

// Config configures a Pipeline.
type Config struct {
	Snap    *meta.Snapshot
	Service *meta.Service
	// Node is the node traced; NodeNetns its namespace's inode.
	Node      string
	NodeNetns uint32
	Devices   Devices
	Renderer  render.Renderer
	// Events also renders every raw event.
	Events bool
	// PerFlow renders only the first packet of each flow direction and
	// every failed packet (verdicts are unaffected).
	PerFlow bool
	// Count stops after this many paths (0: no limit).
	Count int
	// Idle is the correlator's packet completion delay (0: default).
	Idle time.Duration
	// OnPath and OnVerdict, when set, see every path and verdict after
	// enrichment (recorders, pcapng comments).
	OnPath    func(*event.Path)
	OnVerdict func(*event.Verdict)
	// OnAdvance, when set, sees every Advance before the pipeline acts on
	// it (recordings replay the clock).
	OnAdvance func(now uint64)
}

// Pipeline turns events into rendered paths and verdicts. Not safe for
// concurrent use.
type Pipeline struct {
	cfg   Config
	corr  *correlate.Correlator
	en    *enrich.Enricher
	diag  *diagnose.Diagnoser
	flows *flowFilter
	stats event.Stats
	// svcNames remembers ServiceName by Service address (serviceName).
	svcNames names
	done     bool
	err      error
}

// New returns a Pipeline.
func New(cfg Config) *Pipeline {
	p := &Pipeline{cfg: cfg}
	p.en = &enrich.Enricher{Names: newNamer(cfg.Snap), Devices: cfg.Devices}
	p.diag = diagnose.New(diagnose.Config{Snap: cfg.Snap, Service: cfg.Service, Node: cfg.Node,
		NodeNetns: cfg.NodeNetns, Devices: cfg.Devices})
	if cfg.PerFlow {
		p.flows = newFlowFilter(65536)
	}
	// Renderers, the enricher and the diagnoser are done with a path when
	// it has been handed on; hooks (recorders) may keep it.
	p.corr = correlate.New(correlate.Options{Idle: cfg.Idle, NodeNetns: cfg.NodeNetns, ReusePaths: cfg.OnPath == nil}, p.path)
	return p
}

// SetMetadata switches to a newer snapshot of the cluster (the traced
// Service's endpoints changed).
func (p *Pipeline) SetMetadata(snap *meta.Snapshot, svc *meta.Service) {
	// Packets already seen are judged against the cluster as it was when
	// they passed: complete them before switching.
	p.corr.Flush()
	p.cfg.Snap, p.cfg.Service = snap, svc
	p.en.Names = newNamer(snap)
	p.svcNames = nil
	p.diag.SetSnapshot(snap, svc)
}

// Event takes one decoded event (it is copied where kept).
func (p *Pipeline) Event(ev *event.Event) {
	p.stats.Events++
	if p.cfg.Events {
		p.en.Event(ev)
		p.note(p.cfg.Renderer.Event(ev))
	}
	p.corr.Add(ev)
}

// Advance moves time to now (kernel ktime, ns), completing idle packets;
// pending reports that a bounded share was completed and more are due.
func (p *Pipeline) Advance(now uint64) (pending bool) {
	if p.cfg.OnAdvance != nil {
		p.cfg.OnAdvance(now)
	}
	return p.corr.Advance(now)
}

// Flush completes every packet (end of trace or recording).
func (p *Pipeline) Flush() { p.corr.Flush() }

// Done reports whether Count paths were rendered.
func (p *Pipeline) Done() bool { return p.done }

// Err returns the first rendering error.
func (p *Pipeline) Err() error { return p.err }

// Stats returns the pipeline's counts (paths, verdicts, evictions; Events
// counts events given to Event).
func (p *Pipeline) Stats() event.Stats {
	s := p.stats
	s.Evicted = p.corr.Evicted()
	s.RouteRepeatsUnknown = p.corr.RouteRepeatsUnknown()
	return s
}

func (p *Pipeline) note(err error) {
	if err != nil && p.err == nil {
		p.err = err
	}
}

func (p *Pipeline) path(path *event.Path) {
	if p.done {
		return // Count reached: what is still in flight is not shown
	}
	path.Service = p.serviceName(path)
	p.en.Path(path)
	v := p.diag.Path(path)
	if p.cfg.OnPath != nil {
		p.cfg.OnPath(path)
	}
	if p.flows == nil || p.flows.keep(path) {
		p.note(p.cfg.Renderer.Path(path))
	}
	if v != nil {
		if p.stats.Verdicts == nil {
			p.stats.Verdicts = map[string]uint64{}
		}
		p.stats.Verdicts[v.Verdict]++
		if p.cfg.OnVerdict != nil {
			p.cfg.OnVerdict(v)
		}
		p.note(p.cfg.Renderer.Verdict(v))
	}
	p.stats.Paths++
	if p.cfg.Count > 0 && p.stats.Paths >= uint64(p.cfg.Count) {
		p.done = true
	}
}

// Namer adapts a metadata snapshot to enrich.Namer. It remembers the
// names it gave (every path names its client and backend: building the
// same string for every packet of a flow was most of the enricher's work).
type Namer struct {
	Snap  *meta.Snapshot
	cache names
}

type nameKey struct {
	ap    netip.AddrPort
	proto uint8
}

// names remembers display names by address; it starts over when it holds
// maxNames.
type names map[nameKey]string

const maxNames = 4096

func (c *names) put(k nameKey, s string) {
	if *c == nil || len(*c) >= maxNames {
		*c = names{}
	}
	(*c)[k] = s
}

func newNamer(snap *meta.Snapshot) *Namer { return &Namer{Snap: snap} }

// NameOf implements enrich.Namer.
func (n *Namer) NameOf(ap netip.AddrPort, proto uint8) string {
	if n.Snap == nil {
		return ""
	}
	k := nameKey{ap, proto}
	if s, ok := n.cache[k]; ok {
		return s
	}
	s := ""
	if nm := n.Snap.Name(ap.Addr(), ap.Port(), proto); nm.Known() {
		s = nm.String()
	}
	n.cache.put(k, s)
	return s
}

// serviceName is ServiceName, remembered per Service address (reset with
// the metadata).
func (p *Pipeline) serviceName(path *event.Path) string {
	if p.cfg.Service == nil {
		return ""
	}
	k := nameKey{serviceDst(path), path.Original.Proto}
	if s, ok := p.svcNames[k]; ok {
		return s
	}
	s := ServiceName(p.cfg.Snap, p.cfg.Service, path)
	p.svcNames.put(k, s)
	return s
}

func serviceDst(p *event.Path) netip.AddrPort {
	dst := p.Original.Dst
	if p.Reply {
		dst = p.Original.Src
	}
	if p.Conntrack != nil {
		dst = p.Conntrack.Original.Dst
	}
	return dst
}

// ServiceName returns the display name of the Service port a path used
// ("default/hostnames:80/TCP"), from the flow's original destination.
func ServiceName(snap *meta.Snapshot, svc *meta.Service, p *event.Path) string {
	if svc == nil {
		return ""
	}
	dst := serviceDst(p)
	if p.Original.Proto == event.ProtoICMP {
		return svc.Namespace + "/" + svc.Name // an ICMP error about the Service's flow
	}
	if snap != nil {
		nm := snap.Name(dst.Addr(), dst.Port(), p.Original.Proto)
		if nm.Kind == meta.KindService && nm.Namespace == svc.Namespace && nm.Name == svc.Name {
			return nm.String()
		}
	}
	return svc.Namespace + "/" + svc.Name
}
