package meta

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// AnnotationDeletedAt, set to an RFC 3339 time on a Pod or EndpointSlice manifest, records the
// object as deleted at that time (Builder.Delete) instead of live. It lets manifests describe
// recently deleted pods and removed endpoints.
const AnnotationDeletedAt = "svctrace.io/deleted-at"

// ManifestError is a malformed manifest document.
type ManifestError struct {
	File string
	// Document is the 1-based index of the document in the file (YAML "---" documents, JSON
	// values or JSON array elements).
	Document int
	// Item is the 1-based index in the document's List, 0 when the document is not a list.
	Item int
	Err  error
}

// Error returns e.g. "manifests/pods.yaml: document 2: item 1: ...".
func (e *ManifestError) Error() string {
	s := e.File + ": document " + strconv.Itoa(e.Document)
	if e.Item > 0 {
		s += ": item " + strconv.Itoa(e.Item)
	}
	return s + ": " + e.Err.Error()
}

// Unwrap returns the underlying error.
func (e *ManifestError) Unwrap() error { return e.Err }

func isManifestFile(name string) bool {
	switch strings.ToLower(filepath.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return !strings.HasPrefix(name, ".")
	}
	return false
}

func manifestFiles(path string, recursive bool) ([]string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("read manifests: %w", err)
	}
	if !fi.IsDir() {
		return []string{path}, nil
	}
	var files []string
	err = filepath.WalkDir(path, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != path && (!recursive || strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if isManifestFile(d.Name()) {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read manifests in %s: %w", path, err)
	}
	sort.Strings(files)
	return files, nil
}

type pendingDelete struct {
	obj runtime.Object
	at  time.Time
}

// loader decodes manifest files into a Builder. Deletions are applied before live objects, so
// a deleted pod and its live successor of the same name may come in any order.
type loader struct {
	b        *Builder
	deser    runtime.Decoder
	upserts  []runtime.Object
	deletes  []pendingDelete
	ignored  map[string]int
	origin   map[string]string
	warnings []string
}

func newLoader(b *Builder) *loader {
	return &loader{
		b:       b,
		deser:   scheme.Codecs.UniversalDeserializer(),
		ignored: map[string]int{},
		origin:  map[string]string{},
	}
}

func (l *loader) loadFile(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("read manifests: %w", err)
	}
	docs, err := splitDocuments(data)
	for i, d := range docs {
		if d == nil {
			continue // an empty or comment-only document
		}
		if err := l.decode(file, i+1, 0, d); err != nil {
			return err
		}
	}
	if err != nil {
		return &ManifestError{File: file, Document: len(docs) + 1, Err: err}
	}
	return nil
}

// splitDocuments returns each document of a YAML or JSON file as JSON (nil for an empty
// document). On error, the documents before the bad one are returned with it.
func splitDocuments(data []byte) ([][]byte, error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	trimmed := bytes.TrimLeft(data, " \t\r\n")
	var docs [][]byte
	if len(trimmed) > 0 && (trimmed[0] == '{' || trimmed[0] == '[') {
		dec := json.NewDecoder(bytes.NewReader(trimmed))
		for {
			var raw json.RawMessage
			if err := dec.Decode(&raw); errors.Is(err, io.EOF) {
				return docs, nil
			} else if err != nil {
				return docs, fmt.Errorf("parse json: %w", err)
			}
			if raw[0] != '[' {
				docs = append(docs, raw)
				continue
			}
			var arr []json.RawMessage
			if err := json.Unmarshal(raw, &arr); err != nil {
				return docs, fmt.Errorf("parse json: %w", err)
			}
			for _, el := range arr {
				docs = append(docs, el)
			}
		}
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		chunk, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs, nil
		}
		if err != nil {
			return docs, fmt.Errorf("split yaml: %w", err)
		}
		j, err := yaml.YAMLToJSON(chunk)
		if err != nil {
			return docs, fmt.Errorf("parse yaml: %w", err)
		}
		if t := bytes.TrimSpace(j); len(t) == 0 || string(t) == "null" {
			j = nil
		}
		docs = append(docs, j)
	}
}

