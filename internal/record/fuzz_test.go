package record

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/internal/render"
)

// addSeeds seeds a fuzz target with the real recordings in testdata: their
// first lines, plain and gzip-compressed (small inputs fuzz and minimize
// fast; whole recordings are tens of KiB).
func addSeeds(f *testing.F) {
	for _, name := range recordings {
		full := plain(f, name)
		lines := bytes.SplitAfter(full, []byte("\n"))
		// The header's attach plan is most of its bytes and the reader
		// does nothing with it: leave it out of the seeds.
		var h Header
		if err := json.Unmarshal(lines[0], &h); err != nil {
			f.Fatal(err)
		}
		h.Plan = nil
		b, _ := json.Marshal(&h)
		lines[0] = append(b, '\n')
		for _, n := range []int{2, 4, 8, 16} {
			if n <= len(lines) {
				f.Add(bytes.Join(lines[:n], nil))
			}
		}
		var gz bytes.Buffer
		zw := gzip.NewWriter(&gz)
		_, _ = zw.Write(bytes.Join(lines[:min(8, len(lines))], nil))
		_ = zw.Close()
		f.Add(gz.Bytes())
	}
	f.Add([]byte(`{"type":"header","format":"svctrace-recording","version":1}` + "\n" + `{"type":"event","ts":1,"kind":"kind(200)","source":"source(0)","hook":"hook(9)"}` + "\n"))
}

// FuzzReader reads arbitrary bytes as a recording: errors are fine, panics
// and multi-line errors are not.
func FuzzReader(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		rd, err := NewReader(bytes.NewReader(data), "fuzz.jsonl")
		if err != nil {
			checkErr(t, err)
			return
		}
		for range 100000 {
			rec, err := rd.Next()
			if errors.Is(err, io.EOF) {
				return
			}
			if err != nil {
				checkErr(t, err)
				return
			}
			switch rec.Type {
			case TypeMetadata:
				if rec.Metadata == nil {
					t.Fatal("metadata record without a snapshot")
				}
			case TypeEvent:
				if rec.Event == nil {
					t.Fatal("event record without an event")
				}
			case TypeDevice:
				if rec.Device == nil {
					t.Fatal("device record without a device")
				}
			case TypeNetns:
				if rec.Netns == nil {
					t.Fatal("netns record without a netns")
				}
			}
		}
		t.Fatal("no end after 100000 records")
	})
}

// FuzzReplay runs arbitrary bytes through the whole replay: the reader,
// the metadata restore, the correlator, the diagnosis and the renderer.
func FuzzReplay(f *testing.F) {
	addSeeds(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		rd, err := NewReader(bytes.NewReader(data), "fuzz.jsonl")
		if err != nil {
			return
		}
		var out bytes.Buffer
		_, err = Replay(context.Background(), rd, ReplayConfig{Renderer: render.NewText(&out, render.TextOptions{Events: true}), Events: true})
		if err != nil {
			checkErr(t, err)
		}
	})
}

func checkErr(t *testing.T, err error) {
	t.Helper()
	var fe *FormatError
	if !errors.As(err, &fe) {
		t.Fatalf("not a format error: %T %v", err, err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Fatalf("error on several lines: %q", err)
	}
}
