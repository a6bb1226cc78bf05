package pcapng

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/svctrace/svctrace/pkg/event"
)

// tcpSYN is an IPv4 TCP SYN with 20 bytes of options and 4 bytes of payload.
func tcpSYN() []byte {
	b := []byte{
		0x45, 0, 0, 64, 0x12, 0x34, 0x40, 0, 64, 6, 0, 0, 10, 0, 0, 1, 10, 96, 0, 10,
		0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 0, 0xa0, 0x02, 0xfa, 0xf0, 0, 0, 0, 0,
	}
	b = append(b, make([]byte, 20)...)   // options
	return append(b, 'd', 'a', 't', 'a') // payload
}

func TestHeaderLen(t *testing.T) {
	udp := []byte{0x45, 0, 0, 40, 0, 0, 0, 0, 64, 17, 0, 0, 10, 0, 0, 1, 10, 96, 0, 10, 0, 53, 0, 53, 0, 20, 0, 0}
	udp = append(udp, bytes.Repeat([]byte{'p'}, 12)...)
	echo := []byte{0x45, 0, 0, 40, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 96, 0, 10, 8, 0, 0, 0, 0, 1, 0, 1}
	echo = append(echo, bytes.Repeat([]byte{'p'}, 12)...)
	icmpErr := []byte{0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2, 3, 1, 0, 0, 0, 0, 0, 0}
	icmpErr = append(icmpErr, tcpSYN()[:28]...) // the quoted IPv4 header and 8 bytes
	icmpErr = append(icmpErr, bytes.Repeat([]byte{'p'}, 8)...)
	frag := append([]byte(nil), udp...)
	frag[7] = 10 // fragment offset 10
	syn := tcpSYN()
	opts := append(append(append([]byte(nil), syn[:20]...), 1, 1, 1, 0), syn[20:]...)
	opts[0] = 0x46 // 24-byte IPv4 header: 4 bytes of options
	for _, tc := range []struct {
		name string
		pkt  []byte
		want int
	}{
		{"tcp with options", tcpSYN(), 60},
		{"udp", udp, 28},
		{"icmp echo", echo, 28},
		{"icmp error", icmpErr, 56},
		{"later fragment", frag, 20},
		{"ip options", opts, 64},
		{"cut tcp", tcpSYN()[:30], 30},
		{"short", []byte{0x45, 0}, 2},
		{"not ipv4", bytes.Repeat([]byte{0x60}, 40), 20},
		{"empty", nil, 0},
	} {
		if got := HeaderLen(tc.pkt); got != tc.want {
			t.Errorf("%s: HeaderLen = %d, want %d", tc.name, got, tc.want)
		}
	}
	if got := Trim(tcpSYN(), 0); len(got) != 60 {
		t.Errorf("Trim headers only: %d bytes", len(got))
	}
	if got := Trim(tcpSYN(), 62); len(got) != 62 {
		t.Errorf("Trim 62: %d bytes", len(got))
	}
	if got := Trim(tcpSYN(), 1000); len(got) != 64 {
		t.Errorf("Trim 1000: %d bytes", len(got))
	}
}

func FuzzHeaderLen(f *testing.F) {
	f.Add(tcpSYN())
	f.Fuzz(func(t *testing.T, b []byte) {
		if n := HeaderLen(b); n < 0 || n > len(b) {
			t.Fatalf("HeaderLen %d of %d bytes", n, len(b))
		}
	})
}

type names struct{}

func (names) Device(_, ifindex uint32) string {
	return map[uint32]string{2: "eth0", 3: "cali1"}[ifindex]
}
func (names) Netns(uint32) string                    { return "node" }
func (names) Prefixes(uint32, uint32) []netip.Prefix { return nil }
func (names) Kind(uint32, uint32) string             { return "" }
func tuple(src, dst string) event.Tuple              { return event.Tuple{Src: ap(src), Dst: ap(dst), Proto: 6} }
func ap(s string) netip.AddrPort                     { return netip.MustParseAddrPort(s) }
func readAll(t *testing.T, b []byte) (*pcapgo.NgReader, []frame) {
	return readFrames(t, bytes.NewReader(b))
}

type frame struct {
	data     []byte
	iface    int
	ts       time.Time
	length   int
	comments []string
	dir      pcapgo.NgEpbFlag
}

