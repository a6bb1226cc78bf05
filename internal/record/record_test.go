package record

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/svctrace/svctrace/pkg/event"
)

// The recordings in testdata are real traces of lab scenarios, made by
// test/e2e's TestRecordReplay:
//
//	SVCTRACE_RECORD_TESTDATA=$PWD/internal/record/testdata go test -run TestRecordReplay ./test/e2e
var recordings = []string{"testdata/healthy.jsonl.gz", "testdata/stale-backend.jsonl", "testdata/wrong-source.jsonl.gz"}

// plain returns a recording's content, decompressed.
func plain(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(name, ".gz") {
		zr, err := gzip.NewReader(bytes.NewReader(b))
		if err != nil {
			t.Fatal(err)
		}
		if b, err = io.ReadAll(zr); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// linesOfType returns a JSON lines stream's lines of the given types.
func linesOfType(t testing.TB, data []byte, types ...string) []string {
	t.Helper()
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 1<<20), MaxRecord)
	for sc.Scan() {
		var head struct{ Type string }
		if err := json.Unmarshal(sc.Bytes(), &head); err != nil {
			t.Fatalf("not JSON: %q", sc.Text())
		}
		for _, ty := range types {
			if head.Type == ty {
				out = append(out, sc.Text())
			}
		}
	}
	return out
}

// replayJSON replays a reader and returns the JSON output.
func replayJSON(t testing.TB, rd *Reader, sinks ...tracer.Sink) (string, *Summary, error) {
	t.Helper()
	var out bytes.Buffer
	sum, err := Replay(context.Background(), rd, ReplayConfig{Renderer: render.NewJSON(&out), Sinks: sinks})
	return out.String(), sum, err
}

func replayFiles(t testing.TB, files ...string) (string, *Summary) {
	t.Helper()
	rd, err := Open(files...)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	out, sum, err := replayJSON(t, rd)
	if err != nil {
		t.Fatalf("replay %v: %v", files, err)
	}
	return out, sum
}

// digest is what of a path or verdict must not change between the live
// run and a replay, even a replay by a later svctrace whose paths carry
// more detail: which packet (skb, times, tuple, direction), where it
// ended, and which verdict its flow got. test/e2e's TestRecordReplay
// compares the whole JSON, live and replayed by the same binary.
func digest(t testing.TB, line string) string {
	t.Helper()
	var d struct {
		Type     string
		Start    uint64
		End      uint64
		SKB      uint64
		Reply    bool
		Original event.Tuple
		Result   struct{ Outcome string }
		Verdict  string
		TS       uint64 `json:"ts"`
		Before   event.Tuple
	}
	if err := json.Unmarshal([]byte(line), &d); err != nil {
		t.Fatal(err)
	}
	if d.Type == TypeVerdict {
		return "verdict " + d.Verdict + " " + d.Before.String() + " at " + strconv.FormatUint(d.TS, 10)
	}
	return "path " + strconv.FormatUint(d.SKB, 16) + " " + d.Original.String() + " reply=" + strconv.FormatBool(d.Reply) +
		" " + strconv.FormatUint(d.Start, 10) + "-" + strconv.FormatUint(d.End, 10) + " " + d.Result.Outcome
}

// TestReplayMatchesLive replays real recordings and compares the paths and
// verdicts with those the live trace recorded.
func TestReplayMatchesLive(t *testing.T) {
	for _, name := range recordings {
		t.Run(filepath.Base(name), func(t *testing.T) {
			live := linesOfType(t, plain(t, name), TypePath, TypeVerdict)
			out, sum := replayFiles(t, name)
			got := linesOfType(t, []byte(out), TypePath, TypeVerdict)
			if len(live) == 0 || len(got) != len(live) {
				t.Fatalf("replay gave %d paths and verdicts, live %d", len(got), len(live))
			}
			// The same paths and verdicts; the order in which paths complete
			// may differ between svctrace versions (recordings are kept from
			// earlier ones), so compare them as sets.
			liveSet, gotSet := map[string]int{}, map[string]int{}
			same := 0
			for i := range live {
				liveSet[digest(t, live[i])]++
				gotSet[digest(t, got[i])]++
				if got[i] == live[i] {
					same++
				}
			}
			for d, n := range liveSet {
				if gotSet[d] != n {
					t.Errorf("live has %d of, replay %d:\n%s", n, gotSet[d], d)
				}
			}
			t.Logf("%d paths and verdicts, %d identical to the byte", len(live), same)
			if !sum.Complete || len(sum.Warnings) != 0 || sum.Paths != sum.LivePaths {
				t.Errorf("complete %v warnings %v paths %d/%d", sum.Complete, sum.Warnings, sum.Paths, sum.LivePaths)
			}
			if len(sum.Hooks) == 0 || len(sum.Verdicts) == 0 || len(sum.Services) == 0 {
				t.Errorf("empty summary %+v", sum)
			}
		})
	}
}

