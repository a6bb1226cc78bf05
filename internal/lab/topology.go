package lab

import (
	"context"
	"crypto/sha1"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// caliMAC is the MAC Calico gives the host side of every pod veth.
func caliMAC() net.HardwareAddr { return net.HardwareAddr{0xee, 0xee, 0xee, 0xee, 0xee, 0xee} }

// CaliName is the node-side veth name Calico derives for a pod:
// "cali" + the first 11 hex digits of sha1("<namespace>.<name>").
func CaliName(namespace, pod string) string {
	h := sha1.Sum([]byte(namespace + "." + pod))
	return "cali" + hex.EncodeToString(h[:])[:11]
}

// vtepMAC is node i's flannel.1 MAC (locally administered, unicast).
func vtepMAC(i int) net.HardwareAddr {
	return net.HardwareAddr{0x0e, 0x6c, 0x61, 0x62, byte(i >> 8), byte(i + 1)}
}

// builder holds the per-namespace netlink handles while a lab is built.
type builder struct {
	l       *Lab
	s       *Spec
	fds     map[string]netns.NsHandle
	handles map[string]*netlink.Handle
}

func (b *builder) close() {
	for _, h := range b.handles {
		h.Close()
	}
	for _, fd := range b.fds {
		_ = fd.Close()
	}
}

func (b *builder) fd(ns string) (netns.NsHandle, error) {
	if fd, ok := b.fds[ns]; ok {
		return fd, nil
	}
	fd, err := netns.GetFromPath(NetnsPath(ns))
	if err != nil {
		return 0, fmt.Errorf("open netns %s: %w", ns, err)
	}
	b.fds[ns] = fd
	return fd, nil
}

func (b *builder) handle(ns string) (*netlink.Handle, error) {
	if h, ok := b.handles[ns]; ok {
		return h, nil
	}
	fd, err := b.fd(ns)
	if err != nil {
		return nil, err
	}
	h, err := netlink.NewHandleAt(fd)
	if err != nil {
		return nil, fmt.Errorf("netlink handle in %s: %w", ns, err)
	}
	b.handles[ns] = h
	return h, nil
}

// build wires the whole lab.
func (l *Lab) build(ctx context.Context) error {
	b := &builder{l: l, s: &l.spec, fds: map[string]netns.NsHandle{}, handles: map[string]*netlink.Handle{}}
	defer b.close()
	steps := []struct {
		name string
		fn   func(context.Context) error
	}{
		{"namespaces", b.namespaces},
		{"networks", b.networks},
		{"nodes", b.nodes},
		{"hosts", b.hosts},
		{"pods", b.pods},
		{"kube-proxy", b.proxy},
		{"workloads", b.workloads},
	}
	for _, st := range steps {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		t := time.Now()
		if err := st.fn(ctx); err != nil {
			return fmt.Errorf("%s: %w", st.name, err)
		}
		l.logf("  %-10s %s", st.name, time.Since(t).Round(10*time.Microsecond))
	}
	return nil
}

func rpFilterValue(r RPFilter) string {
	switch r {
	case RPFilterStrict:
		return "1"
	case RPFilterOff:
		return "0"
	default:
		return "2"
	}
}

// namespaces names and creates every namespace and applies the
// namespace-wide sysctls.
func (b *builder) namespaces(ctx context.Context) error {
	l, s := b.l, b.s
	used := map[string]bool{}
	name := func(preferred, fallback string) (string, error) {
		for _, n := range []string{preferred, fallback} {
			if n == "" {
				continue
			}
			full := l.id + "-" + n
			if len(full) <= 15 && isDNSLabel(n) && !used[full] {
				used[full] = true
				return full, nil
			}
		}
		return "", fmt.Errorf("no namespace name for %q", preferred)
	}
	type nsJob struct {
		ns      string
		sysctls []sysctl
	}
	var jobs []nsJob
	// New namespaces inherit the host's IPv4 "all"/"default" settings
	// (net.core.devconf_inherit_init_net=0): pin the ones the lab relies on
	// and turn IPv6 off so it adds no noise to traces.
	base := []sysctl{
		{Key: "net/ipv6/conf/all/disable_ipv6", Value: "1", Optional: true},
		{Key: "net/ipv6/conf/default/disable_ipv6", Value: "1", Optional: true},
		{Key: "net/ipv4/conf/all/arp_ignore", Value: "0"},
		{Key: "net/ipv4/conf/default/arp_ignore", Value: "0"},
		{Key: "net/ipv4/conf/all/arp_announce", Value: "0"},
		{Key: "net/ipv4/conf/default/arp_announce", Value: "0"},
		{Key: "net/ipv4/conf/all/arp_filter", Value: "0"},
		{Key: "net/ipv4/conf/default/arp_filter", Value: "0"},
	}
	with := func(extra ...sysctl) []sysctl { return append(append([]sysctl(nil), base...), extra...) }
	off := []sysctl{
		{Key: "net/ipv4/conf/all/rp_filter", Value: "0"},
		{Key: "net/ipv4/conf/default/rp_filter", Value: "0"},
	}
	for i := range s.Networks {
		ns, err := name("", fmt.Sprintf("sw%d", i))
		if err != nil {
			return err
		}
		s.Networks[i].Netns = ns
		l.netns[s.Networks[i].Name] = ns
		jobs = append(jobs, nsJob{ns, with(
			sysctl{Key: "net/bridge/bridge-nf-call-iptables", Value: "0", Optional: true},
			sysctl{Key: "net/bridge/bridge-nf-call-arptables", Value: "0", Optional: true})})
	}
	for i := range s.Pods {
		ns, err := name("", fmt.Sprintf("p%d", i))
		if err != nil {
			return err
		}
		s.Pods[i].Netns = ns
		l.netns[s.Pods[i].Name] = ns
		l.netns[podKey(s.Pods[i])] = ns
		jobs = append(jobs, nsJob{ns, with(off...)})
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		ns, err := name(n.Name, fmt.Sprintf("n%d", i))
		if err != nil {
			return err
		}
		n.Netns = ns
		l.netns[n.Name] = ns
		rp := rpFilterValue(n.RPFilter)
		jobs = append(jobs, nsJob{ns, with(
			sysctl{Key: "net/ipv4/ip_forward", Value: "1"},
			sysctl{Key: "net/ipv4/conf/all/rp_filter", Value: rp},
			sysctl{Key: "net/ipv4/conf/default/rp_filter", Value: rp},
			// kube-proxy sets route_localnet for NodePorts on 127.0.0.1
			// (iptables.localhostNodePorts, the default).
			sysctl{Key: "net/ipv4/conf/all/route_localnet", Value: "1"},
		)})
	}
	for i := range s.Hosts {
		h := &s.Hosts[i]
		ns, err := name(h.Name, fmt.Sprintf("h%d", i))
		if err != nil {
			return err
		}
		h.Netns = ns
		l.netns[h.Name] = ns
		rp := rpFilterValue(h.RPFilter)
		jobs = append(jobs, nsJob{ns, with(
			sysctl{Key: "net/ipv4/conf/all/rp_filter", Value: rp},
			sysctl{Key: "net/ipv4/conf/default/rp_filter", Value: rp},
		)})
	}
	for ns := range used {
		l.netns[ns] = ns
	}
	for _, j := range jobs {
		if err := ctx.Err(); err != nil {
			return err
		}
		if err := createNetns(j.ns); err != nil {
			return err
		}
		l.namespaces = append(l.namespaces, j.ns)
	}
	return parallel(len(jobs), func(i int) error {
		j := jobs[i]
		if err := inNetns(NetnsPath(j.ns), func() error { return writeSysctls(j.sysctls) }); err != nil {
			return fmt.Errorf("%s: %w", j.ns, err)
		}
		return nil
	}, func() error {
		for _, j := range jobs {
			h, err := b.handle(j.ns)
			if err != nil {
				return err
			}
			lo, err := h.LinkByName("lo")
			if err != nil {
				return fmt.Errorf("%s: lo: %w", j.ns, err)
			}
			if err := h.LinkSetUp(lo); err != nil {
				return fmt.Errorf("%s: lo up: %w", j.ns, err)
			}
		}
		return nil
	})
}

// parallel runs each(0..n-1) concurrently with extra, returning all errors.
func parallel(n int, each func(int) error, extra ...func() error) error {
	errs := make([]error, n+len(extra))
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = each(i)
		}()
	}
	for i, f := range extra {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[n+i] = f()
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

type member struct {
	owner string // node or host name
	netns string
	nic   NIC
}

// networks builds each network's bridge and plugs the members in.
func (b *builder) networks(ctx context.Context) error {
	s := b.s
	for _, n := range s.Networks {
		var members []member
		for _, node := range s.Nodes {
			for _, nic := range node.NICs {
				if nic.Network == n.Name {
					members = append(members, member{node.Name, node.Netns, nic})
				}
			}
		}
		for _, h := range s.Hosts {
			for _, nic := range h.NICs {
				if nic.Network == n.Name {
					members = append(members, member{h.Name, h.Netns, nic})
				}
			}
		}
		sw, err := b.handle(n.Netns)
		if err != nil {
			return err
		}
		br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}
		if err := sw.LinkAdd(br); err != nil {
			return fmt.Errorf("network %s: add bridge: %w", n.Name, err)
		}
		if err := sw.LinkSetUp(br); err != nil {
			return fmt.Errorf("network %s: bridge up: %w", n.Name, err)
		}
		for i, m := range members {
			if err := ctx.Err(); err != nil {
				return err
			}
			port := m.owner + "-" + m.nic.Name
			if len(port) > 15 {
				port = fmt.Sprintf("port%d", i)
			}
			fd, err := b.fd(m.netns)
			if err != nil {
				return err
			}
			veth := &netlink.Veth{
				LinkAttrs:     netlink.LinkAttrs{Name: port},
				PeerName:      m.nic.Name,
				PeerNamespace: netlink.NsFd(int(fd)),
			}
			if err := sw.LinkAdd(veth); err != nil {
				return fmt.Errorf("network %s: add veth for %s %s: %w", n.Name, m.owner, m.nic.Name, err)
			}
			if err := sw.LinkSetMaster(veth, br); err != nil {
				return fmt.Errorf("network %s: enslave %s: %w", n.Name, port, err)
			}
			if err := sw.LinkSetUp(veth); err != nil {
				return fmt.Errorf("network %s: %s up: %w", n.Name, port, err)
			}
			h, err := b.handle(m.netns)
			if err != nil {
				return err
			}
			link, err := h.LinkByName(m.nic.Name)
			if err != nil {
				return fmt.Errorf("%s: %s: %w", m.owner, m.nic.Name, err)
			}
			addr, err := netlink.ParseAddr(m.nic.Address)
			if err != nil {
				return fmt.Errorf("%s: %s: %w", m.owner, m.nic.Name, err)
			}
			if err := h.AddrAdd(link, addr); err != nil {
				return fmt.Errorf("%s: %s: add %s: %w", m.owner, m.nic.Name, m.nic.Address, err)
			}
			if err := h.LinkSetUp(link); err != nil {
				return fmt.Errorf("%s: %s up: %w", m.owner, m.nic.Name, err)
			}
		}
	}
	return nil
}

