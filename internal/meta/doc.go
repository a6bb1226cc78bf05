// Package meta is svctrace's Kubernetes metadata layer. It turns Service, EndpointSlice, Pod
// and Node objects into an immutable, indexed Snapshot that the tracer uses to compute the
// in-kernel filter of one Service (Snapshot.Filter) and to name the addresses it sees
// (Snapshot.Name, allocation-free, for the event hot path).
//
// Snapshots come from a Source. ManifestSource reads manifests from disk (kubectl get -o yaml
// or -o json output, multi-document YAML, Lists); an informer source will drive a Builder the
// same way: Upsert on add and update, Delete on delete, Build after each batch. A Builder keeps
// deleted Pods and removed endpoints for a retention window, so a packet to an address that
// just went away is still named ("deleted 2m ago", "was an endpoint of default/hostnames
// until ...").
//
// WriteManifests writes objects the way kubectl does, for test labs that build clusters in Go.
package meta
