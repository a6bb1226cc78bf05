package meta

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const svcA = `apiVersion: v1
kind: Service
metadata:
  name: a
  namespace: ns1
spec:
  clusterIP: 10.96.0.10
  ports:
  - port: 80
`

const svcBJSON = `{"apiVersion":"v1","kind":"Service","metadata":{"name":"b","namespace":"ns1"},
 "spec":{"clusterIP":"10.96.0.11","ports":[{"port":53,"protocol":"UDP"}]}}`

const podC = `apiVersion: v1
kind: Pod
metadata:
  name: c
spec:
  nodeName: n1
status:
  phase: Running
  podIP: 10.244.0.5
`

func TestLoadManifestsFormats(t *testing.T) {
	tests := []struct {
		name         string
		files        map[string]string
		wantServices []string
		wantPods     []string
		wantWarnings []string
	}{
		{
			name:         "multi-document yaml with empty and comment-only documents",
			files:        map[string]string{"all.yaml": "---\n" + svcA + "---\n# only a comment\n---\n" + podC + "---\n"},
			wantServices: []string{"ns1/a"},
			wantPods:     []string{"default/c"},
		},
		{
			name:         "single json object",
			files:        map[string]string{"b.json": svcBJSON},
			wantServices: []string{"ns1/b"},
		},
		{
			name:         "json stream and json array",
			files:        map[string]string{"s.json": svcBJSON + "\n" + `{"apiVersion":"v1","kind":"Pod","metadata":{"name":"c"}}`, "arr.json": `[` + strings.Replace(svcBJSON, `"name":"b"`, `"name":"d"`, 1) + `]`},
			wantServices: []string{"ns1/b", "ns1/d"},
			wantPods:     []string{"default/c"},
		},
		{
			name: "v1 List as kubectl get -o yaml writes it",
			files: map[string]string{"list.yaml": "apiVersion: v1\nkind: List\nmetadata:\n  resourceVersion: \"\"\nitems:\n- " +
				strings.ReplaceAll(strings.TrimSuffix(svcA, "\n"), "\n", "\n  ") + "\n- apiVersion: apps/v1\n  kind: Deployment\n  metadata:\n    name: x\n"},
			wantServices: []string{"ns1/a"},
			wantWarnings: []string{"ignored 1 apps/v1 Deployment object"},
		},
		{
			name: "typed ServiceList and json List",
			files: map[string]string{
				"svcs.yaml":  "apiVersion: v1\nkind: ServiceList\nitems:\n- metadata:\n    name: e\n    namespace: ns2\n  spec:\n    clusterIP: 10.96.0.12\n",
				"pods.json":  `{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p","namespace":"ns2"}}]}`,
				"README.md":  "not a manifest",
				".hidden.ym": "not read",
			},
			wantServices: []string{"ns2/e"},
			wantPods:     []string{"ns2/p"},
		},
		{
			name: "unknown kinds are counted, registered or not",
			files: map[string]string{"x.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n---\n" +
				"apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n---\napiVersion: v1\nkind: Endpoints\nmetadata:\n  name: old\n"},
			wantWarnings: []string{
				"ignored 1 example.com/v1 Widget object",
				"ignored 2 v1 ConfigMap objects",
				"ignored 1 v1 Endpoints object (endpoints are read from discovery.k8s.io/v1 EndpointSlices)",
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := LoadManifests(writeFiles(t, tt.files))
			if err != nil {
				t.Fatal(err)
			}
			var svcs, pods []string
			for _, svc := range s.Services() {
				svcs = append(svcs, svc.String())
			}
			for _, p := range s.Pods() {
				pods = append(pods, p.String())
			}
			if !slices.Equal(svcs, tt.wantServices) {
				t.Errorf("services = %q, want %q", svcs, tt.wantServices)
			}
			if !slices.Equal(pods, tt.wantPods) {
				t.Errorf("pods = %q, want %q", pods, tt.wantPods)
			}
			if !slices.Equal(s.Warnings, tt.wantWarnings) {
				t.Errorf("warnings = %q, want %q", s.Warnings, tt.wantWarnings)
			}
		})
	}
}

