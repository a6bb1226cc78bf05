//go:build ignore

// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
//
// svctrace's kernel side: one compilation unit, several attach flavours.
//
// Every program reduces what it sees to one `struct event` and submits it to
// the `events` ring buffer, but only for packets of the traced Service: the
// filter maps hold its ClusterIPs, ports, NodePorts, external/LB IPs and
// endpoint addresses; a packet whose conntrack entry was created for one of
// those (original tuple) is followed across NAT even when its own addresses
// have been rewritten to something the filter does not know (a stale backend).
//
// Userspace picks one implementation per logical hook (fentry, kprobe or the
// stable tracepoint/netfilter-link flavour) and loads only the programs it
// picked; the others are removed from the CollectionSpec before load.

#include "vmlinux.h"
#include "bpf_helpers.h"
#include "bpf_tracing.h"
#include "bpf_core_read.h"
#include "bpf_endian.h"

char __license[] SEC("license") = "Dual BSD/GPL";

#define AF_INET 2
#define ETH_P_IP 0x0800
#define NF_ACCEPT 1
#define LOOPBACK_IFINDEX_ 1
#define RT_TABLE_LOCAL_ 255
#define TCX_NEXT_ (-1) // enum tcx_action_base: let the next program (and the stack) have the packet
#define IP_CT_IS_REPLY_ 3 // enum ip_conntrack_info: this and above are reply-direction packets
#define TCP_SYN_SENT 2
#define IPPROTO_ICMP_ 1
#define IPPROTO_TCP_ 6
#define IPPROTO_UDP_ 17
#define IPPROTO_SCTP_ 132
#define HDR_SNAP 64

// Event kinds. Keep in sync with pkg/event (Kind).
enum event_kind {
	EV_NF = 1,          // netfilter-link program before/after the NAT priority
	EV_NAT = 2,         // nf_nat_manip_pkt: one packet rewritten
	EV_NAT_BIND = 3,    // nf_nat_setup_info: NAT binding of a new conntrack entry
	EV_FIB = 4,         // fib_table_lookup result
	EV_ROUTE_OUT = 5,   // ip_route_output_key_hash: source address chosen for local traffic
	EV_CONNECT = 6,     // inet_sock_set_state CLOSE->SYN_SENT: source chosen at connect()
	EV_FIB_VALIDATE = 7,// fib_validate_source failed (reverse-path / martian)
	EV_DROP = 8,        // kfree_skb with reason
	EV_ICMP = 9,        // ICMP error sent about a traced packet
	EV_RECV = 10,       // netif_receive_skb: packet entered a device
	EV_XMIT = 11,       // net_dev_queue: packet handed to a device
	EV_IPVS_IN = 12,    // ip_vs_in_hook / ip_vs_in: packet entered IPVS
	EV_IPVS_CONN = 13,  // ip_vs_conn_new: new IPVS connection to a real server
	EV_IPVS_NODEST = 14,// ip_vs_scheduler_err: virtual server had no destination
	EV_IPVS_XMIT = 15,  // ip_vs_nat_xmit: packet sent to a real server (NAT/masquerade)
};

// Event flags.
enum event_flags {
	// The packet's input route lookup just before this event was not sent:
	// its result repeated the last one sent for the same lookup (see
	// route_repeat).
	EVF_ROUTE_REPEAT = 1,
};

// Which implementation produced an event.
enum event_source {
	SRC_NETFILTER = 1,
	SRC_TRACEPOINT = 2,
	SRC_KPROBE = 3,
	SRC_FENTRY = 4,
	SRC_TC = 5, // tcx program on one interface
};

// Index into the per-CPU counters map.
enum counter_idx {
	CNT_EMITTED = 0,
	CNT_LOST = 1,
	CNT_SAMPLED = 2, // events of established flows left out (packets_per_flow)
	CNT_ROUTE_REPEAT = 3, // input route lookups not sent: same result as the last one sent (route_repeat)
	CNT_MAX = 4,
};

struct tuple {
	__u32 saddr; // network byte order
	__u32 daddr; // network byte order
	__u16 sport; // host byte order
	__u16 dport; // host byte order
	__u8 proto;
	__u8 tcp_flags;
	__u16 ip_len; // host byte order, total length of the IPv4 packet
};

struct event {
	__u64 ts;       // bpf_ktime_get_ns
	__u64 skb;      // sk_buff address: the packet's identity while it lives
	__u64 ct;       // nf_conn address: the flow's identity
	__u64 location; // drop location / socket address
	__u32 kind;     // enum event_kind
	__u32 netns;    // network namespace inode
	__u32 ifindex;  // input device (or the device of RECV/XMIT/ROUTE)
	__u32 out_ifindex; // output device (netfilter state->out, fib result device)
	__u32 route_ifindex; // device of the route attached to the skb
	__u32 hook;     // netfilter hook number; NAT manip type; new TCP state
	__u32 reason;   // drop reason; fib/route error (negated); icmp type<<8|code
	__u32 mark;
	__u32 ct_status;
	__u32 pid;
	__u32 table;    // fib table id
	__u32 gw;       // gateway (network byte order)
	__u32 prefsrc;  // preferred source of the route (network byte order)
	__u32 flow_oif; // flowi4 oif / iif
	__u32 flow_iif;
	__u8 source;    // enum event_source
	__u8 stage;     // netfilter: bit 0 after NAT, bit 1 reply direction of the conntrack entry; NAT manip: conntrack direction
	__u8 ct_valid;  // ct tuples below are valid
	__u8 hdr_len;   // bytes valid in hdr (0: not asked for, see config.snap_hdr)
	__u16 ipid;     // IPv4 identification (host byte order): tells packets of a flow apart
	__u16 flags;    // EVF_*
	struct tuple pkt;
	struct tuple ct_orig;
	struct tuple ct_reply;
	__u32 rs_weight; // IPVS real server weight
	__u32 rs_flags;  // IPVS real server flags (bit 0: available); bit 31: weight/flags valid
	char comm[16];
	__u8 hdr[HDR_SNAP]; // IPv4 header + start of L4, for pcapng export
};

struct filter_key {
	__u32 addr; // network byte order; 0 = any address (NodePorts)
	__u16 port; // host byte order; 0 = any port
	__u8 proto; // 0 = any protocol
	__u8 pad;
};

// Dynamic configuration, rewritten by userspace while tracing.
struct config {
	__u32 trace_all;        // ignore the filter (debugging)
	__u32 any_addr_keys;    // filter has entries with addr 0 (NodePorts)
	__u32 packets_per_flow; // trace this many packets per flow direction, then only failures (0: every packet)
	__u32 snap_hdr;         // copy packet headers into events (pcapng export, recordings)
	// Input route lookups in this network namespace (the one the netfilter
	// links are attached in: the packet's next event there carries the
	// note) whose result repeats the last one sent for the same source,
	// destination and input device less than route_repeat_ms ago are not
	// sent (see route_repeat). 0: every lookup is sent.
	__u32 route_repeat_netns;
	__u32 route_repeat_ms;
	__u32 filter_gen; // bumped by every filter update (filter_hits)
};

// Static configuration, fixed at load time (the verifier prunes dead branches).
volatile const __u32 use_perf = 0;     // perf event array instead of ring buffer
volatile const __u32 wakeup_bytes = 0; // batch reader wakeups until this much is pending
volatile const __u32 consumed_reason = 0xffffffff; // SKB_CONSUMED in this kernel's enum (from BTF)
// The kernel has bpf_rdonly_cast (6.2+; set from its BTF): programs whose
// skb is a BTF pointer read the packet's headers and the conntrack entry
// with plain loads through a cast instead of bpf_probe_read_kernel calls
// (a helper call each: half the cost of a run on traffic not traced).
volatile const __u32 use_cast = 0;
// Benchmarks only: every packet program returns before looking at the
// packet, so a run measures what the kernel spends calling the hooks.
volatile const __u32 noop_progs = 0;

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym __weak;
extern void *bpf_cast_to_kern_ctx(void *obj) __ksym __weak;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERF_EVENT_ARRAY);
	__uint(key_size, sizeof(__u32));
	__uint(value_size, sizeof(__u32));
} events_perf SEC(".maps");

// The perf buffer's events are built in per-CPU scratch space, one slot
// per nesting level: a program can interrupt another on the same CPU (a
// softirq's netfilter hook over a process-context tracepoint, a hard
// interrupt over both) between its ev_new and ev_submit, and programs nest
// strictly, so a per-CPU depth picks the slot.
#define SCRATCH_LEVELS 4

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SCRATCH_LEVELS);
	__type(key, __u32);
	__type(value, struct event);
} scratch SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} scratch_depth SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CNT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 8192);
	__type(key, __u32);
	__type(value, __u8);
} filter_addrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, struct filter_key);
	__type(value, __u32);
} filter SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config_map SEC(".maps");

