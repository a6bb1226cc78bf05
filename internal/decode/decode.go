// Package decode turns raw kernel records into event.Event values: addresses
// and ports in their Go types, drop reasons by name (from the running
// kernel's BTF), drop locations by symbol, and the tuple a NAT rewrite
// produced.
package decode

import (
	"errors"
	"fmt"
	"net/netip"
	"unsafe"

	"github.com/svctrace/svctrace/internal/bpfobj"
	"github.com/svctrace/svctrace/pkg/event"
)

// RecordSize is the size of one kernel record.
const RecordSize = int(unsafe.Sizeof(bpfobj.SvctraceEvent{}))

// ErrShortRecord means a record was smaller than an event.
var ErrShortRecord = errors.New("short record")

// Symbolizer resolves a kernel address to "symbol+0xoff".
type Symbolizer interface {
	Lookup(addr uint64) string
}

// Options configure a Decoder.
type Options struct {
	// DropReasons maps the kernel's enum skb_drop_reason values to names.
	DropReasons map[uint32]string
	// Symbols resolves drop locations; nil leaves Symbol empty.
	Symbols Symbolizer
	// Headers keeps the packet header bytes (for pcapng export).
	Headers bool
}

// Decoder decodes records. It is not safe for concurrent use.
type Decoder struct {
	opts Options
	raw  bpfobj.SvctraceEvent
	// ct is the storage of the events' conntrack entries: one for the
	// decoder, not one per event that has an entry after one that had none.
	ct event.Conntrack
}

// New returns a Decoder.
func New(opts Options) *Decoder { return &Decoder{opts: opts} }

// Decode decodes one record into ev, overwriting it. ev's Header storage
// is reused when present; its Conntrack is the decoder's, valid until the
// next Decode.
func (d *Decoder) Decode(rec []byte, ev *event.Event) error {
	if len(rec) < RecordSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrShortRecord, len(rec), RecordSize)
	}
	// The record is the C struct in native byte order, the layout of the
	// bpf2go-generated Go struct: read where it lies when it is aligned for
	// it (the ring buffer's records are), else from a copy.
	raw := &d.raw
	if uintptr(unsafe.Pointer(&rec[0]))%unsafe.Alignof(d.raw) == 0 {
		raw = (*bpfobj.SvctraceEvent)(unsafe.Pointer(&rec[0]))
	} else {
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&d.raw)), RecordSize), rec)
	}
	if ev.Conntrack != &d.ct {
		ev.Conntrack = &d.ct
	}
	Convert(raw, ev, d.opts)
	return nil
}

// Convert fills ev from a raw kernel event.
func Convert(r *bpfobj.SvctraceEvent, ev *event.Event, opts Options) {
	hdr := ev.Header[:0]
	ct := ev.Conntrack
	*ev = event.Event{
		Type:         "event",
		Time:         r.Ts,
		Kind:         event.Kind(r.Kind),
		Source:       event.Source(r.Source),
		SKB:          r.Skb,
		Netns:        r.Netns,
		Packet:       tuple(&r.Pkt),
		TCPFlags:     r.Pkt.TcpFlags,
		Length:       r.Pkt.IpLen,
		Mark:         r.Mark,
		InIfindex:    r.Ifindex,
		OutIfindex:   r.OutIfindex,
		RouteIfindex: r.RouteIfindex,
		PID:          r.Pid,
		IPID:         r.Ipid,
		RouteRepeat:  r.Flags&1 != 0, // EVF_ROUTE_REPEAT
	}
	if r.Comm[0] != 0 {
		ev.Comm = cString(r.Comm[:])
	}
	if r.CtValid == 2 {
		ev.IPVS = ipvsConn(r)
	} else if r.CtValid != 0 {
		if ct == nil {
			ct = &event.Conntrack{}
		}
		*ct = event.Conntrack{ID: r.Ct, Original: tuple(&r.CtOrig), Reply: tuple(&r.CtReply), Status: r.CtStatus}
		ev.Conntrack = ct
	}
	if opts.Headers && r.HdrLen > 0 {
		n := int(r.HdrLen)
		if n > len(r.Hdr) {
			n = len(r.Hdr)
		}
		ev.Header = append(hdr, r.Hdr[:n]...)
	}
	switch ev.Kind {
	case event.KindNetfilter:
		ev.Hook = event.Hook(r.Hook)
		ev.AfterNAT = r.Stage&1 != 0
		ev.CTReply = r.Stage&2 != 0
		if ev.AfterNAT {
			ev.PreNAT = PreNAT(ev.Packet, ev.Conntrack, ev.Hook, ev.CTReply)
		}
	case event.KindNAT:
		ev.NAT = event.NATType(r.Hook)
		ev.NATReply = r.Stage == 1
		ev.NATResult = NATResult(ev.Packet, ev.Conntrack, ev.NAT, ev.NATReply)
	case event.KindNATBind:
		ev.NAT = event.NATType(r.Hook)
		if ev.Conntrack != nil {
			ev.NATResult = ev.Conntrack.Reply.Reverse()
		}
	case event.KindFIB, event.KindRouteOut:
		ev.Table = r.Table
		ev.RouteError = int32(r.Reason)
		ev.Gateway = optAddr(r.Gw)
		ev.PrefSrc = optAddr(r.Prefsrc)
		ev.FlowOif = r.FlowOif
		ev.FlowIif = r.FlowIif
	case event.KindConnect:
		ev.FlowOif = r.FlowOif
	case event.KindValidateSource:
		ev.RouteError = int32(r.Reason)
	case event.KindDrop:
		ev.DropCode = r.Reason
		if name, ok := opts.DropReasons[r.Reason]; ok {
			ev.DropReason = name
		} else if r.Reason != 0 {
			ev.DropReason = fmt.Sprintf("reason-%d", r.Reason)
		}
		ev.Location = r.Location
		if opts.Symbols != nil {
			ev.Symbol = opts.Symbols.Lookup(r.Location)
		}
	case event.KindICMP:
		ev.ICMPType = uint8(r.Reason >> 8)
		ev.ICMPCode = uint8(r.Reason)
	case event.KindIPVSXmit:
		if ev.IPVS != nil {
			ev.NAT = event.DNAT
			ev.NATResult = ev.Packet
			ev.NATResult.Dst = ev.IPVS.Real
		}
	}
}

