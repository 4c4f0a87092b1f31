package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"github.com/quivermq/quiver/internal/fsutil"
	qlog "github.com/quivermq/quiver/log"
)

// The producer table: the idempotent sends the log holds, by producer id.
//
// A record stored for an idempotent send names it (producer id and first
// sequence number, log/record.go), and every record reaches Dispatch on
// every broker that holds it, the leader that took the send and the
// followers it was replicated to. So the table is derived from the log like
// the other indexes: a broker knows the sends its log holds after a restart
// (the snapshot below, then the log replayed from it) and after a failover
// (a follower took the same records). The leader answers a retry of a send
// found here with the stored copy's position instead of storing it again
// (daemon/broker/dedup.go).
//
// Bounds, all documented in docs/operations.md: ProducerWindow sends per
// producer id (the lowest sequence numbers go first; an eighth more between
// trims), only producerMin each while producerMaxTotal sends are held over
// every producer; MaxProducers producer ids (the one whose newest send is
// oldest goes first); a producer id whose newest send is older than
// ProducerExpiry is forgotten at the next sweep. A retry of a forgotten send
// is stored again. 48 bytes a send (StoredSend, the topic shared).
//
// Snapshot: at most every Options.ProducerSnapshotEvery (10 s; and at Close) the whole table
// is written atomically to Dir/producers with the log position it reflects,
// before the index checkpoint; the first checkpoint of a run that loaded
// none writes one, so an index checkpoint always has a snapshot at or
// before it. Open loads it and the log replays everything after min(that
// position, the index checkpoint). With none (an index written before
// producer tables existed: its log names no send) the replay from the
// checkpoint is all; an unreadable one (logged) is rebuilt from the whole
// log.
const (
	ProducerWindow   = 16384
	producerMin      = 1024
	producerMaxTotal = 1 << 20
	MaxProducers     = 4096
	ProducerExpiry   = 10 * time.Minute

	producersName = "producers"
)

// StoredSend is an idempotent send the log holds: messages Seq..Seq+Count-1
// of its producer, in one record.
type StoredSend struct {
	Seq       uint64
	Offset    uint64 // queue offset of its first message
	StoreTime int64  // unix nanoseconds
	Pos       int64  // its record's log position
	Size      int32  // its record's size
	Count     uint32
	Queue     uint32
	topic     uint32 // index in producerTable.topics
}

type producerSends struct {
	sends []StoredSend // by Seq
	last  int64        // newest StoreTime of sends
}

type producerTable struct {
	mu        sync.Mutex
	pids      map[uint64]*producerSends
	topics    []string          // interned topic names, by StoredSend.topic
	topicIDs  map[string]uint32 // the reverse
	total     int
	pos       int64 // end of the last record taken
	changed   bool  // since the last snapshot
	lastSweep time.Time
	lastSnap  time.Time
	every     time.Duration // between snapshots (Options.ProducerSnapshotEvery)
	now       func() time.Time
}

func newProducerTable() *producerTable {
	return &producerTable{pids: map[uint64]*producerSends{}, topicIDs: map[string]uint32{}, now: time.Now, every: 10 * time.Second}
}

