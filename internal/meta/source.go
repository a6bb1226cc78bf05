package meta

import (
	"context"
	"time"
)

// Source gives Snapshots of cluster metadata: manifests on disk now, a client-go informer
// source later.
type Source interface {
	// Snapshot returns the current snapshot.
	Snapshot(ctx context.Context) (*Snapshot, error)
}

// Watcher is a Source whose metadata changes over time (an informer source).
type Watcher interface {
	Source
	// Updates delivers each new Snapshot after the watched objects changed. A slow reader
	// only misses intermediate snapshots: the latest is always delivered. The channel is
	// closed when the watcher stops (its context is cancelled).
	Updates() <-chan *Snapshot
}

// ManifestSource is a Source reading Kubernetes manifests from a file or a folder. Each call
// to Snapshot reads the files again.
type ManifestSource struct {
	// Path is a manifest file or a folder of *.yaml, *.yml and *.json files.
	Path string
	// Recursive also reads the folder's sub-folders (hidden ones are skipped), like
	// kubectl apply -R.
	Recursive bool
	// Retention and Now configure the Builder (see Builder): manifests of deleted objects
	// (AnnotationDeletedAt) older than Retention are forgotten.
	Retention time.Duration
	Now       func() time.Time
}

var _ Source = (*ManifestSource)(nil)

// NewManifestSource returns a non-recursive ManifestSource for path.
func NewManifestSource(path string) *ManifestSource { return &ManifestSource{Path: path} }

// Snapshot reads the manifests and builds a snapshot (see LoadManifests).
func (m *ManifestSource) Snapshot(ctx context.Context) (*Snapshot, error) {
	b := &Builder{Retention: m.Retention, Now: m.Now}
	files, err := manifestFiles(m.Path, m.Recursive)
	if err != nil {
		return nil, err
	}
	l := newLoader(b)
	for _, f := range files {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := l.loadFile(f); err != nil {
			return nil, err
		}
	}
	return l.finish(len(files) == 0, m.Path), nil
}

// LoadManifests reads Services, EndpointSlices, Pods and Nodes from a manifest file or a
// folder of them (not recursive) and builds a Snapshot with a zero Builder.
//
// Files are YAML (multi-document, "---") or JSON (one object, a stream of objects or an
// array), as kubectl get -o yaml|json writes them: single objects, v1 List, or typed lists
// (ServiceList, PodList, ...). Objects of other kinds are skipped with a warning counting them
// in Snapshot.Warnings. A malformed document fails the load with a *ManifestError naming the
// file and the document. Pods and EndpointSlices carrying AnnotationDeletedAt are recorded as
// deleted at that time.
func LoadManifests(path string) (*Snapshot, error) {
	return NewManifestSource(path).Snapshot(context.Background())
}
