package attach

import (
	"errors"
	"fmt"
	"net/netip"

	"github.com/cilium/ebpf"

	"github.com/svctrace/svctrace/internal/bpfobj"
)

// FilterEntry is one (address, port, protocol) the in-kernel filter admits.
// A zero Addr matches any address (NodePorts); a zero Port any port; a zero
// Proto any protocol.
type FilterEntry struct {
	Addr  netip.Addr
	Port  uint16
	Proto uint8
	Role  uint32 // informational: what the entry is (ClusterIP, endpoint, …)
}

type filterState struct {
	keys  map[bpfobj.SvctraceFilterKey]uint32
	addrs map[uint32]bool
	bits  *filterBits
	// gen numbers the updates: the kernel side's per-CPU cache of keys
	// found (filter_hits) holds only for the generation it was filled in.
	gen uint32
}

// filterBits mirrors the kernel's filter_bits: a bit per hash of each
// filter key and each filter address, tested before the exact maps.
type filterBits [1024]uint64

// The port and protocol that mark "this address is in filter_addrs".
const (
	addrMarkPort  = 0xffff
	addrMarkProto = 0xff
)

// filterHash is bpf/svctrace.c's filter_hash: 16 bits of a multiplicative
// hash of the key (addr in network byte order, as the kernel loads it).
func filterHash(addr uint32, port uint16, proto uint8) uint32 {
	x := uint64(addr)<<32 | uint64(port)<<8 | uint64(proto)
	return uint32((x * 0x9E3779B97F4A7C15) >> 48)
}

func (b *filterBits) set(addr uint32, port uint16, proto uint8) {
	h := filterHash(addr, port, proto)
	b[(h>>6)%uint32(len(b))] |= 1 << (h & 63)
}

func (b *filterBits) has(addr uint32, port uint16, proto uint8) bool {
	h := filterHash(addr, port, proto)
	return b[(h>>6)%uint32(len(b))]&(1<<(h&63)) != 0
}

func newFilterBits(keys map[bpfobj.SvctraceFilterKey]uint32, addrs map[uint32]bool) *filterBits {
	b := new(filterBits)
	for k := range keys {
		b.set(k.Addr, k.Port, k.Proto)
	}
	for a := range addrs {
		b.set(a, addrMarkPort, addrMarkProto)
	}
	return b
}

func filterKey(e FilterEntry) (bpfobj.SvctraceFilterKey, error) {
	var k bpfobj.SvctraceFilterKey
	if e.Addr.IsValid() {
		if !e.Addr.Is4() && !e.Addr.Is4In6() {
			return k, fmt.Errorf("filter address %s: only IPv4 is traced", e.Addr)
		}
		a := e.Addr.Unmap().As4()
		// The kernel compares network-order words: keep the bytes as they are.
		k.Addr = uint32(a[0]) | uint32(a[1])<<8 | uint32(a[2])<<16 | uint32(a[3])<<24
	}
	k.Port = e.Port
	k.Proto = e.Proto
	return k, nil
}

// SetFilter replaces the in-kernel filter with entries, without detaching
// anything: keys no longer wanted are deleted, new ones added. IPv6 entries
// are skipped and counted in the returned number.
func (p *Probes) SetFilter(entries []FilterEntry, traceAll bool) (skipped int, err error) {
	want := make(map[bpfobj.SvctraceFilterKey]uint32, len(entries))
	addrs := map[uint32]bool{}
	anyAddr := false
	for _, e := range entries {
		k, err := filterKey(e)
		if err != nil {
			skipped++
			continue
		}
		want[k] = e.Role
		if k.Addr == 0 {
			anyAddr = true
		} else {
			addrs[k.Addr] = true
		}
	}
	fm, am, cm, bm := p.shared["filter"], p.shared["filter_addrs"], p.shared["config_map"], p.shared["filter_bits_map"]
	var errs []error
	// The bits of the old and the new keys while the exact maps change, so
	// that a key in both never looks absent; then the new keys' alone.
	bits := newFilterBits(want, addrs)
	both := *bits
	if p.filter.bits != nil {
		for i := range both {
			both[i] |= p.filter.bits[i]
		}
	}
	if err := bm.Put(uint32(0), both); err != nil {
		errs = append(errs, fmt.Errorf("filter bits put: %w", err))
	}
	for k, role := range want {
		if old, ok := p.filter.keys[k]; ok && old == role {
			continue
		}
		if err := fm.Put(k, role); err != nil {
			errs = append(errs, fmt.Errorf("filter put: %w", err))
		}
	}
	for a := range addrs {
		if p.filter.addrs[a] {
			continue
		}
		if err := am.Put(a, uint8(1)); err != nil {
			errs = append(errs, fmt.Errorf("filter addr put: %w", err))
		}
	}
	for k := range p.filter.keys {
		if _, ok := want[k]; !ok {
			if err := fm.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("filter delete: %w", err))
			}
		}
	}
	for a := range p.filter.addrs {
		if !addrs[a] {
			if err := am.Delete(a); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, fmt.Errorf("filter addr delete: %w", err))
			}
		}
	}
	gen := p.filter.gen + 1
	if gen == 0 {
		gen = 1 // 0 marks an empty cache slot
	}
	cfg := bpfobj.SvctraceConfig{PacketsPerFlow: p.opts.PacketsPerFlow, FilterGen: gen}
	if p.routeRepeatMs > 0 {
		cfg.RouteRepeatNetns, cfg.RouteRepeatMs = p.netns, p.routeRepeatMs
	}
	if p.opts.Headers {
		cfg.SnapHdr = 1
	}
	if traceAll {
		cfg.TraceAll = 1
	}
	if anyAddr {
		cfg.AnyAddrKeys = 1
	}
	if err := cm.Put(uint32(0), cfg); err != nil {
		errs = append(errs, fmt.Errorf("config put: %w", err))
	}
	if err := bm.Put(uint32(0), *bits); err != nil {
		errs = append(errs, fmt.Errorf("filter bits put: %w", err))
	}
	p.filter = filterState{keys: want, addrs: addrs, bits: bits, gen: gen}
	return skipped, errors.Join(errs...)
}

// KernelCounts are the kernel side's per-CPU counters.
type KernelCounts struct {
	Emitted []uint64 // events submitted
	Lost    []uint64 // events that did not fit in the ring buffer
	Sampled []uint64 // events of established flows left out (PacketsPerFlow)
	// RouteRepeats are input route lookups not sent: the same result as
	// the last one sent (Options.RouteRepeat).
	RouteRepeats []uint64
}

// Counters reads the kernel side's per-CPU counters.
func (p *Probes) Counters() (KernelCounts, error) {
	var c KernelCounts
	m := p.shared["counters"]
	for _, x := range []struct {
		idx bpfobj.SvctraceCounterIdx
		out *[]uint64
	}{
		{bpfobj.SvctraceCounterIdxCNT_EMITTED, &c.Emitted},
		{bpfobj.SvctraceCounterIdxCNT_LOST, &c.Lost},
		{bpfobj.SvctraceCounterIdxCNT_SAMPLED, &c.Sampled},
		{bpfobj.SvctraceCounterIdxCNT_ROUTE_REPEAT, &c.RouteRepeats},
	} {
		if err := m.Lookup(uint32(x.idx), x.out); err != nil {
			return c, fmt.Errorf("read counters: %w", err)
		}
	}
	return c, nil
}
