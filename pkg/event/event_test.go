package event

import (
	"encoding/json"
	"testing"
)

// Every value, named or not, survives a JSON round trip.
func TestEnumsRoundTrip(t *testing.T) {
	for v := 0; v < 256; v++ {
		in := struct {
			K Kind
			S Source
			H Hook
		}{Kind(v), Source(v), Hook(v)}
		b, err := json.Marshal(in)
		if err != nil {
			t.Fatal(err)
		}
		out := in
		out.K, out.S, out.H = 0, 0, 0
		if err := json.Unmarshal(b, &out); err != nil {
			t.Fatalf("%d: %s: %v", v, b, err)
		}
		if out != in {
			t.Fatalf("%d: %s round-trips to %+v", v, b, out)
		}
	}
}
