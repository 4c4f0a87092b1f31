package fsutil

import (
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
)

// SectorSize is the unit a torn write keeps: a disk writes whole sectors, so
// a power cut mid-write leaves a prefix of whole 512-byte sectors.
const SectorSize = 512

// ErrPowerCut is what every call returns after CrashFS.PowerCut.
var ErrPowerCut = errors.New("fsutil: power cut (simulated)")

// CrashFS is an FS, for tests, that remembers what a power failure could
// still undo, in the style of pebble's crashable vfs and bbolt's
// power-failure tests: every write since its file's last Sync (with the
// bytes it replaced), and every name created, renamed or removed since its
// directory's last SyncDir. PowerCut then undoes some of it at random, on
// the real files, and the test reopens them. The I/O engine's fault
// wrapper reports its own writes, syncs and names here (Track*), so that
// the log's segments and the files written through this FS lose power
// together.
//
// What is modelled: an unsynced write is kept, dropped or torn at a
// sector boundary, each one independently (a disk's cache reorders
// them); the namespace changes of one directory are journaled in order,
// so a power cut keeps a prefix of those made since the directory's last
// sync (as ext4's and xfs's journals do). What is not: a truncation is
// taken as durable at once (pending writes past it are cut off), and file
// sizes follow the writes (a dropped write that extended a file leaves
// zeros, the harsher of the two outcomes).
type CrashFS struct {
	inner   FS
	crashed atomic.Bool

	mu    sync.Mutex
	seq   int
	files map[string][]pendingWrite // by current name: writes since its last sync
	ops   map[string][]nsOp         // by directory: name changes since its last sync
}

type pendingWrite struct {
	off      int64
	old, new []byte
}

type nsKind int

const (
	nsCreate nsKind = iota
	nsRemove
	nsRename
)

type nsOp struct {
	seq  int
	kind nsKind
	name string // created or removed; for a rename the new name
	from string // rename: the old name
	// removed: the file's content and unsynced writes (it comes back with
	// them), or a removed tree; rename: the file the new name replaced.
	data   []byte
	writes []pendingWrite
	tree   map[string][]byte // relative path -> content; "" suffix "/" marks a directory
	had    bool              // rename: the new name existed before
}

// CutStats says what a power cut did.
type CutStats struct {
	Kept, Dropped, Torn int
	NamesLost           int // name changes (creations, renames, removals) undone
}

// Add adds o's counts to s.
func (s *CutStats) Add(o CutStats) {
	s.Kept += o.Kept
	s.Dropped += o.Dropped
	s.Torn += o.Torn
	s.NamesLost += o.NamesLost
}

// NewCrashFS wraps inner (normally OS).
func NewCrashFS(inner FS) *CrashFS {
	return &CrashFS{inner: inner, files: map[string][]pendingWrite{}, ops: map[string][]nsOp{}}
}

func (c *CrashFS) dead(op, name string) error {
	return &os.PathError{Op: op, Path: name, Err: ErrPowerCut}
}

func exists(path string) bool {
	_, err := os.Lstat(path)
	return err == nil
}

// addOp journals a name change in its directory. (c.mu held)
func (c *CrashFS) addOp(op nsOp) {
	c.seq++
	op.seq = c.seq
	dir := filepath.Dir(op.name)
	c.ops[dir] = append(c.ops[dir], op)
}

// TrackCreate records that path is about to be created if it does not
// exist yet (the engine's Open).
func (c *CrashFS) TrackCreate(path string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !exists(path) {
		c.addOp(nsOp{kind: nsCreate, name: path})
	}
}

// TrackWrite records a write about to be made at off in the file at name,
// with the bytes it replaces.
func (c *CrashFS) TrackWrite(name string, p []byte, off int64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.trackWrite(name, p, off)
}

func (c *CrashFS) trackWrite(name string, p []byte, off int64) error {
	if len(p) == 0 {
		return nil
	}
	old := make([]byte, len(p))
	r, err := os.Open(name)
	if err != nil {
		return err
	}
	_, err = r.ReadAt(old, off) // past the end reads as zeros
	r.Close()
	if err != nil && err != io.EOF {
		return err
	}
	c.files[name] = append(c.files[name], pendingWrite{off: off, old: old, new: append([]byte(nil), p...)})
	return nil
}

// TrackSync records that the file at name was synced.
func (c *CrashFS) TrackSync(name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.files, name)
}

// Crashed reports whether PowerCut has happened.
func (c *CrashFS) Crashed() bool { return c.crashed.Load() }

