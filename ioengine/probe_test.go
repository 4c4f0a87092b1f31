package ioengine

import (
	"bytes"
	"log/slog"
	"slices"
	"strings"
	"testing"
)

func TestBackends(t *testing.T) {
	b := Backends()
	if !slices.Contains(b, BackendPortable) {
		t.Fatalf("Backends() = %v lacks portable", b)
	}
	t.Logf("backends here: %v (io_uring probe: %v)", b, uringProbe())
}

// newLogged calls New and returns the engine and what it logged.
func newLogged(t *testing.T, kind string) (Engine, string, error) {
	t.Helper()
	var out bytes.Buffer
	e, err := New(kind, slog.New(slog.NewTextHandler(&out, nil)))
	if e != nil {
		t.Cleanup(func() { e.Close() })
	}
	return e, out.String(), err
}

func TestNew(t *testing.T) {
	t.Setenv(EnvBackend, "")
	uring := slices.Contains(Backends(), BackendIOUring)

	e, logged, err := newLogged(t, BackendAuto)
	if err != nil {
		t.Fatal(err)
	}
	want := BackendPortable
	if uring {
		want = BackendIOUring
	}
	if e.Name() != want {
		t.Fatalf("auto picked %s, want %s", e.Name(), want)
	}
	if lines := strings.Count(logged, "\n"); lines != 1 ||
		!strings.Contains(logged, `msg="ioengine selected"`) || !strings.Contains(logged, "backend="+want) ||
		!strings.Contains(logged, "reason=") {
		t.Fatalf("auto logged %q, want one line naming the backend and the reason", logged)
	}

	e, _, err = newLogged(t, BackendPortable)
	if err != nil || e.Name() != BackendPortable {
		t.Fatalf("New(portable): %v", err)
	}
	e, _, err = newLogged(t, BackendIOUring)
	if uring && (err != nil || e.Name() != BackendIOUring) {
		t.Fatalf("New(io_uring): %v", err)
	}
	if !uring {
		mustIs(t, "New(io_uring) where unavailable", err, ErrUnavailable)
	}

	_, _, err = newLogged(t, "spdk")
	if err == nil || !strings.Contains(err.Error(), `unknown backend "spdk"`) {
		t.Fatalf("New(spdk): %v", err)
	}
}

func TestNewEnvOverride(t *testing.T) {
	t.Setenv(EnvBackend, BackendPortable)
	e, logged, err := newLogged(t, BackendAuto)
	if err != nil || e.Name() != BackendPortable || !strings.Contains(logged, EnvBackend+"=portable") {
		t.Fatalf("auto with %s=portable: %v, %q", EnvBackend, err, logged)
	}
	// The override is for auto only.
	if slices.Contains(Backends(), BackendIOUring) {
		if e, _, err := newLogged(t, BackendIOUring); err != nil || e.Name() != BackendIOUring {
			t.Fatalf("explicit io_uring with %s=portable: %v", EnvBackend, err)
		}
	}
	t.Setenv(EnvBackend, "fast")
	if _, _, err := newLogged(t, BackendAuto); err == nil || !strings.Contains(err.Error(), EnvBackend) {
		t.Fatalf("auto with %s=fast: %v", EnvBackend, err)
	}
}
