package meta

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/yaml"
)

// WriteManifests writes each object as YAML, the way kubectl get -o yaml does (apiVersion and
// kind set), to its own file in dir: "<kind>-<namespace>-<name>.yaml", or "<kind>-<name>.yaml"
// for cluster-scoped objects, all lower case. dir is created if needed. Objects must be of a
// type client-go's scheme knows, or carry their apiVersion and kind. The objects are not
// modified. Two objects that map to the same file are an error.
func WriteManifests(dir string, objs ...runtime.Object) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("write manifests: %w", err)
	}
	written := map[string]bool{}
	for _, obj := range objs {
		typed, gvk, err := withKind(obj)
		if err != nil {
			return fmt.Errorf("write manifests: %w", err)
		}
		m, err := apimeta.Accessor(typed)
		if err != nil {
			return fmt.Errorf("write manifests: %s: %w", gvk.Kind, err)
		}
		if m.GetName() == "" {
			return fmt.Errorf("write manifests: %s has no name", gvk.Kind)
		}
		parts := []string{gvk.Kind}
		if m.GetNamespace() != "" {
			parts = append(parts, m.GetNamespace())
		}
		parts = append(parts, m.GetName())
		name := strings.ToLower(strings.Join(parts, "-")) + ".yaml"
		if written[name] {
			return fmt.Errorf("write manifests: two objects would be written to %s", name)
		}
		written[name] = true
		data, err := yaml.Marshal(typed)
		if err != nil {
			return fmt.Errorf("write manifests: marshal %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return fmt.Errorf("write manifests: %w", err)
		}
	}
	return nil
}

// WriteManifestList writes the objects to file as one YAML v1 List, the way
// kubectl get -o yaml writes several objects. The file's folder must exist.
func WriteManifestList(file string, objs ...runtime.Object) error {
	list := &metav1.List{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "List"}}
	for _, obj := range objs {
		typed, _, err := withKind(obj)
		if err != nil {
			return fmt.Errorf("write manifest list: %w", err)
		}
		list.Items = append(list.Items, runtime.RawExtension{Object: typed})
	}
	data, err := yaml.Marshal(list)
	if err != nil {
		return fmt.Errorf("write manifest list: marshal: %w", err)
	}
	if err := os.WriteFile(file, data, 0o644); err != nil {
		return fmt.Errorf("write manifest list: %w", err)
	}
	return nil
}

// withKind returns a copy of obj with apiVersion and kind set.
func withKind(obj runtime.Object) (runtime.Object, schema.GroupVersionKind, error) {
	if obj == nil {
		return nil, schema.GroupVersionKind{}, fmt.Errorf("nil object")
	}
	gvk := obj.GetObjectKind().GroupVersionKind()
	if gvk.Kind == "" || gvk.Version == "" {
		gvks, _, err := scheme.Scheme.ObjectKinds(obj)
		if err != nil || len(gvks) == 0 {
			return nil, gvk, fmt.Errorf("unknown kind of %T: %w", obj, err)
		}
		gvk = gvks[0]
	}
	c := obj.DeepCopyObject()
	c.GetObjectKind().SetGroupVersionKind(gvk)
	return c, gvk, nil
}

// MarkDeleted sets AnnotationDeletedAt on obj (a Pod or EndpointSlice being prepared for
// WriteManifests), so that loading the manifest records it as deleted at at.
func MarkDeleted(obj metav1.Object, at time.Time) {
	a := obj.GetAnnotations()
	if a == nil {
		a = map[string]string{}
	}
	a[AnnotationDeletedAt] = at.UTC().Format(time.RFC3339)
	obj.SetAnnotations(a)
}
