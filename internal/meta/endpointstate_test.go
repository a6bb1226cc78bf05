package meta

import (
	"slices"
	"strings"
	"testing"
)

func TestEndpointState(t *testing.T) {
	s := loadCluster(t)
	hostnames := mustService(t, s, "default", "hostnames")
	frontend := mustService(t, s, "shop", "frontend")
	tests := []struct {
		name       string
		svc        *Service
		addr       string
		port       uint16
		proto      uint8
		verdict    Verdict
		ready      bool
		known      bool
		detailPart string
	}{
		{"ready endpoint", hostnames, "10.244.10.238", 9376, tcp, VerdictReady, true, true, "is a ready endpoint of default/hostnames"},
		{"ready endpoint any port", hostnames, "10.244.10.238", 0, 0, VerdictReady, true, true, "ready endpoint"},
		{"wrong target port", hostnames, "10.244.10.238", 9377, tcp, VerdictWrongPort, false, true, "but only on 9376/TCP"},
		{"terminating endpoint", frontend, "10.244.10.9", 8080, tcp, VerdictTerminating, false, true, "terminating endpoint of shop/frontend"},
		{"IPv6 endpoint", frontend, "fd00:10:244:20::5", 8443, udp, VerdictReady, true, true, "[fd00:10:244:20::5]:8443"},
		{"removed endpoint of a deleted pod", hostnames, "10.244.10.237", 9376, tcp, VerdictRemoved, false, true,
			"was an endpoint of default/hostnames until 2025-06-01T11:58:00Z; pod default/hostnames-dd4cc9dd9-8vx2c deleted 2m ago"},
		{"deleted pod of another service", frontend, "10.244.10.237", 8080, tcp, VerdictPodDeleted, false, true, "was pod default/hostnames-dd4cc9dd9-8vx2c, deleted 2m ago"},
		{"another service's pod", hostnames, "10.244.20.5", 9376, tcp, VerdictOtherService, false, true, "an endpoint of shop/frontend"},
		{"terminating pod elsewhere", hostnames, "10.244.10.9", 9376, tcp, VerdictPodTerminating, false, true, "terminating pod shop/frontend-6c8f9b7d4-wq4lz"},
		{"pod backing no service", hostnames, "10.244.20.99", 9376, tcp, VerdictPodNotEndpoint, false, true, "an endpoint of no service"},
		{"not translated", hostnames, "10.96.183.43", 80, tcp, VerdictServiceAddr, false, true, "address of service default/hostnames"},
		{"bare endpoint of another service", hostnames, "10.130.29.80", 6443, tcp, VerdictOtherService, false, true, "endpoint of default/kubernetes"},
		{"node", hostnames, "10.130.29.82", 9376, tcp, VerdictNode, false, true, "is node node02"},
		{"unknown", hostnames, "192.0.2.200", 9376, tcp, VerdictUnknown, false, false, "nothing is known about 192.0.2.200:9376"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := s.EndpointState(tt.svc, addr(tt.addr), tt.port, tt.proto)
			if st.Verdict != tt.verdict || st.Ready != tt.ready || st.Known != tt.known {
				t.Errorf("verdict %v ready %v known %v, want %v %v %v (%s)", st.Verdict, st.Ready, st.Known, tt.verdict, tt.ready, tt.known, st.Detail)
			}
			if !strings.Contains(st.Detail, tt.detailPart) {
				t.Errorf("detail %q does not contain %q", st.Detail, tt.detailPart)
			}
		})
	}

	st := s.EndpointState(hostnames, addr("10.244.10.237"), 9376, tcp)
	if st.Former == nil || st.Pod == nil || !st.Pod.Deleted || !st.Until.Equal(fixedClock().Add(-2*60e9)) {
		t.Errorf("removed endpoint state = %+v", st)
	}
	st = s.EndpointState(hostnames, addr("10.244.20.5"), 0, 0)
	if !slices.Equal(st.Services, []string{"shop/frontend"}) || st.Pod == nil || st.Pod.Name != "frontend-6c8f9b7d4-m2x7q" {
		t.Errorf("other service state = %+v", st)
	}
	if st := s.EndpointState(frontend, addr("10.244.10.9"), 8080, tcp); st.Endpoint == nil || !st.Endpoint.Serving {
		t.Errorf("terminating endpoint = %+v", st.Endpoint)
	}
	if v := Verdict(200).String(); v != "verdict(200)" {
		t.Errorf("String = %q", v)
	}
}
