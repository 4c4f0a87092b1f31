package log

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/klauspost/compress/zstd"
	"go.uber.org/goleak"

	"github.com/quivermq/quiver/ioengine"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// forEachBackend runs fn once per I/O backend this machine has.
func forEachBackend(t *testing.T, fn func(t *testing.T, backend string)) {
	for _, b := range ioengine.Backends() {
		t.Run(b, func(t *testing.T) { fn(t, b) })
	}
}

func newEngine(t testing.TB, backend string) ioengine.Engine {
	t.Helper()
	e, err := ioengine.New(backend, quiet)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

// smallOpts makes logs with tiny segments so that tests cross many of them.
func smallOpts(dir string, eng ioengine.Engine) Options {
	return Options{
		Dir: dir, Engine: eng, SegmentSize: 256 << 10, TailBytes: 64 << 10,
		MaxBatchBytes: 16 << 10, Logger: quiet,
	}
}

func openLog(t testing.TB, o Options) *Log {
	t.Helper()
	l, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func testMessage(i int) *Message {
	body := bytes.Repeat([]byte{byte('a' + i%26)}, 1+(i*37)%900)
	return &Message{
		Topic: fmt.Sprintf("topic-%d", i%3), QueueID: uint32(i % 4),
		Key: []byte(fmt.Sprintf("key-%d", i)), Tags: []byte("t"), Headers: []byte("h=1"),
		Body: body, ClientTime: int64(i),
	}
}

// checkRecord asserts that the record at res holds exactly m.
func checkRecord(t *testing.T, l *Log, res AppendResult, m *Message) {
	t.Helper()
	var r Record
	if _, err := l.Read(res.Pos, nil, &r); err != nil {
		t.Fatalf("read %d: %v", res.Pos, err)
	}
	if string(r.Topic) != m.Topic || r.QueueID != m.QueueID || r.QueueOffset != res.QueueOffset ||
		!bytes.Equal(r.Key, m.Key) || !bytes.Equal(r.Body, m.Body) || !bytes.Equal(r.Headers, m.Headers) ||
		r.ClientTime != m.ClientTime || r.StoreTime != res.StoreTime {
		t.Fatalf("record at %d differs: got topic %q queue %d off %d", res.Pos, r.Topic, r.QueueID, r.QueueOffset)
	}
}

func TestAppendReadAcrossSegments(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		l := openLog(t, smallOpts(dir, newEngine(t, backend)))
		var results []AppendResult
		next := map[queueKey]uint64{}
		for i := 0; i < 1500; i++ {
			m := testMessage(i)
			res, err := l.Append(m)
			if err != nil {
				t.Fatal(err)
			}
			k := queueKey{m.Topic, m.QueueID}
			if res.QueueOffset != next[k] {
				t.Fatalf("message %d: queue offset %d, want %d", i, res.QueueOffset, next[k])
			}
			next[k]++
			results = append(results, res)
		}
		p := l.Positions()
		if p.Written != p.Durable || p.Durable != p.Dispatched {
			t.Fatalf("sync mode positions differ after appends: %+v", p)
		}
		segs, _ := listSegments(dir)
		if len(segs) < 3 {
			t.Fatalf("want the test to span several segments, got %d", len(segs))
		}
		for i, res := range results {
			checkRecord(t, l, res, testMessage(i))
		}
		// Scan sees the same records in order.
		i := 0
		err := l.Scan(0, func(pos int64, r *Record) error {
			if pos != results[i].Pos {
				return fmt.Errorf("scan record %d at %d, want %d", i, pos, results[i].Pos)
			}
			i++
			return nil
		})
		if err != nil || i != len(results) {
			t.Fatalf("scan: %v after %d records", err, i)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}

		// Reopen: everything is still there and offsets continue densely.
		l = openLog(t, smallOpts(dir, newEngine(t, backend)))
		defer l.Close()
		for i, res := range results {
			checkRecord(t, l, res, testMessage(i))
		}
		m := testMessage(0)
		res, err := l.Append(m)
		if err != nil {
			t.Fatal(err)
		}
		if want := next[queueKey{m.Topic, m.QueueID}]; res.QueueOffset != want {
			t.Fatalf("after reopen: queue offset %d, want %d", res.QueueOffset, want)
		}
	})
}

