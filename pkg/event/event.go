// Package event is svctrace's public event model: what the kernel reported
// about one packet at one point (Event), and what svctrace made of a packet's
// whole journey (Path). Other Go programs can import it to read svctrace's
// JSON output or recordings.
//
// Every JSON line svctrace writes has a "type": "event" (Event), "path"
// (Path), "stats" (Stats) and, from the diagnosis layer, "verdict". The field
// names below are the schema; new fields may be added, existing ones keep
// their meaning.
package event

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
)

// Kind says which kernel observation point produced an Event.
type Kind uint8

// Kinds of events. The numbers match the BPF side (enum event_kind).
const (
	KindNetfilter      Kind = 1  // a netfilter hook, just before or just after the NAT priority
	KindNAT            Kind = 2  // nf_nat rewrote the packet (kernel-function backends)
	KindNATBind        Kind = 3  // nf_nat bound a new conntrack entry to its translation
	KindFIB            Kind = 4  // a FIB table lookup
	KindRouteOut       Kind = 5  // an output route lookup for locally originated traffic
	KindConnect        Kind = 6  // a TCP socket chose its source address at connect()
	KindValidateSource Kind = 7  // fib_validate_source rejected a packet (reverse path)
	KindDrop           Kind = 8  // the kernel freed the packet as dropped
	KindICMP           Kind = 9  // the kernel sent an ICMP error about the packet
	KindRecv           Kind = 10 // a device received the packet
	KindXmit           Kind = 11 // the packet was queued to a device for transmission
	KindIPVSIn         Kind = 12 // the packet entered IPVS (a virtual server's address)
	KindIPVSConn       Kind = 13 // IPVS created a new connection to a real server
	KindIPVSNoDest     Kind = 14 // the IPVS virtual server had no destination (no real server)
	KindIPVSXmit       Kind = 15 // IPVS sent the packet to a real server (NAT/masquerade)
)

var kindNames = [...]string{
	KindNetfilter:      "netfilter",
	KindNAT:            "nat",
	KindNATBind:        "nat-bind",
	KindFIB:            "fib",
	KindRouteOut:       "route-out",
	KindConnect:        "connect",
	KindValidateSource: "validate-source",
	KindDrop:           "drop",
	KindICMP:           "icmp",
	KindRecv:           "recv",
	KindXmit:           "xmit",
	KindIPVSIn:         "ipvs-in",
	KindIPVSConn:       "ipvs-conn",
	KindIPVSNoDest:     "ipvs-no-dest",
	KindIPVSXmit:       "ipvs-xmit",
}

// String returns the kind's schema name ("netfilter", "nat", "drop", …).
func (k Kind) String() string {
	if int(k) < len(kindNames) && kindNames[k] != "" {
		return kindNames[k]
	}
	return fmt.Sprintf("kind(%d)", uint8(k))
}

