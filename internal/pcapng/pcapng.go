// Package pcapng exports the packets svctrace traced as a pcapng file for
// Wireshark and tshark: one frame per point of a packet's path where the
// kernel side captured its header (raw IPv4, no payload beyond the headers
// unless a snap length says otherwise), one interface per (network
// namespace, device) seen, and per-frame comments carrying the hook, the
// NAT steps, the Service and Pod names, the path's end and the verdict.
// The file format is written by gopacket's pcapgo.NgWriter.
//
// Frames are written when their packet's path completes (that is when the
// names and the verdict are known), so they are in path order; within a
// path, in time order.
package pcapng

import (
	"bufio"
	"fmt"
	"io"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/pipeline"
	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/svctrace/svctrace/pkg/event"
)

// Options configure a Writer.
type Options struct {
	// Snaplen is how many bytes of each packet to keep; 0 keeps the IPv4
	// and transport headers only (see HeaderLen). The kernel side captures
	// at most KernelSnaplen bytes.
	Snaplen int
	// FlushInterval is how often complete frames are written out (default
	// 1s; negative: only at Close).
	FlushInterval time.Duration
}

// KernelSnaplen is how many bytes of each packet the kernel side captures.
const KernelSnaplen = 64

// maxPending caps the captured headers waiting for their packet's path.
const maxPending = 1 << 16

// maxFlows caps the remembered flow verdicts.
const maxFlows = 1 << 16

// Writer writes a pcapng file. It implements tracer.Sink.
type Writer struct {
	mu     sync.Mutex
	opts   Options
	file   *os.File // nil when writing to a caller's io.Writer
	began  bool
	out    *bufio.Writer
	ng     *pcapgo.NgWriter
	info   tracer.RunInfo
	devs   pipeline.Devices
	ifaces map[ifaceKey]int

	captured map[capKey][]capture
	order    []capKey

	pending    *event.Path
	pendingV   *event.Verdict
	flows      map[flowKey]*event.Verdict
	flowOrder  []flowKey
	frames     uint64
	err        error
	reported   bool
	closed     bool
	stop, done chan struct{}
}

type ifaceKey struct{ netns, ifindex uint32 }

// capKey identifies the event a path step came from.
type capKey struct {
	skb  uint64
	time uint64
	kind event.Kind
}

type capture struct {
	data   []byte
	length int
}

type flowKey struct {
	src, dst netip.AddrPort
	proto    uint8
}

var _ tracer.Sink = (*Writer)(nil)

// Create creates the pcapng file at path.
func Create(path string, opts Options) (*Writer, error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create pcapng: %w", err)
	}
	w := New(f, opts)
	w.file = f
	return w, nil
}

// New returns a Writer writing to out; Close does not close out.
func New(out io.Writer, opts Options) *Writer {
	w := &Writer{
		opts: opts, out: bufio.NewWriterSize(out, 64<<10), ifaces: map[ifaceKey]int{},
		captured: map[capKey][]capture{}, flows: map[flowKey]*event.Verdict{},
		stop: make(chan struct{}), done: make(chan struct{}),
	}
	every := opts.FlushInterval
	if every == 0 {
		every = time.Second
	}
	if every > 0 {
		go w.flusher(every)
	} else {
		close(w.done)
	}
	return w
}

func (w *Writer) flusher(every time.Duration) {
	defer close(w.done)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-w.stop:
			return
		case <-t.C:
			w.mu.Lock()
			if w.ng != nil && w.err == nil && !w.closed {
				w.fail(w.flushLocked())
			}
			w.mu.Unlock()
		}
	}
}

func (w *Writer) flushLocked() error {
	if err := w.ng.Flush(); err != nil {
		return fmt.Errorf("write pcapng: %w", err)
	}
	if err := w.out.Flush(); err != nil {
		return fmt.Errorf("write pcapng: %w", err)
	}
	return nil
}

func (w *Writer) fail(err error) {
	if err != nil && w.err == nil {
		w.err = err
	}
}

func (w *Writer) result() error {
	if w.err != nil && !w.reported {
		w.reported = true
		return fmt.Errorf("pcapng stopped: %w", w.err)
	}
	return nil
}

// Frames returns how many frames were written.
func (w *Writer) Frames() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.frames
}

// Begin keeps the trace's description for the section header and the
// clock for frame times.
func (w *Writer) Begin(info tracer.RunInfo) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.info = info
	w.began = true
	return nil
}

// Metadata is not needed: names arrive with the paths.
func (w *Writer) Metadata(*meta.Snapshot) error { return nil }

// Devices keeps the resolver to name interfaces' namespaces.
func (w *Writer) Devices(d pipeline.Devices) pipeline.Devices {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.devs = d
	return d
}

