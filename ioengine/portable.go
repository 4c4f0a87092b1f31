//go:build unix

package ioengine

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
)

// portableEngine is the backend that runs everywhere: one pwrite per op, in
// order, then one fdatasync per distinct file. It costs a syscall per op and
// per file, which the io_uring backend folds into one submit.
type portableEngine struct {
	logger *slog.Logger
	opener opener

	mu     sync.Mutex // one Flush at a time; guards syncs
	closed atomic.Bool
	syncs  []syncTarget // scratch, reused so Flush does not allocate
}

// syncTarget is one distinct file a Flush must fdatasync.
type syncTarget struct {
	fd   int
	file File
}

func newPortable(logger *slog.Logger) *portableEngine {
	return &portableEngine{logger: logger, opener: opener{logger: logger}, syncs: make([]syncTarget, 0, 8)}
}

func (e *portableEngine) Name() string { return BackendPortable }

func (e *portableEngine) Open(path string) (File, error) {
	if e.closed.Load() {
		return nil, fmt.Errorf("ioengine: open %s: %w", path, ErrClosed)
	}
	return e.opener.open(path)
}

// Flush implements Engine: pwrite each op in order, then fdatasync each
// distinct file once if sync is true. A short write is continued while the
// kernel's count keeps the remainder aligned, else it is ErrShortWrite.
func (e *portableEngine) Flush(ops []WriteOp, sync bool) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed.Load() {
		return fmt.Errorf("ioengine: flush: %w", ErrClosed)
	}
	if err := validate(ops); err != nil {
		return err
	}
	defer e.clearSyncs()
	for i := range ops {
		op := &ops[i]
		fd, direct, _ := target(op.File) // validated above
		if n, err := pwriteAll(fd, direct, op.Buf, op.Off); err != nil {
			return writeError(op.File.Name(), op.Off, n, len(op.Buf), err)
		}
		if sync {
			e.syncs = addSyncTarget(e.syncs, fd, op.File)
		}
	}
	for _, s := range e.syncs {
		if err := fdatasyncRetry(s.fd); err != nil {
			return fmt.Errorf("ioengine: fdatasync %s: %w", s.file.Name(), err)
		}
	}
	return nil
}

// clearSyncs drops the scratch's references so closed files can be collected.
func (e *portableEngine) clearSyncs() {
	clear(e.syncs)
	e.syncs = e.syncs[:0]
}

// Close marks the engine closed; files it opened stay usable until closed.
func (e *portableEngine) Remove(path string) error { return removeFile(path) }
func (e *portableEngine) SyncDir(dir string) error { return syncDir(dir) }

func (e *portableEngine) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed.Swap(true) {
		return fmt.Errorf("ioengine: close portable engine: %w", ErrClosed)
	}
	return nil
}

// addSyncTarget appends (fd, f) unless fd is already there. Flushes touch one
// or two files, so a linear scan beats a map and does not allocate.
func addSyncTarget(s []syncTarget, fd int, f File) []syncTarget {
	for i := range s {
		if s[i].fd == fd {
			return s
		}
	}
	return append(s, syncTarget{fd: fd, file: f})
}

// opener opens files for an engine and notes, once per engine, that the
// filesystem refused O_DIRECT.
type opener struct {
	logger *slog.Logger
	warned atomic.Bool
}

func (o *opener) open(path string) (File, error) {
	f, err := openFile(path)
	if err != nil {
		return nil, err
	}
	if !f.direct && oDirect != 0 && !o.warned.Swap(true) {
		o.logger.Warn("ioengine: O_DIRECT refused by the filesystem, using buffered writes (still fdatasync'ed)",
			"file", path)
	}
	return f, nil
}