// rerecord replays a recording into a new Recorder: what the Recorder
// writes from a replay is what it writes from the live trace.
func rerecord(t *testing.T, src, dst string, opts Options) *Recorder {
	t.Helper()
	rd, err := Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	opts.FlushInterval = -1
	rec, err := Create(dst, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := replayJSON(t, rd, rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestRecordRoundTrip records replays (plain, gzip, rotated) and checks that
// replaying the new recordings gives the same output.
func TestRecordRoundTrip(t *testing.T) {
	for _, src := range recordings {
		want, _ := replayFiles(t, src)
		for _, tc := range []struct {
			name string
			opts Options
		}{
			{"plain.jsonl", Options{}},
			{"gz.jsonl.gz", Options{}},
			{"rotated.jsonl", Options{MaxSize: 16 << 10}},
			{"rotated.jsonl.gz", Options{MaxSize: 2 << 10}},
		} {
			t.Run(filepath.Base(src)+"/"+tc.name, func(t *testing.T) {
				dst := filepath.Join(t.TempDir(), tc.name)
				rec := rerecord(t, src, dst, tc.opts)
				files := rec.Files()
				if tc.opts.MaxSize > 0 && len(files) < 3 {
					t.Fatalf("rotation at %d bytes made %d files", tc.opts.MaxSize, len(files))
				}
				for i, f := range files {
					if f != segmentName(dst, i) {
						t.Errorf("file %d is %s", i, f)
					}
					rd, err := Open(f)
					if err != nil {
						t.Fatal(err)
					}
					if rd.Header().Segment != i {
						t.Errorf("%s has segment %d", f, rd.Header().Segment)
					}
					rd.Close()
				}
				got, sum := replayFiles(t, dst) // follows the segments
				if got != want {
					t.Errorf("replay of the re-recording differs (%d vs %d bytes)", len(got), len(want))
				}
				if !sum.Complete || len(sum.Warnings) != 0 || sum.Segments != len(files) {
					t.Errorf("complete %v segments %d/%d warnings %v", sum.Complete, sum.Segments, len(files), sum.Warnings)
				}
				if len(files) > 1 {
					// The files listed explicitly, in any order.
					rev := append([]string(nil), files...)
					for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
						rev[i], rev[j] = rev[j], rev[i]
					}
					if got, _ := replayFiles(t, rev...); got != want {
						t.Error("replay of the listed segments differs")
					}
					// A later segment alone replays from its preamble.
					rd, err := Open(files[len(files)-1])
					if err != nil {
						t.Fatal(err)
					}
					_, sum, err := replayJSON(t, rd)
					rd.Close()
					if err != nil || len(sum.Warnings) == 0 || !strings.Contains(sum.Warnings[0], "segment") {
						t.Errorf("last segment alone: %v, warnings %v", err, sum.Warnings)
					}
				}
			})
		}
	}
}

func TestRotationKeep(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "keep.jsonl")
	rec := rerecord(t, recordings[1], dst, Options{MaxSize: 8 << 10, Keep: 3})
	files := rec.Files()
	if len(files) != 3 {
		t.Fatalf("kept %v", files)
	}
	ents, _ := os.ReadDir(filepath.Dir(dst))
	if len(ents) != 3 {
		t.Errorf("%d files on disk, want 3", len(ents))
	}
	if _, err := os.Stat(dst); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the first segment should be gone: %v", err)
	}
	out, sum := replayFiles(t, files[0])
	if sum.Segments != 3 || !sum.Complete || len(linesOfType(t, []byte(out), TypePath)) == 0 {
		t.Errorf("segments %d complete %v", sum.Segments, sum.Complete)
	}
}

