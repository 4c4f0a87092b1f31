package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"github.com/quivermq/quiver/internal/fsutil"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"sync"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	qlog "github.com/quivermq/quiver/log"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// fakeLog holds encoded records by position, laid out like the real log.
type fakeLog struct {
	mu   sync.Mutex
	recs map[int64][]byte
	end  int64
	all  []qlog.RecordInfo
	next map[string]uint64
}

func newFakeLog() *fakeLog { return &fakeLog{recs: map[int64][]byte{}, next: map[string]uint64{}} }

func (f *fakeLog) ReadRecord(pos int64, size int32, dst []byte) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	b, ok := f.recs[pos]
	if !ok || int32(len(b)) != size {
		return nil, fmt.Errorf("no record at %d", pos)
	}
	return append(dst[:0], b...), nil
}

// encode builds a record in the format of log/record.go.
func encode(topic string, queue uint32, qoff uint64, count uint32, store int64, key, tags, body []byte) []byte {
	le := binary.LittleEndian
	n := qlog.HeaderSize + len(topic) + len(key) + len(tags) + len(body)
	b := make([]byte, n)
	le.PutUint32(b, uint32(n-4))
	b[8] = qlog.RecordMagic
	if count > 1 {
		b[9] = qlog.FlagBatch
	}
	le.PutUint16(b[10:], uint16(len(topic)))
	le.PutUint32(b[12:], queue)
	le.PutUint64(b[16:], qoff)
	le.PutUint64(b[32:], uint64(store))
	le.PutUint32(b[40:], count)
	le.PutUint16(b[44:], uint16(len(key)))
	le.PutUint16(b[46:], uint16(len(tags)))
	le.PutUint32(b[52:], uint32(len(body)))
	p := qlog.HeaderSize
	p += copy(b[p:], topic)
	p += copy(b[p:], key)
	p += copy(b[p:], tags)
	copy(b[p:], body)
	le.PutUint32(b[4:], crc32.Checksum(b[8:], crc32.MakeTable(crc32.Castagnoli)))
	return b
}

// append adds a record and returns its RecordInfo.
func (f *fakeLog) append(topic string, queue uint32, count uint32, key string) qlog.RecordInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	k := fmt.Sprintf("%s/%d", topic, queue)
	qoff := f.next[k]
	f.next[k] += uint64(count)
	store := 1000 + f.end
	b := encode(topic, queue, qoff, count, store, []byte(key), []byte("tag"), []byte("body"))
	var r qlog.Record
	if _, err := qlog.DecodeRecord(b, &r); err != nil {
		panic(err)
	}
	ri := qlog.RecordInfo{Pos: f.end, Size: int32(len(b)), Topic: []byte(topic), QueueID: queue, QueueOffset: qoff,
		Count: count, StoreTime: store, Key: []byte(key), Tags: []byte("tag")}
	f.recs[f.end] = b
	f.end += int64(len(b))
	f.all = append(f.all, ri)
	return ri
}

func testOpts(dir string, f *fakeLog) Options {
	return Options{Dir: dir, EntriesPerFile: 16, KeySlots: 8, KeyEntries: 32, Reader: f, Logger: quiet}
}

func mustOpen(t *testing.T, o Options) *Index {
	t.Helper()
	idx, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return idx
}

