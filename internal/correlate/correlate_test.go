package correlate

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/decode"
	"github.com/svctrace/svctrace/pkg/event"
)

// loadEvents reads a recording of real kernel events (svctrace -o json
// --events, healthy ClusterIP traffic through iptables DNAT between network
// namespaces on kernel 6.18, stable backend).
func loadEvents(t *testing.T, name string) []event.Event {
	t.Helper()
	f, err := os.Open("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []event.Event
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e event.Event
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("line %d: %v", len(out)+1, err)
		}
		out = append(out, e)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func run(evs []event.Event, opts Options) []*event.Path {
	var paths []*event.Path
	c := New(opts, func(p *event.Path) { paths = append(paths, p) })
	for i := range evs {
		c.Add(&evs[i])
		c.Advance(evs[i].Time)
	}
	c.Flush()
	return paths
}

func ap(s string) netip.AddrPort { return netip.MustParseAddrPort(s) }

func TestHealthyRecording(t *testing.T) {
	paths := run(loadEvents(t, "healthy-iptables.jsonl"), Options{})
	// Two HTTP exchanges (one from a pod, one from the node itself): 12
	// packets each way in total.
	if len(paths) != 24 {
		t.Fatalf("got %d paths, want 24", len(paths))
	}
	find := func(reply bool, flags uint8, src string) *event.Path {
		for _, p := range paths {
			if p.Reply == reply && p.TCPFlags == flags && p.Original.Src.String() == src {
				return p
			}
		}
		t.Fatalf("no path reply=%v flags=%#x from %s", reply, flags, src)
		return nil
	}
	syn := find(false, 0x02, "10.244.1.2:37210")
	want := event.NATStep{
		Type: event.DNAT, By: "nf_nat", Hook: "PREROUTING", Source: event.SourceNetfilter,
		Before: event.Tuple{Src: ap("10.244.1.2:37210"), Dst: ap("10.96.0.10:80"), Proto: 6},
		After:  event.Tuple{Src: ap("10.244.1.2:37210"), Dst: ap("10.244.1.5:9376"), Proto: 6},
	}
	if len(syn.NAT) != 1 || syn.NAT[0] != want {
		t.Fatalf("SYN NAT = %+v, want %+v", syn.NAT, want)
	}
	if syn.Backend.Addr != ap("10.244.1.5:9376") {
		t.Errorf("backend = %v", syn.Backend.Addr)
	}
	if syn.Result.Outcome != event.OutcomeDelivered {
		t.Errorf("SYN outcome = %s", syn.Result.Outcome)
	}
	var connect, reroute bool
	for _, r := range syn.Routes {
		if r.Kind == "connect" && r.Src == netip.MustParseAddr("10.244.1.2") && r.Comm == "curl" {
			connect = true
		}
		if r.Kind == "fib" && r.Dst == netip.MustParseAddr("10.244.1.5") && r.Table == 254 {
			reroute = true
		}
	}
	if !connect || !reroute {
		t.Errorf("SYN routes lack the connect (%v) or the node's lookup towards the backend (%v): %+v", connect, reroute, syn.Routes)
	}

	synack := find(true, 0x12, "10.244.1.5:9376")
	if len(synack.NAT) != 1 || !synack.NAT[0].Reverse || synack.NAT[0].After.Src != ap("10.96.0.10:80") {
		t.Errorf("SYN-ACK NAT = %+v, want the reverse DNAT back to the ClusterIP", synack.NAT)
	}
	if synack.Client.Addr != ap("10.244.1.2:37210") {
		t.Errorf("reply client = %v", synack.Client.Addr)
	}

	var local *event.Path
	for _, p := range paths {
		if p.Entered == "local" && p.TCPFlags == 0x02 {
			local = p
			break
		}
	}
	if local == nil {
		t.Fatal("no path for the node's own connection")
	}
	if len(local.NAT) != 1 || local.NAT[0].Hook != "OUTPUT" || local.NAT[0].After.Dst != ap("10.244.1.5:9376") {
		t.Errorf("host-originated NAT = %+v", local.NAT)
	}
	for _, p := range paths {
		if p.Result.Outcome != event.OutcomeDelivered {
			t.Errorf("path %v %s: outcome %s (%s)", p.Original, p.Result.Outcome, p.Result.Outcome, p.Result.Reason)
		}
	}
}

// A replay must not depend on how time is advanced: feeding the same events
// with the clock advanced only at the end gives the same paths.
func TestDeterministicFlush(t *testing.T) {
	evs := loadEvents(t, "healthy-iptables.jsonl")
	a := run(evs, Options{})
	var b []*event.Path
	c := New(Options{}, func(p *event.Path) { b = append(b, p) })
	for i := range evs {
		c.Add(&evs[i])
	}
	c.Flush()
	if len(a) != len(b) {
		t.Fatalf("%d paths with a running clock, %d without", len(a), len(b))
	}
}

func nf(ts uint64, skb uint64, hook event.Hook, after bool, src, dst string) event.Event {
	return event.Event{Time: ts, Kind: event.KindNetfilter, Source: event.SourceNetfilter, SKB: skb, Netns: 1,
		Hook: hook, AfterNAT: after, Packet: event.Tuple{Src: ap(src), Dst: ap(dst), Proto: 6}}
}

func TestSkbReuseSplits(t *testing.T) {
	evs := []event.Event{
		nf(1000, 7, event.HookPreRouting, false, "10.0.0.1:1000", "10.96.0.10:80"),
		nf(2000, 7, event.HookPreRouting, true, "10.0.0.1:1000", "10.1.0.5:80"),
		// same skb address and IP ID, unrelated tuple: another packet
		nf(3000, 7, event.HookPreRouting, false, "10.0.0.9:2000", "10.96.0.10:80"),
	}
	paths := run(evs, Options{})
	if len(paths) != 2 {
		t.Fatalf("got %d paths, want 2", len(paths))
	}
	if paths[0].NAT[0].Type != event.DNAT {
		t.Errorf("first path NAT %+v", paths[0].NAT)
	}
}

func TestDropAndICMP(t *testing.T) {
	drop := nf(1000, 9, event.HookPreRouting, false, "10.0.0.1:1000", "10.96.0.10:80")
	d := event.Event{Time: 2000, Kind: event.KindDrop, SKB: 9, Netns: 1, Packet: drop.Packet,
		DropReason: "NETFILTER_DROP", Symbol: "nft_do_chain+0x1", InIfindex: 4}
	paths := run([]event.Event{drop, d}, Options{})
	if len(paths) != 1 || paths[0].Result.Outcome != event.OutcomeDropped ||
		paths[0].Result.Reason != "NETFILTER_DROP" || paths[0].Result.Location != "nft_do_chain+0x1" {
		t.Fatalf("got %+v", paths[0].Result)
	}
	icmp := event.Event{Time: 2000, Kind: event.KindICMP, SKB: 9, Netns: 1, Packet: drop.Packet, ICMPType: 3, ICMPCode: 3}
	paths = run([]event.Event{drop, icmp}, Options{})
	if paths[0].Result.Outcome != event.OutcomeRejected || paths[0].Result.Reason != "ICMP port unreachable" {
		t.Fatalf("got %+v", paths[0].Result)
	}
}

func TestFailedLookupIsAPath(t *testing.T) {
	dst := ap("10.96.0.10:80")
	mk := func(ts uint64, table uint32) event.Event {
		return event.Event{Time: ts, Kind: event.KindFIB, Netns: 1, Table: table, RouteError: -11,
			Packet: event.Tuple{Src: netip.AddrPortFrom(netip.IPv4Unspecified(), 0), Dst: dst, Proto: 6}}
	}
	paths := run([]event.Event{mk(1000, 255), mk(1100, 254)}, Options{})
	if len(paths) != 1 {
		t.Fatalf("got %d paths, want 1 for one failed connect", len(paths))
	}
	if paths[0].Result.Outcome != event.OutcomeNoRoute || len(paths[0].Routes) != 2 {
		t.Errorf("got %+v", paths[0])
	}
	// A local-table miss followed by a main-table hit is a normal lookup.
	ok := mk(1100, 254)
	ok.RouteError = 0
	if paths := run([]event.Event{mk(1000, 255), ok}, Options{}); len(paths) != 0 {
		t.Errorf("got %d paths for a successful lookup", len(paths))
	}
}

func TestEvictionCap(t *testing.T) {
	var evs []event.Event
	for i := 0; i < 10; i++ {
		evs = append(evs, nf(uint64(1000+i), uint64(100+i), event.HookPreRouting, false, "10.0.0.1:1000", "10.96.0.10:80"))
	}
	var paths []*event.Path
	c := New(Options{MaxPackets: 4, Idle: time.Hour}, func(p *event.Path) { paths = append(paths, p) })
	for i := range evs {
		c.Add(&evs[i])
	}
	if c.Evicted() != 6 || len(paths) != 6 {
		t.Fatalf("evicted %d, emitted %d; want 6 and 6", c.Evicted(), len(paths))
	}
	c.Flush()
	if len(paths) != 10 {
		t.Fatalf("after flush %d paths", len(paths))
	}
}

// TestClaimedLookupsLeaveFirst: a busy flow's route lookups, claimed by its
// packets, make room for new ones without counting as evictions.
func TestClaimedLookupsLeaveFirst(t *testing.T) {
	var paths []*event.Path
	c := New(Options{MaxFlowEvents: 8}, func(p *event.Path) { paths = append(paths, p) })
	for i := 0; i < 100; i++ {
		ts := uint64(1_000_000 * (i + 1))
		fib := event.Event{Time: ts, Kind: event.KindFIB, Netns: 1, Table: 254,
			Packet: event.Tuple{Src: ap("10.0.0.1:1000"), Dst: ap("10.1.0.5:80"), Proto: 6}}
		c.Add(&fib)
		pre := nf(ts+100, uint64(100+i), event.HookPreRouting, false, "10.0.0.1:1000", "10.96.0.10:80")
		post := nf(ts+200, uint64(100+i), event.HookPreRouting, true, "10.0.0.1:1000", "10.1.0.5:80")
		c.Add(&pre)
		c.Add(&post)
		c.Advance(ts + 200 + uint64(DefaultIdle))
	}
	c.Flush()
	if c.Evicted() != 0 {
		t.Errorf("%d evicted; claimed lookups should leave without counting", c.Evicted())
	}
	if len(paths) != 100 {
		t.Fatalf("%d paths, want 100", len(paths))
	}
	for i, p := range paths {
		if len(p.Routes) != 1 {
			t.Fatalf("path %d has %d routes, want its own lookup", i, len(p.Routes))
		}
	}
	// Unclaimed lookups beyond the cap are evictions.
	c = New(Options{MaxFlowEvents: 8}, func(*event.Path) {})
	for i := 0; i < 20; i++ {
		fib := event.Event{Time: uint64(1000 + i), Kind: event.KindFIB, Netns: 1, Table: 254,
			Packet: event.Tuple{Src: ap("10.0.0.1:1000"), Dst: ap("10.1.0.5:80"), Proto: 6}}
		c.Add(&fib)
	}
	if c.Evicted() != 12 {
		t.Errorf("%d evicted, want 12", c.Evicted())
	}
}

// TestSlowConnectLookup: the output route lookup that chose a locally
// originated packet's source is claimed even when connect() came well
// before the packet (more than lookupLead: a slow or emulated kernel), and
// only by a packet of its flow.
func TestSlowConnectLookup(t *testing.T) {
	const ms = uint64(time.Millisecond)
	lookup := event.Event{Time: 100 * ms, Kind: event.KindRouteOut, Netns: 1, Table: 254,
		Packet: event.Tuple{Src: ap("192.168.1.10:0"), Dst: ap("10.96.0.10:80"), Proto: 6}}
	syn := func(skb uint64, src string) []event.Event {
		return []event.Event{
			nf(150*ms, skb, event.HookLocalOut, false, src, "10.96.0.10:80"),
			nf(150*ms+100, skb, event.HookLocalOut, true, src, "10.1.0.5:80"),
		}
	}
	paths := run(append([]event.Event{lookup}, syn(7, "192.168.1.10:4000")...), Options{})
	if len(paths) != 1 || paths[0].Entered != "local" {
		t.Fatalf("got %d paths (%+v), want one local", len(paths), paths)
	}
	if rs := paths[0].Routes; len(rs) != 1 || rs[0].Kind != "output" || rs[0].Src != netip.MustParseAddr("192.168.1.10") {
		t.Errorf("routes %+v, want the connect-time output lookup", rs)
	}
	// Another source's packet does not take it.
	paths = run(append([]event.Event{lookup}, syn(7, "10.0.0.99:4000")...), Options{})
	if len(paths) != 1 || len(paths[0].Routes) != 0 {
		t.Errorf("routes %+v, want none for another flow", paths[0].Routes)
	}
}

// The links before NAT are attached only at OUTPUT and INPUT: at the other
// hooks the rewrite is read off the view after NAT and the conntrack entry
// (decode.PreNAT). The real recording (made with links before NAT at every
// hook) without those events, the views rebuilt, gives the same paths'
// rewrites, backends, clients and outcomes.
func TestRebuiltBeforeNAT(t *testing.T) {
	full := run(loadEvents(t, "healthy-iptables.jsonl"), Options{})
	var evs []event.Event
	dropped, rebuilt := 0, 0
	for _, e := range loadEvents(t, "healthy-iptables.jsonl") {
		if e.Kind == event.KindNetfilter && !e.AfterNAT && e.Hook != event.HookLocalOut && e.Hook != event.HookLocalIn {
			dropped++
			continue
		}
		if e.Kind == event.KindNetfilter && e.AfterNAT {
			// The kernel side reports the direction; the recording predates it.
			e.CTReply = isReply(e.Packet, e.Conntrack)
			e.PreNAT = decode.PreNAT(e.Packet, e.Conntrack, e.Hook, e.CTReply)
			if e.PreNAT.Proto != 0 {
				rebuilt++
			}
		}
		evs = append(evs, e)
	}
	if dropped != 48 || rebuilt == 0 {
		t.Fatalf("dropped %d events before NAT (want 48), rebuilt %d views", dropped, rebuilt)
	}
	got := run(evs, Options{})
	if len(got) != len(full) {
		t.Fatalf("%d paths, want %d", len(got), len(full))
	}
	key := func(p *event.Path) string { return fmt.Sprintf("%d/%d", p.SKB, p.Start) }
	want := map[string]*event.Path{}
	for _, p := range full {
		want[key(p)] = p
	}
	nat := 0
	for _, p := range got {
		w := want[key(p)]
		if w == nil {
			// The first event may have been one of the dropped ones.
			for _, q := range full {
				if q.SKB == p.SKB && q.End == p.End {
					w = q
				}
			}
		}
		if w == nil {
			t.Errorf("path %v (skb %#x) not in the full recording's", p.Original, p.SKB)
			continue
		}
		nat += len(p.NAT)
		if !slices.Equal(p.NAT, w.NAT) {
			t.Errorf("path %v: NAT\n%+v\nwant\n%+v", w.Original, p.NAT, w.NAT)
		}
		if p.Original != w.Original || p.Backend != w.Backend || p.Client != w.Client || p.Reply != w.Reply || p.Result != w.Result {
			t.Errorf("path %v: original %v backend %v client %v reply %v result %+v, want %v %v %v %v %+v", w.Original,
				p.Original, p.Backend, p.Client, p.Reply, p.Result, w.Original, w.Backend, w.Client, w.Reply, w.Result)
		}
	}
	if nat == 0 {
		t.Error("no rewrites in the paths")
	}
}

func TestPreNATDirections(t *testing.T) {
	ct := &event.Conntrack{ // client -> VIP, DNAT to the backend, SNAT to the node
		Original: event.Tuple{Src: ap("10.0.0.1:1000"), Dst: ap("10.96.0.1:80"), Proto: 6},
		Reply:    event.Tuple{Src: ap("10.244.0.5:8080"), Dst: ap("192.168.0.1:2000"), Proto: 6},
		Status:   0x10 | 0x20,
	}
	tu := func(s, d string) event.Tuple { return event.Tuple{Src: ap(s), Dst: ap(d), Proto: 6} }
	for _, c := range []struct {
		name  string
		pkt   event.Tuple
		hook  event.Hook
		reply bool
		want  event.Tuple
	}{
		{"DNAT at PREROUTING", tu("10.0.0.1:1000", "10.244.0.5:8080"), event.HookPreRouting, false, tu("10.0.0.1:1000", "10.96.0.1:80")},
		{"SNAT at POSTROUTING", tu("192.168.0.1:2000", "10.244.0.5:8080"), event.HookPostRouting, false, tu("10.0.0.1:1000", "10.244.0.5:8080")},
		{"reply un-SNAT at PREROUTING", tu("10.244.0.5:8080", "10.0.0.1:1000"), event.HookPreRouting, true, tu("10.244.0.5:8080", "192.168.0.1:2000")},
		{"reply un-DNAT at POSTROUTING", tu("10.96.0.1:80", "10.0.0.1:1000"), event.HookPostRouting, true, tu("10.244.0.5:8080", "10.0.0.1:1000")},
	} {
		if got := decode.PreNAT(c.pkt, ct, c.hook, c.reply); got != c.want {
			t.Errorf("%s: %v, want %v", c.name, got, c.want)
		}
	}
	dnatOnly := *ct
	dnatOnly.Status = 0x20
	if got := decode.PreNAT(tu("10.0.0.1:1000", "10.244.0.5:8080"), &dnatOnly, event.HookPostRouting, false); got.Proto != 0 {
		t.Errorf("no SNAT, yet a view before POSTROUTING's NAT: %v", got)
	}
	if got := decode.PreNAT(tu("10.0.0.1:1000", "10.244.0.5:8080"), nil, event.HookPreRouting, false); got.Proto != 0 {
		t.Errorf("no conntrack entry, yet a view: %v", got)
	}
}

// With ReusePaths a path's storage is the next one's: a consumer that is
// done with each path when emit returns sees the same paths as without.
func TestReusePaths(t *testing.T) {
	evs := loadEvents(t, "healthy-iptables.jsonl")
	render := func(reuse bool) []string {
		var out []string
		c := New(Options{ReusePaths: reuse}, func(p *event.Path) {
			b, err := json.Marshal(p)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, string(b))
		})
		for i := range evs {
			c.Add(&evs[i])
			c.Advance(evs[i].Time)
		}
		c.Flush()
		return out
	}
	want, got := render(false), render(true)
	if len(want) != 24 || !slices.Equal(got, want) {
		t.Fatalf("%d paths with reuse, %d without; equal: %v", len(got), len(want), slices.Equal(got, want))
	}
}

