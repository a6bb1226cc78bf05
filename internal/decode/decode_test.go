package decode

import (
	"errors"
	"net/netip"
	"testing"
	"unsafe"

	"github.com/svctrace/svctrace/internal/bpfobj"
	"github.com/svctrace/svctrace/pkg/event"
)

// be32 returns the native u32 whose memory holds the address in network order.
func be32(s string) uint32 {
	a := netip.MustParseAddr(s).As4()
	return uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24
}

func raw(r *bpfobj.SvctraceEvent) []byte {
	return unsafe.Slice((*byte)(unsafe.Pointer(r)), RecordSize)
}

func TestDecodeNATKprobe(t *testing.T) {
	// nf_nat_manip_pkt(DNAT, original direction) on a client's SYN to a ClusterIP.
	r := bpfobj.SvctraceEvent{
		Ts: 42, Kind: uint32(bpfobj.SvctraceEventKindEV_NAT), Source: uint8(bpfobj.SvctraceEventSourceSRC_KPROBE),
		Skb: 0xffff1, Hook: 1, Stage: 0, CtValid: 1, Ct: 0xc7,
		Pkt:     bpfobj.SvctraceTuple{Saddr: be32("10.244.1.2"), Daddr: be32("10.96.0.10"), Sport: 40000, Dport: 80, Proto: 6, TcpFlags: 2, IpLen: 60},
		CtOrig:  bpfobj.SvctraceTuple{Saddr: be32("10.244.1.2"), Daddr: be32("10.96.0.10"), Sport: 40000, Dport: 80, Proto: 6},
		CtReply: bpfobj.SvctraceTuple{Saddr: be32("10.244.1.5"), Daddr: be32("10.244.1.2"), Sport: 9376, Dport: 40000, Proto: 6},
	}
	r.Ipid = 0x1234
	var ev event.Event
	if err := New(Options{}).Decode(raw(&r), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.Kind != event.KindNAT || ev.Source != event.SourceKprobe || ev.NAT != event.DNAT || ev.NATReply {
		t.Fatalf("got %+v", ev)
	}
	if got := ev.Packet.String(); got != "TCP 10.244.1.2:40000 -> 10.96.0.10:80" {
		t.Errorf("packet %s", got)
	}
	if got := ev.NATResult.String(); got != "TCP 10.244.1.2:40000 -> 10.244.1.5:9376" {
		t.Errorf("nat result %s", got)
	}
	if ev.IPID != 0x1234 || ev.TCPFlags != 2 || ev.Length != 60 {
		t.Errorf("ipid %#x flags %#x len %d", ev.IPID, ev.TCPFlags, ev.Length)
	}
	if !ev.Conntrack.DNATed() || ev.Conntrack.SNATed() {
		t.Errorf("conntrack %+v", ev.Conntrack)
	}
}

func TestNATResultReply(t *testing.T) {
	ct := &event.Conntrack{
		Original: event.Tuple{Src: netip.MustParseAddrPort("10.244.1.2:40000"), Dst: netip.MustParseAddrPort("10.96.0.10:80"), Proto: 6},
		Reply:    event.Tuple{Src: netip.MustParseAddrPort("10.244.1.5:9376"), Dst: netip.MustParseAddrPort("10.244.1.2:40000"), Proto: 6},
	}
	// The reply's source rewrite restores the ClusterIP.
	got := NATResult(ct.Reply, ct, event.SNAT, true)
	if got.Src.String() != "10.96.0.10:80" || got.Dst.String() != "10.244.1.2:40000" {
		t.Errorf("reply un-DNAT = %s", got)
	}
}

func TestDecodeDropReasonByName(t *testing.T) {
	r := bpfobj.SvctraceEvent{Kind: uint32(bpfobj.SvctraceEventKindEV_DROP), Reason: 12, Location: 0x1000}
	var ev event.Event
	d := New(Options{DropReasons: map[uint32]string{12: "NETFILTER_DROP"}, Symbols: fakeSyms{}})
	if err := d.Decode(raw(&r), &ev); err != nil {
		t.Fatal(err)
	}
	if ev.DropReason != "NETFILTER_DROP" || ev.Symbol != "nft_do_chain+0x10" {
		t.Errorf("reason %q symbol %q", ev.DropReason, ev.Symbol)
	}
	r.Reason = 99
	_ = d.Decode(raw(&r), &ev)
	if ev.DropReason != "reason-99" {
		t.Errorf("unknown reason %q", ev.DropReason)
	}
}

type fakeSyms struct{}

func (fakeSyms) Lookup(uint64) string { return "nft_do_chain+0x10" }

func TestShortRecord(t *testing.T) {
	var ev event.Event
	err := New(Options{}).Decode(make([]byte, 10), &ev)
	if !errors.Is(err, ErrShortRecord) {
		t.Fatalf("got %v", err)
	}
}

func BenchmarkDecode(b *testing.B) {
	r := bpfobj.SvctraceEvent{Kind: uint32(bpfobj.SvctraceEventKindEV_NF), CtValid: 1,
		Pkt: bpfobj.SvctraceTuple{Saddr: be32("10.244.1.2"), Daddr: be32("10.96.0.10"), Sport: 40000, Dport: 80, Proto: 6}}
	rec := raw(&r)
	d := New(Options{})
	var ev event.Event
	b.ReportAllocs()
	for b.Loop() {
		if err := d.Decode(rec, &ev); err != nil {
			b.Fatal(err)
		}
	}
}
