package buildinfo

import (
	"runtime/debug"
	"strings"
	"testing"
)

func TestFromBuildInfo(t *testing.T) {
	def := Info{Version: "(devel)", Commit: Unknown, Date: Unknown, GoVersion: "go1", Platform: "os/arch"}
	for _, c := range []struct {
		name string
		bi   debug.BuildInfo
		want Info
	}{
		{"nothing stamped", debug.BuildInfo{}, def},
		{"checkout, clean", debug.BuildInfo{
			GoVersion: "go1.26.8",
			Main:      debug.Module{Version: "v0.0.0-20250102150405-abcdef012345"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abcdef0123456789"},
				{Key: "vcs.time", Value: "2025-01-02T15:04:05Z"}, {Key: "vcs.modified", Value: "false"}},
		}, Info{Version: "v0.0.0-20250102150405-abcdef012345", Commit: "abcdef0123456789", Date: "2025-01-02T15:04:05Z",
			GoVersion: "go1.26.8", Platform: "os/arch"}},
		{"checkout, dirty", debug.BuildInfo{
			Main:     debug.Module{Version: "(devel)"},
			Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "true"}},
		}, Info{Version: "(devel)", Commit: "abc-dirty", Date: Unknown, GoVersion: "go1", Platform: "os/arch"}},
		{"dirty but no revision", debug.BuildInfo{Settings: []debug.BuildSetting{{Key: "vcs.modified", Value: "true"}}}, def},
	} {
		if got := fromBuildInfo(&c.bi, def); got != c.want {
			t.Errorf("%s: got %+v, want %+v", c.name, got, c.want)
		}
	}
}

func TestLinkerValuesWin(t *testing.T) {
	defer func(v, c, d string) { version, commit, date = v, c, d }(version, commit, date)
	version, commit, date = "v1.2.3", "0123abcd", "2025-06-01T00:00:00Z"
	i := Get()
	if i.Version != "v1.2.3" || i.Commit != "0123abcd" || i.Date != "2025-06-01T00:00:00Z" {
		t.Fatalf("Get() = %+v, want the -X values", i)
	}
	if s := i.String(); !strings.HasPrefix(s, "v1.2.3, commit 0123abcd, built 2025-06-01T00:00:00Z, go") {
		t.Fatalf("String() = %q", s)
	}
}

// The SDK's build in a Hello: Quiver's own binaries name their commit; an
// application names the version of Quiver's module it requires.
func TestClient(t *testing.T) {
	i := Info{Version: "v0.0.0-x", Commit: "abc", Date: "d", GoVersion: "go1.26.8", Platform: "linux/amd64"}
	for _, c := range []struct {
		name string
		bi   *debug.BuildInfo
		want string
	}{
		{"quiver's own binary", &debug.BuildInfo{Main: debug.Module{Path: ModulePath}}, "quiver-go/v0.0.0-x (abc; go1.26.8; linux/amd64)"},
		{"no build information", nil, "quiver-go/v0.0.0-x (abc; go1.26.8; linux/amd64)"},
		{"an application", &debug.BuildInfo{Main: debug.Module{Path: "example.com/app"},
			Deps: []*debug.Module{{Path: "golang.org/x/sys", Version: "v0.1.0"}, {Path: ModulePath, Version: "v1.2.3"}}},
			"quiver-go/v1.2.3 (unknown; go1.26.8; linux/amd64)"},
		{"an application with a replace", &debug.BuildInfo{Main: debug.Module{Path: "example.com/app"},
			Deps: []*debug.Module{{Path: ModulePath, Version: "v1.2.3", Replace: &debug.Module{Path: "../quiver"}}}},
			"quiver-go/v1.2.3 => ../quiver (unknown; go1.26.8; linux/amd64)"},
	} {
		if got := clientOf(i, c.bi); got != c.want {
			t.Errorf("%s: %q, want %q", c.name, got, c.want)
		}
	}
	if got := Client(); !strings.HasPrefix(got, "quiver-go/") || len(got) > 255 {
		t.Errorf("Client() = %q", got)
	}
}
