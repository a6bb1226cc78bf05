package pipeline

import (
	"io"
	"net/netip"
	"testing"
	"unsafe"

	"k8s.io/apimachinery/pkg/runtime"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/svctrace/svctrace/internal/bpfobj"
	"github.com/svctrace/svctrace/internal/correlate"
	"github.com/svctrace/svctrace/internal/decode"
	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/pkg/event"
)

func be32(s string) uint32 {
	a := netip.MustParseAddr(s).As4()
	return uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24
}

// packetRecords returns the raw records the kernel side emits for one client
// packet to a ClusterIP DNATed by iptables on the node (stable backend):
// xmit in the pod, recv on the node, PREROUTING after NAT (the view before
// it rebuilt from the conntrack entry), POSTROUTING after NAT, xmit to the
// backend's veth, recv in the backend pod: 6 events.
func packetRecords(i int) [][]byte {
	sport := uint16(10000 + i%50000)
	pre := bpfobj.SvctraceTuple{Saddr: be32("10.244.1.2"), Daddr: be32("10.96.0.10"), Sport: sport, Dport: 80, Proto: 6, TcpFlags: 0x10, IpLen: 52}
	post := pre
	post.Daddr, post.Dport = be32("10.244.1.5"), 9376
	ct := bpfobj.SvctraceTuple{Saddr: be32("10.244.1.2"), Daddr: be32("10.96.0.10"), Sport: sport, Dport: 80, Proto: 6}
	reply := bpfobj.SvctraceTuple{Saddr: be32("10.244.1.5"), Daddr: be32("10.244.1.2"), Sport: 9376, Dport: sport, Proto: 6}
	base := uint64(1_000_000 + i*10_000)
	skb := uint64(0xffff888000000000) + uint64(i%4096)*256
	mk := func(off uint64, kind bpfobj.SvctraceEventKind, src bpfobj.SvctraceEventSource, netns, hook uint32, stage uint8, t bpfobj.SvctraceTuple, ifindex uint32, withCT bool) []byte {
		r := bpfobj.SvctraceEvent{Ts: base + off, Skb: skb, Kind: uint32(kind), Source: uint8(src), Netns: netns,
			Hook: hook, Stage: stage, Pkt: t, Ifindex: ifindex}
		r.Hdr[4], r.Hdr[5] = byte(i>>8), byte(i)
		if withCT {
			r.CtValid, r.Ct, r.CtOrig, r.CtReply = 1, 0xc0+uint64(i), ct, reply
			r.CtStatus = 0x1a8 // CONFIRMED, DST_NAT, SRC_NAT_DONE, DST_NAT_DONE
		}
		return append([]byte(nil), unsafe.Slice((*byte)(unsafe.Pointer(&r)), decode.RecordSize)...)
	}
	const pod, node, backend = 11, 22, 33
	nf, tp := bpfobj.SvctraceEventSourceSRC_NETFILTER, bpfobj.SvctraceEventSourceSRC_TRACEPOINT
	return [][]byte{
		mk(0, bpfobj.SvctraceEventKindEV_XMIT, tp, pod, 0, 0, pre, 2, false),
		mk(100, bpfobj.SvctraceEventKindEV_RECV, tp, node, 0, 0, pre, 5, false),
		mk(300, bpfobj.SvctraceEventKindEV_NF, nf, node, 0, 1, post, 5, true),
		mk(500, bpfobj.SvctraceEventKindEV_NF, nf, node, 4, 1, post, 6, true),
		mk(600, bpfobj.SvctraceEventKindEV_XMIT, tp, node, 0, 0, post, 6, false),
		mk(700, bpfobj.SvctraceEventKindEV_RECV, tp, backend, 0, 0, post, 2, false),
	}
}

type staticDevices struct{}

func (staticDevices) Device(netns, ifindex uint32) string    { return "cali0123456789a" }
func (staticDevices) Netns(netns uint32) string              { return "node" }
func (staticDevices) Prefixes(uint32, uint32) []netip.Prefix { return nil }
func (staticDevices) Kind(uint32, uint32) string             { return "veth" }

