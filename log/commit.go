package log

import (
	"fmt"
	"sync"
	"time"

	"github.com/quivermq/quiver/ioengine"
)

// Group commit.
//
// Appenders hand requests to one flusher goroutine through a bounded channel.
// The flusher takes every request that is waiting (up to MaxBatchBytes), lays
// the records out at the tail (rolling to a new segment when one does not
// fit), encodes them into the ring, and hands the engine one Flush: the dirty
// pages from the last partial page to the new end, O_DIRECT, followed by one
// sync ordered after them. Only then are the records dispatched to the indexes
// and the appenders acknowledged. Whatever arrived during that flush forms the
// next batch, so one sync covers as many appends as were concurrent with the
// previous one: the sync cost is shared, not multiplied.
//
// The partial last page is rewritten by the next flush with the same bytes
// before the new ones, so a torn page write can only damage bytes that were
// never acknowledged.
//
// After any error the log fails: the batch and every later append get
// ErrFailed, and nothing more is written. What is on disk is then decided by
// recovery at the next Open, never guessed by retrying a write whose outcome
// is unknown (a failed fsync may have dropped dirty pages).

type request struct {
	msg      *Message
	res      AppendResult
	err      error
	cb       func(AppendResult, error)
	done     chan struct{}
	size     int           // encoded size
	enqueued time.Duration // intake time (see intake.now)
}

var requestPool = sync.Pool{New: func() any { return &request{done: make(chan struct{}, 1)} }}

func getRequest() *request { return requestPool.Get().(*request) }

func putRequest(r *request) {
	r.msg, r.err, r.res, r.cb = nil, nil, AppendResult{}, nil
	requestPool.Put(r)
}

// finish acknowledges (or fails) r. A callback request goes back to the
// pool once its callback returns; Append puts its own back.
func (r *request) finish() {
	if cb := r.cb; cb != nil {
		cb(r.res, r.err)
		putRequest(r)
		return
	}
	r.done <- struct{}{}
}

// flusherState is owned by the flusher goroutine (and by recovery before it).
type flusherState struct {
	pos       int64 // end of the laid-out records (== Written after a commit)
	flushedTo int64 // end of what has been handed to the engine
	unsynced  bool  // async mode: written but not synced
	lastSync  time.Time
	lastCp    time.Time
	queues    map[queueKey]uint64 // next queue offset per queue
	batch     []*request
	infos     []RecordInfo
	ops       []ioengine.WriteOp
	dirty     []*segment    // segments written since the last sync
	lastBatch int           // requests in the previous commit
	lastFlush time.Duration // duration of the previous engine flush
	timer     *time.Timer   // linger timer, reused
}

func (f *flusherState) snapshot(pos int64) checkpoint {
	q := make(map[queueKey]uint64, len(f.queues))
	for k, v := range f.queues {
		q[k] = v
	}
	return checkpoint{pos: pos, queues: q}
}

func (l *Log) run() {
	defer close(l.done)
	// Async appends (the log's mode, or asked per message) are synced
	// within AsyncInterval.
	t := time.NewTicker(l.opts.AsyncInterval / 2)
	defer t.Stop()
	for {
		select {
		case <-l.in.ready:
			l.gather()
		case ch := <-l.syncs:
			if l.fl.unsynced {
				l.syncDirty()
			}
			ch <- l.Err()
		case <-t.C:
			if l.fl.unsynced && time.Since(l.fl.lastSync) >= l.opts.AsyncInterval/2 {
				l.syncDirty()
			}
		case <-l.closing:
			// Close holds no appender: whatever is queued is all there is.
			for l.in.len() > 0 {
				l.gather()
			}
			if l.fl.unsynced {
				l.syncDirty()
			}
			return
		}
	}
}

