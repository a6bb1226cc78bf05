package lab

import (
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// Variant selects a flavour of a scenario; the zero value is the scenario's
// fault (or, for healthy, the plain setup).
type Variant string

// Variants.
const (
	VariantDefault Variant = ""
	// VariantFixed is the repaired setup: the same cluster with the fault's
	// fix applied; every check succeeds.
	VariantFixed Variant = "fixed"
	// VariantScaled runs three backend replicas (statistic-mode rules).
	VariantScaled Variant = "scaled"
	// VariantNoReadyEndpoints: the EndpointSlice really has no ready
	// endpoint (the backend fails its readiness probe).
	VariantNoReadyEndpoints Variant = "no-ready-endpoints"
	// VariantDetectLocal runs kube-proxy with clusterCIDR set, so it
	// short-circuits pod traffic to load balancer IPs.
	VariantDetectLocal Variant = "detect-local"
)

// Scenario is a ready-made lab.
type Scenario struct {
	Name        string
	Description string // one line, for "svctrace demo --list"
	Seed        string // incident story reproduced, "" if none
	Variants    []Variant
	build       func(Variant) Spec
}

// Spec builds the scenario's spec for a variant it supports.
func (sc Scenario) Spec(v Variant) (Spec, error) {
	if v != VariantDefault && !slices.Contains(sc.Variants, v) {
		return Spec{}, fmt.Errorf("scenario %s has no variant %q (has %v)", sc.Name, v, sc.Variants)
	}
	s := sc.build(v)
	s.Name, s.Seed, s.Variant = sc.Name, sc.Seed, v
	if s.Description == "" {
		s.Description = sc.Description
	}
	return s, nil
}

// Scenarios lists the ready-made scenarios.
func Scenarios() []Scenario {
	return []Scenario{
		{
			Name:        "healthy",
			Description: "one node, client pod and hostnames backend behind a ClusterIP (TCP 80, UDP 53); pods and the node itself get answers",
			Variants:    []Variant{VariantScaled},
			build:       healthy,
		},
		{
			Name:        "unreachable-backend",
			Description: "the endpoint is right but the node has no route to the backend pod: DNAT, then ICMP host unreachable (No route to host)",
			Variants:    []Variant{VariantFixed},
			build:       unreachableBackend,
		},
		{
			Name:        "stale-backend",
			Description: "backend pod replaced; the EndpointSlice has the new pod IP but kube-proxy still DNATs to the deleted pod's IP (No route to host)",
			Seed:        "000",
			Variants:    []Variant{VariantFixed},
			build:       staleBackend,
		},
		{
			Name:        "no-backend",
			Description: "the EndpointSlice has a ready endpoint but kube-proxy programs the Service as endpoint-less: REJECT (Connection refused)",
			Seed:        "001",
			Variants:    []Variant{VariantNoReadyEndpoints, VariantFixed},
			build:       noBackend,
		},
		{
			Name:        "wrong-source",
			Description: "two-NIC node: host traffic to the kubernetes ClusterIP takes eth1's source address; the apiserver cannot answer it (timeout)",
			Seed:        "002",
			Variants:    []Variant{VariantFixed},
			build:       wrongSource,
		},
		{
			Name:        "missing-masquerade",
			Description: "VXLAN overlay: node1's own traffic to a ClusterIP backed on node2 is DNATed but not masqueraded; node2's rp_filter drops it (timeout)",
			Seed:        "003",
			Variants:    []Variant{VariantFixed},
			build:       missingMasquerade,
		},
		{
			Name:        "no-local-endpoint",
			Description: "LoadBalancer with externalTrafficPolicy=Local, endpoints only on node2: a pod on node1 is dropped (has no local endpoints), node2 works",
			Seed:        "004",
			Variants:    []Variant{VariantFixed, VariantDetectLocal},
			build:       noLocalEndpoint,
		},
	}
}

// LookupScenario finds a scenario by name.
func LookupScenario(name string) (Scenario, error) {
	var names []string
	for _, sc := range Scenarios() {
		if sc.Name == name {
			return sc, nil
		}
		names = append(names, sc.Name)
	}
	return Scenario{}, fmt.Errorf("no scenario %q (have %s)", name, strings.Join(names, ", "))
}

// Healthy is the "healthy" scenario (variants: VariantScaled).
func Healthy(v Variant) (Spec, error) { return scenarioSpec("healthy", v) }

// UnreachableBackend is the "unreachable-backend" scenario (VariantFixed).
func UnreachableBackend(v Variant) (Spec, error) { return scenarioSpec("unreachable-backend", v) }

// StaleBackend is the "stale-backend" scenario, seed 000 (VariantFixed).
func StaleBackend(v Variant) (Spec, error) { return scenarioSpec("stale-backend", v) }

// NoBackend is the "no-backend" scenario, seed 001 (VariantNoReadyEndpoints,
// VariantFixed).
func NoBackend(v Variant) (Spec, error) { return scenarioSpec("no-backend", v) }

// WrongSource is the "wrong-source" scenario, seed 002 (VariantFixed).
func WrongSource(v Variant) (Spec, error) { return scenarioSpec("wrong-source", v) }

// MissingMasquerade is the "missing-masquerade" scenario, seed 003
// (VariantFixed).
func MissingMasquerade(v Variant) (Spec, error) { return scenarioSpec("missing-masquerade", v) }

// NoLocalEndpoint is the "no-local-endpoint" scenario, seed 004
// (VariantFixed, VariantDetectLocal).
func NoLocalEndpoint(v Variant) (Spec, error) { return scenarioSpec("no-local-endpoint", v) }

func scenarioSpec(name string, v Variant) (Spec, error) {
	sc, err := LookupScenario(name)
	if err != nil {
		return Spec{}, err
	}
	return sc.Spec(v)
}

// Addresses shared by the scenarios.
const (
	NodeNetworkCIDR   = "192.168.50.0/24"
	NodeGateway       = "192.168.50.1"
	HostnamesIP       = "10.96.0.10" // default/hostnames ClusterIP
	HostnamesPort     = 80           // TCP, port name "default"
	HostnamesUDPPort  = 53           // UDP, port name "dns"
	HostnamesTarget   = 9376
	KubernetesIP      = "10.96.0.1" // default/kubernetes ClusterIP
	APIServerIP       = "10.0.0.8"
	APIServerPort     = 6443
	IngressClusterIP  = "10.96.0.20"
	IngressLBIP       = "172.18.0.100"
	IngressNodePort   = 31080
	IngressHealthPort = 32080
)

// Pod names (Deployment-style, like the incident stories').
const (
	CurlPod       = "curl-69c656fd45-ztblt"
	HostnamesPod  = "hostnames-dd4cc9dd9-5k42b"
	HostnamesPod2 = "hostnames-dd4cc9dd9-8xq2m"
	HostnamesPod3 = "hostnames-dd4cc9dd9-t7wzl"
	// OldHostnamesPod is the replaced pod of stale-backend; it no longer
	// exists anywhere but in node1's rules.
	OldHostnamesPod = "hostnames-dd4cc9dd9-x8v2q"
	IngressPod      = "nginx-ingress-controller-7f9c6b8d5-k2x4z"
	FooPodNode1     = "foo-6d8f7c9b5-q7w2n"
	FooPodNode2     = "foo-6d8f7c9b5-m4t8r"
)

func nodesNetwork() NetworkSpec { return NetworkSpec{Name: "nodes", CIDR: NodeNetworkCIDR} }

// clusterNode is node<i>: 192.168.50.1<i> on eth0, pod CIDR 10.244.<i>.0/24.
func clusterNode(i int) NodeSpec {
	return NodeSpec{
		Name:           fmt.Sprintf("node%d", i),
		PodCIDR:        fmt.Sprintf("10.244.%d.0/24", i),
		NICs:           []NIC{{Name: "eth0", Network: "nodes", Address: fmt.Sprintf("192.168.50.%d/24", 10+i)}},
		DefaultGateway: NodeGateway,
	}
}

func deploymentPod(ns, name, node, ip string, ports ...corev1.ContainerPort) PodSpec {
	parts := strings.Split(name, "-")
	app := strings.Join(parts[:len(parts)-2], "-")
	return PodSpec{
		Namespace: ns, Name: name, Node: node, IP: ip,
		Labels: map[string]string{"app": app, "pod-template-hash": parts[len(parts)-2]},
		Ports:  ports,
	}
}

func curlPod(node, ip string) PodSpec {
	p := deploymentPod("default", CurlPod, node, ip)
	p.Image = "radial/busyboxplus:curl"
	return p
}

func hostnamesPod(name, node, ip string) PodSpec {
	p := deploymentPod("default", name, node, ip,
		corev1.ContainerPort{ContainerPort: HostnamesTarget, Protocol: corev1.ProtocolTCP},
		corev1.ContainerPort{ContainerPort: HostnamesTarget, Protocol: corev1.ProtocolUDP})
	p.Image = "mirrorgooglecontainers/serve_hostname"
	return p
}

func hostnamesService() ServiceSpec {
	return ServiceSpec{
		Namespace: "default", Name: "hostnames", ClusterIP: HostnamesIP,
		Selector: map[string]string{"app": "hostnames"},
		Ports: []ServicePortSpec{
			{Name: "default", Protocol: corev1.ProtocolTCP, Port: HostnamesPort, TargetPort: HostnamesTarget},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: HostnamesUDPPort, TargetPort: HostnamesTarget},
		},
	}
}

