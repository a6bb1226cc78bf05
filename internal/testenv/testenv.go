// Package testenv gates tests on what they need (root, BPF, a kernel
// feature). In CI (CI set) a missing privilege fails the test instead of
// skipping it; only a kernel feature that is truly absent may skip, and the
// skip says which.
package testenv

import (
	"os"
	"testing"
)

// InCI reports whether the tests run in CI.
func InCI() bool { return os.Getenv("CI") != "" }

// RequireRoot fails (in CI) or skips (elsewhere) a test that needs root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if InCI() {
		t.Fatal("this test needs root and CI runs as root: refusing to skip")
	}
	t.Skip("needs root (network namespaces, BPF): run with sudo")
}

// SkipIfMissing skips a test because this kernel lacks a feature, saying
// which. A feature error must come from probing the running kernel.
func SkipIfMissing(t testing.TB, feature string, err error) {
	t.Helper()
	if err != nil {
		t.Skipf("kernel feature absent: %s: %v", feature, err)
	}
}
