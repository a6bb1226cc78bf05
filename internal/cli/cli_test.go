package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func runCLI(t *testing.T, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	code = Main(context.Background(), args, &out, &errb)
	return code, out.String(), errb.String()
}

const manifest = `apiVersion: v1
kind: Service
metadata: {name: hostnames, namespace: default}
spec:
  clusterIP: 10.96.0.10
  ports: [{port: 80, targetPort: 9376}]
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: default}
spec:
  clusterIP: None
  ports: [{port: 80}]
`

func writeManifest(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "cluster.yaml")
	if err := os.WriteFile(p, []byte(manifest), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUsageErrors(t *testing.T) {
	mf := writeManifest(t)
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"no service", []string{"--manifests", mf}, "--svc is required"},
		{"no metadata", []string{"--svc", "hostnames"}, "pass --manifests"},
		{"missing file", []string{"--svc", "hostnames", "--manifests", "/nonexistent"}, "no such file"},
		{"bad output", []string{"--svc", "hostnames", "--manifests", mf, "-o", "yaml"}, `--output "yaml"`},
		{"bad backend", []string{"--svc", "hostnames", "--manifests", mf, "--backend", "ebpf"}, `unknown backend "ebpf"`},
		{"bad flag", []string{"--nope"}, "unknown flag"},
		{"unknown service", []string{"--svc", "hostname", "--manifests", mf}, "did you mean default/hostnames"},
		{"headless", []string{"--svc", "headless", "--manifests", mf}, "no virtual IP"},
		{"unknown hook", []string{"--svc", "hostnames", "--manifests", mf, "--skip-hooks", "devices,routes"}, `unknown hook "routes" (hooks: netfilter, nat`},
		{"bad netns", []string{"--svc", "hostnames", "--manifests", mf, "--netns", "nope-does-not-exist"}, "--netns"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, stderr := runCLI(t, tc.args...)
			if code != ExitUsage {
				t.Errorf("exit code %d, want %d (stderr %q)", code, ExitUsage, stderr)
			}
			if !strings.Contains(stderr, tc.want) {
				t.Errorf("stderr %q does not say %q", stderr, tc.want)
			}
			if strings.Count(strings.TrimSpace(stderr), "\n") > 0 {
				t.Errorf("want a one-line error, got %q", stderr)
			}
		})
	}
}

func TestHelpTeaches(t *testing.T) {
	code, out, _ := runCLI(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--svc", "--manifests", "--backend", "svctrace doctor", "Examples:"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q", want)
		}
	}
}

func TestColorChoice(t *testing.T) {
	var buf bytes.Buffer
	if colorWanted(&buf, "auto") {
		t.Error("colour on a non-terminal")
	}
	if !colorWanted(&buf, "always") || colorWanted(&buf, "never") {
		t.Error("--color always/never not honoured")
	}
	t.Setenv("NO_COLOR", "1")
	if colorWanted(os.Stdout, "auto") {
		t.Error("NO_COLOR not honoured")
	}
}