func addr(ip string, port int) string { return fmt.Sprintf("%s:%d", ip, port) }

const (
	hostnamesTCP = "10.96.0.10:80"
	hostnamesUDP = "10.96.0.10:53"
)

func answer(pods ...string) Expect { return Expect{Answers: pods} }

func fails(err error) Expect { return Expect{Err: err} }

// singleNode is node1 with the curl client and one hostnames backend.
func singleNode() Spec {
	return Spec{
		Proxy:    ProxyConfig{ClusterCIDR: DefaultClusterCIDR},
		Networks: []NetworkSpec{nodesNetwork()},
		Nodes:    []NodeSpec{clusterNode(1)},
		Pods: []PodSpec{
			curlPod("node1", "10.244.1.2"),
			hostnamesPod(HostnamesPod, "node1", "10.244.1.5"),
		},
		Services: []ServiceSpec{hostnamesService()},
	}
}

func healthy(v Variant) Spec {
	s := singleNode()
	backends := []string{HostnamesPod}
	if v == VariantScaled {
		s.Pods = append(s.Pods,
			hostnamesPod(HostnamesPod2, "node1", "10.244.1.6"),
			hostnamesPod(HostnamesPod3, "node1", "10.244.1.7"))
		backends = append(backends, HostnamesPod2, HostnamesPod3)
	}
	s.Outcome = "every client, pods and the node itself, gets the name of a hostnames pod over TCP and UDP"
	s.Checks = []Check{
		{Name: "pod to ClusterIP (tcp)", From: CurlPod, Network: "tcp", Address: hostnamesTCP, Expect: answer(backends...)},
		{Name: "pod to ClusterIP (udp)", From: CurlPod, Network: "udp", Address: hostnamesUDP, Expect: answer(backends...)},
		{Name: "node to ClusterIP (tcp)", From: "node1", Network: "tcp", Address: hostnamesTCP, Expect: answer(backends...)},
		{Name: "node to ClusterIP (udp)", From: "node1", Network: "udp", Address: hostnamesUDP, Expect: answer(backends...)},
		{Name: "pod to pod IP", From: CurlPod, Network: "tcp", Address: addr("10.244.1.5", HostnamesTarget), Expect: answer(HostnamesPod)},
	}
	return s
}

