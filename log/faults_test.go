package log

import (
	"errors"
	"github.com/quivermq/quiver/internal/fsutil"
	"os"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/quivermq/quiver/ioengine"
)

// faultCase arms one fault on the engine; the next flush hits it.
var faultCases = map[string]func(f *ioengine.Faulty){
	"failed write": func(f *ioengine.Faulty) { f.FailWrite(0, nil) },
	"failed sync":  func(f *ioengine.Faulty) { f.FailSync(0, nil) },
	"torn write":   func(f *ioengine.Faulty) { f.TearWrite(0, 1024) },
}

// An append whose write or sync failed is never acknowledged; the log then
// refuses every append without writing again (fail-stop); reopening recovers
// everything acknowledged before the fault.
func TestFaultsFailStop(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		for name, arm := range faultCases {
			t.Run(name, func(t *testing.T) {
				dir := t.TempDir()
				faulty := ioengine.NewFaulty(newEngine(t, backend))
				l := openLog(t, smallOpts(dir, faulty))
				var acked []AppendResult
				for i := 0; i < 40; i++ {
					res, err := l.Append(testMessage(i))
					if err != nil {
						t.Fatal(err)
					}
					acked = append(acked, res)
				}
				arm(faulty)
				if _, err := l.Append(testMessage(40)); !errors.Is(err, ErrFailed) {
					t.Fatalf("append during %s: %v, want ErrFailed", name, err)
				}
				writes := faulty.Stats()
				for i := 0; i < 5; i++ {
					if _, err := l.Append(testMessage(41 + i)); !errors.Is(err, ErrFailed) {
						t.Fatalf("append after %s: %v, want ErrFailed", name, err)
					}
				}
				if got := faulty.Stats(); got.Writes != writes.Writes || got.Syncs != writes.Syncs {
					t.Fatalf("the failed log wrote again: %+v -> %+v", writes, got)
				}
				if err := l.Close(); err == nil {
					t.Fatal("Close of a failed log reported no error")
				}

				o := smallOpts(dir, newEngine(t, backend))
				l = openLog(t, o)
				defer l.Close()
				for i, res := range acked {
					checkRecord(t, l, res, testMessage(i))
				}
				// Whatever else is there is whole: the log scans cleanly and
				// the failed append, if present, sits right after the last ack.
				n := 0
				if err := l.Scan(0, func(pos int64, r *Record) error { n++; return nil }); err != nil {
					t.Fatal(err)
				}
				if n != len(acked) && n != len(acked)+1 {
					t.Fatalf("%d records after recovery, want %d or %d", n, len(acked), len(acked)+1)
				}
			})
		}
	})
}

// A full file system is not a failure: an append that needs a segment
// there is no room for is refused with ErrNoSpace and nothing of it is
// written; the log stays healthy, takes appends again once there is room,
// and everything acknowledged before, during and after reads back, also
// after a reopen.
func TestNoSpaceRefusesCleanly(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		faulty := ioengine.NewFaulty(newEngine(t, backend))
		o := smallOpts(dir, faulty)
		l := openLog(t, o)
		faulty.Full(true)
		var acked []AppendResult
		var msgs []int
		refused := 0
		for i := 0; refused < 5 && i < 10000; i++ {
			res, err := l.Append(testMessage(i))
			switch {
			case err == nil:
				acked, msgs = append(acked, res), append(msgs, i)
			case errors.Is(err, ErrNoSpace):
				refused++
			default:
				t.Fatalf("append %d on a full disk: %v", i, err)
			}
		}
		if refused == 0 {
			t.Fatal("no append was refused: the first segment never filled")
		}
		if err := l.Err(); err != nil {
			t.Fatalf("the log failed on a full disk: %v", err)
		}
		if end := acked[len(acked)-1]; end.Pos+int64(end.Size) > o.SegmentSize {
			t.Fatalf("an acknowledged record beyond the first segment: %+v", end)
		}
		faulty.Full(false)
		for i := 20000; i < 20200; i++ {
			res, err := l.Append(testMessage(i))
			if err != nil {
				t.Fatalf("append %d once there is room: %v", i, err)
			}
			acked, msgs = append(acked, res), append(msgs, i)
		}
		if acked[len(acked)-1].Pos < o.SegmentSize {
			t.Fatal("the appends after the disk had room did not roll")
		}
		for j, res := range acked {
			checkRecord(t, l, res, testMessage(msgs[j]))
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		l = openLog(t, smallOpts(dir, newEngine(t, backend)))
		defer l.Close()
		for j, res := range acked {
			checkRecord(t, l, res, testMessage(msgs[j]))
		}
	})
}

// fullIndex is a Dispatcher whose disk fills: while full it refuses with
// ENOSPC; it records, in order, the positions it took (a record taken
// once is not taken again, as the real index does).
type fullIndex struct {
	mu    sync.Mutex
	full  bool
	order []int64
	next  int64 // every record below was taken
}