// A bit per hash of every filter key (and of every filter address): a
// packet none of whose keys has its bit set is not the Service's, decided
// with a few loads instead of hash-map lookups, which are what most of a
// program's time went to on traffic of other Services. A set bit still
// goes to the exact maps. Userspace computes the same hash (filter_hash in
// internal/attach).
#define FILTER_BITS_WORDS 1024 // 65536 bits
struct filter_bits {
	__u64 w[FILTER_BITS_WORDS];
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct filter_bits);
} filter_bits_map SEC(".maps");

#define FILTER_ADDR_MARK_PORT 0xffff
#define FILTER_ADDR_MARK_PROTO 0xff

// The last traced packet a netfilter program saw on this CPU. A route
// lookup that fails right after it, on the same CPU, in the same softirq,
// is that packet's (IPVS looks up the real server before rewriting the
// packet, and drops it when the lookup fails).
struct last_match {
	__u64 skb;
	__u64 ts;
	__u64 repeat_skb; // this packet's route lookup was a repeat (route_repeat): its next event says so
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct last_match);
} last_match_map SEC(".maps");

// A failed route lookup this soon after a traced packet on the same CPU is
// tagged with that packet (the correlator still requires it within the
// packet's lifetime). Microseconds on hardware; under software emulation
// (the VM matrix) IPVS's lookup of a real server comes hundreds of
// microseconds after the packet's last netfilter event.
#define LAST_MATCH_WINDOW_NS 5000000
// An input route lookup without ports follows its packet's netfilter and
// device events in the same softirq: microseconds on hardware, up to a few
// milliseconds under software emulation (the VM matrix). A lookup of other
// traffic this soon after a traced packet costs one unclaimed route event.
#define FLOW_MATCH_WINDOW_NS 10000000

// note_match records a traced packet seen on this CPU, and passes on to its
// event the note of a route lookup not sent for it (route_repeat).
static __always_inline void note_match(const void *skb, struct event *e)
{
	__u32 zero = 0;
	struct last_match *lm = bpf_map_lookup_elem(&last_match_map, &zero);
	if (lm) {
		lm->skb = (__u64)skb;
		lm->ts = e->ts;
		if (lm->repeat_skb == (__u64)skb) {
			e->flags |= EVF_ROUTE_REPEAT;
			lm->repeat_skb = 0;
		}
	}
}

// recent_match returns the traced packet seen on this CPU within window
// ns, or 0.
static __always_inline __u64 recent_match(__u64 window)
{
	__u32 zero = 0;
	struct last_match *lm = bpf_map_lookup_elem(&last_match_map, &zero);
	if (lm && lm->skb && bpf_ktime_get_ns() - lm->ts <= window)
		return lm->skb;
	return 0;
}

// The last successful input route lookup traced on this CPU, and when the
// packet it routed was last seen (last_match.ts). With rp_filter on, the
// kernel validates a forwarded packet's source with a second lookup right
// after the first: from the first's output device back to the source
// (addresses swapped). It succeeds for every healthy packet and says
// nothing the first did not; when it fails, the packet is dropped with
// its reason (a drop event). Every packet of a traced flow made one such
// event more, so a successful one is not traced. It is told from a reply's
// own lookup (same addresses, same device) by the packet: a reply is seen
// at a netfilter hook or device before its lookup, which moves
// last_match.ts on.
struct last_fib {
	__u32 saddr;
	__u32 daddr;
	__u32 oif;
	__u32 pad;
	__u64 match_ts;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct last_fib);
} last_fib_map SEC(".maps");

// When this CPU last woke the ring buffer's reader (see ev_submit).
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} last_wakeup SEC(".maps");

#define WAKE_INTERVAL_NS 1000000

// Per-flow sampling state, keyed by the packet's tuple as seen at a hook
// (before and after NAT are different keys that count the same packets).
struct flow_state {
	__u32 packets;
	__u16 last_ipid;
	__u8 keep;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct tuple);
	__type(value, struct flow_state);
} flow_sample SEC(".maps");

// Arguments saved at kprobe entry for the matching kretprobe.
struct kargs_key {
	__u64 pid_tgid;
	__u64 fn;
};

struct kargs {
	__u64 a[4];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct kargs_key);
	__type(value, struct kargs);
} kargs_map SEC(".maps");

enum kfn {
	KFN_IPVS_SKB = 5, // the skb IPVS is working on, saved at ip_vs_in
	KFN_NAT_SETUP = 1,
	KFN_FIB_LOOKUP = 2,
	KFN_ROUTE_OUT = 3,
	KFN_FIB_VALIDATE = 4,
};

// Force BTF emission for the types shared with Go (bpf2go -type).
const struct event *unused_event __attribute__((unused));
const struct filter_key *unused_filter_key __attribute__((unused));
const struct config *unused_config __attribute__((unused));
const enum event_kind *unused_event_kind __attribute__((unused));
const enum event_source *unused_event_source __attribute__((unused));
const enum counter_idx *unused_counter_idx __attribute__((unused));

// Raw IPv4 header, read as bytes (no CO-RE: it is wire format).
struct ip4 {
	__u8 vihl;
	__u8 tos;
	__u16 tot_len;
	__u16 id;
	__u16 frag;
	__u8 ttl;
	__u8 proto;
	__u16 check;
	__u32 saddr;
	__u32 daddr;
};

// RD reads ptr->field. Where ptr is a pointer the verifier knows the BTF
// type of (arguments of tp_btf programs, a netfilter program's context, and
// what is loaded through them) it is a plain load, checked by the verifier
// and a fraction of the cost of a helper call; elsewhere (kprobes, pointers
// computed from integers) it is bpf_probe_read_kernel. direct is a constant
// at every call site, so only one of the two is compiled.
#define RD(direct, ptr, field) ((direct) ? (ptr)->field : BPF_CORE_READ(ptr, field))

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);
	if (v)
		*v += 1;
}

static __always_inline __u32 filter_hash(__u32 addr, __u16 port, __u8 proto)
{
	__u64 x = ((__u64)addr << 32) | ((__u64)port << 8) | proto;
	return (__u32)((x * 0x9E3779B97F4A7C15ULL) >> 48);
}

// maybe reports whether the key's bit is set (no bits map: always maybe).
static __always_inline int maybe(const struct filter_bits *b, __u32 addr, __u16 port, __u8 proto)
{
	if (!b)
		return 1;
	__u32 h = filter_hash(addr, port, proto);
	return (b->w[(h >> 6) & (FILTER_BITS_WORDS - 1)] >> (h & 63)) & 1;
}

static __always_inline const struct filter_bits *get_bits(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&filter_bits_map, &zero);
}

// The last filter keys found in the exact maps on this CPU, by their hash:
// a traced stream asks for the same few keys with every packet, and a
// hash-map lookup was a sixth of a traced packet's program run. A slot is
// valid for the filter generation it was found in (config.filter_gen).
#define FILTER_HIT_SLOTS 4

struct filter_hit {
	__u32 gen;
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

struct filter_hits {
	struct filter_hit s[FILTER_HIT_SLOTS];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct filter_hits);
} filter_hits_map SEC(".maps");

// exact reports whether a key whose bit is set is in the exact maps (the
// address-only map for FILTER_ADDR_MARK_* keys). A global function (its
// arguments are scalars): verified once, not at each of the dozens of
// places the filter is inlined into, which made loading five times slower.
__attribute__((noinline)) int exact(__u32 addr, __u32 port, __u32 proto, __u32 gen)
{
	__u32 zero = 0;
	struct filter_hits *hs = bpf_map_lookup_elem(&filter_hits_map, &zero);
	struct filter_hit *h = 0;
	if (hs) {
		h = &hs->s[filter_hash(addr, port, proto) & (FILTER_HIT_SLOTS - 1)];
		if (gen && h->gen == gen && h->addr == addr && h->port == port && h->proto == proto)
			return 1;
	}
	void *found;
	if (port == FILTER_ADDR_MARK_PORT && proto == FILTER_ADDR_MARK_PROTO) {
		found = bpf_map_lookup_elem(&filter_addrs, &addr);
	} else {
		struct filter_key k = {.addr = addr, .port = port, .proto = proto};
		found = bpf_map_lookup_elem(&filter, &k);
	}
	if (!found)
		return 0;
	if (h) {
		h->gen = gen;
		h->addr = addr;
		h->port = port;
		h->proto = proto;
	}
	return 1;
}

