package vm

import (
	"slices"
	"strings"
)

// PassEnv keeps the variables of env that matter to a test inside a VM:
// SVCTRACE_*, CI, PATH, HOME, TMPDIR, GOCOVERDIR and the Go runtime's knobs.
// The rest of the host's environment (display, ssh agent, ...) stays out.
func PassEnv(env []string) []string {
	keep := []string{"CI", "PATH", "HOME", "TMPDIR", "GOCOVERDIR", "GODEBUG", "GOTRACEBACK", "GOMAXPROCS"}
	var out []string
	for _, e := range env {
		k, _, _ := strings.Cut(e, "=")
		if strings.HasPrefix(k, "SVCTRACE_") || slices.Contains(keep, k) {
			out = append(out, e)
		}
	}
	return out
}
