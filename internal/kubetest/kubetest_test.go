package kubetest

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
)

func TestLdflags(t *testing.T) {
	got := ldflags("v1.37.2")
	for _, want := range []string{"-X k8s.io/component-base/version.gitVersion=v1.37.2", "-X k8s.io/client-go/pkg/version.gitMinor=37",
		"-X k8s.io/component-base/version.gitMajor=1"} {
		if !strings.Contains(got, want) {
			t.Errorf("ldflags %q lack %q", got, want)
		}
	}
}

func TestCacheKey(t *testing.T) {
	dir, err := ModuleDir()
	if err != nil {
		t.Fatal(err)
	}
	version, key, err := cacheKey(dir)
	if err != nil {
		t.Fatal(err)
	}
	if version != "v1.37.2" || !strings.HasPrefix(key, "v1.37.2-") || len(key) != len("v1.37.2-")+12 {
		t.Errorf("version %q key %q", version, key)
	}
}

func TestStartStop(t *testing.T) {
	s := StartForTest(t)
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	v, err := c.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	if v.GitVersion != "v1.37.2" {
		t.Errorf("server version %q, want the stamped v1.37.2", v.GitVersion)
	}
	// The kubeconfig works as kubectl would load it.
	cfg, err := clientcmd.BuildConfigFromFlags("", s.Kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	kc, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kc.CoreV1().Namespaces().List(context.Background(), metav1.ListOptions{}); err != nil {
		t.Errorf("list with the admin kubeconfig: %v", err)
	}
}

// TestKilledTestLeavesNothing kills a test process (SIGKILL: no cleanup
// runs) that started a control plane, and checks the kernel took etcd and
// kube-apiserver with it.
func TestKilledTestLeavesNothing(t *testing.T) {
	if os.Getenv("SVCTRACE_KUBETEST_CHILD") == "1" {
		s := StartForTest(t)
		fmt.Printf("PIDS %d %d\n", s.etcd.Pid(), s.apiserver.Pid())
		time.Sleep(time.Hour)
		return
	}
	BinariesForTest(t) // skip with -short, build before the child needs it
	cmd := exec.Command(os.Args[0], "-test.run=^TestKilledTestLeavesNothing$", "-test.v")
	cmd.Env = append(os.Environ(), "SVCTRACE_KUBETEST_CHILD=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	var pids []int
	sc := bufio.NewScanner(out)
	for sc.Scan() {
		if f := strings.Fields(sc.Text()); len(f) == 3 && f[0] == "PIDS" {
			for _, p := range f[1:] {
				n, _ := strconv.Atoi(p)
				pids = append(pids, n)
			}
			break
		}
	}
	if len(pids) != 2 {
		t.Fatal("the child did not start a control plane")
	}
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = cmd.Wait()
	deadline := time.Now().Add(10 * time.Second)
	for _, pid := range pids {
		for syscall.Kill(pid, 0) == nil {
			if time.Now().After(deadline) {
				_ = syscall.Kill(-pid, syscall.SIGKILL)
				t.Fatalf("process %d outlived the killed test process", pid)
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("process %d: %v", pid, err)
		}
	}
}