static __always_inline int filter_one(__u32 addr, __u16 port, __u8 proto, struct config *cfg,
				      const struct filter_bits *b)
{
	__u32 gen = cfg ? cfg->filter_gen : 0;
	if (!port && !proto) {
		// Flow lookups without L4 information (input route lookups carry
		// no ports): the address alone decides.
		return maybe(b, addr, FILTER_ADDR_MARK_PORT, FILTER_ADDR_MARK_PROTO) &&
		       exact(addr, FILTER_ADDR_MARK_PORT, FILTER_ADDR_MARK_PROTO, gen);
	}
	if (maybe(b, addr, port, proto) && exact(addr, port, proto, gen))
		return 1;
	if (maybe(b, addr, 0, 0) && exact(addr, 0, 0, gen))
		return 1;
	if (cfg && cfg->any_addr_keys && port && maybe(b, 0, port, proto) && exact(0, port, proto, gen))
		return 1;
	return 0;
}

static __always_inline struct config *get_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&config_map, &zero);
}

static __always_inline int match_tuple(const struct tuple *t, struct config *cfg)
{
	if (cfg && cfg->trace_all)
		return 1;
	const struct filter_bits *b = get_bits();
	if (filter_one(t->daddr, t->dport, t->proto, cfg, b))
		return 1;
	return filter_one(t->saddr, t->sport, t->proto, cfg, b);
}

static __always_inline struct nf_conn *skb_ct(const struct sk_buff *skb, const int direct)
{
	if (!bpf_core_field_exists(skb->_nfct))
		return 0;
	unsigned long nfct = RD(direct, skb, _nfct);
	return (struct nf_conn *)(nfct & ~7UL);
}

// The two tuples and the status word of a conntrack entry, as they lie in
// struct nf_conn (adjacent in every kernel svctrace supports; checked
// against the kernel's BTF below): one read instead of three.
struct ct_core {
	struct nf_conntrack_tuple_hash th[2];
	unsigned long status;
};

static __always_inline void ct_fill(struct event *e, struct nf_conn *ct, const struct nf_conntrack_tuple *o,
				    const struct nf_conntrack_tuple *r, __u32 status)
{
	e->ct = (__u64)ct;
	e->ct_status = status;
	e->ct_orig.saddr = o->src.u3.ip;
	e->ct_orig.daddr = o->dst.u3.ip;
	e->ct_orig.sport = bpf_ntohs(o->src.u.all);
	e->ct_orig.dport = bpf_ntohs(o->dst.u.all);
	e->ct_orig.proto = o->dst.protonum;
	e->ct_reply.saddr = r->src.u3.ip;
	e->ct_reply.daddr = r->dst.u3.ip;
	e->ct_reply.sport = bpf_ntohs(r->src.u.all);
	e->ct_reply.dport = bpf_ntohs(r->dst.u.all);
	e->ct_reply.proto = r->dst.protonum;
	e->ct_valid = 1;
}

// Reads the conntrack entry's tuples into e. Returns 0 when not readable.
static __always_inline int read_ct(struct nf_conn *ct, struct event *e)
{
	if (!ct || !bpf_core_type_exists(struct nf_conn))
		return 0;
	if (use_cast) {
		const struct nf_conn *c = bpf_rdonly_cast(ct, bpf_core_type_id_kernel(struct nf_conn));
		ct_fill(e, ct, &c->tuplehash[0].tuple, &c->tuplehash[1].tuple, (__u32)c->status);
		return 1;
	}
	if (bpf_core_type_size(struct nf_conntrack_tuple_hash) == sizeof(struct nf_conntrack_tuple_hash) &&
	    bpf_core_field_offset(struct nf_conn, status) ==
		    bpf_core_field_offset(struct nf_conn, tuplehash) + offsetof(struct ct_core, status)) {
		struct ct_core c;
		if (bpf_probe_read_kernel(&c, sizeof(c), (void *)ct + bpf_core_field_offset(struct nf_conn, tuplehash)))
			return 0;
		ct_fill(e, ct, &c.th[0].tuple, &c.th[1].tuple, (__u32)c.status);
		return 1;
	}
	struct nf_conntrack_tuple o, r;
	if (bpf_core_read(&o, sizeof(o), &ct->tuplehash[0].tuple) ||
	    bpf_core_read(&r, sizeof(r), &ct->tuplehash[1].tuple))
		return 0;
	ct_fill(e, ct, &o, &r, (__u32)BPF_CORE_READ(ct, status));
	return 1;
}

// Does the conntrack entry belong to the traced Service? The original tuple's
// destination is the Service address even after DNAT. One read: for an
// entry without NAT the original tuple is the packet's own (or its
// reverse), which the filter's bits turn down at once.
static __always_inline int match_ct(struct nf_conn *ct, struct config *cfg)
{
	if (!ct || !bpf_core_type_exists(struct nf_conn))
		return 0;
	struct nf_conntrack_tuple ot;
	const struct nf_conntrack_tuple *o = &ot;
	if (use_cast) {
		const struct nf_conn *c = bpf_rdonly_cast(ct, bpf_core_type_id_kernel(struct nf_conn));
		o = &c->tuplehash[0].tuple;
	} else if (bpf_core_read(&ot, sizeof(ot), &ct->tuplehash[0].tuple)) {
		return 0;
	}
	struct tuple t = {};
	t.saddr = o->src.u3.ip;
	t.daddr = o->dst.u3.ip;
	t.sport = bpf_ntohs(o->src.u.all);
	t.dport = bpf_ntohs(o->dst.u.all);
	t.proto = o->dst.protonum;
	return match_tuple(&t, cfg);
}

// The IPv4 header and the start of the transport header, read at once.
struct ip4_l4 {
	struct ip4 ip;
	__u16 sport;
	__u16 dport;
	__u8 l4[10]; // TCP: sequence, acknowledgement, data offset, flags (at 9)
};

// fill_l4 fills the tuple's transport part from the first word of the
// transport header as it lies in memory (ports, or ICMP type and code) and
// TCP's flags byte.
static __always_inline void fill_l4(struct tuple *t, __u8 proto, __u16 sport, __u16 dport, __u8 tcp_flags)
{
	if (proto == IPPROTO_TCP_ || proto == IPPROTO_UDP_ || proto == IPPROTO_SCTP_) {
		t->sport = bpf_ntohs(sport);
		t->dport = bpf_ntohs(dport);
		if (proto == IPPROTO_TCP_)
			t->tcp_flags = tcp_flags;
	} else if (proto == IPPROTO_ICMP_) {
		t->sport = sport & 0xff;        // type
		t->dport = (sport >> 8) & 0xff; // code
	}
}

// parse_cast is parse_skb_id's body with loads through bpf_rdonly_cast
// (use_cast) instead of bpf_probe_read_kernel: the header is typed as the
// kernel's struct iphdr, the transport header as union tcp_word_hdr (TCP,
// UDP and SCTP have their ports first; TCP's flags are in word 3).
static __always_inline int parse_cast(const unsigned char *nhp, struct tuple *t, __u16 *ipid)
{
	const struct iphdr *ip = bpf_rdonly_cast(nhp, bpf_core_type_id_kernel(struct iphdr));
	__u8 vihl = *(const __u8 *)ip;
	if ((vihl >> 4) != 4)
		return -1;
	t->saddr = ip->saddr;
	t->daddr = ip->daddr;
	__u8 proto = ip->protocol;
	t->proto = proto;
	t->ip_len = bpf_ntohs(ip->tot_len);
	*ipid = ip->id;
	if (bpf_ntohs(ip->frag_off) & 0x1fff)
		return 0; // not the first fragment: no L4 header
	__u32 ihl = (vihl & 0x0f) * 4;
	const union tcp_word_hdr *l4 =
		bpf_rdonly_cast(nhp + ihl, bpf_core_type_id_kernel(union tcp_word_hdr));
	__u32 w0 = l4->words[0];
	__u8 flags = proto == IPPROTO_TCP_ ? (__u8)(l4->words[3] >> 8) : 0; // byte 13
	fill_l4(t, proto, (__u16)w0, (__u16)(w0 >> 16), flags);
	return 0;
}

// Parses the IPv4 packet at skb->head + network_header. Returns 0 on success.
// One read covers the header and the ports (and TCP flags) unless the IPv4
// header has options.
// Where a packet's network header is, as parse_skb_id found it (snap_hdr
// reuses it instead of reading the skb again).
struct pkt_loc {
	unsigned char *head;
	__u16 nh;
};

static __always_inline int parse_skb_id(const struct sk_buff *skb, struct tuple *t, __u16 *ipid,
					struct pkt_loc *loc, const int direct)
{
	unsigned char *head = RD(direct, skb, head);
	__u16 nh = RD(direct, skb, network_header);
	struct ip4_l4 h;

