package lab

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/yaml"
)

// KubernetesVersion is what the lab's objects claim to come from.
const KubernetesVersion = "v1.33.2"

// Manifests are the Kubernetes objects describing the lab's cluster, as the
// API server would return them: the cluster's truth, never the faults.
type Manifests struct {
	Nodes          []corev1.Node
	Pods           []corev1.Pod
	Services       []corev1.Service
	EndpointSlices []discoveryv1.EndpointSlice
	ConfigMaps     []corev1.ConfigMap
}

// uid derives a stable, UUID-shaped UID.
func uid(kind, ns, name string) types.UID {
	h := sha256.Sum256([]byte(kind + "/" + ns + "/" + name))
	h[6] = h[6]&0x0f | 0x40 // version 4
	h[8] = h[8]&0x3f | 0x80 // RFC 4122 variant
	x := hex.EncodeToString(h[:16])
	return types.UID(x[0:8] + "-" + x[8:12] + "-" + x[12:16] + "-" + x[16:20] + "-" + x[20:32])
}

// suffix5 derives a 5-character name suffix from the alphabet Kubernetes
// uses for generated names.
func suffix5(seed string) string {
	const alphabet = "bcdfghjklmnpqrstvwxz2456789"
	h := sha256.Sum256([]byte(seed))
	b := make([]byte, 5)
	for i := range b {
		b[i] = alphabet[int(h[i])%len(alphabet)]
	}
	return string(b)
}

// ptr returns a pointer to v.
func ptr[T any](v T) *T { return &v }

func condition(ok bool) corev1.ConditionStatus {
	if ok {
		return corev1.ConditionTrue
	}
	return corev1.ConditionFalse
}

// replicaSetOf returns the owning ReplicaSet's name for a Deployment-style
// pod name ("app-<hash>-<5 chars>"), or "".
func replicaSetOf(p PodSpec) string {
	hash := p.Labels["pod-template-hash"]
	if hash == "" {
		return ""
	}
	i := strings.LastIndex(p.Name, "-")
	if i <= 0 || !strings.HasSuffix(p.Name[:i], "-"+hash) {
		return ""
	}
	return p.Name[:i]
}