func unreachableBackend(v Variant) Spec {
	s := singleNode()
	if v != VariantFixed {
		// The CNI never installed the pod's /32 route on node1, so after
		// kube-proxy's DNAT the forward lookup hits node1's "unreachable
		// 10.244.1.0/24" route: ICMP host unreachable back to the client.
		s.Faults = []Fault{{Kind: FaultMissingPodRoute, Node: "node1", Pod: "default/" + HostnamesPod,
			Note: "node1 has no route to 10.244.1.5 (the CNI did not program it)"}}
		s.Outcome = "TCP to the ClusterIP fails at once with No route to host (ICMP host unreachable after DNAT to 10.244.1.5); " +
			"UDP times out (host unreachable is not a hard error for UDP sockets)"
		s.Checks = []Check{
			{Name: "pod to ClusterIP (tcp)", From: CurlPod, Network: "tcp", Address: hostnamesTCP, Expect: fails(ErrNoRoute)},
			{Name: "pod to ClusterIP (udp)", From: CurlPod, Network: "udp", Address: hostnamesUDP, Expect: fails(ErrTimeout)},
			{Name: "node to pod IP", From: "node1", Network: "tcp", Address: addr("10.244.1.5", HostnamesTarget), Expect: fails(ErrNoRoute)},
		}
		return s
	}
	s.Outcome = "the pod route is in place: the ClusterIP answers"
	s.Checks = []Check{
		{Name: "pod to ClusterIP (tcp)", From: CurlPod, Network: "tcp", Address: hostnamesTCP, Expect: answer(HostnamesPod)},
		{Name: "pod to ClusterIP (udp)", From: CurlPod, Network: "udp", Address: hostnamesUDP, Expect: answer(HostnamesPod)},
		{Name: "node to pod IP", From: "node1", Network: "tcp", Address: addr("10.244.1.5", HostnamesTarget), Expect: answer(HostnamesPod)},
	}
	return s
}

