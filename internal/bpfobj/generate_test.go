package bpfobj

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestGeneratedUpToDate rebuilds the BPF object and its Go bindings with the
// exact //go:generate command of gen.go into a temporary folder and fails if
// they differ from the committed files: run `make generate` and commit.
func TestGeneratedUpToDate(t *testing.T) {
	if _, err := exec.LookPath("clang"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("clang is required in CI to check the generated BPF object")
		}
		t.Skip("clang not installed: cannot regenerate the BPF object")
	}
	src, err := os.ReadFile("gen.go")
	if err != nil {
		t.Fatal(err)
	}
	var args []string
	for _, line := range strings.Split(string(src), "\n") {
		if rest, ok := strings.CutPrefix(line, "//go:generate go tool bpf2go "); ok {
			args = strings.Fields(rest)
		}
	}
	if args == nil {
		t.Fatal("no //go:generate go tool bpf2go line in gen.go")
	}
	// bpf2go's flags go before the stem; quoted -cflags must stay one argument.
	args = joinQuoted(args)
	out := t.TempDir()
	cmd := exec.Command("go", append([]string{"tool", "bpf2go", "-output-dir", out}, args...)...)
	cmd.Env = append(os.Environ(), "GOPACKAGE=bpfobj")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("bpf2go: %v\n%s", err, b)
	}
	files, err := filepath.Glob(filepath.Join(out, "*"))
	if err != nil || len(files) == 0 {
		t.Fatalf("bpf2go wrote nothing (%v)", err)
	}
	for _, f := range files {
		name := filepath.Base(f)
		fresh, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		committed, err := os.ReadFile(name)
		if err != nil {
			t.Errorf("%s is generated but not committed: run make generate", name)
			continue
		}
		if !bytes.Equal(fresh, committed) {
			t.Errorf("%s differs from a fresh build of bpf/svctrace.c: run make generate and commit", name)
		}
	}
}

func joinQuoted(in []string) []string {
	var out []string
	for i := 0; i < len(in); i++ {
		a := in[i]
		if strings.HasPrefix(a, `"`) && !strings.HasSuffix(a, `"`) || a == `"` {
			j := i + 1
			for ; j < len(in); j++ {
				a += " " + in[j]
				if strings.HasSuffix(in[j], `"`) {
					break
				}
			}
			i = j
		}
		out = append(out, strings.Trim(a, `"`))
	}
	return out
}
