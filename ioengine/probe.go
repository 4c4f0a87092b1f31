//go:build unix

package ioengine

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// Backend names, as accepted by New and returned by Engine.Name.
const (
	BackendAuto     = "auto"
	BackendIOUring  = "io_uring"
	BackendPortable = "portable"
)

// EnvBackend names the environment variable that overrides the choice New
// makes for BackendAuto: "io_uring" or "portable". It lets a test run or a
// deployment pin a backend without a config change. It never overrides an
// explicit kind.
const EnvBackend = "QUIVER_IOENGINE"

var (
	probeOnce sync.Once
	probeErr  error
)

// uringProbe runs the io_uring probe once per process: the answer does not
// change while the process lives, and Backends is called by every test.
func uringProbe() error {
	probeOnce.Do(func() { probeErr = probeIOUring() })
	return probeErr
}

// Backends returns the backends usable on this machine: "portable" always,
// then "io_uring" if the kernel lets this process use it. Test suites and
// benchmarks iterate over it. It does not look at EnvBackend.
func Backends() []string {
	b := []string{BackendPortable}
	if uringProbe() == nil {
		b = append(b, BackendIOUring)
	}
	return b
}

// New returns the engine of the given kind:
//
//   - "io_uring": the io_uring backend, or an error wrapping ErrUnavailable
//     when the kernel does not allow it here.
//   - "portable": pwrite + fdatasync, works everywhere.
//   - "auto" (or ""): EnvBackend if set, else io_uring when the probe
//     succeeds, else portable. A failed probe is normal (seccomp profiles of
//     container runtimes, kernel.io_uring_disabled, old kernels) and not an
//     error. An EnvBackend value naming an unavailable backend is an error,
//     as for an explicit kind.
//
// New logs exactly one Info line ("ioengine selected") with the backend that
// runs and why. A nil logger means slog.Default().
func New(kind string, logger *slog.Logger) (Engine, error) {
	if logger == nil {
		logger = slog.Default()
	}
	var reason string
	switch kind {
	case BackendAuto, "":
		if env := os.Getenv(EnvBackend); env != "" {
			if env != BackendIOUring && env != BackendPortable {
				return nil, fmt.Errorf("ioengine: %s=%q: unknown backend (want %s or %s)",
					EnvBackend, env, BackendIOUring, BackendPortable)
			}
			kind, reason = env, EnvBackend+"="+env
			break
		}
		if err := uringProbe(); err != nil {
			kind, reason = BackendPortable, err.Error()
			break
		}
		e, err := newIOUring(defaultRingEntries, logger)
		if err != nil {
			// The probe ring was tiny; the real one can still hit a
			// memlock limit. Auto means run anyway.
			return selected(logger, newPortable(logger), err.Error()), nil
		}
		return selected(logger, e, "io_uring available"), nil
	case BackendIOUring, BackendPortable:
		reason = "requested"
	default:
		return nil, fmt.Errorf("ioengine: unknown backend %q (want %s, %s or %s)",
			kind, BackendAuto, BackendIOUring, BackendPortable)
	}
	if kind == BackendPortable {
		return selected(logger, newPortable(logger), reason), nil
	}
	if err := uringProbe(); err != nil {
		return nil, fmt.Errorf("%w: io_uring: %w", ErrUnavailable, err)
	}
	e, err := newIOUring(defaultRingEntries, logger)
	if err != nil {
		return nil, err
	}
	return selected(logger, e, reason), nil
}

func selected(logger *slog.Logger, e Engine, reason string) Engine {
	logger.Info("ioengine selected", "backend", e.Name(), "reason", reason)
	return e
}