func TestConcurrentAppendsAreDenseAndDistinct(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		l := openLog(t, smallOpts(t.TempDir(), newEngine(t, backend)))
		defer l.Close()
		const writers, each = 16, 200
		var mu sync.Mutex
		offsets := map[uint64]bool{}
		positions := map[int64]bool{}
		var wg sync.WaitGroup
		for w := 0; w < writers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < each; i++ {
					res, err := l.Append(&Message{Topic: "t", Body: []byte("x")})
					if err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					offsets[res.QueueOffset] = true
					positions[res.Pos] = true
					mu.Unlock()
				}
			}()
		}
		wg.Wait()
		for i := uint64(0); i < writers*each; i++ {
			if !offsets[i] {
				t.Fatalf("queue offset %d missing", i)
			}
		}
		if len(positions) != writers*each {
			t.Fatalf("%d distinct positions for %d appends", len(positions), writers*each)
		}
	})
}

// recorder is a Dispatcher that remembers what it was given.
type recorder struct {
	mu   sync.Mutex
	seen map[int64]string
}

func (r *recorder) Dispatch(recs []RecordInfo) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.seen == nil {
		r.seen = map[int64]string{}
	}
	for _, ri := range recs {
		r.seen[ri.Pos] = string(ri.Key)
	}
	return nil
}

func (r *recorder) has(pos int64) (string, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	k, ok := r.seen[pos]
	return k, ok
}

func TestDispatchedBeforeAcknowledged(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		rec := &recorder{}
		o := smallOpts(t.TempDir(), newEngine(t, backend))
		o.Dispatcher = rec
		l := openLog(t, o)
		defer l.Close()
		for i := 0; i < 100; i++ {
			res, err := l.Append(testMessage(i))
			if err != nil {
				t.Fatal(err)
			}
			if k, ok := rec.has(res.Pos); !ok || k != fmt.Sprintf("key-%d", i) {
				t.Fatalf("append %d acknowledged before it was dispatched", i)
			}
		}
	})
}

func TestAsyncModeSyncsWithinInterval(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		o := smallOpts(t.TempDir(), newEngine(t, backend))
		o.Durability = Async
		o.AsyncInterval = 20 * time.Millisecond
		l := openLog(t, o)
		defer l.Close()
		var last AppendResult
		for i := 0; i < 50; i++ {
			res, err := l.Append(testMessage(i))
			if err != nil {
				t.Fatal(err)
			}
			last = res
		}
		end := last.Pos + int64(last.Size)
		// The bound: durable reaches the end within a few intervals, by the
		// flusher's own timer (no appends arrive meanwhile).
		deadline := time.Now().Add(50 * o.AsyncInterval)
		for l.Positions().Durable < end {
			if time.Now().After(deadline) {
				t.Fatalf("async appends not synced within %v: %+v", 50*o.AsyncInterval, l.Positions())
			}
			time.Sleep(o.AsyncInterval / 4)
		}
		if err := l.Sync(); err != nil {
			t.Fatal(err)
		}
	})
}

