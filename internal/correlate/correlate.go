// Package correlate groups decoded events into packet paths: every event of
// one packet (same skb, same IP ID) in time order, the NAT steps between
// them, the route lookups and connect-time source selection of its flow, and
// where it ended. Time is the kernel's (event timestamps); callers advance it
// with Advance so that a live trace and a replayed recording produce the same
// paths.
package correlate

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/svctrace/svctrace/pkg/event"
)

// Options configure a Correlator.
type Options struct {
	// Idle is how long (in kernel time) a packet may go without a new event
	// before its path is complete. Default DefaultIdle.
	Idle time.Duration
	// FlowWindow is how far before a packet a route lookup or connect of
	// its flow may be. Default 1s.
	FlowWindow time.Duration
	// MaxPackets caps the packets being assembled; the oldest is completed
	// early when the cap is reached (counted in Evicted). Default 16384:
	// with a packet's events at ~0.5 KB each, about 40-80 MB at the cap,
	// which a traced rate of ~160,000 packets/s reaches (Idle 100 ms).
	MaxPackets int
	// MaxFlowEvents caps buffered route/connect events; the oldest go first
	// (counted in Evicted). Default 16384: every traced packet's route
	// lookup is one, kept FlowWindow for packets of its flow to claim, and
	// at ~500 bytes each a larger cap was most of the heap under load.
	MaxFlowEvents int
	// NodeNetns is the inode of the node's network namespace: a packet
	// first seen being sent from it was originated by the node.
	NodeNetns uint32
	// ReusePaths says emit keeps nothing of a path (nor of what it points
	// to) once it returns: the next path is built in the same storage. Set
	// by consumers that render synchronously; a traced stream of every
	// packet makes tens of thousands of paths a second, whose garbage
	// (~3 KB each) kept the collector busy.
	ReusePaths bool
}

type pktKey struct {
	skb  uint64
	ipid uint16
}

type packet struct {
	key    pktKey
	events []event.Event
	last   uint64
	gen    uint64           // bumped when the packet completes (its storage may be reused)
	hdrs   []byte           // the events' header snapshots, back to back
	ct     *event.Conntrack // the last conntrack entry copied for an event
}

// queued is a packet in arrival order; gen tells an open packet from a
// completed one whose storage was reused.
type queued struct {
	p   *packet
	gen uint64
}

// live reports whether q still stands for an open packet.
func live(q queued) bool { return q.p.gen == q.gen }

// maxFreePackets bounds the completed packets kept for reuse: their event
// storage (~4.5 KB each) is scanned by every garbage collection, used or
// not.
const maxFreePackets = 384

// maxCompletePerAdvance bounds the paths one Advance completes, so that a
// backlog (a reader catching up, a burst) is worked off between reads
// instead of stalling them.
const maxCompletePerAdvance = 512

// DefaultIdle is the default Options.Idle. A packet's events span
// microseconds (a millisecond or two under software emulation); what is
// open costs memory (~5 KB a packet), so the wait is kept short. The clock
// it is measured on is the events' own while the reader is catching up
// (see Advance), so a reader that lags does not split paths.
const DefaultIdle = 25 * time.Millisecond

// The wait actually used adapts to the machine (see Correlator.idle):
// gapFactor times the longest gap seen between two events of one packet
// in the last one to two seconds, no less than minIdle, no more than
// Options.Idle, and Options.Idle until gapSamples gaps have been seen. On
// hardware a packet's events are microseconds apart and paths complete
// after minIdle: the packets still open then are a fifth as many as after
// 25 ms, and building a path from events still in the CPU's cache cost a
// sixth less of svctrace's time on a traced stream. Under software
// emulation the gaps are milliseconds, and the wait stays near the cap.
const (
	minIdle    = 5 * time.Millisecond
	gapFactor  = 8
	gapSamples = 256
	gapWindow  = uint64(time.Second)
)

// Correlator assembles paths. It is not safe for concurrent use.
type Correlator struct {
	opts    Options
	packets map[pktKey]*packet
	order   []queued                 // by first event, for expiry, eviction and deterministic flushing
	flows   []*flowEvent             // route/connect events, in time order
	byDst   map[netip.Addr]*flowList // the same, by destination, in time order
	// freeFlows are flow events expired or evicted, for reuse.
	freeFlows []*flowEvent
	failed    []*flowEvent // the failed lookups among them
	connect   []*flowEvent // the connect events among them
	outputs   int          // the output route lookups among them (see connectLookup)
	emit      func(*event.Path)
	free      []*packet   // completed packets, reused (their event storage)
	spare     *event.Path // the last path emitted, for reuse (Options.ReusePaths)
	// Scratch space of build and claimRoutes, reused from path to path.
	netnses nsSet
	tuples  []event.Tuple
	dsts    []netip.Addr
	cands   []*flowEvent
	evicted uint64
	dropped uint64 // flow events nobody claimed
	now     uint64
	// routes is the last successful input route lookup received per
	// namespace, source, destination and input device: the result a
	// packet's repeated lookup had (Event.RouteRepeat).
	routes        map[routeKey]event.RouteStep
	repeatUnknown uint64 // repeats whose lookup is not in routes
	// gaps between consecutive events of one packet: the longest in the
	// current window of event time (from gapStart) and in the previous
	// one, and how many were seen (see idle).
	gapMax   [2]uint64
	gapStart uint64
	gapSeen  uint64
}

// nsSet is the network namespaces a packet was seen in: a handful, so a
// slice searched in order (a map cost more to clear and fill per path).
type nsSet []uint32

func (s nsSet) has(ns uint32) bool { return slices.Contains(s, ns) }

func (s nsSet) add(ns uint32) nsSet {
	if s.has(ns) {
		return s
	}
	return append(s, ns)
}

type routeKey struct {
	netns, iif, src, dst uint32 // addresses: IPv4 (svctrace traces IPv4)
}

