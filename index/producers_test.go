package index

import (
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"testing"
	"time"

	qlog "github.com/quivermq/quiver/log"
)

// send appends a record of an idempotent send (count messages from seq).
func (f *fakeLog) send(topic string, pid, seq uint64, count uint32) qlog.RecordInfo {
	ri := f.append(topic, 0, count, "")
	ri.ProducerID, ri.Seq = pid, seq
	ri.StoreTime = time.Now().UnixNano() // the table forgets producers silent for ProducerExpiry
	f.mu.Lock()
	f.all[len(f.all)-1] = ri
	f.mu.Unlock()
	return ri
}

func dispatch(t *testing.T, idx *Index, recs ...qlog.RecordInfo) {
	t.Helper()
	if err := idx.Dispatch(recs); err != nil {
		t.Fatal(err)
	}
}

// lookupWant checks what the table answers for one range.
func lookupWant(t *testing.T, idx *Index, pid, seq uint64, n uint32, want *qlog.RecordInfo, within bool) {
	t.Helper()
	s, topic, found, in := idx.StoredSend(pid, seq, n)
	switch {
	case want == nil && found:
		t.Fatalf("producer %d seq %d+%d: found %+v, want nothing", pid, seq, n, s)
	case want == nil:
	case !found || s.Pos != want.Pos || s.Offset != want.QueueOffset || s.Seq != want.Seq || topic != string(want.Topic) || in != within:
		t.Fatalf("producer %d seq %d+%d: %+v %q found %v within %v; want the record at %d (within %v)", pid, seq, n, s, topic, found, in, want.Pos, within)
	}
}

// The table knows each stored send by its producer and sequence numbers:
// a range within a send finds it, one overlapping it finds it as not the
// same send, others find nothing; a replay adds nothing; a truncation
// forgets what lay past it.
func TestProducerTableLookups(t *testing.T) {
	f := newFakeLog()
	idx := mustOpen(t, testOpts(t.TempDir(), f))
	defer idx.Close()
	a := f.send("t0", 7, 10, 5) // 10..14
	b := f.send("t1", 7, 20, 1)
	c := f.send("t0", 8, 10, 1) // another producer, same numbers
	late := f.send("t0", 7, 15, 1)
	dispatch(t, idx, a, b, c)
	dispatch(t, idx, late)
	lookupWant(t, idx, 7, 12, 1, &a, true)
	lookupWant(t, idx, 7, 10, 5, &a, true)
	lookupWant(t, idx, 7, 13, 3, &a, false) // 13..15 is not a's
	lookupWant(t, idx, 7, 20, 1, &b, true)
	lookupWant(t, idx, 8, 10, 1, &c, true)
	lookupWant(t, idx, 7, 15, 1, &late, true)
	lookupWant(t, idx, 7, 16, 1, nil, false)
	lookupWant(t, idx, 9, 10, 1, nil, false)
	dispatch(t, idx, f.all...) // a replay
	if p, n := idx.ProducerStats(); p != 2 || n != 4 {
		t.Fatalf("after a replay: %d producers, %d sends; want 2 and 4", p, n)
	}
	if err := idx.Truncated(late.Pos); err != nil {
		t.Fatal(err)
	}
	lookupWant(t, idx, 7, 15, 1, nil, false)
	lookupWant(t, idx, 7, 20, 1, &b, true)
	if p, n := idx.ProducerStats(); p != 2 || n != 3 {
		t.Fatalf("after the truncation: %d producers, %d sends; want 2 and 3", p, n)
	}
}

