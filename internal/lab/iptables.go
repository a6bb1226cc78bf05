package lab

import (
	"bytes"
	"context"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
)

// kube-proxy's iptables chains.
const (
	chainServices         = "KUBE-SERVICES"
	chainExternalServices = "KUBE-EXTERNAL-SERVICES"
	chainNodePorts        = "KUBE-NODEPORTS"
	chainPostrouting      = "KUBE-POSTROUTING"
	chainMarkMasq         = "KUBE-MARK-MASQ"
	chainForward          = "KUBE-FORWARD"
	chainProxyFirewall    = "KUBE-PROXY-FIREWALL"
	chainProxyCanary      = "KUBE-PROXY-CANARY"
	chainKubeletFirewall  = "KUBE-FIREWALL"
)

// masqueradeBit is kube-proxy's default --iptables-masquerade-bit.
const masqueradeBit = 14

// iptablesWriter writes kube-proxy's iptables-mode rules (kube-proxy 1.3x,
// pkg/proxy/iptables/proxier.go, syncProxyRules) with iptables-restore.
type iptablesWriter struct{}

func (iptablesWriter) Mode() ProxyMode { return ProxyIPTables }

func (iptablesWriter) Available() error {
	if _, err := exec.LookPath("iptables-restore"); err != nil {
		return fmt.Errorf("proxy mode iptables: %w", err)
	}
	return nil
}

func (iptablesWriter) Apply(ctx context.Context, t Target, v ProxyView) (string, error) {
	rules := IPTablesRules(v)
	if out, err := t.Run(ctx, rules, "iptables-restore", "-w", "5"); err != nil {
		return "", fmt.Errorf("iptables-restore on %s: %w: %s", t.NodeName(), err, bytes.TrimSpace(out))
	}
	return string(rules), nil
}

// lineBuffer joins words with spaces, like kube-proxy's proxyutil.LineBuffer.
type lineBuffer struct{ b bytes.Buffer }

func (l *lineBuffer) write(words ...any) {
	first := true
	for _, w := range words {
		var parts []string
		switch w := w.(type) {
		case string:
			parts = []string{w}
		case []string:
			parts = w
		default:
			parts = []string{fmt.Sprint(w)}
		}
		for _, p := range parts {
			if !first {
				l.b.WriteByte(' ')
			}
			first = false
			l.b.WriteString(p)
		}
	}
	l.b.WriteByte('\n')
}

func chainLine(chain string) string { return ":" + chain + " - [0:0]" }