func staleBackend(v Variant) Spec {
	s := singleNode()
	// The replacement pod got a new IP; the old one (10.244.1.5) is gone
	// with its namespace and is in no manifest.
	s.Pods[1] = hostnamesPod(HostnamesPod, "node1", "10.244.1.6")
	direct := Check{Name: "pod to new pod IP", From: CurlPod, Network: "tcp", Address: addr("10.244.1.6", HostnamesTarget), Expect: answer(HostnamesPod)}
	if v != VariantFixed {
		s.Faults = []Fault{{Kind: FaultStaleEndpoints, Node: "node1", Service: "default/hostnames", Endpoints: []string{"10.244.1.5"},
			Note: "kube-proxy on node1 missed the EndpointSlice update after " + OldHostnamesPod + " (10.244.1.5) was replaced"}}
		s.Outcome = "curl hostnames: No route to host; KUBE-SEP still DNATs to the deleted pod's 10.244.1.5 while the EndpointSlice lists 10.244.1.6; the pod IP itself answers"
		s.Checks = []Check{
			{Name: "pod to ClusterIP (tcp)", From: CurlPod, Network: "tcp", Address: hostnamesTCP, Expect: fails(ErrNoRoute)},
			{Name: "pod to ClusterIP (udp)", From: CurlPod, Network: "udp", Address: hostnamesUDP, Expect: fails(ErrTimeout)},
			direct,
		}
		return s
	}
	s.Outcome = "kube-proxy caught up: the ClusterIP answers from the new pod"
	s.Checks = []Check{
		{Name: "pod to ClusterIP (tcp)", From: CurlPod, Network: "tcp", Address: hostnamesTCP, Expect: answer(HostnamesPod)},
		{Name: "pod to ClusterIP (udp)", From: CurlPod, Network: "udp", Address: hostnamesUDP, Expect: answer(HostnamesPod)},
		direct,
	}
	return s
}

