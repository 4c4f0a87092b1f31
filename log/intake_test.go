package log

import (
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/ioengine"
)

// waitFor polls cond until it holds or a generous deadline passes. It waits
// for a state, never for a duration.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

func stalledLog(t *testing.T, o func(*Options)) (*Log, *ioengine.Faulty) {
	t.Helper()
	f := ioengine.NewFaulty(newEngine(t, "portable"))
	opts := smallOpts(t.TempDir(), f)
	opts.MaxQueueWait = 50 * time.Millisecond
	opts.QueueCheck = 5 * time.Millisecond
	if o != nil {
		o(&opts)
	}
	return openLog(t, opts), f
}

// Incident 001, broker side: while the disk stalls, appends behind the
// commit in flight fail fast with a BusyError naming their real wait and
// the queue depth; nothing of them is written, the commit in flight is
// still acknowledged when the disk comes back, and the log goes on.
func TestStalledDiskFailsWaitingAppendsWithBusy(t *testing.T) {
	l, f := stalledLog(t, nil)
	defer l.Close()

	f.Stall()
	first := make(chan error, 1)
	go func() {
		_, err := l.Append(&Message{Topic: "t", Body: []byte("in flight")})
		first <- err
	}()
	waitFor(t, "the first commit to reach the stalled disk", func() bool { return f.Stalled() == 1 })

	const waiting = 5
	errs := make(chan error, waiting)
	for i := 0; i < waiting; i++ {
		go func() {
			_, err := l.Append(&Message{Topic: "t", Body: []byte("behind the stall")})
			errs <- err
		}()
	}
	for i := 0; i < waiting; i++ {
		err := <-errs
		var be *BusyError
		if !errors.As(err, &be) || !errors.Is(err, ErrBusy) {
			t.Fatalf("append behind a stalled disk: %v, want a BusyError", err)
		}
		if be.Full || be.Waited < 50*time.Millisecond || be.Limit != 50*time.Millisecond || be.Depth < 1 {
			t.Fatalf("busy error does not report the real wait and depth: %+v", be)
		}
	}
	// They failed while the disk was still stalled: fast failure, not a
	// failure after the stall.
	if f.Stalled() != 1 {
		t.Fatal("the stall ended before the waiting appends failed")
	}
	select {
	case err := <-first:
		t.Fatalf("the append in flight finished during the stall: %v", err)
	default:
	}
	f.Resume()
	if err := <-first; err != nil {
		t.Fatalf("the append in flight failed: %v", err)
	}
	if _, err := l.Append(&Message{Topic: "t", Body: []byte("after")}); err != nil {
		t.Fatalf("append after the stall: %v", err)
	}
	var bodies []string
	if err := l.Scan(0, func(_ int64, r *Record) error {
		bodies = append(bodies, string(r.Body))
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if len(bodies) != 2 || bodies[0] != "in flight" || bodies[1] != "after" {
		t.Fatalf("log holds %q; the failed appends must not be written", bodies)
	}
	if s := l.Stats(); s.Busy != waiting {
		t.Fatalf("Stats.Busy = %d, want %d", s.Busy, waiting)
	}
}

// A full queue fails an append at once, without blocking the appender.
func TestFullQueueFailsAtOnce(t *testing.T) {
	l, f := stalledLog(t, func(o *Options) { o.QueueDepth = 2; o.MaxQueueWait = 0 })
	defer l.Close()
	f.Stall()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); l.Append(&Message{Topic: "t", Body: []byte("0")}) }()
	waitFor(t, "the first commit to stall", func() bool { return f.Stalled() == 1 })
	for i := 0; i < 2; i++ {
		wg.Add(1)
		go func() { defer wg.Done(); l.Append(&Message{Topic: "t", Body: []byte("q")}) }()
	}
	waitFor(t, "two queued appends", func() bool { return l.Stats().Queued == 2 })
	_, err := l.Append(&Message{Topic: "t", Body: []byte("over")})
	var be *BusyError
	if !errors.As(err, &be) || !be.Full || be.Depth != 2 {
		t.Fatalf("append to a full queue: %v", err)
	}
	f.Resume()
	wg.Wait()
}

