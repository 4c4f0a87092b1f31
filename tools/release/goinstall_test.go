package release

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"golang.org/x/mod/module"
	"golang.org/x/mod/zip"
)

// The README's `go install github.com/quivermq/quiver/tools/quiver@latest`
// (no flags) and `go install -ldflags=-checklinkname=0 .../quiverd@latest`,
// replayed against a module proxy on disk that serves this checkout's HEAD
// as a release (the version below): the module as go install gets it
// (what git tracks; nested modules left out), no replace directives, a
// go.sum that covers it, and a --version that says the release.
func TestGoInstallFromAModuleProxy(t *testing.T) {
	if testing.Short() {
		t.Skip("builds quiver and quiverd (-short)")
	}
	const modPath, version = "github.com/quivermq/quiver", "v0.99.0"
	repo, err := filepath.Abs(root)
	if err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("git", "-C", repo, "rev-parse", "HEAD").CombinedOutput(); err != nil {
		t.Skipf("not a git checkout: %v: %s", err, out)
	}
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
	files := map[string]string{
		version + ".mod":  string(gomod),
		version + ".info": fmt.Sprintf(`{"Version":%q,"Time":"2026-12-03T00:00:00Z"}`, version),
		"list":            version + "\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o644); err != nil {
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
	// test's own, emptied first, where no earlier run's v0.99.0 can stand in
	// for this one. Its path stays the same from run to run, so the build
	// cache (whose keys hold the source's directory) still serves a second
	// run: 21 s a run in a fresh directory each time, against seconds.
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
			"GONOSUMDB="+modPath, // the checksum database has never seen v0.99.0
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
			t.Errorf("%s --version: %q, want the release version %s", c.name, got, version)
		}
	}
}
