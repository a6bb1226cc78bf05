// Package lab builds small, cluster-shaped Kubernetes dataplanes out of Linux
// network namespaces, for the tracer's privileged end-to-end tests and for
// `svctrace demo`.
//
// A lab is described by a declarative [Spec] (networks, nodes, hosts, pods,
// services, kube-proxy configuration and deliberate faults), brought up with
// [Up] and torn down with [Lab.Close]. Ready-made specs reproducing the
// incident stories the project is built around are listed by [Scenarios].
//
// Shape of the dataplane:
//
//   - every node, pod, extra host and L2 network is its own named network
//     namespace (/run/netns/<id>-<name>, id = "st" + 4 hex digits), so several
//     labs can run side by side and leftovers of a killed run can be found
//     again by name ([Cleanup]);
//   - networks are a switch namespace holding a bridge; members hang off it with
//     veth pairs (no bridge inside a node: replies would need br_netfilter);
//   - pods are wired like Calico: eth0 holds the pod IP as a /32 with
//     "default via 169.254.1.1 dev eth0 onlink"; the node side is a
//     cali<11 hex> veth with proxy_arp=1 and a /32 route to the pod;
//   - cross-node pod traffic uses host-gw routes or a flannel-style VXLAN
//     device (flannel.1, VNI 1, UDP 8472, static ARP and FDB entries);
//   - each node's service rules are written by a [RuleWriter]. The iptables
//     writer renders exactly what kube-proxy's iptables proxier (1.3x) writes
//     for the node's view of Services and EndpointSlices and loads it with the
//     real iptables-restore inside the node's namespace;
//   - backends are in-process TCP/UDP servers answering with their pod name
//     (like serve_hostname), listening inside the pod namespaces.
//
// The manifests the lab writes ([Lab.ManifestsDir]) always show the cluster's
// truth; faults only change the dataplane, as in the incidents.
//
// Scenarios ([Scenarios], [LookupScenario]; every one carries its Checks,
// the probes a client runs and what each must see):
//
//	healthy             node1; curl pod, hostnames pod(s); ClusterIP works from pods and node
//	unreachable-backend node1 lacks the backend's /32 route: TCP "No route to host", UDP timeout
//	stale-backend       seed 000: rules DNAT to a deleted pod's IP: "No route to host"
//	no-backend          seed 001: Service programmed without endpoints: REJECT, "Connection refused"
//	wrong-source        seed 002: two-NIC node sources ClusterIP traffic from eth1: timeout
//	missing-masquerade  seed 003: VXLAN, node1's own traffic not masqueraded, node2 rp_filter drops it
//	no-local-endpoint   seed 004: LB IP, externalTrafficPolicy=Local, pod on node1 dropped
//
// Addresses: node network 192.168.50.0/24 (node<i> = .1<i> on eth0, default
// via .1), pod CIDRs 10.244.<i>.0/24, Services 10.96.0.0/12
// (default/hostnames 10.96.0.10: 80/TCP "default" and 53/UDP "dns" to
// 9376), default/kubernetes 10.96.0.1:443 -> 10.0.0.8:6443, the LB IP
// 172.18.0.100. The constants in scenarios.go name them.
//
// Everything here needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN).
package lab