// A commit syncs when one of its appends asks for it, whatever the log's
// mode; a commit of only async appends does not.
func TestPerAppendAckMode(t *testing.T) {
	for _, mode := range []Durability{Sync, Async} {
		t.Run(mode.String(), func(t *testing.T) {
			o := smallOpts(t.TempDir(), newEngine(t, "portable"))
			o.Durability = mode
			o.AsyncInterval = time.Hour // only commits sync
			l := openLog(t, o)
			defer l.Close()
			before := l.Stats().Syncs
			res, err := l.Append(&Message{Topic: "t", Ack: AckAsync, Body: []byte("a")})
			if err != nil {
				t.Fatal(err)
			}
			if l.Stats().Syncs != before {
				t.Fatal("an async append was synced")
			}
			if l.Positions().Durable >= res.Pos+int64(res.Size) {
				t.Fatal("durable moved past an unsynced async append")
			}
			res, err = l.Append(&Message{Topic: "t", Ack: AckSync, Body: []byte("s")})
			if err != nil {
				t.Fatal(err)
			}
			if p := l.Positions(); p.Durable < res.Pos+int64(res.Size) {
				t.Fatalf("a sync append returned before durable reached it: %+v", p)
			}
		})
	}
}

// readingDispatcher reads every record it is given, as a consumer woken by
// the dispatch would.
type readingDispatcher struct {
	l    *Log
	errs []error
}

func (d *readingDispatcher) Dispatch(recs []RecordInfo) error {
	for _, r := range recs {
		if d.l == nil {
			continue // recovery, before Open returned
		}
		if _, err := d.l.ReadRecord(r.Pos, r.Size, nil); err != nil {
			d.errs = append(d.errs, err)
		}
	}
	return nil
}

// Records are readable before they are dispatched: an index entry never
// points past what readers may read.
func TestRecordsReadableWhenDispatched(t *testing.T) {
	d := &readingDispatcher{}
	o := smallOpts(t.TempDir(), newEngine(t, "portable"))
	o.Dispatcher = d
	l := openLog(t, o)
	defer l.Close()
	d.l = l
	for i := 0; i < 50; i++ {
		if _, err := l.Append(testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	if len(d.errs) > 0 {
		t.Fatalf("dispatched records were not readable: %v", d.errs[0])
	}
}

// The syncer may be syncing one commit while the flusher has written the
// next: after a crash, a torn commit may be followed by the valid records
// of one later commit (never acknowledged: it was not synced). That is a
// torn tail, and both go; two later commits would prove acknowledged data
// was hit (TestCorruptionNearTheEndIsNotMistakenForATornTail).
func TestTornCommitFollowedByOneUnsyncedCommit(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		o := smallOpts(dir, newEngine(t, backend))
		l := openLog(t, o)
		var results []AppendResult
		for i := 0; i < 30; i++ {
			res, err := l.Append(testMessage(i))
			if err != nil {
				t.Fatal(err)
			}
			results = append(results, res)
		}
		l.Close()
		if results[28].StoreTime == results[29].StoreTime {
			t.Skip("the last two appends shared a commit; the case needs two")
		}
		torn := results[28]
		flipByte(t, segmentPath(dir, o, torn.Pos), torn.Pos%o.SegmentSize+HeaderSize+1)
		os.Remove(filepath.Join(dir, checkpointFile))
		o.Engine = newEngine(t, backend)
		l = openLog(t, o)
		defer l.Close()
		if p := l.Positions(); p.Written != torn.Pos {
			t.Fatalf("log ends at %d, want %d (the torn commit and the one after it dropped)", p.Written, torn.Pos)
		}
		for i, res := range results[:28] {
			checkRecord(t, l, res, testMessage(i))
		}
	})
}
