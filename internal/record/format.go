// Package record writes and reads svctrace recordings: a trace's event
// stream as versioned JSON lines, with everything needed to analyse it
// elsewhere (the Kubernetes metadata it was traced against and every change
// of it, the devices the pipeline resolved, the pipeline's clock), so that
// replaying a recording gives the same paths and verdicts as the live run.
//
// The format is documented in docs/recording.md. In short: every line is a
// JSON object with a "type"; the first line of every file is a "header";
// then, in stream order, "metadata", "event", "tick", "device", "netns",
// "path", "verdict" records; a cleanly closed file ends with an "end"
// record. Readers skip record types they do not know.
//
// Durability: records are buffered and flushed every FlushInterval, at
// rotation and at Close (which the tracer calls on every exit path,
// SIGINT/SIGTERM included). A process killed with SIGKILL leaves a file
// whose complete records all replay; the reader stops at a torn final record
// with a warning. Gzip files are sync-flushed at the same points, so a
// killed process leaves a readable compressed prefix.
package record

import (
	"net/netip"
	"time"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/meta"
)

// FormatName identifies svctrace recordings in their header.
const FormatName = "svctrace-recording"

// Version is the recording format version this package writes and the
// newest it reads. It changes only when old readers would misread a file.
const Version = 1

// Record types.
const (
	TypeHeader   = "header"
	TypeMetadata = "metadata"
	TypeEvent    = "event"
	TypeTick     = "tick"
	TypeDevice   = "device"
	TypeNetns    = "netns"
	TypePath     = "path"
	TypeVerdict  = "verdict"
	TypeEnd      = "end"
)

// Header is the first record of every file of a recording.
type Header struct {
	Type    string `json:"type"`    // "header"
	Format  string `json:"format"`  // FormatName
	Version int    `json:"version"` // format version
	// ID is the same in every file (segment) of one recording.
	ID string `json:"id"`
	// Segment numbers the files of a rotated recording from 0.
	Segment int `json:"segment"`
	// Preamble is how many records after the header restate the state at
	// the segment's start (metadata, devices) so the file alone suffices.
	Preamble int `json:"preamble,omitempty"`

	Svctrace  string `json:"svctrace"`
	Kernel    string `json:"kernel"`
	Node      string `json:"node,omitempty"`
	NodeNetns uint32 `json:"node_netns,omitempty"`
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Backend   string `json:"backend,omitempty"`
	// Start is when tracing started (wall clock).
	Start time.Time `json:"start"`
	// ClockOffset turns kernel timestamps (CLOCK_MONOTONIC ns) into Unix
	// time in ns: wall = ts + clock_offset.
	ClockOffset int64 `json:"clock_offset"`
	// Idle is the correlator's packet completion delay in ns. Recordings
	// of svctrace versions that left it 0 were made with 100 ms.
	Idle int64 `json:"idle_ns,omitempty"`
	// Snaplen is how many bytes of each packet's header the events keep
	// (0: the IPv4 and transport headers only, no payload).
	Snaplen int                 `json:"snaplen"`
	Plan    []attach.HookStatus `json:"plan,omitempty"`
}

// Metadata carries the cluster snapshot traced against: the first one and
// every change, at the point of the stream where the tracer switched.
type Metadata struct {
	Type     string             `json:"type"` // "metadata"
	Snapshot *meta.SnapshotData `json:"snapshot"`
}

// Tick says the pipeline's clock moved to TS (kernel ktime, ns) while
// packets were in flight. Ticks with nothing in flight are not recorded.
type Tick struct {
	Type string `json:"type"` // "tick"
	TS   uint64 `json:"ts"`
}

// Device is what the device resolver answered about a device (netns inode,
// ifindex). Only the fields that were asked for and changed are present.
type Device struct {
	Type     string          `json:"type"` // "device"
	Netns    uint32          `json:"netns"`
	Ifindex  uint32          `json:"ifindex"`
	Name     *string         `json:"name,omitempty"`
	Kind     *string         `json:"kind,omitempty"`
	Prefixes *[]netip.Prefix `json:"prefixes,omitempty"`
}

// Netns is what the device resolver answered about a namespace's name.
type Netns struct {
	Type  string `json:"type"` // "netns"
	Netns uint32 `json:"netns"`
	Name  string `json:"name"`
}

// End closes a file cleanly. Next names the following segment's file (in
// the same folder) when the recording was rotated.
type End struct {
	Type string    `json:"type"` // "end"
	Time time.Time `json:"time"`
	Next string    `json:"next,omitempty"`
}
