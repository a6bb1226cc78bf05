package record

import (
	"errors"
	"io"
	"path/filepath"
	"testing"

	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/svctrace/svctrace/pkg/event"
)

// events returns the events of a testdata recording.
func events(b *testing.B) []*event.Event {
	rd, err := Open(recordings[1])
	if err != nil {
		b.Fatal(err)
	}
	defer rd.Close()
	var out []*event.Event
	for {
		r, err := rd.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			b.Fatal(err)
		}
		if r.Type == TypeEvent {
			out = append(out, r.Event)
		}
	}
}

// BenchmarkRecorderEvent is how fast a recording takes events, all the way
// to the file (the tracer's own share is a copy and a channel send; the
// rest happens on the writer goroutine).
func BenchmarkRecorderEvent(b *testing.B) {
	for _, name := range []string{"plain.jsonl", "gzip.jsonl.gz"} {
		b.Run(name, func(b *testing.B) {
			evs := events(b)
			r, err := Create(filepath.Join(b.TempDir(), name), Options{})
			if err != nil {
				b.Fatal(err)
			}
			_ = r.Begin(tracer.RunInfo{})
			b.ReportAllocs()
			b.ResetTimer()
			for i := range b.N {
				if err := r.Event(evs[i%len(evs)]); err != nil {
					b.Fatal(err)
				}
			}
			if err := r.Close(); err != nil { // everything written
				b.Fatal(err)
			}
		})
	}
}

// BenchmarkReplay is the cost of replaying a recording, per event.
func BenchmarkReplay(b *testing.B) {
	n := len(events(b))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		rd, err := Open(recordings[1])
		if err != nil {
			b.Fatal(err)
		}
		if _, _, err := replayJSON(b, rd); err != nil {
			b.Fatal(err)
		}
		rd.Close()
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/event")
}
