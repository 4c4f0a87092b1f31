package store

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/index"
	"github.com/quivermq/quiver/internal/crashtest"
	"github.com/quivermq/quiver/internal/fsutil"
	"github.com/quivermq/quiver/ioengine"
	qlog "github.com/quivermq/quiver/log"
)

// The store's power-cut property: the log's segments (through the fault
// engine) and everything else the store writes (the log's checkpoint, the
// consume queues, the key index, the index checkpoint, and the names of
// all their files and directories, through a fsutil.CrashFS shared with
// the engine) lose power at the same random moment, while writers append
// keyed and unkeyed records to many queues, retention deletes segments,
// and both checkpoints run every few milliseconds. Small files, so that
// consume-queue and key-index files are created all along. Then the store
// must open (a power cut never leaves a state recovery refuses), find every
// acknowledged durable record through its queue offset and, when keyed,
// through its key; serve at every queue offset exactly the record the log
// holds for it (nothing else passes as valid); and index what is appended
// next where it belongs.
func TestStorePowerCut(t *testing.T) {
	rounds := crashtest.PowerCuts(t, 10)
	base := uint64(rand.Int64())
	var total cutTotals
	for r := 0; r < rounds; r++ {
		seed := base + uint64(r)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			total.add(storePowerCut(t, seed))
		})
		if t.Failed() {
			break
		}
	}
	t.Logf("%d power cuts: %d acknowledged records verified through their queue offsets, %d through their keys, %d through their producer and sequence; unsynced writes kept %d, dropped %d, torn %d; %d name changes undone; %d consume-queue files closed before the cut (at most 16 open)",
		rounds, total.acked, total.keyed, total.sends, total.cut.Kept, total.cut.Dropped, total.cut.Torn, total.cut.NamesLost, total.reopened)
	if !t.Failed() && total.reopened == 0 {
		t.Error("no consume-queue file was ever closed for MaxOpenFiles: the cuts did not test it")
	}
}

type cutTotals struct {
	acked, keyed, sends int
	reopened            int64 // consume-queue files closed and opened again (MaxOpenFiles)
	cut                 fsutil.CutStats
}

func (c *cutTotals) add(d cutTotals) {
	c.acked += d.acked
	c.keyed += d.keyed
	c.sends += d.sends
	c.reopened += d.reopened
	c.cut.Add(d.cut)
}

// cutMessage is record i of a round: over 15 queues, or, wide, over 400
// (more than the index writes out at every checkpoint: checkpoints then
// wait for the queues to fill, store.checkpointDue).
func cutMessage(i int, wide bool) *qlog.Message {
	topics, queues := 5, 3
	if wide {
		topics, queues = 100, 4
	}
	m := &qlog.Message{Topic: fmt.Sprintf("t%d", i%topics), QueueID: uint32(i / topics % queues),
		Body: bytes.Repeat([]byte{byte('a' + i%26)}, 1+(i*37)%700), ClientTime: int64(i)}
	if i%2 == 0 {
		m.Key = []byte(fmt.Sprintf("key-%d", i))
	}
	if i%3 == 0 { // an idempotent send: found again through the producer table
		m.ProducerID, m.Seq = uint64(1+i%4), uint64(i)
	}
	return m
}

// checkProducer asserts that the producer table knows m's send, stored at res.
func checkProducer(t *testing.T, s *Store, m *qlog.Message, res qlog.AppendResult) bool {
	t.Helper()
	if m.ProducerID == 0 {
		return false
	}
	ss, topic, found, within := s.Index.StoredSend(m.ProducerID, m.Seq, 1)
	if !found || !within || ss.Pos != res.Pos || ss.Offset != res.QueueOffset || topic != m.Topic {
		t.Fatalf("acknowledged send of producer %d seq %d (at %d): the producer table has %+v %q (found %v)", m.ProducerID, m.Seq, res.Pos, ss, topic, found)
	}
	return true
}

func cutOpts(dir, backend string, fs fsutil.FS, rng *rand.Rand) Options {
	o := Options{Dir: dir, Engine: backend, Logger: quiet, FS: fs,
		IndexCheckpoint: time.Duration(2+rng.IntN(30)) * time.Millisecond,
		Log: qlog.Options{SegmentSize: 256 << 10, TailBytes: 64 << 10, MaxBatchBytes: 16 << 10,
			CheckpointInterval: time.Duration(2+rng.IntN(30)) * time.Millisecond,
			RetentionBytes:     4 * (256 << 10), RetentionCheck: 5 * time.Millisecond},
		Index: index.Options{EntriesPerFile: 64, KeySlots: 61, KeyEntries: 100, MaxOpenFiles: 16, // files closed and reopened under the power cuts
			ProducerSnapshotEvery: time.Duration(2+rng.IntN(30)) * time.Millisecond},
	}
	return o
}