// TestAdaptiveIdle: the wait for a packet's next event starts at the cap,
// comes down to minIdle once packets show microsecond gaps, and goes back
// up with gaps of milliseconds (software emulation).
func TestAdaptiveIdle(t *testing.T) {
	var paths []*event.Path
	c := New(Options{}, func(p *event.Path) { paths = append(paths, p) })
	ms := uint64(time.Millisecond)
	now := uint64(time.Second)
	// packet sends one packet of two events gap apart and returns the
	// time of its last event.
	packet := func(skb uint64, gap uint64) uint64 {
		a := nf(now, skb, event.HookPreRouting, true, "10.0.0.1:1000", "10.1.0.5:80")
		b := nf(now+gap, skb, event.HookPostRouting, true, "10.0.0.1:1000", "10.1.0.5:80")
		c.Add(&a)
		c.Add(&b)
		now += gap
		return now
	}
	// waits reports whether a packet whose last event was at last is
	// still open at last+d.
	waits := func(last, d uint64) bool {
		n := len(paths)
		c.Advance(last + d)
		return len(paths) == n
	}
	last := packet(1, 10_000)
	if !waits(last, 20*ms) {
		t.Fatalf("a fresh correlator completed a packet 20 ms after its last event (want the %s cap)", DefaultIdle)
	}
	if waits(last, 26*ms) {
		t.Fatal("the packet is still open past the cap")
	}
	now = last + 26*ms
	for i := range gapSamples {
		last = packet(uint64(100+i), 10_000) // 10 µs between a packet's events
		now += 100_000
	}
	now += 30 * ms
	c.Advance(now) // every packet so far is complete
	last = packet(1000, 10_000)
	if !waits(last, 4*ms) {
		t.Fatal("completed sooner than minIdle")
	}
	if waits(last, 6*ms) {
		t.Fatalf("with 10 µs gaps the packet is still open %s after its last event", 6*time.Millisecond)
	}
	now = last + 6*ms
	last = packet(2000, 2*ms) // emulation-like gap
	if !waits(last, 15*ms) {
		t.Fatal("after a 2 ms gap, a packet completed within 15 ms of its last event (want 8 × 2 ms)")
	}
	if waits(last, 17*ms) {
		t.Fatal("after a 2 ms gap, the packet is still open 17 ms after its last event")
	}
}