// fill dispatches n records (every 5th a batch of 3) in commits of 7.
func fill(t *testing.T, idx *Index, f *fakeLog, n int) {
	t.Helper()
	var batch []qlog.RecordInfo
	for i := 0; i < n; i++ {
		count := uint32(1)
		if i%5 == 0 {
			count = 3
		}
		batch = append(batch, f.append(fmt.Sprintf("t%d", i%2), uint32(i%3), count, fmt.Sprintf("k%d", i%40)))
		if len(batch) == 7 || i == n-1 {
			if err := idx.Dispatch(batch); err != nil {
				t.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

// answers captures everything the index can be asked, for comparisons.
func answers(t *testing.T, idx *Index) map[string]any {
	t.Helper()
	out := map[string]any{"queues": idx.Queues()}
	for _, q := range idx.Queues() {
		ents, err := idx.Read(q.Topic, q.Queue, q.Min, make([]Entry, 0, 1000))
		if err != nil {
			t.Fatal(err)
		}
		out[fmt.Sprintf("%s/%d", q.Topic, q.Queue)] = ents
		off, err := idx.LookupTime(q.Topic, q.Queue, 1000+5000)
		if err != nil {
			t.Fatal(err)
		}
		out[fmt.Sprintf("time %s/%d", q.Topic, q.Queue)] = off
	}
	for i := 0; i < 40; i++ {
		for _, topic := range []string{"t0", "t1"} {
			hits, err := idx.LookupKey(topic, []byte(fmt.Sprintf("k%d", i)), 100)
			if err != nil {
				t.Fatal(err)
			}
			out[fmt.Sprintf("key %s k%d", topic, i)] = hits
		}
	}
	return out
}

func TestDenseOffsetsBatchesAndFileRoll(t *testing.T) {
	f := newFakeLog()
	idx := mustOpen(t, testOpts(t.TempDir(), f))
	defer idx.Close()
	fill(t, idx, f, 200)
	for _, ri := range f.all {
		for inner := uint32(0); inner < ri.Count; inner++ {
			e, err := idx.Lookup(string(ri.Topic), ri.QueueID, ri.QueueOffset+uint64(inner))
			if err != nil {
				t.Fatal(err)
			}
			if e.Pos != ri.Pos || e.Size != ri.Size || e.Inner != inner || e.StoreTime != ri.StoreTime || e.TagHash != tagHash([]byte("tag")) {
				t.Fatalf("entry %s/%d@%d = %+v, record %+v", ri.Topic, ri.QueueID, ri.QueueOffset+uint64(inner), e, ri)
			}
		}
	}
	for _, q := range idx.Queues() {
		if q.Max != f.next[fmt.Sprintf("%s/%d", q.Topic, q.Queue)] || q.Min != 0 {
			t.Fatalf("queue %s/%d bounds [%d,%d)", q.Topic, q.Queue, q.Min, q.Max)
		}
		if q.Max <= 16 {
			t.Fatalf("queue %s/%d does not span several files", q.Topic, q.Queue)
		}
	}
	if _, err := idx.Lookup("t0", 0, 1<<40); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup past the end: %v", err)
	}
	if _, err := idx.Lookup("nope", 0, 0); !errors.Is(err, ErrNotFound) {
		t.Fatalf("lookup of a missing queue: %v", err)
	}
}

func TestKeyLookupVerifiesCollisions(t *testing.T) {
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	o.KeySlots = 1 // every key collides
	idx := mustOpen(t, o)
	defer idx.Close()
	fill(t, idx, f, 100) // also rolls key files (32 entries each)
	hits, err := idx.LookupKey("t0", []byte("k2"), 100)
	if err != nil {
		t.Fatal(err)
	}
	var want []int64
	for i := len(f.all) - 1; i >= 0; i-- {
		if string(f.all[i].Topic) == "t0" && string(f.all[i].Key) == "k2" {
			want = append(want, f.all[i].Pos)
		}
	}
	var got []int64
	for _, h := range hits {
		got = append(got, h.Pos)
	}
	if len(want) == 0 || !reflect.DeepEqual(got, want) {
		t.Fatalf("hits %v, want %v (newest first)", got, want)
	}
}

func TestReopenWithAndWithoutCheckpoint(t *testing.T) {
	dir := t.TempDir()
	f := newFakeLog()
	idx := mustOpen(t, testOpts(dir, f))
	fill(t, idx, f, 150)
	want := answers(t, idx)
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}

	// With the checkpoint: nothing to replay, same answers.
	idx = mustOpen(t, testOpts(dir, f))
	if got := idx.ResumeFrom(); got != f.end {
		t.Fatalf("ResumeFrom %d, want %d", got, f.end)
	}
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after reopening with a checkpoint")
	}
	// A replay of everything is harmless (idempotent).
	if err := idx.Dispatch(f.all); err != nil {
		t.Fatal(err)
	}
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after a replay")
	}
	idx.Close()

	rebuild := func(when string) {
		t.Helper()
		idx = mustOpen(t, testOpts(dir, f))
		defer idx.Close()
		if idx.ResumeFrom() >= 0 {
			t.Fatalf("%s: ResumeFrom %d", when, idx.ResumeFrom())
		}
		for i := 0; i < len(f.all); i += 9 {
			if err := idx.Dispatch(f.all[i:min(i+9, len(f.all))]); err != nil {
				t.Fatal(err)
			}
		}
		if got := answers(t, idx); !reflect.DeepEqual(got, want) {
			t.Fatalf("%s: answers differ after a rebuild from the log", when)
		}
	}
	// An index of the previous layout (a directory per queue, checkpoint
	// QIX1): rebuilt from the log, its files removed.
	cp := filepath.Join(dir, checkpointName)
	b, err := os.ReadFile(cp)
	if err != nil {
		t.Fatal(err)
	}
	copy(b, "QIX1")
	old := filepath.Join(dir, "cq", fmt.Sprintf("%x", "t0"), "0")
	if err := os.MkdirAll(old, 0o755); err == nil {
		err = os.WriteFile(filepath.Join(old, fmt.Sprintf("%020d.cq", 0)), make([]byte, 64), 0o644)
	}
	if err == nil {
		err = os.WriteFile(cp, b, 0o644)
	}
	if err != nil {
		t.Fatal(err)
	}
	rebuild("an index of the previous layout")
	if _, err := os.Stat(old); !os.IsNotExist(err) {
		t.Fatalf("the previous layout's directory is still there: %v", err)
	}
	// Without the index directory at all: rebuilt from the log.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	rebuild("no index")
}