// buildManifests renders the cluster's truth at time t.
func buildManifests(s *Spec, t time.Time) Manifests {
	created := metav1.NewTime(t.UTC().Truncate(time.Second))
	var m Manifests

	for _, n := range s.Nodes {
		node := corev1.Node{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Node"},
			ObjectMeta: metav1.ObjectMeta{
				Name:              n.Name,
				UID:               uid("Node", "", n.Name),
				CreationTimestamp: created,
				Labels: map[string]string{
					"kubernetes.io/arch":     "amd64",
					"kubernetes.io/hostname": n.Name,
					"kubernetes.io/os":       "linux",
				},
			},
			Spec: corev1.NodeSpec{PodCIDR: n.PodCIDR, PodCIDRs: []string{n.PodCIDR}},
			Status: corev1.NodeStatus{
				Addresses: []corev1.NodeAddress{
					{Type: corev1.NodeInternalIP, Address: n.InternalIP},
					{Type: corev1.NodeHostName, Address: n.Name},
				},
				Conditions: []corev1.NodeCondition{{
					Type: corev1.NodeReady, Status: corev1.ConditionTrue,
					Reason: "KubeletReady", Message: "kubelet is posting ready status",
					LastHeartbeatTime: created, LastTransitionTime: created,
				}},
				NodeInfo: corev1.NodeSystemInfo{
					KubeletVersion:          KubernetesVersion,
					OperatingSystem:         "linux",
					Architecture:            "amd64",
					ContainerRuntimeVersion: "containerd://2.1.1",
				},
			},
		}
		m.Nodes = append(m.Nodes, node)
	}

	for _, p := range s.Pods {
		node := s.node(p.Node)
		ready := !p.NotReady && !p.Terminating
		image := p.Image
		if image == "" {
			image = "registry.k8s.io/e2e-test-images/agnhost:2.53"
		}
		container := p.Labels["app"]
		if container == "" {
			container = strings.SplitN(p.Name, "-", 2)[0]
		}
		pod := corev1.Pod{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
			ObjectMeta: metav1.ObjectMeta{
				Name:              p.Name,
				Namespace:         p.Namespace,
				UID:               uid("Pod", p.Namespace, p.Name),
				CreationTimestamp: created,
				Labels:            cloneMap(p.Labels),
			},
			Spec: corev1.PodSpec{
				NodeName: p.Node,
				Containers: []corev1.Container{{
					Name:  container,
					Image: image,
					Ports: append([]corev1.ContainerPort(nil), p.Ports...),
				}},
				RestartPolicy: corev1.RestartPolicyAlways,
			},
			Status: corev1.PodStatus{
				Phase:     corev1.PodRunning,
				HostIP:    node.InternalIP,
				HostIPs:   []corev1.HostIP{{IP: node.InternalIP}},
				PodIP:     p.IP,
				PodIPs:    []corev1.PodIP{{IP: p.IP}},
				StartTime: &created,
				Conditions: []corev1.PodCondition{
					{Type: corev1.PodReadyToStartContainers, Status: corev1.ConditionTrue, LastTransitionTime: created},
					{Type: corev1.PodInitialized, Status: corev1.ConditionTrue, LastTransitionTime: created},
					{Type: corev1.PodReady, Status: condition(ready), LastTransitionTime: created},
					{Type: corev1.ContainersReady, Status: condition(ready), LastTransitionTime: created},
					{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: created},
				},
				ContainerStatuses: []corev1.ContainerStatus{{
					Name:         container,
					Image:        image,
					Ready:        ready,
					Started:      ptr(true),
					ContainerID:  "containerd://" + hex.EncodeToString(sha256Sum("container/"+podKey(p))),
					State:        corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: created}},
					RestartCount: 0,
				}},
			},
		}
		if !ready {
			for i := range pod.Status.Conditions {
				c := &pod.Status.Conditions[i]
				if c.Type == corev1.PodReady || c.Type == corev1.ContainersReady {
					c.Reason = "ContainersNotReady"
					c.Message = "containers with unready status: [" + container + "]"
				}
			}
		}
		if p.Terminating {
			pod.DeletionTimestamp = &created
			pod.DeletionGracePeriodSeconds = ptr(int64(30))
		}
		if rs := replicaSetOf(p); rs != "" {
			pod.OwnerReferences = []metav1.OwnerReference{{
				APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rs,
				UID: uid("ReplicaSet", p.Namespace, rs), Controller: ptr(true), BlockOwnerDeletion: ptr(true),
			}}
		}
		m.Pods = append(m.Pods, pod)
	}

	for _, svc := range s.Services {
		service := corev1.Service{
			TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
			ObjectMeta: metav1.ObjectMeta{
				Name:              svc.Name,
				Namespace:         svc.Namespace,
				UID:               uid("Service", svc.Namespace, svc.Name),
				CreationTimestamp: created,
			},
			Spec: corev1.ServiceSpec{
				Type:                  svc.Type,
				ClusterIP:             svc.ClusterIP,
				ClusterIPs:            []string{svc.ClusterIP},
				Selector:              cloneMap(svc.Selector),
				SessionAffinity:       corev1.ServiceAffinityNone,
				IPFamilies:            []corev1.IPFamily{corev1.IPv4Protocol},
				IPFamilyPolicy:        ptr(corev1.IPFamilyPolicySingleStack),
				InternalTrafficPolicy: ptr(svc.InternalTrafficPolicy),
				ExternalTrafficPolicy: svc.ExternalTrafficPolicy,
				HealthCheckNodePort:   svc.HealthCheckNodePort,
			},
		}
		if svc.Type == corev1.ServiceTypeLoadBalancer {
			service.Spec.AllocateLoadBalancerNodePorts = ptr(true)
		}
		if svc.Selector == nil && svc.Namespace == "default" && svc.Name == "kubernetes" {
			service.Labels = map[string]string{"component": "apiserver", "provider": "kubernetes"}
		}
		for _, sp := range svc.Ports {
			service.Spec.Ports = append(service.Spec.Ports, corev1.ServicePort{
				Name: sp.Name, Protocol: sp.Protocol, Port: sp.Port,
				TargetPort: intstr.FromInt32(sp.TargetPort), NodePort: sp.NodePort,
			})
		}
		if svc.LoadBalancerIP != "" {
			service.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{
				IP: svc.LoadBalancerIP, IPMode: ptr(corev1.LoadBalancerIPModeVIP),
			}}
		}
		m.Services = append(m.Services, service)
		m.EndpointSlices = append(m.EndpointSlices, buildEndpointSlice(s, svc, created))
	}

	m.ConfigMaps = append(m.ConfigMaps, kubeProxyConfigMap(s, created))
	return m
}