// take adds the send stored in ri, if any. A send already held (a replay)
// is skipped. (t.mu held)
func (t *producerTable) take(ri *qlog.RecordInfo) {
	if end := ri.Pos + int64(ri.Size); end > t.pos {
		t.pos = end
	}
	if ri.ProducerID == 0 {
		return
	}
	// The record's store time is the clock here (no clock read per record;
	// a replay sweeps as the log's time then was).
	if now := time.Unix(0, ri.StoreTime); now.Sub(t.lastSweep) > time.Minute {
		t.sweep(now)
	}
	ps := t.pids[ri.ProducerID]
	if ps == nil {
		if len(t.pids) >= MaxProducers {
			t.evict()
		}
		ps = &producerSends{}
		t.pids[ri.ProducerID] = ps
	}
	count := max(ri.Count, 1)
	i := len(ps.sends)
	if i > 0 && ps.sends[i-1].Seq+uint64(ps.sends[i-1].Count) > ri.Seq {
		i = sort.Search(len(ps.sends), func(i int) bool { return ps.sends[i].Seq+uint64(ps.sends[i].Count) > ri.Seq })
	}
	if i < len(ps.sends) && ps.sends[i].Seq < ri.Seq+uint64(count) {
		return // held already (a replay), or a second copy: the first answers
	}
	topic, ok := t.topicIDs[string(ri.Topic)]
	if !ok {
		topic = uint32(len(t.topics))
		name := string(ri.Topic)
		t.topics = append(t.topics, name)
		t.topicIDs[name] = topic
	}
	ps.sends = append(ps.sends, StoredSend{})
	copy(ps.sends[i+1:], ps.sends[i:])
	ps.sends[i] = StoredSend{Seq: ri.Seq, Offset: ri.QueueOffset, StoreTime: ri.StoreTime, Pos: ri.Pos, Size: ri.Size,
		Count: count, Queue: ri.QueueID, topic: topic}
	ps.last = max(ps.last, ri.StoreTime)
	t.total++
	t.changed = true
	limit := ProducerWindow
	if t.total > producerMaxTotal {
		limit = producerMin
	}
	if n := len(ps.sends); n > limit+limit/8 {
		// In bulk: one move of the slice per limit/8 sends.
		drop := n - limit
		ps.sends = append(ps.sends[:0], ps.sends[drop:]...)
		t.total -= drop
	}
}

// evict forgets the producer whose newest send is the oldest. (t.mu held)
func (t *producerTable) evict() {
	var oldest uint64
	last := int64(-1)
	for id, ps := range t.pids {
		if last < 0 || ps.last < last {
			oldest, last = id, ps.last
		}
	}
	if last >= 0 {
		t.drop(oldest)
	}
}

// sweep forgets producers silent for ProducerExpiry. (t.mu held)
func (t *producerTable) sweep(now time.Time) {
	t.lastSweep = now
	cut := now.Add(-ProducerExpiry).UnixNano()
	for id, ps := range t.pids {
		if ps.last < cut {
			t.drop(id)
		}
	}
}

func (t *producerTable) drop(id uint64) {
	t.total -= len(t.pids[id].sends)
	delete(t.pids, id)
	t.changed = true
}

// lookup finds the held send that holds sequence number seq of producer
// pid. With the send, it reports whether [seq, seq+n) lies within it.
func (t *producerTable) lookup(pid, seq uint64, n uint32) (s StoredSend, topic string, found, within bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	ps := t.pids[pid]
	if ps == nil {
		return s, "", false, false
	}
	n = max(n, 1)
	i := sort.Search(len(ps.sends), func(i int) bool { return ps.sends[i].Seq+uint64(ps.sends[i].Count) > seq })
	if i == len(ps.sends) || ps.sends[i].Seq >= seq+uint64(n) {
		return s, "", false, false
	}
	s = ps.sends[i]
	return s, t.topics[s.topic], true, s.Seq <= seq && seq+uint64(n) <= s.Seq+uint64(s.Count)
}

// truncateFrom forgets the sends whose record lies at or after end.
func (t *producerTable) truncateFrom(end int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for id, ps := range t.pids {
		kept := ps.sends[:0]
		for _, s := range ps.sends {
			if s.Pos < end {
				kept = append(kept, s)
			}
		}
		if len(kept) < len(ps.sends) {
			t.total -= len(ps.sends) - len(kept)
			t.changed = true
		}
		ps.sends = kept
		if len(kept) == 0 {
			delete(t.pids, id)
		}
	}
	if t.pos > end {
		t.pos = end
	}
}

func (t *producerTable) stats() (producers, sends int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return len(t.pids), t.total
}

// Snapshot file: "QPS1" | pos i64 | topics u32 | (len u16, name)... |
// producers u32 | (id u64, sends u32, sends...)... | crc32c u32 of all
// before it. A send: seq u64, offset u64, store time i64, pos i64, size
// i32, count u32, queue u32, topic u32 (48 bytes).
const (
	producersMagic = "QPS1"
	storedSendSize = 48
)

