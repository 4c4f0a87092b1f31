package ioengine

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"golang.org/x/sys/unix"
)

func newFaulty(t *testing.T, backend string) *Faulty {
	t.Helper()
	f := NewFaulty(newEngine(t, backend)) // the cleanup closes the inner engine
	return f
}

func wantStats(t *testing.T, f *Faulty, want Stats) {
	t.Helper()
	if got := f.Stats(); got != want {
		t.Fatalf("stats %+v, want %+v", got, want)
	}
}

func TestFaultyPassThrough(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := newFaulty(t, backend)
		dir := t.TempDir()
		a, b := openT(t, f, dir+"/a"), openT(t, f, dir+"/b")
		// One synced flush of one file is one fdatasync, however many ops.
		ops := []WriteOp{{File: a, Buf: page(1, 1), Off: 0}, {File: a, Buf: page(2, 2), Off: Alignment}, {File: a, Buf: page(1, 3), Off: 3 * Alignment}}
		if err := f.Flush(ops, true); err != nil {
			t.Fatal(err)
		}
		wantStats(t, f, Stats{Flushes: 1, Writes: 3, Syncs: 1})
		// Two files: two syncs; unsynced: none.
		if err := f.Flush([]WriteOp{{File: a, Buf: page(1, 4), Off: 0}, {File: b, Buf: page(1, 5), Off: 0}}, true); err != nil {
			t.Fatal(err)
		}
		if err := f.Flush([]WriteOp{{File: b, Buf: page(1, 6), Off: Alignment}}, false); err != nil {
			t.Fatal(err)
		}
		wantStats(t, f, Stats{Flushes: 3, Writes: 6, Syncs: 3})
		images := map[string][]byte{}
		model(images, ops)
		model(images, []WriteOp{{File: a, Buf: page(1, 4), Off: 0}, {File: b, Buf: page(1, 5), Off: 0}, {File: b, Buf: page(1, 6), Off: Alignment}})
		for name, want := range images {
			mustEqual(t, name, readFile(t, name), want)
		}
		if f.Name() != backend+"+faulty" {
			t.Fatalf("Name %q", f.Name())
		}
	})
}

func TestFaultyFailWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := newFaulty(t, backend)
		name := tempPath(t, "a")
		a := openT(t, f, name)
		ops := []WriteOp{{File: a, Buf: page(1, 1), Off: 0}, {File: a, Buf: page(1, 2), Off: Alignment}, {File: a, Buf: page(1, 3), Off: 2 * Alignment}}

		f.FailWrite(0, nil)
		mustIs(t, "Flush with a failed write", f.Flush(ops, true), ErrInjected)
		wantStats(t, f, Stats{Flushes: 1, Writes: 1, Syncs: 0, Faults: 1})
		if size, _ := a.Size(); size != 0 {
			t.Fatalf("failed first write left %d bytes", size)
		}

		// After 2 more successful writes, with the caller's error: the two
		// writes before it reach the file, the third does not.
		f.FailWrite(2, unix.EIO)
		if _, err := a.WriteAt(page(1, 9), 5*Alignment); err != nil { // 1 success
			t.Fatal(err)
		}
		mustIs(t, "Flush with a failed third write", f.Flush(ops, true), unix.EIO)
		wantStats(t, f, Stats{Flushes: 2, Writes: 4, Syncs: 0, Faults: 2})
		disk := readFile(t, name)
		mustEqual(t, "written prefix", disk[:Alignment], ops[0].Buf)
		mustEqual(t, "unwritten op", disk[Alignment:2*Alignment], make([]byte, Alignment))

		// One-shot: the next flush succeeds. File.WriteAt is faulted too.
		if err := f.Flush(ops, true); err != nil {
			t.Fatal(err)
		}
		f.FailWrite(0, nil)
		_, err := a.WriteAt(page(1, 7), 0)
		mustIs(t, "WriteAt with a failed write", err, ErrInjected)
		wantStats(t, f, Stats{Flushes: 3, Writes: 8, Syncs: 1, Faults: 3})
	})
}

func TestFaultyFailSync(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := newFaulty(t, backend)
		dir := t.TempDir()
		a, b := openT(t, f, dir+"/a"), openT(t, f, dir+"/b")
		ops := []WriteOp{{File: a, Buf: page(1, 1), Off: 0}, {File: b, Buf: page(1, 2), Off: 0}}

		f.FailSync(0, nil)
		mustIs(t, "Flush with a failed sync", f.Flush(ops, true), ErrInjected)
		wantStats(t, f, Stats{Flushes: 1, Writes: 2, Syncs: 1, Faults: 1})
		// The writes did reach the files.
		mustEqual(t, "a", readFile(t, dir+"/a"), ops[0].Buf)
		mustEqual(t, "b", readFile(t, dir+"/b"), ops[1].Buf)

		// The second file's sync fails: the first one's succeeds.
		f.FailSync(1, unix.EIO)
		mustIs(t, "Flush with a failed second sync", f.Flush(ops, true), unix.EIO)
		wantStats(t, f, Stats{Flushes: 2, Writes: 4, Syncs: 3, Faults: 2})

		// Unsynced flushes do not count down; File.Sync does.
		f.FailSync(1, nil)
		if err := f.Flush(ops, false); err != nil {
			t.Fatal(err)
		}
		if err := a.Sync(); err != nil {
			t.Fatal(err)
		}
		mustIs(t, "File.Sync with a failed sync", b.Sync(), ErrInjected)
		wantStats(t, f, Stats{Flushes: 3, Writes: 6, Syncs: 5, Faults: 3})
		if err := f.Flush(ops, true); err != nil {
			t.Fatal(err)
		}
	})
}