func benchSnapshot() (*meta.Snapshot, *meta.Service) {
	objs := []runtime.Object{
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "hostnames", Namespace: "default"},
			Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
				Ports: []corev1.ServicePort{{Name: "default", Port: 80, Protocol: corev1.ProtocolTCP}}}},
		&discoveryv1.EndpointSlice{ObjectMeta: metav1.ObjectMeta{Name: "hostnames-x", Namespace: "default",
			Labels: map[string]string{discoveryv1.LabelServiceName: "hostnames"}},
			AddressType: discoveryv1.AddressTypeIPv4,
			Endpoints: []discoveryv1.Endpoint{{Addresses: []string{"10.244.1.5"},
				Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
				TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: "hostnames-abc"}}},
			Ports: []discoveryv1.EndpointPort{{Name: ptr("default"), Port: ptr(int32(9376)), Protocol: ptr(corev1.ProtocolTCP)}}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "hostnames-abc", Namespace: "default"},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: "10.244.1.5", PodIPs: []corev1.PodIP{{IP: "10.244.1.5"}}}},
	}
	snap := meta.NewSnapshot(objs...)
	svc, err := snap.Service("default", "hostnames")
	if err != nil {
		panic(err)
	}
	return snap, svc
}

func ptr[T any](v T) *T { return &v }

// BenchmarkPipeline measures the userspace hot path per event: decode a raw
// kernel record, correlate it into its packet's path, name it, diagnose it
// and encode the path as JSON (budget: 1,000,000 events/s on one core).
func BenchmarkPipeline(b *testing.B) {
	p := runPipelineBench(b, render.NewJSON(io.Discard))
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
	// Every packet's path was built and rendered (6 events a packet): a
	// benchmark that merged packets across laps would measure less work.
	if st, want := p.Stats(), uint64(b.N/6); st.Paths < want*9/10 {
		b.Fatalf("%d paths for %d events, want about %d", st.Paths, b.N, want)
	}
}

// runPipelineBench feeds b.N events of 4096 synthetic packets through a
// pipeline rendering to r, and flushes it.
func runPipelineBench(b *testing.B, r render.Renderer) *Pipeline {
	const packets = 4096
	var recs [][]byte
	for i := 0; i < packets; i++ {
		recs = append(recs, packetRecords(i)...)
	}
	snap, svc := benchSnapshot()
	p := New(Config{Snap: snap, Service: svc, NodeNetns: 22, Devices: staticDevices{}, Renderer: r})
	dec := decode.New(decode.Options{})
	var ev event.Event
	b.ReportAllocs()
	b.ResetTimer()
	n := 0
	for b.Loop() {
		if err := dec.Decode(recs[n%len(recs)], &ev); err != nil {
			b.Fatal(err)
		}
		// Each lap over the records is a new round of packets (the same skb
		// addresses): shift time past the lap and the idle wait, so that the
		// last lap's packets are complete, not continued.
		ev.Time += uint64(n/len(recs)) * lapShift
		p.Event(&ev)
		n++
		if n%1024 == 0 {
			p.Advance(ev.Time)
		}
	}
	p.Flush()
	return p
}

// lapShift moves each lap over the benchmark's records past the previous
// one: its span (4096 packets 10 µs apart) plus twice the idle wait.
const lapShift = uint64(4096*10_000) + 2*uint64(correlate.DefaultIdle)

// nopRenderer drops everything: BenchmarkPipelineNoEncode measures the
// stages before rendering.
type nopRenderer struct{}

func (nopRenderer) Path(*event.Path) error       { return nil }
func (nopRenderer) Event(*event.Event) error     { return nil }
func (nopRenderer) Stats(*event.Stats) error     { return nil }
func (nopRenderer) Verdict(*event.Verdict) error { return nil }
func (nopRenderer) Record(any) error             { return nil }
func (nopRenderer) Flush() error                 { return nil }

func BenchmarkPipelineNoEncode(b *testing.B) {
	runPipelineBench(b, nopRenderer{})
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
