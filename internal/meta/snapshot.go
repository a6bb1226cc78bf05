package meta

import (
	"net/netip"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/duration"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Snapshot is an immutable, indexed view of Services, EndpointSlices, Pods and Nodes at one
// time. All methods are safe for concurrent use. Pointers it returns are shared with the
// snapshot and must not be modified.
type Snapshot struct {
	// Warnings lists what was ignored or could not be parsed while building the snapshot
	// (ignored kinds with counts, bad addresses, ...). Informational only.
	Warnings []string

	at          time.Time
	services    map[ObjectRef]*Service
	serviceList []*Service
	nodes       []*Node
	nodeByName  map[string]*Node
	nodeByAddr  map[netip.Addr]*Node
	pods        []*Pod
	podByRef    map[ObjectRef]*Pod
	deletedPods []*Pod
	// podByAddr holds the best live non-host-network pod of each pod IP.
	podByAddr map[netip.Addr]*Pod
	// deletedByAddr holds the most recently deleted non-host-network pod of each pod IP.
	deletedByAddr map[netip.Addr]*Pod
	// endpointsOf lists, for each address, the services it is an endpoint of now.
	endpointsOf map[netip.Addr][]endpointRef

	// Name index.
	byPort    map[addrPortKey]*Name
	byAddr    map[netip.Addr]*addrNames
	nodePorts map[portKey]*Name
}

type endpointRef struct {
	svc *Service
	ep  *Endpoint
}

type addrPortKey struct {
	addr  netip.Addr
	port  uint16
	proto Protocol
}

type portKey struct {
	port  uint16
	proto Protocol
}

// addrNames are the port-independent names of one address, tried in field order.
type addrNames struct {
	vip      *Name
	node     *Name
	pod      *Name
	deleted  *Name
	endpoint *Name
	former   *Name
}

// NewSnapshot builds a Snapshot from Services, EndpointSlices, Pods and Nodes with a zero
// Builder; objects of other types are skipped and counted in Warnings.
func NewSnapshot(objs ...runtime.Object) *Snapshot {
	var b Builder
	skipped := map[string]int{}
	for _, o := range objs {
		if err := b.Upsert(o); err != nil {
			skipped[kindOf(o)]++
		}
	}
	s := b.Build()
	s.Warnings = append(s.Warnings, ignoredWarnings(skipped)...)
	return s
}

// Time returns the time the snapshot was built at, by its Builder's clock. Deletion ages in
// Name details are relative to it.
func (s *Snapshot) Time() time.Time { return s.at }

// Service returns the Service namespace/name (an empty namespace means "default", as for
// kubectl). For an unknown one the error is an
// *UnknownServiceError, which matches ErrUnknownService with errors.Is and suggests near names.
func (s *Snapshot) Service(namespace, name string) (*Service, error) {
	if svc := s.services[ObjectRef{defaultNamespace(namespace), name}]; svc != nil {
		return svc, nil
	}
	return nil, s.unknownService(defaultNamespace(namespace), name)
}

// Services returns all Services sorted by namespace/name.
func (s *Snapshot) Services() []*Service { return s.serviceList }

// Nodes returns all Nodes sorted by name.
func (s *Snapshot) Nodes() []*Node { return s.nodes }

// Node returns the Node called name.
func (s *Snapshot) Node(name string) (*Node, bool) {
	n, ok := s.nodeByName[name]
	return n, ok
}

// NodeByAddr returns the Node that has addr among its InternalIP/ExternalIP addresses.
func (s *Snapshot) NodeByAddr(addr netip.Addr) (*Node, bool) {
	n, ok := s.nodeByAddr[addr.Unmap()]
	return n, ok
}

// Pods returns the live Pods sorted by namespace/name.
func (s *Snapshot) Pods() []*Pod { return s.pods }

// DeletedPods returns the Pods deleted within the retention window, most recent first.
func (s *Snapshot) DeletedPods() []*Pod { return s.deletedPods }

// Pod returns the live Pod namespace/name.
func (s *Snapshot) Pod(namespace, name string) (*Pod, bool) {
	p, ok := s.podByRef[ObjectRef{defaultNamespace(namespace), name}]
	return p, ok
}

// PodByAddr returns the Pod whose pod IP is addr: the live one if any (running before
// finished), else the most recently deleted one (Deleted set). Host-network pods are not
// found by address: their addresses are their node's.
func (s *Snapshot) PodByAddr(addr netip.Addr) (*Pod, bool) {
	addr = addr.Unmap()
	if p := s.podByAddr[addr]; p != nil {
		return p, true
	}
	p, ok := s.deletedByAddr[addr]
	return p, ok
}

func podFinished(p *Pod) bool {
	return p.Phase == corev1.PodSucceeded || p.Phase == corev1.PodFailed
}

// podBefore orders pods by how well they own an IP: unfinished first, then newest, then name.
func podBefore(a, b *Pod) bool {
	if fa, fb := podFinished(a), podFinished(b); fa != fb {
		return !fa
	}
	if !a.CreatedAt.Equal(b.CreatedAt) {
		return a.CreatedAt.After(b.CreatedAt)
	}
	return a.String() < b.String()
}

func podDetail(p *Pod) string {
	switch {
	case p.Terminating:
		return "terminating"
	case p.Phase == corev1.PodSucceeded:
		return "completed"
	case p.Phase == corev1.PodFailed:
		return "failed"
	case p.Phase == corev1.PodPending:
		return "pending"
	case !p.Ready:
		return "not ready"
	}
	return ""
}

func endpointDetail(e *Endpoint) string {
	switch {
	case e.Terminating:
		return "terminating"
	case !e.Ready:
		return "not ready"
	}
	return ""
}

// Age returns a kubectl-style age ("2m", "3m10s") of t relative to now.
func Age(now, t time.Time) string {
	d := now.Sub(t)
	if d < 0 {
		d = 0
	}
	return duration.HumanDuration(d)
}

func joinDetail(parts ...string) string {
	var out []string
	for _, p := range parts {
		if p != "" {
			out = append(out, p)
		}
	}
	return strings.Join(out, "; ")
}

func formerText(svc ObjectRef, until time.Time) string {
	return "was an endpoint of " + svc.String() + " until " + until.UTC().Format(time.RFC3339)
}

func build(b *Builder, now time.Time) *Snapshot {
	s := &Snapshot{
		Warnings:      b.warnings(),
		at:            now,
		services:      make(map[ObjectRef]*Service, len(b.services)),
		nodeByName:    make(map[string]*Node, len(b.nodes)),
		nodeByAddr:    map[netip.Addr]*Node{},
		podByRef:      make(map[ObjectRef]*Pod, len(b.pods)),
		podByAddr:     make(map[netip.Addr]*Pod, len(b.pods)),
		deletedByAddr: map[netip.Addr]*Pod{},
		endpointsOf:   map[netip.Addr][]endpointRef{},
		byPort:        map[addrPortKey]*Name{},
		byAddr:        map[netip.Addr]*addrNames{},
		nodePorts:     map[portKey]*Name{},
	}
	s.buildNodes(b)
	s.buildServices(b)
	s.buildPods(b)
	s.indexNames()
	return s
}

func (s *Snapshot) buildNodes(b *Builder) {
	for _, n := range b.nodes {
		s.nodes = append(s.nodes, n)
		s.nodeByName[n.Name] = n
	}
	sort.Slice(s.nodes, func(i, j int) bool { return s.nodes[i].Name < s.nodes[j].Name })
	for _, n := range s.nodes {
		for _, a := range n.Addrs() {
			if _, dup := s.nodeByAddr[a]; !dup {
				s.nodeByAddr[a] = n
			}
		}
	}
}

func (s *Snapshot) buildServices(b *Builder) {
	slicesOf := map[ObjectRef][]*sliceRec{}
	for _, sl := range b.slices {
		slicesOf[sl.service] = append(slicesOf[sl.service], sl)
	}
	formerOf := map[ObjectRef][]*formerRec{}
	for _, f := range b.former {
		formerOf[f.service] = append(formerOf[f.service], f)
	}
	for ref, spec := range b.services {
		svc := *spec // the builder's record stays untouched
		svc.Ports = append([]ServicePort(nil), spec.Ports...)
		slices := slicesOf[ref]
		sort.Slice(slices, func(i, j int) bool { return slices[i].ref.Name < slices[j].ref.Name })
		svc.Endpoints = mergeEndpoints(slices)
		current := make(map[netip.Addr]bool, len(svc.Endpoints))
		for _, ep := range svc.Endpoints {
			current[ep.Addr] = true
		}
		for _, f := range formerOf[ref] {
			if !current[f.Addr] {
				svc.FormerEndpoints = append(svc.FormerEndpoints, f.FormerEndpoint)
			}
		}
		sort.Slice(svc.FormerEndpoints, func(i, j int) bool {
			return svc.FormerEndpoints[i].Addr.Less(svc.FormerEndpoints[j].Addr)
		})
		for i := range svc.Ports {
			svc.Ports[i].TargetPorts = resolveTargetPorts(svc.Ports[i], svc.Endpoints)
		}
		p := &svc
		s.services[ref] = p
		s.serviceList = append(s.serviceList, p)
	}
	sort.Slice(s.serviceList, func(i, j int) bool {
		return s.serviceList[i].String() < s.serviceList[j].String()
	})
	for _, svc := range s.serviceList {
		for i := range svc.Endpoints {
			ep := &svc.Endpoints[i]
			s.endpointsOf[ep.Addr] = append(s.endpointsOf[ep.Addr], endpointRef{svc, ep})
		}
	}
}

// mergeEndpoints joins the endpoints of a service's slices, one per address.
func mergeEndpoints(slices []*sliceRec) []Endpoint {
	var out []Endpoint
	idx := map[netip.Addr]int{}
	for _, sl := range slices {
		for _, ep := range sl.endpoints {
			i, dup := idx[ep.Addr]
			if !dup {
				idx[ep.Addr] = len(out)
				out = append(out, ep)
				continue
			}
			m := &out[i]
			m.Ready = m.Ready || ep.Ready
			m.Serving = m.Serving || ep.Serving
			m.Terminating = m.Terminating && ep.Terminating
			ports := append([]EndpointPort(nil), m.Ports...)
			for _, p := range ep.Ports {
				if !containsPort(ports, p) {
					ports = append(ports, p)
				}
			}
			m.Ports = ports
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr.Less(out[j].Addr) })
	return out
}

func containsPort(ps []EndpointPort, p EndpointPort) bool {
	for _, x := range ps {
		if x == p {
			return true
		}
	}
	return false
}

func resolveTargetPorts(sp ServicePort, eps []Endpoint) []uint16 {
	var out []uint16
	for i := range eps {
		if p, ok := eps[i].PortFor(sp); ok && p.Port != 0 {
			out = appendUniquePort(out, p.Port)
		}
	}
	if len(out) == 0 && sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal > 0 && sp.TargetPort.IntVal <= 65535 {
		out = []uint16{uint16(sp.TargetPort.IntVal)}
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

func appendUniquePort(list []uint16, p uint16) []uint16 {
	for _, x := range list {
		if x == p {
			return list
		}
	}
	return append(list, p)
}

func (s *Snapshot) buildPods(b *Builder) {
	for _, p := range b.pods {
		s.pods = append(s.pods, p)
		s.podByRef[p.Ref()] = p
	}
	sort.Slice(s.pods, func(i, j int) bool { return s.pods[i].String() < s.pods[j].String() })
	byRank := append([]*Pod(nil), s.pods...)
	sort.SliceStable(byRank, func(i, j int) bool { return podBefore(byRank[i], byRank[j]) })
	for _, p := range byRank {
		if p.HostNetwork {
			continue
		}
		for _, a := range p.IPs {
			if _, taken := s.podByAddr[a]; !taken {
				s.podByAddr[a] = p
			}
		}
	}
	for _, p := range b.deletedPods {
		s.deletedPods = append(s.deletedPods, p)
	}
	sort.Slice(s.deletedPods, func(i, j int) bool {
		a, c := s.deletedPods[i], s.deletedPods[j]
		if !a.DeletedAt.Equal(c.DeletedAt) {
			return a.DeletedAt.After(c.DeletedAt)
		}
		return a.String() < c.String()
	})
	for _, p := range s.deletedPods {
		if p.HostNetwork {
			continue
		}
		for _, a := range p.IPs {
			if _, taken := s.deletedByAddr[a]; !taken {
				s.deletedByAddr[a] = p
			}
		}
	}
}

func (s *Snapshot) names(a netip.Addr) *addrNames {
	n := s.byAddr[a]
	if n == nil {
		n = &addrNames{}
		s.byAddr[a] = n
	}
	return n
}

// putPort records a name for addr:port/proto unless a higher-priority one is there already.
func (s *Snapshot) putPort(a netip.Addr, port uint16, proto Protocol, n *Name) {
	k := addrPortKey{a, port, proto}
	if _, taken := s.byPort[k]; !taken {
		s.byPort[k] = n
	}
}

// indexNames fills the Name index. Earlier entries win: service addresses, then pods on
// node addresses (host network, host ports), then pod IPs, then bare endpoint addresses.
func (s *Snapshot) indexNames() {
	for _, svc := range s.serviceList {
		s.indexService(svc)
	}
	for _, n := range s.nodes {
		name := &Name{Kind: KindNode, Name: n.Name, Node: n.Name}
		if !n.Ready {
			name.Detail = "not ready"
		}
		for _, a := range n.Addrs() {
			if an := s.names(a); an.node == nil {
				an.node = name
			}
		}
	}

	// Text about services an address used to back, added to the details of its pods.
	formerNotes := map[netip.Addr][]string{}
	for _, svc := range s.serviceList {
		for _, f := range svc.FormerEndpoints {
			formerNotes[f.Addr] = append(formerNotes[f.Addr], formerText(svc.Ref(), f.Until))
		}
	}
	notes := func(p *Pod) string {
		var out []string
		for _, a := range p.IPs {
			out = append(out, formerNotes[a]...)
		}
		return joinDetail(out...)
	}

	for _, p := range s.pods {
		s.indexPod(p, joinDetail(podDetail(p), notes(p)))
	}
	for _, p := range s.deletedPods {
		if p.HostNetwork {
			continue
		}
		name := &Name{
			Kind: KindPod, Namespace: p.Namespace, Name: p.Name, Node: p.NodeName,
			Detail: joinDetail("deleted "+Age(s.at, p.DeletedAt)+" ago", notes(p)),
			GoneAt: p.DeletedAt,
		}
		for _, a := range p.IPs {
			if an := s.names(a); an.deleted == nil && s.deletedByAddr[a] == p {
				an.deleted = name
			}
		}
	}

	for _, svc := range s.serviceList {
		for i := range svc.Endpoints {
			ep := &svc.Endpoints[i]
			if s.podByAddr[ep.Addr] != nil || s.deletedByAddr[ep.Addr] != nil {
				continue // its pod names it
			}
			node := ep.NodeName
			if n := s.nodeByAddr[ep.Addr]; n != nil {
				node = n.Name
			}
			detail := endpointDetail(ep)
			if pod := s.podByRef[ep.PodRef]; pod != nil && pod.HostNetwork {
				// A host-network pod behind the endpoint: name the pod on these ports.
				d := joinDetail("host network", podDetail(pod))
				for _, p := range ep.Ports {
					s.putPort(ep.Addr, p.Port, p.Protocol, &Name{
						Kind: KindPod, Namespace: pod.Namespace, Name: pod.Name, Node: pod.NodeName,
						Port: p.Port, PortName: p.Name, Proto: p.Protocol, Detail: d,
					})
				}
				continue
			}
			for _, p := range ep.Ports {
				s.putPort(ep.Addr, p.Port, p.Protocol, &Name{
					Kind: KindEndpoint, Namespace: svc.Namespace, Name: svc.Name,
					Port: p.Port, PortName: p.Name, Proto: p.Protocol, Node: node, Detail: detail,
				})
			}
			if an := s.names(ep.Addr); an.endpoint == nil {
				an.endpoint = &Name{Kind: KindEndpoint, Namespace: svc.Namespace, Name: svc.Name, Node: node, Detail: detail}
			}
		}
		for _, f := range svc.FormerEndpoints {
			if an := s.names(f.Addr); an.former == nil {
				an.former = &Name{
					Kind: KindEndpoint, Namespace: svc.Namespace, Name: svc.Name, Node: f.NodeName,
					Detail: formerText(svc.Ref(), f.Until), GoneAt: f.Until,
				}
			}
		}
	}
}

func (s *Snapshot) indexService(svc *Service) {
	groups := []struct {
		addrs  []netip.Addr
		detail string
	}{
		{svc.ClusterIPs, ""},
		{svc.ExternalIPs, "external IP"},
		{svc.LoadBalancerIPs, "load balancer IP"},
	}
	for _, g := range groups {
		for _, a := range g.addrs {
			if an := s.names(a); an.vip == nil {
				an.vip = &Name{Kind: KindService, Namespace: svc.Namespace, Name: svc.Name, Detail: g.detail}
			}
			for _, p := range svc.Ports {
				s.putPort(a, p.Port, p.Protocol, &Name{
					Kind: KindService, Namespace: svc.Namespace, Name: svc.Name,
					Port: p.Port, PortName: p.Name, Proto: p.Protocol, Detail: g.detail,
				})
			}
		}
	}
	for _, p := range svc.Ports {
		if p.NodePort == 0 {
			continue
		}
		k := portKey{p.NodePort, p.Protocol}
		if _, taken := s.nodePorts[k]; !taken {
			s.nodePorts[k] = &Name{
				Kind: KindService, Namespace: svc.Namespace, Name: svc.Name,
				Port: p.NodePort, PortName: p.Name, Proto: p.Protocol, Detail: "node port",
			}
		}
	}
}

func (s *Snapshot) indexPod(p *Pod, detail string) {
	mk := func(cp ContainerPort, port uint16, detail string) *Name {
		return &Name{
			Kind: KindPod, Namespace: p.Namespace, Name: p.Name, Node: p.NodeName,
			Port: port, PortName: cp.Name, Proto: cp.Protocol, Detail: detail,
		}
	}
	hostIPs := p.HostIPs
	if len(hostIPs) == 0 {
		if n := s.nodeByName[p.NodeName]; n != nil {
			hostIPs = n.Addrs()
		}
	}
	if p.HostNetwork {
		d := joinDetail("host network", detail)
		for _, cp := range p.Ports {
			for _, a := range hostIPs {
				s.putPort(a, cp.Port, cp.Protocol, mk(cp, cp.Port, d))
			}
		}
		return
	}
	for _, cp := range p.Ports {
		if cp.HostPort == 0 {
			continue
		}
		d := joinDetail("host port", detail)
		for _, a := range hostIPs {
			s.putPort(a, cp.HostPort, cp.Protocol, mk(cp, cp.HostPort, d))
		}
	}
	name := &Name{Kind: KindPod, Namespace: p.Namespace, Name: p.Name, Node: p.NodeName, Detail: detail}
	for _, a := range p.IPs {
		if s.podByAddr[a] != p {
			continue // another pod owns the IP now
		}
		s.names(a).pod = name
		for _, cp := range p.Ports {
			s.putPort(a, cp.Port, cp.Protocol, mk(cp, cp.Port, detail))
		}
	}
}
