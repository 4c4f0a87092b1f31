package broker

import (
	"fmt"
	"sort"
	"sync"

	"github.com/quivermq/quiver/index"
	"github.com/quivermq/quiver/sdk/wire"
)

// Idempotent sends (sdk/idempotence.go). A send with a producer id names
// its messages by sequence numbers, and its record stores both
// (log/record.go). The leader looks up each one, under one lock:
//
//   - among the sends it is storing now (pending, here): a retry of one of
//     those waits for the first copy's answer and gets it (its position,
//     shifted by its place in the send, or its error);
//   - among the sends its log holds (the index's producer table,
//     index/producers.go, derived from the log on every broker of the
//     group and recovered at start): a retry of one of those is answered
//     with the stored copy's position, once that record is on the in-sync
//     followers (the first copy's answer may have been a timeout);
//   - else it is new: registered pending, and stored.
//
// A range that overlaps a known send without lying within it, or that
// names another topic, is refused (INVALID). A send that failed before it
// was stored is not in the log: its retry is stored. What the table
// forgets (its bounds: index/producers.go) is stored again on a retry.
type dedup struct {
	mu   sync.Mutex
	pids map[uint64]*pidPending
	free []*dedupSend // answered, reused: no allocation per send once warm
	n    int          // pending sends

	stored storedLookup // the log's sends; nil in some unit tests
}

// pidPending is a producer id's sends being stored.
type pidPending struct {
	sends    []*dedupSend // by first sequence number
	resolved uint64       // sends answered so far (claim looks again if it moved)
}

// dedupSend is one send being stored.
type dedupSend struct {
	seq     uint64
	n       uint64
	topic   string
	waiters []*ProduceCall // retries that arrived while it was stored
}

func newDedup(stored storedLookup) *dedup {
	return &dedup{pids: map[uint64]*pidPending{}, stored: stored}
}

// claimKind is what claim found.
type claimKind int

const (
	claimNew     claimKind = iota // store it (c.dedup is its pending send)
	claimWaiting                  // a retry of a pending send: answered with it (reply)
	claimStored                   // a retry of a send the log holds
)

// storedLookup is the index's producer table (Index.StoredSend).
type storedLookup func(pid, seq uint64, n uint32) (s index.StoredSend, topic string, found, within bool)

// claim looks up c's send (see dedup). The producer table is asked
// without d.mu held (it takes the store's lock, which a store reopen holds
// while the log's callbacks, which take d.mu, run out); so after it the
// pending sends are looked at again, and if one of the producer's sends
// was answered meanwhile (its record may have been stored after the
// table was asked), the table is asked again.
func (d *dedup) claim(c *ProduceCall, topic string) (claimKind, index.StoredSend, *wire.Error) {
	p := &c.In
	n := uint64(max(p.Count, 1))
	for {
		d.mu.Lock()
		if kind, werr, ok := d.pendingLocked(c, topic, n); ok {
			d.mu.Unlock()
			return kind, index.StoredSend{}, werr
		}
		seen := d.pids[p.ProducerID]
		resolved := uint64(0)
		if seen != nil {
			resolved = seen.resolved
		}
		d.mu.Unlock()
		var ss index.StoredSend
		var stopic string
		var found, within bool
		if d.stored != nil {
			ss, stopic, found, within = d.stored(p.ProducerID, p.Seq, uint32(n))
		}
		d.mu.Lock()
		if cur := d.pids[p.ProducerID]; cur != seen || cur != nil && cur.resolved != resolved {
			d.mu.Unlock()
			continue // a send was answered meanwhile: ask again
		}
		if kind, werr, ok := d.pendingLocked(c, topic, n); ok {
			d.mu.Unlock() // claimed meanwhile by a copy of it
			return kind, index.StoredSend{}, werr
		}
		if found {
			d.mu.Unlock()
			if !within || stopic != topic {
				return 0, ss, overlapErr(p, ss.Seq, uint64(ss.Count), stopic)
			}
			return claimStored, ss, nil
		}
		pp := d.pids[p.ProducerID]
		if pp == nil {
			pp = &pidPending{}
			d.pids[p.ProducerID] = pp
		}
		i := sort.Search(len(pp.sends), func(i int) bool { return pp.sends[i].seq+pp.sends[i].n > p.Seq })
		s := d.newSend()
		s.seq, s.n, s.topic = p.Seq, n, topic
		pp.sends = append(pp.sends, nil)
		copy(pp.sends[i+1:], pp.sends[i:])
		pp.sends[i] = s
		d.n++
		c.dedup = s
		d.mu.Unlock()
		return claimNew, index.StoredSend{}, nil
	}
}

