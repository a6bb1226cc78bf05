package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/demo"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/testenv"
	"github.com/svctrace/svctrace/pkg/event"
)

// recordedScenario brings a scenario up and starts svctrace on its focus
// Service and node with extra flags.
func recordedScenario(t *testing.T, name string, extra ...string) (*lab.Lab, *trace) {
	t.Helper()
	requireBackend(t)
	sc, err := lab.LookupScenario(name)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := sc.Spec(lab.VariantDefault)
	l := upLab(t, spec, err)
	svc, node, err := demo.Focus(spec)
	if err != nil {
		t.Fatal(err)
	}
	ns := svc.Namespace
	if ns == "" {
		ns = "default"
	}
	return l, startTrace(t, l, node, svc.Name, append([]string{"-n", ns}, extra...)...)
}

// linesOf returns the raw JSON lines of the given record types, in order.
func linesOf(t *testing.T, out string, types ...string) []string {
	t.Helper()
	var lines []string
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var head struct{ Type string }
		if err := json.Unmarshal(sc.Bytes(), &head); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		for _, ty := range types {
			if head.Type == ty {
				lines = append(lines, sc.Text())
			}
		}
	}
	return lines
}

// svctrace runs the svctrace binary and returns stdout, stderr and the exit code.
func svctrace(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return stdout.String(), stderr.String(), 0
	case errors.As(err, &ee):
		return stdout.String(), stderr.String(), ee.ExitCode()
	}
	t.Fatalf("svctrace %v: %v", args, err)
	return "", "", 0
}

// requireTshark returns tshark's path; CI installs it (hack/install-deps.sh).
func requireTshark(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("tshark")
	if err != nil {
		if testenv.InCI() {
			t.Fatal("tshark is missing: CI installs it with hack/install-deps.sh (Debian package tshark)")
		}
		t.Skip("tshark is missing: apt-get install tshark")
	}
	return p
}

// keepTestdata copies a recording to $SVCTRACE_RECORD_TESTDATA: how
// internal/record/testdata is made.
func keepTestdata(t *testing.T, src, name string) {
	dir := os.Getenv("SVCTRACE_RECORD_TESTDATA")
	if dir == "" {
		return
	}
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
		t.Fatal(err)
	}
}

