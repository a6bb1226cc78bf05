package lab

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"sort"
	"strconv"
	"strings"
)

// ipvsWriter is kube-proxy's IPVS mode: every Service address on the
// kube-ipvs0 dummy device (kept down, as kube-proxy does: the local routes
// are what matter), an IPVS virtual server per address and port with the
// endpoints as masqueraded real servers, IPVS's conntrack integration on,
// and the iptables glue that marks traffic for MASQUERADE. Where kube-proxy
// matches ipsets (KUBE-CLUSTER-IP, KUBE-LOAD-BALANCER…) this writes one
// iptables rule per address and port: same packets, no ipset dependency.
type ipvsWriter struct{}

func (ipvsWriter) Mode() ProxyMode { return ProxyIPVS }

func (ipvsWriter) Available() error {
	if _, err := os.Stat("/proc/net/ip_vs"); err != nil {
		return fmt.Errorf("proxy mode ipvs: /proc/net/ip_vs is absent (no ip_vs module; modprobe ip_vs): %w", ErrNotSupported)
	}
	return nil
}

// ipvsDevice is the dummy device kube-proxy binds Service addresses to.
const ipvsDevice = "kube-ipvs0"

// IPVSRules returns the ipvsadm-restore input for a node's view.
func IPVSRules(v ProxyView) []byte {
	var b bytes.Buffer
	for _, p := range v.Ports {
		flag := "-t"
		switch strings.ToUpper(string(p.Protocol)) {
		case "UDP":
			flag = "-u"
		case "SCTP":
			flag = "--sctp-service"
		}
		cluster, local, _, _ := categorizeEndpoints(p, v.Node)
		vs := func(addr string, port int32, eps []EndpointView) {
			if addr == "" || port == 0 {
				return
			}
			svc := net.JoinHostPort(addr, strconv.Itoa(int(port)))
			fmt.Fprintf(&b, "-A %s %s -s rr\n", flag, svc)
			sorted := append([]EndpointView(nil), eps...)
			sort.Slice(sorted, func(i, j int) bool { return sorted[i].String() < sorted[j].String() })
			for _, ep := range sorted {
				fmt.Fprintf(&b, "-a %s %s -r %s -m -w 1\n", flag, svc, ep.String())
			}
		}
		internal := cluster
		if p.InternalPolicyLocal {
			internal = local
		}
		external := cluster
		if p.ExternalPolicyLocal {
			external = local
		}
		vs(p.ClusterIP, p.Port, internal)
		for _, ip := range p.LoadBalancerIPs {
			vs(ip, p.Port, external)
		}
		for _, ip := range p.ExternalIPs {
			vs(ip, p.Port, external)
		}
		if p.NodePort != 0 && v.NodeIP != "" {
			vs(v.NodeIP, p.NodePort, external)
		}
	}
	return b.Bytes()
}

// ipvsAddresses lists the Service addresses kube-proxy puts on kube-ipvs0.
func ipvsAddresses(v ProxyView) []string {
	seen := map[string]bool{}
	var out []string
	add := func(a string) {
		if a != "" && !seen[a] {
			seen[a] = true
			out = append(out, a)
		}
	}
	for _, p := range v.Ports {
		add(p.ClusterIP)
		for _, ip := range p.LoadBalancerIPs {
			add(ip)
		}
		for _, ip := range p.ExternalIPs {
			add(ip)
		}
	}
	sort.Strings(out)
	return out
}