	loc->head = head;
	loc->nh = nh;
	if (!head || nh == (__u16)~0U)
		return -1;
	if (direct && use_cast)
		return parse_cast(head + nh, t, ipid);
	if (bpf_probe_read_kernel(&h, sizeof(h), head + nh))
		return -1;
	if ((h.ip.vihl >> 4) != 4)
		return -1;
	t->saddr = h.ip.saddr;
	t->daddr = h.ip.daddr;
	t->proto = h.ip.proto;
	t->ip_len = bpf_ntohs(h.ip.tot_len);
	*ipid = h.ip.id;
	if (bpf_ntohs(h.ip.frag) & 0x1fff)
		return 0; // not the first fragment: no L4 header
	__u32 ihl = (h.ip.vihl & 0x0f) * 4;
	if (ihl != sizeof(struct ip4)) {
		// IPv4 options: read the transport header where it is.
		if (bpf_probe_read_kernel(&h.sport, sizeof(h) - sizeof(struct ip4), head + nh + ihl))
			return 0;
	}
	fill_l4(t, h.ip.proto, h.sport, h.dport, h.l4[9]);
	return 0;
}

// sampled_out decides whether this packet's events are left out: after
// packets_per_flow packets of a flow direction, only its SYN/FIN/RST
// packets are traced (failures are traced by the callers regardless). The
// IP ID tells a new packet from the same packet seen at another hook.
static __always_inline int sampled_out(const struct tuple *t, __u16 ipid, struct config *cfg)
{
	if (!cfg || !cfg->packets_per_flow)
		return 0;
	if (t->proto == IPPROTO_TCP_ && (t->tcp_flags & 0x07)) // FIN, SYN, RST
		return 0;
	struct tuple k = *t;
	k.tcp_flags = 0;
	k.ip_len = 0;
	struct flow_state *st = bpf_map_lookup_elem(&flow_sample, &k);
	if (!st) {
		struct flow_state init = {.packets = 1, .last_ipid = ipid, .keep = 1};
		bpf_map_update_elem(&flow_sample, &k, &init, BPF_ANY);
		return 0;
	}
	if (st->last_ipid != ipid) {
		st->last_ipid = ipid;
		st->packets++;
		st->keep = st->packets <= cfg->packets_per_flow;
	}
	if (st->keep)
		return 0;
	count(CNT_SAMPLED);
	return 1;
}

static __always_inline void snap_hdr(const struct pkt_loc *loc, struct event *e, const struct config *cfg)
{
	if (!cfg || !cfg->snap_hdr)
		return; // a 64-byte read per event, for sinks that are not there
	__u32 len = e->pkt.ip_len;

	if (len > HDR_SNAP)
		len = HDR_SNAP;
	if (len < 20)
		return;
	if (bpf_probe_read_kernel(e->hdr, HDR_SNAP, loc->head + loc->nh) == 0)
		e->hdr_len = len;
}

static __always_inline __u32 dev_netns(const struct net_device *dev, const int direct)
{
	if (!dev)
		return 0;
	if (direct)
		return dev->nd_net.net->ns.inum;
	return BPF_CORE_READ(dev, nd_net.net, ns.inum);
}

static __always_inline __u32 skb_netns(const struct sk_buff *skb, struct nf_conn *ct, const int direct)
{
	struct net_device *dev = RD(direct, skb, dev);
	if (dev)
		return dev_netns(dev, direct);
	if (ct && bpf_core_type_exists(struct nf_conn))
		return BPF_CORE_READ(ct, ct_net.net, ns.inum);
	return 0;
}

static __always_inline __u32 skb_route_ifindex(const struct sk_buff *skb, const int direct)
{
	unsigned long refdst = RD(direct, skb, _skb_refdst);
	struct dst_entry *dst = (struct dst_entry *)(refdst & ~1UL);
	if (!dst)
		return 0;
	return BPF_CORE_READ(dst, dev, ifindex);
}

// ev_new returns a zeroed, stamped event: reserved in the ring buffer
// (written in place: no copy), or the per-CPU scratch event for the perf
// buffer. Every caller that gets one must pass it to ev_submit. A full ring
// buffer is counted as a lost event here, before any work is done for it.
static __always_inline struct event *ev_new(__u32 kind, __u8 source, int with_task)
{
	struct event *e;
	if (use_perf) {
		__u32 zero = 0;
		__u32 *depth = bpf_map_lookup_elem(&scratch_depth, &zero);
		if (!depth)
			return 0;
		__u32 level = *depth;
		if (level >= SCRATCH_LEVELS) {
			count(CNT_LOST);
			return 0;
		}
		e = bpf_map_lookup_elem(&scratch, &level);
		if (e)
			*depth = level + 1; // released by ev_submit
	} else {
		e = bpf_ringbuf_reserve(&events, sizeof(*e), 0);
		if (!e)
			count(CNT_LOST);
	}
	if (!e)
		return 0;
	// The header snapshot is left as the ring had it (hdr_len 0 says it is
	// not there; snap_hdr writes it when asked): not writing it spares a
	// cache line the reader last held.
	__builtin_memset(e, 0, offsetof(struct event, hdr));
	e->ts = bpf_ktime_get_ns();
	e->kind = kind;
	e->source = source;
	if (with_task) {
		e->pid = bpf_get_current_pid_tgid() >> 32;
		bpf_get_current_comm(e->comm, sizeof(e->comm));
	}
	return e;
}

static __always_inline void ev_submit(void *ctx, struct event *e)
{
	if (use_perf) {
		long err = bpf_perf_event_output(ctx, &events_perf, BPF_F_CURRENT_CPU, e, sizeof(*e));
		count(err ? CNT_LOST : CNT_EMITTED);
		__u32 zero = 0;
		__u32 *depth = bpf_map_lookup_elem(&scratch_depth, &zero);
		if (depth && *depth)
			*depth -= 1;
	} else {
		__u64 flags = 0;
		if (wakeup_bytes) {
			// Wake the reader once this much is pending, at most once per
			// WAKE_INTERVAL_NS per CPU: each wakeup is an interrupt, and a
			// reader that fell behind (pending data above the threshold)
			// would otherwise be woken by every event, falling further
			// behind. Waking on the threshold crossing alone is not enough:
			// two CPUs can step over it together without either seeing it.
			flags = BPF_RB_NO_WAKEUP;
			if (bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA) >= wakeup_bytes) {
				__u32 zero = 0;
				__u64 *last = bpf_map_lookup_elem(&last_wakeup, &zero);
				if (last && e->ts - *last >= WAKE_INTERVAL_NS) {
					*last = e->ts;
					flags = BPF_RB_FORCE_WAKEUP;
				}
			}
		}
		bpf_ringbuf_submit(e, flags);
		count(CNT_EMITTED);
	}
}

// Common body for skb-carrying hooks: parse, filter (packet, then conntrack),
// fill the packet and conntrack fields. Returns the event or NULL.
static __always_inline struct event *skb_event(const struct sk_buff *skb, __u32 kind,
					       __u8 source, int with_task, const int direct)
{
	if (noop_progs)
		return 0;
	struct tuple t = {};
	__u16 ipid = 0;
	struct pkt_loc loc;
	if (parse_skb_id(skb, &t, &ipid, &loc, direct))
		return 0;
	struct config *cfg = get_config();
	struct nf_conn *ct = skb_ct(skb, direct);
	if (!match_tuple(&t, cfg) && !match_ct(ct, cfg))
		return 0;
	// Failures are always traced; healthy packets of long flows are sampled.
	if (kind != EV_DROP && kind != EV_ICMP && kind != EV_FIB_VALIDATE && sampled_out(&t, ipid, cfg))
		return 0;
	struct event *e = ev_new(kind, source, with_task);
	if (!e)
		return 0;
	note_match(skb, e);
	e->skb = (__u64)skb;
	e->pkt = t;
	e->ipid = bpf_ntohs(ipid);
	e->mark = RD(direct, skb, mark);
	read_ct(ct, e);
	e->netns = skb_netns(skb, ct, direct);
	snap_hdr(&loc, e, cfg);
	return e;
}

/* ---------------------------------------------------------------------------
 * Stable interface: netfilter links (6.4+) around the NAT priorities.
 * ------------------------------------------------------------------------- */