// gatewayDev returns the NIC whose network holds gw.
func (b *builder) gatewayDev(owner string, nics []NIC, gw string) (string, error) {
	ip, err := netip.ParseAddr(gw)
	if err != nil {
		return "", fmt.Errorf("%s: gateway %q: %w", owner, gw, err)
	}
	for _, nic := range nics {
		if p, err := netip.ParsePrefix(nic.Address); err == nil && p.Masked().Contains(ip) {
			return nic.Name, nil
		}
	}
	return "", fmt.Errorf("%s: gateway %s is on none of its networks", owner, gw)
}

func routeType(t string) (int, error) {
	switch t {
	case "":
		return unix.RTN_UNICAST, nil
	case "unreachable":
		return unix.RTN_UNREACHABLE, nil
	case "blackhole":
		return unix.RTN_BLACKHOLE, nil
	case "prohibit":
		return unix.RTN_PROHIBIT, nil
	default:
		return 0, fmt.Errorf("unknown route type %q", t)
	}
}

// addRoute is "ip route add" for a RouteSpec.
func addRoute(h *netlink.Handle, r RouteSpec) error {
	rt := &netlink.Route{}
	if r.Dst == "default" {
		rt.Dst = &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}
	} else {
		_, dst, err := net.ParseCIDR(r.Dst)
		if err != nil {
			return fmt.Errorf("route %s: %w", r.Dst, err)
		}
		rt.Dst = dst
	}
	typ, err := routeType(r.Type)
	if err != nil {
		return fmt.Errorf("route %s: %w", r.Dst, err)
	}
	rt.Type = typ
	if r.Dev != "" {
		link, err := h.LinkByName(r.Dev)
		if err != nil {
			return fmt.Errorf("route %s: dev %s: %w", r.Dst, r.Dev, err)
		}
		rt.LinkIndex = link.Attrs().Index
	}
	if r.Via != "" {
		rt.Gw = net.ParseIP(r.Via)
		if rt.Gw == nil {
			return fmt.Errorf("route %s: bad gateway %q", r.Dst, r.Via)
		}
	} else if typ == unix.RTN_UNICAST {
		rt.Scope = netlink.SCOPE_LINK
	}
	if err := h.RouteAdd(rt); err != nil {
		return fmt.Errorf("route add %s: %w", describeRoute(r), err)
	}
	return nil
}

