package meta

import (
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func entryStrings(f FilterSet) []string {
	var out []string
	for _, e := range f.Entries {
		out = append(out, e.String())
	}
	return out
}

func TestFilter(t *testing.T) {
	s := loadCluster(t)
	tests := []struct {
		ns, name string
		want     []string
	}{
		{"default", "hostnames", []string{
			"ClusterIP 10.96.183.43:80/TCP",
			"Endpoint 10.244.10.238:9376/TCP",
			"FormerEndpoint 10.244.10.237:9376/TCP",
		}},
		{"shop", "frontend", []string{
			"ClusterIP 10.96.120.7:80/TCP",
			"ClusterIP 10.96.120.7:443/UDP",
			"ClusterIP [fd00:10:96::7a]:80/TCP",
			"ClusterIP [fd00:10:96::7a]:443/UDP",
			"ExternalIP 198.51.100.10:80/TCP",
			"ExternalIP 198.51.100.10:443/UDP",
			"LoadBalancerIP 203.0.113.25:80/TCP",
			"LoadBalancerIP 203.0.113.25:443/UDP",
			"NodePort *:31380/TCP",
			"NodePort *:31443/UDP",
			"Endpoint 10.244.10.9:8080/TCP",
			"Endpoint 10.244.10.9:8443/UDP",
			"Endpoint 10.244.20.5:8080/TCP",
			"Endpoint 10.244.20.5:8443/UDP",
			"Endpoint [fd00:10:244:20::5]:8080/TCP",
			"Endpoint [fd00:10:244:20::5]:8443/UDP",
		}},
		{"db", "postgres", []string{"Endpoint 10.244.20.30:5432/TCP"}},
		{"default", "kubernetes", []string{"ClusterIP 10.96.0.1:443/TCP", "Endpoint 10.130.29.80:6443/TCP"}},
	}
	for _, tt := range tests {
		t.Run(tt.ns+"/"+tt.name, func(t *testing.T) {
			svc := mustService(t, s, tt.ns, tt.name)
			f := s.Filter(svc)
			if got := entryStrings(f); !slices.Equal(got, tt.want) {
				t.Errorf("entries:\n%q\nwant\n%q", got, tt.want)
			}
			if f.Service != svc.Ref() {
				t.Errorf("service = %v", f.Service)
			}
			if again := s.Filter(svc); !reflect.DeepEqual(again, f) {
				t.Error("Filter is not deterministic")
			}
		})
	}

	f := s.Filter(mustService(t, s, "shop", "frontend"))
	if e, ok := f.Match(addr("10.130.29.82"), 31380, tcp); !ok || e.Role != RoleNodePort || e.Addr.IsValid() {
		t.Errorf("node port match = %v, %v", e, ok)
	}
	if e, ok := f.Match(addr("10.244.10.9"), 8080, tcp); !ok || e.Role != RoleEndpoint || e.Proto != ProtoTCP {
		t.Errorf("terminating endpoint match = %v, %v", e, ok)
	}
	if _, ok := f.Match(addr("10.244.10.9"), 8080, udp); ok {
		t.Error("matched the wrong protocol")
	}
	if got := s.Filter(nil); len(got.Entries) != 0 {
		t.Errorf("nil service: %v", got)
	}
}

func TestFilterDedupe(t *testing.T) {
	// An external IP equal to the ClusterIP and a port listed twice collapse to one entry
	// with the higher-priority role.
	svc := newService("ns", "s", "10.96.0.5", 80, 8080)
	svc.Spec.ExternalIPs = []string{"10.96.0.5", "192.0.2.1"}
	svc.Spec.Ports = append(svc.Spec.Ports, svc.Spec.Ports[0])
	svc.Spec.Type = corev1.ServiceTypeNodePort
	svc.Spec.Ports[0].NodePort = 30080
	svc.Spec.Ports[1].NodePort = 30080
	s := NewSnapshot(svc, newSlice("ns", "s-1", "s", 8080, sliceEndpoint{ip: "192.0.2.1", ready: true}))
	got := entryStrings(s.Filter(mustService(t, s, "ns", "s")))
	want := []string{
		"ClusterIP 10.96.0.5:80/TCP",
		"ExternalIP 192.0.2.1:80/TCP",
		"NodePort *:30080/TCP",
		"Endpoint 192.0.2.1:8080/TCP",
	}
	if !slices.Equal(got, want) {
		t.Errorf("entries %q, want %q", got, want)
	}
	if svc := mustService(t, s, "ns", "s"); svc.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyCluster {
		t.Errorf("externalTrafficPolicy not defaulted: %q", svc.ExternalTrafficPolicy)
	}
	if e := (FilterEntry{Addr: netip.Addr{}, Role: Role(42)}); e.String() != "Role(42) *:*/any" {
		t.Errorf("String = %q", e.String())
	}
}