func TestRejectsBadMessagesAndChangesNothing(t *testing.T) {
	l := openLog(t, smallOpts(t.TempDir(), newEngine(t, "portable")))
	defer l.Close()
	before := l.Positions()
	cases := map[string]*Message{
		"empty topic":    {Body: []byte("x")},
		"long topic":     {Topic: strings.Repeat("t", 256)},
		"long key":       {Topic: "t", Key: make([]byte, MaxKeyLen+1)},
		"unknown flags":  {Topic: "t", Flags: 0x80},
		"count no batch": {Topic: "t", Count: 3},
		"too large":      {Topic: "t", Body: make([]byte, 20<<10)}, // over this log's MaxBatchBytes
	}
	for name, m := range cases {
		if _, err := l.Append(m); !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrTooLarge) {
			t.Errorf("%s: got %v, want ErrInvalid or ErrTooLarge", name, err)
		}
	}
	if after := l.Positions(); after != before {
		t.Fatalf("rejected appends moved the log: %+v -> %+v", before, after)
	}
}

func TestRetentionBySize(t *testing.T) {
	dir := t.TempDir()
	o := smallOpts(dir, newEngine(t, "portable"))
	o.RetentionBytes = 3 * o.SegmentSize
	o.RetentionCheck = time.Hour // driven by hand below
	l := openLog(t, o)
	defer l.Close()
	var first AppendResult
	for i := 0; i < 3000; i++ {
		res, err := l.Append(testMessage(i))
		if err != nil {
			t.Fatal(err)
		}
		if i == 0 {
			first = res
		}
	}
	if n := l.ApplyRetention(); n == 0 {
		t.Fatal("retention deleted nothing")
	}
	segs, _ := listSegments(dir)
	if int64(len(segs))*o.SegmentSize > o.RetentionBytes {
		t.Fatalf("%d segments left, limit %d bytes", len(segs), o.RetentionBytes)
	}
	if _, err := l.Read(first.Pos, nil, &Record{}); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("read of a deleted record: %v, want ErrOutOfRange", err)
	}
	if p := l.Positions(); p.Start != segs[0] {
		t.Fatalf("start %d, want %d", p.Start, segs[0])
	}
}

func TestCloseThenAppend(t *testing.T) {
	l := openLog(t, smallOpts(t.TempDir(), newEngine(t, "portable")))
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(testMessage(1)); !errors.Is(err, ErrClosed) {
		t.Fatalf("append after close: %v", err)
	}
}

// segmentPath is the file of the segment holding pos.
func segmentPath(dir string, o Options, pos int64) string {
	return segmentName(dir, pos/o.SegmentSize*o.SegmentSize)
}

func flipByte(t *testing.T, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := []byte{0}
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x5a
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

func TestCorruptionBeforeTailRefusesToOpen(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		o := smallOpts(dir, newEngine(t, backend))
		l := openLog(t, o)
		var results []AppendResult
		for i := 0; i < 600; i++ {
			res, err := l.Append(testMessage(i))
			if err != nil {
				t.Fatal(err)
			}
			results = append(results, res)
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		victim := results[100]
		// Remove the checkpoint too: the rule must hold on data alone.
		os.Remove(filepath.Join(dir, checkpointFile))
		flipByte(t, segmentPath(dir, o, victim.Pos), victim.Pos%o.SegmentSize+HeaderSize+2)

		o.Engine = newEngine(t, backend)
		_, err := Open(o)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("open over mid-log corruption: %v, want ErrCorrupt", err)
		}
		for _, want := range []string{segmentPath(dir, o, victim.Pos), fmt.Sprint(victim.Pos), "quiverd repair --data " + dir} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not name %q", err, want)
			}
		}
		o.Engine.Close()

		// Repair truncates there, explicitly.
		o.Engine = newEngine(t, backend)
		o.Repair = true
		l = openLog(t, o)
		if p := l.Positions(); p.Written != victim.Pos {
			t.Fatalf("repair ended the log at %d, want %d", p.Written, victim.Pos)
		}
		for i, res := range results[:100] {
			checkRecord(t, l, res, testMessage(i))
		}
		l.Close()
	})
}