func TestLoadManifestsMalformed(t *testing.T) {
	tests := []struct {
		name     string
		content  string
		wantDoc  int
		wantItem int
		wantMsg  string
	}{
		{name: "yaml syntax", content: svcA + "---\n" + podC + "---\nkind: Pod\n  bad: [\n", wantDoc: 3, wantMsg: "parse yaml"},
		{name: "missing kind", content: svcA + "---\napiVersion: v1\nmetadata:\n  name: x\n", wantDoc: 2, wantMsg: "decode"},
		{name: "bad json", content: svcBJSON + "\n{\"kind\": ", wantDoc: 2, wantMsg: "parse json"},
		{name: "bad list item", content: "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: Pod\n  metadata:\n    name: ok\n- apiVersion: v1\n  metadata:\n    name: nokind\n", wantDoc: 1, wantItem: 2, wantMsg: "decode"},
		{name: "wrong field type", content: "apiVersion: v1\nkind: Service\nmetadata:\n  name: x\nspec:\n  ports: 80\n", wantDoc: 1, wantMsg: "decode"},
		{name: "no name", content: "apiVersion: v1\nkind: Pod\nmetadata:\n  namespace: x\n", wantDoc: 1, wantMsg: "has no name"},
		{name: "bad deleted-at", content: podC + "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: d\n  annotations:\n    svctrace.io/deleted-at: yesterday\n", wantDoc: 2, wantMsg: "annotation svctrace.io/deleted-at"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, map[string]string{"m.yaml": tt.content})
			_, err := LoadManifests(dir)
			var me *ManifestError
			if !errors.As(err, &me) {
				t.Fatalf("err = %v, want a *ManifestError", err)
			}
			if me.File != filepath.Join(dir, "m.yaml") || me.Document != tt.wantDoc || me.Item != tt.wantItem {
				t.Errorf("error at %s doc %d item %d, want m.yaml doc %d item %d", me.File, me.Document, me.Item, tt.wantDoc, tt.wantItem)
			}
			if !strings.Contains(err.Error(), tt.wantMsg) || !strings.Contains(err.Error(), "m.yaml: document ") {
				t.Errorf("err = %q, want it to name the file, the document and %q", err, tt.wantMsg)
			}
		})
	}

	// The fixture: the second document is broken.
	_, err := LoadManifests("testdata/malformed")
	if err == nil || !strings.HasPrefix(err.Error(), "testdata/malformed/bad.yaml: document 2: ") {
		t.Errorf("err = %v, want it to start with testdata/malformed/bad.yaml: document 2", err)
	}
}

func TestLoadManifestsFolder(t *testing.T) {
	s := loadCluster(t)
	var got []string
	for _, svc := range s.Services() {
		got = append(got, svc.String())
	}
	want := []string{"db/postgres", "default/hostnames", "default/kubernetes", "shop/frontend"}
	if !slices.Equal(got, want) {
		t.Errorf("services = %q, want %q", got, want)
	}
	if n := len(s.Nodes()); n != 3 {
		t.Errorf("%d nodes, want 3", n)
	}
	wantWarn := []string{
		"ignored 1 apps/v1 Deployment object",
		"ignored 2 example.com/v1 Widget objects",
		"ignored 1 v1 ConfigMap object",
	}
	if !slices.Equal(s.Warnings, wantWarn) {
		t.Errorf("warnings = %q, want %q", s.Warnings, wantWarn)
	}

	rec, err := (&ManifestSource{Path: "testdata/cluster", Recursive: true, Now: fixedClock}).Snapshot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rec.Service("shop", "cache"); err != nil {
		t.Errorf("recursive load: %v", err)
	}
	if _, err := s.Service("shop", "cache"); !errors.Is(err, ErrUnknownService) {
		t.Errorf("non-recursive load found shop/cache in a sub-folder (err %v)", err)
	}

	// A single file.
	one, err := LoadManifests("testdata/cluster/kubernetes.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(one.Services()) != 1 {
		t.Errorf("single file: %d services, want 1", len(one.Services()))
	}
}

func TestLoadManifestsPathErrors(t *testing.T) {
	if _, err := LoadManifests(filepath.Join(t.TempDir(), "nope")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing path: err = %v, want os.ErrNotExist", err)
	}
	s, err := LoadManifests(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(s.Warnings) != 1 || !strings.HasPrefix(s.Warnings[0], "no manifest files") {
		t.Errorf("empty folder warnings = %q", s.Warnings)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := NewManifestSource("testdata/cluster").Snapshot(ctx); err == nil {
		t.Error("cancelled context: no error")
	}
}

func TestLoadManifestsDuplicate(t *testing.T) {
	dir := writeFiles(t, map[string]string{"1.yaml": svcA, "2.yaml": strings.Replace(svcA, "10.96.0.10", "10.96.0.99", 1)})
	s, err := LoadManifests(dir)
	if err != nil {
		t.Fatal(err)
	}
	svc := mustService(t, s, "ns1", "a")
	if svc.ClusterIPs[0] != addr("10.96.0.99") {
		t.Errorf("clusterIP = %v, want the later file's", svc.ClusterIPs)
	}
	if len(s.Warnings) != 1 || !strings.Contains(s.Warnings[0], "the latter wins") {
		t.Errorf("warnings = %q", s.Warnings)
	}
}
