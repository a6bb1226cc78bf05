package meta

import (
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// Verdict classifies an address:port against one Service's endpoints.
type Verdict uint8

// Verdicts of Snapshot.EndpointState, from "all is well" to "nothing known".
const (
	// VerdictUnknown: nothing in the snapshot knows the address.
	VerdictUnknown Verdict = iota
	// VerdictReady: a ready endpoint of the service on that port.
	VerdictReady
	// VerdictNotReady: listed as an endpoint of the service, not ready and not terminating.
	VerdictNotReady
	// VerdictTerminating: listed as an endpoint of the service, terminating.
	VerdictTerminating
	// VerdictWrongPort: an endpoint of the service, but not on that port.
	VerdictWrongPort
	// VerdictRemoved: was an endpoint of the service until recently (see Until).
	VerdictRemoved
	// VerdictServiceAddr: a Service's own address (ClusterIP, external or LB IP): the packet
	// was not translated to an endpoint.
	VerdictServiceAddr
	// VerdictPodTerminating: a terminating pod that is not an endpoint of the service.
	VerdictPodTerminating
	// VerdictPodDeleted: a pod that no longer exists (see Pod.DeletedAt).
	VerdictPodDeleted
	// VerdictOtherService: an endpoint of other services only (see Services).
	VerdictOtherService
	// VerdictPodNotEndpoint: a live pod that is an endpoint of no service (check the
	// service's selector against the pod's labels, and its readiness).
	VerdictPodNotEndpoint
	// VerdictNode: a node address that is not an endpoint of the service.
	VerdictNode
)

// String returns the verdict's name in lower case, e.g. "ready", "pod deleted".
func (v Verdict) String() string {
	switch v {
	case VerdictUnknown:
		return "unknown"
	case VerdictReady:
		return "ready"
	case VerdictNotReady:
		return "not ready"
	case VerdictTerminating:
		return "terminating"
	case VerdictWrongPort:
		return "wrong port"
	case VerdictRemoved:
		return "removed"
	case VerdictServiceAddr:
		return "service address"
	case VerdictPodTerminating:
		return "pod terminating"
	case VerdictPodDeleted:
		return "pod deleted"
	case VerdictOtherService:
		return "other service"
	case VerdictPodNotEndpoint:
		return "pod not an endpoint"
	case VerdictNode:
		return "node"
	}
	return "verdict(" + strconv.Itoa(int(v)) + ")"
}

// EndpointStatus is the answer of Snapshot.EndpointState.
type EndpointStatus struct {
	Verdict Verdict
	// Ready is true when the address:port is a ready endpoint of the service now.
	Ready bool
	// Known is false when nothing in the snapshot knows the address.
	Known bool
	// Endpoint is the service's endpoint at the address (VerdictReady, NotReady,
	// Terminating, WrongPort).
	Endpoint *Endpoint
	// Former is set for VerdictRemoved.
	Former *FormerEndpoint
	// Pod owns the address: live, or deleted (Pod.Deleted) when no live pod does.
	Pod *Pod
	// Node owns the address (host-network endpoints, node addresses).
	Node *Node
	// Services are the other services the address is an endpoint of now ("namespace/name").
	Services []string
	// Until is when the address stopped being an endpoint of the service (VerdictRemoved) or
	// its pod was deleted (VerdictPodDeleted).
	Until time.Time
	// Detail says the same in words, e.g. "10.244.10.237 was pod default/x, deleted 2m ago".
	Detail string
}

// EndpointState tells whether addr:port/proto is a ready endpoint of svc now and, if not,
// what it is instead: a not-ready or terminating endpoint, an endpoint on other ports, a
// former endpoint, a service address, a terminating or deleted pod, another service's
// endpoint, a pod backing no service, a node, or nothing known. port 0 and proto 0 match any.
// Not for the hot path: it allocates.
func (s *Snapshot) EndpointState(svc *Service, addr netip.Addr, port uint16, proto uint8) EndpointStatus {
	addr = addr.Unmap()
	p := Protocol(proto)
	st := EndpointStatus{Known: true}
	st.Pod, _ = s.PodByAddr(addr)
	st.Node = s.nodeByAddr[addr]
	for _, r := range s.endpointsOf[addr] {
		if svc == nil || r.svc.Ref() != svc.Ref() {
			st.Services = append(st.Services, r.svc.String())
		}
	}
	a := addr.String()
	if port != 0 {
		a = netip.AddrPortFrom(addr, port).String()
	}
	if svc != nil {
		for i := range svc.Endpoints {
			ep := &svc.Endpoints[i]
			if ep.Addr != addr {
				continue
			}
			st.Endpoint = ep
			switch {
			case !ep.HasPort(port, p):
				st.Verdict = VerdictWrongPort
				st.Detail = a + " is an endpoint of " + svc.String() + " but only on " + portList(ep.Ports)
			case ep.Terminating:
				st.Verdict = VerdictTerminating
				st.Detail = a + " is a terminating endpoint of " + svc.String()
			case !ep.Ready:
				st.Verdict = VerdictNotReady
				st.Detail = a + " is an endpoint of " + svc.String() + " that is not ready"
			default:
				st.Verdict, st.Ready = VerdictReady, true
				st.Detail = a + " is a ready endpoint of " + svc.String()
			}
			return st
		}
		for i := range svc.FormerEndpoints {
			f := &svc.FormerEndpoints[i]
			if f.Addr != addr {
				continue
			}
			st.Verdict, st.Former, st.Until = VerdictRemoved, f, f.Until
			st.Detail = a + " " + formerText(svc.Ref(), f.Until)
			if st.Pod != nil && st.Pod.Deleted {
				st.Detail += "; pod " + st.Pod.String() + " deleted " + Age(s.at, st.Pod.DeletedAt) + " ago"
			}
			return st
		}
	}
	if an := s.byAddr[addr]; an != nil && an.vip != nil {
		st.Verdict = VerdictServiceAddr
		st.Detail = a + " is an address of service " + an.vip.Namespace + "/" + an.vip.Name + ", not of an endpoint"
		return st
	}
	if pod := s.podByAddr[addr]; pod != nil {
		switch {
		case pod.Terminating:
			st.Verdict = VerdictPodTerminating
			st.Detail = a + " is terminating pod " + pod.String()
		case len(st.Services) > 0:
			st.Verdict = VerdictOtherService
			st.Detail = a + " is pod " + pod.String() + ", an endpoint of " + strings.Join(st.Services, ", ")
		default:
			st.Verdict = VerdictPodNotEndpoint
			st.Detail = a + " is pod " + pod.String() + ", an endpoint of no service"
		}
		return st
	}
	if pod := s.deletedByAddr[addr]; pod != nil {
		st.Verdict, st.Until = VerdictPodDeleted, pod.DeletedAt
		st.Detail = a + " was pod " + pod.String() + ", deleted " + Age(s.at, pod.DeletedAt) + " ago"
		return st
	}
	if len(st.Services) > 0 {
		st.Verdict = VerdictOtherService
		st.Detail = a + " is an endpoint of " + strings.Join(st.Services, ", ")
		return st
	}
	if st.Node != nil {
		st.Verdict = VerdictNode
		st.Detail = a + " is node " + st.Node.Name
		return st
	}
	st.Known = false
	st.Detail = "nothing is known about " + a
	return st
}

func portList(ps []EndpointPort) string {
	var parts []string
	for _, p := range ps {
		s := strconv.Itoa(int(p.Port)) + "/" + p.Protocol.String()
		if p.Port == 0 {
			s = "any/" + p.Protocol.String()
		}
		if p.Name != "" {
			s += " (" + p.Name + ")"
		}
		parts = append(parts, s)
	}
	if len(parts) == 0 {
		return "no ports"
	}
	return strings.Join(parts, ", ")
}