func describeRoute(r RouteSpec) string {
	s := r.Dst
	if r.Type != "" {
		s = r.Type + " " + s
	}
	if r.Via != "" {
		s += " via " + r.Via
	}
	if r.Dev != "" {
		s += " dev " + r.Dev
	}
	return s
}

// machineRoutes adds a node's or host's default and extra routes.
func (b *builder) machineRoutes(owner, ns string, nics []NIC, gw string, routes []RouteSpec) error {
	h, err := b.handle(ns)
	if err != nil {
		return err
	}
	if gw != "" {
		dev, err := b.gatewayDev(owner, nics, gw)
		if err != nil {
			return err
		}
		if err := addRoute(h, RouteSpec{Dst: "default", Via: gw, Dev: dev}); err != nil {
			return fmt.Errorf("%s: %w", owner, err)
		}
	}
	for _, r := range routes {
		if err := addRoute(h, r); err != nil {
			return fmt.Errorf("%s: %w", owner, err)
		}
	}
	return nil
}

// nodes adds node routes and the overlay.
func (b *builder) nodes(context.Context) error {
	s := b.s
	for i := range s.Nodes {
		n := &s.Nodes[i]
		if err := b.machineRoutes("node "+n.Name, n.Netns, n.NICs, n.DefaultGateway, n.Routes); err != nil {
			return err
		}
		h, err := b.handle(n.Netns)
		if err != nil {
			return err
		}
		if n.PodCIDRRoute != PodCIDRNone {
			if err := addRoute(h, RouteSpec{Dst: n.PodCIDR, Type: string(n.PodCIDRRoute)}); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
		if s.Overlay == OverlayVXLAN {
			n.VTEPMAC = vtepMAC(i).String()
			if err := b.vxlan(i); err != nil {
				return fmt.Errorf("node %s: %w", n.Name, err)
			}
		}
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		h, err := b.handle(n.Netns)
		if err != nil {
			return err
		}
		for j, peer := range s.Nodes {
			if j == i {
				continue
			}
			switch s.Overlay {
			case OverlayHostGW:
				if err := addRoute(h, RouteSpec{Dst: peer.PodCIDR, Via: peer.InternalIP, Dev: n.NICs[0].Name}); err != nil {
					return fmt.Errorf("node %s: %w", n.Name, err)
				}
			case OverlayVXLAN:
				if err := b.vxlanPeer(n, j); err != nil {
					return fmt.Errorf("node %s: vxlan peer %s: %w", n.Name, peer.Name, err)
				}
			}
		}
	}
	return nil
}

// vtepIP is a node's flannel.1 address: the network address of its pod CIDR.
func vtepIP(podCIDR string) (net.IP, error) {
	p, err := netip.ParsePrefix(podCIDR)
	if err != nil {
		return nil, err
	}
	return net.IP(p.Masked().Addr().AsSlice()), nil
}

// vxlan creates node i's flannel.1 like flanneld's vxlan backend.
func (b *builder) vxlan(i int) error {
	n := &b.s.Nodes[i]
	h, err := b.handle(n.Netns)
	if err != nil {
		return err
	}
	underlay, err := h.LinkByName(n.NICs[0].Name)
	if err != nil {
		return fmt.Errorf("vxlan underlay: %w", err)
	}
	vx := &netlink.Vxlan{
		LinkAttrs:    netlink.LinkAttrs{Name: VXLANDevice, HardwareAddr: vtepMAC(i), MTU: underlay.Attrs().MTU - 50},
		VxlanId:      VXLANID,
		VtepDevIndex: underlay.Attrs().Index,
		SrcAddr:      net.ParseIP(n.InternalIP),
		Port:         VXLANPort,
		Learning:     false,
	}
	if err := h.LinkAdd(vx); err != nil {
		return fmt.Errorf("add %s: %w", VXLANDevice, err)
	}
	ip, err := vtepIP(n.PodCIDR)
	if err != nil {
		return err
	}
	if err := h.AddrAdd(vx, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}}); err != nil {
		return fmt.Errorf("address %s: %w", VXLANDevice, err)
	}
	if err := h.LinkSetUp(vx); err != nil {
		return fmt.Errorf("%s up: %w", VXLANDevice, err)
	}
	return nil
}

