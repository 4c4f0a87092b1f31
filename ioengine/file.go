//go:build unix

package ioengine

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// DirectFile is the File returned by both backends' Open. It holds two
// descriptors on the same path: wfd, opened O_DIRECT|O_RDWR for the writes
// (the fd the io_uring backend submits on), and rfd, opened buffered
// O_RDONLY for ReadAt. Reads go through the page cache so that readers of
// recent data do not pay a device round trip, and they stay coherent with
// the direct writes because Linux invalidates the cached pages a direct
// write covers.
type DirectFile struct {
	name   string
	wfd    int
	rfd    int
	direct bool

	// mu is held shared by ReadAt and Size (callable from any goroutine)
	// and exclusively by Close, so a descriptor is never closed, and its
	// number reused by another open, under a running pread.
	mu     sync.RWMutex
	closed atomic.Bool
}

var _ File = (*DirectFile)(nil)

// openFile opens path for direct writes and buffered reads, creating it
// with mode 0644. When the filesystem refuses O_DIRECT (EINVAL: tmpfs on
// older kernels, some FUSE and network filesystems) the write descriptor is
// opened buffered instead: the files stay correct, because every sync is an
// fdatasync either way, only the page-cache bypass is lost. DirectIO
// reports which one happened.
func openFile(path string) (*DirectFile, error) {
	const flags = unix.O_RDWR | unix.O_CREAT | unix.O_CLOEXEC
	direct := oDirect != 0
	wfd, err := openRetry(path, flags|oDirect, 0o644)
	if errors.Is(err, unix.EINVAL) && direct {
		direct = false
		wfd, err = openRetry(path, flags, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("ioengine: open %s: %w", path, err)
	}
	rfd, err := openRetry(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		unix.Close(wfd)
		return nil, fmt.Errorf("ioengine: open %s for reading: %w", path, err)
	}
	return &DirectFile{name: path, wfd: wfd, rfd: rfd, direct: direct}, nil
}

func openRetry(path string, flags int, mode uint32) (int, error) {
	for {
		fd, err := unix.Open(path, flags, mode)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

// DirectIO reports whether writes really bypass the page cache (O_DIRECT),
// false when the filesystem refused it and the file fell back to buffered
// writes.
func (f *DirectFile) DirectIO() bool { return f.direct }

// Name returns the path the file was opened with.
func (f *DirectFile) Name() string { return f.name }

// Fd returns the write descriptor, or -1 once the file is closed so that a
// stale use fails with EBADF instead of hitting a reused descriptor.
func (f *DirectFile) Fd() int {
	if f.closed.Load() {
		return -1
	}
	return f.wfd
}

// ReadAt reads len(p) bytes at off through the page cache, with io.ReaderAt
// semantics: fewer bytes only with an error, io.EOF at the end of the file.
func (f *DirectFile) ReadAt(p []byte, off int64) (int, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed.Load() {
		return 0, f.closedErr("read")
	}
	if off < 0 {
		return 0, fmt.Errorf("ioengine: read %s: negative offset %d", f.name, off)
	}
	n := 0
	for n < len(p) {
		m, err := unix.Pread(f.rfd, p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, fmt.Errorf("ioengine: read %s at offset %d: %w", f.name, off+int64(n), err)
		}
		if m == 0 {
			return n, io.EOF
		}
		n += m
	}
	return n, nil
}

// WriteAt is one direct write of p at off, without sync. p's address and
// length and off must be multiples of Alignment (ErrUnaligned otherwise,
// with nothing written).
func (f *DirectFile) WriteAt(p []byte, off int64) (int, error) {
	if f.closed.Load() {
		return 0, f.closedErr("write")
	}
	if err := checkAligned(f, p, off); err != nil {
		return 0, err
	}
	n, err := pwriteAll(f.wfd, f.direct, p, off)
	if err != nil {
		return n, writeError(f.name, off, n, len(p), err)
	}
	return n, nil
}

// Sync is fdatasync of the file.
func (f *DirectFile) Sync() error {
	if f.closed.Load() {
		return f.closedErr("fdatasync")
	}
	if err := fdatasyncRetry(f.wfd); err != nil {
		return fmt.Errorf("ioengine: fdatasync %s: %w", f.name, err)
	}
	return nil
}

// Allocate reserves [0, size) on disk and extends the file to size if it is
// shorter. Where fallocate is unsupported it only extends the size, which
// keeps the semantics but not the reservation.
func (f *DirectFile) Allocate(size int64) error {
	if f.closed.Load() {
		return f.closedErr("allocate")
	}
	err := fallocate(f.wfd, size)
	for err == unix.EINTR {
		err = fallocate(f.wfd, size)
	}
	if errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, unix.ENOSYS) || errors.Is(err, errors.ErrUnsupported) {
		var cur int64
		if cur, err = f.Size(); err == nil && cur < size {
			err = unix.Ftruncate(f.wfd, size)
		}
	}
	if err != nil {
		return fmt.Errorf("ioengine: allocate %s to %d bytes: %w", f.name, size, err)
	}
	return nil
}

// Truncate sets the file size (ftruncate).
func (f *DirectFile) Truncate(size int64) error {
	if f.closed.Load() {
		return f.closedErr("truncate")
	}
	if err := unix.Ftruncate(f.wfd, size); err != nil {
		return fmt.Errorf("ioengine: truncate %s to %d bytes: %w", f.name, size, err)
	}
	return nil
}

// Size returns the current file size (fstat).
func (f *DirectFile) Size() (int64, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.closed.Load() {
		return 0, f.closedErr("stat")
	}
	var st unix.Stat_t
	if err := unix.Fstat(f.rfd, &st); err != nil {
		return 0, fmt.Errorf("ioengine: stat %s: %w", f.name, err)
	}
	return st.Size, nil
}

// Close closes both descriptors. It does not sync: durability is the
// business of Sync and Flush. A second Close returns ErrClosed.
func (f *DirectFile) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed.Swap(true) {
		return f.closedErr("close")
	}
	err := unix.Close(f.wfd)
	if rerr := unix.Close(f.rfd); err == nil {
		err = rerr
	}
	if err != nil {
		return fmt.Errorf("ioengine: close %s: %w", f.name, err)
	}
	return nil
}

func (f *DirectFile) closedErr(op string) error {
	return fmt.Errorf("ioengine: %s %s: %w", op, f.name, ErrClosed)
}

// pwriteAll writes p at off with pwrite. After a short write it writes the
// remainder, but only when the kernel accepted a positive count that keeps
// the remainder aligned (always true for a buffered descriptor); a zero or
// misaligned count returns ErrShortWrite, since an O_DIRECT follow-up would
// only fail with EINVAL. It returns the bytes written.
func pwriteAll(fd int, direct bool, p []byte, off int64) (int, error) {
	n := 0
	for n < len(p) {
		m, err := unix.Pwrite(fd, p[n:], off+int64(n))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return n, err
		}
		if m > 0 {
			n += m
		}
		if n < len(p) && (m <= 0 || (direct && m%Alignment != 0)) {
			return n, ErrShortWrite
		}
	}
	return n, nil
}