func v4(a netip.Addr) uint32 {
	if !a.Is4() {
		return 0
	}
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// maxRoutes caps Correlator.routes: the kernel side keeps as many.
const maxRoutes = 16384

const (
	loopbackIfindex = 1   // output lookups have it as their input device
	localTable      = 255 // local delivery: never repeated (see the kernel side's route_repeat)
)

type flowEvent struct {
	ev      event.Event
	claimed bool
}

// flowList is the flow events towards one destination, in time order.
// Packets claim them roughly in order: the first done are known to be
// claimed, and a search for candidates starts past them (a busy flow's
// destination has thousands of lookups in the window, nearly all claimed).
type flowList struct {
	evs  []*flowEvent
	done int
}

// New returns a Correlator that calls emit for every completed path.
func New(opts Options, emit func(*event.Path)) *Correlator {
	if opts.Idle == 0 {
		opts.Idle = DefaultIdle
	}
	if opts.FlowWindow == 0 {
		opts.FlowWindow = time.Second
	}
	if opts.MaxPackets == 0 {
		opts.MaxPackets = 16384
	}
	if opts.MaxFlowEvents == 0 {
		opts.MaxFlowEvents = 16384
	}
	return &Correlator{opts: opts, packets: map[pktKey]*packet{}, byDst: map[netip.Addr]*flowList{}, emit: emit,
		routes: map[routeKey]event.RouteStep{}}
}

// Evicted returns how many packets were completed early because of the cap.
func (c *Correlator) Evicted() uint64 { return c.evicted }

// RouteRepeatsUnknown returns how many packets noted a repeated route
// lookup whose first result was never received: their paths lack it.
func (c *Correlator) RouteRepeatsUnknown() uint64 { return c.repeatUnknown }

// isFlowKind reports kinds that describe a flow, not a packet.
func isFlowKind(k event.Kind) bool {
	return k == event.KindFIB || k == event.KindRouteOut || k == event.KindConnect || k == event.KindNATBind
}

// Add takes one event (it is copied).
func (c *Correlator) Add(ev *event.Event) {
	if ev.Time > c.now {
		c.now = ev.Time
	}
	if isFlowKind(ev.Kind) || ev.SKB == 0 {
		// Claimed lookups are done with: they go first, uncounted.
		for len(c.flows) > 0 && c.flows[0].claimed {
			c.freeFlow(c.popFlow())
		}
		if len(c.flows) >= c.opts.MaxFlowEvents {
			f := c.popFlow()
			c.evicted++ // unclaimed: no packet will have it
			c.freeFlow(f)
		}
		var f *flowEvent
		if n := len(c.freeFlows); n > 0 {
			f = c.freeFlows[n-1]
			c.freeFlows = c.freeFlows[:n-1]
		} else {
			f = &flowEvent{}
		}
		hdr := f.ev.Header[:0]
		f.ev, f.claimed = *ev, false
		f.ev.Header = nil
		if len(ev.Header) > 0 {
			f.ev.Header = append(hdr, ev.Header...)
		}
		if ev.Conntrack != nil { // the decoder reuses its storage
			ct := *ev.Conntrack
			f.ev.Conntrack = &ct
		}
		c.flows = append(c.flows, f)
		dst := f.ev.Packet.Dst.Addr()
		l := c.byDst[dst]
		if l == nil {
			l = &flowList{}
			c.byDst[dst] = l
		}
		l.evs = append(l.evs, f)
		if f.ev.RouteError != 0 {
			c.failed = append(c.failed, f)
		}
		if f.ev.Kind == event.KindFIB && f.ev.RouteError == 0 && f.ev.FlowIif != loopbackIfindex && f.ev.Table != localTable {
			c.noteRoute(&f.ev)
		}
		switch f.ev.Kind {
		case event.KindConnect:
			c.connect = append(c.connect, f)
		case event.KindRouteOut:
			c.outputs++
		}
		return
	}
	k := pktKey{ev.SKB, ev.IPID}
	p := c.packets[k]
	if p != nil && (ended(&p.events[len(p.events)-1]) || !follows(p.events[len(p.events)-1].Packet, ev.Packet)) {
		// The skb address and IP ID were reused by another packet (kernel
		// replies such as RSTs carry IP ID 0): complete the first one.
		c.complete(p)
		p = nil
	}
	if p != nil && ev.Time > p.last {
		c.noteGap(ev.Time - p.last)
	}
	if p == nil {
		if len(c.packets) >= c.opts.MaxPackets {
			c.evictOldest()
		}
		p = c.newPacket(k)
		c.packets[k] = p
		c.order = append(c.order, queued{p: p, gen: p.gen})
	}
	p.events = append(p.events, *ev)
	e := &p.events[len(p.events)-1]
	if len(ev.Header) > 0 {
		// One buffer per packet for its header snapshots. A full buffer is
		// replaced, not grown: earlier events keep pointing into the old one.
		if cap(p.hdrs)-len(p.hdrs) < len(ev.Header) {
			p.hdrs = make([]byte, 0, max(10*len(ev.Header), 2*cap(p.hdrs)))
		}
		n := len(p.hdrs)
		p.hdrs = append(p.hdrs, ev.Header...)
		e.Header = p.hdrs[n:len(p.hdrs):len(p.hdrs)]
	} else {
		e.Header = nil
	}
	if ev.Conntrack != nil {
		// A packet meets the same conntrack entry at most hooks (devices in
		// namespaces without conntrack in between): share one copy.
		if p.ct != nil && *p.ct == *ev.Conntrack {
			e.Conntrack = p.ct
		} else {
			ct := *ev.Conntrack
			e.Conntrack = &ct
			p.ct = e.Conntrack
		}
	}
	p.last = ev.Time
}

// noteGap records the time between two consecutive events of a packet.
func (c *Correlator) noteGap(gap uint64) {
	if c.now-c.gapStart >= gapWindow {
		c.gapMax[1], c.gapMax[0] = c.gapMax[0], 0
		c.gapStart = c.now
	}
	c.gapMax[0] = max(c.gapMax[0], gap)
	c.gapSeen++
}

// idle is how long a packet may go without an event before its path is
// complete (see minIdle).
func (c *Correlator) idle() uint64 {
	limit := uint64(c.opts.Idle)
	if c.gapSeen < gapSamples {
		return limit
	}
	return min(max(gapFactor*max(c.gapMax[0], c.gapMax[1]), uint64(minIdle)), limit)
}

// ended reports whether nothing can follow an event for the same packet:
// it was delivered to the local stack (past INPUT's NAT), or dropped.
func ended(e *event.Event) bool {
	switch e.Kind {
	case event.KindNetfilter:
		return e.Hook == event.HookLocalIn && e.AfterNAT
	case event.KindDrop:
		return !socketTeardown(e)
	}
	return false
}

// follows reports whether a packet seen with tuple prev can next be seen with
// tuple next: unchanged, or rewritten on one side (one NAT step).
func follows(prev, next event.Tuple) bool {
	if prev.Proto != next.Proto {
		return false
	}
	return prev.Src == next.Src || prev.Dst == next.Dst
}

// newPacket takes a packet from the free list, or makes one.
func (c *Correlator) newPacket(k pktKey) *packet {
	if n := len(c.free); n > 0 {
		p := c.free[n-1]
		c.free = c.free[:n-1]
		p.key = k
		return p
	}
	// A packet crossing a node (pod to pod through the node's netfilter)
	// makes six events: the pod's device out, the node's device in,
	// netfilter after NAT at PREROUTING and POSTROUTING, the node's device
	// out, the pod's device in (its route lookup is a flow event). Room
	// for two more (drops, a second pass through OUTPUT), else it grows.
	return &packet{key: k, events: make([]event.Event, 0, 8)}
}

// release returns a completed packet's storage to the free list.
func (c *Correlator) release(p *packet) {
	p.gen++
	// Paths handed out may still point into the header buffer: a reused
	// packet starts a new one.
	p.hdrs = nil
	p.ct = nil
	clear(p.events)
	p.events = p.events[:0]
	if len(c.free) < maxFreePackets {
		c.free = append(c.free, p)
	}
}

func (c *Correlator) evictOldest() {
	for len(c.order) > 0 {
		q := c.order[0]
		c.order = c.order[1:]
		if live(q) {
			c.evicted++
			c.complete(q.p)
			return
		}
	}
}

// Advance moves the correlator's clock to now (kernel ktime, ns) and
// completes packets idle for Options.Idle, at most maxCompletePerAdvance of
// them; pending reports that more are due (call again soon).
func (c *Correlator) Advance(now uint64) (pending bool) {
	if now > c.now {
		c.now = now
	}
	idle := c.idle()
	budget := maxCompletePerAdvance
	kept := 0
	i := 0
	for ; i < len(c.order); i++ {
		q := c.order[i]
		if !live(q) {
			continue
		}
		if q.p.last+idle <= c.now {
			if budget == 0 {
				pending = true
				break
			}
			budget--
			c.complete(q.p)
			continue
		}
		c.order[kept] = q
		kept++
	}
	n := kept + copy(c.order[kept:], c.order[i:])
	clear(c.order[n:])
	c.order = c.order[:n]
	if !pending {
		// Route lookups wait for packets that completed late.
		c.expireFlows(c.now)
	}
	return pending
}

// Flush completes everything (end of trace or recording).
func (c *Correlator) Flush() {
	for _, q := range c.order {
		if live(q) {
			c.complete(q.p)
		}
	}
	c.order = nil
	c.expireFlows(^uint64(0))
}

// popFlow removes the oldest flow event from every index and returns it.
func (c *Correlator) popFlow() *flowEvent {
	f := c.flows[0]
	c.flows[0] = nil
	c.flows = c.flows[1:]
	if f.ev.Kind == event.KindRouteOut {
		c.outputs--
	}
	dst := f.ev.Packet.Dst.Addr()
	if l := c.byDst[dst]; l != nil {
		if len(l.evs) > 0 && l.evs[0] == f {
			l.evs[0] = nil
			l.evs = l.evs[1:]
			if l.done > 0 {
				l.done--
			}
			if len(l.evs) == 0 {
				delete(c.byDst, dst)
			}
		} else if i := slices.Index(l.evs, f); i >= 0 {
			l.evs = slices.Delete(l.evs, i, i+1)
			if i < l.done {
				l.done--
			}
		}
	}
	if len(c.failed) > 0 && c.failed[0] == f {
		c.failed[0] = nil
		c.failed = c.failed[1:]
	}
	if len(c.connect) > 0 && c.connect[0] == f {
		c.connect[0] = nil
		c.connect = c.connect[1:]
	}
	return f
}

// freeFlow keeps a popped flow event's storage for the next one (a few:
// what a burst of lookups needs).
func (c *Correlator) freeFlow(f *flowEvent) {
	if len(c.freeFlows) < 4096 {
		c.freeFlows = append(c.freeFlows, f)
	}
}

// lookupLead is how long before a packet its route lookups can be: the
// lookups of a connect() precede the SYN by far less. The connect event
// itself may be up to FlowWindow earlier (a retransmitted SYN).
const lookupLead = 10 * time.Millisecond

func (c *Correlator) expireFlows(now uint64) {
	horizon := uint64(c.opts.FlowWindow + c.opts.Idle)
	var orphans []event.Event
	for len(c.flows) > 0 {
		// Claimed flow events are done with whatever their age.
		if f := c.flows[0]; !f.claimed && now != ^uint64(0) && f.ev.Time+horizon > now {
			break
		}
		f := c.popFlow()
		if !f.claimed {
			orphans = append(orphans, f.ev)
			f.ev.Header = nil // the orphan keeps it
		}
		c.freeFlow(f)
	}
	c.orphans(orphans)
}

// orphans handles flow events no packet claimed. A flow whose route lookups
// all failed never produced a packet, so it is a path of its own (the lookups
// of one attempt, same namespace, destination and source port, grouped).
// Anything else unclaimed is only counted.
func (c *Correlator) orphans(evs []event.Event) {
	type flowID struct {
		netns uint32
		dst   netip.AddrPort
		sport uint16
		proto uint8
	}
	var order []flowID
	groups := map[flowID][]event.Event{}
	for _, ev := range evs {
		if ev.Kind != event.KindFIB && ev.Kind != event.KindRouteOut && ev.Kind != event.KindConnect {
			c.dropped++
			continue
		}
		id := flowID{ev.Netns, ev.Packet.Dst, ev.Packet.Src.Port(), ev.Packet.Proto}
		if _, ok := groups[id]; !ok {
			order = append(order, id)
		}
		groups[id] = append(groups[id], ev)
	}
	for _, id := range order {
		g := groups[id]
		if routed(g) {
			c.dropped += uint64(len(g))
			continue
		}
		last := g[len(g)-1]
		p := &event.Path{
			Type:     "path",
			Start:    g[0].Time,
			End:      last.Time,
			Original: g[0].Packet,
			Final:    last.Packet,
			Client:   event.Endpoint{Addr: last.Packet.Src},
			Entered:  "local",
			Result: event.Result{
				Outcome: event.OutcomeNoRoute,
				Netns:   last.Netns,
				Reason:  "no route to " + id.dst.Addr().String(),
			},
		}
		for i := range g {
			p.Routes = append(p.Routes, routeStep(&g[i]))
			p.Steps = append(p.Steps, step(&g[i]))
		}
		c.emit(p)
	}
}

// routed reports whether any lookup of the group succeeded (a miss in the
// local table followed by a hit in main is a normal lookup) or a connect
// went ahead.
func routed(g []event.Event) bool {
	for i := range g {
		if g[i].Kind == event.KindConnect || g[i].RouteError == 0 {
			return true
		}
	}
	return false
}

func (c *Correlator) complete(p *packet) {
	delete(c.packets, p.key)
	teardownOnly := true
	for i := range p.events {
		if p.events[i].Kind != event.KindDrop || !socketTeardown(&p.events[i]) {
			teardownOnly = false
			break
		}
	}
	if teardownOnly {
		// A delivered packet freed with its socket, seen after its path
		// completed: nothing new to report.
		c.dropped += uint64(len(p.events))
		c.release(p)
		return
	}
	byTime := func(a, b event.Event) int {
		switch {
		case a.Time < b.Time:
			return -1
		case a.Time > b.Time:
			return 1
		}
		return 0
	}
	// Events of one packet come from one CPU at a time: almost always in
	// order (checked by index: the comparator would copy each event twice).
	for i := 1; i < len(p.events); i++ {
		if p.events[i].Time < p.events[i-1].Time {
			slices.SortStableFunc(p.events, byTime)
			break
		}
	}
	path := c.build(p)
	c.emit(path)
	if c.opts.ReusePaths {
		c.spare = path
	}
	c.release(p)
}

// newPath returns a zeroed path, in the storage of the last one when it
// may be reused (its slices' arrays too, emptied).
func (c *Correlator) newPath() *event.Path {
	p := c.spare
	if p == nil {
		return &event.Path{}
	}
	c.spare = nil
	steps, nat, routes := p.Steps[:0], p.NAT[:0], p.Routes[:0]
	clear(p.Steps[:cap(p.Steps)])
	clear(p.NAT[:cap(p.NAT)])
	clear(p.Routes[:cap(p.Routes)])
	*p = event.Path{Steps: steps, NAT: nat, Routes: routes}
	return p
}

func (c *Correlator) build(p *packet) *event.Path {
	evs := p.events
	first, last := &evs[0], &evs[len(evs)-1]
	path := c.newPath()
	path.Type = "path"
	path.Start, path.End = first.Time, last.Time
	path.SKB = p.key.skb
	path.Original, path.Final = first.Packet, last.Packet
	if first.Kind == event.KindNetfilter && first.PreNAT.Proto != 0 {
		// First seen after a rewrite (no device event before it).
		path.Original = first.PreNAT
	}
	netnses := c.netnses[:0]
	defer func() { c.netnses = netnses[:0] }()
	if cap(path.Steps) < len(evs) {
		path.Steps = make([]event.Step, 0, max(len(evs), 12))
	}
	var ct *event.Conntrack
	for i := range evs {
		e := &evs[i]
		path.Steps = append(path.Steps, step(e))
		if e.TCPFlags != 0 && path.TCPFlags == 0 {
			path.TCPFlags = e.TCPFlags
		}
		if e.Netns != 0 {
			netnses = netnses.add(e.Netns)
		}
		// A packet crossing several namespaces meets several conntrack
		// entries: keep the one that translated it (the Service's), else
		// the first.
		if e.Conntrack != nil && (ct == nil || (!ct.DNATed() && e.Conntrack.DNATed())) {
			ct = e.Conntrack
		}
	}
	path.Conntrack = ct
	path.NAT = natSteps(evs, path.NAT)
	path.IPVS = ipvsStep(evs)
	if n := len(path.NAT); n > 0 && path.NAT[n-1].After.Src.IsValid() {
		// The last rewrite may be the last thing seen (kprobe backends).
		if last.Kind == event.KindNAT {
			path.Final = path.NAT[n-1].After
		}
	}
	path.Reply = isReply(path.Original, ct)
	if path.Reply {
		for i := range path.NAT {
			path.NAT[i].Reverse = true
		}
	}
	path.Client = event.Endpoint{Addr: path.Original.Src}
	if path.Reply {
		path.Client = event.Endpoint{Addr: path.Original.Dst}
		if ct != nil {
			path.Client = event.Endpoint{Addr: ct.Original.Src}
		}
	}
	path.Entered = entered(first, c.opts.NodeNetns)
	path.Routes = c.claimRoutes(path, netnses, path.Routes)
	path.Routes = c.repeatedRoutes(evs, path.Routes)
	if path.IPVS == nil {
		path.IPVS, path.NAT = ipvsFromStable(evs, path.Routes, path.NAT)
	}
	// After the IPVS inference: a real server IPVS could not route to is
	// known only from it (and without its port: its route lookup has none).
	if ct != nil && ct.DNATed() {
		path.Backend = event.Endpoint{Addr: ct.Reply.Src}
	} else if len(path.NAT) > 0 {
		for _, n := range path.NAT {
			if n.Type == event.DNAT && !path.Reply {
				path.Backend = event.Endpoint{Addr: n.After.Dst}
			}
		}
	}
	path.Result = result(evs)
	return path
}

// isReply reports whether a packet travels in the reply direction of its
// conntrack entry (backend -> client).
func isReply(t event.Tuple, ct *event.Conntrack) bool {
	if ct == nil {
		return false
	}
	if t.Src == ct.Original.Src && t.Dst == ct.Original.Dst {
		return false
	}
	if t.Src == ct.Reply.Src && t.Dst == ct.Reply.Dst {
		return true
	}
	// Partly translated: the reply comes from the backend or the Service.
	return t.Src == ct.Reply.Src || t.Src == ct.Original.Dst
}

func entered(e *event.Event, nodeNetns uint32) string {
	switch {
	case e.Kind == event.KindXmit && nodeNetns != 0 && e.Netns == nodeNetns:
		// first seen leaving a device of the node (loopback to a local VIP)
		return "local"
	case e.Kind == event.KindNetfilter && e.Hook == event.HookLocalOut:
		return "local"
	case (e.Kind == event.KindNAT || e.Kind == event.KindIPVSIn) && e.InIfindex == 0:
		// nf_nat or IPVS on a packet with no input device: locally
		// originated (the kernel-function backends see no netfilter hook).
		return "local"
	}
	return ""
}

// natSteps lists the packet's rewrites: from nf_nat events when the kernel
// function backends produced them, else from the netfilter before/after pairs.
func natSteps(evs []event.Event, out []event.NATStep) []event.NATStep {
	kernelFunc := false
	for i := range evs {
		e := &evs[i]
		switch e.Kind {
		case event.KindNAT:
			out = append(out, event.NATStep{
				Type: e.NAT, By: "nf_nat", Hook: natHook(evs, i), Before: e.Packet, After: e.NATResult, Source: e.Source,
			})
			kernelFunc = true
		case event.KindIPVSXmit:
			after := e.NATResult
			if after.IsZero() {
				after = ipvsAfter(evs, i)
			}
			if !after.IsZero() {
				out = append(out, event.NATStep{Type: event.DNAT, By: "ipvs", Hook: event.HookLocalIn.String(),
					Before: e.Packet, After: after, Source: e.Source})
			}
			kernelFunc = true
		}
	}
	if kernelFunc {
		return out
	}
	return netfilterRewrites(evs, out)
}

// netfilterRewrites reads the packet's rewrites off the netfilter links. A
// change between a hook's "before NAT" and "after NAT" observation is
// nf_nat's; where no link before NAT is attached (PREROUTING and
// POSTROUTING), the "before" view is the one the decoder rebuilt from the
// conntrack entry (PreNAT). A change between two observations at different
// hooks happened outside nf_nat's priorities: that is IPVS, which takes the
// packet at INPUT (or OUTPUT for the node's own traffic) and sends it out
// again through OUTPUT, and rewrites replies between PREROUTING and
// POSTROUTING.
func netfilterRewrites(evs []event.Event, out []event.NATStep) []event.NATStep {
	var prev nfView
	seen := false
	for i := range evs {
		e := &evs[i]
		if e.Kind != event.KindNetfilter {
			continue
		}
		var views [2]nfView
		n := 0
		if e.AfterNAT && e.PreNAT.Proto != 0 && (!seen || prev.hook != e.Hook || prev.after || prev.netns != e.Netns) {
			// No observation before this hook's NAT: the rebuilt one.
			views[n] = nfView{hook: e.Hook, netns: e.Netns, pkt: e.PreNAT}
			n++
		}
		views[n] = nfView{hook: e.Hook, after: e.AfterNAT, netns: e.Netns, pkt: e.Packet}
		n++
		for _, v := range views[:n] {
			if seen && prev.netns == v.netns && prev.pkt != v.pkt {
				out = append(out, rewrite(prev, v, e.Source))
			}
			prev, seen = v, true
		}
	}
	return out
}

// nfView is the packet as one netfilter observation saw it (or as the
// decoder rebuilt it, before a hook's NAT).
type nfView struct {
	hook  event.Hook
	after bool
	netns uint32
	pkt   event.Tuple
}

// rewrite is the change between two views of a packet: nf_nat's between
// one hook's views before and after NAT, else IPVS's.
func rewrite(prev, v nfView, src event.Source) event.NATStep {
	step := event.NATStep{Type: natType(prev.pkt, v.pkt), By: "nf_nat", Hook: prev.hook.String(),
		Before: prev.pkt, After: v.pkt, Source: src}
	if prev.hook != v.hook || prev.after || !v.after {
		step.By = "ipvs"
		switch {
		case prev.hook == event.HookPreRouting && v.hook == event.HookPostRouting:
			step.Hook = event.HookForward.String() // a reply, un-rewritten
		case prev.hook == event.HookPreRouting:
			step.Hook = event.HookLocalIn.String()
		}
	}
	return step
}

func natType(before, after event.Tuple) event.NATType {
	if before.Dst != after.Dst {
		return event.DNAT
	}
	return event.SNAT
}

// ipvsFromStable tells, for the stable backend (no IPVS probes), what IPVS
// did: from the rewrite the netfilter links saw, or, when the packet died
// at INPUT after a failed route lookup towards another address, from that
// lookup (IPVS picked that real server and could not reach it).
func ipvsFromStable(evs []event.Event, routes []event.RouteStep, nat []event.NATStep) (*event.IPVSStep, []event.NATStep) {
	for _, n := range nat {
		if n.By == "ipvs" && n.Type == event.DNAT {
			return &event.IPVSStep{Virtual: n.Before.Dst, Real: n.After.Dst, Source: n.Source}, nat
		}
	}
	if len(nat) > 0 {
		return nil, nat
	}
	var lastNF *event.Event
	for i := range evs {
		if evs[i].Kind == event.KindNetfilter {
			lastNF = &evs[i]
		}
	}
	if lastNF == nil || lastNF.Hook != event.HookLocalIn {
		return nil, nat
	}
	for _, r := range routes {
		if r.Kind == "fib" && r.Error != 0 && r.Dst != lastNF.Packet.Dst.Addr() && r.Time >= lastNF.Time {
			after := lastNF.Packet
			after.Dst = netip.AddrPortFrom(r.Dst, 0) // the real server's port is not visible
			step := event.NATStep{Type: event.DNAT, By: "ipvs", Hook: event.HookLocalIn.String(),
				Before: lastNF.Packet, After: after, Source: lastNF.Source}
			return &event.IPVSStep{Virtual: lastNF.Packet.Dst, Real: after.Dst, Source: lastNF.Source}, []event.NATStep{step}
		}
	}
	return nil, nat
}

// ipvsAfter finds where IPVS sent a packet when the connection itself could
// not be read (no module BTF): the new connection's real server, else the
// packet's next tuple.
func ipvsAfter(evs []event.Event, i int) event.Tuple {
	before := evs[i].Packet
	for j := range evs {
		if c := evs[j].IPVS; evs[j].Kind == event.KindIPVSConn && c != nil && c.Real.IsValid() {
			after := before
			after.Dst = c.Real
			return after
		}
	}
	for j := i + 1; j < len(evs); j++ {
		if t := evs[j].Packet; t.Dst != before.Dst && t.Src == before.Src {
			return t
		}
	}
	return event.Tuple{}
}

// ipvsStep summarises what IPVS did: virtual server hit, connection new or
// reused, real server, or no destination.
func ipvsStep(evs []event.Event) *event.IPVSStep {
	var st *event.IPVSStep
	sawConn := false
	for i := range evs {
		e := &evs[i]
		switch e.Kind {
		case event.KindIPVSIn:
			if st == nil {
				st = &event.IPVSStep{Virtual: e.Packet.Dst, Source: e.Source}
			}
		case event.KindIPVSConn:
			if st == nil {
				st = &event.IPVSStep{Virtual: e.Packet.Dst, Source: e.Source}
			}
			sawConn = true
			st.Connection = "new"
			if e.IPVS != nil {
				st.Real = e.IPVS.Real
				st.Weight, st.Available = e.IPVS.Weight, e.IPVS.Available
			}
		case event.KindIPVSNoDest:
			if st == nil {
				st = &event.IPVSStep{Virtual: e.Packet.Dst, Source: e.Source}
			}
			st.NoDestination = true
		case event.KindIPVSXmit:
			if st == nil {
				st = &event.IPVSStep{Virtual: e.Packet.Dst, Source: e.Source}
			}
			if !sawConn {
				st.Connection = "reused"
			}
			if e.IPVS != nil {
				st.Real = e.IPVS.Real
				if e.IPVS.Weight != nil {
					st.Weight, st.Available = e.IPVS.Weight, e.IPVS.Available
				}
			}
		}
	}
	return st
}

// natHook tells the netfilter hook of an nf_nat event: from the netfilter
// event just before it when there is one, else, for destination rewrites,
// from whether the packet has an input device (PREROUTING) or not (OUTPUT).
func natHook(evs []event.Event, i int) string {
	for j := i - 1; j >= 0; j-- {
		if evs[j].Kind == event.KindNetfilter {
			return evs[j].Hook.String()
		}
	}
	e := &evs[i]
	if e.NAT == event.DNAT {
		if e.InIfindex == 0 {
			return event.HookLocalOut.String()
		}
		return event.HookPreRouting.String()
	}
	return ""
}

// claimRoutes takes the buffered flow events that belong to this packet: same
// destination (before or after NAT), compatible source, in the namespaces the
// packet crossed, between FlowWindow before it and its end.
func (c *Correlator) claimRoutes(path *event.Path, netnses nsSet, out []event.RouteStep) []event.RouteStep {
	tuples := c.tuples[:0]
	defer func() { c.tuples = tuples[:0] }()
	add := func(t event.Tuple) {
		if !t.IsZero() && !slices.Contains(tuples, t) {
			tuples = append(tuples, t)
		}
	}
	for _, s := range path.Steps {
		add(s.Packet)
	}
	for _, n := range path.NAT {
		add(n.Before)
		add(n.After)
	}
	from := uint64(0)
	if w := uint64(c.opts.FlowWindow); path.Start > w {
		from = path.Start - w
	}
	// Candidates: lookups towards an address the packet carried (from
	// lookupLead before it), connect events (from FlowWindow before it), and
	// failed lookups while it was in flight (see inFlight below).
	lead := uint64(0)
	if l := uint64(lookupLead); path.Start > l {
		lead = path.Start - l
	}
	within := func(list []*flowEvent, done int, from uint64, cands []*flowEvent) []*flowEvent {
		for i := searchFrom(list, done, from); i < len(list) && list[i].ev.Time <= path.End; i++ {
			if !list[i].claimed {
				cands = append(cands, list[i])
			}
		}
		return cands
	}
	cands, dsts := c.cands[:0], c.dsts[:0]
	defer func() {
		clear(cands)
		c.cands, c.dsts = cands[:0], dsts[:0]
	}()
	for _, t := range tuples {
		if a := t.Dst.Addr(); !slices.Contains(dsts, a) {
			dsts = append(dsts, a)
			if l := c.byDst[a]; l != nil {
				for l.done < len(l.evs) && l.evs[l.done].claimed {
					l.done++
				}
				cands = within(l.evs, l.done, lead, cands)
			}
		}
	}
	cands = within(c.connect, 0, from, cands)
	cands = within(c.failed, 0, path.Start, cands)
	slices.SortStableFunc(cands, func(a, b *flowEvent) int { return cmpU64(a.ev.Time, b.ev.Time) })
	for _, f := range cands {
		if f.claimed || f.ev.Time < from || f.ev.Time > path.End {
			continue
		}
		if f.ev.Netns != 0 && len(netnses) > 0 && !netnses.has(f.ev.Netns) {
			continue
		}
		// A lookup that failed while the packet was in flight, in its
		// namespace, is the packet's own even when its destination is not one
		// the packet carried yet: IPVS looks the real server up before it
		// rewrites, and drops the packet when that fails.
		inFlight := f.ev.RouteError != 0 && f.ev.Time >= path.Start &&
			((f.ev.Netns != 0 && netnses.has(f.ev.Netns)) || (f.ev.SKB != 0 && f.ev.SKB == path.SKB))
		if !inFlight && !flowMatches(&f.ev, tuples) {
			continue
		}
		f.claimed = true
		if f.ev.Kind == event.KindNATBind {
			continue // the packet's own NAT steps say it already
		}
		out = append(out, routeStep(&f.ev))
	}
	if c.outputs > 0 && path.Entered == "local" && !hasSource(out) {
		if f := c.connectLookup(dsts, tuples, netnses, from, lead); f != nil {
			f.claimed = true
			out = append([]event.RouteStep{routeStep(&f.ev)}, out...) // the earliest
		}
	}
	return out
}

// noteRoute keeps a successful input lookup's result for the packets that
// repeat it (repeatedRoutes).
func (c *Correlator) noteRoute(e *event.Event) {
	if len(c.routes) >= maxRoutes {
		clear(c.routes) // the kernel side sends each again within a second
	}
	c.routes[routeKey{netns: e.Netns, iif: e.FlowIif, src: v4(e.Packet.Src.Addr()), dst: v4(e.Packet.Dst.Addr())}] = routeStep(e)
}

// repeatedRoutes adds, for every event of the packet noting that the route
// lookup before it repeated an earlier one (Event.RouteRepeat), that
// lookup's result. The lookup routed the packet as the event before it in
// the same namespace saw it (after PREROUTING's DNAT, before POSTROUTING's
// SNAT), from that event's input device.
func (c *Correlator) repeatedRoutes(evs []event.Event, out []event.RouteStep) []event.RouteStep {
	for i := range evs {
		e := &evs[i]
		if !e.RouteRepeat {
			continue
		}
		at := e // the event the lookup routed the packet as
		for j := i - 1; j >= 0; j-- {
			if evs[j].Netns == e.Netns {
				at = &evs[j]
				break
			}
		}
		k := routeKey{netns: e.Netns, iif: at.InIfindex, src: v4(at.Packet.Src.Addr()), dst: v4(at.Packet.Dst.Addr())}
		rs, ok := c.routes[k]
		if !ok {
			c.repeatUnknown++
			continue
		}
		rs.Repeat = true
		out = append(out, rs)
	}
	return out
}

// hasSource reports whether a locally originated packet's source choice is
// among its route steps.
func hasSource(rs []event.RouteStep) bool {
	for i := range rs {
		if rs[i].Kind == "connect" || rs[i].Kind == "output" {
			return true
		}
	}
	return false
}

// connectLookup finds, for a locally originated packet that has none, the
// output route lookup that chose its source: the latest unclaimed one of its
// flow between from and lead. A connect() can precede its first packet by
// more than lookupLead (under software emulation, tens of milliseconds);
// only the kernel-function backends report these lookups (the stable one
// reports connects, searched from FlowWindow already).
func (c *Correlator) connectLookup(dsts []netip.Addr, tuples []event.Tuple, netnses nsSet, from, lead uint64) *flowEvent {
	var found *flowEvent
	for _, a := range dsts {
		l := c.byDst[a]
		if l == nil {
			continue
		}
		for i := searchFrom(l.evs, l.done, from); i < len(l.evs) && l.evs[i].ev.Time < lead; i++ {
			f := l.evs[i]
			if f.claimed || f.ev.Kind != event.KindRouteOut || f.ev.RouteError != 0 {
				continue
			}
			if f.ev.Netns != 0 && len(netnses) > 0 && !netnses.has(f.ev.Netns) {
				continue
			}
			if flowMatches(&f.ev, tuples) && (found == nil || f.ev.Time > found.ev.Time) {
				found = f
			}
		}
	}
	return found
}

// searchFrom returns the index of list's first event at or after from,
// searching past its first done events (list is in time order).
func searchFrom(list []*flowEvent, done int, from uint64) int {
	i, _ := slices.BinarySearchFunc(list[done:], from, func(f *flowEvent, ts uint64) int {
		return cmpU64(f.ev.Time, ts)
	})
	return done + i
}

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func flowMatches(e *event.Event, tuples []event.Tuple) bool {
	ft := e.Packet
	for _, t := range tuples {
		if ft.Dst.Addr() != t.Dst.Addr() {
			continue
		}
		if ft.Dst.Port() != 0 && t.Dst.Port() != 0 && ft.Dst.Port() != t.Dst.Port() {
			continue
		}
		if ft.Proto != 0 && t.Proto != 0 && ft.Proto != t.Proto {
			continue
		}
		if sa := ft.Src.Addr(); sa.IsValid() && !sa.IsUnspecified() && sa != t.Src.Addr() {
			continue
		}
		if ft.Src.Port() != 0 && t.Src.Port() != 0 && ft.Src.Port() != t.Src.Port() {
			continue
		}
		return true
	}
	return false
}

func routeStep(e *event.Event) event.RouteStep {
	rs := event.RouteStep{
		Time:     e.Time,
		Table:    e.Table,
		Dst:      e.Packet.Dst.Addr(),
		PrefSrc:  e.PrefSrc,
		Gateway:  e.Gateway,
		OutIndex: e.OutIfindex,
		Error:    e.RouteError,
		Netns:    e.Netns,
		Comm:     e.Comm,
		PID:      e.PID,
	}
	if src := e.Packet.Src.Addr(); src.IsValid() && !src.IsUnspecified() {
		rs.Src = src
	}
	switch e.Kind {
	case event.KindFIB:
		rs.Kind = "fib"
	case event.KindRouteOut:
		rs.Kind = "output"
	case event.KindConnect:
		rs.Kind = "connect"
	}
	return rs
}

func step(e *event.Event) event.Step {
	s := event.Step{Time: e.Time, Kind: e.Kind, Source: e.Source, Netns: e.Netns, Packet: e.Packet}
	switch e.Kind {
	case event.KindNetfilter:
		s.Where = e.Hook.Where(e.AfterNAT)
		switch {
		case e.Hook == event.HookLocalOut && e.RouteIfindex != 0:
			s.Ifindex = e.RouteIfindex
		case e.OutIfindex != 0:
			s.Ifindex = e.OutIfindex
		default:
			s.Ifindex = e.InIfindex
		}
	case event.KindNAT:
		s.Where = "nf_nat " + e.NAT.String()
		s.Detail = fmt.Sprintf("%s -> %s", e.Packet, e.NATResult)
		s.Ifindex = e.InIfindex
	case event.KindRecv:
		s.Where = "received"
		s.Ifindex = e.InIfindex
	case event.KindXmit:
		s.Where = "queued for transmit"
		s.Ifindex = e.InIfindex
	case event.KindDrop:
		s.Where = "dropped"
		s.Ifindex = e.InIfindex
		s.Detail = e.DropReason
		if e.Symbol != "" {
			s.Detail += " at " + e.Symbol
		}
	case event.KindIPVSIn:
		s.Where = "IPVS virtual server " + e.Packet.Dst.String()
		s.Ifindex = e.InIfindex
	case event.KindIPVSConn:
		s.Where = "IPVS new connection"
		if e.IPVS != nil {
			s.Detail = "real server " + e.IPVS.Real.String()
		}
	case event.KindIPVSNoDest:
		s.Where = "IPVS: no destination"
		s.Detail = "virtual server " + e.Packet.Dst.String() + " has no real server"
	case event.KindIPVSXmit:
		s.Where = "IPVS masquerade to real server"
		if e.IPVS != nil {
			s.Detail = e.Packet.Dst.String() + " -> " + e.IPVS.Real.String()
		}
	case event.KindICMP:
		s.Where = "ICMP error sent"
		s.Ifindex = e.InIfindex
		s.Detail = ICMPName(e.ICMPType, e.ICMPCode)
	case event.KindValidateSource:
		s.Where = "source validation failed"
		s.Ifindex = e.InIfindex
		s.Detail = routeErrorName(e.RouteError)
	case event.KindFIB:
		s.Where = fmt.Sprintf("fib table %d", e.Table)
		s.Ifindex = e.OutIfindex
		if e.RouteError != 0 {
			s.Detail = routeErrorName(e.RouteError)
		}
	case event.KindRouteOut:
		s.Where = "output route"
		s.Ifindex = e.OutIfindex
	case event.KindConnect:
		s.Where = "connect"
	default:
		s.Where = e.Kind.String()
	}
	return s
}

// socketTeardown reports frees of a packet already delivered to a socket,
// when the socket goes away (or as a duplicate of data it already has):
// not a network drop. Reasons name them on
// recent kernels; older ones (NOT_SPECIFIED, or no reasons before 5.17)
// are recognised by where the free happens.
func socketTeardown(e *event.Event) bool {
	switch e.DropReason {
	case "QUEUE_PURGE", "SOCKET_CLOSE", "TCP_CLOSE":
		return true
	case "TCP_OLD_DATA", "TCP_OLD_SEQUENCE":
		// a retransmission of data the socket already has: it arrived
		return true
	}
	for _, fn := range []string{"sk_stream_kill_queues+", "skb_queue_purge", "__skb_queue_purge", "tcp_write_queue_purge+",
		"inet_csk_destroy_sock+", "tcp_v4_destroy_sock+", "sk_common_release+", "skb_release_all+"} {
		if strings.HasPrefix(e.Symbol, fn) {
			return true
		}
	}
	return false
}

// result decides where the packet ended: answered with an ICMP error
// (rejected), dropped, or the last place it was seen.
func result(evs []event.Event) event.Result {
	var drop, icmp, invalid *event.Event
	for i := range evs {
		e := &evs[i]
		switch e.Kind {
		case event.KindDrop:
			if socketTeardown(e) && i > 0 {
				evs = evs[:i] // delivered; freed later with its socket
			} else if drop == nil {
				drop = e
			}
		case event.KindICMP:
			if icmp == nil {
				icmp = e
			}
		case event.KindValidateSource:
			if invalid == nil {
				invalid = e
			}
		}
		if len(evs) == i {
			break
		}
	}
	switch {
	case icmp != nil:
		r := event.Result{Outcome: event.OutcomeRejected, Ifindex: icmp.InIfindex, Netns: icmp.Netns,
			Reason: ICMPName(icmp.ICMPType, icmp.ICMPCode)}
		if drop != nil {
			r.DropReason, r.Location = dropReason(drop), drop.Symbol
		}
		return r
	case drop != nil:
		return event.Result{Outcome: event.OutcomeDropped, Ifindex: drop.InIfindex, Netns: drop.Netns,
			Reason: dropReason(drop), Location: drop.Symbol}
	case invalid != nil:
		return event.Result{Outcome: event.OutcomeDropped, Ifindex: invalid.InIfindex, Netns: invalid.Netns,
			Reason: "source validation failed: " + routeErrorName(invalid.RouteError)}
	}
	last := &evs[len(evs)-1]
	switch last.Kind {
	case event.KindXmit:
		return event.Result{Outcome: event.OutcomeForwarded, Ifindex: last.InIfindex, Netns: last.Netns}
	case event.KindRecv:
		return event.Result{Outcome: event.OutcomeDelivered, Ifindex: last.InIfindex, Netns: last.Netns}
	case event.KindNetfilter:
		switch last.Hook {
		case event.HookLocalIn:
			return event.Result{Outcome: event.OutcomeDelivered, Ifindex: last.InIfindex, Netns: last.Netns}
		case event.HookPostRouting:
			return event.Result{Outcome: event.OutcomeForwarded, Ifindex: last.OutIfindex, Netns: last.Netns}
		}
		return event.Result{Outcome: event.OutcomeUnknown, Netns: last.Netns,
			Reason: "last seen at " + last.Hook.String()}
	}
	return event.Result{Outcome: event.OutcomeUnknown, Netns: last.Netns, Reason: "last seen at " + last.Kind.String()}
}

func dropReason(e *event.Event) string {
	if e.DropReason != "" {
		return e.DropReason
	}
	return "unknown (this kernel reports no drop reasons)"
}

// ICMPName describes an ICMP error.
func ICMPName(typ, code uint8) string {
	if typ == 3 {
		names := map[uint8]string{0: "net unreachable", 1: "host unreachable", 2: "protocol unreachable",
			3: "port unreachable", 4: "fragmentation needed", 9: "net prohibited", 10: "host prohibited",
			13: "administratively prohibited"}
		if n, ok := names[code]; ok {
			return "ICMP " + n
		}
		return fmt.Sprintf("ICMP destination unreachable (code %d)", code)
	}
	switch typ {
	case 5:
		return "ICMP redirect"
	case 11:
		return "ICMP time exceeded"
	case 12:
		return "ICMP parameter problem"
	}
	return fmt.Sprintf("ICMP type %d code %d", typ, code)
}

// routeErrorName describes a FIB/route error code (negative errno, or the
// kernel's internal codes seen in fib_table_lookup results).
func routeErrorName(code int32) string {
	switch code {
	case 0:
		return ""
	case -101:
		return "network unreachable (ENETUNREACH)"
	case -113:
		return "host unreachable (EHOSTUNREACH)"
	case -11:
		return "no matching route in this table"
	case -22:
		return "invalid argument (EINVAL)"
	case -18:
		return "cross-device (EXDEV: martian or rp_filter)"
	case -1:
		return "not permitted (EPERM: prohibit route)"
	case -13:
		return "access denied (EACCES)"
	}
	return fmt.Sprintf("error %d", code)
}
