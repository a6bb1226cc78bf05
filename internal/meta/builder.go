package meta

import (
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// DefaultRetention is how long a Builder remembers deleted Pods and former endpoints.
const DefaultRetention = 10 * time.Minute

// ErrUnsupportedObject is returned by Builder.Upsert and Builder.Delete for objects other than
// Services, EndpointSlices, Pods and Nodes.
var ErrUnsupportedObject = errors.New("unsupported object")

// Builder accumulates Kubernetes objects and builds immutable Snapshots from them. It is what
// an informer source drives: Upsert on add/update, Delete on delete, Build after a batch of
// changes. The zero value is ready to use. A Builder is not safe for concurrent use; Snapshots
// it builds share nothing mutable with it.
type Builder struct {
	// Retention is how long deleted Pods and former endpoints are kept (DefaultRetention if 0).
	Retention time.Duration
	// Now is the clock used for deletion ages and for endpoints that vanish from an updated
	// EndpointSlice (time.Now if nil).
	Now func() time.Time

	services    map[ObjectRef]*Service
	slices      map[ObjectRef]*sliceRec
	pods        map[ObjectRef]*Pod
	nodes       map[string]*Node
	deletedPods map[string]*Pod
	former      map[formerKey]*formerRec
	// objWarnings holds the parse warnings of each stored object, keyed by "kind ns/name",
	// so that an update replaces them and a delete drops them.
	objWarnings map[string][]string
}

type sliceRec struct {
	ref       ObjectRef
	service   ObjectRef
	endpoints []Endpoint
}

type formerKey struct {
	service ObjectRef
	addr    netip.Addr
}

type formerRec struct {
	service ObjectRef
	FormerEndpoint
}

func (b *Builder) init() {
	if b.services != nil {
		return
	}
	b.services = map[ObjectRef]*Service{}
	b.slices = map[ObjectRef]*sliceRec{}
	b.pods = map[ObjectRef]*Pod{}
	b.nodes = map[string]*Node{}
	b.deletedPods = map[string]*Pod{}
	b.former = map[formerKey]*formerRec{}
	b.objWarnings = map[string][]string{}
}

func (b *Builder) now() time.Time {
	if b.Now != nil {
		return b.Now()
	}
	return time.Now()
}

func (b *Builder) retention() time.Duration {
	if b.Retention > 0 {
		return b.Retention
	}
	return DefaultRetention
}

// defaultNamespace applies kubectl's rule: a namespaced object without a namespace is in "default".
func defaultNamespace(ns string) string {
	if ns == "" {
		return "default"
	}
	return ns
}

func (b *Builder) setWarnings(key string, w []string) {
	if len(w) == 0 {
		delete(b.objWarnings, key)
		return
	}
	b.objWarnings[key] = w
}

// Upsert adds or replaces a *corev1.Service, *discoveryv1.EndpointSlice, *corev1.Pod or
// *corev1.Node. The object is read, never kept or modified. Endpoints that an updated
// EndpointSlice no longer lists are remembered as former endpoints from Now(). Other types
// return an error wrapping ErrUnsupportedObject.
func (b *Builder) Upsert(obj runtime.Object) error {
	b.init()
	switch o := obj.(type) {
	case *corev1.Service:
		svc, w := parseService(o)
		b.services[svc.Ref()] = svc
		b.setWarnings("service "+svc.String(), w)
	case *discoveryv1.EndpointSlice:
		rec, w := parseSlice(o)
		key := "endpointslice " + rec.ref.String()
		b.setWarnings(key, w)
		if old := b.slices[rec.ref]; old != nil {
			b.retire(old, rec, b.now())
		}
		if rec.service.IsZero() {
			delete(b.slices, rec.ref)
			return nil
		}
		b.slices[rec.ref] = rec
	case *corev1.Pod:
		pod, w := parsePod(o)
		b.pods[pod.Ref()] = pod
		b.setWarnings("pod "+pod.String(), w)
		delete(b.deletedPods, tombstoneKey(pod))
	case *corev1.Node:
		node, w := parseNode(o)
		b.nodes[node.Name] = node
		b.setWarnings("node "+node.Name, w)
	default:
		return fmt.Errorf("upsert %T: %w", obj, ErrUnsupportedObject)
	}
	return nil
}

// Delete records that obj was deleted at time at. A deleted Pod is kept, marked Deleted, for
// Retention after at; the endpoints of a deleted EndpointSlice become former endpoints of its
// Service until at. Services and Nodes are simply removed. Other types return an error
// wrapping ErrUnsupportedObject.
func (b *Builder) Delete(obj runtime.Object, at time.Time) error {
	b.init()
	switch o := obj.(type) {
	case *corev1.Service:
		ref := ObjectRef{defaultNamespace(o.Namespace), o.Name}
		delete(b.services, ref)
		delete(b.objWarnings, "service "+ref.String())
	case *discoveryv1.EndpointSlice:
		ref := ObjectRef{defaultNamespace(o.Namespace), o.Name}
		old := b.slices[ref]
		if old == nil {
			// Never seen live (e.g. a manifest of a deleted slice): retire what it lists.
			old, _ = parseSlice(o)
		}
		b.retire(old, nil, at)
		delete(b.slices, ref)
		delete(b.objWarnings, "endpointslice "+ref.String())
	case *corev1.Pod:
		pod, _ := parsePod(o)
		ref := pod.Ref()
		if live := b.pods[ref]; live != nil && live.UID == pod.UID {
			if len(pod.IPs) == 0 {
				// The final state may lack the IPs the live object had.
				pod.IPs, pod.HostIPs = live.IPs, live.HostIPs
			}
			delete(b.pods, ref)
			delete(b.objWarnings, "pod "+ref.String())
		}
		pod.Deleted = true
		pod.DeletedAt = at
		pod.Terminating = false
		if len(pod.IPs) > 0 {
			b.deletedPods[tombstoneKey(pod)] = pod
		}
	case *corev1.Node:
		delete(b.nodes, o.Name)
		delete(b.objWarnings, "node "+o.Name)
	default:
		return fmt.Errorf("delete %T: %w", obj, ErrUnsupportedObject)
	}
	return nil
}

// retire records the endpoints of old that next (nil when old was deleted) no longer lists.
func (b *Builder) retire(old, next *sliceRec, at time.Time) {
	if old == nil || old.service.IsZero() {
		return
	}
	var keep map[netip.Addr]bool
	if next != nil && next.service == old.service {
		keep = make(map[netip.Addr]bool, len(next.endpoints))
		for _, ep := range next.endpoints {
			keep[ep.Addr] = true
		}
	}
	for _, ep := range old.endpoints {
		if keep[ep.Addr] {
			continue
		}
		k := formerKey{old.service, ep.Addr}
		if prev := b.former[k]; prev != nil && prev.Until.After(at) {
			continue
		}
		b.former[k] = &formerRec{service: old.service, FormerEndpoint: FormerEndpoint{
			Addr: ep.Addr, Ports: ep.Ports, NodeName: ep.NodeName, PodRef: ep.PodRef, Until: at,
		}}
	}
}

func tombstoneKey(p *Pod) string {
	if p.UID != "" {
		return p.UID
	}
	key := p.Namespace + "/" + p.Name
	if len(p.IPs) > 0 {
		key += "@" + p.IPs[0].String()
	}
	return key
}

// prune forgets deleted pods and former endpoints older than the retention window.
func (b *Builder) prune(now time.Time) {
	cutoff := now.Add(-b.retention())
	for k, p := range b.deletedPods {
		if p.DeletedAt.Before(cutoff) {
			delete(b.deletedPods, k)
		}
	}
	for k, f := range b.former {
		if f.Until.Before(cutoff) {
			delete(b.former, k)
		}
	}
}

// Build returns a Snapshot of the current objects. It also forgets deleted Pods and former
// endpoints that have outlived Retention, measured with Now.
func (b *Builder) Build() *Snapshot {
	b.init()
	now := b.now()
	b.prune(now)
	return build(b, now)
}

func parseAddrs(what string, in []string, warn *[]string) []netip.Addr {
	var out []netip.Addr
	for _, s := range in {
		if s == "" {
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			*warn = append(*warn, fmt.Sprintf("%s: bad address %q", what, s))
			continue
		}
		out = appendUniqueAddr(out, a.Unmap())
	}
	return out
}

func appendUniqueAddr(list []netip.Addr, a netip.Addr) []netip.Addr {
	for _, x := range list {
		if x == a {
			return list
		}
	}
	return append(list, a)
}

func port16(what string, p int32, warn *[]string) uint16 {
	if p < 0 || p > 65535 {
		*warn = append(*warn, fmt.Sprintf("%s: port %d out of range", what, p))
		return 0
	}
	return uint16(p)
}

func parseService(o *corev1.Service) (*Service, []string) {
	var warn []string
	svc := &Service{
		Namespace:                defaultNamespace(o.Namespace),
		Name:                     o.Name,
		Type:                     o.Spec.Type,
		ExternalTrafficPolicy:    o.Spec.ExternalTrafficPolicy,
		PublishNotReadyAddresses: o.Spec.PublishNotReadyAddresses,
		ExternalName:             o.Spec.ExternalName,
		HealthCheckNodePort:      port16("healthCheckNodePort", o.Spec.HealthCheckNodePort, &warn),
	}
	what := "service " + svc.String()
	if svc.Type == "" {
		svc.Type = corev1.ServiceTypeClusterIP
	}
	if o.Spec.InternalTrafficPolicy != nil {
		svc.InternalTrafficPolicy = *o.Spec.InternalTrafficPolicy
	} else if svc.Type != corev1.ServiceTypeExternalName {
		svc.InternalTrafficPolicy = corev1.ServiceInternalTrafficPolicyCluster
	}
	if svc.ExternalTrafficPolicy == "" &&
		(svc.Type == corev1.ServiceTypeNodePort || svc.Type == corev1.ServiceTypeLoadBalancer) {
		svc.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyCluster
	}
	ips := o.Spec.ClusterIPs
	if len(ips) == 0 && o.Spec.ClusterIP != "" {
		ips = []string{o.Spec.ClusterIP}
	}
	for _, ip := range ips {
		if ip == corev1.ClusterIPNone {
			svc.Headless = true
		}
	}
	if !svc.Headless {
		svc.ClusterIPs = parseAddrs(what+" clusterIP", ips, &warn)
	}
	svc.ExternalIPs = parseAddrs(what+" externalIP", o.Spec.ExternalIPs, &warn)
	for _, ing := range o.Status.LoadBalancer.Ingress {
		if ing.IP != "" {
			svc.LoadBalancerIPs = append(svc.LoadBalancerIPs, parseAddrs(what+" load balancer ingress", []string{ing.IP}, &warn)...)
		}
	}
	if len(o.Spec.Selector) > 0 {
		svc.Selector = true
		svc.SelectorLabels = make(map[string]string, len(o.Spec.Selector))
		for k, v := range o.Spec.Selector {
			svc.SelectorLabels[k] = v
		}
	}
	for _, p := range o.Spec.Ports {
		proto, ok := protocolOf(p.Protocol)
		if !ok {
			warn = append(warn, fmt.Sprintf("%s port %q: unknown protocol %q", what, p.Name, p.Protocol))
			continue
		}
		sp := ServicePort{
			Name:       p.Name,
			Protocol:   proto,
			Port:       port16(what, p.Port, &warn),
			TargetPort: p.TargetPort,
			NodePort:   port16(what, p.NodePort, &warn),
		}
		if sp.TargetPort.Type == intstr.Int && sp.TargetPort.IntVal == 0 {
			// The API server defaults targetPort to port.
			sp.TargetPort = intstr.FromInt32(p.Port)
		}
		svc.Ports = append(svc.Ports, sp)
	}
	return svc, warn
}

func parseSlice(o *discoveryv1.EndpointSlice) (*sliceRec, []string) {
	var warn []string
	rec := &sliceRec{ref: ObjectRef{defaultNamespace(o.Namespace), o.Name}}
	what := "endpointslice " + rec.ref.String()
	name := o.Labels[discoveryv1.LabelServiceName]
	if name == "" {
		return rec, append(warn, what+": no "+discoveryv1.LabelServiceName+" label; ignored")
	}
	if o.AddressType == discoveryv1.AddressTypeFQDN {
		return rec, append(warn, what+": FQDN endpoints are not traced; ignored")
	}
	rec.service = ObjectRef{rec.ref.Namespace, name}
	var ports []EndpointPort
	for _, p := range o.Ports {
		ep := EndpointPort{Protocol: ProtoTCP}
		if p.Name != nil {
			ep.Name = *p.Name
		}
		if p.Protocol != nil {
			proto, ok := protocolOf(*p.Protocol)
			if !ok {
				warn = append(warn, fmt.Sprintf("%s port %q: unknown protocol %q", what, ep.Name, *p.Protocol))
				continue
			}
			ep.Protocol = proto
		}
		if p.Port != nil {
			ep.Port = port16(what, *p.Port, &warn)
		}
		ports = append(ports, ep)
	}
	for _, e := range o.Endpoints {
		base := Endpoint{
			Ports:       ports,
			Ready:       e.Conditions.Ready == nil || *e.Conditions.Ready,
			Serving:     e.Conditions.Serving == nil || *e.Conditions.Serving,
			Terminating: e.Conditions.Terminating != nil && *e.Conditions.Terminating,
			Slice:       o.Name,
		}
		if e.NodeName != nil {
			base.NodeName = *e.NodeName
		}
		if e.Zone != nil {
			base.Zone = *e.Zone
		}
		if r := e.TargetRef; r != nil && (r.Kind == "Pod" || r.Kind == "") && r.Name != "" {
			ns := r.Namespace
			if ns == "" {
				ns = rec.ref.Namespace
			}
			base.PodRef = ObjectRef{ns, r.Name}
		}
		for _, a := range parseAddrs(what+" endpoint", e.Addresses, &warn) {
			ep := base
			ep.Addr = a
			rec.endpoints = append(rec.endpoints, ep)
		}
	}
	return rec, warn
}

func parsePod(o *corev1.Pod) (*Pod, []string) {
	var warn []string
	pod := &Pod{
		Namespace:   defaultNamespace(o.Namespace),
		Name:        o.Name,
		UID:         string(o.UID),
		NodeName:    o.Spec.NodeName,
		HostNetwork: o.Spec.HostNetwork,
		Phase:       o.Status.Phase,
		Terminating: o.DeletionTimestamp != nil,
		CreatedAt:   o.CreationTimestamp.Time,
	}
	what := "pod " + pod.String()
	if len(o.Labels) > 0 {
		pod.Labels = make(map[string]string, len(o.Labels))
		for k, v := range o.Labels {
			pod.Labels[k] = v
		}
	}
	var ips []string
	for _, ip := range o.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 {
		ips = []string{o.Status.PodIP}
	}
	pod.IPs = parseAddrs(what+" podIP", ips, &warn)
	var hips []string
	for _, ip := range o.Status.HostIPs {
		hips = append(hips, ip.IP)
	}
	if len(hips) == 0 {
		hips = []string{o.Status.HostIP}
	}
	pod.HostIPs = parseAddrs(what+" hostIP", hips, &warn)
	// Hand-written manifests often have no conditions: then a Running pod counts as ready.
	pod.Ready = pod.Phase == corev1.PodRunning
	for _, c := range o.Status.Conditions {
		if c.Type == corev1.PodReady {
			pod.Ready = c.Status == corev1.ConditionTrue
		}
	}
	for i, r := range o.OwnerReferences {
		if i == 0 || (r.Controller != nil && *r.Controller) {
			pod.Owner = r.Kind + "/" + r.Name
		}
	}
	containers := append(append([]corev1.Container(nil), o.Spec.InitContainers...), o.Spec.Containers...)
	for _, c := range containers {
		for _, p := range c.Ports {
			proto, ok := protocolOf(p.Protocol)
			if !ok {
				continue
			}
			pod.Ports = append(pod.Ports, ContainerPort{
				Name:     p.Name,
				Port:     port16(what, p.ContainerPort, &warn),
				Protocol: proto,
				HostPort: port16(what, p.HostPort, &warn),
			})
		}
	}
	return pod, warn
}

func parseNode(o *corev1.Node) (*Node, []string) {
	var warn []string
	node := &Node{Name: o.Name, Zone: o.Labels[corev1.LabelTopologyZone]}
	what := "node " + node.Name
	for _, a := range o.Status.Addresses {
		switch a.Type {
		case corev1.NodeInternalIP:
			node.InternalIPs = append(node.InternalIPs, parseAddrs(what+" address", []string{a.Address}, &warn)...)
		case corev1.NodeExternalIP:
			node.ExternalIPs = append(node.ExternalIPs, parseAddrs(what+" address", []string{a.Address}, &warn)...)
		}
	}
	cidrs := o.Spec.PodCIDRs
	if len(cidrs) == 0 && o.Spec.PodCIDR != "" {
		cidrs = []string{o.Spec.PodCIDR}
	}
	for _, c := range cidrs {
		p, err := netip.ParsePrefix(c)
		if err != nil {
			warn = append(warn, fmt.Sprintf("%s: bad pod CIDR %q", what, c))
			continue
		}
		node.PodCIDRs = append(node.PodCIDRs, p)
	}
	// Hand-written manifests often have no conditions: then the node counts as ready.
	node.Ready = true
	for _, c := range o.Status.Conditions {
		if c.Type == corev1.NodeReady {
			node.Ready = c.Status == corev1.ConditionTrue
		}
	}
	return node, warn
}

func (b *Builder) warnings() []string {
	keys := make([]string, 0, len(b.objWarnings))
	for k := range b.objWarnings {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var out []string
	for _, k := range keys {
		out = append(out, b.objWarnings[k]...)
	}
	return out
}
