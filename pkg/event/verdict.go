package event

import "net/netip"

// Verdict identifiers. They are part of svctrace's interface: scripts match
// on them, so they never change meaning.
const (
	VerdictOK                = "ok"
	VerdictStaleBackend      = "stale-backend"
	VerdictNoBackend         = "no-backend"
	VerdictWrongSource       = "wrong-source"
	VerdictMissingMasquerade = "missing-masquerade"
	VerdictNoLocalEndpoint   = "no-local-endpoint"
	VerdictDropped           = "dropped"
)

// Backend is where the dataplane sent a flow.
type Backend struct {
	Addr netip.AddrPort `json:"addr"`
	Pod  string         `json:"pod,omitempty"`  // "namespace/name" when known
	Node string         `json:"node,omitempty"` // node of the Pod or endpoint
	// Status says what the address is to the Service now: "ready endpoint",
	// "pod deleted 2m ago", "terminating", "endpoint of default/other", …
	Status string `json:"status,omitempty"`
}

// Verdict is svctrace's conclusion about one flow of the traced Service:
// what happened, the evidence, and what to do about it.
type Verdict struct {
	Type    string `json:"type"` // always "verdict"
	Verdict string `json:"verdict"`
	Time    uint64 `json:"ts"`
	Service string `json:"service"`
	Node    string `json:"node,omitempty"` // the node svctrace runs on
	// Summary is one line for people; Fix suggests the remedy.
	Summary string `json:"summary"`
	Fix     string `json:"fix,omitempty"`
	// Before and After are the flow's tuple before and after NAT.
	Before  Tuple    `json:"before"`
	After   Tuple    `json:"after,omitzero"`
	Backend *Backend `json:"backend,omitempty"`
	// Evidence holds the facts the verdict rests on, by name. The keys of
	// each verdict are documented in docs/verdicts.md.
	Evidence map[string]any `json:"evidence,omitempty"`
}
