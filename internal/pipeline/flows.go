package pipeline

import (
	"net/netip"

	"github.com/svctrace/svctrace/pkg/event"
)

// flowFilter passes the first path of each direction of a flow, and every
// path whose outcome is a failure; the rest of a healthy flow is counted,
// not shown (--per flow).
type flowFilter struct {
	seen  map[flowKey]struct{}
	order []flowKey
	max   int
}

type flowKey struct {
	a, b  netip.AddrPort
	proto uint8
	reply bool
}

func newFlowFilter(max int) *flowFilter {
	return &flowFilter{seen: map[flowKey]struct{}{}, max: max}
}

// keep reports whether p should be shown.
func (f *flowFilter) keep(p *event.Path) bool {
	switch p.Result.Outcome {
	case event.OutcomeDelivered, event.OutcomeForwarded:
	default:
		return true
	}
	t := p.Original
	if p.Conntrack != nil {
		t = p.Conntrack.Original
	} else if p.Reply {
		t = t.Reverse()
	}
	k := flowKey{a: t.Src, b: t.Dst, proto: t.Proto, reply: p.Reply}
	if _, ok := f.seen[k]; ok {
		return false
	}
	if len(f.order) >= f.max {
		delete(f.seen, f.order[0])
		f.order = f.order[1:]
	}
	f.seen[k] = struct{}{}
	f.order = append(f.order, k)
	return true
}