// IPTablesRules renders the complete iptables-restore input for a node: the
// built-in chains with the jump rules kube-proxy (and kubelet) ensure in
// them, then the filter and nat tables exactly as kube-proxy's
// syncProxyRules writes them. The lab loads it into a fresh namespace, so
// tables are replaced rather than --noflush-merged.
func IPTablesRules(v ProxyView) []byte {
	masqMark := fmt.Sprintf("%#08x", 1<<masqueradeBit) // "0x00004000": kube-proxy formats it with the same verb
	localDetector := v.Config.ClusterCIDR != ""
	ifLocal := []string{"-s", v.Config.ClusterCIDR}
	ifNotLocal := []string{"!", "-s", v.Config.ClusterCIDR}
	const localhostNodePorts = true // kube-proxy's default; route_localnet=1 is set on nodes

	var filterChains, filterRules, natChains, natRules lineBuffer

	for _, c := range []string{chainServices, chainExternalServices, chainForward, chainNodePorts, chainProxyFirewall} {
		filterChains.write(chainLine(c))
	}
	for _, c := range []string{chainServices, chainNodePorts, chainPostrouting, chainMarkMasq} {
		natChains.write(chainLine(c))
	}

	natRules.write("-A", chainPostrouting, "-m", "mark", "!", "--mark", masqMark+"/"+masqMark, "-j", "RETURN")
	natRules.write("-A", chainPostrouting, "-j", "MARK", "--xor-mark", masqMark)
	natRules.write("-A", chainPostrouting, "-m", "comment", "--comment", `"kubernetes service traffic requiring SNAT"`,
		"-j", "MASQUERADE", "--random-fully")
	natRules.write("-A", chainMarkMasq, "-j", "MARK", "--or-mark", masqMark)

	if localhostNodePorts {
		filterChains.write(chainLine(chainKubeletFirewall))
		filterRules.write("-A", chainKubeletFirewall,
			"-m", "comment", "--comment", `"block incoming localnet connections"`,
			"-d", "127.0.0.0/8", "!", "-s", "127.0.0.0/8",
			"-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED,DNAT",
			"-j", "DROP")
	}

	ports := append([]ServicePortView(nil), v.Ports...)
	sort.SliceStable(ports, func(i, j int) bool {
		a, b := ports[i], ports[j]
		if a.ServicePortName() != b.ServicePortName() {
			return a.ServicePortName() < b.ServicePortName()
		}
		return a.Protocol < b.Protocol
	})

	for _, svc := range ports {
		protocol := svc.protocol()
		name := svc.ServicePortName()
		port := strconv.Itoa(int(svc.Port))
		eps := append([]EndpointView(nil), svc.Endpoints...)
		sortEndpoints(eps)
		svc.Endpoints = eps
		clusterEndpoints, localEndpoints, allEndpoints, hasEndpoints := categorizeEndpoints(svc, v.Node)

		clusterPolicyChain := ServiceChain(name, protocol)
		usesClusterPolicyChain := len(clusterEndpoints) > 0 && (!svc.InternalPolicyLocal || svc.ExternallyAccessible())
		localPolicyChain := LocalServiceChain(name, protocol)
		usesLocalPolicyChain := len(localEndpoints) > 0 && (svc.InternalPolicyLocal || svc.ExternalPolicyLocal)

		internalPolicyChain := clusterPolicyChain
		hasInternalEndpoints := hasEndpoints
		if svc.InternalPolicyLocal {
			internalPolicyChain = localPolicyChain
			if len(localEndpoints) == 0 {
				hasInternalEndpoints = false
			}
		}
		internalTrafficChain := internalPolicyChain

		externalPolicyChain := clusterPolicyChain
		hasExternalEndpoints := hasEndpoints
		if svc.ExternalPolicyLocal {
			externalPolicyChain = localPolicyChain
			if len(localEndpoints) == 0 {
				hasExternalEndpoints = false
			}
		}
		externalTrafficChain := ExternalChain(name, protocol)
		usesExternalTrafficChain := hasEndpoints && svc.ExternallyAccessible()

		var internalFilterTarget, internalFilterComment, externalFilterTarget, externalFilterComment string
		if !hasEndpoints {
			internalFilterTarget = "REJECT"
			internalFilterComment = fmt.Sprintf(`"%s has no endpoints"`, name)
			externalFilterTarget = "REJECT"
			externalFilterComment = internalFilterComment
		} else {
			if !hasInternalEndpoints {
				internalFilterTarget = "DROP"
				internalFilterComment = fmt.Sprintf(`"%s has no local endpoints"`, name)
			}
			if !hasExternalEndpoints {
				externalFilterTarget = "DROP"
				externalFilterComment = fmt.Sprintf(`"%s has no local endpoints"`, name)
			}
		}

		// Capture the clusterIP.
		if hasInternalEndpoints {
			natRules.write("-A", chainServices,
				"-m", "comment", "--comment", fmt.Sprintf(`"%s cluster IP"`, name),
				"-m", protocol, "-p", protocol,
				"-d", svc.ClusterIP, "--dport", port,
				"-j", internalTrafficChain)
		} else {
			filterRules.write("-A", chainServices,
				"-m", "comment", "--comment", internalFilterComment,
				"-m", protocol, "-p", protocol,
				"-d", svc.ClusterIP, "--dport", port,
				"-j", internalFilterTarget)
		}

		// Capture external IPs.
		for _, ip := range svc.ExternalIPs {
			if hasEndpoints {
				natRules.write("-A", chainServices,
					"-m", "comment", "--comment", fmt.Sprintf(`"%s external IP"`, name),
					"-m", protocol, "-p", protocol,
					"-d", ip, "--dport", port,
					"-j", externalTrafficChain)
			}
			if !hasExternalEndpoints {
				filterRules.write("-A", chainExternalServices,
					"-m", "comment", "--comment", externalFilterComment,
					"-m", protocol, "-p", protocol,
					"-d", ip, "--dport", port,
					"-j", externalFilterTarget)
			}
		}

		// Capture load-balancer ingress.
		for _, ip := range svc.LoadBalancerIPs {
			if hasEndpoints {
				natRules.write("-A", chainServices,
					"-m", "comment", "--comment", fmt.Sprintf(`"%s loadbalancer IP"`, name),
					"-m", protocol, "-p", protocol,
					"-d", ip, "--dport", port,
					"-j", externalTrafficChain)
			}
		}
		if !hasExternalEndpoints {
			for _, ip := range svc.LoadBalancerIPs {
				filterRules.write("-A", chainExternalServices,
					"-m", "comment", "--comment", externalFilterComment,
					"-m", protocol, "-p", protocol,
					"-d", ip, "--dport", port,
					"-j", externalFilterTarget)
			}
		}

		// Capture node ports.
		if svc.NodePort != 0 {
			nodePort := strconv.Itoa(int(svc.NodePort))
			if hasEndpoints {
				// kube-proxy adds a 127.0.0.0/8 rule first only when its nfacct
				// counter exists; it does not here.
				natRules.write("-A", chainNodePorts,
					"-m", "comment", "--comment", name,
					"-m", protocol, "-p", protocol,
					"--dport", nodePort,
					"-j", externalTrafficChain)
			}
			if !hasExternalEndpoints {
				filterRules.write("-A", chainExternalServices,
					"-m", "comment", "--comment", externalFilterComment,
					"-m", "addrtype", "--dst-type", "LOCAL",
					"-m", protocol, "-p", protocol,
					"--dport", nodePort,
					"-j", externalFilterTarget)
			}
		}

		// Capture the health check node port.
		if svc.HealthCheckNodePort != 0 {
			filterRules.write("-A", chainNodePorts,
				"-m", "comment", "--comment", fmt.Sprintf(`"%s health check node port"`, name),
				"-m", "tcp", "-p", "tcp",
				"--dport", strconv.Itoa(int(svc.HealthCheckNodePort)),
				"-j", "ACCEPT")
		}

		// Internal traffic.
		if hasInternalEndpoints {
			args := []string{
				"-m", "comment", "--comment", fmt.Sprintf(`"%s cluster IP"`, name),
				"-m", protocol, "-p", protocol,
				"-d", svc.ClusterIP, "--dport", port,
			}
			switch {
			case v.Config.MasqueradeAll:
				natRules.write("-A", internalTrafficChain, args, "-j", chainMarkMasq)
			case localDetector:
				// Masquerade off-cluster traffic to the service VIP.
				natRules.write("-A", internalTrafficChain, args, ifNotLocal, "-j", chainMarkMasq)
			}
		}

		// External traffic.
		if usesExternalTrafficChain {
			natChains.write(chainLine(externalTrafficChain))
			if !svc.ExternalPolicyLocal {
				natRules.write("-A", externalTrafficChain,
					"-m", "comment", "--comment", fmt.Sprintf(`"masquerade traffic for %s external destinations"`, name),
					"-j", chainMarkMasq)
			} else {
				if localDetector {
					natRules.write("-A", externalTrafficChain,
						"-m", "comment", "--comment", fmt.Sprintf(`"pod traffic for %s external destinations"`, name),
						ifLocal,
						"-j", clusterPolicyChain)
				}
				natRules.write("-A", externalTrafficChain,
					"-m", "comment", "--comment", fmt.Sprintf(`"masquerade LOCAL traffic for %s external destinations"`, name),
					"-m", "addrtype", "--src-type", "LOCAL",
					"-j", chainMarkMasq)
				natRules.write("-A", externalTrafficChain,
					"-m", "comment", "--comment", fmt.Sprintf(`"route LOCAL traffic for %s external destinations"`, name),
					"-m", "addrtype", "--src-type", "LOCAL",
					"-j", clusterPolicyChain)
			}
			if hasExternalEndpoints {
				natRules.write("-A", externalTrafficChain, "-j", externalPolicyChain)
			}
		}

		if usesClusterPolicyChain {
			natChains.write(chainLine(clusterPolicyChain))
			writeServiceToEndpointRules(&natRules, name, protocol, clusterPolicyChain, clusterEndpoints)
		}
		if usesLocalPolicyChain {
			natChains.write(chainLine(localPolicyChain))
			writeServiceToEndpointRules(&natRules, name, protocol, localPolicyChain, localEndpoints)
		}

		// Per-endpoint chains.
		for _, ep := range allEndpoints {
			chain := EndpointChain(name, protocol, ep.String())
			natChains.write(chainLine(chain))
			natRules.write("-A", chain, "-m", "comment", "--comment", name, "-s", ep.IP, "-j", chainMarkMasq)
			natRules.write("-A", chain, "-m", "comment", "--comment", name,
				"-m", protocol, "-p", protocol, "-j", "DNAT", "--to-destination", ep.String())
		}
	}

	// Tail-call to the node ports chain; must be the last rule.
	nodePortDst := []string{"-m", "addrtype", "--dst-type", "LOCAL"}
	if !localhostNodePorts {
		nodePortDst = append(nodePortDst, "!", "-d", "127.0.0.0/8")
	}
	natRules.write("-A", chainServices,
		"-m", "comment", "--comment", `"kubernetes service nodeports; NOTE: this must be the last rule in this chain"`,
		nodePortDst, "-j", chainNodePorts)

	// nf_conntrack_tcp_be_liberal is 0 in the lab, so INVALID is dropped.
	filterRules.write("-A", chainForward, "-m", "conntrack", "--ctstate", "INVALID", "-j", "DROP")
	filterRules.write("-A", chainForward,
		"-m", "comment", "--comment", `"kubernetes forwarding rules"`,
		"-m", "mark", "--mark", masqMark+"/"+masqMark,
		"-j", "ACCEPT")
	filterRules.write("-A", chainForward,
		"-m", "comment", "--comment", `"kubernetes forwarding conntrack rule"`,
		"-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED",
		"-j", "ACCEPT")

	var out lineBuffer
	// The canary chains kube-proxy's iptables monitor keeps.
	out.b.WriteString("*mangle\n")
	out.write(chainLine(chainProxyCanary))
	out.b.WriteString("COMMIT\n")

	out.b.WriteString("*filter\n")
	for _, c := range []string{"INPUT", "FORWARD", "OUTPUT"} {
		out.write(":" + c + " ACCEPT [0:0]")
	}
	out.write(chainLine(chainProxyCanary))
	out.b.Write(filterChains.b.Bytes())
	// Jump rules, in the order kube-proxy's and kubelet's EnsureRule(Prepend)
	// calls leave them.
	newOnly := []string{"-m", "conntrack", "--ctstate", "NEW"}
	out.write("-A", "INPUT", "-j", chainKubeletFirewall)
	out.write("-A", "INPUT", newOnly, "-m", "comment", "--comment", `"kubernetes load balancer firewall"`, "-j", chainProxyFirewall)
	out.write("-A", "INPUT", "-m", "comment", "--comment", `"kubernetes health check service ports"`, "-j", chainNodePorts)
	out.write("-A", "INPUT", newOnly, "-m", "comment", "--comment", `"kubernetes externally-visible service portals"`, "-j", chainExternalServices)
	out.write("-A", "FORWARD", newOnly, "-m", "comment", "--comment", `"kubernetes load balancer firewall"`, "-j", chainProxyFirewall)
	out.write("-A", "FORWARD", "-m", "comment", "--comment", `"kubernetes forwarding rules"`, "-j", chainForward)
	out.write("-A", "FORWARD", newOnly, "-m", "comment", "--comment", `"kubernetes service portals"`, "-j", chainServices)
	out.write("-A", "FORWARD", newOnly, "-m", "comment", "--comment", `"kubernetes externally-visible service portals"`, "-j", chainExternalServices)
	out.write("-A", "OUTPUT", "-j", chainKubeletFirewall)
	out.write("-A", "OUTPUT", newOnly, "-m", "comment", "--comment", `"kubernetes load balancer firewall"`, "-j", chainProxyFirewall)
	out.write("-A", "OUTPUT", newOnly, "-m", "comment", "--comment", `"kubernetes service portals"`, "-j", chainServices)
	out.b.Write(filterRules.b.Bytes())
	out.b.WriteString("COMMIT\n")

	out.b.WriteString("*nat\n")
	for _, c := range []string{"PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"} {
		out.write(":" + c + " ACCEPT [0:0]")
	}
	out.write(chainLine(chainProxyCanary))
	out.b.Write(natChains.b.Bytes())
	out.write("-A", "PREROUTING", "-m", "comment", "--comment", `"kubernetes service portals"`, "-j", chainServices)
	out.write("-A", "OUTPUT", "-m", "comment", "--comment", `"kubernetes service portals"`, "-j", chainServices)
	out.write("-A", "POSTROUTING", "-m", "comment", "--comment", `"kubernetes postrouting rules"`, "-j", chainPostrouting)
	out.b.Write(natRules.b.Bytes())
	out.b.WriteString("COMMIT\n")
	return out.b.Bytes()
}

// writeServiceToEndpointRules writes the load-balancing jumps from a policy
// chain to the endpoint chains (no session affinity in the lab).
func writeServiceToEndpointRules(natRules *lineBuffer, name, protocol, chain string, endpoints []EndpointView) {
	n := len(endpoints)
	for i, ep := range endpoints {
		args := []string{"-A", chain, "-m", "comment", "--comment", fmt.Sprintf(`"%s -> %s"`, name, ep.String())}
		if i < n-1 {
			args = append(args, "-m", "statistic", "--mode", "random",
				"--probability", fmt.Sprintf("%0.10f", 1.0/float64(n-i)))
		}
		natRules.write(args, "-j", EndpointChain(name, protocol, ep.String()))
	}
}