static __always_inline int nf_common(struct bpf_nf_ctx *ctx, __u8 stage)
{
	struct sk_buff *skb = ctx->skb;
	const struct nf_hook_state *st = ctx->state;
	struct event *e = skb_event(skb, EV_NF, SRC_NETFILTER, 0, 1);
	if (!e)
		return NF_ACCEPT;
	// The conntrack direction lets userspace tell what the packet looked
	// like before this hook's NAT (from the entry's tuples and status)
	// where no link before NAT is attached.
	if ((RD(1, skb, _nfct) & 7) >= IP_CT_IS_REPLY_)
		stage |= 2;
	e->stage = stage;
	e->hook = st->hook;
	struct net_device *in = st->in;
	struct net_device *out = st->out;
	if (in)
		e->ifindex = in->ifindex;
	if (out)
		e->out_ifindex = out->ifindex;
	// The route's device differs from the hook's output device only where
	// NAT re-routes a local packet (OUTPUT, after DNAT); elsewhere the read
	// (two helper calls: the dst is not a BTF pointer) is left out.
	if (st->hook == NF_INET_LOCAL_OUT)
		e->route_ifindex = skb_route_ifindex(skb, 1);
	e->netns = st->net->ns.inum;
	ev_submit(ctx, e);
	return NF_ACCEPT; // never 0: that is NF_DROP
}

SEC("netfilter")
int nf_before(struct bpf_nf_ctx *ctx)
{
	return nf_common(ctx, 0);
}

SEC("netfilter")
int nf_after(struct bpf_nf_ctx *ctx)
{
	return nf_common(ctx, 1);
}

/* ---------------------------------------------------------------------------
 * Tracepoints (tp_btf): drops, route lookups, ICMP errors, connect, devices.
 * ------------------------------------------------------------------------- */

static __always_inline void drop_common(void *ctx, struct sk_buff *skb, void *location, __u32 reason)
{
	struct event *e = skb_event(skb, EV_DROP, SRC_TRACEPOINT, 1, 1);
	if (!e)
		return;
	e->location = (__u64)location;
	e->reason = reason;
	struct net_device *dev = skb->dev;
	if (dev)
		e->ifindex = dev->ifindex;
	e->route_ifindex = skb_route_ifindex(skb, 1);
	ev_submit(ctx, e);
}

// Kernels 5.17+: kfree_skb carries the drop reason.
SEC("tp_btf/kfree_skb")
int BPF_PROG(tp_kfree_skb_reason, struct sk_buff *skb, void *location, int reason)
{
	if ((__u32)reason == consumed_reason) // not a drop
		return 0;
	drop_common(ctx, skb, location, (__u32)reason);
	return 0;
}

// Older kernels: no reason argument.
SEC("tp_btf/kfree_skb")
int BPF_PROG(tp_kfree_skb, struct sk_buff *skb, void *location)
{
	drop_common(ctx, skb, location, 0);
	return 0;
}

static __always_inline void flow_tuple(const struct flowi4 *flp, struct tuple *t, const int direct)
{
	t->saddr = RD(direct, flp, saddr);
	t->daddr = RD(direct, flp, daddr);
	t->proto = RD(direct, flp, __fl_common.flowic_proto);
	if (t->proto == IPPROTO_TCP_ || t->proto == IPPROTO_UDP_ || t->proto == IPPROTO_SCTP_) {
		t->sport = bpf_ntohs(RD(direct, flp, uli.ports.sport));
		t->dport = bpf_ntohs(RD(direct, flp, uli.ports.dport));
	}
}

static __always_inline void fib_fill(struct event *e, const struct flowi4 *flp,
				     const struct fib_nh_common *nhc, __u32 table, int err, const int direct)
{
	e->table = table;
	e->reason = (__u32)err;
	e->flow_oif = RD(direct, flp, __fl_common.flowic_oif); // flow_iif: set with the event
	if (nhc && err == 0) {
		struct net_device *dev = RD(direct, nhc, nhc_dev);
		if (dev) {
			e->out_ifindex = RD(direct, dev, ifindex);
			e->netns = dev_netns(dev, direct);
		}
		if (RD(direct, nhc, nhc_gw_family) == AF_INET)
			e->gw = RD(direct, nhc, nhc_gw.ipv4);
	}
}

// flow_match decides for a route lookup. Input lookups carry no transport
// ports (unless fib rules need them): the address alone cannot tell the
// Service's packets from other traffic to the same pod, so such a lookup is
// traced only soon (FLOW_MATCH_WINDOW_NS) after a traced packet on this
// CPU, whose lookup it is (same softirq). A failed lookup to one of the
// Service's addresses is always traced: failures are rare, and the one that
// matters (IPVS towards a real server gone) must not depend on timing.
static __always_inline int flow_match(const struct tuple *t, int failed)
{
	if (!failed && !t->proto && !t->sport && !t->dport && !recent_match(FLOW_MATCH_WINDOW_NS))
		return 0;
	return match_tuple(t, get_config());
}

// rpf_lookup reports whether a successful lookup is the reverse-path check
// of the last traced one on this CPU (see last_fib).
static __always_inline int rpf_lookup(const struct tuple *t, __u32 iif)
{
	__u32 zero = 0;
	struct last_fib *lf = bpf_map_lookup_elem(&last_fib_map, &zero);
	struct last_match *lm = bpf_map_lookup_elem(&last_match_map, &zero);
	if (!lf || !lm || !lf->match_ts)
		return 0;
	return lf->match_ts == lm->ts && lf->oif == iif && lf->saddr == t->daddr && lf->daddr == t->saddr;
}

// note_fib records a successful input lookup traced on this CPU.
static __always_inline void note_fib(__u32 saddr, __u32 daddr, __u32 oif)
{
	__u32 zero = 0;
	struct last_fib *lf = bpf_map_lookup_elem(&last_fib_map, &zero);
	struct last_match *lm = bpf_map_lookup_elem(&last_match_map, &zero);
	if (!lf || !lm)
		return;
	lf->saddr = saddr;
	lf->daddr = daddr;
	lf->oif = oif;
	lf->match_ts = lm->ts;
}

// The last input route lookups sent from this CPU, in a small table of
// their own (route_repeat): a slot per hash of source, destination and
// input device, the last lookup sent for it. A collision only means a
// lookup sent again. Per CPU and direct-mapped, it costs a few loads; a
// shared LRU hash map cost a third of the route program's run.
struct route_key {
	__u32 saddr;
	__u32 daddr;
	__u32 iif;
	__u32 netns;
};

struct route_val {
	struct route_key key;
	__u64 ts; // when it was sent
	__u32 table;
	__u32 oif;
	__u32 gw;
	__u32 pad;
};

#define ROUTE_SLOTS 256

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ROUTE_SLOTS);
	__type(key, __u32);
	__type(value, struct route_val);
} route_seen SEC(".maps");

// route_repeat reports whether a successful input lookup, about to be
// traced, repeats the last one sent from this CPU for the same source,
// destination and input device in config.route_repeat_netns: same table,
// output device and gateway, sent less than config.route_repeat_ms ago.
// Every forwarded packet of a flow makes such a lookup, each with the same
// result: a quarter of a traced stream's events said nothing new. A repeat
// is not sent; the packet's next event (its netfilter hook after the
// lookup, or its drop) carries EVF_ROUTE_REPEAT instead, and userspace
// shows the result it already has. Lookups in the local table (local
// delivery, where the next hook may not be one svctrace watches) and
// output lookups (the source chosen for each connection) are always sent,
// as are failures.
static __always_inline int route_repeat(const struct tuple *t, __u32 iif, const struct fib_nh_common *nhc,
					__u32 table, const int direct)
{
	struct config *cfg = get_config();
	if (!cfg || !cfg->route_repeat_ms || iif == LOOPBACK_IFINDEX_ || table == RT_TABLE_LOCAL_)
		return 0;
	struct net_device *dev = RD(direct, nhc, nhc_dev);
	if (!dev)
		return 0;
	__u32 netns = dev_netns(dev, direct);
	if (netns != cfg->route_repeat_netns)
		return 0;
	__u32 zero = 0;
	struct last_match *lm = bpf_map_lookup_elem(&last_match_map, &zero);
	if (!lm || !lm->skb)
		return 0; // no packet to carry the note
	struct route_key k = {.saddr = t->saddr, .daddr = t->daddr, .iif = iif, .netns = netns};
	struct route_val v = {.table = table, .oif = RD(direct, dev, ifindex)};
	if (RD(direct, nhc, nhc_gw_family) == AF_INET)
		v.gw = RD(direct, nhc, nhc_gw.ipv4);
	__u64 now = bpf_ktime_get_ns();
	__u32 slot = (k.saddr * 0x9e3779b1u ^ k.daddr * 0x85ebca6bu ^ iif * 0xc2b2ae35u) >> 24; // < ROUTE_SLOTS
	struct route_val *old = bpf_map_lookup_elem(&route_seen, &slot);
	if (!old)
		return 0;
	if (old->key.saddr == k.saddr && old->key.daddr == k.daddr && old->key.iif == k.iif && old->key.netns == k.netns &&
	    old->table == v.table && old->oif == v.oif && old->gw == v.gw && now - old->ts < (__u64)cfg->route_repeat_ms * 1000000) {
		lm->repeat_skb = lm->skb;
		note_fib(t->saddr, t->daddr, v.oif); // the reverse-path check that follows is this lookup's
		count(CNT_ROUTE_REPEAT);
		return 1;
	}
	old->key = k;
	old->ts = now;
	old->table = v.table;
	old->oif = v.oif;
	old->gw = v.gw;
	return 0;
}

