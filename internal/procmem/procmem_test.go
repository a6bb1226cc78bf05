package procmem

import (
	"encoding/json"
	"os"
	"strconv"
	"strings"
	"testing"
)

func rssFile(t *testing.T) int64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "RssFile:"); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n << 10
		}
	}
	t.Fatal("no RssFile in /proc/self/status")
	return 0
}

// TestTrimExecutable trims this test binary's own mappings: its resident
// file pages go down, and it goes on running code and reading read-only
// data (which fault back in) as before.
func TestTrimExecutable(t *testing.T) {
	before := rssFile(t)
	n, err := TrimExecutable()
	if err != nil {
		t.Fatal(err)
	}
	after := rssFile(t)
	if n == 0 || after >= before {
		t.Fatalf("unmapped %d bytes; RssFile %d -> %d, want it lower", n, before, after)
	}
	// Code and read-only data still work (reflection reads type data).
	out, err := json.Marshal(map[string][]int{"a": {1, 2}})
	if err != nil || string(out) != `{"a":[1,2]}` {
		t.Fatalf("after the trim: %s %v", out, err)
	}
	t.Logf("unmapped %d MB of mappings; RssFile %d -> %d kB", n>>20, before>>10, after>>10)
}

func TestReadSmaps(t *testing.T) {
	maps, err := readSmaps()
	if err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Readlink("/proc/self/exe")
	var code bool
	for _, m := range maps {
		if m.path == exe && strings.HasPrefix(m.perms, "r-x") && m.end > m.start {
			code = true
		}
	}
	if !code {
		t.Fatalf("no executable mapping of %s among %d mappings", exe, len(maps))
	}
}