// TestRecordReplay traces scenarios with --write and --pcapng, then checks
// that replaying the recording gives exactly the live paths and verdicts,
// and that tshark reads the pcapng with its comments.
func TestRecordReplay(t *testing.T) {
	tshark := requireTshark(t)
	for _, tc := range []struct {
		scenario string
		file     string
		verdict  string
	}{
		{"healthy", "healthy.jsonl.gz", event.VerdictOK},
		{"stale-backend", "stale-backend.jsonl", event.VerdictStaleBackend},
		// wrong-source rests on the output device's addresses: the replay
		// must answer them from the recording.
		{"wrong-source", "wrong-source.jsonl.gz", event.VerdictWrongSource},
	} {
		t.Run(tc.scenario, func(t *testing.T) {
			dir := t.TempDir()
			rec, pcap := filepath.Join(dir, tc.file), filepath.Join(dir, "trace.pcapng")
			l, tr := recordedScenario(t, tc.scenario, "--write", rec, "--pcapng", pcap)
			for _, r := range l.RunChecks(context.Background()) {
				if !r.OK() {
					t.Errorf("probe %s: %v", r.Check.Name, r.Problem)
				}
			}
			live := tr.stop(t, syscall.SIGINT)
			if tr.stderr.Len() > 0 && strings.Contains(tr.stderr.String(), "recording") {
				t.Errorf("svctrace warned about the recording: %s", tr.stderr.String())
			}
			keepTestdata(t, rec, tc.file)

			// (a) replay gives the live paths and verdicts, byte for byte.
			livePaths := linesOf(t, live.raw, "path", "verdict")
			if len(live.paths) == 0 {
				t.Fatalf("the live trace saw no paths:\n%s", live.raw)
			}
			if !strings.Contains(strings.Join(livePaths, "\n"), `"verdict":"`+tc.verdict+`"`) {
				t.Fatalf("the live trace gave no %s verdict:\n%s", tc.verdict, live.raw)
			}
			out, errOut, code := svctrace(t, "replay", "-o", "json", rec)
			if code != 0 {
				t.Fatalf("replay exited %d: %s", code, errOut)
			}
			if errOut != "" {
				t.Errorf("replay of a complete recording warned: %s", errOut)
			}
			replayed := linesOf(t, out, "path", "verdict")
			if len(replayed) != len(livePaths) {
				t.Errorf("replay gave %d paths and verdicts, live %d", len(replayed), len(livePaths))
			}
			for i := range min(len(replayed), len(livePaths)) {
				if replayed[i] != livePaths[i] {
					t.Errorf("record %d differs:\nlive:   %s\nreplay: %s", i, livePaths[i], replayed[i])
					break
				}
			}
			// The text output and --stats work on it too.
			if text, errOut, code := svctrace(t, "replay", "--color", "never", rec); code != 0 || !strings.Contains(text, tc.verdict) {
				t.Errorf("text replay exited %d (%s) without %s:\n%s", code, errOut, tc.verdict, text)
			}
			stats, errOut, code := svctrace(t, "replay", "--stats", rec)
			if code != 0 || !strings.Contains(stats, "events by hook") || !strings.Contains(stats, tc.verdict) {
				t.Errorf("replay --stats exited %d (%s):\n%s", code, errOut, stats)
			}

			// (b) tshark reads the pcapng: the packets and the comments.
			cmd := exec.Command(tshark, "-r", pcap, "-T", "fields", "-E", "separator=|", "-E", "occurrence=a",
				"-e", "frame.number", "-e", "frame.interface_name", "-e", "ip.src", "-e", "ip.dst", "-e", "frame.comment")
			b, err := cmd.Output()
			if err != nil {
				t.Fatalf("tshark: %v", err)
			}
			frames := strings.Split(strings.TrimSpace(string(b)), "\n")
			if len(frames) == 0 || frames[0] == "" {
				t.Fatal("tshark shows no frames")
			}
			var sawVerdict, sawNAT, sawService bool
			for _, f := range frames {
				cols := strings.SplitN(f, "|", 5)
				if len(cols) != 5 || cols[1] == "" || cols[2] == "" || cols[3] == "" || !strings.Contains(cols[4], "svctrace: step ") {
					t.Errorf("frame without interface, addresses or svctrace comment: %q", f)
					continue
				}
				sawVerdict = sawVerdict || strings.Contains(cols[4], "verdict: "+tc.verdict)
				sawNAT = sawNAT || strings.Contains(cols[4], "nat: DNAT ")
				sawService = sawService || strings.Contains(cols[4], "service default/")
			}
			if !sawVerdict || !sawNAT || !sawService {
				t.Errorf("comments lack the verdict (%v), a DNAT step (%v) or the Service (%v):\n%s", sawVerdict, sawNAT, sawService, b)
			}
			// The summary view shows the packets as TCP or UDP over raw IPv4.
			sum, err := exec.Command(tshark, "-r", pcap).Output()
			if err != nil || !(bytes.Contains(sum, []byte("TCP")) || bytes.Contains(sum, []byte("UDP"))) {
				t.Errorf("tshark -r: %v\n%s", err, sum)
			}
			t.Logf("%d paths and verdicts replayed identically; tshark shows %d frames", len(replayed), len(frames))

			// A pcapng made from the recording is the live one.
			again := filepath.Join(dir, "again.pcapng")
			if _, errOut, code := svctrace(t, "replay", "--stats", "--pcapng", again, rec); code != 0 {
				t.Fatalf("replay --pcapng exited %d: %s", code, errOut)
			}
			b2, err := exec.Command(tshark, "-r", again, "-T", "fields", "-E", "separator=|", "-E", "occurrence=a",
				"-e", "frame.number", "-e", "frame.interface_name", "-e", "ip.src", "-e", "ip.dst", "-e", "frame.comment").Output()
			if err != nil || !bytes.Equal(b, b2) {
				t.Errorf("the replayed pcapng differs from the live one (%v)", err)
			}
		})
	}
}

// TestRecordKilled kills svctrace with SIGKILL while packets flow and
// checks that the recording replays its complete records with a warning.
func TestRecordKilled(t *testing.T) {
	for _, file := range []string{"killed.jsonl", "killed.jsonl.gz"} {
		t.Run(file, func(t *testing.T) {
			rec := filepath.Join(t.TempDir(), file)
			l, tr := recordedScenario(t, "healthy", "--write", rec)
			ctx, cancel := context.WithCancel(context.Background())
			var wg sync.WaitGroup
			wg.Add(1)
			go func() {
				defer wg.Done()
				for ctx.Err() == nil {
					l.RunChecks(ctx)
					time.Sleep(20 * time.Millisecond)
				}
			}()
			time.Sleep(2500 * time.Millisecond) // a few flushes happen
			if err := tr.cmd.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			<-tr.done
			cancel()
			wg.Wait()

			if data, err := os.ReadFile(rec); err != nil {
				t.Fatal(err)
			} else if !strings.HasSuffix(file, ".gz") && bytes.Contains(data, []byte(`{"type":"end"`)) {
				t.Fatal("a killed trace wrote an end record")
			} else {
				t.Logf("%d bytes recorded before the kill", len(data))
			}
			out, errOut, code := svctrace(t, "replay", "-o", "json", rec)
			if code != 0 {
				t.Fatalf("replay of a killed recording exited %d: %s", code, errOut)
			}
			if !strings.Contains(errOut, "warning") {
				t.Errorf("no warning about the cut recording: %q", errOut)
			}
			paths := linesOf(t, out, "path")
			if len(paths) == 0 {
				t.Errorf("no paths replayed from the killed recording; stderr %s", errOut)
			}
			t.Logf("replayed %d paths; warnings: %s", len(paths), strings.TrimSpace(errOut))
		})
	}
}
