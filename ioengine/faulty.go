//go:build unix

package ioengine

import (
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"sync/atomic"
	"syscall"

	"github.com/quivermq/quiver/internal/fsutil"
)

// SectorSize is the unit a torn write keeps (see fsutil.SectorSize).
const SectorSize = fsutil.SectorSize

// Faulty wraps an Engine, and every File it opens, so that tests can make
// the disk fail in-process: a failed write, a failed sync, a torn write, or
// a crash. It implements Engine.
//
// Faults are one-shot. Each arming method takes after, the number of
// further operations of that kind that succeed before the fault fires (0:
// the very next one). Writes are counted per WriteOp of a Flush and per
// File.WriteAt; syncs per distinct file of a synced Flush and per
// File.Sync. One write fault (failed or torn) and one sync fault can be
// armed at a time; arming again replaces the pending one.
//
// When a write fault fires in a Flush, the ops before it reach the inner
// engine (unsynced), the faulty op is failed or torn, and the ops after it
// and the sync are not attempted. When a sync fault fires, all writes reach
// the inner engine, the files before the faulty one are synced, and the
// rest are not.
//
// Faulty is safe for concurrent use: arming and Stats may run while another
// goroutine flushes.
type Faulty struct {
	inner   Engine
	crashed atomic.Bool
	full    atomic.Bool // Allocate fails with ENOSPC (Full)

	// gate, when set, holds every Flush until it is closed (Stall/Resume).
	gate    atomic.Pointer[chan struct{}]
	stalled atomic.Int32 // flushes waiting at the gate

	mu      sync.Mutex // serializes Flush, file writes and syncs with arming
	write   *fault
	sync    *fault
	stats   Stats
	scratch []WriteOp    // ops rewritten onto the inner files
	files   []syncTarget // distinct inner files of a synced Flush

	// crash, once Crashable or CrashWith is called, remembers every write
	// not yet synced and every name not yet made durable (see PowerCut).
	crash *fsutil.CrashFS
}

// Crashable makes the Faulty remember every write until its file is
// synced, so that PowerCut can lose them the way a power failure does.
// Reading the old bytes costs a read per write: for tests only.
func (f *Faulty) Crashable() {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crash == nil {
		f.crash = fsutil.NewCrashFS(fsutil.OS)
	}
}

// CrashWith is Crashable with c keeping the record, so that the files a
// test writes through c (checkpoints, indexes) and the engine's segments
// lose power together, in c.PowerCut or f.PowerCut.
func (f *Faulty) CrashWith(c *fsutil.CrashFS) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.crash = c
}

// PowerCutStats says what a power cut did to the writes not yet synced.
type PowerCutStats = fsutil.CutStats

// PowerCut simulates a power failure, like Crash but harsher: every write
// since its file's last sync is kept, dropped or torn at a random sector
// boundary (each independently, so a later write may survive an earlier
// one, as a disk's cache may reorder them); synced data survives. Of the
// names created or removed since their directory's last SyncDir, a random
// prefix (in order) survives and the rest are undone (a removed file
// comes back whole). Every later operation fails with ErrInjected. Needs
// Crashable or CrashWith; see fsutil.CrashFS for the model.
func (f *Faulty) PowerCut(rng *rand.Rand) (PowerCutStats, error) {
	f.crashed.Store(true)
	f.mu.Lock() // waits for a Flush in progress: it happened before the cut
	defer f.mu.Unlock()
	if f.crash == nil {
		return PowerCutStats{}, fmt.Errorf("ioengine: PowerCut without Crashable")
	}
	return f.crash.PowerCut(rng)
}

