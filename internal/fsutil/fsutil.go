// Package fsutil holds the file-system steps that durability depends on,
// written once: the broker, its log and indexes, its certificates and the
// SDK's outbox share them. (Allocate, for memory-mapped files, is in
// allocate_*.go.)
package fsutil

import (
	"os"
	"path/filepath"
)

// WriteAtomic replaces path with data so that after a crash the file holds
// either its old content or all of data, never a mix: it writes a temporary
// file beside it, syncs it, renames it over path and syncs the directory.
// sync does each fsync; nil means (*os.File).Sync (tests pass a no-op to
// run fast where durability is not what they check).
func WriteAtomic(path string, data []byte, mode os.FileMode, sync func(*os.File) error) error {
	if sync == nil {
		sync = (*os.File).Sync
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	_, err = f.Write(data)
	if err == nil {
		err = sync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	return syncDir(filepath.Dir(path), sync)
}

// SyncDir makes the names created, renamed or removed in dir durable.
func SyncDir(dir string) error { return syncDir(dir, (*os.File).Sync) }

func syncDir(dir string, sync func(*os.File) error) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = sync(d)
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}