// ipvsConn reads the IPVS connection the kernel side put in the conntrack
// tuples: original = client -> virtual, reply = real -> client.
func ipvsConn(r *bpfobj.SvctraceEvent) *event.IPVSConn {
	orig, reply := tuple(&r.CtOrig), tuple(&r.CtReply)
	c := &event.IPVSConn{Client: orig.Src, Virtual: orig.Dst, Real: reply.Src, Proto: orig.Proto}
	if r.RsFlags&(1<<31) != 0 {
		w := int32(r.RsWeight)
		avail := r.RsFlags&1 != 0
		c.Weight, c.Available = &w, &avail
	}
	return c
}

// NATResult computes the packet's tuple after an nf_nat rewrite. The kernel
// rewrites towards the inverse of the other direction's conntrack tuple.
func NATResult(pkt event.Tuple, ct *event.Conntrack, typ event.NATType, replyDir bool) event.Tuple {
	if ct == nil {
		return event.Tuple{}
	}
	other := ct.Reply
	if replyDir {
		other = ct.Original
	}
	target := other.Reverse()
	out := pkt
	if typ == event.DNAT {
		out.Dst = target.Dst
	} else {
		out.Src = target.Src
	}
	return out
}

// Conntrack status bits (enum ip_conntrack_status).
const (
	ipsSrcNAT = 1 << 4
	ipsDstNAT = 1 << 5
)

// PreNAT tells what a packet seen after a netfilter hook's NAT looked like
// before it, from its conntrack entry, as nf_nat decides: the hook's manip
// type (destination at PREROUTING and OUTPUT, source at POSTROUTING and
// INPUT) rewrites the packet when the entry's status has that NAT for the
// packet's direction (a reply undoes the other side's: its destination
// rewrite is the original direction's SNAT), and until then the rewritten
// side is the packet's own direction's tuple's. It returns the zero tuple
// when the hook did not rewrite the packet (or nothing says).
func PreNAT(pkt event.Tuple, ct *event.Conntrack, hook event.Hook, replyDir bool) event.Tuple {
	if ct == nil {
		return event.Tuple{}
	}
	var dst bool
	switch hook {
	case event.HookPreRouting, event.HookLocalOut:
		dst = true
	case event.HookPostRouting, event.HookLocalIn:
	default:
		return event.Tuple{}
	}
	bit := uint32(ipsSrcNAT)
	if dst != replyDir {
		bit = ipsDstNAT
	}
	if ct.Status&bit == 0 {
		return event.Tuple{}
	}
	own := ct.Original
	if replyDir {
		own = ct.Reply
	}
	out := pkt
	ports := pkt.Proto == 6 || pkt.Proto == 17 || pkt.Proto == 132 // ICMP's ids are not ports
	if dst {
		out.Dst = withAddr(pkt.Dst, own.Dst, ports)
	} else {
		out.Src = withAddr(pkt.Src, own.Src, ports)
	}
	if out == pkt {
		return event.Tuple{}
	}
	return out
}

// withAddr is cur with the address (and, for transports with ports, the
// port) of from.
func withAddr(cur, from netip.AddrPort, ports bool) netip.AddrPort {
	if ports {
		return from
	}
	return netip.AddrPortFrom(from.Addr(), cur.Port())
}

func tuple(t *bpfobj.SvctraceTuple) event.Tuple {
	return event.Tuple{
		Src:   netip.AddrPortFrom(addr(t.Saddr), t.Sport),
		Dst:   netip.AddrPortFrom(addr(t.Daddr), t.Dport),
		Proto: t.Proto,
	}
}

// addr converts a network-order IPv4 address read as a native u32.
func addr(a uint32) netip.Addr {
	if a == 0 {
		return netip.IPv4Unspecified()
	}
	return netip.AddrFrom4([4]byte{byte(a), byte(a >> 8), byte(a >> 16), byte(a >> 24)})
}

func cString(b []int8) string {
	n := 0
	for n < len(b) && b[n] != 0 {
		n++
	}
	out := make([]byte, n)
	for i := 0; i < n; i++ {
		out[i] = byte(b[i])
	}
	return string(out)
}

// optAddr is addr, but 0 means "none" (the zero netip.Addr).
func optAddr(a uint32) netip.Addr {
	if a == 0 {
		return netip.Addr{}
	}
	return addr(a)
}