// Remove removes the file (its name may come back in a PowerCut before the
// directory's next SyncDir).
func (f *Faulty) Remove(path string) error {
	if f.crashed.Load() {
		return f.crashErr("remove", path)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crash != nil {
		return f.crash.Remove(path)
	}
	return f.inner.Remove(path)
}

// SyncDir makes the names created and removed in dir durable.
func (f *Faulty) SyncDir(dir string) error {
	if f.crashed.Load() {
		return f.crashErr("sync directory", dir)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crash != nil {
		return f.crash.SyncDir(dir)
	}
	return f.inner.SyncDir(dir)
}

// remember records a write about to be made. (f.mu held)
func (f *Faulty) remember(name string, p []byte, off int64) error {
	if f.crash == nil {
		return nil
	}
	return f.crash.TrackWrite(name, p, off)
}

// rememberOps records a Flush's writes. (f.mu held)
func (f *Faulty) rememberOps(ops []WriteOp) error {
	for _, op := range ops {
		if err := f.remember(op.File.Name(), op.Buf, op.Off); err != nil {
			return err
		}
	}
	return nil
}

// synced forgets the writes of a file that was synced. (f.mu held)
func (f *Faulty) synced(name string) {
	if f.crash != nil {
		f.crash.TrackSync(name)
	}
}

// Stats are Faulty's counters.
type Stats struct {
	Flushes int64 // Engine.Flush calls, failed ones included
	Writes  int64 // writes that reached the inner engine or hit a fault
	Syncs   int64 // fdatasyncs that reached the inner engine or hit a fault
	Faults  int64 // armed faults that fired (not the failures after Crash)
}

type fault struct {
	after int
	err   error
	keep  int // torn write: bytes kept; -1 for a plain failed write
}

var _ Engine = (*Faulty)(nil)

// NewFaulty wraps inner. Closing the Faulty closes inner.
func NewFaulty(inner Engine) *Faulty { return &Faulty{inner: inner} }

// Full makes every Allocate fail with ENOSPC while on: a file system with
// no room for another segment.
func (f *Faulty) Full(on bool) { f.full.Store(on) }

// FailWrite makes the write after the next `after` successful ones fail
// with err (ErrInjected if nil) without writing anything.
func (f *Faulty) FailWrite(after int, err error) { f.arm(&f.write, after, err, -1) }

// TearWrite makes the write after the next `after` successful ones write
// only its first keepBytes bytes, rounded down to SectorSize, and fail with
// ErrInjected: the state a crash mid-write leaves. A kept prefix that is a
// multiple of Alignment is written directly like the real write; any other
// goes through a buffered descriptor (O_DIRECT cannot write 512 bytes at
// 4 KiB alignment) and is fdatasync'ed so it is really on disk.
func (f *Faulty) TearWrite(after int, keepBytes int) {
	f.arm(&f.write, after, nil, max(keepBytes, 0)/SectorSize*SectorSize)
}

// FailSync makes the fdatasync after the next `after` successful ones fail
// with err (ErrInjected if nil). The writes it would have covered have
// reached the file.
func (f *Faulty) FailSync(after int, err error) { f.arm(&f.sync, after, err, -1) }

// Crash makes every later call on the engine and its files fail with
// ErrInjected, as if the process had died; it cannot be undone. Close still
// releases the inner engine and files (so tests do not leak descriptors)
// but reports ErrInjected too.
func (f *Faulty) Crash() { f.crashed.Store(true) }

// Stall makes every later Flush wait, before doing anything, until Resume:
// the disk as seen during a long device stall. Stalling twice is one
// stall.
func (f *Faulty) Stall() {
	g := make(chan struct{})
	f.gate.CompareAndSwap(nil, &g)
}

// Resume releases the flushes held by Stall.
func (f *Faulty) Resume() {
	if g := f.gate.Swap(nil); g != nil {
		close(*g)
	}
}

// Stalled is the number of flushes waiting for Resume now.
func (f *Faulty) Stalled() int { return int(f.stalled.Load()) }

// Disarm cancels pending faults that have not fired. It does not undo Crash.
func (f *Faulty) Disarm() {
	f.mu.Lock()
	f.write, f.sync = nil, nil
	f.mu.Unlock()
}

// Stats returns a snapshot of the counters.
func (f *Faulty) Stats() Stats {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.stats
}

func (f *Faulty) arm(slot **fault, after int, err error, keep int) {
	if err == nil {
		err = ErrInjected
	}
	f.mu.Lock()
	*slot = &fault{after: max(after, 0), err: err, keep: keep}
	f.mu.Unlock()
}

// Name is the inner engine's name with "+faulty".
func (f *Faulty) Name() string { return f.inner.Name() + "+faulty" }

// Open opens through the inner engine and wraps the file.
func (f *Faulty) Open(path string) (File, error) {
	if f.crashed.Load() {
		return nil, f.crashErr("open", path)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crash != nil { // a new name may be lost (PowerCut)
		f.crash.TrackCreate(path)
	}
	in, err := f.inner.Open(path)
	if err != nil {
		return nil, err
	}
	return &faultyFile{inner: in, f: f}, nil
}

// Close closes the inner engine.
func (f *Faulty) Close() error {
	err := f.inner.Close()
	if f.crashed.Load() {
		return f.crashErr("close", f.Name())
	}
	return err
}

// Flush implements Engine with the armed faults applied (see Faulty). With
// none due in this call it is one inner Flush, so the backend's batching
// is what runs.
func (f *Faulty) Flush(ops []WriteOp, sync bool) error {
	if g := f.gate.Load(); g != nil {
		f.stalled.Add(1)
		<-*g
		f.stalled.Add(-1)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.stats.Flushes++
	if f.crashed.Load() {
		return f.crashErr("flush", f.Name())
	}
	in := f.unwrap(ops)
	defer f.clearScratch()
	// Reject a bad batch the way the inner engine would, before any fault
	// is consumed or anything is written.
	if err := validate(in); err != nil {
		return err
	}

	if w := f.write; w != nil {
		if w.after < len(in) {
			k := w.after
			f.write = nil
			f.stats.Faults++
			f.stats.Writes += int64(k + 1)
			if k > 0 {
				if err := f.rememberOps(in[:k]); err != nil {
					return err
				}
				if err := f.inner.Flush(in[:k], false); err != nil {
					return err
				}
			}
			if w.keep > 0 {
				keep := min(w.keep, len(in[k].Buf)) / SectorSize * SectorSize
				if err := f.remember(in[k].File.Name(), in[k].Buf[:keep], in[k].Off); err != nil {
					return err
				}
			}
			return applyWriteFault(in[k].File, in[k].Buf, in[k].Off, w)
		}
		w.after -= len(in)
	}
	f.stats.Writes += int64(len(in))
	if err := f.rememberOps(in); err != nil {
		return err
	}
	if !sync {
		return f.inner.Flush(in, false)
	}

	for i := range in {
		f.files = addSyncTarget(f.files, in[i].File.Fd(), in[i].File)
	}
	if s := f.sync; s != nil {
		if s.after < len(f.files) {
			j := s.after
			f.sync = nil
			f.stats.Faults++
			f.stats.Syncs += int64(j + 1)
			if err := f.inner.Flush(in, false); err != nil {
				return err
			}
			for _, t := range f.files[:j] {
				if err := t.file.Sync(); err != nil {
					return err
				}
				f.synced(t.file.Name())
			}
			return fmt.Errorf("ioengine: fdatasync %s: %w", f.files[j].file.Name(), s.err)
		}
		s.after -= len(f.files)
	}
	f.stats.Syncs += int64(len(f.files))
	if err := f.inner.Flush(in, true); err != nil {
		return err
	}
	for _, t := range f.files {
		f.synced(t.file.Name())
	}
	return nil
}

// unwrap copies ops onto the inner files, into a reused scratch slice.
func (f *Faulty) unwrap(ops []WriteOp) []WriteOp {
	for _, op := range ops {
		if ff, ok := op.File.(*faultyFile); ok {
			op.File = ff.inner
		}
		f.scratch = append(f.scratch, op)
	}
	return f.scratch
}

func (f *Faulty) clearScratch() {
	clear(f.scratch)
	f.scratch = f.scratch[:0]
	clear(f.files)
	f.files = f.files[:0]
}

// writeFault consumes one write from the countdown and returns the fault
// that fires on it, if any.
func (f *Faulty) writeFault() *fault {
	f.stats.Writes++
	w := f.write
	if w == nil {
		return nil
	}
	if w.after > 0 {
		w.after--
		return nil
	}
	f.write = nil
	f.stats.Faults++
	return w
}

func (f *Faulty) syncFault() *fault {
	f.stats.Syncs++
	s := f.sync
	if s == nil {
		return nil
	}
	if s.after > 0 {
		s.after--
		return nil
	}
	f.sync = nil
	f.stats.Faults++
	return s
}

func (f *Faulty) crashErr(op, name string) error {
	return fmt.Errorf("ioengine: %s %s after simulated crash: %w", op, name, ErrInjected)
}

// applyWriteFault fails a write of p at off to file, after writing the
// torn prefix if the fault keeps one.
func applyWriteFault(file File, p []byte, off int64, w *fault) error {
	if w.keep < 0 {
		return fmt.Errorf("ioengine: write %s at offset %d: %w", file.Name(), off, w.err)
	}
	keep := min(w.keep, len(p)) / SectorSize * SectorSize
	if keep > 0 {
		var err error
		if keep%Alignment == 0 {
			_, err = file.WriteAt(p[:keep], off)
		} else {
			err = writeBuffered(file.Name(), p[:keep], off)
		}
		if err != nil {
			return fmt.Errorf("ioengine: torn write %s at offset %d: writing the kept prefix: %w", file.Name(), off, err)
		}
	}
	return fmt.Errorf("ioengine: torn write %s at offset %d (%d of %d bytes kept): %w",
		file.Name(), off, keep, len(p), w.err)
}

// writeBuffered writes p at off through a separate buffered descriptor and
// syncs it. Linux keeps it coherent with the direct descriptor: a later
// direct write over these pages first writes back and drops them.
func writeBuffered(name string, p []byte, off int64) error {
	w, err := os.OpenFile(name, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = w.WriteAt(p, off)
	if err == nil {
		err = w.Sync()
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	return err
}

// faultyFile routes a file's own writes and syncs through the faults. It
// spells out every method instead of embedding File, so that a method added
// to File cannot silently bypass Crash.
type faultyFile struct {
	inner File
	f     *Faulty
}

func (ff *faultyFile) Name() string { return ff.inner.Name() }
func (ff *faultyFile) Fd() int      { return ff.inner.Fd() }

// Unwrap returns the inner engine's file.
func (ff *faultyFile) Unwrap() File { return ff.inner }

func (ff *faultyFile) WriteAt(p []byte, off int64) (int, error) {
	f := ff.f
	if f.crashed.Load() {
		return 0, f.crashErr("write", ff.Name())
	}
	if err := checkAligned(ff, p, off); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed.Load() { // the cut came while this write waited
		return 0, f.crashErr("write", ff.Name())
	}
	if w := f.writeFault(); w != nil {
		return 0, applyWriteFault(ff.inner, p, off, w)
	}
	if err := f.remember(ff.Name(), p, off); err != nil {
		return 0, err
	}
	return ff.inner.WriteAt(p, off)
}

func (ff *faultyFile) Sync() error {
	f := ff.f
	if f.crashed.Load() {
		return f.crashErr("fdatasync", ff.Name())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed.Load() { // the cut came while this sync waited
		return f.crashErr("fdatasync", ff.Name())
	}
	if s := f.syncFault(); s != nil {
		return fmt.Errorf("ioengine: fdatasync %s: %w", ff.Name(), s.err)
	}
	if err := ff.inner.Sync(); err != nil {
		return err
	}
	f.synced(ff.Name())
	return nil
}

func (ff *faultyFile) ReadAt(p []byte, off int64) (int, error) {
	if ff.f.crashed.Load() {
		return 0, ff.f.crashErr("read", ff.Name())
	}
	return ff.inner.ReadAt(p, off)
}

func (ff *faultyFile) Allocate(size int64) error {
	if ff.f.crashed.Load() {
		return ff.f.crashErr("allocate", ff.Name())
	}
	if ff.f.full.Load() {
		return &os.PathError{Op: "fallocate", Path: ff.Name(), Err: syscall.ENOSPC}
	}
	return ff.inner.Allocate(size)
}

func (ff *faultyFile) Truncate(size int64) error {
	if ff.f.crashed.Load() {
		return ff.f.crashErr("truncate", ff.Name())
	}
	return ff.inner.Truncate(size)
}

func (ff *faultyFile) Size() (int64, error) {
	if ff.f.crashed.Load() {
		return 0, ff.f.crashErr("stat", ff.Name())
	}
	return ff.inner.Size()
}

// Close closes the inner file even after Crash, so tests do not leak
// descriptors, but then reports ErrInjected.
func (ff *faultyFile) Close() error {
	err := ff.inner.Close()
	if ff.f.crashed.Load() {
		return ff.f.crashErr("close", ff.Name())
	}
	return err
}
