package ioengine

import (
	"errors"
	"os"

	"github.com/quivermq/quiver/internal/fsutil"
)

// Alignment is the unit of direct I/O: buffer addresses, lengths and file
// offsets passed to File.WriteAt and Engine.Flush must be multiples of it.
const Alignment = 4096

// Sentinel errors. Callers test them with errors.Is.
var (
	// ErrUnaligned is returned for a direct write whose buffer address, length
	// or offset is not a multiple of Alignment.
	ErrUnaligned = errors.New("ioengine: unaligned direct I/O")
	// ErrShortWrite is returned when the kernel wrote fewer bytes than asked.
	ErrShortWrite = errors.New("ioengine: short write")
	// ErrClosed is returned by an engine or file used after Close.
	ErrClosed = errors.New("ioengine: closed")
	// ErrUnavailable is returned by New when the asked backend cannot run
	// on this kernel (io_uring disabled by sysctl or seccomp, or missing).
	ErrUnavailable = errors.New("ioengine: backend unavailable")
	// ErrInjected is the error the fault-injection seam returns by default.
	ErrInjected = errors.New("ioengine: injected fault")
)

// WriteOp is one aligned write of Buf at Off in File.
type WriteOp struct {
	File File
	Buf  []byte // aligned (see AlignedBuffer); owned by the caller, not retained after Flush returns
	Off  int64  // multiple of Alignment
}

// Engine does the log's disk work. It is used by one goroutine at a time (the
// log's flusher owns it); implementations may still guard themselves with a
// mutex, but callers must not rely on concurrent Flush calls being fast.
type Engine interface {
	// Name is "io_uring" or "portable" (or a wrapper's name).
	Name() string
	// Open opens (creating if needed, mode 0644) a file for direct writes
	// and buffered reads.
	Open(path string) (File, error)
	// Flush performs every write in ops, in order, and then, when sync is
	// true, makes all of them durable (fdatasync of every file written).
	// The sync is ordered after the writes it covers. Flush returns only when
	// all of it is done. After an error nothing about ops is known: the
	// caller must treat the files as failed (see log's fail-stop rule).
	Flush(ops []WriteOp, sync bool) error
	// Close releases the engine (the ring). Files stay usable for reads
	// until they are closed themselves.
	Close() error
	// Remove removes the file at path; SyncDir makes the names created and
	// removed in dir durable. (Through the engine so that a crash test can
	// lose a name the way a power cut does: see Faulty.PowerCut.)
	Remove(path string) error
	SyncDir(dir string) error
}

// removeFile and syncDir are the backends' Remove and SyncDir.
func removeFile(path string) error { return os.Remove(path) }
func syncDir(dir string) error     { return fsutil.SyncDir(dir) }

// File is one open file. ReadAt and Size may be called from any goroutine;
// writes, Allocate, Truncate and Sync only by the engine's owner.
type File interface {
	// ReadAt reads through the page cache (no alignment needed). A direct
	// write invalidates the cached pages it covers, so reads see it.
	ReadAt(p []byte, off int64) (int, error)
	// WriteAt is a single direct write (aligned), without sync.
	WriteAt(p []byte, off int64) (int, error)
	// Sync is fdatasync.
	Sync() error
	// Allocate reserves [0, size) on disk (fallocate, keep size extended).
	Allocate(size int64) error
	// Truncate sets the file size.
	Truncate(size int64) error
	// Size returns the current file size.
	Size() (int64, error)
	// Name is the path the file was opened with.
	Name() string
	// Fd is the descriptor used for direct writes.
	Fd() int
	Close() error
}
