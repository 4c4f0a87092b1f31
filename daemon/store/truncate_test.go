package store

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/quivermq/quiver/index"
	"github.com/quivermq/quiver/internal/fsutil"
	"github.com/quivermq/quiver/ioengine"
	qlog "github.com/quivermq/quiver/log"
)

// A follower whose log diverged from its new leader's reopens its store
// cut back (Log.Truncate, as the broker does) and then takes the leader's
// records where it dropped its own. Its index checkpoint and producer
// snapshot still said positions past the cut, which now lie inside those
// records: a power cut (or kill -9) before the next ones were written made
// the next start replay from the middle of a record and refuse to start
// ("log: corrupt record: length ... out of range"; found by make chaos's
// kill -9 rounds of a controller's group). Everything acknowledged before
// the cut point and after the truncation must be served after the crash:
// with no index checkpoint since the truncation (the checkpoint on disk is
// past the cut), and with one (the producer snapshot, written every 10 s,
// is still past it: the case make chaos met).
func TestCrashAfterTruncationBeforeTheNextCheckpoint(t *testing.T) {
	for _, backend := range ioengine.Backends() {
		for _, checkpointed := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/checkpoint since %v", backend, checkpointed), func(t *testing.T) {
				crashAfterTruncation(t, backend, checkpointed)
			})
		}
	}
}

func crashAfterTruncation(t *testing.T, backend string, checkpointed bool) {
	dir := t.TempDir()
	opts := func(fs fsutil.FS) Options {
		// No checkpoint after the open: the crash comes before the next one.
		return Options{Dir: dir, Engine: backend, Logger: quiet, FS: fs, IndexCheckpoint: time.Hour,
			Log:   qlog.Options{SegmentSize: 256 << 10, TailBytes: 64 << 10, CheckpointInterval: time.Hour},
			Index: index.Options{ProducerSnapshotEvery: time.Hour}}
	}
	msg := func(i, size int) *qlog.Message {
		return &qlog.Message{Topic: fmt.Sprintf("t%d", i%3), QueueID: uint32(i % 2), Key: []byte(fmt.Sprintf("k%d", i)),
			Body: bytes.Repeat([]byte{byte('a' + i%26)}, size), ProducerID: 7, Seq: uint64(i)}
	}
	type sent struct {
		m   *qlog.Message
		res qlog.AppendResult
	}
	var acked []sent
	s, err := Open(opts(fsutil.OS))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 40 {
		m := msg(i, 100)
		res, err := s.Log.Append(m)
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, sent{m, res})
	}
	if err := s.Close(); err != nil { // a checkpoint and a snapshot at the end
		t.Fatal(err)
	}
	old := map[int64]bool{}
	for _, a := range acked[20:] {
		old[a.res.Pos] = true
	}
	old[acked[39].res.Pos+int64(acked[39].res.Size)] = true
	cutAt := acked[20].res.Pos
	acked = acked[:20]

	crash := fsutil.NewCrashFS(fsutil.OS)
	var faulty *ioengine.Faulty
	o := opts(crash)
	o.Log.Truncate, o.Log.TruncateTo = true, cutAt
	o.WrapEngine = func(e ioengine.Engine) ioengine.Engine {
		faulty = ioengine.NewFaulty(e)
		faulty.CrashWith(crash)
		return faulty
	}
	s, err = Open(o)
	if err != nil {
		t.Fatal(err)
	}
	// The leader's records: longer, so that the old boundaries past the
	// cut fall inside them.
	inside := 0
	for i := 1000; i < 1030; i++ {
		m := msg(i, 333)
		res, err := s.Log.Append(m)
		if err != nil {
			t.Fatal(err)
		}
		acked = append(acked, sent{m, res})
		for p := range old {
			if p > res.Pos && p < res.Pos+int64(res.Size) {
				inside++
			}
		}
	}
	if inside == 0 {
		t.Fatal("no old record boundary lies inside a new record: the test proves nothing")
	}
	if checkpointed {
		// The index checkpoint moves past the new records; the producer
		// snapshot is not due (ProducerSnapshotEvery).
		if err := s.Index.Checkpoint(); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := faulty.PowerCut(rand.New(rand.NewPCG(1, 2))); err != nil {
		t.Fatal(err)
	}
	s.Close() // fails: the disk is gone

	s, err = Open(opts(fsutil.OS))
	if err != nil {
		t.Fatalf("the store does not open after a crash that followed a truncation: %v", err)
	}
	defer s.Close()
	var r qlog.Record
	for _, a := range acked {
		e, err := s.Index.Lookup(a.m.Topic, a.m.QueueID, a.res.QueueOffset)
		if err != nil || e.Pos != a.res.Pos {
			t.Fatalf("%s/%d offset %d (at %d): index has %+v, %v", a.m.Topic, a.m.QueueID, a.res.QueueOffset, a.res.Pos, e, err)
		}
		if _, err := s.Log.Read(a.res.Pos, nil, &r); err != nil || !bytes.Equal(r.Body, a.m.Body) {
			t.Fatalf("record at %d: %v, or not what was appended", a.res.Pos, err)
		}
		hits, err := s.Index.LookupKey(a.m.Topic, a.m.Key, 1)
		if err != nil || len(hits) != 1 || hits[0].Pos != a.res.Pos {
			t.Fatalf("key %s: %v %v, want the record at %d", a.m.Key, hits, err, a.res.Pos)
		}
		checkProducer(t, s, a.m, a.res)
	}
	// The producer table forgot the dropped sends: their sequence numbers
	// (20-39) are free again.
	if _, _, found, _ := s.Index.StoredSend(7, 25, 1); found {
		t.Fatal("the producer table still knows a send the truncation dropped")
	}
}