// vxlanPeer adds what flanneld adds for a peer node: a route to its pod
// CIDR via its VTEP address (onlink), a permanent ARP entry for that
// address and an FDB entry sending its VTEP MAC to its node IP.
func (b *builder) vxlanPeer(n *NodeSpec, j int) error {
	peer := b.s.Nodes[j]
	h, err := b.handle(n.Netns)
	if err != nil {
		return err
	}
	vx, err := h.LinkByName(VXLANDevice)
	if err != nil {
		return err
	}
	gw, err := vtepIP(peer.PodCIDR)
	if err != nil {
		return err
	}
	_, dst, err := net.ParseCIDR(peer.PodCIDR)
	if err != nil {
		return err
	}
	if err := h.RouteAdd(&netlink.Route{Dst: dst, Gw: gw, LinkIndex: vx.Attrs().Index, Flags: int(netlink.FLAG_ONLINK)}); err != nil {
		return fmt.Errorf("route %s via %s: %w", dst, gw, err)
	}
	mac := vtepMAC(j)
	if err := h.NeighSet(&netlink.Neigh{
		LinkIndex: vx.Attrs().Index, Family: unix.AF_INET, State: netlink.NUD_PERMANENT,
		Type: unix.RTN_UNICAST, IP: gw, HardwareAddr: mac,
	}); err != nil {
		return fmt.Errorf("arp %s: %w", gw, err)
	}
	if err := h.NeighSet(&netlink.Neigh{
		LinkIndex: vx.Attrs().Index, Family: unix.AF_BRIDGE, State: netlink.NUD_PERMANENT,
		Flags: netlink.NTF_SELF, IP: net.ParseIP(peer.InternalIP), HardwareAddr: mac,
	}); err != nil {
		return fmt.Errorf("fdb %s: %w", mac, err)
	}
	return nil
}

