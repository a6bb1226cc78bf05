package meta

import (
	"fmt"
	"strconv"
	"time"
)

// SnapshotData is a Snapshot's content in a form encoding/json writes and
// reads back: the resolved Services (with their endpoints and former
// endpoints), Nodes, live and deleted Pods, the build time and the warnings.
// Recordings embed it so that a trace can be analysed without the cluster:
// RestoreSnapshot(s.Data()) answers every query (Name, Filter,
// EndpointState, …) exactly as s does.
//
// Field names inside the objects are those of the Go types of this package
// (Service, Pod, Node, …); new fields may appear, existing ones keep their
// meaning.
type SnapshotData struct {
	Time        time.Time  `json:"time"`
	Warnings    []string   `json:"warnings,omitempty"`
	Services    []*Service `json:"services"`
	Nodes       []*Node    `json:"nodes"`
	Pods        []*Pod     `json:"pods"`
	DeletedPods []*Pod     `json:"deleted_pods,omitempty"`
}

// Data returns the snapshot's content. It shares the snapshot's (read-only)
// objects: encode it, do not modify it.
func (s *Snapshot) Data() *SnapshotData {
	return &SnapshotData{
		Time:        s.at,
		Warnings:    s.Warnings,
		Services:    s.serviceList,
		Nodes:       s.nodes,
		Pods:        s.pods,
		DeletedPods: s.deletedPods,
	}
}

// RestoreSnapshot rebuilds the Snapshot whose Data is d. It fails on null
// entries (a damaged or hand-edited recording); d is not modified.
func RestoreSnapshot(d *SnapshotData) (*Snapshot, error) {
	if d == nil {
		return nil, fmt.Errorf("restore snapshot: no data")
	}
	var b Builder
	b.init()
	for i, svc := range d.Services {
		if svc == nil {
			return nil, fmt.Errorf("restore snapshot: services[%d] is null", i)
		}
		spec := *svc
		spec.Ports = append([]ServicePort(nil), svc.Ports...)
		spec.Endpoints, spec.FormerEndpoints = nil, nil
		ref := spec.Ref()
		b.services[ref] = &spec
		// The endpoints are already merged: one slice holding them all
		// merges to the same list.
		sliceRef := ObjectRef{ref.Namespace, "svctrace-restored/" + ref.Name}
		b.slices[sliceRef] = &sliceRec{ref: sliceRef, service: ref, endpoints: svc.Endpoints}
		for _, f := range svc.FormerEndpoints {
			b.former[formerKey{ref, f.Addr}] = &formerRec{service: ref, FormerEndpoint: f}
		}
	}
	for i, n := range d.Nodes {
		if n == nil {
			return nil, fmt.Errorf("restore snapshot: nodes[%d] is null", i)
		}
		b.nodes[n.Name] = n
	}
	for i, p := range d.Pods {
		if p == nil {
			return nil, fmt.Errorf("restore snapshot: pods[%d] is null", i)
		}
		b.pods[p.Ref()] = p
	}
	for i, p := range d.DeletedPods {
		if p == nil {
			return nil, fmt.Errorf("restore snapshot: deleted_pods[%d] is null", i)
		}
		b.deletedPods[strconv.Itoa(i)] = p
	}
	// build, not Build: nothing is pruned, the clock is the recorded one.
	s := build(&b, d.Time)
	s.Warnings = append([]string(nil), d.Warnings...)
	return s, nil
}