func storePowerCut(t *testing.T, seed uint64) cutTotals {
	rng := rand.New(rand.NewPCG(seed, seed>>1|1))
	dir := t.TempDir()
	backends := ioengine.Backends()
	backend := backends[int(seed/2)%len(backends)]
	crash := fsutil.NewCrashFS(fsutil.OS)
	var faulty *ioengine.Faulty
	o := cutOpts(dir, backend, crash, rng)
	o.WrapEngine = func(e ioengine.Engine) ioengine.Engine {
		faulty = ioengine.NewFaulty(e)
		faulty.CrashWith(crash)
		return faulty
	}
	async := seed%2 == 1
	// Half the rounds over 400 queues, with at most 50-300 consume-queue
	// entries in memory: Dispatch writes them out itself too; their
	// checkpoints write the queues out in chunks.
	wide := seed/4%2 == 1
	if wide {
		o.Index.MaxBufferedEntries = 50 + rng.IntN(250)
		// Checkpoints write 256 queues at a time: most record how far
		// they got after each chunk.
		o.Index.PartialCheckpointEvery = time.Duration(1 + rng.IntN(3_000_000))
	}
	if async {
		o.Log.Durability = qlog.Async
		o.Log.AsyncInterval = time.Duration(5+rng.IntN(40)) * time.Millisecond
	}
	t.Logf("backend %s, async %v, wide %v", backend, async, wide)
	s, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}

	const writers = 4
	cutAfter := 100 + rng.IntN(2000)
	var mu sync.Mutex
	acked := map[int]qlog.AppendResult{}
	cut := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i += writers {
				res, err := s.Log.Append(cutMessage(i, wide))
				if err != nil {
					if !errors.Is(err, qlog.ErrFailed) && !errors.Is(err, qlog.ErrClosed) {
						t.Errorf("append %d: %v", i, err)
					}
					return
				}
				mu.Lock()
				acked[i] = res
				n := len(acked)
				mu.Unlock()
				if n >= cutAfter {
					once.Do(func() { close(cut) })
				}
			}
		}()
	}
	<-cut
	durable := s.Log.Positions().Durable
	st, err := faulty.PowerCut(rng)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	files := s.Index.Files()
	s.Close() // fails: the disk is gone

	s, err = Open(cutOpts(dir, backend, fsutil.OS, rng))
	if err != nil {
		t.Fatalf("recovery refused the state a power cut left (%+v): %v", st, err)
	}
	defer s.Close()
	mu.Lock()
	defer mu.Unlock()
	start := s.Log.Positions().Start
	var out cutTotals
	out.cut = st
	out.reopened = files.Closes
	var r qlog.Record
	for i, res := range acked {
		if async && res.Pos+int64(res.Size) > durable {
			continue // acknowledged, not yet synced: async may lose it
		}
		if res.Pos < start {
			continue // deleted by retention
		}
		m := cutMessage(i, wide)
		e, err := s.Index.Lookup(m.Topic, m.QueueID, res.QueueOffset)
		if err != nil {
			t.Fatalf("acknowledged record %d (%s/%d offset %d) is not in the index: %v", i, m.Topic, m.QueueID, res.QueueOffset, err)
		}
		if e.Pos != res.Pos {
			t.Fatalf("%s/%d offset %d points at %d, the record was acknowledged at %d", m.Topic, m.QueueID, res.QueueOffset, e.Pos, res.Pos)
		}
		if _, err := s.Log.Read(res.Pos, nil, &r); err != nil || !bytes.Equal(r.Body, m.Body) || !bytes.Equal(r.Key, m.Key) {
			t.Fatalf("acknowledged record %d at %d: %v, or not what was appended", i, res.Pos, err)
		}
		out.acked++
		if m.Key != nil {
			hits, err := s.Index.LookupKey(m.Topic, m.Key, 4)
			if err != nil || !slices.ContainsFunc(hits, func(h index.KeyHit) bool { return h.Pos == res.Pos }) {
				t.Fatalf("acknowledged record %d (key %s) not found by its key: %v %v", i, m.Key, hits, err)
			}
			out.keyed++
		}
		if checkProducer(t, s, m, res) {
			out.sends++
		}
	}
	// Every offset the index serves holds the record the log has there.
	for _, q := range s.Index.Queues() {
		for off := q.Min; off < q.Max; off++ {
			e, err := s.Index.Lookup(q.Topic, q.Queue, off)
			if err != nil {
				t.Fatalf("%s/%d offset %d in [%d, %d): %v", q.Topic, q.Queue, off, q.Min, q.Max, err)
			}
			if _, err := s.Log.Read(e.Pos, nil, &r); err != nil {
				t.Fatalf("%s/%d offset %d points at %d: %v", q.Topic, q.Queue, off, e.Pos, err)
			}
			if string(r.Topic) != q.Topic || r.QueueID != q.Queue || r.QueueOffset != off {
				t.Fatalf("%s/%d offset %d serves %s/%d offset %d", q.Topic, q.Queue, off, r.Topic, r.QueueID, r.QueueOffset)
			}
		}
	}
	// What comes next is indexed where it belongs.
	for i := 1 << 20; i < 1<<20+30; i++ {
		m := cutMessage(i, wide)
		res, err := s.Log.Append(m)
		if err != nil {
			t.Fatalf("append after recovery: %v", err)
		}
		if e, err := s.Index.Lookup(m.Topic, m.QueueID, res.QueueOffset); err != nil || e.Pos != res.Pos {
			t.Fatalf("record appended after recovery at %d (%s/%d offset %d): index has %+v, %v", res.Pos, m.Topic, m.QueueID, res.QueueOffset, e, err)
		}
		if m.Key != nil {
			if hits, err := s.Index.LookupKey(m.Topic, m.Key, 1); err != nil || len(hits) != 1 || hits[0].Pos != res.Pos {
				t.Fatalf("record appended after recovery not found by key: %v %v", hits, err)
			}
		}
		checkProducer(t, s, m, res)
	}
	return out
}
