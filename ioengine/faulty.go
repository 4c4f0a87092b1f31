package ioengine

import (
	"fmt"
	"os"
	"sync"
)

// Faulty wraps an Engine and the files it opens so that tests can make the
// disk fail in-process: a failed write, a failed sync, a torn write (only a
// prefix of a write reaches the file, as when power fails mid-write) or a
// crash (everything fails from then on). Each fault is armed once and fires
// after a given number of further successful operations of its kind. Writes
// are counted per WriteOp or WriteAt, syncs per synced Flush or File.Sync.
//
// Faulty is safe for concurrent use.
type Faulty struct {
	inner Engine

	mu      sync.Mutex
	write   *fault // next write fault (failed or torn)
	sync    *fault
	crashed bool
	stats   Stats
	scratch []WriteOp
}

type fault struct {
	after int   // successful operations of its kind before it fires
	err   error // returned when it fires
	keep  int   // torn write: bytes that reach the file (-1: not torn)
}

// Stats counts what reached the inner engine, and the faults that fired.
type Stats struct {
	Flushes int64
	Writes  int64
	Syncs   int64
	Faults  int64
}

// NewFaulty wraps inner.
func NewFaulty(inner Engine) *Faulty { return &Faulty{inner: inner} }

// FailWrite makes the write after the next `after` successful ones fail with
// err (ErrInjected if nil), writing nothing.
func (f *Faulty) FailWrite(after int, err error) {
	f.arm(&f.write, after, err, -1)
}

// TearWrite makes the write after the next `after` successful ones write only
// its first keep bytes (rounded down to a 512-byte sector) and fail.
func (f *Faulty) TearWrite(after, keep int) {
	f.arm(&f.write, after, nil, keep/512*512)
}

// FailSync makes the sync after the next `after` successful ones fail with
// err (ErrInjected if nil). The writes of that flush reach the file.
func (f *Faulty) FailSync(after int, err error) {
	f.arm(&f.sync, after, err, -1)
}

// Crash makes every later operation fail with ErrInjected.
func (f *Faulty) Crash() {
	f.mu.Lock()
	f.crashed = true
	f.mu.Unlock()
}

// Stats returns the counters.
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
	*slot = &fault{after: after, err: err, keep: keep}
	f.mu.Unlock()
}

func (f *Faulty) Name() string { return f.inner.Name() + "+faulty" }

func (f *Faulty) Open(path string) (File, error) {
	f.mu.Lock()
	crashed := f.crashed
	f.mu.Unlock()
	if crashed {
		return nil, ErrInjected
	}
	in, err := f.inner.Open(path)
	if err != nil {
		return nil, err
	}
	return &faultyFile{File: in, eng: f}, nil
}

func (f *Faulty) Close() error { return f.inner.Close() }

// writeFaultLocked consumes one write and returns the fault that fires on it.
func (f *Faulty) writeFaultLocked() *fault {
	if f.write == nil {
		return nil
	}
	if f.write.after > 0 {
		f.write.after--
		return nil
	}
	ft := f.write
	f.write = nil
	f.stats.Faults++
	return ft
}

func (f *Faulty) syncFaultLocked() *fault {
	if f.sync == nil {
		return nil
	}
	if f.sync.after > 0 {
		f.sync.after--
		return nil
	}
	ft := f.sync
	f.sync = nil
	f.stats.Faults++
	return ft
}

func (f *Faulty) Flush(ops []WriteOp, sync bool) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.crashed {
		return ErrInjected
	}
	f.scratch = f.scratch[:0]
	for _, op := range ops {
		if ff, ok := op.File.(*faultyFile); ok {
			op.File = ff.File
		}
		f.scratch = append(f.scratch, op)
	}
	inner := f.scratch
	for i := range inner {
		ft := f.writeFaultLocked()
		if ft == nil {
			continue
		}
		// Everything before the faulty write reaches the file first.
		if i > 0 {
			if err := f.inner.Flush(inner[:i], false); err != nil {
				return err
			}
			f.stats.Writes += int64(i)
		}
		f.stats.Flushes++
		return tear(inner[i], ft)
	}
	var sf *fault
	if sync {
		sf = f.syncFaultLocked()
	}
	if err := f.inner.Flush(inner, sync && sf == nil); err != nil {
		return err
	}
	f.stats.Flushes++
	f.stats.Writes += int64(len(inner))
	if sf != nil {
		return fmt.Errorf("ioengine: fdatasync: %w", sf.err)
	}
	if sync {
		f.stats.Syncs++
	}
	return nil
}

// tear applies a write fault to op: nothing written, or a sector-aligned
// prefix written through the page cache (a direct write could not stop
// mid-page), then the fault's error.
func tear(op WriteOp, ft *fault) error {
	if ft.keep > 0 {
		w, err := os.OpenFile(op.File.Name(), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		_, err = w.WriteAt(op.Buf[:min(ft.keep, len(op.Buf))], op.Off)
		if err == nil {
			err = w.Sync()
		}
		w.Close()
		if err != nil {
			return err
		}
		return fmt.Errorf("ioengine: torn write %s at %d (%d of %d bytes): %w", op.File.Name(), op.Off, ft.keep, len(op.Buf), ft.err)
	}
	return fmt.Errorf("ioengine: write %s at %d: %w", op.File.Name(), op.Off, ft.err)
}

// faultyFile routes a file's own writes and syncs through the faults.
type faultyFile struct {
	File
	eng *Faulty
}

func (ff *faultyFile) WriteAt(p []byte, off int64) (int, error) {
	f := ff.eng
	f.mu.Lock()
	if f.crashed {
		f.mu.Unlock()
		return 0, ErrInjected
	}
	ft := f.writeFaultLocked()
	if ft == nil {
		f.stats.Writes++
	}
	f.mu.Unlock()
	if ft != nil {
		return 0, tear(WriteOp{File: ff.File, Buf: p, Off: off}, ft)
	}
	return ff.File.WriteAt(p, off)
}

func (ff *faultyFile) Sync() error {
	f := ff.eng
	f.mu.Lock()
	if f.crashed {
		f.mu.Unlock()
		return ErrInjected
	}
	ft := f.syncFaultLocked()
	if ft == nil {
		f.stats.Syncs++
	}
	f.mu.Unlock()
	if ft != nil {
		return fmt.Errorf("ioengine: fdatasync %s: %w", ff.Name(), ft.err)
	}
	return ff.File.Sync()
}

func (ff *faultyFile) ReadAt(p []byte, off int64) (int, error) {
	f := ff.eng
	f.mu.Lock()
	crashed := f.crashed
	f.mu.Unlock()
	if crashed {
		return 0, ErrInjected
	}
	return ff.File.ReadAt(p, off)
}