// Event keeps the packet header bytes of an event until its path completes.
func (w *Writer) Event(ev *event.Event) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writePendingLocked()
	if ev.SKB == 0 || len(ev.Header) == 0 {
		return w.result()
	}
	k := capKey{ev.SKB, ev.Time, ev.Kind}
	data := slices.Clone(Trim(ev.Header, w.opts.Snaplen))
	w.captured[k] = append(w.captured[k], capture{data: data, length: max(int(ev.Length), len(data))})
	w.order = append(w.order, k)
	for len(w.order) > maxPending {
		old := w.order[0]
		w.order = w.order[1:]
		if c := w.captured[old]; len(c) > 1 {
			w.captured[old] = c[1:]
		} else {
			delete(w.captured, old)
		}
	}
	return w.result()
}

// Advance writes a path still waiting for its verdict (none came).
func (w *Writer) Advance(uint64) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writePendingLocked()
	return w.result()
}

// Path holds the path until its verdict, which the pipeline gives next.
func (w *Writer) Path(p *event.Path) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writePendingLocked()
	w.pending = p
	return w.result()
}

// Verdict writes the path it concludes, with it.
func (w *Writer) Verdict(v *event.Verdict) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.pending != nil {
		k := keyOf(w.pending)
		if _, ok := w.flows[k]; !ok {
			if len(w.flowOrder) >= maxFlows {
				delete(w.flows, w.flowOrder[0])
				w.flowOrder = w.flowOrder[1:]
			}
			w.flowOrder = append(w.flowOrder, k)
		}
		w.flows[k] = v
		w.pendingV = v
	}
	w.writePendingLocked()
	return w.result()
}

// keyOf identifies a path's flow in its request direction.
func keyOf(p *event.Path) flowKey {
	t := p.Original
	if p.Conntrack != nil {
		t = p.Conntrack.Original
	} else if p.Reply {
		t = t.Reverse()
	}
	return flowKey{t.Src, t.Dst, t.Proto}
}

// Close writes what is pending and closes the file. An empty trace still
// gives a valid file (one interface, no frames).
func (w *Writer) Close() error {
	w.mu.Lock()
	if w.closed {
		w.mu.Unlock()
		return nil
	}
	close(w.stop)
	w.mu.Unlock()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	w.writePendingLocked()
	if w.ng == nil && w.err == nil && w.began {
		w.fail(w.start(pcapgo.NgInterface{Name: "svctrace", Description: "no packets were traced",
			LinkType: layers.LinkTypeIPv4, SnapLength: uint32(w.snaplen())}))
	}
	if w.ng != nil {
		w.fail(w.flushLocked())
	}
	w.closed = true
	if w.file != nil {
		if err := w.file.Close(); err != nil {
			w.fail(fmt.Errorf("close pcapng: %w", err))
		}
		if !w.began && w.frames == 0 {
			// The trace failed before it started: leave no file behind.
			_ = os.Remove(w.file.Name())
		}
	}
	if w.err != nil && !w.reported {
		w.reported = true
		return w.err
	}
	return nil
}

func (w *Writer) snaplen() int {
	if w.opts.Snaplen > 0 {
		return min(w.opts.Snaplen, KernelSnaplen)
	}
	return KernelSnaplen
}

// start writes the section header and the first interface.
func (w *Writer) start(first pcapgo.NgInterface) error {
	section := pcapgo.NgSectionInfo{
		Hardware:    runtime.GOARCH,
		OS:          "Linux " + w.info.Kernel,
		Application: strings.TrimSpace("svctrace " + w.info.Version),
		Comment:     w.sectionComment(),
	}
	ng, err := pcapgo.NewNgWriterInterface(w.out, first, pcapgo.NgWriterOptions{SectionInfo: section})
	if err != nil {
		return fmt.Errorf("write pcapng: %w", err)
	}
	w.ng = ng
	return nil
}

func (w *Writer) sectionComment() string {
	var b strings.Builder
	b.WriteString("svctrace trace")
	if w.info.Service != "" {
		b.WriteString(" of service " + w.info.Namespace + "/" + w.info.Service)
	}
	if w.info.Node != "" {
		b.WriteString(" on node " + w.info.Node)
	}
	if !w.info.Start.IsZero() {
		b.WriteString(", started " + w.info.Start.UTC().Format(time.RFC3339))
	}
	return b.String()
}

// iface returns the interface id of a (namespace, device), adding it.
func (w *Writer) iface(netns, ifindex uint32, dev string) (int, error) {
	k := ifaceKey{netns, ifindex}
	if id, ok := w.ifaces[k]; ok {
		return id, nil
	}
	ns := ""
	if w.devs != nil && netns != 0 {
		ns = w.devs.Netns(netns)
	}
	if ns == "" {
		ns = "netns " + strconv.FormatUint(uint64(netns), 10)
	}
	if dev == "" {
		dev = "-"
		if ifindex != 0 {
			dev = "if" + strconv.FormatUint(uint64(ifindex), 10)
		}
	}
	intf := pcapgo.NgInterface{
		Name:        ns + "/" + dev,
		Description: fmt.Sprintf("device %s (ifindex %d) in network namespace %s (inode %d)", dev, ifindex, ns, netns),
		LinkType:    layers.LinkTypeIPv4,
		SnapLength:  uint32(w.snaplen()),
		OS:          "Linux " + w.info.Kernel,
	}
	var id int
	if w.ng == nil {
		if err := w.start(intf); err != nil {
			return 0, err
		}
	} else {
		var err error
		if id, err = w.ng.AddInterface(intf); err != nil {
			return 0, fmt.Errorf("write pcapng: %w", err)
		}
	}
	w.ifaces[k] = id
	return id, nil
}

