package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const recording = "../record/testdata/stale-backend.jsonl"

func TestReplayCommand(t *testing.T) {
	code, out, errOut := runCLI(t, "replay", "-o", "json", recording)
	if code != ExitOK || errOut != "" {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	if !strings.Contains(out, `"verdict":"stale-backend"`) || !strings.Contains(out, `"type":"path"`) || !strings.Contains(out, `"final":true`) {
		t.Errorf("json replay output:\n%s", out)
	}
	code, out, _ = runCLI(t, "replay", "--color", "never", "--per", "flow", recording)
	if code != ExitOK || !strings.Contains(out, "verdict stale-backend") || strings.Contains(out, "\x1b[") {
		t.Errorf("text replay exit %d:\n%s", code, out)
	}
	code, out, _ = runCLI(t, "replay", "--stats", recording)
	for _, want := range []string{"events by hook", "netfilter PREROUTING before NAT", "verdicts", "stale-backend", "default/hostnames:80/TCP", "complete"} {
		if code != ExitOK || !strings.Contains(out, want) {
			t.Errorf("stats exit %d lack %q:\n%s", code, want, out)
		}
	}
	code, out, _ = runCLI(t, "replay", "--stats", "-o", "json", recording)
	var sum struct {
		Type     string
		Verdicts map[string]int
		Hooks    map[string]int
	}
	if code != ExitOK || json.Unmarshal([]byte(out), &sum) != nil || sum.Type != "recording-stats" || sum.Verdicts["stale-backend"] == 0 {
		t.Errorf("stats json exit %d: %s", code, out)
	}
	pc := filepath.Join(t.TempDir(), "out.pcapng")
	if code, _, errOut := runCLI(t, "replay", "--count", "2", "--pcapng", pc, recording); code != ExitOK {
		t.Errorf("replay --pcapng exit %d: %s", code, errOut)
	}
	if b, err := os.ReadFile(pc); err != nil || !bytes.HasPrefix(b, []byte{0x0a, 0x0d, 0x0d, 0x0a}) {
		t.Errorf("pcapng: %v", err)
	}
}

func TestReplayBadInput(t *testing.T) {
	dir := t.TempDir()
	data, err := os.ReadFile(recording)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(data, []byte("\n"))
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	corrupt := append(bytes.Join(lines[:20], nil), []byte("{oops\n")...)
	corrupt = append(corrupt, bytes.Join(lines[20:], nil)...)
	future := bytes.Replace(data, []byte(`"version":1,`), []byte(`"version":9,`), 1)
	cut := data[:len(data)*2/3]

	for _, tc := range []struct {
		name string
		args []string
		code int
		want string
	}{
		{"no file", []string{"replay"}, ExitUsage, "replay needs a recording file"},
		{"missing", []string{"replay", filepath.Join(dir, "nope")}, ExitUsage, "no such file"},
		{"not a recording", []string{"replay", write("cluster.yaml", []byte(manifest))}, ExitUsage, "not an svctrace recording"},
		{"corrupt", []string{"replay", write("corrupt.jsonl", corrupt)}, ExitUsage, "corrupt.jsonl: line 21 (byte "},
		{"future", []string{"replay", write("future.jsonl", future)}, ExitUsage, "format version 9 is newer"},
		{"bad output", []string{"replay", "-o", "yaml", recording}, ExitUsage, `--output "yaml"`},
		{"cut short", []string{"replay", write("cut.jsonl", cut)}, ExitOK, "warning: "},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, _, errOut := runCLI(t, tc.args...)
			if code != tc.code || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d (want %d), stderr %q lacks %q", code, tc.code, errOut, tc.want)
			}
			if tc.code == ExitUsage && strings.Count(strings.TrimSpace(errOut), "\n") != 0 {
				t.Errorf("error on several lines: %q", errOut)
			}
		})
	}
}

func TestRecordFlags(t *testing.T) {
	mf := writeManifest(t)
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{"size without write", []string{"--write-max-size", "1M"}, "--write-max-size needs --write"},
		{"bad size", []string{"--write", filepath.Join(dir, "a"), "--write-max-size", "lots"}, `"lots" is not a size`},
		{"keep without size", []string{"--write", filepath.Join(dir, "a"), "--write-keep", "3"}, "--write-keep needs --write-max-size"},
		{"negative snaplen", []string{"--snaplen", "-1"}, "--snaplen -1"},
		{"same file", []string{"--write", filepath.Join(dir, "a"), "--pcapng", filepath.Join(dir, "a")}, "same file"},
		{"unwritable", []string{"--write", filepath.Join(dir, "no", "such", "dir", "a")}, "--write: create recording"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"--svc", "hostnames", "--manifests", mf}, tc.args...)
			code, _, errOut := runCLI(t, args...)
			if code != ExitUsage || !strings.Contains(errOut, tc.want) {
				t.Errorf("exit %d, stderr %q lacks %q", code, errOut, tc.want)
			}
		})
	}
	// A trace that fails before it starts leaves no files behind.
	rec, pc := filepath.Join(dir, "r.jsonl"), filepath.Join(dir, "r.pcapng")
	if code, _, _ := runCLI(t, "--svc", "hostname", "--manifests", mf, "--write", rec, "--pcapng", pc); code != ExitUsage {
		t.Errorf("unknown service exit %d", code)
	}
	for _, p := range []string{rec, pc} {
		if _, err := os.Stat(p); err == nil {
			t.Errorf("%s left behind", p)
		}
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"65536": 65536, "100M": 100 << 20, "1G": 1 << 30, "1.5k": 1536, "2MiB": 2 << 20, "10MB": 10 << 20, "512 K": 512 << 10} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "M", "-1M", "0", "NaN", "Inf", "1T", "x"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q) accepted", in)
		}
	}
}
