package lab

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// ProxyView is what one node's kube-proxy believes and programs: every
// service port with the endpoints it uses. Normally it mirrors the
// EndpointSlices; faults make it diverge.
type ProxyView struct {
	Node   string
	NodeIP string
	Config ProxyConfig
	Ports  []ServicePortView
}

// ServicePortView is one service port as kube-proxy sees it.
type ServicePortView struct {
	Namespace string
	Name      string
	PortName  string
	Protocol  corev1.Protocol
	ClusterIP string
	Port      int32
	NodePort  int32

	LoadBalancerIPs     []string
	ExternalIPs         []string
	ExternalPolicyLocal bool // externalTrafficPolicy=Local (and externally accessible)
	InternalPolicyLocal bool
	HealthCheckNodePort int32

	Endpoints []EndpointView
}

// ServicePortName is kube-proxy's ServicePortName string:
// "namespace/name:port", or "namespace/name" for an unnamed port.
func (p ServicePortView) ServicePortName() string {
	s := p.Namespace + "/" + p.Name
	if p.PortName != "" {
		s += ":" + p.PortName
	}
	return s
}

// ExternallyAccessible reports whether the port has a NodePort, a load
// balancer IP or an external IP.
func (p ServicePortView) ExternallyAccessible() bool {
	return p.NodePort != 0 || len(p.LoadBalancerIPs) > 0 || len(p.ExternalIPs) > 0
}

func (p ServicePortView) protocol() string { return strings.ToLower(string(p.Protocol)) }

// EndpointView is one endpoint of a service port.
type EndpointView struct {
	IP          string
	Port        int32
	NodeName    string
	Ready       bool
	Serving     bool
	Terminating bool
}

// String is "ip:port", as kube-proxy prints endpoints.
func (e EndpointView) String() string {
	return net.JoinHostPort(e.IP, strconv.Itoa(int(e.Port)))
}

// Target is a node a RuleWriter programs.
type Target interface {
	NodeName() string
	// Netns is the node's network namespace name (see NetnsPath).
	Netns() string
	// Run runs a command inside the node's network namespace.
	Run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error)
}

// RuleWriter turns a node's ProxyView into its dataplane, as one kube-proxy
// mode does.
type RuleWriter interface {
	Mode() ProxyMode
	// Available reports whether the mode can work on this kernel and machine.
	Available() error
	// Apply replaces the node's service rules and returns the text that was
	// loaded (e.g. the iptables-restore input).
	Apply(ctx context.Context, t Target, v ProxyView) (string, error)
}

// NewRuleWriter returns the writer for a proxy mode.
func NewRuleWriter(mode ProxyMode) (RuleWriter, error) {
	switch mode {
	case ProxyIPTables, "":
		return iptablesWriter{}, nil
	case ProxyIPVS:
		return ipvsWriter{}, nil
	case ProxyNone:
		return noneWriter{}, nil
	default:
		return nil, fmt.Errorf("unknown proxy mode %q", mode)
	}
}

// noneWriter leaves the nodes' service rules to someone else.
type noneWriter struct{}

func (noneWriter) Mode() ProxyMode                                          { return ProxyNone }
func (noneWriter) Available() error                                         { return nil }
func (noneWriter) Apply(context.Context, Target, ProxyView) (string, error) { return "", nil }

// Chain names, computed like kube-proxy's iptables proxier.

func portProtoHash(servicePortName, protocol string) string {
	hash := sha256.Sum256([]byte(servicePortName + protocol))
	return base32.StdEncoding.EncodeToString(hash[:])[:16]
}

// ServiceChain is the KUBE-SVC-* chain of a service port ("ns/name:port",
// protocol "tcp"/"udp"/"sctp").
func ServiceChain(servicePortName, protocol string) string {
	return "KUBE-SVC-" + portProtoHash(servicePortName, strings.ToLower(protocol))
}

// LocalServiceChain is the KUBE-SVL-* chain (Local traffic policy).
func LocalServiceChain(servicePortName, protocol string) string {
	return "KUBE-SVL-" + portProtoHash(servicePortName, strings.ToLower(protocol))
}

// ExternalChain is the KUBE-EXT-* chain (NodePort, load balancer and
// external IP traffic).
func ExternalChain(servicePortName, protocol string) string {
	return "KUBE-EXT-" + portProtoHash(servicePortName, strings.ToLower(protocol))
}

// FirewallChain is the KUBE-FW-* chain (loadBalancerSourceRanges).
func FirewallChain(servicePortName, protocol string) string {
	return "KUBE-FW-" + portProtoHash(servicePortName, strings.ToLower(protocol))
}

// EndpointChain is the KUBE-SEP-* chain of one endpoint ("ip:port").
func EndpointChain(servicePortName, protocol, endpoint string) string {
	hash := sha256.Sum256([]byte(servicePortName + strings.ToLower(protocol) + endpoint))
	return "KUBE-SEP-" + base32.StdEncoding.EncodeToString(hash[:])[:16]
}

// categorizeEndpoints mirrors kube-proxy's proxy.CategorizeEndpoints
// (without topology hints): the endpoints used for Cluster and Local
// policy, all endpoints that need a KUBE-SEP chain, and whether the service
// has usable endpoints anywhere.
func categorizeEndpoints(p ServicePortView, node string) (cluster, local, all []EndpointView, hasAny bool) {
	usesCluster := !p.InternalPolicyLocal || p.ExternallyAccessible()
	usesLocal := p.InternalPolicyLocal || (p.ExternalPolicyLocal && p.ExternallyAccessible())
	if usesCluster {
		for _, ep := range p.Endpoints {
			if ep.Ready {
				cluster = append(cluster, ep)
			}
		}
		if len(cluster) == 0 {
			for _, ep := range p.Endpoints {
				if ep.Serving && ep.Terminating {
					cluster = append(cluster, ep)
				}
			}
		}
		hasAny = len(cluster) > 0
	}
	if !usesLocal {
		return cluster, nil, cluster, hasAny
	}
	var localReady, localServingTerminating bool
	for _, ep := range p.Endpoints {
		switch {
		case ep.Ready:
			hasAny = true
			localReady = localReady || ep.NodeName == node
		case ep.Serving && ep.Terminating:
			hasAny = true
			localServingTerminating = localServingTerminating || ep.NodeName == node
		}
	}
	useServingTerminating := false
	switch {
	case localReady:
		for _, ep := range p.Endpoints {
			if ep.NodeName == node && ep.Ready {
				local = append(local, ep)
			}
		}
	case localServingTerminating:
		useServingTerminating = true
		for _, ep := range p.Endpoints {
			if ep.NodeName == node && ep.Serving && ep.Terminating {
				local = append(local, ep)
			}
		}
	}
	if !usesCluster {
		return cluster, local, local, hasAny
	}
	if !useServingTerminating {
		return cluster, local, cluster, hasAny
	}
	seen := map[string]bool{}
	for _, ep := range append(append([]EndpointView{}, cluster...), local...) {
		if !seen[ep.String()] {
			seen[ep.String()] = true
			all = append(all, ep)
		}
	}
	return cluster, local, all, hasAny
}

// sortEndpoints orders endpoints the way kube-proxy's endpoints map does.
func sortEndpoints(eps []EndpointView) {
	sort.SliceStable(eps, func(i, j int) bool { return eps[i].String() < eps[j].String() })
}
