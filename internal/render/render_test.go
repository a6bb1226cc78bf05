package render

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"

	"github.com/svctrace/svctrace/pkg/event"
)

func samplePath() *event.Path {
	ap := netip.MustParseAddrPort
	return &event.Path{
		Service:  "default/hostnames:80/TCP",
		Original: event.Tuple{Src: ap("10.244.1.2:40000"), Dst: ap("10.96.0.10:80"), Proto: 6},
		Final:    event.Tuple{Src: ap("10.244.1.2:40000"), Dst: ap("10.244.1.5:9376"), Proto: 6},
		TCPFlags: 2,
		Client:   event.Endpoint{Addr: ap("10.244.1.2:40000"), Name: "pod default/curl"},
		Backend:  event.Endpoint{Addr: ap("10.244.1.5:9376"), Name: "pod default/hostnames-abc"},
		NAT: []event.NATStep{{Type: event.DNAT, By: "nf_nat", Hook: "PREROUTING", Source: event.SourceNetfilter,
			Before: event.Tuple{Src: ap("10.244.1.2:40000"), Dst: ap("10.96.0.10:80"), Proto: 6},
			After:  event.Tuple{Src: ap("10.244.1.2:40000"), Dst: ap("10.244.1.5:9376"), Proto: 6}}},
		Result: event.Result{Outcome: event.OutcomeDropped, Reason: "NETFILTER_DROP", Location: "nft_do_chain+0x1"},
	}
}

func TestJSONLinesAreTyped(t *testing.T) {
	var buf bytes.Buffer
	r := NewJSON(&buf)
	_ = r.Path(samplePath())
	_ = r.Event(&event.Event{Kind: event.KindDrop})
	_ = r.Stats(&event.Stats{Events: 3, Final: true})
	_ = r.Flush()
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	want := []string{"path", "event", "stats"}
	if len(lines) != len(want) {
		t.Fatalf("%d lines", len(lines))
	}
	for i, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatal(err)
		}
		if m["type"] != want[i] {
			t.Errorf("line %d type %v, want %s", i, m["type"], want[i])
		}
	}
	var p event.Path
	_ = json.Unmarshal([]byte(lines[0]), &p)
	if p.NAT[0].After.Dst.String() != "10.244.1.5:9376" || p.NAT[0].Type != event.DNAT {
		t.Errorf("round trip lost the NAT step: %+v", p.NAT)
	}
}

func TestTextColourOnlyWhenAsked(t *testing.T) {
	for _, color := range []bool{false, true} {
		var buf bytes.Buffer
		r := NewText(&buf, TextOptions{Color: color})
		_ = r.Path(samplePath())
		_ = r.Flush()
		out := buf.String()
		if strings.Contains(out, "\x1b[") != color {
			t.Errorf("color=%v: escape codes present=%v", color, !color)
		}
		for _, want := range []string{"default/hostnames:80/TCP", "DNAT", "10.96.0.10:80 -> ", "10.244.1.5:9376", "DROPPED: NETFILTER_DROP", "nft_do_chain"} {
			if !strings.Contains(out, want) {
				t.Errorf("text lacks %q:\n%s", want, out)
			}
		}
	}
}