// pendingLocked finds c's send among those being stored: ok with
// claimWaiting (c waits for it) or with an error for an overlap. (d.mu held)
func (d *dedup) pendingLocked(c *ProduceCall, topic string, n uint64) (claimKind, *wire.Error, bool) {
	p := &c.In
	pp := d.pids[p.ProducerID]
	if pp == nil {
		return 0, nil, false
	}
	i := sort.Search(len(pp.sends), func(i int) bool { return pp.sends[i].seq+pp.sends[i].n > p.Seq })
	if i == len(pp.sends) || pp.sends[i].seq >= p.Seq+n {
		return 0, nil, false
	}
	s := pp.sends[i]
	if s.seq > p.Seq || p.Seq+n > s.seq+s.n || s.topic != topic {
		return 0, overlapErr(p, s.seq, s.n, s.topic), true
	}
	s.waiters = append(s.waiters, c)
	return claimWaiting, nil, true
}

func overlapErr(p *wire.Produce, seq, n uint64, topic string) *wire.Error {
	return &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf(
		"sequence numbers %d..%d of producer %x overlap an earlier send of other messages (%d..%d to %s)",
		p.Seq, p.Seq+uint64(max(p.Count, 1))-1, p.ProducerID, seq, seq+n-1, topic)}
}

// ackAt is the answer to the message with sequence number seq of a send
// answered with ack whose first message had first.
func ackAt(ack wire.ProduceAck, first, seq uint64) wire.ProduceAck {
	ack.Offset += seq - first
	return ack
}

// resolve ends the pending send s (its first copy was answered) and
// returns the retries waiting for it and the sequence number of s's first
// message (their answers: ackAt). The waiters' slice is valid until the
// next claim of this producer.
func (d *dedup) resolve(producer uint64, s *dedupSend) ([]*ProduceCall, uint64) {
	d.mu.Lock()
	defer d.mu.Unlock()
	w, first := s.waiters, s.seq
	if pp := d.pids[producer]; pp != nil {
		pp.resolved++
		i := sort.Search(len(pp.sends), func(i int) bool { return pp.sends[i].seq >= first })
		if i < len(pp.sends) && pp.sends[i] == s {
			pp.sends = append(pp.sends[:i], pp.sends[i+1:]...)
			clear(pp.sends[len(pp.sends):cap(pp.sends)][:1])
			if len(pp.sends) == 0 && len(d.pids) > 1024 {
				delete(d.pids, producer) // else kept, empty: no allocation at its next send
			}
			d.n--
		}
	}
	if len(w) > 0 {
		// The caller answers them after the lock is released: hand over a
		// copy, and keep s's slice for reuse.
		w = append([]*ProduceCall(nil), w...)
	}
	*s = dedupSend{waiters: s.waiters[:0]}
	if len(d.free) < 4096 {
		d.free = append(d.free, s)
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

// pending is the number of sends being stored.
func (d *dedup) pending() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.n
}

// producerStats are the producer table's producer ids and sends.
func (b *Broker) producerStats() (producers, sends int) {
	b.stMu.RLock()
	defer b.stMu.RUnlock()
	return b.st.Index.ProducerStats()
}