func TestTornTailIsTruncated(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		o := smallOpts(dir, newEngine(t, backend))
		l := openLog(t, o)
		var results []AppendResult
		for i := 0; i < 50; i++ {
			res, err := l.Append(testMessage(i))
			if err != nil {
				t.Fatal(err)
			}
			results = append(results, res)
		}
		l.Close()
		// Damage the last record, as a torn write would.
		last := results[len(results)-1]
		flipByte(t, segmentPath(dir, o, last.Pos), last.Pos%o.SegmentSize+int64(last.Size)-1)
		// The checkpoint written at Close covers it, so drop it: a crash
		// leaves the checkpoint behind the torn tail.
		os.Remove(filepath.Join(dir, checkpointFile))
		o.Engine = newEngine(t, backend)
		l = openLog(t, o)
		defer l.Close()
		if p := l.Positions(); p.Written != last.Pos {
			t.Fatalf("log ends at %d, want %d (the torn record dropped)", p.Written, last.Pos)
		}
		for i, res := range results[:len(results)-1] {
			checkRecord(t, l, res, testMessage(i))
		}
		// The log goes on from there; the torn offset is reused densely.
		res, err := l.Append(testMessage(49))
		if err != nil {
			t.Fatal(err)
		}
		if res.Pos != last.Pos || res.QueueOffset != last.QueueOffset {
			t.Fatalf("after truncation: pos %d off %d, want %d %d", res.Pos, res.QueueOffset, last.Pos, last.QueueOffset)
		}
	})
}

// The send path allocates nothing per message: pooled requests, a reused
// batch, encoding straight into the ring.
func TestAppendDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; run without -race (make test does)")
	}
	forEachBackend(t, func(t *testing.T, backend string) {
		l := openLog(t, smallOpts(t.TempDir(), newEngine(t, backend)))
		defer l.Close()
		m := &Message{Topic: "t", Key: []byte("k"), Body: make([]byte, 1000)}
		for i := 0; i < 10; i++ {
			l.Append(m)
		}
		var err error
		allocs := testing.AllocsPerRun(200, func() { _, err = l.Append(m) })
		if err != nil {
			t.Fatal(err)
		}
		if allocs != 0 {
			t.Fatalf("Append allocates %v times per message", allocs)
		}
	})
}

// Damage well within one group commit's size of the end, with no
// checkpoint: only the store times of what follows can tell acknowledged
// data (several commits follow) from a torn flush (at most one).
func TestCorruptionNearTheEndIsNotMistakenForATornTail(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		o := Options{Dir: dir, Engine: newEngine(t, backend), SegmentSize: 16 << 20, TailBytes: 16 << 20, Logger: quiet}
		l := openLog(t, o)
		var results []AppendResult
		for i := 0; i < 100; i++ { // ~50 KB: far less than MaxBatchBytes (4 MiB)
			res, err := l.Append(testMessage(i))
			if err != nil {
				t.Fatal(err)
			}
			results = append(results, res)
		}
		l.Close()
		os.Remove(filepath.Join(dir, checkpointFile))
		victim := results[10]
		flipByte(t, segmentPath(dir, o, victim.Pos), victim.Pos%o.SegmentSize+HeaderSize+1)
		o.Engine = newEngine(t, backend)
		_, err := Open(o)
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "group commits follow it") {
			t.Fatalf("open: %v, want a refusal naming the later commits", err)
		}
		o.Engine.Close()
	})
}

func TestRetentionByAge(t *testing.T) {
	dir := t.TempDir()
	o := smallOpts(dir, newEngine(t, "portable"))
	o.RetentionAge = time.Hour
	o.RetentionCheck = time.Hour // driven by hand below
	clock := time.Now()
	o.Now = func() time.Time { return clock }
	l := openLog(t, o)
	defer l.Close()
	for i := 0; i < 2000; i++ {
		if _, err := l.Append(testMessage(i)); err != nil {
			t.Fatal(err)
		}
	}
	// Segments before the active one (the zeroer may have made the next).
	old := int(l.Positions().Written / o.SegmentSize)
	if old < 2 {
		t.Fatalf("want several segments, got %d before the active one", old)
	}
	if n := l.ApplyRetention(); n != 0 {
		t.Fatalf("retention deleted %d fresh segments", n)
	}
	clock = clock.Add(2 * time.Hour)
	if n := l.ApplyRetention(); n != old {
		t.Fatalf("retention deleted %d old segments, want all %d before the active one", n, old)
	}
	// The log goes on.
	if _, err := l.Append(testMessage(1)); err != nil {
		t.Fatal(err)
	}
}

