package kubetest

import (
	"context"
	"os"
	"testing"
	"time"
)

// BinariesForTest returns the built control plane, building it if needed
// (minutes the first time: CI prebuilds it with hack/build-kapi.sh). With
// -short the test is skipped.
func BinariesForTest(t testing.TB) *Binaries {
	t.Helper()
	if testing.Short() {
		t.Skip("needs a real kube-apiserver (built once from test/kapi; skipped with -short)")
	}
	if b, ok := Cached(); ok {
		return b
	}
	if os.Getenv("SVCTRACE_VM_GUEST") != "" {
		// Linking kube-apiserver under software emulation takes far longer
		// than any test timeout: the host builds it (make kapi).
		t.Fatal("the control plane is not built: run make kapi (or hack/build-kapi.sh) on the host before the VM tests")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Minute)
	defer cancel()
	b, err := Build(ctx, t.Logf)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// StartForTest starts etcd and kube-apiserver for t and stops them when
// the test ends.
func StartForTest(t testing.TB) *Server {
	t.Helper()
	bins := BinariesForTest(t)
	// Generous: under software emulation (the VM matrix, two VMs sharing
	// two CPUs) the API server's post-start hooks once took over 60 s.
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	s, err := Start(ctx, bins, Config{Dir: t.TempDir(), Logf: t.Logf, ReadyTimeout: 3 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(); err != nil {
			t.Errorf("stop the control plane: %v", err)
		}
	})
	return s
}