// After a restart the table is what it was: at Close from its snapshot;
// after a crash from the last snapshot plus the log replayed from the
// position the index asks for (ResumeFrom), which goes back to the
// snapshot's when that is older than the index checkpoint.
func TestProducersSurviveReopen(t *testing.T) {
	dir := t.TempDir()
	f := newFakeLog()
	o := testOpts(dir, f)
	idx := mustOpen(t, o)
	var sends []qlog.RecordInfo
	for i := range 50 {
		sends = append(sends, f.send(fmt.Sprintf("t%d", i%2), uint64(1+i%3), uint64(i), 1))
	}
	dispatch(t, idx, sends...)
	if err := idx.Close(); err != nil {
		t.Fatal(err)
	}
	idx = mustOpen(t, o)
	if got := idx.ResumeFrom(); got != f.end {
		t.Fatalf("ResumeFrom %d after a clean close, want %d", got, f.end)
	}
	for _, s := range sends {
		lookupWant(t, idx, s.ProducerID, s.Seq, 1, &s, true)
	}

	// More sends, an index checkpoint (the snapshot is not due yet), a
	// crash: the files are left as they are and opened again.
	snapAt := f.end
	var more []qlog.RecordInfo
	for i := range 30 {
		more = append(more, f.send("t0", 4, uint64(i), 1))
	}
	dispatch(t, idx, more...)
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	idx.closeFiles() // the crash: no Close
	idx = mustOpen(t, o)
	defer idx.Close()
	if got := idx.ResumeFrom(); got != snapAt {
		t.Fatalf("ResumeFrom %d after a crash, want the snapshot's position %d (the checkpoint is at %d)", got, snapAt, f.end)
	}
	for _, ri := range f.all { // the log's replay
		if ri.Pos >= idx.ResumeFrom() {
			dispatch(t, idx, ri)
		}
	}
	for _, s := range append(sends, more...) {
		lookupWant(t, idx, s.ProducerID, s.Seq, 1, &s, true)
	}
	// A damaged snapshot is not trusted: the table is rebuilt from the
	// whole log.
	idx.Close()
	path := filepath.Join(dir, producersName)
	b, _ := os.ReadFile(path)
	b[len(b)/2] ^= 0xff
	os.WriteFile(path, b, 0o644)
	idx = mustOpen(t, o)
	if got := idx.ResumeFrom(); got >= 0 {
		t.Fatalf("ResumeFrom %d with a damaged snapshot, want the log's start", got)
	}
	if p, n := idx.ProducerStats(); p != 0 || n != 0 {
		t.Fatalf("a damaged snapshot loaded %d producers, %d sends", p, n)
	}
	dispatch(t, idx, f.all...)
	for _, s := range append(sends, more...) {
		lookupWant(t, idx, s.ProducerID, s.Seq, 1, &s, true)
	}
	idx.Close()
}

// The first index checkpoint of a run that loaded no snapshot writes one
// (before the checkpoint): a crash after it replays from the checkpoint,
// and the sends before it must be in the snapshot.
func TestFirstCheckpointWritesTheProducerSnapshot(t *testing.T) {
	dir := t.TempDir()
	f := newFakeLog()
	o := testOpts(dir, f)
	idx := mustOpen(t, o)
	s := f.send("t0", 3, 1, 1)
	dispatch(t, idx, s)
	if err := idx.Checkpoint(); err != nil {
		t.Fatal(err)
	}
	idx.closeFiles() // a crash
	idx = mustOpen(t, o)
	defer idx.Close()
	for _, ri := range f.all {
		if ri.Pos >= idx.ResumeFrom() {
			dispatch(t, idx, ri)
		}
	}
	lookupWant(t, idx, 3, 1, 1, &s, true)
}