// snapshot encodes the table if it changed since the last one and force
// is set or t.every has passed, or if none was written or loaded; nil if
// not due. pos is the log position it reflects.
func (t *producerTable) snapshot(force bool) (b []byte, pos int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.lastSnap.IsZero() && (!t.changed || !force && t.now().Sub(t.lastSnap) < t.every) {
		return nil, 0
	}
	return t.encodeLocked(), t.pos
}

// snapshotNow encodes the table whether or not a snapshot is due, and
// returns the position it reflects.
func (t *producerTable) snapshotNow() (b []byte, pos int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.encodeLocked(), t.pos
}

func (t *producerTable) encodeLocked() []byte {
	t.changed, t.lastSnap = false, t.now()
	le := binary.LittleEndian
	n := 4 + 8 + 4 + 4 + 4 + len(t.pids)*12 + t.total*storedSendSize
	for _, name := range t.topics {
		n += 2 + len(name)
	}
	b := make([]byte, 0, n)
	b = append(b, producersMagic...)
	b = le.AppendUint64(b, uint64(t.pos))
	b = le.AppendUint32(b, uint32(len(t.topics)))
	for _, name := range t.topics {
		b = le.AppendUint16(b, uint16(len(name)))
		b = append(b, name...)
	}
	b = le.AppendUint32(b, uint32(len(t.pids)))
	for id, ps := range t.pids {
		b = le.AppendUint64(b, id)
		b = le.AppendUint32(b, uint32(len(ps.sends)))
		for _, s := range ps.sends {
			b = le.AppendUint64(b, s.Seq)
			b = le.AppendUint64(b, s.Offset)
			b = le.AppendUint64(b, uint64(s.StoreTime))
			b = le.AppendUint64(b, uint64(s.Pos))
			b = le.AppendUint32(b, uint32(s.Size))
			b = le.AppendUint32(b, s.Count)
			b = le.AppendUint32(b, s.Queue)
			b = le.AppendUint32(b, s.topic)
		}
	}
	return le.AppendUint32(b, crc32.Checksum(b, crcTable))
}

// errBadSnapshot: the producer snapshot is not one this code wrote.
var errBadSnapshot = errors.New("index: producer snapshot damaged")