func noBackend(v Variant) Spec {
	s := singleNode()
	direct := Check{Name: "pod to pod IP", From: CurlPod, Network: "tcp", Address: addr("10.244.1.5", HostnamesTarget), Expect: answer(HostnamesPod)}
	refused := []Check{
		{Name: "pod to ClusterIP (tcp)", From: CurlPod, Network: "tcp", Address: hostnamesTCP, Expect: fails(ErrConnRefused)},
		{Name: "pod to ClusterIP (udp)", From: CurlPod, Network: "udp", Address: hostnamesUDP, Expect: fails(ErrConnRefused)},
		{Name: "node to ClusterIP (tcp)", From: "node1", Network: "tcp", Address: hostnamesTCP, Expect: fails(ErrConnRefused)},
		direct,
	}
	switch v {
	case VariantNoReadyEndpoints:
		s.Pods[1].NotReady = true
		s.Outcome = "the backend fails its readiness probe, so the EndpointSlice has no ready endpoint and kube-proxy REJECTs: Connection refused (the pod IP still answers)"
		s.Checks = refused
	case VariantFixed:
		s.Outcome = "kube-proxy programs the ready endpoint: the ClusterIP answers"
		s.Checks = []Check{
			{Name: "pod to ClusterIP (tcp)", From: CurlPod, Network: "tcp", Address: hostnamesTCP, Expect: answer(HostnamesPod)},
			{Name: "pod to ClusterIP (udp)", From: CurlPod, Network: "udp", Address: hostnamesUDP, Expect: answer(HostnamesPod)},
			{Name: "node to ClusterIP (tcp)", From: "node1", Network: "tcp", Address: hostnamesTCP, Expect: answer(HostnamesPod)},
			direct,
		}
	default:
		s.Faults = []Fault{{Kind: FaultDataplaneNoEndpoints, Node: "node1", Service: "default/hostnames",
			Note: "kube-proxy on node1 stopped syncing and still has the Service without endpoints"}}
		s.Outcome = "the EndpointSlice has a ready endpoint, but node1's filter KUBE-SERVICES REJECTs the ClusterIP (\"has no endpoints\"): Connection refused; the pod IP answers"
		s.Checks = refused
	}
	return s
}

func wrongSource(v Variant) Spec {
	node := NodeSpec{
		Name:    "node1",
		PodCIDR: "10.244.1.0/24",
		NICs: []NIC{
			{Name: "eth0", Network: "mgmt", Address: "10.0.0.12/24"},
			{Name: "eth1", Network: "biz", Address: "10.141.13.182/24"},
		},
		// The change that broke it: the default route now leaves through
		// eth1, a network the masters cannot reach back to.
		DefaultGateway: "10.141.13.1",
	}
	if v == VariantFixed {
		// "ip r add <service CIDR> dev eth0": source selection for ClusterIPs
		// now picks eth0's 10.0.0.12.
		node.Routes = []RouteSpec{{Dst: DefaultServiceCIDR, Dev: "eth0"}}
	}
	s := Spec{
		// No local-traffic detector: kube-proxy writes no "! -s <cluster
		// CIDR> -j KUBE-MARK-MASQ", as in the story's rules, so the node's
		// own traffic keeps the source address chosen by connect().
		Proxy:    ProxyConfig{},
		Networks: []NetworkSpec{{Name: "mgmt", CIDR: "10.0.0.0/24"}, {Name: "biz", CIDR: "10.141.13.0/24"}},
		Nodes:    []NodeSpec{node},
		Hosts: []HostSpec{{
			// kube-apiserver on a master that only knows 10.0.0.0/24: no
			// route back to 10.141.13.0/24.
			Name:    "master1",
			NICs:    []NIC{{Name: "eth0", Network: "mgmt", Address: APIServerIP + "/24"}},
			Servers: []ServerSpec{{Protocol: corev1.ProtocolTCP, Port: APIServerPort}},
		}},
		Services: []ServiceSpec{{
			Namespace: "default", Name: "kubernetes", ClusterIP: KubernetesIP,
			Ports:     []ServicePortSpec{{Name: "https", Protocol: corev1.ProtocolTCP, Port: 443, TargetPort: APIServerPort}},
			Endpoints: []EndpointSpec{{IP: APIServerIP}},
		}},
	}
	direct := Check{Name: "node to apiserver directly", From: "node1", Network: "tcp", Address: addr(APIServerIP, APIServerPort), Expect: answer("master1")}
	if v == VariantFixed {
		s.Outcome = "with 10.96.0.0/12 routed via eth0 the node sources ClusterIP traffic from 10.0.0.12 and the apiserver answers"
		// In IPVS mode the ClusterIP is a local address (kube-ipvs0): the
		// node sources its own ClusterIP traffic from the ClusterIP itself,
		// whatever the routes say, so the route fix does not help there
		// (kube-proxy's masquerade rule for off-cluster sources does).
		stillBroken := fails(ErrTimeout)
		s.Checks = []Check{
			{Name: "node to kubernetes ClusterIP", From: "node1", Network: "tcp", Address: addr(KubernetesIP, 443), Expect: answer("master1"), IPVS: &stillBroken},
			direct,
		}
		return s
	}
	s.Outcome = "the node's connection to 10.96.0.1:443 times out: source 10.141.13.182 (default route via eth1), DNAT to 10.0.0.8:6443 out eth0, no way back; the apiserver itself answers, and so does the ClusterIP when bound to 10.0.0.12"
	s.Checks = []Check{
		{Name: "node to kubernetes ClusterIP", From: "node1", Network: "tcp", Address: addr(KubernetesIP, 443), Expect: fails(ErrTimeout)},
		direct,
		{Name: "node to ClusterIP from 10.0.0.12", From: "node1", Network: "tcp", Address: addr(KubernetesIP, 443), Source: "10.0.0.12", Expect: answer("master1")},
	}
	return s
}

