package kubetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// Without a kubelet or controllers, tests create the objects a cluster would
// have and set their status themselves.

// CreateNamespace creates a namespace.
func CreateNamespace(ctx context.Context, c kubernetes.Interface, name string) error {
	_, err := c.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create namespace %s: %w", name, err)
	}
	return nil
}

// CreateNode creates a Ready Node with an InternalIP and a pod CIDR.
func CreateNode(ctx context.Context, c kubernetes.Interface, name, internalIP, podCIDR string) error {
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{corev1.LabelHostname: name}},
		Spec:       corev1.NodeSpec{PodCIDR: podCIDR, PodCIDRs: []string{podCIDR}},
	}
	n, err := c.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{})
	if err != nil {
		return fmt.Errorf("create node %s: %w", name, err)
	}
	n.Status.Addresses = []corev1.NodeAddress{
		{Type: corev1.NodeInternalIP, Address: internalIP},
		{Type: corev1.NodeHostName, Address: name},
	}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue,
		Reason: "KubeletReady", LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	if _, err := c.CoreV1().Nodes().UpdateStatus(ctx, n, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("node %s status: %w", name, err)
	}
	return nil
}

// Pod describes a running Pod to create.
type Pod struct {
	Namespace, Name, Node string
	IP, HostIP            string
	Labels                map[string]string
	Ports                 []corev1.ContainerPort
	// Owner is the controlling ReplicaSet's name (optional).
	Owner string
}

// CreateRunningPod creates the Pod and sets its status as a kubelet would:
// Running, Ready, with its addresses.
func CreateRunningPod(ctx context.Context, c kubernetes.Interface, p Pod) (*corev1.Pod, error) {
	obj := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Labels: p.Labels},
		Spec: corev1.PodSpec{
			NodeName:                      p.Node,
			AutomountServiceAccountToken:  new(bool),
			TerminationGracePeriodSeconds: new(int64),
			Containers:                    []corev1.Container{{Name: "app", Image: "registry.invalid/app", Ports: p.Ports}},
		},
	}
	if p.Owner != "" {
		t := true
		obj.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: p.Owner,
			UID: "00000000-0000-0000-0000-000000000001", Controller: &t}}
	}
	obj, err := c.CoreV1().Pods(p.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	now := metav1.Now()
	obj.Status = corev1.PodStatus{
		Phase:     corev1.PodRunning,
		PodIP:     p.IP,
		PodIPs:    []corev1.PodIP{{IP: p.IP}},
		HostIP:    p.HostIP,
		HostIPs:   []corev1.HostIP{{IP: p.HostIP}},
		StartTime: &now,
		Conditions: []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.ContainersReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
		},
	}
	obj, err = c.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, obj, metav1.UpdateOptions{})
	if err != nil {
		return nil, fmt.Errorf("pod %s/%s status: %w", p.Namespace, p.Name, err)
	}
	return obj, nil
}

// DeletePod deletes a Pod at once (grace period 0), as a kubelet confirming
// the end of its containers would.
func DeletePod(ctx context.Context, c kubernetes.Interface, namespace, name string) error {
	zero := int64(0)
	if err := c.CoreV1().Pods(namespace).Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", namespace, name, err)
	}
	return nil
}

// EndpointSlice builds the slice of Service svc listing pods (ready,
// serving) with ports, managed by the test rather than the endpointslice
// controller.
func EndpointSlice(svc *corev1.Service, name string, ports []discoveryv1.EndpointPort, pods ...*corev1.Pod) *discoveryv1.EndpointSlice {
	t := true
	s := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: svc.Namespace, Name: name, Labels: map[string]string{
			discoveryv1.LabelServiceName: svc.Name,
			discoveryv1.LabelManagedBy:   "svctrace-test",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       ports,
	}
	for _, p := range pods {
		node := p.Spec.NodeName
		s.Endpoints = append(s.Endpoints, discoveryv1.Endpoint{
			Addresses:  []string{p.Status.PodIP},
			Conditions: discoveryv1.EndpointConditions{Ready: &t, Serving: &t},
			NodeName:   &node,
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: p.Namespace, Name: p.Name, UID: p.UID},
		})
	}
	return s
}

// kinds maps the kinds ApplyFile accepts to their resources.
func kinds() map[string]schema.GroupVersionResource {
	return map[string]schema.GroupVersionResource{
		"v1/Namespace":      {Version: "v1", Resource: "namespaces"},
		"v1/ServiceAccount": {Version: "v1", Resource: "serviceaccounts"},
		"v1/ConfigMap":      {Version: "v1", Resource: "configmaps"},
		"rbac.authorization.k8s.io/v1/ClusterRole":        {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"},
		"rbac.authorization.k8s.io/v1/ClusterRoleBinding": {Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"},
		"apps/v1/DaemonSet":                               {Group: "apps", Version: "v1", Resource: "daemonsets"},
	}
}

// ApplyFile server-side applies every object of a multi-document YAML file
// with strict field validation (an unknown or duplicated field fails), as
// "kubectl apply --server-side" does. It returns the applied objects.
func ApplyFile(ctx context.Context, cfg *rest.Config, path string) ([]*unstructured.Unstructured, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	dec := yaml.NewYAMLOrJSONDecoder(f, 4096)
	var out []*unstructured.Unstructured
	for i := 1; ; i++ {
		var obj unstructured.Unstructured
		if err := dec.Decode(&obj.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return out, nil
			}
			return out, fmt.Errorf("%s: document %d: %w", path, i, err)
		}
		if len(obj.Object) == 0 {
			continue
		}
		gvk := obj.GroupVersionKind()
		gvr, ok := kinds()[gvk.GroupVersion().String()+"/"+gvk.Kind]
		if !ok {
			return out, fmt.Errorf("%s: document %d: kind %s not supported here", path, i, gvk)
		}
		var ri dynamic.ResourceInterface = dc.Resource(gvr)
		if ns := obj.GetNamespace(); ns != "" {
			ri = dc.Resource(gvr).Namespace(ns)
		}
		data, err := obj.MarshalJSON()
		if err != nil {
			return out, err
		}
		applied, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data,
			metav1.PatchOptions{FieldManager: "svctrace-test", FieldValidation: "Strict"})
		if err != nil {
			return out, fmt.Errorf("%s: document %d (%s %s): %w", path, i, gvk.Kind, obj.GetName(), err)
		}
		out = append(out, applied)
	}
}
