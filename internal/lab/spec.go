package lab

import (
	"time"

	corev1 "k8s.io/api/core/v1"
)

// Defaults used when a Spec leaves the field empty.
const (
	DefaultServiceCIDR = "10.96.0.0/12"
	DefaultClusterCIDR = "10.244.0.0/16"

	// PodGateway is the link-local gateway every pod routes through (Calico
	// style); the node side of the pod's veth answers ARP for it with
	// proxy_arp.
	PodGateway = "169.254.1.1"

	// VXLANDevice, VXLANID and VXLANPort describe the flannel-style overlay.
	VXLANDevice = "flannel.1"
	VXLANID     = 1
	VXLANPort   = 8472

	// MasqueradeMark is kube-proxy's default masquerade mark (bit 14).
	MasqueradeMark = "0x4000"
)

// ProxyMode selects how a node's service rules are written.
type ProxyMode string

// Proxy modes.
const (
	// ProxyIPTables writes kube-proxy's iptables-mode rules with
	// iptables-restore.
	ProxyIPTables ProxyMode = "iptables"
	// ProxyIPVS is reserved for kube-proxy's IPVS mode (ipvsadm plus a
	// kube-ipvs0 dummy device); it needs the ip_vs module.
	ProxyIPVS ProxyMode = "ipvs"
	// ProxyNone writes no service rules: something else programs the
	// nodes (the real kube-proxy in the Kubernetes API tests).
	ProxyNone ProxyMode = "none"
)

// Overlay selects how pod traffic crosses nodes.
type Overlay string

// Overlays.
const (
	// OverlayHostGW routes each peer node's pod CIDR via the peer's node IP.
	OverlayHostGW Overlay = "host-gw"
	// OverlayVXLAN builds a flannel-style VXLAN device on every node.
	OverlayVXLAN Overlay = "vxlan"
)

// RPFilter is a node's net.ipv4.conf.all.rp_filter setting.
type RPFilter string

// Reverse-path filter settings.
const (
	RPFilterLoose  RPFilter = "loose" // 2, the default (systemd's)
	RPFilterStrict RPFilter = "strict"
	RPFilterOff    RPFilter = "off"
)

// PodCIDRRoute is the route type a node installs for its whole pod CIDR,
// underneath the per-pod /32 routes.
type PodCIDRRoute string

// Pod CIDR route types.
const (
	// PodCIDRUnreachable (the default) is like Calico's per-block blackhole
	// route, but answers with ICMP host-unreachable, so traffic to a pod IP
	// of this node that has no /32 route fails fast with "No route to host".
	PodCIDRUnreachable PodCIDRRoute = "unreachable"
	// PodCIDRBlackhole drops such traffic silently, exactly like Calico.
	PodCIDRBlackhole PodCIDRRoute = "blackhole"
	// PodCIDRNone installs nothing: such traffic follows the default route.
	PodCIDRNone PodCIDRRoute = "none"
)

// Spec declares a lab. Fields marked "set by Up" are filled in on the copy
// returned by Lab.Spec and are ignored on input.
type Spec struct {
	Name        string
	Description string
	// Seed names the incident story the scenario reproduces ("000".."004").
	Seed    string
	Variant Variant
	// Outcome is a one-line description of what the client sees.
	Outcome string

	ServiceCIDR string // default DefaultServiceCIDR
	ClusterCIDR string // pod network, default DefaultClusterCIDR
	Overlay     Overlay
	Proxy       ProxyConfig

	Networks []NetworkSpec
	Nodes    []NodeSpec
	Hosts    []HostSpec
	Pods     []PodSpec
	Services []ServiceSpec
	Faults   []Fault
	Checks   []Check
}

// ProxyConfig is the kube-proxy configuration shared by all nodes (the
// kube-system/kube-proxy ConfigMap).
type ProxyConfig struct {
	Mode ProxyMode // default ProxyIPTables
	// ClusterCIDR is kube-proxy's clusterCIDR. With it, kube-proxy's local
	// traffic detector is implemented ("-s <cidr>" means "from a pod"): it
	// masquerades off-pod traffic to ClusterIPs ("! -s <cidr> -j
	// KUBE-MARK-MASQ") and short-circuits pod traffic to external IPs of
	// externalTrafficPolicy=Local services. Empty means no detector, which is
	// kube-proxy's behaviour when --cluster-cidr is not set.
	ClusterCIDR string
	// MasqueradeAll is kube-proxy's masqueradeAll.
	MasqueradeAll bool
}

// NetworkSpec is an L2 segment (a bridge in its own namespace).
type NetworkSpec struct {
	Name string
	CIDR string // e.g. "192.168.50.0/24", used for validation and manifests

	Netns string // set by Up: the switch namespace
}

// NIC attaches a node or host to a network.
type NIC struct {
	Name    string // interface name inside the node or host, e.g. "eth0"
	Network string // NetworkSpec.Name
	Address string // CIDR, e.g. "192.168.50.11/24"
}

// RouteSpec is an extra route ("ip route add <Dst> [via <Via>] [dev <Dev>]"
// or "ip route add <Type> <Dst>").
type RouteSpec struct {
	Dst  string // CIDR or "default"
	Via  string
	Dev  string
	Type string // "", "unreachable", "blackhole", "prohibit"
}