// gather builds a batch from every waiting request, and commits it.
//
// Appenders acknowledged by one commit come straight back with their next
// append, but only after the flusher has already taken whatever was waiting:
// without care, concurrent appenders split into two halves that commit in
// alternation, each paying two flushes per append. So when fewer requests are
// waiting than the previous commit acknowledged, the flusher lingers for the
// rest, at most half of the last flush's duration (and never above
// maxLinger): a single appender never waits, and a lone append waits at most
// a fraction of the sync it is about to share.
func (l *Log) gather() {
	b, bytes := l.in.pop(l.fl.batch[:0], 0, l.opts.MaxBatchBytes)
	if len(b) == 0 {
		return // the janitor expired what was waiting
	}
	if want := l.fl.lastBatch; len(b) < want && bytes < l.opts.MaxBatchBytes {
		if linger := min(l.fl.lastFlush/2, maxLinger); linger > 0 {
			deadline := time.Now().Add(linger)
			for len(b) < want && bytes < l.opts.MaxBatchBytes {
				wait := time.Until(deadline)
				if wait <= 0 {
					break
				}
				if l.fl.timer == nil {
					l.fl.timer = time.NewTimer(wait)
				} else {
					l.fl.timer.Reset(wait)
				}
				select {
				case <-l.in.ready:
					l.fl.timer.Stop()
					b, bytes = l.in.pop(b, bytes, l.opts.MaxBatchBytes)
					continue
				case <-l.fl.timer.C:
				}
				break
			}
		}
	}
	l.fl.batch = b
	l.fl.lastBatch = len(b)
	l.commit(b)
	for i := range b {
		b[i] = nil
	}
}

// maxLinger bounds how long the flusher waits to fill a batch.
const maxLinger = 200 * time.Microsecond

func (l *Log) commit(batch []*request) {
	if err := l.failure.Load(); err != nil {
		l.finishAll(batch, fmt.Errorf("%w: %w", ErrFailed, *err))
		return
	}
	if err := l.layout(batch); err != nil {
		l.fail(err)
		l.finishAll(batch, fmt.Errorf("%w: %w", ErrFailed, err))
		return
	}
	end := l.fl.pos
	l.written.Store(end)
	// One append that asks for sync makes the whole commit sync: it is
	// never acknowledged before its bytes are synced.
	sync := false
	for _, r := range batch {
		if r.msg.wantsSync(l.opts.Durability) {
			sync = true
			break
		}
	}
	if err := l.flushTo(end, sync); err != nil {
		l.fail(err)
		l.finishAll(batch, fmt.Errorf("%w: %w", ErrFailed, err))
		return
	}
	now := nowNanos()
	if sync {
		l.durable.Store(end)
		l.durableAt.Store(now)
		l.afterSync(end)
	}
	l.visible.Store(end)
	if d := l.opts.Dispatcher; d != nil {
		if err := d.Dispatch(l.fl.infos); err != nil {
			err = fmt.Errorf("log: dispatch: %w", err)
			l.fail(err)
			l.finishAll(batch, fmt.Errorf("%w: %w", ErrFailed, err))
			return
		}
	}
	l.dispatched.Store(end)
	l.dispatchedAt.Store(now)
	for _, r := range batch {
		r.finish()
	}
	if l.fl.unsynced && time.Since(l.fl.lastSync) >= l.opts.AsyncInterval {
		l.syncDirty()
	}
}

func (l *Log) finishAll(batch []*request, err error) {
	for _, r := range batch {
		r.err = err
		r.finish()
	}
}

