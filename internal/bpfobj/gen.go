// Package bpfobj holds svctrace's compiled BPF object and its generated Go
// bindings. The object is built from bpf/svctrace.c with bpf2go and committed,
// so building svctrace needs no clang; `make generate` rebuilds it and the
// test suite fails when the committed files differ from a fresh build.
package bpfobj

//go:generate go tool bpf2go -tags linux -cc clang -cflags "-O2 -g -Wall -Werror" -target amd64 -type event -type tuple -type filter_key -type config -type event_kind -type event_source -type counter_idx Svctrace ../../bpf/svctrace.c -- -I../../headers