// writePendingLocked writes the frames of the path waiting for a verdict.
func (w *Writer) writePendingLocked() {
	p, v := w.pending, w.pendingV
	w.pending, w.pendingV = nil, nil
	if p == nil || w.err != nil || w.closed {
		return
	}
	flowV := w.flows[keyOf(p)]
	common := pathComments(p, v, flowV)
	for i := range p.Steps {
		s := &p.Steps[i]
		k := capKey{p.SKB, s.Time, s.Kind}
		caps := w.captured[k]
		if len(caps) == 0 {
			continue // no header captured at this point
		}
		c := caps[0]
		if len(caps) > 1 {
			w.captured[k] = caps[1:]
		} else {
			delete(w.captured, k)
		}
		id, err := w.iface(s.Netns, s.Ifindex, s.Dev)
		if err != nil {
			w.fail(err)
			return
		}
		ci := gopacket.CaptureInfo{
			Timestamp:      time.Unix(0, int64(s.Time)+w.info.ClockOffset),
			CaptureLength:  len(c.data),
			Length:         c.length,
			InterfaceIndex: id,
		}
		opts := pcapgo.NgPacketOptions{Comments: append([]string{stepComment(p, i)}, common...)}
		switch s.Kind {
		case event.KindRecv:
			opts.Flags = &pcapgo.NgEpbFlags{Direction: pcapgo.NgEpbFlagDirectionInbound}
		case event.KindXmit:
			opts.Flags = &pcapgo.NgEpbFlags{Direction: pcapgo.NgEpbFlagDirectionOutbound}
		}
		if err := w.ng.WritePacketWithOptions(ci, c.data, opts); err != nil {
			w.fail(fmt.Errorf("write pcapng: %w", err))
			return
		}
		w.frames++
	}
}

// stepComment says where in the path the frame was seen.
func stepComment(p *event.Path, i int) string {
	s := &p.Steps[i]
	c := fmt.Sprintf("svctrace: step %d/%d: %s", i+1, len(p.Steps), s.Where)
	if s.Dev != "" {
		c += " on " + s.Dev
	}
	if s.Detail != "" {
		c += ": " + s.Detail
	}
	return c
}

// pathComments are the comments every frame of a path carries.
func pathComments(p *event.Path, v, flowV *event.Verdict) []string {
	var out []string
	if len(p.NAT) > 0 {
		var nats []string
		for _, n := range p.NAT {
			s := n.Type.String()
			if n.Reverse {
				s = "reverse " + s
			}
			s += " " + natAddr(n.Before, n.Type) + " -> " + natAddr(n.After, n.Type) + " by " + n.By
			if n.Hook != "" {
				s += " at " + n.Hook
			}
			nats = append(nats, s)
		}
		out = append(out, "nat: "+strings.Join(nats, "; "))
	} else {
		out = append(out, "nat: none")
	}
	var names []string
	if p.Service != "" {
		names = append(names, "service "+p.Service)
	}
	names = append(names, "client "+endpoint(p.Client))
	if p.Backend.Addr.IsValid() {
		names = append(names, "backend "+endpoint(p.Backend))
	}
	dir := "request"
	if p.Reply {
		dir = "reply"
	}
	out = append(out, dir+": "+strings.Join(names, ", "))
	res := "result: " + string(p.Result.Outcome)
	if p.Result.Dev != "" {
		res += " on " + p.Result.Dev
	}
	if p.Result.Reason != "" {
		res += ": " + p.Result.Reason
	}
	if p.Result.Location != "" {
		res += " at " + p.Result.Location
	}
	out = append(out, res)
	switch {
	case v != nil:
		out = append(out, "verdict: "+v.Verdict+": "+v.Summary)
	case flowV != nil:
		out = append(out, "verdict (of the flow): "+flowV.Verdict+": "+flowV.Summary)
	}
	return out
}

// natAddr is the side of a tuple a translation rewrites.
func natAddr(t event.Tuple, typ event.NATType) string {
	ap := t.Src
	if typ == event.DNAT {
		ap = t.Dst
	}
	if t.Proto == event.ProtoICMP {
		return ap.Addr().String()
	}
	return ap.String()
}

func endpoint(e event.Endpoint) string {
	if e.Name != "" {
		return e.Name + " (" + e.Addr.String() + ")"
	}
	return e.Addr.String()
}
