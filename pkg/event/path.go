package event

import "net/netip"

// Outcome says where a traced packet ended.
type Outcome string

// Outcomes of a packet path.
const (
	// OutcomeForwarded: the packet was handed to a device towards its next hop.
	OutcomeForwarded Outcome = "forwarded"
	// OutcomeDelivered: the packet reached the local stack of a namespace
	// (the INPUT hook, or a device inside the destination's namespace).
	OutcomeDelivered Outcome = "delivered"
	// OutcomeDropped: the kernel dropped the packet (see Result.Reason).
	OutcomeDropped Outcome = "dropped"
	// OutcomeRejected: the kernel answered the packet with an ICMP error.
	OutcomeRejected Outcome = "rejected"
	// OutcomeNoRoute: a route lookup for the flow failed before any packet left.
	OutcomeNoRoute Outcome = "no-route"
	// OutcomeUnknown: the packet left the traced hooks without a known end.
	OutcomeUnknown Outcome = "unknown"
)

// Step is one point of a packet's path, in time order.
type Step struct {
	Time   uint64 `json:"ts"`
	Kind   Kind   `json:"kind"`
	Source Source `json:"source"`
	Netns  uint32 `json:"netns,omitempty"`
	// Where is a short human description of the place ("PREROUTING before NAT",
	// "fib table 254", "dev cali1234 (xmit)").
	Where  string `json:"where"`
	Packet Tuple  `json:"packet"`
	// Ifindex is the device the step happened on (output device for
	// route lookups and transmissions); Dev is its name when known.
	Ifindex uint32 `json:"ifindex,omitempty"`
	Dev     string `json:"dev,omitempty"`
	// Detail carries the step's own facts (route result, NAT rewrite, reason).
	Detail string `json:"detail,omitempty"`
}

// NATStep is one address translation applied to the packet.
type NATStep struct {
	Type NATType `json:"type"`
	// Reverse is true for the rewrite of a reply packet that undoes the
	// request's translation (a reply's SNAT-type rewrite undoes a DNAT).
	Reverse bool   `json:"reverse,omitempty"`
	By      string `json:"by"` // "nf_nat" or "ipvs"
	Hook    string `json:"hook,omitempty"`
	Before  Tuple  `json:"before"`
	After   Tuple  `json:"after"`
	Source  Source `json:"source"`
}

// IPVSStep is what IPVS did with the packet.
type IPVSStep struct {
	Virtual netip.AddrPort `json:"virtual"`
	Real    netip.AddrPort `json:"real,omitzero"`
	// Connection is "new" (IPVS scheduled a real server for it), "reused"
	// (an existing IPVS connection), or "" when not seen.
	Connection string `json:"connection,omitempty"`
	// NoDestination: the virtual server had no real server to send it to.
	NoDestination bool   `json:"no_destination,omitempty"`
	Weight        *int32 `json:"weight,omitempty"`
	Available     *bool  `json:"available,omitempty"`
	Source        Source `json:"source"`
}

// RouteStep is one route lookup tied to the packet or its flow.
type RouteStep struct {
	Time     uint64     `json:"ts"`
	Kind     string     `json:"kind"` // "fib" (table lookup), "output" (local source selection), "connect"
	Table    uint32     `json:"table,omitempty"`
	Dst      netip.Addr `json:"dst"`
	Src      netip.Addr `json:"src,omitzero"` // source of the flow at this lookup (chosen source for output/connect)
	PrefSrc  netip.Addr `json:"prefsrc,omitzero"`
	Gateway  netip.Addr `json:"gateway,omitzero"`
	OutDev   string     `json:"out_dev,omitempty"`
	OutIndex uint32     `json:"out_ifindex,omitempty"`
	Error    int32      `json:"error,omitempty"`
	Netns    uint32     `json:"netns,omitempty"`
	// NetnsName names the namespace the lookup happened in, when known.
	NetnsName string `json:"netns_name,omitempty"`
	Comm      string `json:"comm,omitempty"`
	PID       uint32 `json:"pid,omitempty"`
	// Repeat: the kernel looked this route up again for this packet, with
	// the same result as the lookup at Time (a flow's forwarded packets
	// repeat their lookup; the kernel side sends it at least once a second
	// per source, destination and input device, and notes the repeats on
	// the packets).
	Repeat bool `json:"repeat,omitempty"`
}

