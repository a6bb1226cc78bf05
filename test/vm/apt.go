package vm

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Environment variables that override the mirrors read from the host's apt
// sources.
const (
	EnvMirror         = "SVCTRACE_APT_MIRROR"          // e.g. http://deb.debian.org/debian
	EnvSecurityMirror = "SVCTRACE_APT_SECURITY_MIRROR" // e.g. http://deb.debian.org/debian-security
)

const debianKeyring = "/usr/share/keyrings/debian-archive-keyring.gpg"

// ErrVersionGone means that a pinned package version is no longer on the
// mirror: Debian retires superseded kernels.
var ErrVersionGone = errors.New("pinned version is no longer on the mirror")

// mirrors are the base URIs of the Debian archive and of the security archive.
type mirrors struct {
	archive  string
	security string
}

// hostMirrors reads the mirror URIs from the host's apt sources (one-line
// *.list and deb822 *.sources), so that no mirror host name is hard-coded.
func hostMirrors(etcApt string) (mirrors, error) {
	var m mirrors
	m.archive = os.Getenv(EnvMirror)
	m.security = os.Getenv(EnvSecurityMirror)
	if m.archive != "" && m.security != "" {
		return m, nil
	}
	var entries []sourceEntry
	files := []string{filepath.Join(etcApt, "sources.list")}
	for _, pat := range []string{"*.list", "*.sources"} {
		more, _ := filepath.Glob(filepath.Join(etcApt, "sources.list.d", pat))
		files = append(files, more...)
	}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return m, fmt.Errorf("read apt sources: %w", err)
		}
		if strings.HasSuffix(f, ".sources") {
			entries = append(entries, parseDeb822Sources(b)...)
		} else {
			entries = append(entries, parseOneLineSources(b)...)
		}
	}
	for _, e := range entries {
		if e.typ != "deb" || !(strings.HasPrefix(e.uri, "http://") || strings.HasPrefix(e.uri, "https://")) {
			continue
		}
		for _, s := range e.suites {
			switch {
			case !isDebianSuite(s):
			case strings.HasSuffix(s, "-security") || strings.HasSuffix(s, "/updates"):
				if m.security == "" {
					m.security = e.uri
				}
			default:
				if m.archive == "" {
					m.archive = e.uri
				}
			}
		}
	}
	if m.archive == "" {
		return m, fmt.Errorf("no Debian archive found in the apt sources under %s (set %s)", etcApt, EnvMirror)
	}
	if m.security == "" {
		// The security archive sits next to the archive on Debian mirrors
		// that carry both (deb.debian.org/debian-security).
		u := strings.TrimSuffix(m.archive, "/")
		if !strings.HasSuffix(u, "/debian") {
			return m, fmt.Errorf("no Debian security archive found in the apt sources under %s (set %s)", etcApt, EnvSecurityMirror)
		}
		m.security = u + "-security"
	}
	m.archive = strings.TrimSuffix(m.archive, "/")
	m.security = strings.TrimSuffix(m.security, "/")
	return m, nil
}

// isDebianSuite tells Debian suites (bookworm, bullseye-security, stable, ...)
// from third-party ones ("nodistro", "cloud-sdk-bookworm", "jammy").
func isDebianSuite(s string) bool {
	base, _, _ := strings.Cut(s, "-")
	base, _, _ = strings.Cut(base, "/")
	switch base {
	case "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
		"oldoldstable", "oldstable", "stable", "testing", "unstable":
		return true
	}
	return false
}

type sourceEntry struct {
	typ    string
	uri    string
	suites []string
}

func parseOneLineSources(b []byte) []sourceEntry {
	var out []sourceEntry
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line, _, _ := strings.Cut(sc.Text(), "#")
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		typ := f[0]
		f = f[1:]
		if strings.HasPrefix(f[0], "[") {
			// Options: [ a=b c=d ] possibly spread over several fields.
			for len(f) > 0 && !strings.HasSuffix(f[0], "]") {
				f = f[1:]
			}
			if len(f) == 0 {
				continue
			}
			f = f[1:]
		}
		if len(f) < 2 {
			continue
		}
		out = append(out, sourceEntry{typ: typ, uri: f[0], suites: []string{f[1]}})
	}
	return out
}

