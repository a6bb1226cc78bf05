package kernel

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
)

func loadBTF(t *testing.T) *BTF {
	t.Helper()
	b, err := LoadBTF()
	if errors.Is(err, ErrNoBTF) {
		t.Skipf("kernel feature absent: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestDropReasonsFromBTF(t *testing.T) {
	b := loadBTF(t)
	reasons, err := b.DropReasons()
	if err != nil {
		t.Skipf("kernel feature absent: %v", err)
	}
	byName := map[string]uint32{}
	for v, n := range reasons {
		byName[n] = v
	}
	for _, want := range []string{"NOT_SPECIFIED", "NETFILTER_DROP", "NO_SOCKET"} {
		if _, ok := byName[want]; !ok {
			t.Errorf("drop reason %s missing from %d names", want, len(reasons))
		}
	}
}

func TestSignaturesFromBTF(t *testing.T) {
	b := loadBTF(t)
	proto, mod, err := b.Func("fib_table_lookup")
	if err != nil {
		t.Fatal(err)
	}
	if mod != "" {
		t.Errorf("fib_table_lookup found in module %q, want vmlinux", mod)
	}
	if err := CheckParams("fib_table_lookup", proto, "struct fib_table *", "struct flowi4 *", "struct fib_result *"); err != nil {
		t.Error(err)
	}
	if err := CheckParams("fib_table_lookup", proto, "struct sk_buff *"); err == nil {
		t.Error("a wrong signature was accepted")
	}
	if _, _, err := b.Func("no_such_function_svctrace"); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing function: %v", err)
	}
	n, err := b.TracepointArgs("fib_table_lookup")
	if err != nil || n != 4 {
		t.Errorf("fib_table_lookup tracepoint: %d args, %v", n, err)
	}
	if n, err := b.TracepointArgs("kfree_skb"); err != nil || n < 2 {
		t.Errorf("kfree_skb tracepoint: %d args, %v", n, err)
	}
}

func TestVersion(t *testing.T) {
	major, minor := Version()
	if major < 4 || minor < 0 {
		t.Errorf("version %d.%d from %q", major, minor, Release())
	}
}

func TestSymbols(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: /proc/kallsyms hides addresses from others")
	}
	if !SymbolExists("fib_table_lookup") {
		t.Error("fib_table_lookup not in kallsyms")
	}
	t.Run("lazy", func(t *testing.T) { testSymbolLookup(t, &Symbols{}) })
	t.Run("loaded", func(t *testing.T) {
		s := &Symbols{}
		if err := s.Load(); err != nil {
			t.Fatal(err)
		}
		testSymbolLookup(t, s)
	})
}

func testSymbolLookup(t *testing.T, s *Symbols) {
	if got := s.Lookup(0); got != "" {
		t.Errorf("address 0 named %q", got)
	}
	// A real address inside a function is named with its offset.
	data, err := os.ReadFile("/proc/kallsyms")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && f[2] == "fib_table_lookup" && (f[1] == "t" || f[1] == "T") {
			addr, err := strconv.ParseUint(f[0], 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			if got := s.Lookup(addr + 0x10); got != "fib_table_lookup+0x10" {
				t.Errorf("Lookup(fib_table_lookup+0x10) = %q", got)
			}
			return
		}
	}
	t.Error("fib_table_lookup has no text symbol in /proc/kallsyms")
}