func (f *fullIndex) Dispatch(recs []RecordInfo) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.full {
		return &os.PathError{Op: "write", Path: "cq", Err: syscall.ENOSPC}
	}
	for _, ri := range recs {
		if ri.Pos < f.next {
			continue
		}
		f.order = append(f.order, ri.Pos)
		f.next = ri.Pos + int64(ri.Size)
	}
	return nil
}

func (f *fullIndex) set(full bool) { f.mu.Lock(); f.full = full; f.mu.Unlock() }

// An index with no room (ENOSPC on dispatch) is not a failure either: the
// appends are durable, so they are acknowledged; they become visible
// (dispatched, in log order, none skipped) once the index has room again,
// with no new append to carry them.
func TestDispatchNoSpaceStallsThenCatchesUp(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		idx := &fullIndex{}
		o := smallOpts(t.TempDir(), newEngine(t, backend))
		o.Dispatcher = idx
		l := openLog(t, o)
		defer l.Close()
		var acked []AppendResult
		for i := 0; i < 10; i++ {
			res, err := l.Append(testMessage(i))
			if err != nil {
				t.Fatal(err)
			}
			acked = append(acked, res)
		}
		idx.set(true)
		stalledAt := l.Positions().Dispatched
		for i := 10; i < 30; i++ {
			res, err := l.Append(testMessage(i))
			if err != nil {
				t.Fatalf("append %d while the index is full: %v", i, err)
			}
			acked = append(acked, res)
		}
		if err := l.Err(); err != nil {
			t.Fatalf("the log failed: %v", err)
		}
		if p := l.Positions(); p.Dispatched != stalledAt || p.Durable <= stalledAt {
			t.Fatalf("positions while the index is full: %+v (stalled at %d)", p, stalledAt)
		}
		idx.set(false)
		end := l.Positions().Written
		deadline := time.Now().Add(10 * time.Second)
		for l.Positions().Dispatched != end {
			if time.Now().After(deadline) {
				t.Fatalf("not dispatched 10 s after the index had room: %+v", l.Positions())
			}
			time.Sleep(10 * time.Millisecond) // polling the syncer's retry
		}
		idx.mu.Lock()
		defer idx.mu.Unlock()
		if len(idx.order) != len(acked) {
			t.Fatalf("dispatched %d records, want %d", len(idx.order), len(acked))
		}
		for i, res := range acked {
			if idx.order[i] != res.Pos {
				t.Fatalf("record %d dispatched at %d, want %d", i, idx.order[i], res.Pos)
			}
		}
	})
}

// Retention deletes the oldest segments, each once no reader holds it, so
// a later one can be removed before an earlier one; a crash may then keep
// the later removal and not the earlier (before the removal's directory
// sync). Recovery finishes the deletion: the segments before the gap lie
// before the checkpoint. A gap after the checkpoint is still corruption.
func TestRecoveryFinishesARetentionTheCrashUndid(t *testing.T) {
	dir := t.TempDir()
	o := smallOpts(dir, newEngine(t, "portable"))
	l := openLog(t, o)
	var acked []AppendResult
	for i := 0; i < 3000; i++ {
		res, err := l.Append(testMessage(i))
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, res)
	}
	if err := l.Close(); err != nil { // checkpoints at the end
		t.Fatal(err)
	}
	bases, _ := listSegments(dir)
	if len(bases) < 4 {
		t.Fatalf("%d segments, want at least 4", len(bases))
	}
	// Segment 1 gone, segment 0 back.
	if err := os.Remove(segmentName(dir, bases[1])); err != nil {
		t.Fatal(err)
	}
	l = openLog(t, smallOpts(dir, newEngine(t, "portable")))
	if got := l.Positions().Start; got != bases[2] {
		t.Fatalf("log starts at %d, want %d (after the gap)", got, bases[2])
	}
	if _, err := os.Stat(segmentName(dir, bases[0])); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the segment before the gap is still there: %v", err)
	}
	for i, res := range acked {
		if res.Pos >= bases[2] {
			checkRecord(t, l, res, testMessage(i))
		}
	}
	l.Close()

	// A segment missing after the checkpoint: refused.
	bases, _ = listSegments(dir)
	if err := writeCheckpoint(fsutil.OS, dir, checkpoint{pos: bases[0], queues: map[queueKey]uint64{}}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(segmentName(dir, bases[1])); err != nil {
		t.Fatal(err)
	}
	if l, err := Open(smallOpts(dir, newEngine(t, "portable"))); !errors.Is(err, ErrCorrupt) {
		if err == nil {
			l.Close()
		}
		t.Fatalf("a segment missing after the checkpoint: %v, want ErrCorrupt", err)
	}
}