func TestTruncatedDropsTheTail(t *testing.T) {
	f := newFakeLog()
	idx := mustOpen(t, testOpts(t.TempDir(), f))
	defer idx.Close()
	fill(t, idx, f, 120)
	cut := f.all[80].Pos
	if err := idx.Truncated(cut); err != nil {
		t.Fatal(err)
	}
	for _, ri := range f.all {
		_, err := idx.Lookup(string(ri.Topic), ri.QueueID, ri.QueueOffset)
		if ri.Pos < cut && err != nil {
			t.Fatalf("record at %d (before the cut) lost: %v", ri.Pos, err)
		}
		if ri.Pos >= cut && !errors.Is(err, ErrNotFound) {
			t.Fatalf("record at %d (after the cut) still indexed: %v", ri.Pos, err)
		}
		if ri.Pos >= cut && string(ri.Key) != "" {
			hits, _ := idx.LookupKey(string(ri.Topic), ri.Key, 100)
			for _, h := range hits {
				if h.Pos >= cut {
					t.Fatalf("key %s still finds a truncated record at %d", ri.Key, h.Pos)
				}
			}
		}
	}
	// The same records dispatched again land at the same offsets.
	if err := idx.Dispatch(f.all[80:]); err != nil {
		t.Fatal(err)
	}
	for _, ri := range f.all[80:] {
		e, err := idx.Lookup(string(ri.Topic), ri.QueueID, ri.QueueOffset)
		if err != nil || e.Pos != ri.Pos {
			t.Fatalf("re-dispatched record at %d: %+v %v", ri.Pos, e, err)
		}
	}
}

func TestGapIsCorruption(t *testing.T) {
	f := newFakeLog()
	idx := mustOpen(t, testOpts(t.TempDir(), f))
	defer idx.Close()
	a := f.append("t", 0, 1, "")
	f.append("t", 0, 1, "") // never dispatched
	c := f.append("t", 0, 1, "")
	if err := idx.Dispatch([]qlog.RecordInfo{a}); err != nil {
		t.Fatal(err)
	}
	if err := idx.Dispatch([]qlog.RecordInfo{c}); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("gap in offsets: %v, want ErrCorrupt", err)
	}
}