// IPVSIPTablesRules returns the nat-table glue kube-proxy's IPVS mode keeps
// in iptables: service portals, masquerade marking, KUBE-POSTROUTING.
func IPVSIPTablesRules(v ProxyView) []byte {
	var b bytes.Buffer
	w := func(format string, args ...any) { fmt.Fprintf(&b, format+"\n", args...) }
	w("*nat")
	for _, c := range []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"} {
		w(":%s ACCEPT [0:0]", c)
	}
	for _, c := range []string{"KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", "KUBE-NODE-PORT", "KUBE-LOAD-BALANCER"} {
		w(":%s - [0:0]", c)
	}
	w(`-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES`)
	w(`-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING`)
	w(`-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000`)
	w(`-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN`)
	w(`-A KUBE-POSTROUTING -j MARK --xor-mark 0x4000`)
	w(`-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully`)
	for _, p := range v.Ports {
		proto := p.protocol()
		comment := fmt.Sprintf(`-m comment --comment "Kubernetes service cluster ip + port for masquerade purpose (%s)"`, p.ServicePortName())
		if p.ClusterIP != "" {
			switch {
			case v.Config.MasqueradeAll:
				w(`-A KUBE-SERVICES %s -d %s/32 -p %s -m %s --dport %d -j KUBE-MARK-MASQ`, comment, p.ClusterIP, proto, proto, p.Port)
			case v.Config.ClusterCIDR != "":
				w(`-A KUBE-SERVICES ! -s %s %s -d %s/32 -p %s -m %s --dport %d -j KUBE-MARK-MASQ`, v.Config.ClusterCIDR, comment, p.ClusterIP, proto, proto, p.Port)
			}
		}
		for _, ip := range append(append([]string(nil), p.LoadBalancerIPs...), p.ExternalIPs...) {
			if p.ExternalPolicyLocal {
				continue // externalTrafficPolicy=Local: no SNAT, client source kept
			}
			w(`-A KUBE-LOAD-BALANCER -d %s/32 -p %s -m %s --dport %d -j KUBE-MARK-MASQ`, ip, proto, proto, p.Port)
		}
		if p.NodePort != 0 && !p.ExternalPolicyLocal {
			w(`-A KUBE-NODE-PORT -p %s -m %s --dport %d -j KUBE-MARK-MASQ`, proto, proto, p.NodePort)
		}
	}
	w(`-A KUBE-SERVICES -m comment --comment "Kubernetes service load balancer ip + port for load balancer with sourceRange" -j KUBE-LOAD-BALANCER`)
	w(`-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT`)
	w("COMMIT")
	return b.Bytes()
}

func (w ipvsWriter) Apply(ctx context.Context, t Target, v ProxyView) (string, error) {
	if err := w.Available(); err != nil {
		return "", err
	}
	run := func(stdin []byte, argv ...string) error {
		if out, err := t.Run(ctx, stdin, argv...); err != nil {
			return fmt.Errorf("%s on %s: %w: %s", strings.Join(argv, " "), t.NodeName(), err, bytes.TrimSpace(out))
		}
		return nil
	}
	// kube-proxy's IPVS sysctls: conntrack for masquerade, ARP hygiene for
	// the addresses on kube-ipvs0, drop connections to removed real servers.
	for _, kv := range []string{
		"net.ipv4.vs.conntrack=1", "net.ipv4.vs.expire_nodest_conn=1", "net.ipv4.vs.expire_quiescent_template=1",
		"net.ipv4.conf.all.arp_ignore=1", "net.ipv4.conf.all.arp_announce=2",
	} {
		if err := run(nil, "sysctl", "-qw", kv); err != nil {
			return "", err
		}
	}
	if _, err := t.Run(ctx, nil, "ip", "link", "show", ipvsDevice); err != nil {
		if err := run(nil, "ip", "link", "add", ipvsDevice, "type", "dummy"); err != nil {
			return "", err
		}
	}
	if err := run(nil, "ip", "-4", "addr", "flush", "dev", ipvsDevice); err != nil {
		return "", err
	}
	for _, a := range ipvsAddresses(v) {
		if err := run(nil, "ip", "addr", "add", a+"/32", "dev", ipvsDevice); err != nil {
			return "", err
		}
	}
	rules := IPVSRules(v)
	if err := run(nil, "ipvsadm", "-C"); err != nil {
		return "", err
	}
	if err := run(rules, "ipvsadm", "-R"); err != nil {
		return "", err
	}
	glue := IPVSIPTablesRules(v)
	if err := run(glue, "iptables-restore", "-w", "5"); err != nil {
		return "", err
	}
	return string(rules) + string(glue), nil
}