func readFrames(t *testing.T, r io.Reader) (*pcapgo.NgReader, []frame) {
	t.Helper()
	ng, err := pcapgo.NewNgReader(r, pcapgo.DefaultNgReaderOptions)
	if err != nil {
		t.Fatal(err)
	}
	var out []frame
	for {
		data, ci, opts, err := ng.ReadPacketDataWithOptions()
		if errors.Is(err, io.EOF) {
			return ng, out
		}
		if err != nil {
			t.Fatal(err)
		}
		f := frame{data: data, iface: ci.InterfaceIndex, ts: ci.Timestamp, length: ci.Length, comments: opts.Comments}
		if opts.Flags != nil {
			f.dir = opts.Flags.Direction
		}
		out = append(out, f)
	}
}

// TestWriterFrames writes one path's frames and reads them back.
func TestWriterFrames(t *testing.T) {
	var buf bytes.Buffer
	w := New(&buf, Options{FlushInterval: -1})
	info := tracer.RunInfo{Version: "v1", Kernel: "6.1", Namespace: "default", Service: "web", Node: "n1", ClockOffset: 1_700_000_000_000_000_000}
	if err := w.Begin(info); err != nil {
		t.Fatal(err)
	}
	w.Devices(names{})
	syn := tcpSYN()
	before, after := tuple("10.0.0.1:40000", "10.96.0.10:80"), tuple("10.0.0.1:40000", "10.244.1.5:8080")
	evs := []event.Event{
		{Time: 100, Kind: event.KindRecv, SKB: 9, Netns: 7, InIfindex: 2, Packet: before, Header: syn, Length: 64},
		{Time: 200, Kind: event.KindNetfilter, SKB: 9, Netns: 7, InIfindex: 2, Packet: before, Header: syn, Length: 64},
		{Time: 250, Kind: event.KindFIB, Netns: 7, Packet: after}, // flow event: no frame
		{Time: 300, Kind: event.KindXmit, SKB: 9, Netns: 7, InIfindex: 3, Packet: after, Header: syn, Length: 64},
	}
	for i := range evs {
		if err := w.Event(&evs[i]); err != nil {
			t.Fatal(err)
		}
	}
	p := &event.Path{
		SKB: 9, Service: "default/web:80/TCP", Original: before, Final: after,
		Client: event.Endpoint{Addr: before.Src, Name: "pod default/client"}, Backend: event.Endpoint{Addr: after.Dst, Name: "pod default/web-1"},
		NAT: []event.NATStep{{Type: event.DNAT, By: "nf_nat", Hook: "PREROUTING", Before: before, After: after}},
		Steps: []event.Step{
			{Time: 100, Kind: event.KindRecv, Netns: 7, Where: "received", Ifindex: 2, Dev: "eth0"},
			{Time: 200, Kind: event.KindNetfilter, Netns: 7, Where: "PREROUTING before NAT", Ifindex: 2, Dev: "eth0"},
			{Time: 300, Kind: event.KindXmit, Netns: 7, Where: "queued for transmit", Ifindex: 3, Dev: "cali1"},
		},
		Result: event.Result{Outcome: event.OutcomeForwarded, Dev: "cali1"},
	}
	if err := w.Path(p); err != nil {
		t.Fatal(err)
	}
	if err := w.Verdict(&event.Verdict{Verdict: "ok", Summary: "all good"}); err != nil {
		t.Fatal(err)
	}
	// A later packet of the flow without a verdict of its own.
	later := *p
	later.SKB = 10
	later.Steps = later.Steps[:1]
	ev := evs[0]
	ev.SKB = 10
	_ = w.Event(&ev)
	_ = w.Path(&later)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}

	ng, frames := readAll(t, buf.Bytes())
	if len(frames) != 4 {
		t.Fatalf("%d frames, want 4", len(frames))
	}
	if ng.NInterfaces() != 2 {
		t.Fatalf("%d interfaces, want 2", ng.NInterfaces())
	}
	for i, want := range []string{"node/eth0", "node/cali1"} {
		intf, _ := ng.Interface(i)
		if intf.Name != want || intf.LinkType != layers.LinkTypeIPv4 {
			t.Errorf("interface %d: %q %v", i, intf.Name, intf.LinkType)
		}
	}
	if si := ng.SectionInfo(); si.Application != "svctrace v1" || !strings.Contains(si.Comment, "default/web on node n1") {
		t.Errorf("section %+v", si)
	}
	f := frames[0]
	if len(f.data) != 60 || f.length != 64 || f.dir != pcapgo.NgEpbFlagDirectionInbound || f.iface != 0 {
		t.Errorf("frame 0: %d/%d bytes, direction %v, iface %d", len(f.data), f.length, f.dir, f.iface)
	}
	if want := time.Unix(0, 100+info.ClockOffset); !f.ts.Equal(want) {
		t.Errorf("frame time %v, want %v", f.ts, want)
	}
	if frames[2].dir != pcapgo.NgEpbFlagDirectionOutbound || frames[2].iface != 1 {
		t.Errorf("frame 2: direction %v iface %d", frames[2].dir, frames[2].iface)
	}
	all := strings.Join(f.comments, "\n")
	for _, want := range []string{
		"svctrace: step 1/3: received on eth0",
		"nat: DNAT 10.96.0.10:80 -> 10.244.1.5:8080 by nf_nat at PREROUTING",
		"request: service default/web:80/TCP, client pod default/client (10.0.0.1:40000), backend pod default/web-1 (10.244.1.5:8080)",
		"result: forwarded on cali1",
		"verdict: ok: all good",
	} {
		if !strings.Contains(all, want) {
			t.Errorf("comments lack %q:\n%s", want, all)
		}
	}
	if c := strings.Join(frames[3].comments, "\n"); !strings.Contains(c, "verdict (of the flow): ok") {
		t.Errorf("later packet comments:\n%s", c)
	}
}