// TestTornTail cuts recordings at many points: every cut after the header
// replays what is complete, with a warning, never an error.
func TestTornTail(t *testing.T) {
	full := plain(t, recordings[1])
	headerEnd := bytes.IndexByte(full, '\n') + 1
	want, _ := replayFiles(t, recordings[1])
	step := max((len(full)-headerEnd)/150, 1)
	for cut := headerEnd; cut < len(full); cut += step {
		rd, err := NewReader(bytes.NewReader(full[:cut]), "cut.jsonl")
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		out, sum, err := replayJSON(t, rd)
		if err != nil {
			t.Fatalf("cut at %d: %v", cut, err)
		}
		if len(sum.Warnings) == 0 || sum.Complete {
			t.Fatalf("cut at %d: no warning", cut)
		}
		torn := full[cut-1] != '\n' && full[cut] != '\n'
		if torn && !strings.Contains(strings.Join(sum.Warnings, " "), "torn final record") {
			t.Errorf("cut at %d inside a record: warnings %v", cut, sum.Warnings)
		}
		if len(out) > len(want) {
			t.Errorf("cut at %d: more output than the whole recording", cut)
		}
	}
	// Header cut short: not a recording.
	if _, err := NewReader(bytes.NewReader(full[:headerEnd/2]), "cut.jsonl"); !errors.Is(err, ErrFormat) {
		t.Errorf("header cut short: %v", err)
	}
}

// TestTornGzip cuts a gzip recording at many points: the sync-flushed
// prefix replays, with a warning.
func TestTornGzip(t *testing.T) {
	dst := filepath.Join(t.TempDir(), "flushed.jsonl.gz")
	rerecordFlushing(t, recordings[1], dst)
	full, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	step := max(len(full)/100, 1)
	paths := 0
	for cut := 200; cut < len(full); cut += step {
		rd, err := NewReader(bytes.NewReader(full[:cut]), "cut.jsonl.gz")
		if err != nil {
			continue // cut before the header was flushed
		}
		out, sum, err := replayJSON(t, rd)
		if err != nil {
			t.Fatalf("cut at %d of %d: %v", cut, len(full), err)
		}
		if len(sum.Warnings) == 0 {
			t.Fatalf("cut at %d: no warning", cut)
		}
		paths = max(paths, len(linesOfType(t, []byte(out), TypePath)))
	}
	if paths == 0 {
		t.Error("no cut of the gzip recording replayed a path")
	}
}

// rerecordFlushing re-records with a flush after every input, as a long
// live trace's regular flushes do.
func rerecordFlushing(t *testing.T, src, dst string) {
	t.Helper()
	rd, err := Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	rec, err := Create(dst, Options{FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := replayJSON(t, rd, flushing{rec}); err != nil {
		t.Fatal(err)
	}
}

type flushing struct{ *Recorder }

func (f flushing) Event(ev *event.Event) error {
	if err := f.Recorder.Event(ev); err != nil {
		return err
	}
	return f.Flush()
}

func TestCorruptMiddle(t *testing.T) {
	full := plain(t, recordings[1])
	lines := bytes.SplitAfter(full, []byte("\n"))
	for _, tc := range []struct {
		name, line string
	}{
		{"garbage", "\x00\x01garbage\n"},
		{"bad json", `{"type":"event","ts":` + "\n"},
		{"bad field", `{"type":"event","ts":"yesterday"}` + "\n"},
		{"bad kind", `{"type":"event","ts":1,"kind":"teleport"}` + "\n"},
		{"no type", `{"ts":1}` + "\n"},
		{"second header", string(lines[0])},
		{"bad metadata", `{"type":"metadata","snapshot":{"services":[null]}}` + "\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			at := len(lines) / 2
			var b bytes.Buffer
			offset := 0
			for i, l := range lines {
				if i == at {
					offset = b.Len()
					b.WriteString(tc.line)
					continue
				}
				b.Write(l)
			}
			rd, err := NewReader(&b, "corrupt.jsonl")
			if err != nil {
				t.Fatal(err)
			}
			_, _, err = replayJSON(t, rd)
			var fe *FormatError
			if !errors.As(err, &fe) || !errors.Is(err, ErrFormat) {
				t.Fatalf("err %v", err)
			}
			msg := err.Error()
			wantAt := "line " + strconv.Itoa(at+1) + " (byte " + strconv.Itoa(offset) + ")"
			if !strings.Contains(msg, wantAt) || strings.Contains(msg, "\n") || !strings.HasPrefix(msg, "corrupt.jsonl: ") {
				t.Errorf("message %q does not name %s on one line", msg, wantAt)
			}
			t.Log(msg)
		})
	}
}

func TestFutureVersion(t *testing.T) {
	full := plain(t, recordings[1])
	future := bytes.Replace(full, []byte(`"version":1,`), []byte(`"version":2,`), 1)
	_, err := NewReader(bytes.NewReader(future), "future.jsonl")
	if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), "recording format version 2 is newer than this svctrace reads (1)") ||
		!strings.Contains(err.Error(), "future.jsonl: line 1") {
		t.Errorf("err %v", err)
	}
}

