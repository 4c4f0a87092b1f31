package ioengine

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// osFile is the File of both backends: an O_DIRECT descriptor for writes and
// a buffered one for reads. Linux keeps them coherent: a direct write
// invalidates the page-cache pages it covers.
type osFile struct {
	name   string
	w      *os.File // O_DIRECT (or buffered where the file system refuses it)
	r      *os.File
	direct bool
	closed atomic.Bool
}

func openFile(path string) (*osFile, error) {
	direct := true
	w, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|unix.O_DIRECT, 0o644)
	if errors.Is(err, unix.EINVAL) {
		// tmpfs and some others refuse O_DIRECT. Writes stay correct: they go
		// through the page cache and fdatasync still makes them durable.
		direct = false
		w, err = os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	}
	if err != nil {
		return nil, fmt.Errorf("ioengine: open %s: %w", path, err)
	}
	r, err := os.Open(path)
	if err != nil {
		w.Close()
		return nil, fmt.Errorf("ioengine: open %s: %w", path, err)
	}
	return &osFile{name: path, w: w, r: r, direct: direct}, nil
}

// DirectIO reports whether writes bypass the page cache.
func (f *osFile) DirectIO() bool { return f.direct }

func (f *osFile) Name() string { return f.name }
func (f *osFile) Fd() int      { return int(f.w.Fd()) }

func (f *osFile) ReadAt(p []byte, off int64) (int, error) {
	if f.closed.Load() {
		return 0, ErrClosed
	}
	return f.r.ReadAt(p, off)
}

// WriteAt is one aligned pwrite, completed if the kernel writes it short.
func (f *osFile) WriteAt(p []byte, off int64) (int, error) {
	if f.closed.Load() {
		return 0, ErrClosed
	}
	if err := checkOp(p, off); err != nil {
		return 0, fmt.Errorf("%w: %s at %d, %d bytes", err, f.name, off, len(p))
	}
	done := 0
	for done < len(p) {
		n, err := unix.Pwrite(f.Fd(), p[done:], off+int64(done))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return done, fmt.Errorf("ioengine: write %s at %d: %w", f.name, off+int64(done), err)
		}
		if n == 0 {
			return done, fmt.Errorf("%w: %s at %d", ErrShortWrite, f.name, off+int64(done))
		}
		done += n
	}
	return done, nil
}

func (f *osFile) Sync() error {
	if f.closed.Load() {
		return ErrClosed
	}
	for {
		err := unix.Fdatasync(f.Fd())
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return fmt.Errorf("ioengine: fdatasync %s: %w", f.name, err)
		}
		return nil
	}
}

func (f *osFile) Allocate(size int64) error {
	if f.closed.Load() {
		return ErrClosed
	}
	err := unix.Fallocate(f.Fd(), 0, 0, size)
	if errors.Is(err, unix.EOPNOTSUPP) {
		return f.w.Truncate(size) // sparse, but the right size
	}
	if err != nil {
		return fmt.Errorf("ioengine: fallocate %s: %w", f.name, err)
	}
	return nil
}

func (f *osFile) Truncate(size int64) error {
	if f.closed.Load() {
		return ErrClosed
	}
	return f.w.Truncate(size)
}

func (f *osFile) Size() (int64, error) {
	if f.closed.Load() {
		return 0, ErrClosed
	}
	fi, err := f.w.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (f *osFile) Close() error {
	if f.closed.Swap(true) {
		return ErrClosed
	}
	err := f.w.Close()
	if rerr := f.r.Close(); err == nil {
		err = rerr
	}
	return err
}