// Memory is bounded: a producer's lowest sequence numbers go past the
// window, each producer keeps only producerMin while the total is over
// its bound, the producer whose newest send is oldest goes past
// MaxProducers, and silent producers go after the expiry.
func TestProducerTableBounds(t *testing.T) {
	tab := newProducerTable()
	now := time.Unix(100000, 0)
	tab.now = func() time.Time { return now }
	pos := int64(0)
	take := func(pid, seq uint64) {
		now = now.Add(time.Microsecond)
		ri := qlog.RecordInfo{Pos: pos, Size: 100, Topic: []byte("t"), Count: 1, StoreTime: now.UnixNano(), ProducerID: pid, Seq: seq}
		pos += 100
		tab.take(&ri)
	}
	count := func() int {
		n := 0
		for _, ps := range tab.pids {
			n += len(ps.sends)
		}
		if n != tab.total {
			t.Fatalf("%d sends held, counted %d", n, tab.total)
		}
		return n
	}
	for seq := range uint64(3 * ProducerWindow) {
		take(1, seq)
		if n := count(); n > ProducerWindow+ProducerWindow/8 {
			t.Fatalf("%d sends of one producer held, over the window %d and its slack", n, ProducerWindow)
		}
	}
	if _, _, found, _ := tab.lookup(1, 0, 1); found {
		t.Fatal("a send older than the window is still held")
	}
	if _, _, found, _ := tab.lookup(1, 3*ProducerWindow-1, 1); !found {
		t.Fatal("the newest send is not held")
	}
	tab.total += producerMaxTotal
	for seq := range uint64(ProducerWindow / 4) {
		take(2, seq)
	}
	if n := len(tab.pids[2].sends); n > producerMin+producerMin/8 {
		t.Fatalf("%d sends of a producer held past the total bound, want at most %d", n, producerMin+producerMin/8)
	}
	tab.total -= producerMaxTotal
	for pid := uint64(10); len(tab.pids) < MaxProducers; pid++ {
		take(pid, 0)
	}
	take(1, 1<<40) // producer 1 sends again: 2 is now the one silent longest
	take(99999, 0)
	if len(tab.pids) != MaxProducers || tab.pids[2] != nil || tab.pids[1] == nil {
		t.Fatalf("%d producers (want %d); producer 2 held %v, producer 1 held %v", len(tab.pids), MaxProducers, tab.pids[2] != nil, tab.pids[1] != nil)
	}
	now = now.Add(ProducerExpiry + 2*time.Minute)
	take(5, 0) // sweeps
	if len(tab.pids) != 1 || count() != 1 {
		t.Fatalf("%d producers held after the expiry, want 1 (the one that just sent)", len(tab.pids))
	}
}

// FuzzDecodeProducers: any bytes give a table or an error, never a panic;
// a table that decodes encodes to bytes that decode to the same table.
func FuzzDecodeProducers(f *testing.F) {
	tab := newProducerTable()
	for i := range 20 {
		ri := qlog.RecordInfo{Pos: int64(i) * 100, Size: 100, Topic: []byte(fmt.Sprintf("t%d", i%3)), Count: uint32(1 + i%4),
			StoreTime: int64(i), ProducerID: uint64(1 + i%2), Seq: uint64(i * 10)}
		tab.take(&ri)
	}
	b, _ := tab.snapshotNow()
	f.Add(b)
	b, _ = newProducerTable().snapshotNow()
	f.Add(b)
	f.Add([]byte(producersMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		got, pos, err := decodeProducers(b)
		if err != nil {
			return
		}
		b2, _ := got.snapshotNow()
		again, pos2, err := decodeProducers(b2)
		if err != nil || pos2 != pos || !reflect.DeepEqual(again.pids, got.pids) || !reflect.DeepEqual(again.topics, got.topics) || again.total != got.total {
			t.Fatalf("re-encoding differs: %v", err)
		}
	})
}

// BenchmarkProducerTableMemory measures what the table holds per send: 64
// producers fill their windows; the heap grows by bytes/send.
func BenchmarkProducerTableMemory(b *testing.B) {
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		tab := newProducerTable()
		const producers = 64
		for pid := uint64(1); pid <= producers; pid++ {
			for seq := uint64(1); seq <= ProducerWindow; seq++ {
				ri := qlog.RecordInfo{Pos: int64(seq) * 100, Size: 100, Topic: []byte("orders"), Count: 1, StoreTime: 1, ProducerID: pid, Seq: seq}
				tab.take(&ri)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(tab.total), "bytes/send")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/producers/(1<<20), "MiB/producer")
		runtime.KeepAlive(tab)
	}
}

// BenchmarkProducerTake is what taking one dispatched send costs.
func BenchmarkProducerTake(b *testing.B) {
	tab := newProducerTable()
	seq := uint64(0)
	ri := qlog.RecordInfo{Size: 100, Topic: []byte("orders"), Count: 1, StoreTime: time.Now().UnixNano(), ProducerID: 1}
	b.ReportAllocs()
	for b.Loop() {
		seq++
		ri.Seq, ri.Pos = seq, int64(seq)*100
		tab.take(&ri)
	}
}
