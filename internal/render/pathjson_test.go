package render

import (
	"bytes"
	"encoding/json"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/svctrace/svctrace/pkg/event"
)

// stdJSON is what encoding/json writes for v with the JSON renderer's settings.
func stdJSON(t testing.TB, v any) []byte {
	t.Helper()
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func checkPath(t testing.TB, e *pathEncoder, p *event.Path) {
	t.Helper()
	want := stdJSON(t, p)
	if got := e.appendPath(nil, p); !bytes.Equal(got, want) {
		t.Fatalf("appendPath differs from encoding/json:\n got %s\nwant %s", got, want)
	}
}

// strs are strings that exercise every escaping rule of encoding/json.
func strs() []string {
	return []string{"", "plain", `q"uote`, `back\slash`, "ctl\x00\x01\x1f\t\n\r\b\f", "<html>&", "ünïcödé", "bad\xffutf8\xc3",
		"line\u2028sep\u2029", "emoji 🚀", "\x7f"}
}

func randAddrPort(r *rand.Rand) netip.AddrPort {
	switch r.IntN(4) {
	case 0:
		return netip.AddrPort{}
	case 1:
		return netip.AddrPortFrom(netip.MustParseAddr("2001:db8::1"), uint16(r.IntN(65536)))
	}
	return netip.AddrPortFrom(netip.AddrFrom4([4]byte{byte(r.IntN(256)), byte(r.IntN(256)), 0, byte(r.IntN(256))}), uint16(r.IntN(65536)))
}

func randAddr(r *rand.Rand) netip.Addr {
	if r.IntN(3) == 0 {
		return netip.Addr{}
	}
	return randAddrPort(r).Addr()
}

// tuplePool holds a few tuples that paths repeat, as real ones do (the
// encoder's tuple cache then answers; a tuple that differs from one in it
// by a port, an address or the protocol must not).
var tuplePool = func() []event.Tuple {
	a, b := netip.MustParseAddr("10.244.1.2"), netip.MustParseAddr("10.96.0.10")
	t := event.Tuple{Src: netip.AddrPortFrom(a, 40000), Dst: netip.AddrPortFrom(b, 80), Proto: 6}
	pool := []event.Tuple{t, t.Reverse()}
	u := t
	u.Proto = 17
	v := t
	v.Src = netip.AddrPortFrom(a, 40001)
	w := t
	w.Dst = netip.AddrPortFrom(netip.MustParseAddr("10.96.0.11"), 80)
	return append(pool, u, v, w, u.Reverse(), v.Reverse(), w.Reverse())
}()

func randTuple(r *rand.Rand) event.Tuple {
	if r.IntN(2) == 0 {
		return tuplePool[r.IntN(len(tuplePool))]
	}
	return event.Tuple{Src: randAddrPort(r), Dst: randAddrPort(r), Proto: uint8(r.IntN(256))}
}

func randStr(r *rand.Rand) string {
	s := strs()
	return s[r.IntN(len(s))]
}

func randU32(r *rand.Rand) uint32 {
	if r.IntN(2) == 0 {
		return 0
	}
	return r.Uint32()
}

func randPath(r *rand.Rand) *event.Path {
	p := &event.Path{Type: "path", Start: r.Uint64(), End: r.Uint64(), Service: randStr(r), Reply: r.IntN(2) == 0,
		Original: randTuple(r), Final: randTuple(r), TCPFlags: uint8(r.IntN(3)), Entered: randStr(r), NetnsName: randStr(r),
		Client: event.Endpoint{Addr: randAddrPort(r), Name: randStr(r)}}
	if r.IntN(2) == 0 {
		p.SKB = r.Uint64()
	}
	if r.IntN(2) == 0 {
		p.Backend = event.Endpoint{Addr: randAddrPort(r), Name: randStr(r)}
	}
	for range r.IntN(3) {
		p.NAT = append(p.NAT, event.NATStep{Type: event.NATType(r.IntN(4)), Reverse: r.IntN(2) == 0, By: randStr(r),
			Hook: randStr(r), Before: randTuple(r), After: randTuple(r), Source: event.Source(r.IntN(6))})
	}
	if r.IntN(2) == 0 {
		v := &event.IPVSStep{Virtual: randAddrPort(r), Real: randAddrPort(r), Connection: randStr(r),
			NoDestination: r.IntN(2) == 0, Source: event.Source(r.IntN(6))}
		if r.IntN(2) == 0 {
			w := int32(r.Uint32())
			v.Weight = &w
		}
		if r.IntN(2) == 0 {
			a := r.IntN(2) == 0
			v.Available = &a
		}
		p.IPVS = v
	}
	for range r.IntN(3) {
		p.Routes = append(p.Routes, event.RouteStep{Time: r.Uint64(), Kind: randStr(r), Table: randU32(r), Dst: randAddr(r),
			Src: randAddr(r), PrefSrc: randAddr(r), Gateway: randAddr(r), OutDev: randStr(r), OutIndex: randU32(r),
			Error: int32(randU32(r)), Netns: randU32(r), NetnsName: randStr(r), Comm: randStr(r), PID: randU32(r), Repeat: r.IntN(2) == 0})
	}
	if r.IntN(5) != 0 {
		p.Steps = []event.Step{}
		for range r.IntN(4) {
			p.Steps = append(p.Steps, event.Step{Time: r.Uint64(), Kind: event.Kind(r.IntN(20)), Source: event.Source(r.IntN(6)),
				Netns: randU32(r), Where: randStr(r), Packet: randTuple(r), Ifindex: randU32(r), Dev: randStr(r), Detail: randStr(r)})
		}
	}
	p.Result = event.Result{Outcome: event.Outcome(randStr(r)), Ifindex: randU32(r), Dev: randStr(r), Netns: randU32(r),
		Reason: randStr(r), Location: randStr(r), DropReason: randStr(r)}
	if r.IntN(2) == 0 {
		p.Conntrack = &event.Conntrack{ID: r.Uint64(), Original: randTuple(r), Reply: randTuple(r), Status: r.Uint32()}
	}
	return p
}

// TestAppendPathMatchesJSON holds the hand-written path encoder to
// encoding/json's output, byte for byte, on paths with every field set and
// unset and strings that need every kind of escaping.
func TestAppendPathMatchesJSON(t *testing.T) {
	var e pathEncoder
	checkPath(t, &e, &event.Path{Type: "path"})
	r := rand.New(rand.NewPCG(1, 2))
	for range 20000 {
		checkPath(t, &e, randPath(r))
	}
}

func FuzzAppendString(f *testing.F) {
	for _, s := range strs() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want := stdJSON(t, s)
		want = want[:len(want)-1] // the encoder's newline
		if got := appendString(nil, s); !bytes.Equal(got, want) {
			t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
		}
	})
}

func BenchmarkPathJSON(b *testing.B) {
	p := randPath(rand.New(rand.NewPCG(3, 4)))
	b.Run("appendPath", func(b *testing.B) {
		var buf []byte
		var e pathEncoder
		for b.Loop() {
			buf = e.appendPath(buf[:0], p)
		}
	})
	b.Run("encoding/json", func(b *testing.B) {
		enc := json.NewEncoder(&bytes.Buffer{})
		for b.Loop() {
			_ = enc.Encode(p)
		}
	})
}
