// Package release holds the test of the release configuration
// (../../.goreleaser.yaml), which `make test` runs: the file loads with
// goreleaser's own strict loader (an unknown or misspelt field fails), and
// the archives it describes are the ones Quiver promises, with what each
// binary needs to build and to say which build it is. It also replays the
// README's `go install ...@latest` of quiver and quiverd against a module
// proxy on disk that serves this checkout's HEAD as a release.
//
// It is a module of its own so that neither the broker nor the SDK depends
// on goreleaser; it imports only goreleaser's config package (seconds to
// build, where the goreleaser binary takes minutes: `make release-check`
// runs that one's full `goreleaser check`, `make release-snapshot` builds
// the archives).
package release