func parseDeb822Sources(b []byte) []sourceEntry {
	var out []sourceEntry
	for _, stanza := range splitStanzas(b) {
		if strings.EqualFold(stanza["enabled"], "no") {
			continue
		}
		for _, typ := range strings.Fields(stanza["types"]) {
			for _, uri := range strings.Fields(stanza["uris"]) {
				out = append(out, sourceEntry{typ: typ, uri: uri, suites: strings.Fields(stanza["suites"])})
			}
		}
	}
	return out
}

// splitStanzas parses RFC 822 style stanzas (apt .sources files, apt-cache
// show output) into maps of lower-cased field names to values.
func splitStanzas(b []byte) []map[string]string {
	var out []map[string]string
	cur := map[string]string{}
	last := ""
	flush := func() {
		if len(cur) > 0 {
			out = append(out, cur)
		}
		cur = map[string]string{}
		last = ""
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			flush()
		case strings.HasPrefix(line, "#"):
		case line[0] == ' ' || line[0] == '\t':
			if last != "" {
				cur[last] += "\n" + strings.TrimSpace(line)
			}
		default:
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			last = strings.ToLower(strings.TrimSpace(k))
			cur[last] = strings.TrimSpace(v)
		}
	}
	flush()
	return out
}

// apt runs apt-get and apt-cache with a private configuration under dir, so
// that the host's apt state is neither used nor changed.
type apt struct {
	dir     string
	mirrors mirrors
	suites  []string
}

func newApt(dir string, suites []string) (*apt, error) {
	m, err := hostMirrors("/etc/apt")
	if err != nil {
		return nil, err
	}
	s := slices.Clone(suites)
	slices.Sort(s)
	s = slices.Compact(s)
	return &apt{dir: dir, mirrors: m, suites: s}, nil
}

func (a *apt) sourcesList() string {
	var b strings.Builder
	b.WriteString("# written by svctrace test/vm; mirrors taken from the host's apt sources\n")
	for _, s := range a.suites {
		uri := a.mirrors.archive
		if strings.HasSuffix(s, "-security") {
			uri = a.mirrors.security
		}
		fmt.Fprintf(&b, "deb [signed-by=%s target=Packages] %s %s main\n", debianKeyring, uri, s)
	}
	return b.String()
}

func (a *apt) options() []string {
	return []string{
		"-q",
		"-o", "Dir::Etc::SourceList=" + filepath.Join(a.dir, "sources.list"),
		"-o", "Dir::Etc::SourceParts=" + filepath.Join(a.dir, "sources.list.d"),
		"-o", "Dir::Etc::Preferences=" + filepath.Join(a.dir, "preferences"),
		"-o", "Dir::Etc::PreferencesParts=" + filepath.Join(a.dir, "preferences.d"),
		"-o", "Dir::State::Lists=" + filepath.Join(a.dir, "lists"),
		"-o", "Dir::State::status=" + filepath.Join(a.dir, "status"),
		"-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "Acquire::Languages=none",
		"-o", "APT::Sandbox::User=root",
	}
}

// setup writes the private configuration. It runs under the apt lock.
func (a *apt) setup() error {
	for _, d := range []string{"sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return fmt.Errorf("apt setup: %w", err)
		}
	}
	if err := os.WriteFile(filepath.Join(a.dir, "status"), nil, 0o644); err != nil {
		return fmt.Errorf("apt setup: %w", err)
	}
	want := a.sourcesList()
	f := filepath.Join(a.dir, "sources.list")
	if old, err := os.ReadFile(f); err != nil || string(old) != want {
		if err := os.WriteFile(f, []byte(want), 0o644); err != nil {
			return fmt.Errorf("apt setup: %w", err)
		}
		// The lists are for another set of suites: update before use.
		_ = os.Remove(filepath.Join(a.dir, "updated"))
	}
	return nil
}