func missingMasquerade(v Variant) Spec {
	node2 := clusterNode(2)
	// Strict reverse-path filtering, the CentOS 7 default of the story's
	// era. Why node1's own traffic dies: connect() picks 192.168.50.11 (the
	// default route's source), OUTPUT DNATs 10.96.0.10:80 to 10.244.2.5:9376
	// on node2, and nothing masquerades it (kube-proxy without a local
	// traffic detector writes no "! -s 10.244.0.0/16 -j KUBE-MARK-MASQ").
	// The inner packet leaves flannel.1 with source 192.168.50.11, node2
	// receives it on flannel.1 while its route back to 192.168.50.11 is via
	// eth0: rp_filter=1 drops it before routing. Pod sources (10.244.1.0/24,
	// routed via flannel.1) and masqueraded traffic (source flannel.1's
	// 10.244.1.0) pass.
	node2.RPFilter = RPFilterStrict
	s := Spec{
		Overlay:  OverlayVXLAN,
		Networks: []NetworkSpec{nodesNetwork()},
		Nodes:    []NodeSpec{clusterNode(1), node2},
		Pods: []PodSpec{
			curlPod("node1", "10.244.1.2"),
			hostnamesPod(HostnamesPod, "node2", "10.244.2.5"),
		},
		Services: []ServiceSpec{hostnamesService()},
	}
	podCheck := Check{Name: "pod on node1 to ClusterIP", From: CurlPod, Network: "tcp", Address: hostnamesTCP, Expect: answer(HostnamesPod)}
	directCheck := Check{Name: "node1 to pod IP", From: "node1", Network: "tcp", Address: addr("10.244.2.5", HostnamesTarget), Expect: answer(HostnamesPod)}
	node2Check := Check{Name: "node2 to ClusterIP", From: "node2", Network: "tcp", Address: hostnamesTCP, Expect: answer(HostnamesPod)}
	if v == VariantFixed {
		s.Proxy = ProxyConfig{ClusterCIDR: DefaultClusterCIDR}
		s.Outcome = "kube-proxy with clusterCIDR masquerades off-pod traffic: node1's packet leaves flannel.1 from 10.244.1.0 and node2 accepts it"
		s.Checks = []Check{
			{Name: "node1 to ClusterIP", From: "node1", Network: "tcp", Address: hostnamesTCP, Expect: answer(HostnamesPod)},
			podCheck, directCheck, node2Check,
		}
		return s
	}
	s.Outcome = "node1's own connection to the ClusterIP times out (unmasqueraded 192.168.50.11 source dropped by node2's rp_filter); pods on node1, node1 to the pod IP and node2 work"
	s.Checks = []Check{
		{Name: "node1 to ClusterIP", From: "node1", Network: "tcp", Address: hostnamesTCP, Expect: fails(ErrTimeout)},
		podCheck, directCheck, node2Check,
	}
	return s
}

