package lab

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// isDNSLabel reports whether s is an RFC 1123 label (lower case).
func isDNSLabel(s string) bool {
	if s == "" || len(s) > 63 || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for _, c := range s {
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}

// podKey is "namespace/name".
func podKey(p PodSpec) string { return p.Namespace + "/" + p.Name }

func serviceKey(s ServiceSpec) string { return s.Namespace + "/" + s.Name }

// normalize returns a deep enough copy of s with defaults filled in, or an
// error describing what is inconsistent.
func normalize(in Spec) (Spec, error) {
	s := in
	s.Networks = slices.Clone(in.Networks)
	s.Nodes = slices.Clone(in.Nodes)
	s.Hosts = slices.Clone(in.Hosts)
	s.Pods = slices.Clone(in.Pods)
	s.Services = slices.Clone(in.Services)
	s.Faults = slices.Clone(in.Faults)
	s.Checks = slices.Clone(in.Checks)

	if s.ServiceCIDR == "" {
		s.ServiceCIDR = DefaultServiceCIDR
	}
	if s.ClusterCIDR == "" {
		s.ClusterCIDR = DefaultClusterCIDR
	}
	if s.Overlay == "" {
		s.Overlay = OverlayHostGW
	}
	if s.Proxy.Mode == "" {
		s.Proxy.Mode = ProxyIPTables
	}

	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	serviceCIDR, err := netip.ParsePrefix(s.ServiceCIDR)
	if err != nil {
		bad("service cidr: %w", err)
	}
	clusterCIDR, err := netip.ParsePrefix(s.ClusterCIDR)
	if err != nil {
		bad("cluster cidr: %w", err)
	}
	if s.Proxy.ClusterCIDR != "" {
		if _, err := netip.ParsePrefix(s.Proxy.ClusterCIDR); err != nil {
			bad("kube-proxy cluster cidr: %w", err)
		}
	}
	switch s.Overlay {
	case OverlayHostGW, OverlayVXLAN:
	default:
		bad("unknown overlay %q", s.Overlay)
	}

	names := map[string]string{} // machine and pod names share one namespace for From
	claim := func(kind, name string) {
		if name == "" {
			bad("%s without a name", kind)
			return
		}
		if prev, ok := names[name]; ok {
			bad("%s %q: name already used by a %s", kind, name, prev)
			return
		}
		names[name] = kind
	}

	networks := map[string]netip.Prefix{}
	for i := range s.Networks {
		n := &s.Networks[i]
		n.Netns = ""
		if !isDNSLabel(n.Name) {
			bad("network %q: name must be a DNS label", n.Name)
		}
		p, err := netip.ParsePrefix(n.CIDR)
		if err != nil {
			bad("network %s: %w", n.Name, err)
		}
		if _, dup := networks[n.Name]; dup {
			bad("network %q defined twice", n.Name)
		}
		networks[n.Name] = p
	}

	checkNICs := func(owner string, nics []NIC, gw string, routes []RouteSpec) []NIC {
		nics = slices.Clone(nics)
		seen := map[string]bool{}
		for _, nic := range nics {
			if nic.Name == "" || len(nic.Name) > 15 {
				bad("%s: nic name %q must be 1..15 characters", owner, nic.Name)
			}
			if seen[nic.Name] {
				bad("%s: nic %s defined twice", owner, nic.Name)
			}
			seen[nic.Name] = true
			netp, ok := networks[nic.Network]
			if !ok {
				bad("%s: nic %s: unknown network %q", owner, nic.Name, nic.Network)
				continue
			}
			p, err := netip.ParsePrefix(nic.Address)
			if err != nil {
				bad("%s: nic %s: %w", owner, nic.Name, err)
				continue
			}
			if !netp.Contains(p.Addr()) {
				bad("%s: nic %s: %s is outside network %s (%s)", owner, nic.Name, p.Addr(), nic.Network, netp)
			}
		}
		if gw != "" {
			if _, err := netip.ParseAddr(gw); err != nil {
				bad("%s: default gateway: %w", owner, err)
			}
		}
		for _, r := range routes {
			if r.Dst != "default" {
				if _, err := netip.ParsePrefix(r.Dst); err != nil {
					bad("%s: route %q: %w", owner, r.Dst, err)
				}
			}
			if r.Dev != "" && !seen[r.Dev] {
				bad("%s: route %s: unknown device %q", owner, r.Dst, r.Dev)
			}
		}
		return nics
	}

	nodes := map[string]*NodeSpec{}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		claim("node", n.Name)
		n.Netns, n.InternalIP, n.VTEPMAC = "", "", ""
		if !isDNSLabel(n.Name) {
			bad("node %q: name must be a DNS label", n.Name)
		}
		if len(n.NICs) == 0 {
			bad("node %s: needs at least one nic", n.Name)
		}
		n.NICs = checkNICs("node "+n.Name, n.NICs, n.DefaultGateway, n.Routes)
		n.Routes = slices.Clone(n.Routes)
		if len(n.NICs) > 0 {
			if p, err := netip.ParsePrefix(n.NICs[0].Address); err == nil {
				n.InternalIP = p.Addr().String()
			}
		}
		p, err := netip.ParsePrefix(n.PodCIDR)
		switch {
		case err != nil:
			bad("node %s: pod cidr: %w", n.Name, err)
		case clusterCIDR.IsValid() && !clusterCIDR.Contains(p.Addr()):
			bad("node %s: pod cidr %s outside cluster cidr %s", n.Name, p, clusterCIDR)
		}
		if n.RPFilter == "" {
			n.RPFilter = RPFilterLoose
		}
		if n.PodCIDRRoute == "" {
			n.PodCIDRRoute = PodCIDRUnreachable
		}
		switch n.RPFilter {
		case RPFilterLoose, RPFilterStrict, RPFilterOff:
		default:
			bad("node %s: unknown rp_filter %q", n.Name, n.RPFilter)
		}
		switch n.PodCIDRRoute {
		case PodCIDRUnreachable, PodCIDRBlackhole, PodCIDRNone:
		default:
			bad("node %s: unknown pod cidr route %q", n.Name, n.PodCIDRRoute)
		}
		nodes[n.Name] = n
	}
	if len(s.Nodes) == 0 {
		bad("a lab needs at least one node")
	}

	for i := range s.Hosts {
		h := &s.Hosts[i]
		claim("host", h.Name)
		h.Netns = ""
		if !isDNSLabel(h.Name) {
			bad("host %q: name must be a DNS label", h.Name)
		}
		h.NICs = checkNICs("host "+h.Name, h.NICs, h.DefaultGateway, h.Routes)
		h.Routes = slices.Clone(h.Routes)
		h.Servers = slices.Clone(h.Servers)
		if h.RPFilter == "" {
			h.RPFilter = RPFilterOff
		}
		for j := range h.Servers {
			if h.Servers[j].Protocol == "" {
				h.Servers[j].Protocol = corev1.ProtocolTCP
			}
			if h.Servers[j].Answer == "" {
				h.Servers[j].Answer = h.Name
			}
		}
	}

	podIPs := map[netip.Addr]string{}
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Namespace == "" {
			p.Namespace = "default"
		}
		claim("pod", p.Name)
		p.Netns, p.HostVeth = "", ""
		p.Labels = cloneMap(p.Labels)
		p.Ports = slices.Clone(p.Ports)
		for j := range p.Ports {
			if p.Ports[j].Protocol == "" {
				p.Ports[j].Protocol = corev1.ProtocolTCP
			}
		}
		node, ok := nodes[p.Node]
		if !ok {
			bad("pod %s: unknown node %q", podKey(*p), p.Node)
			continue
		}
		ip, err := netip.ParseAddr(p.IP)
		if err != nil {
			bad("pod %s: ip: %w", podKey(*p), err)
			continue
		}
		if cidr, err := netip.ParsePrefix(node.PodCIDR); err == nil && !cidr.Contains(ip) {
			bad("pod %s: ip %s outside node %s's pod cidr %s", podKey(*p), ip, node.Name, cidr)
		}
		if prev, dup := podIPs[ip]; dup {
			bad("pod %s: ip %s already used by pod %s", podKey(*p), ip, prev)
		}
		podIPs[ip] = podKey(*p)
	}

	for i := range s.Services {
		svc := &s.Services[i]
		if svc.Namespace == "" {
			svc.Namespace = "default"
		}
		if svc.Type == "" {
			svc.Type = corev1.ServiceTypeClusterIP
		}
		svc.Selector = cloneMap(svc.Selector)
		svc.Ports = slices.Clone(svc.Ports)
		svc.Endpoints = slices.Clone(svc.Endpoints)
		ip, err := netip.ParseAddr(svc.ClusterIP)
		switch {
		case err != nil:
			bad("service %s: cluster ip: %w", serviceKey(*svc), err)
		case serviceCIDR.IsValid() && !serviceCIDR.Contains(ip):
			bad("service %s: cluster ip %s outside service cidr %s", serviceKey(*svc), ip, serviceCIDR)
		}
		if len(svc.Ports) == 0 {
			bad("service %s: needs at least one port", serviceKey(*svc))
		}
		for j := range svc.Ports {
			sp := &svc.Ports[j]
			if sp.Protocol == "" {
				sp.Protocol = corev1.ProtocolTCP
			}
			if sp.TargetPort == 0 {
				sp.TargetPort = sp.Port
			}
			if sp.NodePort != 0 && svc.Type == corev1.ServiceTypeClusterIP {
				bad("service %s: node port on a ClusterIP service", serviceKey(*svc))
			}
		}
		if svc.Type == corev1.ServiceTypeNodePort || svc.Type == corev1.ServiceTypeLoadBalancer {
			if svc.ExternalTrafficPolicy == "" {
				svc.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
			}
		} else if svc.ExternalTrafficPolicy != "" {
			bad("service %s: externalTrafficPolicy needs a NodePort or LoadBalancer service", serviceKey(*svc))
		}
		if svc.InternalTrafficPolicy == "" {
			svc.InternalTrafficPolicy = corev1.ServiceInternalTrafficPolicyCluster
		}
		if svc.LoadBalancerIP != "" {
			if svc.Type != corev1.ServiceTypeLoadBalancer {
				bad("service %s: load balancer ip on a %s service", serviceKey(*svc), svc.Type)
			}
			if _, err := netip.ParseAddr(svc.LoadBalancerIP); err != nil {
				bad("service %s: load balancer ip: %w", serviceKey(*svc), err)
			}
		}
		if svc.Selector != nil && len(svc.Endpoints) > 0 {
			bad("service %s: endpoints are only for services without a selector", serviceKey(*svc))
		}
		for _, ep := range svc.Endpoints {
			if _, err := netip.ParseAddr(ep.IP); err != nil {
				bad("service %s: endpoint: %w", serviceKey(*svc), err)
			}
		}
	}

	findService := func(key string) bool {
		return slices.ContainsFunc(s.Services, func(svc ServiceSpec) bool { return serviceKey(svc) == key })
	}
	for i := range s.Faults {
		f := &s.Faults[i]
		f.Endpoints = slices.Clone(f.Endpoints)
		if f.Node != "" && nodes[f.Node] == nil {
			bad("fault %s: unknown node %q", f.Kind, f.Node)
		}
		switch f.Kind {
		case FaultStaleEndpoints, FaultDataplaneNoEndpoints:
			if !findService(f.Service) {
				bad("fault %s: unknown service %q", f.Kind, f.Service)
			}
			for _, ip := range f.Endpoints {
				if _, err := netip.ParseAddr(ip); err != nil {
					bad("fault %s: endpoint: %w", f.Kind, err)
				}
			}
		case FaultMissingPodRoute:
			if s.pod(f.Pod) == nil {
				bad("fault %s: unknown pod %q", f.Kind, f.Pod)
			}
		default:
			bad("unknown fault kind %q", f.Kind)
		}
	}

	for i := range s.Checks {
		c := &s.Checks[i]
		if _, ok := names[c.From]; !ok && s.pod(c.From) == nil {
			bad("check %q: unknown client %q", c.Name, c.From)
		}
		if c.Network == "" {
			c.Network = "tcp"
		}
		if c.Network != "tcp" && c.Network != "udp" {
			bad("check %q: network must be tcp or udp", c.Name)
		}
		if _, err := netip.ParseAddrPort(c.Address); err != nil {
			bad("check %q: address: %w", c.Name, err)
		}
		c.Expect.Answers = slices.Clone(c.Expect.Answers)
	}
	if err := errors.Join(errs...); err != nil {
		return Spec{}, fmt.Errorf("invalid spec %q: %w", in.Name, err)
	}
	return s, nil
}