// OpenFile implements FS.
func (c *CrashFS) OpenFile(name string, flag int, perm os.FileMode) (File, error) {
	if c.crashed.Load() {
		return nil, c.dead("open", name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	isNew := flag&os.O_CREATE != 0 && !exists(name)
	f, err := c.inner.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	if isNew {
		c.addOp(nsOp{kind: nsCreate, name: name})
	}
	if flag&os.O_TRUNC != 0 {
		c.truncated(name, 0)
	}
	cf := &crashFile{File: f, c: c, name: name}
	if flag&os.O_APPEND != 0 {
		cf.pos = -1
	}
	return cf, nil
}

// truncated cuts off pending writes at or past size. (c.mu held)
func (c *CrashFS) truncated(name string, size int64) {
	ws := c.files[name][:0]
	for _, w := range c.files[name] {
		if w.off >= size {
			continue
		}
		if end := w.off + int64(len(w.new)); end > size {
			w.old, w.new = w.old[:size-w.off], w.new[:size-w.off]
		}
		ws = append(ws, w)
	}
	c.files[name] = ws
}

// Rename implements FS.
func (c *CrashFS) Rename(oldpath, newpath string) error {
	if c.crashed.Load() {
		return c.dead("rename", oldpath)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	op := nsOp{kind: nsRename, name: newpath, from: oldpath}
	if data, err := os.ReadFile(newpath); err == nil {
		op.had, op.data, op.writes = true, data, c.files[newpath]
	}
	if err := c.inner.Rename(oldpath, newpath); err != nil {
		return err
	}
	c.addOp(op)
	c.files[newpath] = c.files[oldpath]
	delete(c.files, oldpath)
	return nil
}

// Remove implements FS (files and empty directories).
func (c *CrashFS) Remove(name string) error {
	if c.crashed.Load() {
		return c.dead("remove", name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removeTree(name, false)
}

// RemoveAll implements FS.
func (c *CrashFS) RemoveAll(path string) error {
	if c.crashed.Load() {
		return c.dead("remove", path)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.removeTree(path, true)
}

// removeTree removes path (a tree when all), journaling what comes back
// if the removal is undone. (c.mu held)
func (c *CrashFS) removeTree(path string, all bool) error {
	fi, err := os.Lstat(path)
	if err != nil {
		if all && os.IsNotExist(err) {
			return nil
		}
		return c.remove(path, all)
	}
	op := nsOp{kind: nsRemove, name: path}
	if fi.IsDir() {
		op.tree = map[string][]byte{}
		err = filepath.WalkDir(path, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			rel, _ := filepath.Rel(path, p)
			if d.IsDir() {
				op.tree[rel+"/"] = nil
				return nil
			}
			b, err := os.ReadFile(p)
			op.tree[rel] = b
			return err
		})
	} else {
		op.data, err = os.ReadFile(path)
		op.writes = c.files[path]
	}
	if err != nil {
		return err
	}
	if err := c.remove(path, all); err != nil {
		return err
	}
	for name := range c.files {
		if name == path || strings.HasPrefix(name, path+string(filepath.Separator)) {
			delete(c.files, name)
		}
	}
	c.addOp(op)
	return nil
}

func (c *CrashFS) remove(path string, all bool) error {
	if all {
		return c.inner.RemoveAll(path)
	}
	return c.inner.Remove(path)
}

// MkdirAll implements FS: each directory it creates is a new name in its
// parent.
func (c *CrashFS) MkdirAll(path string, perm os.FileMode) error {
	if c.crashed.Load() {
		return c.dead("mkdir", path)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	var missing []string
	for p := filepath.Clean(path); !exists(p); p = filepath.Dir(p) {
		missing = append(missing, p)
		if filepath.Dir(p) == p {
			break
		}
	}
	if err := c.inner.MkdirAll(path, perm); err != nil {
		return err
	}
	for i := len(missing) - 1; i >= 0; i-- {
		c.addOp(nsOp{kind: nsCreate, name: missing[i]})
	}
	return nil
}

// ReadDir implements FS.
func (c *CrashFS) ReadDir(name string) ([]os.DirEntry, error) {
	if c.crashed.Load() {
		return nil, c.dead("readdir", name)
	}
	return c.inner.ReadDir(name)
}

// SyncDir implements FS: the name changes in dir become durable.
func (c *CrashFS) SyncDir(dir string) error {
	if c.crashed.Load() {
		return c.dead("sync directory", dir)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.inner.SyncDir(dir); err != nil {
		return err
	}
	delete(c.ops, filepath.Clean(dir))
	return nil
}

// PowerCut fails the power: for each directory a random prefix of its
// unsynced name changes survives and the rest are undone, newest first;
// then every write since its file's last sync is kept, dropped or torn at
// a random sector boundary. Every later call fails with ErrPowerCut.
func (c *CrashFS) PowerCut(rng *rand.Rand) (CutStats, error) {
	c.crashed.Store(true)
	c.mu.Lock() // waits for a call in progress: it happened before the cut
	defer c.mu.Unlock()
	var st CutStats
	var undo []nsOp
	dirs := make([]string, 0, len(c.ops))
	for dir := range c.ops {
		dirs = append(dirs, dir)
	}
	sort.Strings(dirs) // the same seed cuts the same way
	for _, dir := range dirs {
		ops := c.ops[dir]
		undo = append(undo, ops[rng.IntN(len(ops)+1):]...)
	}
	sort.Slice(undo, func(i, j int) bool { return undo[i].seq > undo[j].seq })
	for _, op := range undo {
		st.NamesLost++
		if err := c.undo(op); err != nil {
			return st, fmt.Errorf("fsutil: power cut: undoing a change of %s: %w", op.name, err)
		}
	}
	names := make([]string, 0, len(c.files))
	for name := range c.files {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		if !exists(name) {
			continue // its creation was undone
		}
		if err := cutFile(name, c.files[name], rng, &st); err != nil {
			return st, err
		}
	}
	c.files, c.ops = map[string][]pendingWrite{}, map[string][]nsOp{}
	return st, nil
}

// undo reverts one name change on the real files. (c.mu held)
func (c *CrashFS) undo(op nsOp) error {
	switch op.kind {
	case nsCreate:
		for name := range c.files {
			if name == op.name || strings.HasPrefix(name, op.name+string(filepath.Separator)) {
				delete(c.files, name)
			}
		}
		return os.RemoveAll(op.name)
	case nsRename:
		if err := os.Rename(op.name, op.from); err != nil {
			return err
		}
		c.files[op.from] = c.files[op.name]
		delete(c.files, op.name)
		if op.had {
			if err := os.WriteFile(op.name, op.data, 0o644); err != nil {
				return err
			}
			c.files[op.name] = op.writes
		}
	case nsRemove:
		if op.tree == nil {
			if err := os.WriteFile(op.name, op.data, 0o644); err != nil {
				return err
			}
			c.files[op.name] = op.writes
			return nil
		}
		rels := make([]string, 0, len(op.tree))
		for rel := range op.tree {
			rels = append(rels, rel)
		}
		sort.Strings(rels) // parents before children
		for _, rel := range rels {
			p := filepath.Join(op.name, rel)
			if strings.HasSuffix(rel, "/") {
				if err := os.MkdirAll(p, 0o755); err != nil {
					return err
				}
			} else if err := os.WriteFile(p, op.tree[rel], 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

// cutFile puts the file back to its last synced state and then applies
// each unsynced write whole, not at all, or a prefix of whole sectors.
func cutFile(name string, ws []pendingWrite, rng *rand.Rand, st *CutStats) error {
	w, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	fi, err := w.Stat()
	if err != nil {
		w.Close()
		return err
	}
	size := fi.Size()
	clip := func(b []byte, off int64) []byte {
		if off >= size {
			return nil
		}
		return b[:min(int64(len(b)), size-off)]
	}
	for i := len(ws) - 1; i >= 0; i-- {
		if _, err := w.WriteAt(clip(ws[i].old, ws[i].off), ws[i].off); err != nil {
			w.Close()
			return err
		}
	}
	for _, pw := range ws {
		keep := 0
		switch rng.IntN(3) {
		case 0:
			keep, st.Kept = len(pw.new), st.Kept+1
		case 1:
			st.Dropped++
		default:
			keep, st.Torn = rng.IntN(len(pw.new)/SectorSize+1)*SectorSize, st.Torn+1
		}
		if _, err := w.WriteAt(clip(pw.new[:keep], pw.off), pw.off); err != nil {
			w.Close()
			return err
		}
	}
	err = w.Sync()
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

// crashFile reports its writes, truncations and syncs to its CrashFS.
type crashFile struct {
	File
	c    *CrashFS
	name string
	pos  int64 // Write's offset; -1 for O_APPEND
}

func (f *crashFile) WriteAt(p []byte, off int64) (int, error) {
	c := f.c
	if c.crashed.Load() {
		return 0, c.dead("write", f.name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed.Load() {
		return 0, c.dead("write", f.name)
	}
	if err := c.trackWrite(f.name, p, off); err != nil {
		return 0, err
	}
	return f.File.WriteAt(p, off)
}

func (f *crashFile) Write(p []byte) (int, error) {
	off := f.pos
	if off < 0 {
		fi, err := f.File.Stat()
		if err != nil {
			return 0, err
		}
		off = fi.Size()
	}
	n, err := f.WriteAt(p, off)
	if f.pos >= 0 {
		f.pos += int64(n)
	}
	return n, err
}

func (f *crashFile) Truncate(size int64) error {
	c := f.c
	if c.crashed.Load() {
		return c.dead("truncate", f.name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := f.File.Truncate(size); err != nil {
		return err
	}
	c.truncated(f.name, size)
	return nil
}

func (f *crashFile) Sync() error {
	c := f.c
	if c.crashed.Load() {
		return c.dead("fsync", f.name)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.crashed.Load() {
		return c.dead("fsync", f.name)
	}
	if err := f.File.Sync(); err != nil {
		return err
	}
	delete(c.files, f.name)
	return nil
}

func (f *crashFile) ReadAt(p []byte, off int64) (int, error) {
	if f.c.crashed.Load() {
		return 0, f.c.dead("read", f.name)
	}
	return f.File.ReadAt(p, off)
}

// Close closes the real file even after the cut (tests must not leak
// descriptors).
func (f *crashFile) Close() error { return f.File.Close() }