func TestFaultyTearWrite(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		for _, tc := range []struct {
			keep, want int
		}{{1024 + 100, 1024}, {Alignment, Alignment}, {Alignment + 512, Alignment + 512}, {100, 0}, {1 << 20, 2 * Alignment}} {
			f := newFaulty(t, backend)
			name := tempPath(t, "a")
			a := openT(t, f, name)
			old := page(3, 1)
			if err := f.Flush([]WriteOp{{File: a, Buf: old, Off: 0}}, true); err != nil {
				t.Fatal(err)
			}
			neu := page(2, 50)
			f.TearWrite(1, tc.keep)
			ops := []WriteOp{{File: a, Buf: page(1, 9), Off: 2 * Alignment}, {File: a, Buf: neu, Off: 0}}
			mustIs(t, "Flush with a torn write", f.Flush(ops, true), ErrInjected)
			want := bytes.Clone(old)
			copy(want[2*Alignment:], ops[0].Buf) // the op before the torn one
			copy(want, neu[:tc.want])            // exactly the kept prefix
			mustEqual(t, fmt.Sprintf("after torn write keeping %d", tc.keep), readFile(t, name), want)
			wantStats(t, f, Stats{Flushes: 2, Writes: 3, Syncs: 1, Faults: 1})

			// Torn through File.WriteAt on a fresh file: only the prefix
			// exists, and the file is no longer than it.
			fresh := tempPath(t, "b")
			b := openT(t, f, fresh)
			f.TearWrite(0, tc.keep)
			_, err := b.WriteAt(neu, 0)
			mustIs(t, "WriteAt with a torn write", err, ErrInjected)
			mustEqual(t, "fresh file after torn write", readFile(t, fresh), neu[:tc.want])
		}
	})
}

func TestFaultyCrash(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := NewFaulty(newEngine(t, backend))
		name := tempPath(t, "a")
		a, err := f.Open(name)
		if err != nil {
			t.Fatal(err)
		}
		data := page(1, 1)
		if err := f.Flush([]WriteOp{{File: a, Buf: data, Off: 0}}, true); err != nil {
			t.Fatal(err)
		}
		f.Crash()
		mustIs(t, "Flush", f.Flush([]WriteOp{{File: a, Buf: page(1, 2), Off: 0}}, true), ErrInjected)
		_, err = f.Open(name)
		mustIs(t, "Open", err, ErrInjected)
		_, err = a.WriteAt(data, 0)
		mustIs(t, "WriteAt", err, ErrInjected)
		mustIs(t, "Sync", a.Sync(), ErrInjected)
		_, err = a.ReadAt(make([]byte, 10), 0)
		mustIs(t, "ReadAt", err, ErrInjected)
		_, err = a.Size()
		mustIs(t, "Size", err, ErrInjected)
		mustIs(t, "Allocate", a.Allocate(1<<20), ErrInjected)
		mustIs(t, "Truncate", a.Truncate(0), ErrInjected)
		mustIs(t, "file Close", a.Close(), ErrInjected)
		mustIs(t, "engine Close", f.Close(), ErrInjected)
		// Nothing reached the disk after the crash, and Close did release
		// the inner file.
		mustEqual(t, "file after crash", readFile(t, name), data)
		if a.(*faultyFile).inner.Fd() != -1 {
			t.Fatal("Close after Crash left the inner file open")
		}
		wantStats(t, f, Stats{Flushes: 2, Writes: 1, Syncs: 1})
	})
}

// Arming, Stats and Crash may race with a flushing goroutine (run -race).
func TestFaultyConcurrent(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		f := newFaulty(t, backend)
		a := openT(t, f, tempPath(t, "a"))
		buf := page(1, 1)
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				f.Flush([]WriteOp{{File: a, Buf: buf, Off: int64(i%8) * Alignment}}, i%4 == 0)
			}
		}()
		for i := 0; i < 200; i++ {
			f.FailWrite(3, nil)
			f.FailSync(1, nil)
			_ = f.Stats()
			f.Disarm()
		}
		wg.Wait()
		f.Crash()
		if s := f.Stats(); s.Flushes != 200 || s.Writes != 200 {
			t.Fatalf("stats %+v", s)
		}
	})
}
