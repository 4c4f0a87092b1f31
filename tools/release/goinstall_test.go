package release

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/module"
	"golang.org/x/mod/zip"
)

// The README's `go install github.com/quivermq/quiver/tools/quiver@latest`
// (no flags) and `go install -ldflags=-checklinkname=0 .../quiverd@latest`,
// replayed against a module proxy on disk that serves this checkout's HEAD
// (as its pseudo-version): the module as go install gets it
// (what git tracks; nested modules left out), no replace directives, a
// go.sum that covers it, and a --version that says the release.
func TestGoInstallFromAModuleProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds quiver and quiverd (-short)")
	}
	const modPath = "github.com/quivermq/quiver"
	repo, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	// A module version is immutable to the go command (its caches hold a
	// version's file list by name): HEAD's pseudo-version, not a fixed
	// one, or a second commit would be built from the first one's list.
	out, err := exec.Command("git", "-C", repo, "log", "-1", "--format=%H %ct").Output()
	if err != nil {
		t.Skipf("not a git checkout: %v", err)
	}
	var head string
	var unix int64
	if _, err := fmt.Sscan(string(out), &head, &unix); err != nil {
		t.Fatalf("git log: %q: %v", out, err)
	}
	when := time.Unix(unix, 0).UTC()
	version := module.PseudoVersion("v0", "", when, head[:12])
	tmp := t.TempDir()
	proxy := filepath.Join(tmp, "proxy")
	dir := filepath.Join(proxy, modPath, "@v")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	zf, err := os.Create(filepath.Join(dir, version+".zip"))
	if err != nil {
		t.Fatal(err)
	}
	m := module.Version{Path: modPath, Version: version}
	if err := zip.CreateFromVCS(zf, m, repo, "HEAD", ""); err != nil {
		t.Fatalf("module zip of HEAD: %v", err)
	}
	if err := zf.Close(); err != nil {
		t.Fatal(err)
	}
	gomod, err := exec.Command("git", "-C", repo, "show", "HEAD:go.mod").Output()
	if err != nil {
		t.Fatal(err)
	}
	info := fmt.Sprintf(`{"Version":%q,"Time":%q}`, version, when.Format(time.RFC3339))
	files := map[string]string{
		filepath.Join(dir, version+".mod"):  string(gomod),
		filepath.Join(dir, version+".info"): info,
		filepath.Join(dir, "list"):          "",   // no release tags: @latest asks for the newest commit
		filepath.Join(dir, "..", "@latest"): info, // (the proxy protocol's $module/@latest)
	}
	for name, body := range files {
		if err := os.WriteFile(name, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	env := func(name string) string {
		out, err := exec.Command("go", "env", name).Output()
		if err != nil {
			t.Fatalf("go env %s: %v", name, err)
		}
		return strings.TrimSpace(string(out))
	}
	// The dependencies come from the module cache's downloads, which is a
	// proxy's layout (make test's builds have fetched them all), and else
	// from the usual proxy; they are extracted into a module cache of this
	// test's own, emptied first. Its path stays the same from run to run,
	// so the build cache (whose keys hold the source's directory) still
	// serves a second run: 21 s a run in a fresh directory each time,
	// against seconds.
	modcache := filepath.Join(os.TempDir(), "quiver-goinstall-test-modcache")
	if err := os.RemoveAll(modcache); err != nil {
		t.Fatalf("emptying %s: %v", modcache, err)
	}
	t.Cleanup(func() { os.RemoveAll(modcache) })
	goproxy := "file://" + filepath.ToSlash(proxy) +
		",file://" + filepath.ToSlash(filepath.Join(env("GOMODCACHE"), "cache", "download")) +
		"," + env("GOPROXY")
	gobin := filepath.Join(tmp, "bin")
	for _, c := range []struct{ name, pkg, flags string }{
		{"quiver", modPath + "/tools/quiver", ""},
		{"quiverd", modPath + "/daemon/cmd/quiverd", "-ldflags=-checklinkname=0"},
	} {
		args := []string{"install"}
		if c.flags != "" {
			args = append(args, c.flags)
		}
		args = append(args, c.pkg+"@latest")
		cmd := exec.Command("go", args...)
		cmd.Dir = tmp // outside any module, as a user's shell would be
		cmd.Env = append(os.Environ(),
			"GOBIN="+gobin,
			"GOPROXY="+goproxy,
			"GOMODCACHE="+modcache,
			"GONOSUMDB="+modPath, // the checksum database has never seen this version
			// As a user's: no -mod, no -buildvcs; -modcacherw lets the test
			// remove its module cache.
			"GOFLAGS=-modcacherw",
			"GOWORK=off",
		)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		out, err := exec.Command(filepath.Join(gobin, c.name), "--version").CombinedOutput()
		if err != nil {
			t.Fatalf("%s --version: %v\n%s", c.name, err, out)
		}
		got := strings.TrimSpace(string(out))
		t.Logf("%s", got)
		if !regexp.MustCompile(`^` + c.name + ` version ` + regexp.QuoteMeta(version) + `, commit `).MatchString(got) {
			t.Errorf("%s --version: %q, want the module version %s", c.name, got, version)
		}
	}
}