func fdatasyncRetry(fd int) error {
	for {
		if err := fdatasync(fd); err != unix.EINTR {
			return err
		}
	}
}

// writeError is the error of a failed write of want bytes at off after done
// bytes made it: it names the file and the offset where the failure hit.
func writeError(name string, off int64, done, want int, err error) error {
	if errors.Is(err, ErrShortWrite) {
		return fmt.Errorf("ioengine: write %s at offset %d: %w (%d of %d bytes written)", name, off, err, done, want)
	}
	return fmt.Errorf("ioengine: write %s at offset %d: %w", name, off+int64(done), err)
}

// target resolves the descriptor a WriteOp goes to, and whether it is
// O_DIRECT (which decides if a short write may be continued). Foreign File
// implementations are trusted for their Fd and assumed direct.
func target(f File) (fd int, direct bool, err error) {
	switch v := f.(type) {
	case nil:
		return -1, false, errors.New("ioengine: write op without a file")
	case *DirectFile:
		if v.closed.Load() {
			return -1, false, v.closedErr("write")
		}
		return v.wfd, v.direct, nil
	default:
		return v.Fd(), true, nil
	}
}

// validate checks every op of a Flush before any I/O starts, so that a
// rejected batch (unaligned, closed file) has written nothing.
func validate(ops []WriteOp) error {
	for i := range ops {
		op := &ops[i]
		if _, _, err := target(op.File); err != nil {
			return err
		}
		if err := checkAligned(op.File, op.Buf, op.Off); err != nil {
			return err
		}
	}
	return nil
}