func TestNotARecording(t *testing.T) {
	dir := t.TempDir()
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	_, _ = zw.Write([]byte("hello\n"))
	_ = zw.Close()
	pcapng := []byte{0x0a, 0x0d, 0x0d, 0x0a, 0x1c, 0, 0, 0, 0x4d, 0x3c, 0x2b, 0x1a}
	for name, content := range map[string][]byte{
		"empty":          nil,
		"text":           []byte("hello world\n"),
		"json":           []byte(`{"type":"path","steps":[]}` + "\n"),
		"other header":   []byte(`{"type":"header","format":"pcap"}` + "\n"),
		"no version":     []byte(`{"type":"header","format":"svctrace-recording"}` + "\n"),
		"pcapng":         pcapng,
		"gzip of text":   gz.Bytes(),
		"broken gzip":    []byte{0x1f, 0x8b, 0, 0, 0},
		"one long line":  bytes.Repeat([]byte("x"), 3<<20),
		"binary zeros":   make([]byte, 4096),
		"json array":     []byte("[1,2,3]\n"),
		"header no json": []byte(`{"type":"header",` + "\n"),
	} {
		p := filepath.Join(dir, strings.ReplaceAll(name, " ", "-"))
		if err := os.WriteFile(p, content, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := Open(p)
		if !errors.Is(err, ErrFormat) || strings.Contains(err.Error(), "\n") {
			t.Errorf("%s: err %v", name, err)
			continue
		}
		t.Logf("%s: %v", name, err)
	}
	if _, err := Open(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

func TestUnknownRecordTypesSkipped(t *testing.T) {
	full := plain(t, recordings[1])
	lines := bytes.SplitAfter(full, []byte("\n"))
	var b bytes.Buffer
	for i, l := range lines {
		b.Write(l)
		if i > 0 && i%7 == 0 {
			b.WriteString(`{"type":"hologram","data":[1,2,3]}` + "\n")
		}
	}
	rd, err := NewReader(&b, "newer.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	got, _, err := replayJSON(t, rd)
	if err != nil {
		t.Fatal(err)
	}
	if want, _ := replayFiles(t, recordings[1]); got != want {
		t.Error("unknown records changed the replay")
	}
}

// TestRecorderLifecycle: a recording that never began is removed; the
// header and first metadata reach the disk at once; later records within
// the flush interval; an end record at Close.
func TestRecorderLifecycle(t *testing.T) {
	dir := t.TempDir()
	unused := filepath.Join(dir, "unused.jsonl")
	r, err := Create(unused, Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(unused); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("unused recording left behind: %v", err)
	}

	p := filepath.Join(dir, "live.jsonl")
	r, err = Create(p, Options{FlushInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Begin(tracer.RunInfo{Namespace: "default", Service: "x", Start: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if err := r.Metadata(meta.NewSnapshot()); err != nil {
		t.Fatal(err)
	}
	if got := linesOfType(t, readFile(t, p), TypeHeader, TypeMetadata); len(got) != 2 {
		t.Fatalf("header and metadata not on disk at once: %q", got)
	}
	// Source 0 and kind 99 have no names: they are recorded as "source(0)"
	// and "kind(99)" and must read back.
	ev := &event.Event{Time: 5, Kind: event.KindRecv, SKB: 1, Header: []byte{0x45, 1, 2}}
	odd := &event.Event{Time: 5, Kind: 99, SKB: 2, Hook: 7}
	if err := r.Event(odd); err != nil {
		t.Fatal(err)
	}
	if err := r.Event(ev); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(linesOfType(t, readFile(t, p), TypeEvent)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the event never reached the disk")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := r.Advance(6); err != nil { // in flight: recorded
		t.Fatal(err)
	}
	if err := r.Advance(6 + uint64(3*time.Second)); err != nil { // settles
		t.Fatal(err)
	}
	if err := r.Advance(7 + uint64(3*time.Second)); err != nil { // settled: not recorded
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	data := readFile(t, p)
	if n := len(linesOfType(t, data, TypeTick)); n != 2 {
		t.Errorf("%d ticks recorded, want 2", n)
	}
	if n := len(linesOfType(t, data, TypeEnd)); n != 1 {
		t.Errorf("%d end records", n)
	}
	rd, err := Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	for {
		rec, err := rd.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if rec.Type != TypeEvent {
			continue
		}
		if rec.Event.SKB == 2 {
			if rec.Event.Kind != 99 || rec.Event.Source != 0 || rec.Event.Hook != 7 {
				t.Errorf("unnamed values read back as %d %d %d", rec.Event.Kind, rec.Event.Source, rec.Event.Hook)
			}
		} else if !bytes.Equal(rec.Event.Header, ev.Header) {
			t.Errorf("header bytes %v", rec.Event.Header)
		}
	}
	if !rd.Complete() {
		t.Error("closed recording not complete")
	}
}

func readFile(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// fakeDevices answers like the live resolver, with a device that appears later.
type fakeDevices struct{ calls int }

func (f *fakeDevices) Device(netns, ifindex uint32) string {
	f.calls++
	if f.calls > 2 {
		return "eth0"
	}
	return "if2"
}
func (f *fakeDevices) Netns(uint32) string { return "node" }
func (f *fakeDevices) Prefixes(uint32, uint32) []netip.Prefix {
	return []netip.Prefix{netip.MustParsePrefix("10.0.0.1/24")}
}
func (f *fakeDevices) Kind(uint32, uint32) string { return "" }

func TestDeviceRecorderRecordsChanges(t *testing.T) {
	p := filepath.Join(t.TempDir(), "dev.jsonl")
	r, err := Create(p, Options{FlushInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	_ = r.Begin(tracer.RunInfo{})
	d := r.Devices(&fakeDevices{})
	for range 4 {
		_ = d.Device(7, 2)
		_ = d.Prefixes(7, 2)
		_ = d.Kind(7, 2)
		_ = d.Netns(7)
	}
	_ = r.Close()
	devs := linesOfType(t, readFile(t, p), TypeDevice, TypeNetns)
	want := []string{
		`{"type":"device","netns":7,"ifindex":2,"name":"if2"}`,
		`{"type":"device","netns":7,"ifindex":2,"prefixes":["10.0.0.1/24"]}`,
		`{"type":"device","netns":7,"ifindex":2,"kind":""}`,
		`{"type":"netns","netns":7,"name":"node"}`,
		`{"type":"device","netns":7,"ifindex":2,"name":"eth0"}`,
	}
	if strings.Join(devs, "\n") != strings.Join(want, "\n") {
		t.Errorf("device records:\n%s\nwant\n%s", strings.Join(devs, "\n"), strings.Join(want, "\n"))
	}
	tab := newDeviceTable()
	for _, l := range devs {
		var dv Device
		if json.Unmarshal([]byte(l), &dv) == nil && dv.Type == TypeDevice {
			tab.apply(&dv)
		}
	}
	if tab.Device(7, 2) != "eth0" || tab.Device(7, 3) != "if3" || tab.Kind(7, 2) != "" || len(tab.Prefixes(7, 2)) != 1 {
		t.Errorf("table answers %q %q %v", tab.Device(7, 2), tab.Device(7, 3), tab.Prefixes(7, 2))
	}
}

func TestSegmentName(t *testing.T) {
	for _, tc := range []struct {
		path string
		n    int
		want string
	}{
		{"t.jsonl", 0, "t.jsonl"}, {"t.jsonl", 3, "t.jsonl.3"},
		{"dir/t.jsonl.gz", 0, "dir/t.jsonl.gz"}, {"dir/t.jsonl.gz", 12, "dir/t.jsonl.12.gz"},
	} {
		if got := segmentName(tc.path, tc.n); got != tc.want {
			t.Errorf("segmentName(%q, %d) = %q, want %q", tc.path, tc.n, got, tc.want)
		}
	}
}

func TestOpenRejectsMixedFiles(t *testing.T) {
	for _, tc := range []struct {
		files []string
		want  string
	}{
		{[]string{recordings[1], recordings[1]}, "is the same segment as"},
		{[]string{recordings[0], recordings[1]}, "belongs to another recording"},
	} {
		_, err := Open(tc.files...)
		if !errors.Is(err, ErrFormat) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Open(%v): %v", tc.files, err)
		}
	}
}

func TestErrorsStayOnOneLine(t *testing.T) {
	full := plain(t, recordings[1])
	odd := bytes.Replace(full, []byte(`"service":"hostnames"`), []byte(`"service":"host\nnames"`), 1)
	rd, err := NewReader(bytes.NewReader(odd), "odd\nname.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	_, _, err = replayJSON(t, rd)
	if !errors.Is(err, ErrFormat) || strings.Contains(err.Error(), "\n") || !strings.Contains(err.Error(), `host\nnames`) {
		t.Errorf("err %q", err)
	}
}