// A producer batch is one record, stored exactly as it came (here
// compressed with zstd by the producer), using Count queue offsets.
func TestCompressedBatchStoredAsSent(t *testing.T) {
	l := openLog(t, smallOpts(t.TempDir(), newEngine(t, "portable")))
	defer l.Close()
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	plain := bytes.Repeat([]byte("event-1|event-2|event-3|"), 100)
	packed := enc.EncodeAll(plain, nil)
	m := &Message{Topic: "t", Flags: FlagBatch | CompressionZstd, Count: 3, Body: packed}
	first, err := l.Append(m)
	if err != nil {
		t.Fatal(err)
	}
	next, err := l.Append(&Message{Topic: "t", Body: []byte("after")})
	if err != nil {
		t.Fatal(err)
	}
	if next.QueueOffset != first.QueueOffset+3 {
		t.Fatalf("a batch of 3 used offsets %d..%d", first.QueueOffset, next.QueueOffset)
	}
	var r Record
	if _, err := l.Read(first.Pos, nil, &r); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(r.Body, packed) || r.Flags != m.Flags || r.Count != 3 {
		t.Fatal("the batch was not stored as sent")
	}
	dec, err := zstd.NewReader(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer dec.Close()
	got, err := dec.DecodeAll(r.Body, nil)
	if err != nil || !bytes.Equal(got, plain) {
		t.Fatalf("stored batch does not decompress to what was sent: %v", err)
	}
}

// A record larger than one group commit's MaxBatchBytes is committed alone.
func TestRecordLargerThanABatch(t *testing.T) {
	o := Options{Dir: t.TempDir(), Engine: newEngine(t, "portable"), SegmentSize: 64 << 20, Logger: quiet}
	l := openLog(t, o)
	defer l.Close()
	big := &Message{Topic: "t", Body: bytes.Repeat([]byte("0123456789abcdef"), (12<<20)/16)} // 12 MiB > 4 MiB batches
	res, err := l.Append(big)
	if err != nil {
		t.Fatal(err)
	}
	var r Record
	if _, err := l.Read(res.Pos, nil, &r); err != nil || !bytes.Equal(r.Body, big.Body) {
		t.Fatalf("12 MiB record: %v", err)
	}
	if _, err := l.Append(&Message{Topic: "t", Body: make([]byte, MaxRecordSize)}); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("record over MaxRecordSize: %v", err)
	}
}