func TestDropBefore(t *testing.T) {
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	idx := mustOpen(t, o)
	fill(t, idx, f, 200)
	// The first 200 records in files, the next 30 in memory only: the
	// cut below falls among those.
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	fill(t, idx, f, 30)
	start := f.all[215].Pos
	idx.DropBefore(start)
	check := func(when string) {
		t.Helper()
		for _, q := range idx.Queues() {
			ents, err := idx.Read(q.Topic, q.Queue, q.Min, make([]Entry, 0, 1000))
			if err != nil || len(ents) != int(q.Max-q.Min) {
				t.Fatalf("%s: queue %s/%d [%d, %d) read %d entries (%v)", when, q.Topic, q.Queue, q.Min, q.Max, len(ents), err)
			}
			for i, e := range ents {
				if e.Pos < start || e.Size == 0 || i > 0 && e.Pos < ents[i-1].Pos {
					t.Fatalf("%s: queue %s/%d offset %d: %+v (the log starts at %d)", when, q.Topic, q.Queue, q.Min+uint64(i), e, start)
				}
			}
		}
	}
	check("after the cut")
	files, _ := filepath.Glob(filepath.Join(idx.opts.Dir, "cq", "*", "*.cq"))
	if len(files) >= 6*4 {
		t.Fatalf("%d queue files left; retention deleted none", len(files))
	}
	want := answers(t, idx)
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	idx = mustOpen(t, o)
	defer idx.Close()
	idx.DropBefore(start) // as the store does at open
	check("reopened")
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after reopening")
	}
}

// Dispatch keeps new entries in memory, and a checkpoint writes them out:
// reads answer the same before and after, and after a reopen. Over
// MaxBufferedEntries, Dispatch writes them out itself: memory stays
// bounded when checkpoints do not come.
func TestEntriesInMemoryUntilWrittenOut(t *testing.T) {
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	o.MaxBufferedEntries = 50
	idx := mustOpen(t, o)
	fill(t, idx, f, 40) // 56 entries: over the bound once
	if n := idx.buffered.Load(); n > int64(o.MaxBufferedEntries) {
		t.Fatalf("%d entries in memory, bound %d", n, o.MaxBufferedEntries)
	}
	fill(t, idx, f, 10) // under it again: these stay in memory
	if n := idx.buffered.Load(); n == 0 {
		t.Fatal("no entries in memory: Dispatch wrote them out under the bound")
	}
	want := answers(t, idx)
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	if n := idx.buffered.Load(); n != 0 {
		t.Fatalf("%d entries still in memory after a checkpoint", n)
	}
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ once written out")
	}
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	idx = mustOpen(t, o)
	defer idx.Close()
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after reopening")
	}
}

func TestConcurrentReadersDuringDispatch(t *testing.T) {
	f := newFakeLog()
	idx := mustOpen(t, testOpts(t.TempDir(), f))
	defer idx.Close()
	done := make(chan struct{})
	var wg sync.WaitGroup
	for r := 0; r < 4; r++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dst := make([]Entry, 0, 64)
			for {
				select {
				case <-done:
					return
				default:
				}
				if b, ok := idx.Bounds("t0", 0); ok && b.Max > b.Min {
					// Every published offset is readable and whole.
					e, err := idx.Lookup("t0", 0, b.Max-1)
					if err != nil || e.Size == 0 {
						t.Errorf("published offset %d unreadable: %+v %v", b.Max-1, e, err)
						return
					}
					ents, err := idx.Read("t0", 0, b.Min, dst[:0])
					if want := min(int(b.Max-b.Min), cap(dst)); err != nil || len(ents) < want {
						t.Errorf("read %d entries from [%d, %d), want %d: %v", len(ents), b.Min, b.Max, want, err)
						return
					}
					for i, e := range ents {
						if e.Size == 0 || i > 0 && e.Pos < ents[i-1].Pos {
							t.Errorf("offset %d: %+v after %+v", b.Min+uint64(i), e, ents[max(i-1, 0)])
							return
						}
					}
				}
			}
		}()
	}
	// Checkpoints write entries out while they are read.
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-done:
				return
			default:
			}
			if err := idx.Checkpoint(); err != nil {
				t.Error(err)
				return
			}
		}
	}()
	fill(t, idx, f, 600)
	close(done)
	wg.Wait()
}

func TestSteadyStateDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; run without -race (make test does)")
	}
	f := newFakeLog()
	o := testOpts(t.TempDir(), f)
	o.EntriesPerFile = 1 << 16
	o.KeyEntries = 1 << 16
	idx := mustOpen(t, o)
	defer idx.Close()
	var batch []qlog.RecordInfo
	for i := 0; i < 64; i++ {
		batch = append(batch, f.append("t", uint32(i%4), 1, "k"))
	}
	if err := idx.Dispatch(batch); err != nil {
		t.Fatal(err)
	}
	next := make([]uint64, 4)
	for i := range next {
		next[i] = 16
	}
	// Averaged over many runs: appends into reused buffers only.
	allocs := testing.AllocsPerRun(400, func() {
		for i := range batch {
			q := batch[i].QueueID
			batch[i].QueueOffset = next[q]
			batch[i].Pos += 1 << 20
			next[q]++
		}
		if err := idx.Dispatch(batch); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Fatalf("Dispatch of 64 records allocates %v times", allocs)
	}
	dst := make([]Entry, 0, 64)
	if a := testing.AllocsPerRun(50, func() { idx.Read("t", 0, 0, dst[:0]) }); a != 0 {
		t.Fatalf("Read allocates %v times", a)
	}
}

func BenchmarkDispatch(b *testing.B) {
	f := newFakeLog()
	idx, err := Open(Options{Dir: b.TempDir(), Reader: f, Logger: quiet})
	if err != nil {
		b.Fatal(err)
	}
	defer idx.Close()
	batch := make([]qlog.RecordInfo, 64)
	for i := range batch {
		batch[i] = qlog.RecordInfo{Size: 1024, Topic: []byte("bench"), QueueID: uint32(i % 8), Count: 1, Key: []byte("key")}
	}
	next := make([]uint64, 8)
	pos := int64(0)
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		for i := range batch {
			q := batch[i].QueueID
			batch[i].QueueOffset = next[q]
			batch[i].Pos = pos
			next[q]++
			pos += 1024
		}
		if err := idx.Dispatch(batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "records/s")
}

// A failed fsync of a queue file stops index checkpoints for good: the
// kernel may have dropped the failed pages while calling them clean, so a
// later fsync that succeeds proves nothing, and a checkpoint past them
// would make the next open skip their replay (the fsync-gate lesson of
// PostgreSQL). The next open replays from the last good checkpoint.
func TestFailedSyncStopsCheckpoints(t *testing.T) {
	dir := t.TempDir()
	f := newFakeLog()
	var failing atomic.Bool
	o := testOpts(dir, f)
	o.FS = fsutil.WithSync(fsutil.OS, func(file fsutil.File) error {
		if failing.Load() {
			return errors.New("EIO")
		}
		return file.Sync()
	})
	idx := mustOpen(t, o)
	fill(t, idx, f, 20)
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	good, _ := readIndexCheckpoint(fsutil.OS, filepath.Join(dir, checkpointName))
	fill(t, idx, f, 20)
	failing.Store(true)
	if err := idx.Checkpoint(); err == nil {
		t.Fatal("a checkpoint over a failed fsync succeeded")
	}
	failing.Store(false)
	fill(t, idx, f, 20)
	if err := idx.Checkpoint(); err == nil || idx.CheckpointErr() == nil {
		t.Fatal("a checkpoint after a failed fsync was written")
	}
	if pos, _ := readIndexCheckpoint(fsutil.OS, filepath.Join(dir, checkpointName)); pos != good {
		t.Fatalf("checkpoint at %d after the failed fsync, want it left at %d", pos, good)
	}
	idx.Close()
	idx = mustOpen(t, testOpts(dir, f))
	defer idx.Close()
	if from := idx.ResumeFrom(); from != good {
		t.Fatalf("the next open resumes from %d, want the last good checkpoint %d", from, good)
	}
}