// TestRepeatedRoute: a packet whose route lookup the kernel side did not
// send (same result as the one it sent for the flow) shows that lookup's
// result, marked as a repeat, keyed by the packet as the event before the
// note saw it (after DNAT, before SNAT) and that event's input device.
func TestRepeatedRoute(t *testing.T) {
	fib := event.Event{Time: 1000, Kind: event.KindFIB, Netns: 1, Table: 254, FlowIif: 3, OutIfindex: 4,
		Packet: event.Tuple{Src: ap("10.0.0.1:0"), Dst: ap("10.1.0.5:0")}}
	first := []event.Event{
		nf(1100, 7, event.HookPreRouting, true, "10.0.0.1:1000", "10.1.0.5:80"),
		nf(1200, 7, event.HookPostRouting, true, "10.0.0.1:1000", "10.1.0.5:80"),
	}
	first[0].InIfindex = 3
	second := []event.Event{
		nf(5000, 8, event.HookPreRouting, true, "10.0.0.1:1000", "10.1.0.5:80"),
		nf(5100, 8, event.HookPostRouting, true, "192.168.0.1:3000", "10.1.0.5:80"), // masqueraded
	}
	second[0].InIfindex = 3
	second[1].RouteRepeat = true
	// An unknown repeat: no lookup from that device was sent.
	third := []event.Event{
		nf(9000, 9, event.HookPreRouting, true, "10.0.0.1:1000", "10.1.0.5:80"),
		nf(9100, 9, event.HookPostRouting, true, "10.0.0.1:1000", "10.1.0.5:80"),
	}
	third[0].InIfindex = 5
	third[1].RouteRepeat = true
	var paths []*event.Path
	c := New(Options{}, func(p *event.Path) { paths = append(paths, p) })
	for _, evs := range [][]event.Event{{fib}, first, second, third} {
		for i := range evs {
			c.Add(&evs[i])
		}
	}
	c.Flush()
	if len(paths) != 3 {
		t.Fatalf("got %d paths, want 3", len(paths))
	}
	if r := paths[0].Routes; len(r) != 1 || r[0].Repeat || r[0].Time != 1000 {
		t.Errorf("first packet's routes %+v, want the lookup sent", r)
	}
	if r := paths[1].Routes; len(r) != 1 || !r[0].Repeat || r[0].Time != 1000 || r[0].Table != 254 || r[0].OutIndex != 4 {
		t.Errorf("second packet's routes %+v, want the first lookup's result marked as a repeat", r)
	}
	if r := paths[2].Routes; len(r) != 0 || c.RouteRepeatsUnknown() != 1 {
		t.Errorf("third packet's routes %+v, unknown repeats %d; want none and 1", r, c.RouteRepeatsUnknown())
	}
}