func sha256Sum(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// endpointSliceName is the EndpointSlice's name for svc.
func endpointSliceName(svc ServiceSpec) string {
	switch {
	case svc.EndpointSliceName != "":
		return svc.EndpointSliceName
	case svc.Selector == nil:
		return svc.Name
	default:
		return svc.Name + "-" + suffix5("endpointslice/"+serviceKey(svc))
	}
}

func buildEndpointSlice(s *Spec, svc ServiceSpec, created metav1.Time) discoveryv1.EndpointSlice {
	managedBy := "endpointslice-controller.k8s.io"
	if svc.Selector == nil {
		managedBy = "endpointslicemirroring-controller.k8s.io"
		if svc.Namespace == "default" && svc.Name == "kubernetes" {
			managedBy = "kube-apiserver"
		}
	}
	slice := discoveryv1.EndpointSlice{
		TypeMeta: metav1.TypeMeta{APIVersion: "discovery.k8s.io/v1", Kind: "EndpointSlice"},
		ObjectMeta: metav1.ObjectMeta{
			Name:              endpointSliceName(svc),
			Namespace:         svc.Namespace,
			UID:               uid("EndpointSlice", svc.Namespace, endpointSliceName(svc)),
			CreationTimestamp: created,
			Labels: map[string]string{
				discoveryv1.LabelServiceName: svc.Name,
				discoveryv1.LabelManagedBy:   managedBy,
			},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
	}
	if svc.Selector != nil {
		slice.OwnerReferences = []metav1.OwnerReference{{
			APIVersion: "v1", Kind: "Service", Name: svc.Name,
			UID: uid("Service", svc.Namespace, svc.Name), Controller: ptr(true), BlockOwnerDeletion: ptr(true),
		}}
	}
	eps := s.endpointsOf(svc)
	sort.SliceStable(eps, func(i, j int) bool { return eps[i].IP < eps[j].IP })
	for _, e := range eps {
		ep := discoveryv1.Endpoint{
			Addresses: []string{e.IP},
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptr(e.Ready), Serving: ptr(e.Serving), Terminating: ptr(e.Terminating),
			},
		}
		if e.NodeName != "" {
			ep.NodeName = ptr(e.NodeName)
		}
		if e.Pod != nil {
			ep.TargetRef = &corev1.ObjectReference{
				Kind: "Pod", Namespace: e.Pod.Namespace, Name: e.Pod.Name, UID: uid("Pod", e.Pod.Namespace, e.Pod.Name),
			}
		}
		slice.Endpoints = append(slice.Endpoints, ep)
	}
	for _, sp := range svc.Ports {
		slice.Ports = append(slice.Ports, discoveryv1.EndpointPort{
			Name: ptr(sp.Name), Protocol: ptr(sp.Protocol), Port: ptr(sp.TargetPort),
		})
	}
	return slice
}

// kubeProxyConfigMap is kube-system/kube-proxy as kubeadm writes it.
func kubeProxyConfigMap(s *Spec, created metav1.Time) corev1.ConfigMap {
	mode := s.Proxy.Mode
	conf := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
bindAddress: 0.0.0.0
clusterCIDR: %q
detectLocalMode: ClusterCIDR
iptables:
  localhostNodePorts: true
  masqueradeAll: %t
  masqueradeBit: %d
mode: %s
`, s.Proxy.ClusterCIDR, s.Proxy.MasqueradeAll, masqueradeBit, mode)
	return corev1.ConfigMap{
		TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: metav1.ObjectMeta{
			Name: "kube-proxy", Namespace: "kube-system",
			UID:               uid("ConfigMap", "kube-system", "kube-proxy"),
			CreationTimestamp: created,
			Labels:            map[string]string{"app": "kube-proxy"},
		},
		Data: map[string]string{"config.conf": conf},
	}
}

// writeManifests writes one YAML file per object into dir.
func writeManifests(dir string, m Manifests) error {
	write := func(kind, ns, name string, obj any) error {
		b, err := yaml.Marshal(obj)
		if err != nil {
			return fmt.Errorf("marshal %s %s/%s: %w", kind, ns, name, err)
		}
		file := strings.ToLower(kind) + "-"
		if ns != "" {
			file += ns + "-"
		}
		file += name + ".yaml"
		if err := os.WriteFile(filepath.Join(dir, file), b, 0o644); err != nil {
			return fmt.Errorf("write manifest: %w", err)
		}
		return nil
	}
	for _, o := range m.Nodes {
		if err := write(o.Kind, "", o.Name, o); err != nil {
			return err
		}
	}
	for _, o := range m.Pods {
		if err := write(o.Kind, o.Namespace, o.Name, o); err != nil {
			return err
		}
	}
	for _, o := range m.Services {
		if err := write(o.Kind, o.Namespace, o.Name, o); err != nil {
			return err
		}
	}
	for _, o := range m.EndpointSlices {
		if err := write(o.Kind, o.Namespace, o.Name, o); err != nil {
			return err
		}
	}
	for _, o := range m.ConfigMaps {
		if err := write(o.Kind, o.Namespace, o.Name, o); err != nil {
			return err
		}
	}
	return nil
}

// ReadManifests parses a directory written by a lab back into typed objects.
func ReadManifests(dir string) (Manifests, error) {
	var m Manifests
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return m, fmt.Errorf("list manifests: %w", err)
	}
	sort.Strings(files)
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return m, fmt.Errorf("read manifest: %w", err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(b, &tm); err != nil {
			return m, fmt.Errorf("parse %s: %w", f, err)
		}
		var target any
		switch tm.APIVersion + "/" + tm.Kind {
		case "v1/Node":
			m.Nodes = append(m.Nodes, corev1.Node{})
			target = &m.Nodes[len(m.Nodes)-1]
		case "v1/Pod":
			m.Pods = append(m.Pods, corev1.Pod{})
			target = &m.Pods[len(m.Pods)-1]
		case "v1/Service":
			m.Services = append(m.Services, corev1.Service{})
			target = &m.Services[len(m.Services)-1]
		case "discovery.k8s.io/v1/EndpointSlice":
			m.EndpointSlices = append(m.EndpointSlices, discoveryv1.EndpointSlice{})
			target = &m.EndpointSlices[len(m.EndpointSlices)-1]
		case "v1/ConfigMap":
			m.ConfigMaps = append(m.ConfigMaps, corev1.ConfigMap{})
			target = &m.ConfigMaps[len(m.ConfigMaps)-1]
		default:
			return m, fmt.Errorf("parse %s: unexpected object %s %s", f, tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict(b, target); err != nil {
			return m, fmt.Errorf("parse %s: %w", f, err)
		}
	}
	return m, nil
}