func (l *loader) decode(file string, doc, item int, data []byte) error {
	obj, _, err := l.deser.Decode(data, nil, nil)
	if err != nil {
		if runtime.IsNotRegisteredError(err) {
			l.ignored[typeMetaKind(data)]++
			return nil
		}
		return &ManifestError{File: file, Document: doc, Item: item, Err: fmt.Errorf("decode: %w", err)}
	}
	if !apimeta.IsListType(obj) {
		return l.add(file, doc, item, obj)
	}
	items, err := apimeta.ExtractList(obj)
	if err != nil {
		return &ManifestError{File: file, Document: doc, Item: item, Err: fmt.Errorf("read list: %w", err)}
	}
	for i, it := range items {
		switch o := it.(type) {
		case nil:
		case *runtime.Unknown:
			if err := l.decode(file, doc, i+1, o.Raw); err != nil {
				return err
			}
		default:
			if err := l.add(file, doc, i+1, o); err != nil {
				return err
			}
		}
	}
	return nil
}

func (l *loader) add(file string, doc, item int, obj runtime.Object) error {
	switch obj.(type) {
	case *corev1.Service, *discoveryv1.EndpointSlice, *corev1.Pod, *corev1.Node:
	default:
		l.ignored[kindOf(obj)]++
		return nil
	}
	m, err := apimeta.Accessor(obj)
	if err != nil {
		return &ManifestError{File: file, Document: doc, Item: item, Err: err}
	}
	if m.GetName() == "" {
		return &ManifestError{File: file, Document: doc, Item: item, Err: fmt.Errorf("%s has no name", kindOf(obj))}
	}
	if v, ok := m.GetAnnotations()[AnnotationDeletedAt]; ok {
		at, err := time.Parse(time.RFC3339, v)
		if err != nil {
			return &ManifestError{File: file, Document: doc, Item: item,
				Err: fmt.Errorf("annotation %s: %w", AnnotationDeletedAt, err)}
		}
		l.deletes = append(l.deletes, pendingDelete{obj, at})
		return nil
	}
	loc := file + " document " + strconv.Itoa(doc)
	if item > 0 {
		loc += " item " + strconv.Itoa(item)
	}
	key := kindOf(obj) + " " + m.GetNamespace() + "/" + m.GetName()
	if prev, dup := l.origin[key]; dup {
		l.warnings = append(l.warnings, fmt.Sprintf("%s at %s is also at %s; the latter wins", key, prev, loc))
	}
	l.origin[key] = loc
	l.upserts = append(l.upserts, obj)
	return nil
}

func (l *loader) finish(noFiles bool, path string) *Snapshot {
	for _, d := range l.deletes {
		_ = l.b.Delete(d.obj, d.at) // only supported types get here
	}
	for _, o := range l.upserts {
		_ = l.b.Upsert(o)
	}
	s := l.b.Build()
	if noFiles {
		s.Warnings = append(s.Warnings, "no manifest files (*.yaml, *.yml, *.json) in "+path)
	}
	s.Warnings = append(s.Warnings, l.warnings...)
	s.Warnings = append(s.Warnings, ignoredWarnings(l.ignored)...)
	return s
}

// kindOf returns "apiVersion Kind" of a typed object, e.g. "apps/v1 Deployment".
func kindOf(obj runtime.Object) string {
	if obj == nil {
		return "<nil>"
	}
	gvk := obj.GetObjectKind().GroupVersionKind()
	if gvk.Kind == "" {
		if gvks, _, err := scheme.Scheme.ObjectKinds(obj); err == nil && len(gvks) > 0 {
			gvk = gvks[0]
		}
	}
	if gvk.Kind == "" {
		return fmt.Sprintf("%T", obj)
	}
	return gvk.GroupVersion().String() + " " + gvk.Kind
}

func typeMetaKind(data []byte) string {
	var tm metav1.TypeMeta
	if err := json.Unmarshal(data, &tm); err != nil || tm.Kind == "" {
		return "unknown kind"
	}
	return tm.APIVersion + " " + tm.Kind
}

func ignoredWarnings(counts map[string]int) []string {
	kinds := make([]string, 0, len(counts))
	for k := range counts {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	var out []string
	for _, k := range kinds {
		n := counts[k]
		w := fmt.Sprintf("ignored %d %s object", n, k)
		if n != 1 {
			w += "s"
		}
		if k == "v1 Endpoints" {
			w += " (endpoints are read from discovery.k8s.io/v1 EndpointSlices)"
		}
		out = append(out, w)
	}
	return out
}
