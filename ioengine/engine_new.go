package ioengine

import (
	"fmt"
	"log/slog"
	"os"
	"sync"
)

// EnvBackend, when set to "io_uring" or "portable", is the backend that New
// picks for kind "auto" (tests and benchmarks use it to pin a backend).
const EnvBackend = "QUIVER_IOENGINE"

var probe struct {
	once sync.Once
	err  error
}

// probeUring reports why io_uring cannot run here, or nil if it can.
// EPERM (seccomp, kernel.io_uring_disabled=2), ENOSYS (old kernel) and
// ENOMEM (locked-memory limit) are normal answers, not failures.
func probeUring() error {
	probe.once.Do(func() {
		u, err := NewUring(8)
		if err != nil {
			probe.err = err
			return
		}
		u.Close()
	})
	return probe.err
}

// Backends lists the backends that run on this machine: "portable" always,
// "io_uring" first when the kernel allows it. Test suites run on each.
func Backends() []string {
	if probeUring() == nil {
		return []string{"io_uring", "portable"}
	}
	return []string{"portable"}
}

// New returns the engine of the given kind: "auto" (or ""), "io_uring" or
// "portable". For "auto" it logs exactly one line saying which backend runs
// and why.
func New(kind string, logger *slog.Logger) (Engine, error) {
	if logger == nil {
		logger = slog.Default()
	}
	switch kind {
	case "io_uring":
		return NewUring(0)
	case "portable":
		return NewPortable(), nil
	case "", "auto":
	default:
		return nil, fmt.Errorf("ioengine: unknown backend %q (want auto, io_uring or portable)", kind)
	}
	if env := os.Getenv(EnvBackend); env != "" {
		e, err := New(env, logger)
		if err == nil {
			logger.Info("ioengine selected", "backend", e.Name(), "reason", EnvBackend+" is set")
		}
		return e, err
	}
	if err := probeUring(); err != nil {
		logger.Info("ioengine selected", "backend", "portable", "reason", err.Error())
		return NewPortable(), nil
	}
	u, err := NewUring(0)
	if err != nil {
		logger.Info("ioengine selected", "backend", "portable", "reason", err.Error())
		return NewPortable(), nil
	}
	logger.Info("ioengine selected", "backend", "io_uring", "reason", "io_uring_setup succeeded")
	return u, nil
}