// A power cut with two commits written and not synced, X then Y: Y's write
// began by rewriting X's last partial page (with X's bytes), so when X is
// torn in its middle and Y lands, valid records of X itself follow the
// damage, then Y's. That is two store times after the damaged record, from
// the only two commits that were ever unsynced: a torn tail, which recovery
// must truncate, not refuse (make crash found it: TestPowerCutLosesNoAck,
// "valid records of 2 later group commits follow it").
func TestTornCommitFollowedByItsOwnRewrittenPage(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		faulty := ioengine.NewFaulty(newEngine(t, backend))
		o := smallOpts(dir, faulty)
		l := openLog(t, o)
		msg := func(i int) *Message {
			return &Message{Topic: "t", Key: []byte(fmt.Sprintf("key-%d", i)), Body: bytes.Repeat([]byte{byte('a' + i%26)}, 150)}
		}
		var results []AppendResult
		for i := 0; i < 5; i++ { // W: commits before, synced
			res, err := l.Append(msg(i))
			if err != nil {
				t.Fatal(err)
			}
			results = append(results, res)
		}
		// X: one commit of 60 records. The flusher is held in the engine
		// with the first of them; the rest wait for it, and all go in the
		// next commit.
		const xn = 60
		xres := make([]AppendResult, xn+1)
		var wg sync.WaitGroup
		wg.Add(xn + 1)
		faulty.Stall()
		for i := 0; i <= xn; i++ {
			if i == 1 {
				for faulty.Stalled() == 0 {
					runtime.Gosched()
				}
			}
			if err := l.AppendAsync(msg(5+i), func(res AppendResult, err error) {
				if err != nil {
					t.Error(err)
				}
				xres[i] = res
				wg.Done()
			}); err != nil {
				t.Fatal(err)
			}
		}
		faulty.Resume()
		wg.Wait()
		results = append(results, xres...)
		x := results[6:]
		for _, res := range x {
			if res.StoreTime != x[0].StoreTime {
				t.Fatalf("the held records went in more than one commit")
			}
		}
		y, err := l.Append(msg(len(results))) // Y
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, y)
		l.Close()
		os.Remove(filepath.Join(dir, checkpointFile)) // the cut came before any checkpoint covered X

		const page = ioengine.Alignment
		xStart, yPage := x[0].Pos, y.Pos/page*page
		tear := (xStart+page/2)/ioengine.SectorSize*ioengine.SectorSize + ioengine.SectorSize
		if y.Pos%page == 0 || tear >= yPage || x[len(x)-1].Pos < yPage {
			t.Fatalf("layout: X [%d, %d), Y at %d: no record of X after a tear in its middle", xStart, y.Pos, y.Pos)
		}
		// X's write kept up to the tear; its pages after it (but the last,
		// which Y rewrote and which landed) were never written.
		f, err := os.OpenFile(segmentPath(dir, o, xStart), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		base := xStart / o.SegmentSize * o.SegmentSize
		if _, err := f.WriteAt(make([]byte, yPage-tear), tear-base); err != nil {
			t.Fatal(err)
		}
		f.Close()

		o.Engine = newEngine(t, backend)
		l, err = Open(o)
		if err != nil {
			t.Fatalf("recovery refused a torn tail: %v", err)
		}
		defer l.Close()
		damaged := 0
		for damaged < len(results) && results[damaged].Pos+int64(results[damaged].Size) <= tear {
			damaged++
		}
		if p := l.Positions(); p.Written != results[damaged].Pos {
			t.Fatalf("log ends at %d, want %d (the torn record)", p.Written, results[damaged].Pos)
		}
		for i, res := range results[:damaged] {
			checkRecord(t, l, res, msg(i))
		}
	})
}

// Retention keeps the segment holding RetentionHold's position and every
// later one, however far over its bounds the log is; with the hold lifted
// it removes them.
func TestRetentionKeepsTheHold(t *testing.T) {
	dir := t.TempDir()
	o := smallOpts(dir, newEngine(t, "portable"))
	o.RetentionBytes = o.SegmentSize // one segment
	o.RetentionCheck = time.Hour     // driven by hand below
	var hold atomic.Int64
	o.RetentionHold = hold.Load
	l := openLog(t, o)
	defer l.Close()
	var results []AppendResult
	for i := 0; i < 2000; i++ {
		res, err := l.Append(testMessage(i))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	if l.Positions().Written < 3*o.SegmentSize {
		t.Fatalf("only %d bytes written", l.Positions().Written)
	}
	held := results[300] // in an early segment
	hold.Store(held.Pos)
	l.ApplyRetention()
	if start := l.Positions().Start; start > held.Pos {
		t.Fatalf("retention removed up to %d, past the hold at %d", start, held.Pos)
	}
	checkRecord(t, l, held, testMessage(300))
	hold.Store(-1)
	l.ApplyRetention()
	if start := l.Positions().Start; start <= held.Pos {
		t.Fatalf("with the hold lifted the log still starts at %d", start)
	}
}