// A topic's deletion, met in log order: its queues and their files go, its
// records before the deletion are not readable again nor found by key (a
// replay included), and its records after it (the topic created again)
// start new queues, past the old offsets; other topics are untouched.
func TestDeletedTopic(t *testing.T) {
	dir := t.TempDir()
	f := newFakeLog()
	o := testOpts(dir, f)
	o.DeletedTopic = func(ri *qlog.RecordInfo) ([]byte, bool) { return ri.Key, string(ri.Topic) == "del" }
	idx := mustOpen(t, o)
	var batch []qlog.RecordInfo
	for i := 0; i < 80; i++ { // 20 entries in each queue: two files (16 entries each)
		batch = append(batch, f.append(fmt.Sprintf("t%d", i%2), uint32(i%4/2), 1, fmt.Sprintf("old%d", i)))
	}
	if err := idx.Dispatch(batch); err != nil {
		t.Fatal(err)
	}
	if err := idx.Checkpoint(); err != nil { // some in files
		t.Fatal(err)
	}
	// One call: more of t0 (in memory only), the deletion, t0 again.
	batch = []qlog.RecordInfo{f.append("t0", 0, 1, "old-staged"), f.append("del", 0, 1, "t0"),
		f.append("t0", 0, 1, "new0"), f.append("t0", 1, 1, "new1"), f.append("t1", 0, 1, "t1-after")}
	if err := idx.Dispatch(batch); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		for q, key := range []string{"new0", "new1"} {
			b, ok := idx.Bounds("t0", uint32(q))
			if !ok || b.Max-b.Min != 1 || b.Min == 0 {
				t.Fatalf("%s: t0/%d after its deletion: %+v %v, want one entry past the old offsets", when, q, b, ok)
			}
			hits, err := idx.LookupKey("t0", []byte(key), 10)
			if err != nil || len(hits) != 1 || hits[0].QueueOffset != b.Min {
				t.Fatalf("%s: key %s: %+v %v", when, key, hits, err)
			}
		}
		for _, key := range []string{"old0", "old2", "old-staged"} {
			if hits, err := idx.LookupKey("t0", []byte(key), 10); err != nil || len(hits) != 0 {
				t.Fatalf("%s: key %s of the deleted topic found: %+v %v", when, key, hits, err)
			}
		}
		if hits, err := idx.LookupKey("t1", []byte("old1"), 10); err != nil || len(hits) != 1 {
			t.Fatalf("%s: key old1 of t1: %+v %v", when, hits, err)
		}
		if b, _ := idx.Bounds("t1", 0); b.Min != 0 || b.Max != 21 {
			t.Fatalf("%s: t1/0 %+v, want [0, 21)", when, b)
		}
	}
	check("dispatched")
	want := answers(t, idx)
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	// Only the new queues' files, which hold nothing of the old topic.
	files, _ := filepath.Glob(filepath.Join(dir, "cq", fmt.Sprintf("%x", "t0"), "*.cq"))
	if len(files) != 2 {
		t.Errorf("t0's files after its deletion: %v, want one of each new queue", files)
	}
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		first, _ := idx.Bounds("t0", uint32(p[len(p)-25]-'0'))
		if lead := (first.Min % 16) * entrySize; !bytes.Equal(b[:lead], make([]byte, lead)) {
			t.Errorf("%s holds entries of the deleted topic", p)
		}
	}
	idx.Close()
	idx = mustOpen(t, o)
	check("reopened")
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after reopening")
	}
	idx.Close()
	// Rebuilt from the whole log: the deletion is met again in order.
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	idx = mustOpen(t, o)
	defer idx.Close()
	if err := idx.Dispatch(f.all); err != nil {
		t.Fatal(err)
	}
	check("rebuilt from the log")
	if got := answers(t, idx); !reflect.DeepEqual(got, want) {
		t.Fatal("answers differ after a rebuild from the log")
	}
}

// BenchmarkOpenManyQueues: opening an index of 100,000 queues of one
// entry each (what a broker's restart pays before its replay).
func BenchmarkOpenManyQueues(b *testing.B) {
	dir := b.TempDir()
	f := newFakeLog()
	o := Options{Dir: dir, Reader: f, Logger: quiet}
	idx, err := Open(o)
	if err != nil {
		b.Fatal(err)
	}
	batch := make([]qlog.RecordInfo, 0, 1000)
	for i := 0; i < 100_000; i++ {
		batch = append(batch, f.append(fmt.Sprintf("t%d", i/4), uint32(i%4), 1, ""))
		if len(batch) == cap(batch) {
			if err := idx.Dispatch(batch); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
	if err := idx.Close(); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for n := 0; n < b.N; n++ {
		idx, err := Open(o)
		if err != nil {
			b.Fatal(err)
		}
		idx.Close()
	}
}