static __always_inline struct event *flow_event(const struct flowi4 *flp, __u32 kind, __u8 source,
						int failed, const int direct, const struct fib_nh_common *nhc,
						__u32 table)
{
	if (noop_progs)
		return 0;
	struct tuple t = {};
	flow_tuple(flp, &t, direct);
	if (!flow_match(&t, failed))
		return 0;
	__u32 iif = RD(direct, flp, __fl_common.flowic_iif);
	if (kind == EV_FIB && !failed && rpf_lookup(&t, iif))
		return 0;
	if (kind == EV_FIB && !failed && nhc && route_repeat(&t, iif, nhc, table, direct))
		return 0;
	// The task is the lookup's only for the node's own traffic (output
	// lookups run with the loopback device as input); an input lookup
	// runs in a softirq on behalf of whatever the CPU was doing.
	int task = kind != EV_FIB || iif == LOOPBACK_IFINDEX_;
	struct event *e = ev_new(kind, source, task);
	if (!e)
		return 0;
	e->pkt = t;
	if (kind == EV_FIB)
		e->flow_iif = iif;
	return e;
}

SEC("tp_btf/fib_table_lookup")
int BPF_PROG(tp_fib_table_lookup, u32 tb_id, const struct flowi4 *flp,
	     const struct fib_nh_common *nhc, int err)
{
	struct event *e = flow_event(flp, EV_FIB, SRC_TRACEPOINT, err != 0, 1, nhc, tb_id);
	if (!e && !err)
		return 0;
	if (err) {
		// A failed lookup right after a traced packet was seen on this CPU
		// is that packet's (see last_match): tag it with the skb, and keep
		// it even when the filter does not know its destination.
		__u64 skb = recent_match(LAST_MATCH_WINDOW_NS);
		if (!e) {
			if (!skb)
				return 0;
			__u32 iif = flp->__fl_common.flowic_iif;
			e = ev_new(EV_FIB, SRC_TRACEPOINT, iif == LOOPBACK_IFINDEX_);
			if (!e)
				return 0;
			flow_tuple(flp, &e->pkt, 1);
			e->flow_iif = iif;
		}
		e->skb = skb;
	}
	fib_fill(e, flp, nhc, tb_id, err, 1);
	if (!err && e->flow_iif != LOOPBACK_IFINDEX_)
		note_fib(e->pkt.saddr, e->pkt.daddr, e->out_ifindex);
	ev_submit(ctx, e);
	return 0;
}

static __always_inline void icmp_common(void *ctx, const struct sk_buff *skb, int type, int code, __u8 source,
					const int direct)
{
	if (type != 3 && type != 5 && type != 11 && type != 12)
		return; // only errors: unreachable, redirect, time exceeded, parameter problem
	struct event *e = skb_event(skb, EV_ICMP, source, 1, direct);
	if (!e)
		return;
	e->reason = ((__u32)type << 8) | ((__u32)code & 0xff);
	struct net_device *dev = RD(direct, skb, dev);
	if (dev)
		e->ifindex = RD(direct, dev, ifindex);
	ev_submit(ctx, e);
}

SEC("tp_btf/icmp_send")
int BPF_PROG(tp_icmp_send, const struct sk_buff *skb, int type, int code)
{
	icmp_common(ctx, skb, type, code, SRC_TRACEPOINT, 1);
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tp_sock_set_state, const struct sock *sk, int oldstate, int newstate)
{
	if (noop_progs || newstate != TCP_SYN_SENT)
		return 0;
	if (sk->__sk_common.skc_family != AF_INET)
		return 0;
	struct tuple t = {};
	t.saddr = sk->__sk_common.skc_rcv_saddr;
	t.daddr = sk->__sk_common.skc_daddr;
	t.sport = sk->__sk_common.skc_num;
	t.dport = bpf_ntohs(sk->__sk_common.skc_dport);
	t.proto = IPPROTO_TCP_;
	if (!match_tuple(&t, get_config()))
		return 0;
	struct event *e = ev_new(EV_CONNECT, SRC_TRACEPOINT, 1);
	if (!e)
		return 0;
	e->pkt = t;
	e->hook = newstate;
	e->location = (__u64)sk;
	e->netns = sk->__sk_common.skc_net.net->ns.inum;
	e->flow_oif = sk->__sk_common.skc_bound_dev_if;
	ev_submit(ctx, e);
	return 0;
}

static __always_inline void dev_event(void *ctx, const struct sk_buff *skb, __u32 kind, __u8 source)
{
	struct event *e = skb_event(skb, kind, source, 0, 1);
	if (!e)
		return;
	struct net_device *dev = skb->dev;
	if (dev)
		e->ifindex = dev->ifindex;
	ev_submit(ctx, e);
}

SEC("tp_btf/netif_receive_skb")
int BPF_PROG(tp_netif_receive_skb, struct sk_buff *skb)
{
	dev_event(ctx, skb, EV_RECV, SRC_TRACEPOINT);
	return 0;
}

SEC("tp_btf/net_dev_queue")
int BPF_PROG(tp_net_dev_queue, struct sk_buff *skb)
{
	dev_event(ctx, skb, EV_XMIT, SRC_TRACEPOINT);
	return 0;
}

// The same two events from tcx programs attached to chosen interfaces only
// (the traced Service's backend pods: attach.Probes.SetDevices), so that
// traffic elsewhere on the machine runs no program for them (the two
// tracepoints run for every packet on every device). tcx ingress sees what
// netif_receive_skb does, tcx egress what net_dev_queue does; the kernel's
// sk_buff (the identity the correlator follows across hooks) is the
// context's. Both pass every packet on (TCX_NEXT).
SEC("tcx/ingress")
int tcx_recv(struct __sk_buff *ctx)
{
	dev_event(ctx, bpf_cast_to_kern_ctx(ctx), EV_RECV, SRC_TC);
	return TCX_NEXT_;
}

SEC("tcx/egress")
int tcx_xmit(struct __sk_buff *ctx)
{
	dev_event(ctx, bpf_cast_to_kern_ctx(ctx), EV_XMIT, SRC_TC);
	return TCX_NEXT_;
}

/* ---------------------------------------------------------------------------
 * Kernel functions: kprobe/kretprobe and fentry/fexit flavours.
 * ------------------------------------------------------------------------- */

// nf_nat_manip_pkt(skb, ct, mtype, dir): the packet before the rewrite; the
// rewrite's target is the inverse of the other direction's tuple (userspace
// derives it from the conntrack tuples carried in the event).
static __always_inline void nat_manip(void *ctx, struct sk_buff *skb, struct nf_conn *ct,
				      __u32 mtype, __u32 dir, __u8 source)
{
	if (noop_progs)
		return;
	struct tuple t = {};
	__u16 ipid = 0;
	struct pkt_loc loc;
	if (parse_skb_id(skb, &t, &ipid, &loc, 0))
		return;
	struct config *cfg = get_config();
	if (!match_tuple(&t, cfg) && !match_ct(ct, cfg))
		return;
	if (sampled_out(&t, ipid, cfg))
		return;
	struct event *e = ev_new(EV_NAT, source, 0);
	if (!e)
		return;
	note_match(skb, e);
	e->skb = (__u64)skb;
	e->pkt = t;
	e->ipid = bpf_ntohs(ipid);
	e->hook = mtype;
	e->stage = dir;
	e->mark = BPF_CORE_READ(skb, mark);
	read_ct(ct, e);
	e->netns = skb_netns(skb, ct, 0);
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (dev)
		e->ifindex = BPF_CORE_READ(dev, ifindex);
	snap_hdr(&loc, e, cfg);
	ev_submit(ctx, e);
}

SEC("kprobe/nf_nat_manip_pkt")
int BPF_KPROBE(kp_nat_manip_pkt, struct sk_buff *skb, struct nf_conn *ct, int mtype, int dir)
{
	nat_manip(ctx, skb, ct, mtype, dir, SRC_KPROBE);
	return 0;
}

SEC("fentry/nf_nat_manip_pkt")
int BPF_PROG(fe_nat_manip_pkt, struct sk_buff *skb, struct nf_conn *ct, int mtype, int dir)
{
	nat_manip(ctx, skb, ct, mtype, dir, SRC_FENTRY);
	return 0;
}