func (a *apt) run(ctx context.Context, dir, tool string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, tool, append(a.options(), args...)...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		msg := strings.TrimSpace(stderr.String())
		if msg == "" {
			msg = strings.TrimSpace(stdout.String())
		}
		return stdout.Bytes(), fmt.Errorf("%s %s: %w: %s", tool, strings.Join(args, " "), err, msg)
	}
	return stdout.Bytes(), nil
}

// update refreshes the package lists unless force is false and they were
// fetched before for the same sources.
func (a *apt) update(ctx context.Context, force bool) error {
	stamp := filepath.Join(a.dir, "updated")
	if _, err := os.Stat(stamp); err == nil && !force {
		return nil
	}
	if _, err := a.run(ctx, a.dir, "apt-get", "update"); err != nil {
		return fmt.Errorf("apt update: %w", err)
	}
	return os.WriteFile(stamp, nil, 0o644)
}

// pkgInfo is what apt-cache show says about one package version.
type pkgInfo struct {
	Package  string
	Version  string
	SHA256   string
	Filename string
	Depends  string
}

// show returns the stanzas apt-cache show prints for spec ("pkg=ver" or
// "pkg/suite").
func (a *apt) show(ctx context.Context, spec string) ([]pkgInfo, error) {
	out, err := a.run(ctx, a.dir, "apt-cache", "show", spec)
	if err != nil {
		return nil, err
	}
	var infos []pkgInfo
	for _, st := range splitStanzas(out) {
		infos = append(infos, pkgInfo{
			Package:  st["package"],
			Version:  st["version"],
			SHA256:   st["sha256"],
			Filename: st["filename"],
			Depends:  st["depends"],
		})
	}
	if len(infos) == 0 {
		return nil, fmt.Errorf("apt-cache show %s: no package", spec)
	}
	return infos, nil
}

// resolveMeta finds the linux-image package a meta-package in suite points to.
func (a *apt) resolveMeta(ctx context.Context, meta, suite string) (pkgInfo, error) {
	infos, err := a.show(ctx, meta+"/"+suite)
	if err != nil {
		return pkgInfo{}, fmt.Errorf("resolve %s in %s: %w", meta, suite, err)
	}
	m := infos[0]
	for dep := range strings.SplitSeq(m.Depends, ",") {
		name, ver, _ := strings.Cut(strings.TrimSpace(dep), " ")
		if !strings.HasPrefix(name, "linux-image-") {
			continue
		}
		ver = strings.TrimSpace(strings.Trim(strings.TrimSpace(ver), "()"))
		ver = strings.TrimSpace(strings.TrimPrefix(ver, "="))
		infos, err := a.show(ctx, name+"="+ver)
		if err != nil {
			return pkgInfo{}, fmt.Errorf("resolve %s in %s: %w", meta, suite, err)
		}
		return infos[0], nil
	}
	return pkgInfo{}, fmt.Errorf("resolve %s in %s: no linux-image dependency in %q", meta, suite, m.Depends)
}

// download fetches pkg=ver into dir and returns the file's path.
func (a *apt) download(ctx context.Context, dir, pkg, ver string) (string, error) {
	before, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	if _, err := a.run(ctx, dir, "apt-get", "download", pkg+"="+ver); err != nil {
		if strings.Contains(err.Error(), "not found") || strings.Contains(err.Error(), "Unable to locate") ||
			strings.Contains(err.Error(), "has no installation candidate") {
			return "", fmt.Errorf("%s=%s: %w", pkg, ver, ErrVersionGone)
		}
		return "", fmt.Errorf("apt-get download %s=%s: %w", pkg, ver, err)
	}
	after, _ := filepath.Glob(filepath.Join(dir, "*.deb"))
	for _, f := range after {
		if !slices.Contains(before, f) {
			return f, nil
		}
	}
	return "", fmt.Errorf("apt-get download %s=%s: no .deb written", pkg, ver)
}
