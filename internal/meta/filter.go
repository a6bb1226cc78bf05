package meta

import (
	"cmp"
	"net/netip"
	"slices"
	"strconv"
)

// Role says why an address/port is in a Service's filter.
type Role uint8

// Roles of filter entries, in priority order: when one addr/port/proto has several roles the
// entry keeps the first.
const (
	RoleClusterIP Role = iota + 1
	RoleExternalIP
	RoleLoadBalancerIP
	RoleNodePort
	RoleEndpoint
	// RoleFormerEndpoint: an address that stopped being an endpoint within the retention
	// window; packets of old connections may still go there.
	RoleFormerEndpoint
)

// String returns the role's name, e.g. "ClusterIP".
func (r Role) String() string {
	switch r {
	case RoleClusterIP:
		return "ClusterIP"
	case RoleExternalIP:
		return "ExternalIP"
	case RoleLoadBalancerIP:
		return "LoadBalancerIP"
	case RoleNodePort:
		return "NodePort"
	case RoleEndpoint:
		return "Endpoint"
	case RoleFormerEndpoint:
		return "FormerEndpoint"
	}
	return "Role(" + strconv.Itoa(int(r)) + ")"
}

// FilterEntry is one address/port/protocol the in-kernel filter matches.
type FilterEntry struct {
	// Addr is the zero netip.Addr for "any address" (node ports).
	Addr netip.Addr
	// Port 0 is any port.
	Port uint16
	// Proto is an IPPROTO_* number; 0 is any protocol.
	Proto Protocol
	Role  Role
}

// String renders the entry as "ClusterIP 10.96.0.10:80/TCP" ("*" for any address or port).
func (e FilterEntry) String() string {
	a, p := "*", "*"
	if e.Addr.IsValid() {
		a = e.Addr.String()
	}
	if e.Port != 0 {
		p = strconv.Itoa(int(e.Port))
	}
	if e.Addr.Is6() {
		a = "[" + a + "]"
	}
	return e.Role.String() + " " + a + ":" + p + "/" + e.Proto.String()
}

// FilterSet is what the in-kernel filter needs to follow one Service's packets.
type FilterSet struct {
	// Service is the Service the set was computed for.
	Service ObjectRef
	// Entries are deduplicated by (Addr, Port, Proto) and sorted by Role, Addr, Port, Proto.
	Entries []FilterEntry
}

// Match returns the entry that matches addr:port/proto, honouring wildcards in entries.
func (f FilterSet) Match(addr netip.Addr, port uint16, proto uint8) (FilterEntry, bool) {
	addr = addr.Unmap()
	for _, e := range f.Entries {
		if (!e.Addr.IsValid() || e.Addr == addr) && (e.Port == 0 || e.Port == port) &&
			(e.Proto == ProtoAny || e.Proto == Protocol(proto)) {
			return e, true
		}
	}
	return FilterEntry{}, false
}

// Filter returns the filter entries of svc: each ClusterIP, external IP and load-balancer IP
// × each service port; each node port as (any address, nodePort, proto); each endpoint and
// former endpoint address × its endpoint (target) ports. A nil svc gives an empty set.
func (s *Snapshot) Filter(svc *Service) FilterSet {
	if svc == nil {
		return FilterSet{}
	}
	size := (len(svc.ClusterIPs) + len(svc.ExternalIPs) + len(svc.LoadBalancerIPs) + 1) * len(svc.Ports)
	for _, ep := range svc.Endpoints {
		size += len(ep.Ports)
	}
	for _, f := range svc.FormerEndpoints {
		size += len(f.Ports)
	}
	set := FilterSet{Service: svc.Ref(), Entries: make([]FilterEntry, 0, size)}
	seen := make(map[addrPortKey]int, size)
	add := func(a netip.Addr, port uint16, proto Protocol, role Role) {
		k := addrPortKey{a, port, proto}
		if i, dup := seen[k]; dup {
			if role < set.Entries[i].Role {
				set.Entries[i].Role = role
			}
			return
		}
		seen[k] = len(set.Entries)
		set.Entries = append(set.Entries, FilterEntry{Addr: a, Port: port, Proto: proto, Role: role})
	}
	vips := []struct {
		addrs []netip.Addr
		role  Role
	}{
		{svc.ClusterIPs, RoleClusterIP},
		{svc.ExternalIPs, RoleExternalIP},
		{svc.LoadBalancerIPs, RoleLoadBalancerIP},
	}
	for _, g := range vips {
		for _, a := range g.addrs {
			for _, p := range svc.Ports {
				add(a, p.Port, p.Protocol, g.role)
			}
		}
	}
	for _, p := range svc.Ports {
		if p.NodePort != 0 {
			add(netip.Addr{}, p.NodePort, p.Protocol, RoleNodePort)
		}
	}
	for _, ep := range svc.Endpoints {
		for _, p := range ep.Ports {
			add(ep.Addr, p.Port, p.Protocol, RoleEndpoint)
		}
	}
	for _, f := range svc.FormerEndpoints {
		for _, p := range f.Ports {
			add(f.Addr, p.Port, p.Protocol, RoleFormerEndpoint)
		}
	}
	slices.SortFunc(set.Entries, func(a, b FilterEntry) int {
		if c := cmp.Compare(a.Role, b.Role); c != 0 {
			return c
		}
		if c := a.Addr.Compare(b.Addr); c != 0 {
			return c
		}
		if c := cmp.Compare(a.Port, b.Port); c != 0 {
			return c
		}
		return cmp.Compare(a.Proto, b.Proto)
	})
	return set
}
