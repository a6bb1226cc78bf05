package kube

import (
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// slim is the informers' transform function: it replaces each object with a
// copy holding only what meta.Builder reads, so the caches stay small (a Pod
// shrinks to a few hundred bytes; a Node loses its images list). Objects of
// other types (cache.DeletedFinalStateUnknown) pass unchanged.
func slim(obj any) (any, error) {
	switch o := obj.(type) {
	case *corev1.Pod:
		return slimPod(o), nil
	case *corev1.Node:
		return slimNode(o), nil
	case *corev1.Service:
		s := &corev1.Service{ObjectMeta: slimMeta(o.ObjectMeta), Spec: o.Spec}
		s.Status.LoadBalancer = o.Status.LoadBalancer
		return s, nil
	case *discoveryv1.EndpointSlice:
		return &discoveryv1.EndpointSlice{
			ObjectMeta:  slimMeta(o.ObjectMeta),
			AddressType: o.AddressType,
			Endpoints:   o.Endpoints,
			Ports:       o.Ports,
		}, nil
	}
	return obj, nil
}

// slimMeta keeps identity, labels and lifecycle; it drops annotations
// (last-applied-configuration can be large) and managedFields.
func slimMeta(m metav1.ObjectMeta) metav1.ObjectMeta {
	return metav1.ObjectMeta{
		Name:              m.Name,
		Namespace:         m.Namespace,
		UID:               m.UID,
		ResourceVersion:   m.ResourceVersion,
		Labels:            m.Labels,
		CreationTimestamp: m.CreationTimestamp,
		DeletionTimestamp: m.DeletionTimestamp,
	}
}

func slimPod(o *corev1.Pod) *corev1.Pod {
	p := &corev1.Pod{ObjectMeta: slimMeta(o.ObjectMeta)}
	for _, r := range o.OwnerReferences {
		if r.Controller != nil && *r.Controller {
			p.OwnerReferences = []metav1.OwnerReference{r}
			break
		}
	}
	if p.OwnerReferences == nil && len(o.OwnerReferences) > 0 {
		p.OwnerReferences = o.OwnerReferences[:1]
	}
	p.Spec.NodeName = o.Spec.NodeName
	p.Spec.HostNetwork = o.Spec.HostNetwork
	p.Spec.InitContainers = slimContainers(o.Spec.InitContainers)
	p.Spec.Containers = slimContainers(o.Spec.Containers)
	p.Status = corev1.PodStatus{
		Phase:   o.Status.Phase,
		PodIP:   o.Status.PodIP,
		PodIPs:  o.Status.PodIPs,
		HostIP:  o.Status.HostIP,
		HostIPs: o.Status.HostIPs,
	}
	for _, c := range o.Status.Conditions {
		if c.Type == corev1.PodReady {
			p.Status.Conditions = []corev1.PodCondition{{Type: c.Type, Status: c.Status}}
		}
	}
	return p
}

// slimContainers keeps the containers that declare ports, with only their
// name and ports.
func slimContainers(in []corev1.Container) []corev1.Container {
	var out []corev1.Container
	for _, c := range in {
		if len(c.Ports) > 0 {
			out = append(out, corev1.Container{Name: c.Name, Ports: c.Ports})
		}
	}
	return out
}

func slimNode(o *corev1.Node) *corev1.Node {
	n := &corev1.Node{ObjectMeta: slimMeta(o.ObjectMeta)}
	n.Labels = nil
	if z, ok := o.Labels[corev1.LabelTopologyZone]; ok {
		n.Labels = map[string]string{corev1.LabelTopologyZone: z}
	}
	n.Spec.PodCIDR = o.Spec.PodCIDR
	n.Spec.PodCIDRs = o.Spec.PodCIDRs
	n.Status.Addresses = o.Status.Addresses
	for _, c := range o.Status.Conditions {
		if c.Type == corev1.NodeReady {
			n.Status.Conditions = []corev1.NodeCondition{{Type: c.Type, Status: c.Status}}
		}
	}
	return n
}