// Result is where the path ended.
type Result struct {
	Outcome  Outcome `json:"outcome"`
	Ifindex  uint32  `json:"ifindex,omitempty"`
	Dev      string  `json:"dev,omitempty"`
	Netns    uint32  `json:"netns,omitempty"`
	Reason   string  `json:"reason,omitempty"`   // drop reason name, or ICMP error
	Location string  `json:"location,omitempty"` // kernel symbol where it was dropped
	// DropReason is the kernel's drop reason when the outcome is "rejected"
	// (the kernel answered with an ICMP error and dropped the packet).
	DropReason string `json:"drop_reason,omitempty"`
}

// Endpoint names one side of a flow.
type Endpoint struct {
	Addr netip.AddrPort `json:"addr"`
	Name string         `json:"name,omitempty"` // "service default/hostnames:80/TCP", "pod default/x", "node n1"
}

// Path is svctrace's account of one packet: where it entered, how it was
// translated and routed, and where it ended.
type Path struct {
	Type string `json:"type"` // always "path"
	// Start and End are the times of the first and last step (kernel ktime, ns).
	Start uint64 `json:"start"`
	End   uint64 `json:"end"`
	// SKB identifies the packet in the kernel while it lived.
	SKB uint64 `json:"skb,omitempty"`
	// Service is the traced Service this packet belongs to ("default/hostnames:80/TCP").
	Service string `json:"service,omitempty"`
	// Reply is true for packets of the reply direction (backend -> client).
	Reply bool `json:"reply"`
	// Original is the packet's tuple when first seen; Final after all NAT.
	Original Tuple `json:"original"`
	Final    Tuple `json:"final"`
	TCPFlags uint8 `json:"tcp_flags,omitempty"`
	// Client and Backend name the two ends of the flow (request direction).
	Client  Endpoint `json:"client"`
	Backend Endpoint `json:"backend,omitzero"`
	// Entered says where the packet was first seen: a device, or "local"
	// for traffic originated by the node itself.
	Entered string `json:"entered,omitempty"`
	// NetnsName names the namespace the path ended in, when known.
	NetnsName string      `json:"netns_name,omitempty"`
	NAT       []NATStep   `json:"nat,omitempty"`
	IPVS      *IPVSStep   `json:"ipvs,omitempty"`
	Routes    []RouteStep `json:"routes,omitempty"`
	Steps     []Step      `json:"steps"`
	Result    Result      `json:"result"`
	// Conntrack is the flow's conntrack entry as last seen.
	Conntrack *Conntrack `json:"conntrack,omitempty"`
}

// Stats is a periodic and final report of the tracer's own health.
type Stats struct {
	Type string `json:"type"` // always "stats"
	// Elapsed is the time since tracing started, in seconds.
	Elapsed float64 `json:"elapsed"`
	// Events is the number of events read from the kernel.
	Events uint64 `json:"events"`
	// Emitted is the number of events the kernel side submitted.
	Emitted uint64 `json:"emitted"`
	// Lost is the number of events the kernel could not submit (ring buffer
	// full), summed over CPUs; LostPerCPU has the per-CPU counts.
	Lost       uint64   `json:"lost"`
	LostPerCPU []uint64 `json:"lost_per_cpu,omitempty"`
	// Sampled is the number of events of established flows the kernel side
	// left out on purpose (--packets-per-flow); failures are never left out.
	Sampled uint64 `json:"sampled,omitempty"`
	// Paths is the number of packet paths emitted.
	Paths uint64 `json:"paths"`
	// DecodeErrors counts records that could not be decoded.
	DecodeErrors uint64 `json:"decode_errors,omitempty"`
	// Evicted counts correlation state dropped because a cap was reached.
	Evicted uint64 `json:"evicted,omitempty"`
	// RouteRepeats is the number of route lookups the kernel side did not
	// send because they repeated one it had sent (their packets' paths
	// show that one's result); RouteRepeatsUnknown counts the packets whose
	// repeated lookup was not among those received (lost, or expired), so
	// their paths lack it.
	RouteRepeats        uint64 `json:"route_repeats,omitempty"`
	RouteRepeatsUnknown uint64 `json:"route_repeats_unknown,omitempty"`
	// Verdicts counts verdicts by identifier.
	Verdicts map[string]uint64 `json:"verdicts,omitempty"`
	// Final is true on the last stats line, written at exit.
	Final bool `json:"final,omitempty"`
}
