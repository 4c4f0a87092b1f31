package broker

import (
	"runtime"
	"testing"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

func dcall(pid, seq uint64, count uint32) *ProduceCall {
	return &ProduceCall{In: wire.Produce{ProducerID: pid, Seq: seq, Count: count}}
}

// What the leader does with each send of an idempotent producer: a new
// one is stored; a retry of one being stored waits for it and gets its
// answer; a retry of one stored is answered at once with its position
// (shifted by its place in a batch); a retry of one that failed is stored;
// a range overlapping another send's is refused.
func TestDedupClaims(t *testing.T) {
	now := time.Unix(1000, 0)
	d := newDedup(func() time.Time { return now })
	first := dcall(7, 10, 5) // a coalesced batch of 5: sequences 10..14
	if dup, _, _, werr := d.claim(first, "t"); dup || werr != nil || first.dedup == nil {
		t.Fatalf("a new send: dup %v, err %v", dup, werr)
	}
	retry := dcall(7, 12, 1) // the third message, retried alone while the batch is stored
	dup, ready, _, werr := d.claim(retry, "t")
	if !dup || ready || werr != nil || len(first.dedup.waiters) != 1 || first.dedup.waiters[0] != retry {
		t.Fatalf("a retry of a pending send: dup %v ready %v err %v; want it to wait on the first copy", dup, ready, werr)
	}
	ack := wire.ProduceAck{Queue: 3, Offset: 100, Epoch: 2}
	w, base := d.resolve(7, first.dedup, ack, false)
	if len(w) != 1 || w[0] != retry || base != 10 {
		t.Fatalf("waiters %v of a send from %d", w, base)
	}
	if a := ackAt(ack, base, retry.In.Seq); a.Queue != 3 || a.Offset != 102 || a.Epoch != 2 {
		t.Fatalf("the retry's answer %+v, want queue 3 offset 102", a)
	}
	late := dcall(7, 14, 1)
	if dup, ready, a, _ := d.claim(late, "t"); !dup || !ready || a.Queue != 3 || a.Offset != 104 || a.Epoch != 2 {
		t.Fatalf("a retry of a stored send: dup %v ready %v answer %+v, want queue 3 offset 104", dup, ready, a)
	}
	for _, tc := range []struct {
		c     *ProduceCall
		topic string
	}{
		{dcall(7, 13, 3), "t"}, // 13..15 overlaps 10..14 without lying within it
		{dcall(7, 11, 1), "u"}, // the same sequence for another topic
	} {
		if _, _, _, werr := d.claim(tc.c, tc.topic); werr == nil || werr.Code != wire.CodeInvalid {
			t.Fatalf("seq %d count %d topic %s: %v, want INVALID", tc.c.In.Seq, tc.c.In.Count, tc.topic, werr)
		}
	}
	// Another producer's sequence numbers are its own.
	if dup, _, _, _ := d.claim(dcall(8, 12, 1), "t"); dup {
		t.Fatal("another producer's send was taken for a retry")
	}
	// A send remembered from an earlier leadership is not used: its first
	// copy may have been truncated since.
	newer := dcall(7, 12, 1)
	newer.epoch = 3
	if dup, _, _, _ := d.claim(newer, "t"); dup || newer.dedup == nil {
		t.Fatal("a send of epoch 2 answered a retry in epoch 3")
	}
	// A send that failed is forgotten: its retry is stored.
	failed := dcall(7, 20, 1)
	d.claim(failed, "t")
	d.resolve(7, failed.dedup, wire.ProduceAck{}, true)
	again := dcall(7, 20, 1)
	if dup, _, _, _ := d.claim(again, "t"); dup || again.dedup == nil {
		t.Fatal("the retry of a failed send was not stored")
	}
}

// Memory stays bounded: a producer's oldest answered sends are forgotten
// past the window, silent producers after the expiry, and once warm a send
// costs no allocation.
func TestDedupBounds(t *testing.T) {
	now := time.Unix(1000, 0)
	d := newDedup(func() time.Time { return now })
	seq := uint64(1)
	c := &ProduceCall{}
	send := func(pid uint64) {
		*c = ProduceCall{In: wire.Produce{ProducerID: pid, Seq: seq, Count: 1}}
		seq++
		d.claim(c, "t")
		d.resolve(pid, c.dedup, wire.ProduceAck{Offset: seq}, false)
	}
	for i := 0; i < 3*dedupWindow; i++ {
		send(1)
		if sends := countSends(d); sends > dedupWindow+dedupWindow/8 || sends != d.total {
			t.Fatalf("%d sends remembered (counted %d), over the window (%d) and its slack", sends, d.total, dedupWindow)
		}
	}
	old := dcall(1, 1, 1)
	if dup, _, _, _ := d.claim(old, "t"); dup {
		t.Fatal("a send older than the window is still remembered")
	}
	d.resolve(1, old.dedup, wire.ProduceAck{}, true)
	if allocs := testing.AllocsPerRun(1000, func() { send(1) }); allocs != 0 {
		t.Fatalf("%v allocations per send once warm", allocs)
	}
	// Over the total bound, a producer that sends keeps only dedupMin.
	d.total += dedupMaxTotal
	for i := 0; i < dedupWindow/4; i++ {
		send(1)
	}
	if len(d.pids[1].sends) > dedupMin+dedupMin/8 {
		t.Fatalf("%d sends of a producer remembered past the total bound, want at most %d", len(d.pids[1].sends), dedupMin+dedupMin/8)
	}
	d.total -= dedupMaxTotal
	send(2)
	now = now.Add(dedupExpiry + 2*time.Minute)
	send(3) // sweeps
	if producers, sends := len(d.pids), countSends(d); producers != 1 || sends != d.total {
		t.Fatalf("%d producers remembered after the expiry, want 1 (the one that just sent); %d sends, counted %d", producers, sends, d.total)
	}
}

// countSends counts the remembered sends by walking them (d.total counts
// them as they come and go).
func countSends(d *dedup) int {
	n := 0
	for _, ps := range d.pids {
		n += len(ps.sends)
	}
	return n
}

// BenchmarkDedup is what one idempotent send costs the leader: claim and
// resolve, with the producer's window full.
func BenchmarkDedup(b *testing.B) {
	d := newDedup(time.Now)
	c := &ProduceCall{}
	seq := uint64(0)
	send := func() {
		seq++
		*c = ProduceCall{In: wire.Produce{ProducerID: 1, Seq: seq, Count: 1}}
		d.claim(c, "t")
		d.resolve(1, c.dedup, wire.ProduceAck{Offset: seq}, false)
	}
	for i := 0; i < 2*dedupWindow; i++ {
		send()
	}
	b.ReportAllocs()
	for b.Loop() {
		send()
	}
}

// BenchmarkDedupMemory measures what the leader keeps per remembered send:
// 64 producers fill their windows; the heap grows by bytes/send.
func BenchmarkDedupMemory(b *testing.B) {
	for range b.N {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		d := newDedup(time.Now)
		c := &ProduceCall{}
		const producers = 64
		for pid := uint64(1); pid <= producers; pid++ {
			for seq := uint64(1); seq <= dedupWindow; seq++ {
				*c = ProduceCall{In: wire.Produce{ProducerID: pid, Seq: seq, Count: 1}}
				d.claim(c, "orders")
				d.resolve(pid, c.dedup, wire.ProduceAck{Offset: seq}, false)
			}
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		_, sends := d.stats()
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/float64(sends), "bytes/send")
		b.ReportMetric(float64(after.HeapAlloc-before.HeapAlloc)/producers/(1<<20), "MiB/producer")
		runtime.KeepAlive(d)
	}
}
