// Package buildinfo says which build of Quiver is running: the module
// version, the commit, the Go version and the build date, read from what
// the go command stamps into every binary (runtime/debug.ReadBuildInfo).
// quiverd, quiver and quiver-bench print it for --version. It imports
// nothing but the standard library, so that the SDK can use it too.
//
// A release build may set any field with the linker, which then wins over
// what Go stamped:
//
//	-ldflags "-X github.com/quivermq/quiver/internal/buildinfo.version=v1.2.3
//	          -X github.com/quivermq/quiver/internal/buildinfo.commit=<sha>
//	          -X github.com/quivermq/quiver/internal/buildinfo.date=<RFC 3339>"
package buildinfo

import (
	"fmt"
	"runtime"
	"runtime/debug"
)

// Set with -ldflags -X at release time; empty otherwise.
var version, commit, date string

// Unknown stands for a field that the build did not record: a binary built
// with -buildvcs=false, from a git worktree (Go stamps only where .git is a
// directory) or outside a checkout has no commit and no date.
const Unknown = "unknown"

// Info is one binary's build.
type Info struct {
	// Version is the main module's version: "(devel)" for a build from a
	// checkout that Go did not stamp, a pseudo-version such as
	// v0.0.0-20250102150405-abcdef012345 (+dirty) where it did, vX.Y.Z for
	// go install of a release.
	Version string
	// Commit is vcs.revision, with "-dirty" when the tree had changes
	// (vcs.modified=true).
	Commit string
	// GoVersion is the toolchain that built the binary, e.g. go1.26.8.
	GoVersion string
	// Date is vcs.time, the commit's time (RFC 3339, UTC), unless a release
	// build set it.
	Date string
	// Platform is GOOS/GOARCH.
	Platform string
}

// Get returns the running binary's build.
func Get() Info {
	i := Info{Version: "(devel)", Commit: Unknown, Date: Unknown,
		GoVersion: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	if bi, ok := debug.ReadBuildInfo(); ok {
		i = fromBuildInfo(bi, i)
	}
	for _, o := range []struct{ set, to *string }{{&version, &i.Version}, {&commit, &i.Commit}, {&date, &i.Date}} {
		if *o.set != "" {
			*o.to = *o.set
		}
	}
	return i
}

// ModulePath is Quiver's module.
const ModulePath = "github.com/quivermq/quiver"

// Client is how the SDK names its build in a session's Hello (at most 255
// bytes): "quiver-go/<version> (<commit>; <go version>; <os/arch>)". In
// an application, whose binary is another module's, the version is the
// one of Quiver's module it requires (and the commit unknown).
func Client() string {
	bi, _ := debug.ReadBuildInfo()
	return clientOf(Get(), bi)
}

func clientOf(i Info, bi *debug.BuildInfo) string {
	if bi != nil && bi.Main.Path != ModulePath {
		i.Version, i.Commit = Unknown, Unknown
		for _, d := range bi.Deps {
			if d.Path == ModulePath {
				i.Version = d.Version
				if d.Replace != nil {
					i.Version += " => " + d.Replace.Path
				}
			}
		}
	}
	s := fmt.Sprintf("quiver-go/%s (%s; %s; %s)", i.Version, i.Commit, i.GoVersion, i.Platform)
	if len(s) > 255 {
		s = s[:255]
	}
	return s
}

// fromBuildInfo fills i from what Go stamped.
func fromBuildInfo(bi *debug.BuildInfo, i Info) Info {
	if bi.Main.Version != "" {
		i.Version = bi.Main.Version
	}
	if bi.GoVersion != "" {
		i.GoVersion = bi.GoVersion
	}
	dirty := false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			i.Commit = s.Value
		case "vcs.time":
			i.Date = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if dirty && i.Commit != Unknown {
		i.Commit += "-dirty"
	}
	return i
}

// String is the one line --version prints after "NAME version ".
func (i Info) String() string {
	return fmt.Sprintf("%s, commit %s, built %s, %s, %s", i.Version, i.Commit, i.Date, i.GoVersion, i.Platform)
}
