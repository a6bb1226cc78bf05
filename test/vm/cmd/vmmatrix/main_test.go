package main

import (
	"bytes"
	"slices"
	"testing"

	"github.com/svctrace/svctrace/test/vm"
)

func TestSelectCells(t *testing.T) {
	m := &vm.Matrix{Axes: []vm.Axis{
		{Env: "B", Values: []string{"kprobe", "fentry", "netfilter"}},
		{Env: "P", Values: []string{"iptables", "ipvs"}},
	}}
	cells, err := selectCells(m.Cells(), "kprobe/*, */ipvs")
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, c := range cells {
		names = append(names, c.Name)
	}
	if want := []string{"kprobe/iptables", "kprobe/ipvs", "fentry/ipvs", "netfilter/ipvs"}; !slices.Equal(names, want) {
		t.Errorf("cells = %q, want %q", names, want)
	}
	if _, err := selectCells(m.Cells(), "nope/*"); err == nil {
		t.Error("a pattern matching nothing is not an error")
	}
}

func TestSelectKernels(t *testing.T) {
	m := &vm.Matrix{Kernels: []vm.Kernel{{Name: "6.1"}, {Name: "host"}}}
	ks, err := selectKernels(m, "host")
	if err != nil || len(ks) != 1 || ks[0].Name != "host" {
		t.Errorf("selectKernels = %v, %v", ks, err)
	}
	if _, err := selectKernels(m, "4.19"); err == nil {
		t.Error("an unknown kernel is not an error")
	}
}

func TestPrefixWriter(t *testing.T) {
	var b bytes.Buffer
	w := &prefixWriter{prefix: "[k] ", w: &b}
	w.Write([]byte("a\nb"))
	w.Write([]byte("c\n\nd\n"))
	if want := "[k] a\n[k] bc\n[k] \n[k] d\n"; b.String() != want {
		t.Errorf("got %q, want %q", b.String(), want)
	}
}