// decodeProducers decodes a snapshot into a new table and returns the log
// position it reflects. It never panics on bad input.
func decodeProducers(b []byte) (*producerTable, int64, error) {
	le := binary.LittleEndian
	if len(b) < 4+8+4+4+4 || string(b[:4]) != producersMagic {
		return nil, 0, fmt.Errorf("%w: not a snapshot", errBadSnapshot)
	}
	body := b[:len(b)-4]
	if crc32.Checksum(body, crcTable) != le.Uint32(b[len(b)-4:]) {
		return nil, 0, fmt.Errorf("%w: checksum", errBadSnapshot)
	}
	t := newProducerTable()
	pos := int64(le.Uint64(body[4:]))
	if pos < 0 {
		return nil, 0, fmt.Errorf("%w: position %d", errBadSnapshot, pos)
	}
	t.pos = pos
	p := 12
	need := func(n int) bool { return len(body)-p >= n }
	if !need(4) {
		return nil, 0, fmt.Errorf("%w: short", errBadSnapshot)
	}
	nt := int(le.Uint32(body[p:]))
	p += 4
	if nt > len(body) { // each name takes at least 2 bytes
		return nil, 0, fmt.Errorf("%w: %d topics", errBadSnapshot, nt)
	}
	for i := 0; i < nt; i++ {
		if !need(2) {
			return nil, 0, fmt.Errorf("%w: short", errBadSnapshot)
		}
		l := int(le.Uint16(body[p:]))
		p += 2
		if l == 0 || l > qlog.MaxTopicLen || !need(l) {
			return nil, 0, fmt.Errorf("%w: topic name", errBadSnapshot)
		}
		name := string(body[p : p+l])
		p += l
		if _, dup := t.topicIDs[name]; dup {
			return nil, 0, fmt.Errorf("%w: topic %q twice", errBadSnapshot, name)
		}
		t.topicIDs[name] = uint32(len(t.topics))
		t.topics = append(t.topics, name)
	}
	if !need(4) {
		return nil, 0, fmt.Errorf("%w: short", errBadSnapshot)
	}
	np := int(le.Uint32(body[p:]))
	p += 4
	if np > MaxProducers {
		return nil, 0, fmt.Errorf("%w: %d producers", errBadSnapshot, np)
	}
	for i := 0; i < np; i++ {
		if !need(12) {
			return nil, 0, fmt.Errorf("%w: short", errBadSnapshot)
		}
		id, ns := le.Uint64(body[p:]), int(le.Uint32(body[p+8:]))
		p += 12
		if id == 0 || t.pids[id] != nil || ns == 0 || ns > ProducerWindow+ProducerWindow/8 || !need(ns*storedSendSize) {
			return nil, 0, fmt.Errorf("%w: producer %x", errBadSnapshot, id)
		}
		ps := &producerSends{sends: make([]StoredSend, ns)}
		for j := range ps.sends {
			s := StoredSend{Seq: le.Uint64(body[p:]), Offset: le.Uint64(body[p+8:]), StoreTime: int64(le.Uint64(body[p+16:])),
				Pos: int64(le.Uint64(body[p+24:])), Size: int32(le.Uint32(body[p+32:])), Count: le.Uint32(body[p+36:]),
				Queue: le.Uint32(body[p+40:]), topic: le.Uint32(body[p+44:])}
			p += storedSendSize
			if s.Count == 0 || s.Seq+uint64(s.Count) < s.Seq || s.topic >= uint32(len(t.topics)) || s.Pos < 0 || s.Size <= 0 ||
				j > 0 && ps.sends[j-1].Seq+uint64(ps.sends[j-1].Count) > s.Seq {
				return nil, 0, fmt.Errorf("%w: producer %x send %d", errBadSnapshot, id, j)
			}
			ps.sends[j] = s
			ps.last = max(ps.last, s.StoreTime)
		}
		t.pids[id] = ps
		t.total += ns
	}
	if p != len(body) {
		return nil, 0, fmt.Errorf("%w: %d bytes left over", errBadSnapshot, len(body)-p)
	}
	return t, pos, nil
}

// loadProducers reads the snapshot in dir: the table and its position; or
// an empty table and -1 when there is none (a new index, or one written
// before producer tables existed, whose log names no sends); or an empty
// table and -2 when it cannot be read (the log must be replayed from its
// start to rebuild the table).
func loadProducers(fs fsutil.FS, dir string, logger interface{ Warn(string, ...any) }) (*producerTable, int64) {
	b, err := fsutil.ReadFile(fs, filepath.Join(dir, producersName))
	if errors.Is(err, os.ErrNotExist) {
		return newProducerTable(), -1
	}
	var t *producerTable
	var pos int64
	if err == nil {
		t, pos, err = decodeProducers(b)
	}
	if err != nil {
		logger.Warn("producer snapshot unreadable: the producer table is rebuilt from the whole log", "err", err)
		return newProducerTable(), -2
	}
	return t, pos
}

func writeProducers(fs fsutil.FS, dir string, b []byte) error {
	if err := fsutil.WriteAtomic(fs, filepath.Join(dir, producersName), b, 0o644); err != nil {
		return fmt.Errorf("index: producer snapshot: %w", err)
	}
	return nil
}

// StoredSend finds the send the log holds with sequence number seq of
// producer pid, and its topic. within says whether all of [seq, seq+n)
// lies in it (else the range overlaps it: not the same send).
func (idx *Index) StoredSend(pid, seq uint64, n uint32) (s StoredSend, topic string, found, within bool) {
	return idx.producers.lookup(pid, seq, n)
}

// ProducerStats are the producer ids and sends the producer table holds.
func (idx *Index) ProducerStats() (producers, sends int) { return idx.producers.stats() }