func noLocalEndpoint(v Variant) Spec {
	svc := ServiceSpec{
		Namespace: "kube-system", Name: "nginx-ingress-lb", Type: corev1.ServiceTypeLoadBalancer,
		ClusterIP: IngressClusterIP,
		Selector:  map[string]string{"app": "nginx-ingress-controller"},
		Ports: []ServicePortSpec{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80, TargetPort: 80,
			NodePort: IngressNodePort}},
		ExternalTrafficPolicy: corev1.ServiceExternalTrafficPolicyLocal,
		HealthCheckNodePort:   IngressHealthPort,
		LoadBalancerIP:        IngressLBIP,
	}
	s := Spec{
		Networks: []NetworkSpec{nodesNetwork()},
		Nodes:    []NodeSpec{clusterNode(1), clusterNode(2)},
		Pods: []PodSpec{
			deploymentPod("kube-system", IngressPod, "node2", "10.244.2.5",
				corev1.ContainerPort{Name: "http", ContainerPort: 80, Protocol: corev1.ProtocolTCP}),
			deploymentPod("default", FooPodNode1, "node1", "10.244.1.5"),
			deploymentPod("default", FooPodNode2, "node2", "10.244.2.6"),
		},
	}
	s.Pods[0].Image = "registry.k8s.io/ingress-nginx/controller:v1.12.1"
	lb := addr(IngressLBIP, 80)
	node2Check := Check{Name: "pod on node2 to LB IP", From: FooPodNode2, Network: "tcp", Address: lb, Expect: answer(IngressPod)}
	clusterIPCheck := Check{Name: "pod on node1 to ClusterIP", From: FooPodNode1, Network: "tcp", Address: addr(IngressClusterIP, 80), Expect: answer(IngressPod)}
	hostCheck := Check{Name: "node1 to LB IP", From: "node1", Network: "tcp", Address: lb, Expect: answer(IngressPod)}
	// In IPVS mode the LB IP is a virtual server on node1's kube-ipvs0 with
	// only node1's (no) endpoints as real servers: every client on node1,
	// the node included, is refused (the incident's "Connection refused").
	refused := fails(ErrConnRefused)
	localHostCheck := hostCheck
	localHostCheck.IPVS = &refused
	switch v {
	case VariantFixed:
		svc.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
		svc.HealthCheckNodePort = 0
		s.Outcome = "externalTrafficPolicy=Cluster (the story's fix): KUBE-EXT masquerades and jumps to KUBE-SVC, node1's pods reach node2's endpoint"
		s.Checks = []Check{
			{Name: "pod on node1 to LB IP", From: FooPodNode1, Network: "tcp", Address: lb, Expect: answer(IngressPod)},
			node2Check, clusterIPCheck, hostCheck,
		}
	case VariantDetectLocal:
		s.Proxy = ProxyConfig{ClusterCIDR: DefaultClusterCIDR}
		s.Outcome = "kube-proxy with clusterCIDR short-circuits pod traffic to the LB IP (\"pod traffic for ... external destinations\" -> KUBE-SVC): node1's pods work"
		s.Checks = []Check{
			{Name: "pod on node1 to LB IP", From: FooPodNode1, Network: "tcp", Address: lb, Expect: answer(IngressPod)},
			node2Check, clusterIPCheck, hostCheck,
		}
	default:
		// kube-proxy without a local traffic detector: pod traffic to the LB
		// IP is not short-circuited, falls through KUBE-EXT (no local
		// endpoints on node1, so no jump to KUBE-SVL) and is dropped by the
		// filter rule "... has no local endpoints". In the story (IPVS
		// mode) the LB IP sat on kube-ipvs0 and the client saw Connection
		// refused; in iptables mode it is a DROP, so a timeout.
		s.Outcome = "a pod on node1 connecting to the LB IP 172.18.0.100 times out (KUBE-EXTERNAL-SERVICES DROP \"has no local endpoints\"); the same from node2, the ClusterIP and node1 itself work"
		s.Checks = []Check{
			{Name: "pod on node1 to LB IP", From: FooPodNode1, Network: "tcp", Address: lb, Expect: fails(ErrTimeout), IPVS: &refused},
			node2Check, clusterIPCheck, localHostCheck,
		}
	}
	s.Services = []ServiceSpec{svc}
	return s
}
