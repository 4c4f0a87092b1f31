package ioengine

import (
	"bytes"
	"errors"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// forEachBackend runs fn once per backend this machine has.
func forEachBackend(t *testing.T, fn func(t *testing.T, backend string)) {
	t.Helper()
	for _, b := range Backends() {
		t.Run(b, func(t *testing.T) { fn(t, b) })
	}
}

// newEngine returns an engine of the backend, closed at the end of the test.
func newEngine(t testing.TB, backend string) Engine {
	t.Helper()
	e, err := New(backend, quiet)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// newRingEngine is newEngine with an io_uring ring of the given size, so
// that tests can overflow it; other backends have no ring.
func newRingEngine(t testing.TB, backend string, entries int) Engine {
	t.Helper()
	if backend != BackendIOUring {
		return newEngine(t, backend)
	}
	u, err := newIOUring(entries, quiet)
	if err != nil {
		t.Fatal(err)
	}
	var e Engine = u
	t.Cleanup(func() { e.Close() })
	return e
}

func openT(t testing.TB, e Engine, name string) File {
	t.Helper()
	f, err := e.Open(name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

func tempPath(t testing.TB, name string) string { return filepath.Join(t.TempDir(), name) }

// page returns an aligned buffer of n pages, each filled with a byte that
// depends on seed and the page index, so misplaced pages are noticed.
func page(n int, seed byte) []byte {
	b := AlignedBuffer(n * Alignment)
	for i := range b {
		b[i] = seed + byte(i/Alignment)*7 + byte(i%251)
	}
	return b
}

// readFile reads a file from disk independently of the engine.
func readFile(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(name)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func mustEqual(t testing.TB, what string, got, want []byte) {
	t.Helper()
	if !bytes.Equal(got, want) {
		i := 0
		for i < len(got) && i < len(want) && got[i] == want[i] {
			i++
		}
		t.Fatalf("%s: %d bytes, want %d; first difference at byte %d", what, len(got), len(want), i)
	}
}

func mustIs(t testing.TB, what string, err, target error) {
	t.Helper()
	if !errors.Is(err, target) {
		t.Fatalf("%s: error %v, want %v", what, err, target)
	}
}
