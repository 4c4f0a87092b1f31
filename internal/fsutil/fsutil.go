// Package fsutil holds the file-system steps that durability depends on,
// written once: the broker, its log and indexes, its certificates and the
// SDK's outbox share them. Everything that must survive a crash goes
// through an FS, so that tests can swap in a CrashFS and cut the power
// (see crash.go). (Allocate, for preallocated files, is in allocate_*.go.)
package fsutil

import (
	"errors"
	"io"
	"os"
	"path/filepath"
)

// File is an open file: what the durable paths use of *os.File.
type File interface {
	io.ReaderAt
	io.WriterAt
	io.Writer
	Name() string
	Sync() error
	Truncate(size int64) error
	Stat() (os.FileInfo, error)
	Fd() uintptr
	Close() error
}

// FS is the file-system calls whose effects must survive a crash (reads
// of directories are here too, so that a CrashFS sees the names it made).
type FS interface {
	OpenFile(name string, flag int, perm os.FileMode) (File, error)
	Rename(oldpath, newpath string) error
	Remove(name string) error
	RemoveAll(path string) error
	MkdirAll(path string, perm os.FileMode) error
	ReadDir(name string) ([]os.DirEntry, error)
	// SyncDir makes the names created, renamed or removed in dir durable.
	SyncDir(dir string) error
}

// OS is the real file system.
var OS FS = osFS{}

type osFS struct{}

func (osFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err // not a typed nil in the interface
	}
	return f, nil
}
func (osFS) Rename(o, n string) error                     { return os.Rename(o, n) }
func (osFS) Remove(name string) error                     { return os.Remove(name) }
func (osFS) RemoveAll(path string) error                  { return os.RemoveAll(path) }
func (osFS) MkdirAll(path string, perm os.FileMode) error { return os.MkdirAll(path, perm) }
func (osFS) ReadDir(name string) ([]os.DirEntry, error)   { return os.ReadDir(name) }
func (osFS) SyncDir(dir string) error                     { return SyncDir(dir) }

// ReadFile reads the whole file at name through fs.
func ReadFile(fs FS, name string) ([]byte, error) {
	f, err := fs.OpenFile(name, os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	b := make([]byte, fi.Size())
	n, err := f.ReadAt(b, 0)
	if err == io.EOF {
		err = nil
	}
	return b[:n], err
}

// WriteAtomic replaces path with data so that after a crash the file holds
// either its old content or all of data, never a mix: it writes a temporary
// file beside it, syncs it, renames it over path and syncs the directory.
func WriteAtomic(fs FS, path string, data []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	f, err := fs.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = fs.Rename(tmp, path)
	}
	if err != nil {
		fs.Remove(tmp)
		return err
	}
	return fs.SyncDir(filepath.Dir(path))
}

// SyncDir makes the names created, renamed or removed in dir durable
// (nothing to do where !CanSyncDir).
func SyncDir(dir string) error {
	if !CanSyncDir {
		return nil
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// WithSync returns fs with every fsync (of a file or a directory) done by
// sync instead: tests skip them to run fast where durability is not what
// they check, or fail them.
func WithSync(fs FS, sync func(File) error) FS { return syncFS{fs, sync} }

type syncFS struct {
	FS
	sync func(File) error
}

type syncFile struct {
	File
	sync func(File) error
}

func (s *syncFile) Sync() error { return s.sync(s.File) }

func (s syncFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	f, err := s.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &syncFile{f, s.sync}, nil
}

func (s syncFS) SyncDir(dir string) error {
	if !CanSyncDir {
		return nil
	}
	d, err := s.FS.OpenFile(dir, os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	err = s.sync(d)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

// MkdirAll creates path and any missing parents, and makes each new name
// durable (a sync of the directory that holds it): a directory a power
// cut can take back would take every file in it along, synced or not.
func MkdirAll(fs FS, path string, perm os.FileMode) error {
	var missing []string
	for p := filepath.Clean(path); ; p = filepath.Dir(p) {
		if _, err := os.Stat(p); err == nil || filepath.Dir(p) == p {
			break
		}
		missing = append(missing, p)
	}
	if len(missing) == 0 {
		return nil
	}
	if err := fs.MkdirAll(path, perm); err != nil {
		return err
	}
	for i := len(missing) - 1; i >= 0; i-- {
		if err := fs.SyncDir(filepath.Dir(missing[i])); err != nil {
			return err
		}
	}
	return nil
}

// SyncAll makes everything written to the file system that holds path
// durable in one call where fs can (the real one on Linux: syncfs(2)). It
// returns false, and does nothing, where fs cannot: the caller fsyncs each
// file. (A CrashFS and a WithSync wrapper cannot, so crash and fault tests
// see every fsync.)
func SyncAll(fs FS, path string) (bool, error) {
	s, ok := fs.(interface{ SyncFS(string) error })
	if !ok {
		return false, nil
	}
	err := s.SyncFS(path)
	if errors.Is(err, errors.ErrUnsupported) {
		return false, nil
	}
	return true, err
}