// nf_nat_setup_info(ct, range, maniptype): the binding is in the reply tuple
// once the function returns.
static __always_inline void nat_bind(void *ctx, struct nf_conn *ct, __u32 maniptype, __u32 ret, __u8 source)
{
	if (ret != NF_ACCEPT)
		return;
	if (!match_ct(ct, get_config()))
		return;
	struct event *e = ev_new(EV_NAT_BIND, source, 0);
	if (!e)
		return;
	e->hook = maniptype;
	read_ct(ct, e);
	if (bpf_core_type_exists(struct nf_conn))
		e->netns = BPF_CORE_READ(ct, ct_net.net, ns.inum);
	e->pkt = e->ct_orig;
	ev_submit(ctx, e);
}

static __always_inline void save_args(__u64 fn, __u64 a0, __u64 a1, __u64 a2, __u64 a3)
{
	struct kargs_key k = {.pid_tgid = bpf_get_current_pid_tgid(), .fn = fn};
	struct kargs v = {.a = {a0, a1, a2, a3}};
	bpf_map_update_elem(&kargs_map, &k, &v, BPF_ANY);
}

static __always_inline int take_args(__u64 fn, struct kargs *out)
{
	struct kargs_key k = {.pid_tgid = bpf_get_current_pid_tgid(), .fn = fn};
	struct kargs *v = bpf_map_lookup_elem(&kargs_map, &k);
	if (!v)
		return -1;
	*out = *v;
	bpf_map_delete_elem(&kargs_map, &k);
	return 0;
}

SEC("kprobe/nf_nat_setup_info")
int BPF_KPROBE(kp_nat_setup_info, struct nf_conn *ct, void *range, int maniptype)
{
	save_args(KFN_NAT_SETUP, (__u64)ct, maniptype, 0, 0);
	return 0;
}

SEC("kretprobe/nf_nat_setup_info")
int BPF_KRETPROBE(krp_nat_setup_info, unsigned int ret)
{
	struct kargs a;
	if (take_args(KFN_NAT_SETUP, &a))
		return 0;
	nat_bind(ctx, (struct nf_conn *)a.a[0], (__u32)a.a[1], ret, SRC_KPROBE);
	return 0;
}

SEC("fexit/nf_nat_setup_info")
int BPF_PROG(fx_nat_setup_info, struct nf_conn *ct, void *range, int maniptype, unsigned int ret)
{
	nat_bind(ctx, ct, maniptype, ret, SRC_FENTRY);
	return 0;
}

// fib_table_lookup(tb, flp, res, fib_flags) -> int
static __always_inline void fib_lookup_ret(void *ctx, struct fib_table *tb, const struct flowi4 *flp,
					   struct fib_result *res, int ret, __u8 source)
{
	struct event *e = flow_event(flp, EV_FIB, source, ret != 0, 0, 0, 0);
	if (!e)
		return;
	struct fib_nh_common *nhc = 0;
	if (ret == 0 && res) {
		nhc = BPF_CORE_READ(res, nhc);
		struct fib_info *fi = BPF_CORE_READ(res, fi);
		if (fi)
			e->prefsrc = BPF_CORE_READ(fi, fib_prefsrc);
	}
	fib_fill(e, flp, nhc, BPF_CORE_READ(tb, tb_id), ret, 0);
	if (!ret && e->flow_iif != LOOPBACK_IFINDEX_)
		note_fib(e->pkt.saddr, e->pkt.daddr, e->out_ifindex);
	ev_submit(ctx, e);
}

SEC("kprobe/fib_table_lookup")
int BPF_KPROBE(kp_fib_table_lookup, struct fib_table *tb, const struct flowi4 *flp, struct fib_result *res)
{
	struct tuple t = {};
	flow_tuple(flp, &t, 0);
	if (!flow_match(&t, 1)) // the result is not known yet: the return decides
		return 0; // cheap: only traced flows pay for the map update
	save_args(KFN_FIB_LOOKUP, (__u64)tb, (__u64)flp, (__u64)res, 0);
	return 0;
}

SEC("kretprobe/fib_table_lookup")
int BPF_KRETPROBE(krp_fib_table_lookup, int ret)
{
	struct kargs a;
	if (take_args(KFN_FIB_LOOKUP, &a))
		return 0;
	fib_lookup_ret(ctx, (struct fib_table *)a.a[0], (const struct flowi4 *)a.a[1],
		       (struct fib_result *)a.a[2], ret, SRC_KPROBE);
	return 0;
}

SEC("fexit/fib_table_lookup")
int BPF_PROG(fx_fib_table_lookup, struct fib_table *tb, const struct flowi4 *flp,
	     struct fib_result *res, int fib_flags, int ret)
{
	fib_lookup_ret(ctx, tb, flp, res, ret, SRC_FENTRY);
	return 0;
}

// ip_route_output_key_hash(net, fl4, skb) -> struct rtable *: the source
// address chosen for locally originated traffic, before any packet exists.
static __always_inline void route_out_ret(void *ctx, struct net *net, const struct flowi4 *fl4,
					  struct rtable *rt, __u8 source)
{
	struct event *e = flow_event(fl4, EV_ROUTE_OUT, source, (unsigned long)rt >= (unsigned long)-4095, 0, 0, 0);
	if (!e)
		return;
	e->netns = BPF_CORE_READ(net, ns.inum);
	e->flow_oif = BPF_CORE_READ(fl4, __fl_common.flowic_oif);
	if ((unsigned long)rt >= (unsigned long)-4095) {
		e->reason = (__u32)(long)rt;
	} else if (rt) {
		e->out_ifindex = BPF_CORE_READ(rt, dst.dev, ifindex);
	}
	ev_submit(ctx, e);
}

SEC("kprobe/ip_route_output_key_hash")
int BPF_KPROBE(kp_route_output, struct net *net, struct flowi4 *fl4)
{
	struct tuple t = {};
	flow_tuple(fl4, &t, 0);
	if (!flow_match(&t, 1)) // the result is not known yet: the return decides
		return 0;
	save_args(KFN_ROUTE_OUT, (__u64)net, (__u64)fl4, 0, 0);
	return 0;
}

SEC("kretprobe/ip_route_output_key_hash")
int BPF_KRETPROBE(krp_route_output, struct rtable *rt)
{
	struct kargs a;
	if (take_args(KFN_ROUTE_OUT, &a))
		return 0;
	route_out_ret(ctx, (struct net *)a.a[0], (const struct flowi4 *)a.a[1], rt, SRC_KPROBE);
	return 0;
}

SEC("fexit/ip_route_output_key_hash")
int BPF_PROG(fx_route_output, struct net *net, struct flowi4 *fl4, const struct sk_buff *skb,
	     struct rtable *rt)
{
	route_out_ret(ctx, net, fl4, rt, SRC_FENTRY);
	return 0;
}

// fib_validate_source(skb, src, dst, dscp, oif, dev, idev, itag) -> int < 0 on failure
static __always_inline void validate_ret(void *ctx, struct sk_buff *skb, struct net_device *dev,
					 int ret, __u8 source)
{
	if (ret >= 0)
		return;
	struct event *e = skb_event(skb, EV_FIB_VALIDATE, source, 0, 0);
	if (!e)
		return;
	e->reason = (__u32)ret;
	if (dev) {
		e->ifindex = BPF_CORE_READ(dev, ifindex);
		e->netns = dev_netns(dev, 0);
	}
	ev_submit(ctx, e);
}

SEC("kprobe/fib_validate_source")
int BPF_KPROBE(kp_fib_validate_source, struct sk_buff *skb)
{
	// The device is argument 6, past what BPF_KPROBE reaches portably: take skb->dev.
	save_args(KFN_FIB_VALIDATE, (__u64)skb, (__u64)BPF_CORE_READ(skb, dev), 0, 0);
	return 0;
}

SEC("kretprobe/fib_validate_source")
int BPF_KRETPROBE(krp_fib_validate_source, int ret)
{
	struct kargs a;
	if (take_args(KFN_FIB_VALIDATE, &a))
		return 0;
	validate_ret(ctx, (struct sk_buff *)a.a[0], (struct net_device *)a.a[1], ret, SRC_KPROBE);
	return 0;
}

SEC("fexit/fib_validate_source")
int BPF_PROG(fx_fib_validate_source, struct sk_buff *skb, __u32 src, __u32 dst, __u8 dscp,
	     int oif, struct net_device *dev, struct in_device *idev, __u32 *itag, int ret)
{
	validate_ret(ctx, skb, dev, ret, SRC_FENTRY);
	return 0;
}

// Kernels without the icmp:icmp_send tracepoint.
SEC("kprobe/__icmp_send")
int BPF_KPROBE(kp_icmp_send, struct sk_buff *skb, int type, int code)
{
	icmp_common(ctx, skb, type, code, SRC_KPROBE, 0);
	return 0;
}