// hosts adds the extra hosts' routes.
func (b *builder) hosts(context.Context) error {
	for _, h := range b.s.Hosts {
		if err := b.machineRoutes("host "+h.Name, h.Netns, h.NICs, h.DefaultGateway, h.Routes); err != nil {
			return err
		}
	}
	return nil
}

// missingRoute reports whether a FaultMissingPodRoute removes pod p's route.
func (b *builder) missingRoute(p PodSpec) bool {
	for _, f := range b.s.Faults {
		if f.Kind == FaultMissingPodRoute && faultApplies(f, p.Node) && b.s.pod(f.Pod) != nil && podKey(*b.s.pod(f.Pod)) == podKey(p) {
			return true
		}
	}
	return false
}

// pods wires every pod Calico-style.
func (b *builder) pods(ctx context.Context) error {
	s := b.s
	perNode := map[string][]sysctl{}
	for i := range s.Pods {
		if err := ctx.Err(); err != nil {
			return err
		}
		p := &s.Pods[i]
		node := s.node(p.Node)
		nh, err := b.handle(node.Netns)
		if err != nil {
			return err
		}
		podFd, err := b.fd(p.Netns)
		if err != nil {
			return err
		}
		ph, err := b.handle(p.Netns)
		if err != nil {
			return err
		}
		p.HostVeth = CaliName(p.Namespace, p.Name)
		veth := &netlink.Veth{
			LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth, HardwareAddr: caliMAC()},
			PeerName:      "eth0",
			PeerNamespace: netlink.NsFd(int(podFd)),
		}
		if err := nh.LinkAdd(veth); err != nil {
			return fmt.Errorf("pod %s: add veth %s: %w", podKey(*p), p.HostVeth, err)
		}
		hostSide, err := nh.LinkByName(p.HostVeth)
		if err != nil {
			return fmt.Errorf("pod %s: %w", podKey(*p), err)
		}
		if err := nh.LinkSetUp(hostSide); err != nil {
			return fmt.Errorf("pod %s: %s up: %w", podKey(*p), p.HostVeth, err)
		}
		ip := net.ParseIP(p.IP).To4()
		if !b.missingRoute(*p) {
			if err := nh.RouteAdd(&netlink.Route{
				Dst: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}, LinkIndex: hostSide.Attrs().Index, Scope: netlink.SCOPE_LINK,
			}); err != nil {
				return fmt.Errorf("pod %s: node route: %w", podKey(*p), err)
			}
		}
		perNode[node.Name] = append(perNode[node.Name],
			sysctl{Key: "net/ipv4/conf/" + p.HostVeth + "/proxy_arp", Value: "1"},
			// Calico answers proxy ARP at once instead of after a random
			// delay of up to 0.8 s.
			sysctl{Key: "net/ipv4/neigh/" + p.HostVeth + "/proxy_delay", Value: "0"},
		)

		eth0, err := ph.LinkByName("eth0")
		if err != nil {
			return fmt.Errorf("pod %s: %w", podKey(*p), err)
		}
		if err := ph.AddrAdd(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: ip, Mask: net.CIDRMask(32, 32)}}); err != nil {
			return fmt.Errorf("pod %s: address: %w", podKey(*p), err)
		}
		if err := ph.LinkSetUp(eth0); err != nil {
			return fmt.Errorf("pod %s: eth0 up: %w", podKey(*p), err)
		}
		if err := ph.RouteAdd(&netlink.Route{
			Dst: &net.IPNet{IP: net.IPv4zero.To4(), Mask: net.CIDRMask(0, 32)}, Gw: net.ParseIP(PodGateway),
			LinkIndex: eth0.Attrs().Index, Flags: int(netlink.FLAG_ONLINK),
		}); err != nil {
			return fmt.Errorf("pod %s: default route: %w", podKey(*p), err)
		}
	}
	nodes := make([]NodeSpec, 0, len(perNode))
	for _, n := range s.Nodes {
		if len(perNode[n.Name]) > 0 {
			nodes = append(nodes, n)
		}
	}
	return parallel(len(nodes), func(i int) error {
		n := nodes[i]
		if err := inNetns(NetnsPath(n.Netns), func() error { return writeSysctls(perNode[n.Name]) }); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
		return nil
	})
}