func cloneMap(m map[string]string) map[string]string {
	if m == nil {
		return nil
	}
	out := make(map[string]string, len(m))
	for k, v := range m {
		out[k] = v
	}
	return out
}

// pod finds a pod by "namespace/name" or by bare name.
func (s *Spec) pod(ref string) *PodSpec {
	for i := range s.Pods {
		p := &s.Pods[i]
		if podKey(*p) == ref || (!strings.Contains(ref, "/") && p.Name == ref) {
			return p
		}
	}
	return nil
}

func (s *Spec) node(name string) *NodeSpec {
	for i := range s.Nodes {
		if s.Nodes[i].Name == name {
			return &s.Nodes[i]
		}
	}
	return nil
}

// nodeOfIP returns the node whose pod CIDR holds ip, or "".
func (s *Spec) nodeOfIP(ip string) string {
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return ""
	}
	for _, n := range s.Nodes {
		if p, err := netip.ParsePrefix(n.PodCIDR); err == nil && p.Contains(a) {
			return n.Name
		}
	}
	return ""
}

// endpoint is one EndpointSlice entry of the cluster's truth.
type endpoint struct {
	IP          string
	NodeName    string
	Ready       bool
	Serving     bool
	Terminating bool
	Pod         *PodSpec // nil for manually managed endpoints
}