// NodeSpec is a Kubernetes node running kube-proxy.
type NodeSpec struct {
	Name    string
	PodCIDR string
	// NICs; the first one is the node's InternalIP and carries the overlay.
	NICs           []NIC
	DefaultGateway string // "default via <gw>" through the NIC on its network
	Routes         []RouteSpec
	RPFilter       RPFilter     // default RPFilterLoose
	PodCIDRRoute   PodCIDRRoute // default PodCIDRUnreachable

	Netns      string // set by Up
	InternalIP string // set by Up
	VTEPMAC    string // set by Up (VXLAN overlay only)
}

// HostSpec is a machine that is not a Kubernetes node (e.g. a host running
// kube-apiserver outside the cluster network).
type HostSpec struct {
	Name           string
	NICs           []NIC
	DefaultGateway string
	Routes         []RouteSpec
	RPFilter       RPFilter // default RPFilterOff
	Servers        []ServerSpec

	Netns string // set by Up
}

// ServerSpec is an in-process server on a host; it answers with Answer
// (default: the host's name).
type ServerSpec struct {
	Protocol corev1.Protocol
	Port     int32
	Answer   string
}

// PodSpec is a pod. Its servers listen on every container port and answer
// with the pod's name.
type PodSpec struct {
	Namespace string // default "default"
	Name      string
	Node      string
	IP        string
	Labels    map[string]string
	Image     string
	Ports     []corev1.ContainerPort
	// NotReady marks the pod as running but failing its readiness probe.
	NotReady bool
	// Terminating marks the pod as being deleted (still serving).
	Terminating bool

	Netns    string // set by Up
	HostVeth string // set by Up: the node-side veth (cali...)
}

// ServiceSpec is a Service. A Service with a Selector gets its endpoints
// from the matching pods; one without gets Endpoints (a manually managed
// EndpointSlice, like default/kubernetes).
type ServiceSpec struct {
	Namespace             string
	Name                  string
	Type                  corev1.ServiceType // default ClusterIP
	ClusterIP             string
	Selector              map[string]string
	Ports                 []ServicePortSpec
	ExternalTrafficPolicy corev1.ServiceExternalTrafficPolicy // default Cluster for NodePort/LoadBalancer
	InternalTrafficPolicy corev1.ServiceInternalTrafficPolicy // default Cluster
	LoadBalancerIP        string                              // status.loadBalancer.ingress[0].ip
	HealthCheckNodePort   int32
	Endpoints             []EndpointSpec
	// EndpointSliceName defaults to "<name>-<5 chars>" (or "<name>" for a
	// selector-less Service).
	EndpointSliceName string
}

// ServicePortSpec is one port of a Service.
type ServicePortSpec struct {
	Name       string
	Protocol   corev1.Protocol // default TCP
	Port       int32
	TargetPort int32
	NodePort   int32
}

// EndpointSpec is an endpoint of a selector-less Service.
type EndpointSpec struct {
	IP       string
	NodeName string
	NotReady bool
}

// FaultKind names a divergence between the cluster's truth and a node's
// dataplane.
type FaultKind string

// Fault kinds.
const (
	// FaultStaleEndpoints: the node's kube-proxy still programs
	// Fault.Endpoints (IPs, at the service's target ports) for Fault.Service
	// instead of what the EndpointSlice says (kube-proxy stopped syncing).
	FaultStaleEndpoints FaultKind = "stale-endpoints"
	// FaultDataplaneNoEndpoints: the node's kube-proxy programs Fault.Service
	// as having no endpoints although the EndpointSlice has ready ones.
	FaultDataplaneNoEndpoints FaultKind = "dataplane-no-endpoints"
	// FaultMissingPodRoute: the node has no /32 route to Fault.Pod (the CNI
	// failed to program it); its pod CIDR route catches the traffic.
	FaultMissingPodRoute FaultKind = "missing-pod-route"
)

// Fault is a deliberate divergence; Node "" means every node.
type Fault struct {
	Kind      FaultKind
	Node      string
	Service   string // "namespace/name"
	Pod       string // "namespace/name" or name in "default"
	Endpoints []string
	Note      string
}

// Check is one probe a scenario expects a client to see.
type Check struct {
	Name    string
	From    string // node, host or pod name (or a netns name)
	Network string // "tcp" or "udp"
	Address string // "10.96.0.10:80"
	Source  string // optional local address to bind: "ip", "ip:port" or ":port"
	Timeout time.Duration
	Expect  Expect
	// IPVS, when set, is the expectation in kube-proxy's IPVS mode where it
	// differs (IPVS refuses what iptables mode drops, for example).
	IPVS *Expect
}

// Expected returns the check's expectation under a proxy mode.
func (c Check) Expected(mode ProxyMode) Expect {
	if mode == ProxyIPVS && c.IPVS != nil {
		return *c.IPVS
	}
	return c.Expect
}

// Expect is a probe's expected outcome: an answer, or an error matching Err
// with errors.Is (ErrConnRefused, ErrNoRoute, ErrTimeout, ...).
type Expect struct {
	Answers []string // any of these; empty means any answer
	Err     error
}

// String describes the expectation.
func (e Expect) String() string {
	if e.Err != nil {
		return "error: " + e.Err.Error()
	}
	switch len(e.Answers) {
	case 0:
		return "any answer"
	case 1:
		return "answer " + e.Answers[0]
	default:
		s := "answer one of"
		for _, a := range e.Answers {
			s += " " + a
		}
		return s
	}
}