/* ---------------------------------------------------------------------------
 * IPVS (module ip_vs). The few IPVS structs read are declared here and
 * relocated against the module's BTF; without module BTF (5.10) only function
 * arguments and the packet itself are used.
 * ------------------------------------------------------------------------- */

struct ip_vs_dest {
	__be16 port;
	union nf_inet_addr addr;
	volatile unsigned int flags;
	atomic_t weight;
} __attribute__((preserve_access_index));

struct ip_vs_conn {
	__be16 cport;
	__be16 dport;
	__be16 vport;
	u16 af;
	union nf_inet_addr caddr;
	union nf_inet_addr vaddr;
	union nf_inet_addr daddr;
	volatile __u32 flags;
	__u16 protocol;
	struct ip_vs_dest *dest;
} __attribute__((preserve_access_index));

// ip_vs_in: remember the traced skb IPVS is handling on this task, so that
// the connection and scheduling hooks (which get no skb) can be tied to it.
static __always_inline void ipvs_in(void *ctx, struct sk_buff *skb, __u8 source)
{
	struct kargs_key k = {.pid_tgid = bpf_get_current_pid_tgid(), .fn = KFN_IPVS_SKB};
	struct event *e = skb_event(skb, EV_IPVS_IN, source, 0, 0);
	if (!e) {
		bpf_map_delete_elem(&kargs_map, &k);
		return;
	}
	struct kargs v = {.a = {(__u64)skb, e->pkt.saddr | ((__u64)e->pkt.daddr << 32),
				e->pkt.sport | ((__u64)e->pkt.dport << 16) | ((__u64)e->pkt.proto << 32), 0}};
	bpf_map_update_elem(&kargs_map, &k, &v, BPF_ANY);
	struct net_device *dev = BPF_CORE_READ(skb, dev);
	if (dev)
		e->ifindex = BPF_CORE_READ(dev, ifindex);
	ev_submit(ctx, e);
}

SEC("kprobe/ip_vs_in_hook")
int BPF_KPROBE(kp_ipvs_in_hook, void *priv, struct sk_buff *skb)
{
	ipvs_in(ctx, skb, SRC_KPROBE);
	return 0;
}

SEC("fentry/ip_vs_in_hook")
int BPF_PROG(fe_ipvs_in_hook, void *priv, struct sk_buff *skb)
{
	ipvs_in(ctx, skb, SRC_FENTRY);
	return 0;
}

// Kernels before 6.0: ip_vs_in(ipvs, hooknum, skb, af).
SEC("kprobe/ip_vs_in")
int BPF_KPROBE(kp_ipvs_in, void *ipvs, unsigned int hooknum, struct sk_buff *skb)
{
	ipvs_in(ctx, skb, SRC_KPROBE);
	return 0;
}

// ipvs_event starts an event about the skb saved by ipvs_in on this task.
static __always_inline struct event *ipvs_event(__u32 kind, __u8 source)
{
	struct kargs_key k = {.pid_tgid = bpf_get_current_pid_tgid(), .fn = KFN_IPVS_SKB};
	struct kargs *v = bpf_map_lookup_elem(&kargs_map, &k);
	if (!v)
		return 0;
	__u64 skb = v->a[0], addrs = v->a[1], ports = v->a[2];
	struct event *e = ev_new(kind, source, 0);
	if (!e)
		return 0;
	e->skb = skb;
	// The packet has not been rewritten yet: read it again (its IP ID ties
	// this event to the packet's other events), falling back to the tuple
	// saved at ip_vs_in.
	__u16 ipid;
	struct pkt_loc loc;
	if (parse_skb_id((struct sk_buff *)skb, &e->pkt, &ipid, &loc, 0)) {
		e->pkt.saddr = (__u32)addrs;
		e->pkt.daddr = (__u32)(addrs >> 32);
		e->pkt.sport = (__u16)ports;
		e->pkt.dport = (__u16)(ports >> 16);
		e->pkt.proto = (__u8)(ports >> 32);
	} else {
		e->ipid = bpf_ntohs(ipid);
		snap_hdr(&loc, e, get_config());
	}
	e->netns = skb_netns((struct sk_buff *)skb, 0, 0);
	return e;
}

static __always_inline void dest_info(struct ip_vs_dest *dest, struct event *e)
{
	if (!dest || !bpf_core_type_exists(struct ip_vs_dest))
		return;
	e->rs_weight = BPF_CORE_READ(dest, weight.counter);
	e->rs_flags = BPF_CORE_READ(dest, flags) | (1U << 31);
}

// ip_vs_conn_new(p, dest_af, daddr, dport, flags, dest, fwmark): the real
// server comes from the arguments (no IPVS struct needed).
static __always_inline void ipvs_conn_new(void *ctx, const void *daddr, __u16 dport,
					  struct ip_vs_dest *dest, __u8 source)
{
	struct event *e = ipvs_event(EV_IPVS_CONN, source);
	if (!e)
		return;
	__u32 rs = 0;
	bpf_probe_read_kernel(&rs, sizeof(rs), daddr);
	e->ct_reply.saddr = rs;
	e->ct_reply.sport = bpf_ntohs(dport);
	e->ct_reply.daddr = e->pkt.saddr;
	e->ct_reply.dport = e->pkt.sport;
	e->ct_reply.proto = e->pkt.proto;
	e->ct_orig = e->pkt;
	e->ct_valid = 2; // IPVS connection tuples
	dest_info(dest, e);
	ev_submit(ctx, e);
}

SEC("kprobe/ip_vs_conn_new")
int BPF_KPROBE(kp_ipvs_conn_new, const void *p, int dest_af, const void *daddr, __u16 dport)
{
	ipvs_conn_new(ctx, daddr, dport, 0, SRC_KPROBE);
	return 0;
}

SEC("fentry/ip_vs_conn_new")
int BPF_PROG(fe_ipvs_conn_new, const void *p, int dest_af, const void *daddr, __u16 dport,
	     unsigned int flags, struct ip_vs_dest *dest)
{
	ipvs_conn_new(ctx, daddr, dport, dest, SRC_FENTRY);
	return 0;
}

// ip_vs_scheduler_err(svc, msg): the virtual server had no destination.
SEC("kprobe/ip_vs_scheduler_err")
int BPF_KPROBE(kp_ipvs_sched_err)
{
	struct event *e = ipvs_event(EV_IPVS_NODEST, SRC_KPROBE);
	if (e)
		ev_submit(ctx, e);
	return 0;
}

SEC("fentry/ip_vs_scheduler_err")
int BPF_PROG(fe_ipvs_sched_err)
{
	struct event *e = ipvs_event(EV_IPVS_NODEST, SRC_FENTRY);
	if (e)
		ev_submit(ctx, e);
	return 0;
}

// ip_vs_nat_xmit(skb, cp, pp, ipvsh): the packet before IPVS rewrites it,
// with the connection's client, virtual and real addresses when the module
// has BTF.
static __always_inline void ipvs_xmit(void *ctx, struct sk_buff *skb, struct ip_vs_conn *cp, __u8 source)
{
	struct event *e = skb_event(skb, EV_IPVS_XMIT, source, 0, 0);
	if (!e)
		return;
	if (cp && bpf_core_type_exists(struct ip_vs_conn)) {
		e->ct_orig.saddr = BPF_CORE_READ(cp, caddr.ip);
		e->ct_orig.sport = bpf_ntohs(BPF_CORE_READ(cp, cport));
		e->ct_orig.daddr = BPF_CORE_READ(cp, vaddr.ip);
		e->ct_orig.dport = bpf_ntohs(BPF_CORE_READ(cp, vport));
		e->ct_orig.proto = BPF_CORE_READ(cp, protocol);
		e->ct_reply.saddr = BPF_CORE_READ(cp, daddr.ip);
		e->ct_reply.sport = bpf_ntohs(BPF_CORE_READ(cp, dport));
		e->ct_reply.daddr = e->ct_orig.saddr;
		e->ct_reply.dport = e->ct_orig.sport;
		e->ct_reply.proto = e->ct_orig.proto;
		e->ct_valid = 2;
		e->location = (__u64)cp;
		dest_info(BPF_CORE_READ(cp, dest), e);
	}
	ev_submit(ctx, e);
}

SEC("kprobe/ip_vs_nat_xmit")
int BPF_KPROBE(kp_ipvs_nat_xmit, struct sk_buff *skb, struct ip_vs_conn *cp)
{
	ipvs_xmit(ctx, skb, cp, SRC_KPROBE);
	return 0;
}

SEC("fentry/ip_vs_nat_xmit")
int BPF_PROG(fe_ipvs_nat_xmit, struct sk_buff *skb, struct ip_vs_conn *cp)
{
	ipvs_xmit(ctx, skb, cp, SRC_FENTRY);
	return 0;
}
