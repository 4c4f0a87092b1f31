package broker

import (
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// Idempotent sends (sdk/idempotence.go). A send with a producer id names
// its messages by sequence numbers; the leader remembers, per producer
// id, the recent sends it took (the sequence range, the topic, and once
// answered where they were stored). A send whose range lies within one it
// remembers is not stored again: it is answered with the first copy's
// position (offset shifted by its place in the range), when the first
// copy is answered, and with the first copy's error if that failed.
//
// Bounds: at most dedupWindow sends per producer id (and an eighth more
// between trims; the oldest answered ones go first), and only dedupMin
// for a producer that sends while dedupMaxTotal sends are remembered over
// every producer; dedupProducers producer ids (the least recently seen go
// first); a producer id silent for dedupExpiry is forgotten. A retry of a
// send forgotten that way is stored again. A send is a frame: under load
// the SDK coalesces many messages into one, so 16,384 sends cover seconds
// of a busy client's traffic (its retries come after its attempt timeout,
// 1 s by default).
//
// This state lives in the leader's memory: a retry that reaches a new
// leader after a failover, or the same broker after a restart, is stored
// again. A send remembered from an earlier leadership of this broker is
// not used (its first copy may have been truncated since): the retry is
// stored again.
const (
	dedupWindow    = 16384
	dedupMin       = 1024
	dedupMaxTotal  = 1 << 20 // about 125 MB of remembered sends (121 B each, BenchmarkDedupMemory)
	dedupProducers = 4096
	dedupExpiry    = 10 * time.Minute
)

type dedup struct {
	mu        sync.Mutex
	pids      map[uint64]*pidState
	now       func() time.Time
	lastSweep time.Time
	free      []*dedupSend // forgotten sends, reused: no allocation per send once warm
	total     int          // sends remembered over every producer
}

type pidState struct {
	sends    []*dedupSend // by first sequence number
	pending  int          // of sends, not answered yet
	lastSeen time.Time
}

// dedupSend is one send a producer made, pending until it is answered.
type dedupSend struct {
	seq     uint64
	n       uint64
	epoch   uint64 // of the leadership that took it
	topic   string
	done    bool
	ack     wire.ProduceAck // of its first message, once done
	waiters []*ProduceCall  // retries that arrived while it was pending
}

func newDedup(now func() time.Time) *dedup {
	return &dedup{pids: map[uint64]*pidState{}, now: now}
}

// claim looks up c's send. For a retry of a remembered send it returns dup
// true and, if that send was answered, its answer for c (ready; else c
// waits for the first copy: resolve). For a new send it registers it as
// pending on c. A range that overlaps a remembered one without lying
// within it is an error. Answers are copied under the lock: a send's
// record may be forgotten and reused as soon as the lock is released.
func (d *dedup) claim(c *ProduceCall, topic string) (dup, ready bool, ack wire.ProduceAck, werr *wire.Error) {
	p := &c.In
	n := uint64(max(p.Count, 1))
	now := c.start // the time the produce arrived (Produce reads the clock once)
	if now.IsZero() {
		now = d.now()
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if now.Sub(d.lastSweep) > time.Minute {
		d.sweep(now)
	}
	ps := d.pids[p.ProducerID]
	if ps == nil {
		if len(d.pids) >= dedupProducers {
			d.evictProducer()
		}
		ps = &pidState{}
		d.pids[p.ProducerID] = ps
	}
	ps.lastSeen = now
	i := len(ps.sends) // the usual case: after every send remembered
	if i > 0 && ps.sends[i-1].seq+ps.sends[i-1].n > p.Seq {
		i = sort.Search(len(ps.sends), func(i int) bool { return ps.sends[i].seq+ps.sends[i].n > p.Seq })
	}
	if i < len(ps.sends) && ps.sends[i].seq < p.Seq+n && ps.sends[i].done && ps.sends[i].epoch != c.epoch {
		d.removeAt(ps, i) // from an earlier leadership: stored again
	}
	if i < len(ps.sends) && ps.sends[i].seq < p.Seq+n {
		s := ps.sends[i]
		if s.seq > p.Seq || p.Seq+n > s.seq+s.n || s.topic != topic {
			return false, false, ack, &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf(
				"sequence numbers %d..%d of producer %x overlap an earlier send of other messages (%d..%d to %s)",
				p.Seq, p.Seq+n-1, p.ProducerID, s.seq, s.seq+s.n-1, s.topic)}
		}
		if !s.done {
			s.waiters = append(s.waiters, c)
			return true, false, ack, nil
		}
		return true, true, ackAt(s.ack, s.seq, p.Seq), nil
	}
	s := d.newSend()
	s.seq, s.n, s.topic, s.epoch = p.Seq, n, topic, c.epoch
	ps.sends = append(ps.sends, nil)
	copy(ps.sends[i+1:], ps.sends[i:])
	ps.sends[i] = s
	ps.pending++
	d.total++
	limit := dedupWindow
	if d.total > dedupMaxTotal {
		limit = dedupMin
	}
	if len(ps.sends) > limit+limit/8 {
		d.trim(ps, limit) // in bulk: one move of the slice per limit/8 sends
	}
	c.dedup = s
	return false, false, ack, nil
}

// ackAt is the answer to the message with sequence number seq of a send
// answered with ack whose first message had first.
func ackAt(ack wire.ProduceAck, first, seq uint64) wire.ProduceAck {
	ack.Offset += seq - first
	return ack
}

// resolve records the outcome of the first copy of s and returns the
// retries waiting for it and the sequence number of s's first message
// (their answers: ackAt). A failed send is forgotten: a later retry is
// stored.
func (d *dedup) resolve(producer uint64, s *dedupSend, ack wire.ProduceAck, failed bool) ([]*ProduceCall, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	w, first := s.waiters, s.seq
	s.waiters = nil
	ps := d.pids[producer] // a producer with a pending send is never dropped
	ps.pending--
	if !failed {
		s.done, s.ack = true, ack
		return w, first
	}
	i := sort.Search(len(ps.sends), func(i int) bool { return ps.sends[i].seq >= first })
	if i < len(ps.sends) && ps.sends[i] == s {
		d.removeAt(ps, i)
	}
	return w, first
}

func (d *dedup) newSend() *dedupSend {
	if n := len(d.free); n > 0 {
		s := d.free[n-1]
		d.free = d.free[:n-1]
		return s
	}
	return &dedupSend{}
}

// forget keeps s for reuse (nil: nothing to keep).
func (d *dedup) forget(s *dedupSend) {
	if s == nil || len(d.free) >= dedupWindow {
		return
	}
	*s = dedupSend{waiters: s.waiters[:0]}
	d.free = append(d.free, s)
}

// removeAt forgets ps's send at i.
func (d *dedup) removeAt(ps *pidState, i int) {
	d.forget(ps.sends[i])
	ps.sends = append(ps.sends[:i], ps.sends[i+1:]...)
	d.total--
}

// trim forgets the oldest answered sends of ps beyond limit (pending ones
// are kept: their retries wait on them).
func (d *dedup) trim(ps *pidState, limit int) {
	extra := len(ps.sends) - limit
	kept := ps.sends[:0]
	for _, s := range ps.sends {
		if extra > 0 && s.done {
			d.forget(s)
			d.total--
			extra--
			continue
		}
		kept = append(kept, s)
	}
	clear(ps.sends[len(kept):])
	ps.sends = kept
}

// evictProducer forgets the least recently seen producer without pending
// sends.
func (d *dedup) evictProducer() {
	var oldest uint64
	var t time.Time
	for id, ps := range d.pids {
		if ps.pending == 0 && (t.IsZero() || ps.lastSeen.Before(t)) {
			oldest, t = id, ps.lastSeen
		}
	}
	if !t.IsZero() {
		d.drop(oldest)
	}
}

// sweep forgets producers silent for dedupExpiry.
func (d *dedup) sweep(now time.Time) {
	d.lastSweep = now
	for id, ps := range d.pids {
		if now.Sub(ps.lastSeen) > dedupExpiry && ps.pending == 0 {
			d.drop(id)
		}
	}
}

// drop forgets a producer id and its sends.
func (d *dedup) drop(id uint64) {
	for _, s := range d.pids[id].sends {
		d.forget(s)
	}
	d.total -= len(d.pids[id].sends)
	delete(d.pids, id)
}

// stats: producers remembered and sends remembered.
func (d *dedup) stats() (producers, sends int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.pids), d.total
}
