// Package kube is svctrace's Kubernetes API metadata source: a meta.Watcher
// fed by client-go shared informers.
//
// Start lists and watches, with one informer each:
//
//   - Services and EndpointSlices of the traced Service's namespace only;
//   - Pods of every namespace, because a client or a backend of the Service
//     can live in any namespace and must still be named. They are slimmed
//     by a transform function to what meta reads (names, labels, owner,
//     node, host network, container ports, phase, Ready, addresses), which
//     drops most of each object (managedFields, volumes, env, images,
//     probes, annotations, most of the status);
//   - Nodes, slimmed the same way (addresses, pod CIDRs, Ready, zone: no
//     images list, no node info).
//
// Every informer event goes into a meta.Builder (deletions stamped with the
// time they were seen, so a deleted Pod is named "deleted 2m ago" for
// meta.DefaultRetention); snapshots are rebuilt at most once per Debounce
// and the latest one is delivered on Updates.
//
// Start fails within StartTimeout with an error wrapping ErrUnreachable
// (the API server cannot be reached) or ErrForbidden (it refused the
// credentials or the RBAC rules). Once started, an API server that goes away
// does not stop the source: it keeps the last state, says so once through
// Options.Notify, and says so again when the API server is back; the
// informers relist by themselves and the changes flow again.
package kube
