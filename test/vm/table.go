package vm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"
)

// Status of a test cell.
type Status string

// Cell statuses, from best to worst for aggregation purposes.
const (
	StatusPass Status = "pass"
	StatusSkip Status = "skip" // every test skipped, no SVCTRACE-NA line
	StatusNA   Status = "n/a"  // declared in the matrix, or SVCTRACE-NA printed
	StatusFail Status = "fail" // a test failed, or the harness failed
)

// NAMarker starts the line a test binary prints to say that its cell cannot
// run on this kernel; it then skips all its tests and exits 0.
const NAMarker = "SVCTRACE-NA:"

// Outcome is the result of one test binary, or of a whole cell.
type Outcome struct {
	Status Status `json:"status"`
	// Reason explains n/a, skip and harness failures.
	Reason string `json:"reason,omitempty"`
}

func (o Outcome) String() string {
	if o.Reason != "" && o.Status != StatusPass {
		return fmt.Sprintf("%s(%s)", o.Status, o.Reason)
	}
	return string(o.Status)
}

var testLineRE = regexp.MustCompile(`^--- (PASS|FAIL|SKIP): `)

// Classify turns a Go test binary's exit code and -test.v output into an
// outcome.
func Classify(exitCode int, output []byte) Outcome {
	var pass, fail, skip int
	var na string
	noTests := false
	sc := bufio.NewScanner(bytes.NewReader(output))
	sc.Buffer(make([]byte, 0, 64*1024), 4<<20)
	for sc.Scan() {
		line := sc.Text()
		if i := strings.Index(line, NAMarker); i >= 0 && na == "" {
			na = strings.TrimSpace(line[i+len(NAMarker):])
			if na == "" {
				na = "no reason given"
			}
		}
		if strings.HasPrefix(line, "testing: warning: no tests to run") {
			noTests = true
		}
		if m := testLineRE.FindStringSubmatch(line); m != nil {
			switch m[1] {
			case "PASS":
				pass++
			case "FAIL":
				fail++
			case "SKIP":
				skip++
			}
		}
	}
	switch {
	case exitCode != 0 && fail == 0:
		return Outcome{Status: StatusFail, Reason: fmt.Sprintf("exit code %d", exitCode)}
	case exitCode != 0:
		return Outcome{Status: StatusFail, Reason: fmt.Sprintf("%d failed", fail)}
	case pass == 0 && na != "":
		return Outcome{Status: StatusNA, Reason: na}
	case pass == 0 && skip > 0:
		return Outcome{Status: StatusSkip, Reason: fmt.Sprintf("%d skipped", skip)}
	case pass == 0 && noTests:
		return Outcome{Status: StatusSkip, Reason: "no tests to run"}
	}
	return Outcome{Status: StatusPass}
}

// Combine aggregates the outcomes of several test binaries in one cell: any
// failure fails the cell; otherwise one pass makes it pass; otherwise n/a
// wins over skip.
func Combine(outs []Outcome) Outcome {
	if len(outs) == 0 {
		return Outcome{Status: StatusSkip, Reason: "no test binaries"}
	}
	rank := func(s Status) int {
		return slices.Index([]Status{StatusFail, StatusPass, StatusNA, StatusSkip}, s)
	}
	best := outs[0]
	for _, o := range outs[1:] {
		if rank(o.Status) < rank(best.Status) {
			best = o
		}
	}
	return best
}

// PackageResult is one test binary's run in one cell.
type PackageResult struct {
	Package  string  `json:"package"`
	Outcome          // status and reason
	ExitCode int     `json:"exit_code"`
	Seconds  float64 `json:"seconds"`
	Boot     float64 `json:"boot_seconds,omitempty"`
	Log      string  `json:"log,omitempty"`
}

// CellResult is one (kernel, cell) entry of the table.
type CellResult struct {
	Outcome
	Packages []PackageResult `json:"packages,omitempty"`
}

// Row is one kernel of the table.
type Row struct {
	Kernel  string                 `json:"kernel"`
	Release string                 `json:"release,omitempty"`
	Cells   map[string]*CellResult `json:"cells"`
}

// Table is the result of a matrix run.
type Table struct {
	Cells   []string  `json:"cells"`
	Rows    []*Row    `json:"rows"`
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
}

// Failed reports whether any cell failed.
func (t *Table) Failed() bool {
	for _, r := range t.Rows {
		for _, c := range r.Cells {
			if c.Status == StatusFail {
				return true
			}
		}
	}
	return false
}

// WriteText renders the table for humans: one row per kernel, one column
// per cell.
func (t *Table) WriteText(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 8, 2, ' ', 0)
	fmt.Fprintf(tw, "KERNEL\tRELEASE\t%s\n", strings.Join(t.Cells, "\t"))
	for _, r := range t.Rows {
		cols := make([]string, len(t.Cells))
		for i, c := range t.Cells {
			if res, ok := r.Cells[c]; ok {
				cols[i] = res.Outcome.String()
			} else {
				cols[i] = "-"
			}
		}
		rel := r.Release
		if rel == "" {
			rel = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", r.Kernel, rel, strings.Join(cols, "\t"))
	}
	return tw.Flush()
}

// WriteJSON writes the table as indented JSON.
func (t *Table) WriteJSON(w io.Writer) error {
	b, err := json.MarshalIndent(t, "", "  ")
	if err != nil {
		return fmt.Errorf("marshal table: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
