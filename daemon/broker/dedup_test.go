package broker

import (
	"testing"

	"github.com/quivermq/quiver/index"
	"github.com/quivermq/quiver/sdk/wire"
)

func dcall(pid, seq uint64, count uint32) *ProduceCall {
	return &ProduceCall{In: wire.Produce{ProducerID: pid, Seq: seq, Count: count}}
}

// fakeStored is the index's producer table for these unit tests: one
// stored send of producer 7, messages 30..34 to topic t.
func fakeStored(pid, seq uint64, n uint32) (index.StoredSend, string, bool, bool) {
	s := index.StoredSend{Seq: 30, Count: 5, Queue: 2, Offset: 500, Pos: 4096, Size: 100}
	if pid != 7 || seq+uint64(n) <= 30 || seq >= 35 {
		return index.StoredSend{}, "", false, false
	}
	return s, "t", true, seq >= 30 && seq+uint64(n) <= 35
}

// What the leader does with each send of an idempotent producer: a new
// one is stored; a retry of one being stored waits for it and gets its
// answer; a retry of one the log holds is answered with the stored copy;
// a range overlapping another send's, or naming another topic, is refused.
func TestDedupClaims(t *testing.T) {
	d := newDedup(fakeStored)
	first := dcall(7, 10, 5) // a coalesced batch of 5: sequences 10..14
	if kind, _, werr := d.claim(first, "t"); kind != claimNew || werr != nil || first.dedup == nil {
		t.Fatalf("a new send: %v, err %v", kind, werr)
	}
	retry := dcall(7, 12, 1) // the third message, retried alone while the batch is stored
	kind, _, werr := d.claim(retry, "t")
	if kind != claimWaiting || werr != nil || len(first.dedup.waiters) != 1 || first.dedup.waiters[0] != retry {
		t.Fatalf("a retry of a pending send: %v err %v; want it to wait on the first copy", kind, werr)
	}
	w, base := d.resolve(7, first.dedup)
	if len(w) != 1 || w[0] != retry || base != 10 || d.pending() != 0 {
		t.Fatalf("waiters %v of a send from %d; %d pending after", w, base, d.pending())
	}
	ack := wire.ProduceAck{Queue: 3, Offset: 100, Epoch: 2}
	if a := ackAt(ack, base, retry.In.Seq); a.Queue != 3 || a.Offset != 102 || a.Epoch != 2 {
		t.Fatalf("the retry's answer %+v, want queue 3 offset 102", a)
	}
	// Once answered, the send is the log's to know (here: fakeStored).
	stored := dcall(7, 32, 2)
	if kind, s, werr := d.claim(stored, "t"); kind != claimStored || werr != nil || s.Seq != 30 || s.Offset != 500 || stored.dedup != nil {
		t.Fatalf("a retry of a stored send: %v %+v %v", kind, s, werr)
	}
	for _, tc := range []struct {
		c     *ProduceCall
		topic string
	}{
		{dcall(7, 33, 3), "t"}, // 33..35 overlaps the stored 30..34 without lying within it
		{dcall(7, 31, 1), "u"}, // a stored sequence for another topic
	} {
		if _, _, werr := d.claim(tc.c, tc.topic); werr == nil || werr.Code != wire.CodeInvalid {
			t.Fatalf("seq %d count %d topic %s: %v, want INVALID", tc.c.In.Seq, tc.c.In.Count, tc.topic, werr)
		}
	}
	pending := dcall(7, 40, 4)
	d.claim(pending, "t")
	for _, tc := range []struct {
		c     *ProduceCall
		topic string
	}{
		{dcall(7, 42, 4), "t"}, // overlaps the pending 40..43
		{dcall(7, 41, 1), "u"},
	} {
		if _, _, werr := d.claim(tc.c, tc.topic); werr == nil || werr.Code != wire.CodeInvalid {
			t.Fatalf("seq %d count %d topic %s against a pending send: %v, want INVALID", tc.c.In.Seq, tc.c.In.Count, tc.topic, werr)
		}
	}
	// Another producer's sequence numbers are its own.
	if kind, _, _ := d.claim(dcall(8, 41, 1), "t"); kind != claimNew {
		t.Fatal("another producer's send was taken for a retry")
	}
}

// Once warm, claiming and resolving a send allocates nothing, and nothing
// is kept once it is answered.
func TestDedupKeepsOnlyPendingSends(t *testing.T) {
	d := newDedup(nil)
	c := &ProduceCall{}
	seq := uint64(0)
	send := func() {
		seq++
		*c = ProduceCall{In: wire.Produce{ProducerID: 1, Seq: seq, Count: 1}}
		d.claim(c, "t")
		d.resolve(1, c.dedup)
	}
	for range 100 {
		send()
	}
	if allocs := testing.AllocsPerRun(1000, send); allocs != 0 {
		t.Fatalf("%v allocations per send once warm", allocs)
	}
	if n := d.pending(); n != 0 {
		t.Fatalf("%d sends pending after every one was answered", n)
	}
}

// BenchmarkDedup is what one idempotent send costs the leader's pending
// table: claim (with a miss in the producer table) and resolve.
func BenchmarkDedup(b *testing.B) {
	d := newDedup(func(uint64, uint64, uint32) (index.StoredSend, string, bool, bool) {
		return index.StoredSend{}, "", false, false
	})
	c := &ProduceCall{}
	seq := uint64(0)
	b.ReportAllocs()
	for b.Loop() {
		seq++
		*c = ProduceCall{In: wire.Produce{ProducerID: 1, Seq: seq, Count: 1}}
		d.claim(c, "t")
		d.resolve(1, c.dedup)
	}
}

// The producer table is asked without the dedup lock held (a store reopen
// holds the store's lock while the log's callbacks take the dedup lock);
// a send of the producer answered while it was asked makes claim ask
// again. Here the retry's first lookup runs just before the first copy's
// record is stored, and the first copy is answered during it: the retry
// must then find the stored copy, not be stored again.
func TestDedupAsksAgainWhenASendWasAnsweredMeanwhile(t *testing.T) {
	var d *dedup
	first := &ProduceCall{In: wire.Produce{ProducerID: 7, Seq: 50, Count: 1}}
	stored, lookups := false, 0
	d = newDedup(func(pid, seq uint64, n uint32) (index.StoredSend, string, bool, bool) {
		lookups++
		if lookups == 1 {
			stored = true             // the first copy's record lands...
			d.resolve(7, first.dedup) // ...and it is answered, while this lookup missed it
			return index.StoredSend{}, "", false, false
		}
		if stored && pid == 7 && seq == 50 {
			return index.StoredSend{Seq: 50, Count: 1, Offset: 9, Pos: 1, Size: 1}, "t", true, true
		}
		return index.StoredSend{}, "", false, false
	})
	// The first copy was claimed and is being stored (not pending any
	// more by the time the retry looks at the pending sends: it resolves
	// during the lookup).
	d.pids[7] = &pidPending{}
	first.dedup = d.newSend()
	retry := dcall(7, 50, 1)
	kind, ss, werr := d.claim(retry, "t")
	if werr != nil || kind != claimStored || ss.Offset != 9 || lookups != 2 {
		t.Fatalf("claim: kind %v %+v %v after %d lookups; want the stored copy after asking again", kind, ss, werr, lookups)
	}
}
