package main

import (
	"cmp"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/test/vm"
)

func TestSharedDirs(t *testing.T) {
	work := t.TempDir()
	b001 := filepath.Join(work, "b001")
	cover := filepath.Join(b001, "gocoverdir")
	out := t.TempDir()
	for _, d := range []string{b001, cover} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	gocover := t.TempDir()
	t.Setenv("GOCOVERDIR", gocover)
	args := []string{
		filepath.Join(b001, "p.test"),
		"-test.paniconexit0",
		"-test.gocoverdir=" + cover,
		"-test.coverprofile=" + filepath.Join(b001, "_cover_.out"),
		"-test.outputdir", out,
		"-test.cpuprofile=cpu.out", // relative to the working directory
		"-test.run=TestX",
		"-test.trace=/nonexistent/dir/trace.out",
	}
	got := sharedDirs(work, args, nil)
	want := []string{b001, cover}
	want = append(want, out, gocover, work)
	slices.SortFunc(want, func(a, b string) int {
		return cmp.Or(cmp.Compare(len(a), len(b)), strings.Compare(a, b))
	})
	want = slices.Compact(want)
	if !slices.Equal(got, want) {
		t.Errorf("sharedDirs = %q\nwant         %q", got, want)
	}
}

func TestDefaultTimeout(t *testing.T) {
	t.Setenv(envTimeout, "")
	if d := defaultTimeout([]string{"x", "-test.timeout=10m0s"}); d != 15*time.Minute {
		t.Errorf("timeout = %v", d)
	}
	if d := defaultTimeout([]string{"x"}); d != vm.DefaultTimeout {
		t.Errorf("timeout = %v", d)
	}
	t.Setenv(envTimeout, "90s")
	if d := defaultTimeout([]string{"x", "-test.timeout=10m0s"}); d != 90*time.Second {
		t.Errorf("timeout = %v", d)
	}
}
