package vm

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestRepositoryMatrix(t *testing.T) {
	m, err := ReadMatrix("kernels.json")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range m.Kernels {
		names = append(names, k.Name)
		if k.IsHost() {
			continue
		}
		if k.Meta == "" || k.Package == "" || k.SHA256 == "" {
			t.Errorf("kernel %s is not pinned with a meta-package", k.Name)
		}
	}
	for _, want := range []string{"5.10", "6.1", "6.12", HostKernel} {
		if !slices.Contains(names, want) {
			t.Errorf("matrix lacks kernel %s (has %v)", want, names)
		}
	}
	// The compiled-in copy is the file.
	d, err := DefaultMatrix()
	if err != nil {
		t.Fatal(err)
	}
	if len(d.Kernels) != len(m.Kernels) {
		t.Errorf("embedded matrix has %d kernels, file %d", len(d.Kernels), len(m.Kernels))
	}
	// What the matrix declares n/a (see test/vm/README.md).
	for _, c := range []struct {
		kernel, cell string
		na           bool
	}{
		{"5.10", "netfilter/iptables", true},
		{"5.10", "fentry/ipvs", true},
		{"5.10", "fentry/iptables", false},
		{"6.1", "netfilter/ipvs", true},
		{"6.1", "fentry/ipvs", false},
		{"6.12", "netfilter/ipvs", false},
		{HostKernel, "kprobe/iptables", true},
		{HostKernel, "netfilter/ipvs", true},
		{HostKernel, "netfilter/iptables", false},
	} {
		k, err := m.Kernel(c.kernel)
		if err != nil {
			t.Fatal(err)
		}
		why, na := k.NAReason(c.cell)
		if na != c.na {
			t.Errorf("%s %s: n/a = %v (%q), want %v", c.kernel, c.cell, na, why, c.na)
		}
		if na && why == "" {
			t.Errorf("%s %s: n/a without a reason", c.kernel, c.cell)
		}
	}
	b, err := m.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	orig, err := os.ReadFile("kernels.json")
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != string(orig) {
		t.Errorf("kernels.json is not in the form vmkernels -update writes; got:\n%s", b)
	}
}

const sha = "6d89bdf9a7c4458c64de7221edfb8e7b2c3279012636e4bb9d6bba4e6b7a67eb"

func TestParseMatrixErrors(t *testing.T) {
	for _, c := range []struct {
		name, json, want string
	}{
		{"unknown field", `{"kernels":[{"name":"host","flavour":"x"}]}`, "unknown field"},
		{"no kernels", `{"kernels":[]}`, "no kernels"},
		{"duplicate", `{"kernels":[{"name":"host"},{"name":"host"}]}`, "declared twice"},
		{"bad sha", `{"kernels":[{"name":"6.1","suite":"bookworm","package":"linux-image-6.1.0-1-amd64","version":"6.1-1","sha256":"abc"}]}`, "bad sha256"},
		{"not linux-image", `{"kernels":[{"name":"6.1","suite":"bookworm","package":"bash","version":"5","sha256":"` + sha + `"}]}`, "not a linux-image"},
		{"host with package", `{"kernels":[{"name":"host","package":"linux-image-x"}]}`, "no package fields"},
		{"bad pattern", `{"kernels":[{"name":"host","na":{"[":"x"}}]}`, "n/a pattern"},
		{"empty axis", `{"kernels":[{"name":"host"}],"axes":[{"env":"X","values":[]}]}`, "no values"},
		{"bad env", `{"kernels":[{"name":"host"}],"axes":[{"env":"1X","values":["a"]}]}`, "bad environment"},
		{"trailing garbage", `{"kernels":[{"name":"host"}]`, "parse"},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := ParseMatrix([]byte(c.json))
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("err = %v, want %q", err, c.want)
			}
		})
	}
}

func TestUnpinnedKernel(t *testing.T) {
	m, err := ParseMatrix([]byte(`{"kernels":[{"name":"6.1","meta":"linux-image-amd64","suite":"bookworm"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	_, err = m.Kernels[0].Prepare(t.Context(), t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "vmkernels -update") {
		t.Fatalf("Prepare of an unpinned kernel: %v, want a hint to run the update", err)
	}
}

func TestCells(t *testing.T) {
	m := &Matrix{Axes: []Axis{
		{Env: "B", Values: []string{"kprobe", "fentry"}},
		{Env: "P", Values: []string{"iptables", "ipvs"}},
	}}
	var got []string
	for _, c := range m.Cells() {
		got = append(got, c.Name+"="+strings.Join(c.Env, ","))
	}
	want := []string{
		"kprobe/iptables=B=kprobe,P=iptables",
		"kprobe/ipvs=B=kprobe,P=ipvs",
		"fentry/iptables=B=fentry,P=iptables",
		"fentry/ipvs=B=fentry,P=ipvs",
	}
	if !slices.Equal(got, want) {
		t.Errorf("cells = %q, want %q", got, want)
	}
	if c := (&Matrix{}).Cells(); len(c) != 1 || c[0].Name != "default" || len(c[0].Env) != 0 {
		t.Errorf("cells without axes = %+v", c)
	}
}

func TestNAReasonOrder(t *testing.T) {
	k := Kernel{Name: "x", NA: map[string]string{"*/ipvs": "no ipvs", "kprobe/*": "no kprobes"}}
	// Both match: the answer must not depend on map order.
	for range 20 {
		if why, _ := k.NAReason("kprobe/ipvs"); why != "no ipvs" {
			t.Fatalf("reason = %q", why)
		}
	}
	if _, na := k.NAReason("fentry/iptables"); na {
		t.Error("fentry/iptables is n/a")
	}
}

func TestFindMatrixFile(t *testing.T) {
	t.Setenv(EnvMatrix, "")
	f, err := FindMatrixFile(".")
	if err != nil {
		t.Fatal(err)
	}
	if abs, _ := filepath.Abs("kernels.json"); f != abs {
		t.Errorf("found %s, want %s", f, abs)
	}
	if _, err := FindMatrixFile(t.TempDir()); err == nil {
		t.Error("found a matrix outside the module")
	}
	t.Setenv(EnvMatrix, "/x/y.json")
	if f, _ := FindMatrixFile("."); f != "/x/y.json" {
		t.Errorf("%s is ignored: %s", EnvMatrix, f)
	}
}
