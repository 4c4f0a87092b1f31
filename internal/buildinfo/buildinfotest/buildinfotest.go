// Package buildinfotest checks a command's --version: the tests of
// quiverd, quiver and quiver-bench call CheckVersion.
package buildinfotest

import (
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
)

const pkgPath = "github.com/quivermq/quiver/internal/buildinfo"

// CheckVersion builds the main package in the current directory (a test's
// is its package's) into a temporary directory, runs it with --version and
// checks that it prints "NAME version V, commit C, ..." with a version, the
// checkout's commit (git rev-parse HEAD, "-dirty" when git status shows
// changes) and the Go version. ldflags are the linker flags the command
// needs (quiverd: -checklinkname=0).
//
// The build asks for VCS stamping (-buildvcs=true), which a GOFLAGS of
// -buildvcs=false would otherwise turn off. Go stamps only where the
// checkout's .git is a directory: in a git worktree (.git is a file) the
// commit is given with -X instead, as a release build would, and the test
// says so. Outside a git checkout it skips.
func CheckVersion(t *testing.T, ldflags ...string) {
	t.Helper()
	if testing.Short() {
		t.Skip("builds the command (-short)")
	}
	git := func(args ...string) string {
		t.Helper()
		out, err := exec.Command("git", args...).Output()
		if err != nil {
			t.Skipf("not a git checkout here (git %s: %v)", strings.Join(args, " "), err)
		}
		return strings.TrimSpace(string(out))
	}
	head := git("rev-parse", "HEAD")
	top := git("rev-parse", "--show-toplevel")
	want := head
	if git("status", "--porcelain") != "" {
		want += "-dirty"
	}
	if st, err := os.Stat(filepath.Join(top, ".git")); err != nil || !st.IsDir() {
		t.Logf("%s/.git is not a directory (a git worktree): go stamps no commit here; giving it with -X", top)
		ldflags = append(ldflags, "-X", pkgPath+".commit="+want)
	}

	bin := filepath.Join(t.TempDir(), "cmd")
	args := []string{"build", "-buildvcs=true", "-o", bin}
	if len(ldflags) > 0 {
		args = append(args, "-ldflags="+strings.Join(ldflags, " "))
	}
	if out, err := exec.Command("go", append(args, ".")...).CombinedOutput(); err != nil {
		t.Fatalf("go %s .: %v\n%s", strings.Join(args, " "), err, out)
	}
	out, err := exec.Command(bin, "--version").CombinedOutput()
	if err != nil {
		t.Fatalf("--version: %v\n%s", err, out)
	}
	got := strings.TrimSpace(string(out))
	t.Logf("--version: %s", got)
	m := regexp.MustCompile(`^\S+ version (\S+), commit (\S+), built (\S+), (\S+), (\S+)$`).FindStringSubmatch(got)
	if m == nil {
		t.Fatalf("--version printed %q, want NAME version V, commit C, built D, GO, OS/ARCH", got)
	}
	if v := m[1]; v != "(devel)" && !regexp.MustCompile(`^v\d+\.\d+\.\d+`).MatchString(v) {
		t.Errorf("version %q: want (devel) or a module version", v)
	}
	if m[2] != want {
		t.Errorf("commit %q, want %q", m[2], want)
	}
	if m[4] != runtime.Version() {
		t.Errorf("Go version %q, want %q", m[4], runtime.Version())
	}
}