// MarshalText implements encoding.TextMarshaler.
func (k Kind) MarshalText() ([]byte, error) { return []byte(k.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler. It accepts the names
// and the "kind(N)" form String gives values without a name.
func (k *Kind) UnmarshalText(b []byte) error {
	for i, n := range kindNames {
		if n != "" && n == string(b) {
			*k = Kind(i)
			return nil
		}
	}
	if v, ok := numbered(string(b), "kind"); ok {
		*k = Kind(v)
		return nil
	}
	return fmt.Errorf("unknown event kind %q", b)
}

// numbered parses the "prefix(N)" form of an enum value without a name.
func numbered(s, prefix string) (uint8, bool) {
	rest, ok := strings.CutPrefix(s, prefix+"(")
	if !ok {
		return 0, false
	}
	rest, ok = strings.CutSuffix(rest, ")")
	if !ok {
		return 0, false
	}
	v, err := strconv.ParseUint(rest, 10, 8)
	return uint8(v), err == nil
}

// Source says which attach mechanism produced an Event.
type Source uint8

// Attach mechanisms. The numbers match the BPF side (enum event_source).
const (
	SourceNetfilter  Source = 1 // BPF netfilter link
	SourceTracepoint Source = 2 // BTF tracepoint
	SourceKprobe     Source = 3 // kprobe / kretprobe
	SourceFentry     Source = 4 // fentry / fexit
	SourceTC         Source = 5 // tcx program on one interface
)

var sourceNames = [...]string{
	SourceNetfilter:  "netfilter",
	SourceTracepoint: "tracepoint",
	SourceKprobe:     "kprobe",
	SourceFentry:     "fentry",
	SourceTC:         "tc",
}

// String returns the source's schema name.
func (s Source) String() string {
	if int(s) < len(sourceNames) && sourceNames[s] != "" {
		return sourceNames[s]
	}
	return fmt.Sprintf("source(%d)", uint8(s))
}

// MarshalText implements encoding.TextMarshaler.
func (s Source) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Source) UnmarshalText(b []byte) error {
	for i, n := range sourceNames {
		if n != "" && n == string(b) {
			*s = Source(i)
			return nil
		}
	}
	if v, ok := numbered(string(b), "source"); ok {
		*s = Source(v)
		return nil
	}
	return fmt.Errorf("unknown event source %q", b)
}

// Hook is a netfilter hook of the IPv4 family.
type Hook uint8

// Netfilter hooks (enum nf_inet_hooks).
const (
	HookPreRouting  Hook = 0
	HookLocalIn     Hook = 1
	HookForward     Hook = 2
	HookLocalOut    Hook = 3
	HookPostRouting Hook = 4
)

var hookNames = [...]string{"PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"}

// String returns the hook's iptables chain name.
func (h Hook) String() string {
	if int(h) < len(hookNames) {
		return hookNames[h]
	}
	return fmt.Sprintf("hook(%d)", uint8(h))
}

// hookWheres are the hooks' positions before and after NAT, built once.
var hookWheres = [...][2]string{
	{"PREROUTING before NAT", "PREROUTING after NAT"},
	{"INPUT before NAT", "INPUT after NAT"},
	{"FORWARD before NAT", "FORWARD after NAT"},
	{"OUTPUT before NAT", "OUTPUT after NAT"},
	{"POSTROUTING before NAT", "POSTROUTING after NAT"},
}

// Where names a position at the hook: "PREROUTING after NAT".
func (h Hook) Where(afterNAT bool) string {
	i := 0
	if afterNAT {
		i = 1
	}
	if int(h) < len(hookWheres) {
		return hookWheres[h][i]
	}
	return h.String() + [2]string{" before NAT", " after NAT"}[i]
}

// MarshalText implements encoding.TextMarshaler.
func (h Hook) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (h *Hook) UnmarshalText(b []byte) error {
	for i, n := range hookNames {
		if n == string(b) {
			*h = Hook(i)
			return nil
		}
	}
	if v, ok := numbered(string(b), "hook"); ok {
		*h = Hook(v)
		return nil
	}
	return fmt.Errorf("unknown netfilter hook %q", b)
}

// Protocol numbers used in tuples.
const (
	ProtoICMP = 1
	ProtoTCP  = 6
	ProtoUDP  = 17
	ProtoSCTP = 132
)

// ProtoName returns "TCP", "UDP", "SCTP", "ICMP" or the number.
func ProtoName(p uint8) string {
	switch p {
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	case ProtoICMP:
		return "ICMP"
	case 0:
		return ""
	}
	return fmt.Sprintf("proto-%d", p)
}

// Tuple is an IPv4 five-tuple. For ICMP, the ports hold type and code.
type Tuple struct {
	Src   netip.AddrPort `json:"src"`
	Dst   netip.AddrPort `json:"dst"`
	Proto uint8          `json:"proto"`
}

// IsZero reports whether the tuple is unset.
func (t Tuple) IsZero() bool { return !t.Src.Addr().IsValid() && !t.Dst.Addr().IsValid() }

// Reverse returns the tuple of the other direction.
func (t Tuple) Reverse() Tuple { return Tuple{Src: t.Dst, Dst: t.Src, Proto: t.Proto} }

// String formats the tuple as "TCP 10.0.0.1:4000 -> 10.96.0.10:80".
func (t Tuple) String() string {
	var b strings.Builder
	if p := ProtoName(t.Proto); p != "" {
		b.WriteString(p)
		b.WriteByte(' ')
	}
	b.WriteString(addrPort(t.Src, t.Proto))
	b.WriteString(" -> ")
	b.WriteString(addrPort(t.Dst, t.Proto))
	return b.String()
}

func addrPort(ap netip.AddrPort, proto uint8) string {
	if !ap.Addr().IsValid() {
		return "?"
	}
	if proto == ProtoICMP || (ap.Port() == 0 && proto == 0) {
		return ap.Addr().String()
	}
	return ap.String()
}

// Conntrack status bits (enum ip_conntrack_status) that svctrace reports.
const (
	CTStatusExpected  = 1 << 0
	CTStatusSeenReply = 1 << 1
	CTStatusAssured   = 1 << 2
	CTStatusConfirmed = 1 << 3
	CTStatusSrcNAT    = 1 << 4
	CTStatusDstNAT    = 1 << 5
)

// Conntrack is the conntrack entry a packet belongs to.
type Conntrack struct {
	ID       uint64 `json:"id"` // kernel address of the nf_conn: the flow's identity
	Original Tuple  `json:"original"`
	Reply    Tuple  `json:"reply"`
	Status   uint32 `json:"status"`
}

// DNATed reports whether the entry's reply tuple shows a destination rewrite.
func (c *Conntrack) DNATed() bool {
	return c != nil && c.Reply.Src != c.Original.Dst
}

// SNATed reports whether the entry's reply tuple shows a source rewrite.
func (c *Conntrack) SNATed() bool {
	return c != nil && c.Reply.Dst != c.Original.Src
}

// NATType is the kind of address translation.
type NATType uint8

// NAT types (enum nf_nat_manip_type).
const (
	SNAT NATType = 0
	DNAT NATType = 1
)

// String returns "SNAT" or "DNAT".
func (n NATType) String() string {
	if n == DNAT {
		return "DNAT"
	}
	return "SNAT"
}

// MarshalText implements encoding.TextMarshaler.
func (n NATType) MarshalText() ([]byte, error) { return []byte(n.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler.
func (n *NATType) UnmarshalText(b []byte) error {
	switch string(b) {
	case "DNAT":
		*n = DNAT
	case "SNAT":
		*n = SNAT
	default:
		return fmt.Errorf("unknown nat type %q", b)
	}
	return nil
}

// IPVSConn is an IPVS connection: client, virtual server, real server.
type IPVSConn struct {
	Client  netip.AddrPort `json:"client"`
	Virtual netip.AddrPort `json:"virtual"`
	Real    netip.AddrPort `json:"real"`
	Proto   uint8          `json:"proto"`
	// Weight and Available describe the real server, when the module's BTF
	// let svctrace read them.
	Weight    *int32 `json:"weight,omitempty"`
	Available *bool  `json:"available,omitempty"`
}

// Event is one kernel observation of a traced packet or flow, decoded.
// Which fields are set depends on Kind; unset fields are omitted in JSON.
type Event struct {
	Type   string `json:"type"` // always "event"
	Time   uint64 `json:"ts"`   // CLOCK_MONOTONIC nanoseconds (the kernel's ktime)
	Kind   Kind   `json:"kind"`
	Source Source `json:"source"`
	// SKB is the packet's kernel address: the packet's identity while it lives.
	SKB   uint64 `json:"skb,omitempty"`
	Netns uint32 `json:"netns,omitempty"` // network namespace inode
	// Packet is the packet's tuple at this point (for flow-only kinds, the flow's).
	Packet   Tuple  `json:"packet"`
	TCPFlags uint8  `json:"tcp_flags,omitempty"`
	Length   uint16 `json:"len,omitempty"`
	IPID     uint16 `json:"ip_id,omitempty"` // IPv4 identification: tells packets of one skb address apart
	Mark     uint32 `json:"mark,omitempty"`
	// Devices (ifindexes within Netns) and their names when known.
	InIfindex    uint32 `json:"in_ifindex,omitempty"`
	OutIfindex   uint32 `json:"out_ifindex,omitempty"`
	RouteIfindex uint32 `json:"route_ifindex,omitempty"`
	InDev        string `json:"in_dev,omitempty"`
	OutDev       string `json:"out_dev,omitempty"`
	RouteDev     string `json:"route_dev,omitempty"`
	NetnsName    string `json:"netns_name,omitempty"`
	// Netfilter position (KindNetfilter).
	Hook     Hook `json:"hook"`
	AfterNAT bool `json:"after_nat,omitempty"`
	// CTReply: the packet travels in its conntrack entry's reply direction.
	CTReply bool `json:"ct_reply_dir,omitempty"`
	// PreNAT is, after NAT, the packet's tuple before this hook's rewrite,
	// from its conntrack entry (set only when the hook rewrote it). The
	// links before NAT are attached only at OUTPUT and INPUT: at the other
	// hooks this is how the rewrite is known.
	PreNAT Tuple `json:"pre_nat,omitzero"`
	// NAT (KindNAT, KindNATBind).
	NAT       NATType `json:"nat,omitempty"`
	NATReply  bool    `json:"nat_reply_dir,omitempty"` // the rewrite applies to the reply direction
	NATResult Tuple   `json:"nat_result,omitzero"`     // the packet's tuple after the rewrite
	// Route lookups (KindFIB, KindRouteOut).
	Table      uint32     `json:"table,omitempty"`
	Gateway    netip.Addr `json:"gateway,omitzero"`
	PrefSrc    netip.Addr `json:"prefsrc,omitzero"`
	FlowOif    uint32     `json:"flow_oif,omitempty"`
	FlowIif    uint32     `json:"flow_iif,omitempty"`
	RouteError int32      `json:"route_error,omitempty"` // negative errno-like code
	// RouteRepeat: the packet's input route lookup just before this event
	// was not sent as an event of its own, because its result (table,
	// device, gateway) repeated the last lookup sent for the same source,
	// destination and input device, less than a second before.
	RouteRepeat bool `json:"route_repeat,omitempty"`
	// Drops and ICMP errors.
	DropReason string `json:"drop_reason,omitempty"`
	DropCode   uint32 `json:"drop_code,omitempty"`
	Location   uint64 `json:"location,omitempty"`
	Symbol     string `json:"symbol,omitempty"` // kernel symbol of Location
	ICMPType   uint8  `json:"icmp_type,omitempty"`
	ICMPCode   uint8  `json:"icmp_code,omitempty"`
	// Conntrack entry of the packet, when the kernel had one.
	Conntrack *Conntrack `json:"conntrack,omitempty"`
	// IPVS connection (KindIPVSConn, KindIPVSXmit), when known.
	IPVS *IPVSConn `json:"ipvs,omitempty"`
	// Task context, for events raised in process context.
	PID  uint32 `json:"pid,omitempty"`
	Comm string `json:"comm,omitempty"`
	// Header holds the first bytes of the IPv4 packet (no payload beyond it).
	Header []byte `json:"header,omitempty"`
}