// proxy loads every node's service rules.
func (b *builder) proxy(ctx context.Context) error {
	return parallel(len(b.s.Nodes), func(i int) error {
		return b.l.applyProxy(ctx, b.s.Nodes[i], true)
	})
}

// workloads starts the pods' and hosts' servers.
func (b *builder) workloads(context.Context) error {
	l, s := b.l, b.s
	type job struct {
		ns, answer string
		ports      []listenSpec
	}
	var jobs []job
	for _, p := range s.Pods {
		var ports []listenSpec
		for _, cp := range p.Ports {
			ports = append(ports, listenSpec{Protocol: cp.Protocol, Port: cp.ContainerPort})
		}
		if len(ports) > 0 {
			jobs = append(jobs, job{p.Netns, p.Name, ports})
		}
	}
	for _, h := range s.Hosts {
		for _, sv := range h.Servers {
			jobs = append(jobs, job{h.Netns, sv.Answer, []listenSpec{{Protocol: sv.Protocol, Port: sv.Port}}})
		}
	}
	servers := make([]*server, len(jobs))
	err := parallel(len(jobs), func(i int) error {
		srv, err := startServer(NetnsPath(jobs[i].ns), jobs[i].answer, jobs[i].ports)
		if err != nil {
			return fmt.Errorf("%s: %w", jobs[i].ns, err)
		}
		servers[i] = srv
		return nil
	})
	l.mu.Lock()
	for _, srv := range servers {
		if srv != nil {
			l.servers = append(l.servers, srv)
		}
	}
	l.mu.Unlock()
	return err
}