// layout assigns positions and queue offsets to the batch and encodes it
// into the ring.
func (l *Log) layout(batch []*request) error {
	segSize := l.opts.SegmentSize
	pos := l.fl.pos
	// First pass: positions, so that the ring's low mark can move once.
	end := pos
	for _, r := range batch {
		n := int64(r.msg.EncodedSize())
		segEnd := (end/segSize + 1) * segSize
		if end+n > segEnd {
			end = segEnd
		}
		r.res.Pos = end
		r.res.Size = int32(n)
		end += n
	}
	// A batch is at most half a segment, so it spans at most two: roll once,
	// before touching the ring, so that a failed roll leaves the tail as it was.
	if last := batch[len(batch)-1].res.Pos / segSize * segSize; last > l.activeBase() {
		if err := l.roll(last); err != nil {
			return err
		}
	}

	l.ringMu.Lock()
	if low := end - int64(len(l.ring)) + 2*ioengine.Alignment; low > l.ringMu.low {
		l.ringMu.low = low
	}
	l.ringMu.Unlock()

	storeTime := l.opts.Now().UnixNano()
	infos := l.fl.infos[:0]
	for _, r := range batch {
		if r.res.Pos != pos {
			l.seal(pos, r.res.Pos)
		}
		m := r.msg
		k := queueKey{topic: m.Topic, id: m.QueueID}
		qoff, ok := l.fl.queues[k]
		if !ok {
			k.topic = string([]byte(m.Topic)) // own the key, not the caller's string
		}
		l.fl.queues[k] = qoff + uint64(m.count())
		r.res.QueueOffset = qoff
		r.res.StoreTime = storeTime
		l.encodeAt(r.res.Pos, m, qoff, storeTime)
		infos = append(infos, RecordInfo{
			Pos: r.res.Pos, Size: r.res.Size, Topic: stringBytes(m.Topic), QueueID: m.QueueID,
			QueueOffset: qoff, Count: m.count(), StoreTime: storeTime, Flags: m.Flags, Key: m.Key, Tags: m.Tags,
		})
		pos = r.res.Pos + int64(r.res.Size)
	}
	l.fl.infos = infos
	l.fl.pos = pos
	l.stats.records.Add(int64(len(batch)))
	return nil
}

// seal marks the end of a segment at pos, whose next record is at next.
func (l *Log) seal(pos, next int64) {
	l.ringClear(pos, next)
	if next-pos >= 4 {
		var m [4]byte
		m[0], m[1], m[2], m[3] = 0xFF, 0xFF, 0xFF, 0xFF
		l.ringCopyIn(pos, m[:])
	}
}

// encodeAt encodes m's record into the ring at pos.
func (l *Log) encodeAt(pos int64, m *Message, qoff uint64, storeTime int64) {
	n := m.EncodedSize()
	i := int(pos % int64(len(l.ring)))
	if i+n <= len(l.ring) {
		encodeRecord(l.ring[i:i+n], m, qoff, storeTime)
		return
	}
	tmp := make([]byte, n) // rare: a record that wraps the ring
	encodeRecord(tmp, m, qoff, storeTime)
	l.ringCopyIn(pos, tmp)
}

// ringClear zeroes the ring bytes of [from, to).
func (l *Log) ringClear(from, to int64) {
	for from < to {
		i := from % int64(len(l.ring))
		n := min(to-from, int64(len(l.ring))-i)
		clear(l.ring[i : i+n])
		from += n
	}
}

func (l *Log) ringCopyIn(pos int64, src []byte) {
	i := int(pos % int64(len(l.ring)))
	n := copy(l.ring[i:], src)
	copy(l.ring, src[n:])
}

// flushTo writes the pages from the last partial page to end, and syncs.
func (l *Log) flushTo(end int64, sync bool) error {
	const page = ioengine.Alignment
	from := l.fl.flushedTo / page * page
	// Zero the rest of the last page so no stale ring bytes reach the disk.
	if tail := end % page; tail != 0 {
		i := int(end % int64(len(l.ring)))
		clear(l.ring[i : i+int(page-tail)])
	}
	ops := l.fl.ops[:0]
	segSize := l.opts.SegmentSize
	l.segMu.RLock()
	segs := l.segMu.segs
	for p := from; p < end; {
		base := p / segSize * segSize
		seg := findSegment(segs, base)
		if seg == nil {
			l.segMu.RUnlock()
			return fmt.Errorf("log: no segment for position %d", p)
		}
		stop := min(end, base+segSize)
		stop = (stop + page - 1) / page * page
		for p < stop {
			i := p % int64(len(l.ring))
			n := min(stop-p, int64(len(l.ring))-i)
			ops = append(ops, ioengine.WriteOp{File: seg.file, Buf: l.ring[i : i+n], Off: p - base})
			p += n
		}
		l.markDirty(seg)
		if p < end {
			p = base + segSize // the rest of this segment is unused (sealed)
		}
	}
	l.segMu.RUnlock()
	l.fl.ops = ops
	l.claimZeroed(end)
	t0 := time.Now()
	if err := l.eng.Flush(ops, sync); err != nil {
		return fmt.Errorf("log: flush [%d, %d): %w", from, end, err)
	}
	l.fl.lastFlush = time.Since(t0)
	l.stats.flushNanos.Add(int64(l.fl.lastFlush))
	l.stats.commits.Add(1)
	if sync {
		l.stats.syncs.Add(1)
	}
	l.fl.flushedTo = end
	l.kickZeroer(end)
	if sync {
		// Async appends written by earlier flushes into a segment this one
		// did not touch (before a roll) are covered by this sync too.
		first := from / segSize * segSize
		for _, s := range l.fl.dirty {
			if s.base < first {
				if err := s.file.Sync(); err != nil {
					return fmt.Errorf("log: sync %s: %w", s.file.Name(), err)
				}
			}
		}
		l.fl.dirty = l.fl.dirty[:0]
		l.fl.unsynced = false
		l.fl.lastSync = time.Now()
	} else {
		l.fl.unsynced = true
	}
	return nil
}

