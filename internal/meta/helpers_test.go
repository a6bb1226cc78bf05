package meta

import (
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// fixedClock is the clock of the fixtures: the old hostnames pod was deleted at 11:58.
func fixedClock() time.Time { return time.Date(2025, 6, 1, 12, 0, 0, 0, time.UTC) }

// loadCluster loads testdata/cluster (not recursive) with the fixtures' clock.
func loadCluster(t testing.TB) *Snapshot {
	t.Helper()
	src := &ManifestSource{Path: "testdata/cluster", Now: fixedClock}
	s, err := src.Snapshot(t.Context())
	if err != nil {
		t.Fatalf("load fixtures: %v", err)
	}
	return s
}

func mustService(t testing.TB, s *Snapshot, ns, name string) *Service {
	t.Helper()
	svc, err := s.Service(ns, name)
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

// writeFiles writes name → content into a new temporary folder and returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }
