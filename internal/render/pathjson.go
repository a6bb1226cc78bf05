package render

import (
	"net/netip"
	"strconv"
	"unicode/utf8"

	"github.com/svctrace/svctrace/pkg/event"
)

// pathEncoder writes paths as JSON. Its zero value is ready to use; it is
// not safe for concurrent use.
type pathEncoder struct {
	tuples tupleCache
}

// tupleCache keeps the last few tuples written and their JSON: a path
// names the same two or three tuples (the packet before and after NAT) in
// its original and final tuples, every step, every NAT step and its
// conntrack entry, and consecutive paths of a flow the same ones again.
// Comparing a tuple costs a fraction of writing its addresses and ports.
type tupleCache struct {
	keys [4]event.Tuple
	json [4][]byte
	next int
}

func (c *tupleCache) append(b []byte, t event.Tuple) []byte {
	for i := range c.keys {
		if c.json[i] != nil && c.keys[i] == t {
			return append(b, c.json[i]...)
		}
	}
	start := len(b)
	b = appendTuple(b, t)
	i := c.next
	c.next = (i + 1) % len(c.keys)
	c.keys[i] = t
	c.json[i] = append(c.json[i][:0], b[start:]...)
	return b
}

// appendPath appends p as encoding/json (HTML escaping off) would encode
// it, and a newline: byte for byte the same (TestAppendPathMatchesJSON
// holds it to that on real paths), at a fraction of the cost. A path is
// written for every traced packet, so this is the tracer's hottest output.
// Keep it in step with event.Path's fields and tags.
func (e *pathEncoder) appendPath(b []byte, p *event.Path) []byte {
	b = append(b, `{"type":`...)
	b = appendString(b, p.Type)
	b = append(b, `,"start":`...)
	b = strconv.AppendUint(b, p.Start, 10)
	b = append(b, `,"end":`...)
	b = strconv.AppendUint(b, p.End, 10)
	if p.SKB != 0 {
		b = append(b, `,"skb":`...)
		b = strconv.AppendUint(b, p.SKB, 10)
	}
	if p.Service != "" {
		b = append(b, `,"service":`...)
		b = appendString(b, p.Service)
	}
	b = append(b, `,"reply":`...)
	b = strconv.AppendBool(b, p.Reply)
	b = append(b, `,"original":`...)
	b = e.tuples.append(b, p.Original)
	b = append(b, `,"final":`...)
	b = e.tuples.append(b, p.Final)
	if p.TCPFlags != 0 {
		b = append(b, `,"tcp_flags":`...)
		b = strconv.AppendUint(b, uint64(p.TCPFlags), 10)
	}
	b = append(b, `,"client":`...)
	b = appendEndpoint(b, p.Client)
	if p.Backend != (event.Endpoint{}) {
		b = append(b, `,"backend":`...)
		b = appendEndpoint(b, p.Backend)
	}
	if p.Entered != "" {
		b = append(b, `,"entered":`...)
		b = appendString(b, p.Entered)
	}
	if p.NetnsName != "" {
		b = append(b, `,"netns_name":`...)
		b = appendString(b, p.NetnsName)
	}
	if len(p.NAT) > 0 {
		b = append(b, `,"nat":[`...)
		for i := range p.NAT {
			if i > 0 {
				b = append(b, ',')
			}
			b = e.appendNAT(b, &p.NAT[i])
		}
		b = append(b, ']')
	}
	if p.IPVS != nil {
		b = append(b, `,"ipvs":`...)
		b = appendIPVS(b, p.IPVS)
	}
	if len(p.Routes) > 0 {
		b = append(b, `,"routes":[`...)
		for i := range p.Routes {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendRoute(b, &p.Routes[i])
		}
		b = append(b, ']')
	}
	b = append(b, `,"steps":`...)
	if p.Steps == nil {
		b = append(b, "null"...)
	} else {
		b = append(b, '[')
		for i := range p.Steps {
			if i > 0 {
				b = append(b, ',')
			}
			b = e.appendStep(b, &p.Steps[i])
		}
		b = append(b, ']')
	}
	b = append(b, `,"result":`...)
	b = appendResult(b, &p.Result)
	if p.Conntrack != nil {
		b = append(b, `,"conntrack":{"id":`...)
		b = strconv.AppendUint(b, p.Conntrack.ID, 10)
		b = append(b, `,"original":`...)
		b = e.tuples.append(b, p.Conntrack.Original)
		b = append(b, `,"reply":`...)
		b = e.tuples.append(b, p.Conntrack.Reply)
		b = append(b, `,"status":`...)
		b = strconv.AppendUint(b, uint64(p.Conntrack.Status), 10)
		b = append(b, '}')
	}
	return append(b, "}\n"...)
}

func appendTuple(b []byte, t event.Tuple) []byte {
	b = append(b, `{"src":`...)
	b = appendAddrPort(b, t.Src)
	b = append(b, `,"dst":`...)
	b = appendAddrPort(b, t.Dst)
	b = append(b, `,"proto":`...)
	b = strconv.AppendUint(b, uint64(t.Proto), 10)
	return append(b, '}')
}

func appendEndpoint(b []byte, e event.Endpoint) []byte {
	b = append(b, `{"addr":`...)
	b = appendAddrPort(b, e.Addr)
	if e.Name != "" {
		b = append(b, `,"name":`...)
		b = appendString(b, e.Name)
	}
	return append(b, '}')
}

func (e *pathEncoder) appendNAT(b []byte, n *event.NATStep) []byte {
	b = append(b, `{"type":`...)
	b = appendString(b, n.Type.String())
	if n.Reverse {
		b = append(b, `,"reverse":true`...)
	}
	b = append(b, `,"by":`...)
	b = appendString(b, n.By)
	if n.Hook != "" {
		b = append(b, `,"hook":`...)
		b = appendString(b, n.Hook)
	}
	b = append(b, `,"before":`...)
	b = e.tuples.append(b, n.Before)
	b = append(b, `,"after":`...)
	b = e.tuples.append(b, n.After)
	b = append(b, `,"source":`...)
	b = appendString(b, n.Source.String())
	return append(b, '}')
}

func appendIPVS(b []byte, v *event.IPVSStep) []byte {
	b = append(b, `{"virtual":`...)
	b = appendAddrPort(b, v.Virtual)
	if v.Real != (netip.AddrPort{}) {
		b = append(b, `,"real":`...)
		b = appendAddrPort(b, v.Real)
	}
	if v.Connection != "" {
		b = append(b, `,"connection":`...)
		b = appendString(b, v.Connection)
	}
	if v.NoDestination {
		b = append(b, `,"no_destination":true`...)
	}
	if v.Weight != nil {
		b = append(b, `,"weight":`...)
		b = strconv.AppendInt(b, int64(*v.Weight), 10)
	}
	if v.Available != nil {
		b = append(b, `,"available":`...)
		b = strconv.AppendBool(b, *v.Available)
	}
	b = append(b, `,"source":`...)
	b = appendString(b, v.Source.String())
	return append(b, '}')
}

func appendRoute(b []byte, r *event.RouteStep) []byte {
	b = append(b, `{"ts":`...)
	b = strconv.AppendUint(b, r.Time, 10)
	b = append(b, `,"kind":`...)
	b = appendString(b, r.Kind)
	if r.Table != 0 {
		b = append(b, `,"table":`...)
		b = strconv.AppendUint(b, uint64(r.Table), 10)
	}
	b = append(b, `,"dst":`...)
	b = appendAddr(b, r.Dst)
	for _, f := range [...]struct {
		name string
		addr netip.Addr
	}{{`,"src":`, r.Src}, {`,"prefsrc":`, r.PrefSrc}, {`,"gateway":`, r.Gateway}} {
		if f.addr != (netip.Addr{}) {
			b = append(b, f.name...)
			b = appendAddr(b, f.addr)
		}
	}
	if r.OutDev != "" {
		b = append(b, `,"out_dev":`...)
		b = appendString(b, r.OutDev)
	}
	if r.OutIndex != 0 {
		b = append(b, `,"out_ifindex":`...)
		b = strconv.AppendUint(b, uint64(r.OutIndex), 10)
	}
	if r.Error != 0 {
		b = append(b, `,"error":`...)
		b = strconv.AppendInt(b, int64(r.Error), 10)
	}
	if r.Netns != 0 {
		b = append(b, `,"netns":`...)
		b = strconv.AppendUint(b, uint64(r.Netns), 10)
	}
	if r.NetnsName != "" {
		b = append(b, `,"netns_name":`...)
		b = appendString(b, r.NetnsName)
	}
	if r.Comm != "" {
		b = append(b, `,"comm":`...)
		b = appendString(b, r.Comm)
	}
	if r.PID != 0 {
		b = append(b, `,"pid":`...)
		b = strconv.AppendUint(b, uint64(r.PID), 10)
	}
	if r.Repeat {
		b = append(b, `,"repeat":true`...)
	}
	return append(b, '}')
}