func selects(selector, labels map[string]string) bool {
	if len(selector) == 0 {
		return false
	}
	for k, v := range selector {
		if labels[k] != v {
			return false
		}
	}
	return true
}

// endpointsOf computes a service's endpoints the way the EndpointSlice
// controller would (or takes the manual ones).
func (s *Spec) endpointsOf(svc ServiceSpec) []endpoint {
	var eps []endpoint
	if svc.Selector == nil {
		for _, e := range svc.Endpoints {
			eps = append(eps, endpoint{IP: e.IP, NodeName: e.NodeName, Ready: !e.NotReady, Serving: !e.NotReady})
		}
		return eps
	}
	for i := range s.Pods {
		p := &s.Pods[i]
		if p.Namespace != svc.Namespace || !selects(svc.Selector, p.Labels) {
			continue
		}
		eps = append(eps, endpoint{
			IP:          p.IP,
			NodeName:    p.Node,
			Ready:       !p.NotReady && !p.Terminating,
			Serving:     !p.NotReady,
			Terminating: p.Terminating,
			Pod:         p,
		})
	}
	return eps
}

func faultApplies(f Fault, node string) bool { return f.Node == "" || f.Node == node }

// proxyView is node's kube-proxy view: the truth, then the node's faults
// unless honorFaults is false.
func (s *Spec) proxyView(node NodeSpec, honorFaults bool) ProxyView {
	v := ProxyView{Node: node.Name, NodeIP: node.InternalIP, Config: s.Proxy}
	for _, svc := range s.Services {
		truth := s.endpointsOf(svc)
		var override []endpoint
		overridden := false
		if honorFaults {
			for _, f := range s.Faults {
				if !faultApplies(f, node.Name) || f.Service != serviceKey(svc) {
					continue
				}
				switch f.Kind {
				case FaultStaleEndpoints:
					overridden = true
					override = nil
					for _, ip := range f.Endpoints {
						override = append(override, endpoint{IP: ip, NodeName: s.nodeOfIP(ip), Ready: true, Serving: true})
					}
				case FaultDataplaneNoEndpoints:
					overridden = true
					override = nil
				}
			}
		}
		eps := truth
		if overridden {
			eps = override
		}
		externallyAccessible := func(sp ServicePortSpec) bool {
			return sp.NodePort != 0 || svc.LoadBalancerIP != ""
		}
		for _, sp := range svc.Ports {
			pv := ServicePortView{
				Namespace:           svc.Namespace,
				Name:                svc.Name,
				PortName:            sp.Name,
				Protocol:            sp.Protocol,
				ClusterIP:           svc.ClusterIP,
				Port:                sp.Port,
				NodePort:            sp.NodePort,
				ExternalPolicyLocal: svc.ExternalTrafficPolicy == corev1.ServiceExternalTrafficPolicyLocal && externallyAccessible(sp),
				InternalPolicyLocal: svc.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal,
				HealthCheckNodePort: svc.HealthCheckNodePort,
			}
			if svc.LoadBalancerIP != "" {
				pv.LoadBalancerIPs = []string{svc.LoadBalancerIP}
			}
			for _, e := range eps {
				pv.Endpoints = append(pv.Endpoints, EndpointView{
					IP: e.IP, Port: sp.TargetPort, NodeName: e.NodeName,
					Ready: e.Ready, Serving: e.Serving, Terminating: e.Terminating,
				})
			}
			v.Ports = append(v.Ports, pv)
		}
	}
	return v
}