func (l *Log) markDirty(s *segment) {
	for _, d := range l.fl.dirty {
		if d == s {
			return
		}
	}
	l.fl.dirty = append(l.fl.dirty, s)
}

// syncDirty syncs every segment written since the last sync (async mode).
func (l *Log) syncDirty() {
	if l.failure.Load() != nil {
		return
	}
	for _, s := range l.fl.dirty {
		if err := s.file.Sync(); err != nil {
			l.fail(fmt.Errorf("log: sync %s: %w", s.file.Name(), err))
			return
		}
	}
	l.fl.dirty = l.fl.dirty[:0]
	l.stats.syncs.Add(1)
	l.fl.unsynced = false
	l.fl.lastSync = time.Now()
	end := l.fl.flushedTo
	l.durable.Store(end)
	l.durableAt.Store(nowNanos())
	l.afterSync(end)
}

// afterSync hands a checkpoint to the checkpointer when one is due.
func (l *Log) afterSync(durable int64) {
	if time.Since(l.fl.lastCp) < l.opts.CheckpointInterval {
		return
	}
	select {
	case l.cps <- l.fl.snapshot(durable):
		l.fl.lastCp = time.Now()
	default: // the previous one is still being written
	}
}

func (l *Log) activeBase() int64 {
	l.segMu.RLock()
	defer l.segMu.RUnlock()
	return l.segMu.segs[len(l.segMu.segs)-1].base
}

// roll creates and preallocates the segment at base and makes it active.
func (l *Log) roll(base int64) error {
	l.segMu.Lock()
	s := l.segMu.next
	l.segMu.next = nil
	l.segMu.Unlock()
	if s == nil || s.base != base {
		if s != nil {
			s.deleted.Store(true)
			s.release()
		}
		var err error
		if s, err = l.createSegment(base); err != nil {
			return err
		}
	}
	l.segMu.Lock()
	l.segMu.segs = append(l.segMu.segs, s)
	l.segMu.Unlock()
	return nil
}

func (l *Log) createSegment(base int64) (*segment, error) {
	name := segmentName(l.opts.Dir, base)
	f, err := l.eng.Open(name)
	if err != nil {
		return nil, fmt.Errorf("log: create segment: %w", err)
	}
	if err := f.Allocate(l.opts.SegmentSize); err != nil {
		f.Close()
		return nil, fmt.Errorf("log: preallocate %s: %w", name, err)
	}
	// The new name must survive a crash along with the data written to it.
	if err := syncDir(l.opts.Dir); err != nil {
		f.Close()
		return nil, fmt.Errorf("log: sync dir: %w", err)
	}
	s := &segment{base: base, file: f}
	s.refs.Store(1)
	return s, nil
}

func findSegment(segs []*segment, base int64) *segment {
	for i := len(segs) - 1; i >= 0; i-- {
		if segs[i].base == base {
			return segs[i]
		}
		if segs[i].base < base {
			return nil
		}
	}
	return nil
}
