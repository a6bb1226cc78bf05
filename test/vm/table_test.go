package vm

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		name   string
		exit   int
		output string
		want   Outcome
	}{
		{"pass", 0, "=== RUN   TestA\n--- PASS: TestA (0.00s)\nPASS\n", Outcome{Status: StatusPass}},
		{"fail", 1, "=== RUN   TestA\n--- FAIL: TestA (0.00s)\n--- PASS: TestB (0.00s)\nFAIL\n", Outcome{StatusFail, "1 failed"}},
		{"panic", 2, "panic: boom\n", Outcome{StatusFail, "exit code 2"}},
		{"na", 0, "SVCTRACE-NA: netfilter links need 6.4+\n--- SKIP: TestA (0.00s)\nPASS\n", Outcome{StatusNA, "netfilter links need 6.4+"}},
		{"na from t.Log", 0, "    x_test.go:12: SVCTRACE-NA: no fentry\n--- SKIP: TestA (0.00s)\n", Outcome{StatusNA, "no fentry"}},
		{"na ignored when a test passed", 0, "SVCTRACE-NA: x\n--- PASS: TestB (0.00s)\n", Outcome{Status: StatusPass}},
		{"na but failed", 1, "SVCTRACE-NA: x\n--- FAIL: TestB (0.00s)\n", Outcome{StatusFail, "1 failed"}},
		{"skip", 0, "--- SKIP: TestA (0.00s)\n--- SKIP: TestB (0.00s)\nPASS\n", Outcome{StatusSkip, "2 skipped"}},
		{"subtest skips do not count", 0, "--- PASS: TestA (0.00s)\n    --- SKIP: TestA/x (0.00s)\n", Outcome{Status: StatusPass}},
		{"no tests", 0, "testing: warning: no tests to run\nPASS\n", Outcome{StatusSkip, "no tests to run"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if got := Classify(c.exit, []byte(c.output)); got != c.want {
				t.Errorf("Classify = %+v, want %+v", got, c.want)
			}
		})
	}
}

func TestCombine(t *testing.T) {
	pass, fail := Outcome{Status: StatusPass}, Outcome{StatusFail, "x"}
	na, skip := Outcome{StatusNA, "old"}, Outcome{StatusSkip, "1 skipped"}
	for _, c := range []struct {
		in   []Outcome
		want Outcome
	}{
		{[]Outcome{pass, na, skip}, pass},
		{[]Outcome{na, fail, pass}, fail},
		{[]Outcome{skip, na}, na},
		{[]Outcome{skip}, skip},
		{nil, Outcome{StatusSkip, "no test binaries"}},
	} {
		if got := Combine(c.in); got != c.want {
			t.Errorf("Combine(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func testTable() *Table {
	return &Table{
		Cells: []string{"kprobe/iptables", "netfilter/iptables"},
		Rows: []*Row{
			{Kernel: "5.10", Release: "5.10.0-46-amd64", Cells: map[string]*CellResult{
				"kprobe/iptables":    {Outcome: Outcome{Status: StatusPass}},
				"netfilter/iptables": {Outcome: Outcome{StatusNA, "needs 6.4+"}},
			}},
			{Kernel: "host", Cells: map[string]*CellResult{
				"kprobe/iptables": {Outcome: Outcome{StatusFail, "1 failed"}, Packages: []PackageResult{
					{Package: "example.com/p", Outcome: Outcome{StatusFail, "1 failed"}, ExitCode: 1},
				}},
			}},
		},
	}
}

func TestTableText(t *testing.T) {
	var b bytes.Buffer
	if err := testTable().WriteText(&b); err != nil {
		t.Fatal(err)
	}
	want := strings.Join([]string{
		"KERNEL  RELEASE          kprobe/iptables  netfilter/iptables",
		"5.10    5.10.0-46-amd64  pass             n/a(needs 6.4+)",
		"host    -                fail(1 failed)   -",
		"",
	}, "\n")
	if b.String() != want {
		t.Errorf("table:\n%s\nwant:\n%s", b.String(), want)
	}
}

func TestTableJSON(t *testing.T) {
	tab := testTable()
	if !tab.Failed() {
		t.Error("a table with a failed cell did not fail")
	}
	delete(tab.Rows[1].Cells, "kprobe/iptables")
	if tab.Failed() {
		t.Error("a table without failed cells failed")
	}
	var b bytes.Buffer
	if err := testTable().WriteJSON(&b); err != nil {
		t.Fatal(err)
	}
	var got struct {
		Cells []string
		Rows  []struct {
			Kernel string
			Cells  map[string]struct {
				Status   string
				Reason   string
				Packages []struct {
					Package  string
					Status   string
					ExitCode int `json:"exit_code"`
				}
			}
		}
	}
	if err := json.Unmarshal(b.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if c := got.Rows[0].Cells["netfilter/iptables"]; c.Status != "n/a" || c.Reason != "needs 6.4+" {
		t.Errorf("n/a cell in JSON: %+v", c)
	}
	if p := got.Rows[1].Cells["kprobe/iptables"].Packages; len(p) != 1 || p[0].Status != "fail" || p[0].ExitCode != 1 {
		t.Errorf("package results in JSON: %+v\n%s", p, b.String())
	}
}