func TestEmptyAndUnused(t *testing.T) {
	dir := t.TempDir()
	// A trace that ran but saw nothing: a valid file without frames.
	p := filepath.Join(dir, "empty.pcapng")
	w, err := Create(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_ = w.Begin(tracer.RunInfo{})
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, frames := readAll(t, b); len(frames) != 0 {
		t.Errorf("%d frames", len(frames))
	}
	// A trace that failed before it began: no file.
	p = filepath.Join(dir, "unused.pcapng")
	if w, err = Create(p, Options{}); err != nil {
		t.Fatal(err)
	}
	_ = w.Close()
	if _, err := os.Stat(p); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unused file left: %v", err)
	}
}

// TestFromRecording exports a real recording's packets: every frame carries
// the step comment, and the scenario's verdict shows.
func TestFromRecording(t *testing.T) {
	rd, err := record.Open("../record/testdata/stale-backend.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	var buf bytes.Buffer
	w := New(&buf, Options{})
	if _, err := record.Replay(context.Background(), rd, record.ReplayConfig{Renderer: render.NewJSON(io.Discard), Sinks: []tracer.Sink{w}}); err != nil {
		t.Fatal(err)
	}
	ng, frames := readAll(t, buf.Bytes())
	if len(frames) == 0 || uint64(len(frames)) != w.Frames() {
		t.Fatalf("%d frames read, %d written", len(frames), w.Frames())
	}
	verdicts := 0
	for i, f := range frames {
		if len(f.comments) < 4 || !strings.HasPrefix(f.comments[0], "svctrace: step ") {
			t.Fatalf("frame %d comments %q", i, f.comments)
		}
		if len(f.data) > KernelSnaplen || len(f.data) != HeaderLen(f.data) {
			t.Errorf("frame %d keeps %d bytes, headers are %d", i, len(f.data), HeaderLen(f.data))
		}
		if strings.Contains(strings.Join(f.comments, " "), "verdict: stale-backend") {
			verdicts++
		}
	}
	if verdicts == 0 {
		t.Error("no frame carries the stale-backend verdict")
	}
	seen := map[string]bool{}
	for i := range ng.NInterfaces() {
		intf, _ := ng.Interface(i)
		if seen[intf.Name] {
			t.Errorf("interface %q twice", intf.Name)
		}
		seen[intf.Name] = true
	}
	t.Logf("%d frames on %d interfaces, %d with the verdict", len(frames), ng.NInterfaces(), verdicts)
}
