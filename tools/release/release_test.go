package release

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/goreleaser/goreleaser/v2/pkg/config"
)

// root is the repository, where .goreleaser.yaml and the mains are.
const root = "../.."

// want is what each platform's archive holds: quiverd is Linux-only in a
// release (io_uring; macOS builds it from source, for development), the CLI
// and the load generator go everywhere.
var want = map[string][]string{
	"linux/amd64":   {"quiver", "quiver-bench", "quiverd"},
	"linux/arm64":   {"quiver", "quiver-bench", "quiverd"},
	"darwin/amd64":  {"quiver", "quiver-bench"},
	"darwin/arm64":  {"quiver", "quiver-bench"},
	"windows/amd64": {"quiver", "quiver-bench"},
	"windows/arm64": {"quiver", "quiver-bench"},
}

func load(t *testing.T) config.Project {
	t.Helper()
	p, err := config.Load(filepath.Join(root, ".goreleaser.yaml"))
	if err != nil {
		t.Fatalf(".goreleaser.yaml: %v", err)
	}
	return p
}

func TestArchivesHoldWhatEachPlatformGets(t *testing.T) {
	p := load(t)
	if len(p.Archives) == 0 {
		t.Fatal("no archives")
	}
	byID := map[string]config.Build{}
	for _, b := range p.Builds {
		if b.ID == "" || b.Binary == "" {
			t.Fatalf("build %+v: set id and binary", b)
		}
		if len(b.Goos) == 0 || len(b.Goarch) == 0 || len(b.Targets) > 0 || len(b.Ignore) > 0 {
			// goreleaser's defaults (386 and more) would ship platforms nobody tests.
			t.Fatalf("build %s: list goos and goarch, nothing else", b.ID)
		}
		byID[b.ID] = b
	}
	got := map[string][]string{}
	for _, a := range p.Archives {
		if len(a.IDs) == 0 {
			t.Fatalf("archive %q: list the builds it holds (ids)", a.ID)
		}
		for _, id := range a.IDs {
			b, ok := byID[id]
			if !ok {
				t.Fatalf("archive %q holds build %q, which does not exist", a.ID, id)
			}
			for _, goos := range b.Goos {
				for _, goarch := range b.Goarch {
					k := goos + "/" + goarch
					got[k] = append(got[k], b.Binary)
				}
			}
		}
		if !strings.Contains(a.NameTemplate, "{{ .Os }}") || !strings.Contains(a.NameTemplate, "{{ .Arch }}") {
			t.Errorf("archive %q: its name must say the platform ({{ .Os }}_{{ .Arch }})", a.ID)
		}
		zip := false
		for _, o := range a.FormatOverrides {
			zip = zip || (o.Goos == "windows" && slices.Contains(o.Formats, "zip"))
		}
		if !zip {
			t.Errorf("archive %q: Windows users get a zip (format_overrides)", a.ID)
		}
	}
	for k := range got {
		sort.Strings(got[k])
	}
	for k, bins := range want {
		if !slices.Equal(got[k], bins) {
			t.Errorf("%s: archive holds %v, want %v", k, got[k], bins)
		}
	}
	for k, bins := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%s: archive %v, a platform the release does not promise (and crossbuild does not check)", k, bins)
		}
	}
	if p.Checksum.Disable || p.Checksum.NameTemplate == "" {
		t.Error("the release must publish checksums (checksum.name_template)")
	}
}

// xflag is one -X import/path.name=value in ldflags.
var xflag = regexp.MustCompile(`-X[ =]([^ =]+)\.([A-Za-z_][A-Za-z0-9_]*)=`)

const buildinfo = "github.com/quivermq/quiver/internal/buildinfo"

func TestEveryBinaryLinksAndSaysItsBuild(t *testing.T) {
	p := load(t)
	vars := packageStringVars(t, filepath.Join(root, "internal/buildinfo"))
	for _, b := range p.Builds {
		ld := strings.Join(b.Ldflags, " ")
		// giouring links syscall.munmap: quiverd does not link without it,
		// and a binary that does not need it is not harmed.
		if !strings.Contains(ld, "-checklinkname=0") {
			t.Errorf("build %s: ldflags lack -checklinkname=0", b.ID)
		}
		set := map[string]bool{}
		for _, m := range xflag.FindAllStringSubmatch(ld, -1) {
			if m[1] != buildinfo {
				t.Errorf("build %s: -X %s.%s: only %s is meant to be set", b.ID, m[1], m[2], buildinfo)
				continue
			}
			if !vars[m[2]] {
				// The linker ignores -X of a missing variable: --version
				// would silently print no release version.
				t.Errorf("build %s: -X %s.%s: no such string variable in internal/buildinfo", b.ID, m[1], m[2])
			}
			set[m[2]] = true
		}
		for _, v := range []string{"version", "commit", "date"} {
			if !set[v] {
				t.Errorf("build %s: ldflags do not set buildinfo.%s (--version)", b.ID, v)
			}
		}
		if !slices.Contains(b.Env, "CGO_ENABLED=0") {
			t.Errorf("build %s: CGO_ENABLED=0, or cross builds need a C toolchain per platform", b.ID)
		}
		// The main package is where the config says.
		dir := filepath.Join(root, b.Dir, b.Main)
		if name := packageName(t, dir); name != "main" {
			t.Errorf("build %s: %s holds package %q, not main", b.ID, dir, name)
		}
	}
}

// packageStringVars returns the package-level string variables (without
// an initial value, which -X would not override reliably) in dir.
func packageStringVars(t *testing.T, dir string) map[string]bool {
	t.Helper()
	vars := map[string]bool{}
	for _, f := range parseDir(t, dir) {
		for _, d := range f.Decls {
			g, ok := d.(*ast.GenDecl)
			if !ok || g.Tok != token.VAR {
				continue
			}
			for _, s := range g.Specs {
				vs := s.(*ast.ValueSpec)
				if id, ok := vs.Type.(*ast.Ident); !ok || id.Name != "string" || len(vs.Values) > 0 {
					continue
				}
				for _, n := range vs.Names {
					vars[n.Name] = true
				}
			}
		}
	}
	return vars
}

func packageName(t *testing.T, dir string) string {
	t.Helper()
	files := parseDir(t, dir)
	if len(files) == 0 {
		t.Fatalf("%s: no Go files", dir)
	}
	return files[0].Name.Name
}

// parseDir parses the non-test Go files of dir.
func parseDir(t *testing.T, dir string) []*ast.File {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []*ast.File
	for _, e := range ents {
		if !strings.HasSuffix(e.Name(), ".go") || strings.HasSuffix(e.Name(), "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), filepath.Join(dir, e.Name()), nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	return files
}
