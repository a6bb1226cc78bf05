package meta

import (
	"net/netip"
	"strconv"
	"time"
)

// Kind says what an address belongs to.
type Kind string

// Kinds of Name.
const (
	// KindService: a Service's ClusterIP, external IP, load-balancer IP or node port.
	KindService Kind = "service"
	// KindPod: a pod IP, or a port of a host-network / host-port pod on its node.
	KindPod Kind = "pod"
	// KindNode: a node address.
	KindNode Kind = "node"
	// KindEndpoint: an address known only as an endpoint (or former endpoint) of a Service,
	// such as the API server behind default/kubernetes. Namespace/Name are the Service's.
	KindEndpoint Kind = "endpoint"
	// KindUnknown: nothing in the snapshot knows the address.
	KindUnknown Kind = "unknown"
)

// Name says who an address (and port) is. It is a plain value: copying it does not allocate.
type Name struct {
	Kind      Kind
	Namespace string
	// Name is the Service, Pod or Node name.
	Name string
	// Port is the matched port: the service port, node port, container port or endpoint
	// port; 0 when the name does not depend on the port.
	Port uint16
	// PortName is the name of the matched service, container or endpoint port.
	PortName string
	Proto    Protocol
	// Node is the node a pod runs on, the node whose address a node port or endpoint was
	// reached on, or the node itself.
	Node string
	// Detail qualifies the name: "terminating", "not ready", "deleted 2m ago", "node port",
	// "was an endpoint of default/hostnames until 2025-06-01T11:58:00Z", ... Ages are
	// relative to the snapshot's Time.
	Detail string
	// GoneAt is when a deleted pod went away or a former endpoint was removed; zero otherwise.
	GoneAt time.Time
}

// Known reports whether the snapshot knew the address.
func (n Name) Known() bool { return n.Kind != KindUnknown && n.Kind != "" }

// String renders the name: "default/hostnames:80/TCP", "pod default/hostnames-7d9f-abc",
// "node worker-1", "endpoint of default/kubernetes:https", "unknown", each followed by
// " (detail)" when there is one, e.g. "shop/frontend:31380/TCP (node port on node01)",
// "pod default/x (deleted 2m ago)". It allocates; keep it off the hot path.
func (n Name) String() string {
	var s, detail string
	detail = n.Detail
	switch n.Kind {
	case KindService:
		s = n.Namespace + "/" + n.Name
		if n.Port != 0 {
			s += ":" + strconv.Itoa(int(n.Port)) + "/" + n.Proto.String()
		}
		if n.Node != "" {
			if detail == "" {
				detail = "node"
			}
			detail += " on " + n.Node
		}
	case KindPod:
		s = "pod " + n.Namespace + "/" + n.Name
	case KindNode:
		s = "node " + n.Name
	case KindEndpoint:
		s = "endpoint of " + n.Namespace + "/" + n.Name
		if n.PortName != "" {
			s += ":" + n.PortName
		}
		if n.Node != "" {
			detail = joinDetail("node "+n.Node, detail)
		}
	default:
		return "unknown"
	}
	if detail != "" {
		s += " (" + detail + ")"
	}
	return s
}

// Detail used when an address is a service address but the port is not one of its ports.
const detailNotServicePort = "not a service port"

// Name says who addr:port/proto is. Lookups go, first match wins: a service address and port
// (ClusterIP, external IP, load-balancer IP); a declared port of a pod on that address
// (pod IP, or host-network/host-port pod on its node); a node address (as a node port of a
// Service when port is one, else the node); a service address on another port; the live pod
// with that IP; the most recently deleted pod with it; a bare endpoint address; a former
// endpoint address. A node port reached on a loopback address names the Service too.
//
// port 0 and proto 0 are wildcards where a port is looked up. IPv4-mapped IPv6 addresses are
// unmapped. Name does not allocate; it is safe for concurrent use.
func (s *Snapshot) Name(addr netip.Addr, port uint16, proto uint8) Name {
	addr = addr.Unmap()
	p := Protocol(proto)
	if port != 0 {
		if n := s.portName(addr, port, p); n != nil {
			return *n
		}
	}
	an := s.byAddr[addr]
	if an == nil {
		if addr.IsLoopback() && port != 0 {
			if n := s.nodePort(port, p); n != nil {
				return *n
			}
		}
		return Name{Kind: KindUnknown}
	}
	switch {
	case an.node != nil:
		if port != 0 {
			if np := s.nodePort(port, p); np != nil {
				n := *np
				n.Node = an.node.Name
				return n
			}
		}
		return *an.node
	case an.vip != nil:
		n := *an.vip
		if port != 0 {
			n.Detail = detailNotServicePort
		}
		return n
	case an.pod != nil:
		return *an.pod
	case an.deleted != nil:
		return *an.deleted
	case an.endpoint != nil:
		return *an.endpoint
	case an.former != nil:
		return *an.former
	}
	return Name{Kind: KindUnknown}
}

func (s *Snapshot) portName(addr netip.Addr, port uint16, p Protocol) *Name {
	if p != ProtoAny {
		return s.byPort[addrPortKey{addr, port, p}]
	}
	for _, q := range [...]Protocol{ProtoTCP, ProtoUDP, ProtoSCTP} {
		if n := s.byPort[addrPortKey{addr, port, q}]; n != nil {
			return n
		}
	}
	return nil
}

func (s *Snapshot) nodePort(port uint16, p Protocol) *Name {
	if p != ProtoAny {
		return s.nodePorts[portKey{port, p}]
	}
	for _, q := range [...]Protocol{ProtoTCP, ProtoUDP, ProtoSCTP} {
		if n := s.nodePorts[portKey{port, q}]; n != nil {
			return n
		}
	}
	return nil
}
