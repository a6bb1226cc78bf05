package cli

import (
	"bytes"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

func TestKubectlFlags(t *testing.T) {
	code, out, _ := runCLI(t, "--help")
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	for _, want := range []string{"--kubeconfig", "--context", "-n, --namespace", "--as ", "--as-group", "--server", "--request-timeout"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q", want)
		}
	}
	if strings.Contains(out, "--cache-dir") {
		t.Error("help offers --cache-dir, which svctrace does not use")
	}
}

func TestKubectlPluginHelp(t *testing.T) {
	var out bytes.Buffer
	root := newRoot(&out, &out)
	asKubectlPlugin(root, "/usr/local/bin/kubectl-svctrace")
	root.SetArgs([]string{"--help"})
	if err := root.Execute(); err != nil {
		t.Fatal(err)
	}
	help := out.String()
	for _, want := range []string{"kubectl svctrace --svc NAME", "sudo kubectl svctrace --svc hostnames", "'kubectl svctrace doctor'"} {
		if !strings.Contains(help, want) {
			t.Errorf("plugin help lacks %q:\n%s", want, help)
		}
	}
	if strings.Contains(help, "  svctrace --svc") || strings.Contains(help, "sudo svctrace") {
		t.Errorf("plugin help still says plain svctrace:\n%s", help)
	}
	if root.CommandPath() != "kubectl svctrace" {
		t.Errorf("command path %q", root.CommandPath())
	}

	var plain bytes.Buffer
	r2 := newRoot(&plain, &plain)
	asKubectlPlugin(r2, "/usr/bin/svctrace")
	if r2.CommandPath() != "svctrace" {
		t.Errorf("not a plugin: command path %q", r2.CommandPath())
	}
}

func writeKubeconfig(t *testing.T, server string) string {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: server, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "t"}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u", Namespace: "team-a"}
	cfg.CurrentContext = "c"
	p := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, p); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestKubeUsageErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + ln.Addr().String()
	ln.Close()
	kc := writeKubeconfig(t, closed)

	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	t.Setenv("KUBECONFIG", "")
	t.Setenv("HOME", t.TempDir())
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"unreachable", []string{"--svc", "hostnames", "--kubeconfig", kc}, "cannot reach the Kubernetes API server at " + closed},
		{"no kubeconfig", []string{"--svc", "hostnames"}, "no kubeconfig"},
		{"missing kubeconfig", []string{"--svc", "hostnames", "--kubeconfig", "/nonexistent/kubeconfig"}, "kubeconfig"},
		{"unknown context", []string{"--svc", "hostnames", "--kubeconfig", kc, "--context", "nope"}, `context "nope" does not exist`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			begin := time.Now()
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
			if d := time.Since(begin); d > 5*time.Second {
				t.Errorf("took %s", d)
			}
		})
	}
}

func TestNamespaceResolution(t *testing.T) {
	kc := writeKubeconfig(t, "https://127.0.0.1:1")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--kubeconfig", kc}, "team-a"}, // the context's namespace
		{[]string{"--kubeconfig", kc, "-n", "prod"}, "prod"},
		{[]string{"--manifests", kc}, "default"}, // manifests: kubectl's default
		{[]string{"--manifests", kc, "-n", "prod"}, "prod"},
	} {
		var out bytes.Buffer
		o := &traceOptions{stdout: &out, stderr: &out}
		root := &cobra.Command{Use: "svctrace"}
		o.addFlags(root)
		if err := root.ParseFlags(tc.args); err != nil {
			t.Fatal(err)
		}
		if err := o.completeKube(); err != nil {
			t.Fatalf("%v: %v", tc.args, err)
		}
		if o.namespace != tc.want {
			t.Errorf("%v: namespace %q, want %q", tc.args, o.namespace, tc.want)
		}
	}
}
