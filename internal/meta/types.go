package meta

import (
	"net/netip"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Protocol is an IP protocol number as the kernel sees it (IPPROTO_*).
type Protocol uint8

// Protocols a Service port can use. ProtoAny (0) is a wildcard in filters and lookups.
const (
	ProtoAny  Protocol = 0
	ProtoTCP  Protocol = 6
	ProtoUDP  Protocol = 17
	ProtoSCTP Protocol = 132
)

// String returns "TCP", "UDP", "SCTP", "any" or "proto(N)".
func (p Protocol) String() string {
	switch p {
	case ProtoAny:
		return "any"
	case ProtoTCP:
		return "TCP"
	case ProtoUDP:
		return "UDP"
	case ProtoSCTP:
		return "SCTP"
	}
	return "proto(" + strconv.Itoa(int(p)) + ")"
}

// protocolOf converts a Kubernetes protocol; empty means TCP, as the API defaults it.
func protocolOf(p corev1.Protocol) (Protocol, bool) {
	switch p {
	case corev1.ProtocolTCP, "":
		return ProtoTCP, true
	case corev1.ProtocolUDP:
		return ProtoUDP, true
	case corev1.ProtocolSCTP:
		return ProtoSCTP, true
	}
	return ProtoAny, false
}

// ObjectRef names a namespaced object. The zero value means "none".
type ObjectRef struct {
	Namespace string
	Name      string
}

// IsZero reports whether r names nothing.
func (r ObjectRef) IsZero() bool { return r.Name == "" }

// String returns "namespace/name", or "" for the zero ref.
func (r ObjectRef) String() string {
	if r.IsZero() {
		return ""
	}
	return r.Namespace + "/" + r.Name
}

// Service is the tracer's view of a Kubernetes Service and its endpoints.
// Values returned by a Snapshot are shared: treat them as read-only.
type Service struct {
	Namespace string
	Name      string
	Type      corev1.ServiceType
	// ClusterIPs are the virtual IPs (one per IP family); empty for headless and ExternalName services.
	ClusterIPs []netip.Addr
	// Headless is true when spec.clusterIP is "None".
	Headless bool
	Ports    []ServicePort
	// ExternalIPs are spec.externalIPs.
	ExternalIPs []netip.Addr
	// LoadBalancerIPs are the IPs in status.loadBalancer.ingress (hostname-only ingresses are skipped).
	LoadBalancerIPs       []netip.Addr
	ExternalTrafficPolicy corev1.ServiceExternalTrafficPolicy
	// InternalTrafficPolicy is spec.internalTrafficPolicy, "" when unset.
	InternalTrafficPolicy corev1.ServiceInternalTrafficPolicy
	// HealthCheckNodePort is spec.healthCheckNodePort (LoadBalancer with externalTrafficPolicy Local).
	HealthCheckNodePort uint16
	// PublishNotReadyAddresses is spec.publishNotReadyAddresses.
	PublishNotReadyAddresses bool
	// Selector is true when the Service has a pod selector; selector-less services get their
	// endpoints from hand-made EndpointSlices (like default/kubernetes).
	Selector bool
	// SelectorLabels is spec.selector (nil when Selector is false).
	SelectorLabels map[string]string
	// ExternalName is spec.externalName for ExternalName services.
	ExternalName string
	// Endpoints come from the EndpointSlices labelled kubernetes.io/service-name=Name in
	// Namespace, IPv4 and IPv6, deduplicated by address and sorted by address.
	Endpoints []Endpoint
	// FormerEndpoints are addresses that stopped being endpoints within the retention window
	// and are not endpoints now, sorted by address.
	FormerEndpoints []FormerEndpoint
}

// Ref returns the Service's namespace/name.
func (s *Service) Ref() ObjectRef { return ObjectRef{s.Namespace, s.Name} }

// String returns "namespace/name".
func (s *Service) String() string { return s.Namespace + "/" + s.Name }

// ServicePort is one entry of spec.ports.
type ServicePort struct {
	Name     string
	Protocol Protocol
	Port     uint16
	// TargetPort is spec.ports[].targetPort as written: a number or a container port name.
	TargetPort intstr.IntOrString
	// TargetPorts are the target port numbers actually in use: resolved per endpoint from the
	// EndpointSlice ports of the same name (distinct, ascending). When there are no endpoints
	// and TargetPort is a number, it holds that number.
	TargetPorts []uint16
	// NodePort is 0 unless the Service is of type NodePort or LoadBalancer.
	NodePort uint16
}

// Endpoint is one address of a Service's EndpointSlices.
type Endpoint struct {
	Addr netip.Addr
	// Ports are the slice's ports, which carry the service port names and resolved target ports.
	// Port 0 means "all ports" (a slice port with no number).
	Ports       []EndpointPort
	Ready       bool
	Serving     bool
	Terminating bool
	NodeName    string
	// PodRef is set when the endpoint's targetRef is a Pod.
	PodRef ObjectRef
	Zone   string
	// Slice is the name of the EndpointSlice the endpoint was read from.
	Slice string
}

// PortFor returns the endpoint port serving service port sp (same name and protocol).
func (e *Endpoint) PortFor(sp ServicePort) (EndpointPort, bool) {
	for _, p := range e.Ports {
		if p.Name == sp.Name && p.Protocol == sp.Protocol {
			return p, true
		}
	}
	return EndpointPort{}, false
}

// HasPort reports whether the endpoint listens on port/proto; 0 in either is a wildcard.
func (e *Endpoint) HasPort(port uint16, proto Protocol) bool {
	return matchPorts(e.Ports, port, proto)
}

func matchPorts(ports []EndpointPort, port uint16, proto Protocol) bool {
	for _, p := range ports {
		if (port == 0 || p.Port == 0 || p.Port == port) && (proto == ProtoAny || p.Protocol == proto) {
			return true
		}
	}
	return false
}

// EndpointPort is one port of an EndpointSlice; Name matches a ServicePort's Name.
type EndpointPort struct {
	Name     string
	Port     uint16
	Protocol Protocol
}

// FormerEndpoint is an address that was an endpoint of a Service until Until.
type FormerEndpoint struct {
	Addr     netip.Addr
	Ports    []EndpointPort
	NodeName string
	PodRef   ObjectRef
	Until    time.Time
}

// Pod is the tracer's slim view of a Pod, live or recently deleted.
type Pod struct {
	Namespace string
	Name      string
	UID       string
	NodeName  string
	// HostNetwork pods share their node's addresses.
	HostNetwork bool
	// IPs are status.podIPs (status.podIP when podIPs is empty).
	IPs []netip.Addr
	// HostIPs are status.hostIPs (status.hostIP when hostIPs is empty).
	HostIPs []netip.Addr
	Phase   corev1.PodPhase
	// Ready is the pod's Ready condition; without one, whether Phase is Running.
	Ready bool
	// Terminating is true when metadata.deletionTimestamp is set.
	Terminating bool
	Labels      map[string]string
	// Owner is the controlling owner as "Kind/name", e.g. "ReplicaSet/hostnames-dd4cc9dd9".
	Owner string
	Ports []ContainerPort
	// Deleted is true for a pod that no longer exists; DeletedAt says when it went away.
	Deleted   bool
	DeletedAt time.Time
	// CreatedAt is metadata.creationTimestamp.
	CreatedAt time.Time
}

// Ref returns the Pod's namespace/name.
func (p *Pod) Ref() ObjectRef { return ObjectRef{p.Namespace, p.Name} }

// String returns "namespace/name".
func (p *Pod) String() string { return p.Namespace + "/" + p.Name }

// HasPort reports whether a container of the pod declares port/proto (0 = any).
func (p *Pod) HasPort(port uint16, proto Protocol) bool {
	for _, cp := range p.Ports {
		if (port == 0 || cp.Port == port) && (proto == ProtoAny || cp.Protocol == proto) {
			return true
		}
	}
	return false
}

// ContainerPort is a port declared by one of a Pod's containers.
type ContainerPort struct {
	Name     string
	Port     uint16
	Protocol Protocol
	// HostPort is 0 unless the port is also exposed on the node.
	HostPort uint16
}

// Node is the tracer's slim view of a Node.
type Node struct {
	Name        string
	InternalIPs []netip.Addr
	ExternalIPs []netip.Addr
	PodCIDRs    []netip.Prefix
	// Ready is the node's Ready condition; true when the object has none.
	Ready bool
	// Zone is the topology.kubernetes.io/zone label.
	Zone string
}

// Addrs returns the node's internal then external addresses.
func (n *Node) Addrs() []netip.Addr {
	out := make([]netip.Addr, 0, len(n.InternalIPs)+len(n.ExternalIPs))
	out = append(out, n.InternalIPs...)
	return append(out, n.ExternalIPs...)
}