func (e *pathEncoder) appendStep(b []byte, s *event.Step) []byte {
	b = append(b, `{"ts":`...)
	b = strconv.AppendUint(b, s.Time, 10)
	b = append(b, `,"kind":`...)
	b = appendString(b, s.Kind.String())
	b = append(b, `,"source":`...)
	b = appendString(b, s.Source.String())
	if s.Netns != 0 {
		b = append(b, `,"netns":`...)
		b = strconv.AppendUint(b, uint64(s.Netns), 10)
	}
	b = append(b, `,"where":`...)
	b = appendString(b, s.Where)
	b = append(b, `,"packet":`...)
	b = e.tuples.append(b, s.Packet)
	if s.Ifindex != 0 {
		b = append(b, `,"ifindex":`...)
		b = strconv.AppendUint(b, uint64(s.Ifindex), 10)
	}
	if s.Dev != "" {
		b = append(b, `,"dev":`...)
		b = appendString(b, s.Dev)
	}
	if s.Detail != "" {
		b = append(b, `,"detail":`...)
		b = appendString(b, s.Detail)
	}
	return append(b, '}')
}

func appendResult(b []byte, r *event.Result) []byte {
	b = append(b, `{"outcome":`...)
	b = appendString(b, string(r.Outcome))
	if r.Ifindex != 0 {
		b = append(b, `,"ifindex":`...)
		b = strconv.AppendUint(b, uint64(r.Ifindex), 10)
	}
	if r.Dev != "" {
		b = append(b, `,"dev":`...)
		b = appendString(b, r.Dev)
	}
	if r.Netns != 0 {
		b = append(b, `,"netns":`...)
		b = strconv.AppendUint(b, uint64(r.Netns), 10)
	}
	if r.Reason != "" {
		b = append(b, `,"reason":`...)
		b = appendString(b, r.Reason)
	}
	if r.Location != "" {
		b = append(b, `,"location":`...)
		b = appendString(b, r.Location)
	}
	if r.DropReason != "" {
		b = append(b, `,"drop_reason":`...)
		b = appendString(b, r.DropReason)
	}
	return append(b, '}')
}

func appendAddrPort(b []byte, ap netip.AddrPort) []byte {
	b = append(b, '"')
	b = ap.AppendTo(b) // the zero AddrPort is "", as MarshalText has it
	return append(b, '"')
}

func appendAddr(b []byte, a netip.Addr) []byte {
	b = append(b, '"')
	b, _ = a.AppendText(b) // the zero Addr is "", as MarshalText has it
	return append(b, '"')
}

const hexDigits = "0123456789abcdef"

// appendString is encoding/json's string encoding with HTML escaping off:
// control characters, quotes and backslashes escaped, invalid UTF-8 as
// U+FFFD, U+2028 and U+2029 escaped. Nearly every string in a path (names
// of hooks, devices, namespaces, pods) is printable ASCII and written as
// it is: that is checked eight bytes at a time first.
func appendString(b []byte, s string) []byte {
	if plainASCII(s) {
		b = append(b, '"')
		b = append(b, s...)
		return append(b, '"')
	}
	return appendEscaped(b, s)
}

// plainASCII reports whether s has no byte that encoding/json escapes or
// that may start a multi-byte character (control characters, '"', '\\',
// 0x80 and above).
func plainASCII(s string) bool {
	const (
		ones  = 0x0101010101010101
		highs = 0x8080808080808080
	)
	// has reports, for each byte of x, whether it is below n (n <= 0x80)
	// or has its top bit set, in that byte's top bit.
	below := func(x, n uint64) uint64 { return (x - ones*n) &^ x & highs }
	i := 0
	for ; i+8 <= len(s); i += 8 {
		x := uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
			uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
		if (x&highs)|below(x, 0x20)|below(x^(ones*'"'), 1)|below(x^(ones*'\\'), 1) != 0 {
			return false
		}
	}
	for ; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// appendEscaped is appendString for strings that need escaping.
func appendEscaped(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '\\', '"':
				b = append(b, '\\', c)
			case '\b':
				b = append(b, '\\', 'b')
			case '\f':
				b = append(b, '\\', 'f')
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}
