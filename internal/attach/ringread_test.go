package attach

import (
	"errors"
	"net/netip"
	"os"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/decode"
	"github.com/svctrace/svctrace/internal/kernel"
	"github.com/svctrace/svctrace/internal/testenv"
	"github.com/svctrace/svctrace/pkg/event"
)

// TestRingReaderWrapsAround: the in-place ring reader on a four-page ring
// (about sixty events) that real traffic fills many times over: every
// event the kernel submitted is read and decodes, in kernel time order per
// round, nothing is lost, records that wrap past the end of the ring come
// out whole, and an empty ring answers a passed deadline at once.
func TestRingReaderWrapsAround(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.SkipIfMissing(t, "BPF netfilter links (6.4+)", kernel.HaveNetfilterLink())
	node := newNetns(t)
	pod := podBehindVeth(t, node, "r", "10.97.0")

	ring := uint32(4 * os.Getpagesize())
	p, err := Load(Options{Backend: BackendNetfilter, NetnsPath: node, RingBufSize: ring, WakeupBytes: 1024})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.SetFilter([]FilterEntry{{Addr: netip.MustParseAddr("10.97.0.2")}}, false); err != nil {
		t.Fatal(err)
	}
	r, err := p.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if _, err := r.Read(time.Now().Add(-time.Second)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("empty ring, passed deadline: %v, want os.ErrDeadlineExceeded", err)
	}
	dec := decode.New(decode.Options{})
	var ev event.Event
	read, bytes := 0, 0
	for round := range 40 {
		// Three exchanges: a dozen events or so, a fifth of the ring.
		udpEcho(t, node, pod, netip.MustParseAddrPort("10.97.0.2:9999"), 3)
		n := 0
		var last uint64
		for {
			rec, err := r.Read(time.Now().Add(100 * time.Millisecond))
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			if err := dec.Decode(rec, &ev); err != nil {
				t.Fatalf("round %d, record %d: %v", round, n, err)
			}
			if ev.Time < last || ev.Kind == 0 {
				t.Fatalf("round %d, record %d: kind %d at %d after %d", round, n, ev.Kind, ev.Time, last)
			}
			last = ev.Time
			n++
			bytes += len(rec)
		}
		if n == 0 {
			t.Fatalf("round %d: no events", round)
		}
		read += n
	}
	c, err := p.Counters()
	if err != nil {
		t.Fatal(err)
	}
	var emitted, lost uint64
	for i := range c.Emitted {
		emitted += c.Emitted[i]
		lost += c.Lost[i]
	}
	if lost != 0 || uint64(read) != emitted {
		t.Errorf("read %d events, the kernel submitted %d and lost %d", read, emitted, lost)
	}
	if bytes < 4*int(ring) {
		t.Errorf("only %d bytes through a %d-byte ring: it never wrapped around", bytes, ring)
	}
}
