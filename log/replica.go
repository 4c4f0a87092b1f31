package log

import (
	"errors"
	"fmt"
)

// Replication support: a leader reads runs of whole records with
// ReadChunk; a follower writes them, byte for byte and at the same
// positions, with AppendRawAsync. Both logs must use the same segment
// size. A segment's seal is not copied: the follower seals a segment
// itself when the leader's next chunk starts at the next segment's base,
// which writes the same marker.

// ErrPosition is returned for a replicated append that does not continue
// the log where it ends.
var ErrPosition = errors.New("log: replicated bytes do not continue the log")

// Replicable is the end of what a leader may copy to its followers: what
// is readable and durable. A follower never holds a record its leader
// could lose in a crash (an async append not synced yet), so a leader
// that restarts and leads again never has less than its followers.
func (l *Log) Replicable() int64 { return min(l.readable(), l.durable.Load()) }

// ReadChunk reads whole records from pos (a record boundary the reader got
// from an earlier ReadChunk, or the log's start or end) into dst (grown if
// needed), up to max bytes but at least one record when one is readable,
// and never past the replicable end (Replicable) or a segment's end. It returns the
// records and the position of the next record: after the last one read,
// or the next segment's base when this segment ends there. An empty
// result with next == pos means nothing more is readable yet.
func (l *Log) ReadChunk(pos int64, max int, dst []byte) ([]byte, int64, error) {
	end := l.Replicable()
	if pos < l.start.Load() || pos > end {
		return dst[:0], pos, fmt.Errorf("%w: %d outside [%d, %d]", ErrOutOfRange, pos, l.start.Load(), end)
	}
	segSize := l.opts.SegmentSize
	segEnd := (pos/segSize + 1) * segSize
	if pos == end {
		return dst[:0], pos, nil
	}
	// At a segment's tail: a seal, or a gap too small for a header.
	if segEnd-pos < HeaderSize {
		return dst[:0], segEnd, nil
	}
	var hdr [4]byte
	if !l.readRing(pos, hdr[:]) {
		if err := l.readFile(pos, hdr[:]); err != nil {
			return dst[:0], pos, err
		}
	}
	switch n := RecordSize(hdr[:]); {
	case n == -1:
		return dst[:0], segEnd, nil // sealed: the next record is at the next base
	case n < HeaderSize || n > MaxRecordSize:
		return dst[:0], pos, fmt.Errorf("%w: no record at position %d", ErrCorrupt, pos)
	case n > max:
		max = n // a record larger than max is read whole
	}
	limit := min(end, segEnd, pos+int64(max))
	if cap(dst) < int(limit-pos) {
		dst = make([]byte, limit-pos)
	}
	dst = dst[:limit-pos]
	if !l.readRing(pos, dst) {
		if err := l.readFile(pos, dst); err != nil {
			return dst[:0], pos, err
		}
	}
	// Keep whole records only.
	off := 0
	for off+4 <= len(dst) {
		n := RecordSize(dst[off:])
		if n == -1 {
			return dst[:off], segEnd, nil
		}
		if n < HeaderSize || off+n > len(dst) {
			break
		}
		off += n
	}
	if off == 0 {
		return dst[:0], pos, fmt.Errorf("%w: no whole record at position %d", ErrCorrupt, pos)
	}
	return dst[:off], pos + int64(off), nil
}

// AppendRawAsync appends records copied from a leader's log at pos, which
// must be where this log ends (or the next segment's base: this log's
// current segment is then sealed). data holds whole records, as ReadChunk
// returned them; each is verified (CRC, format, queue offsets that continue
// this log's) before anything is written. cb gets the position after the
// records once they are acknowledged by the log's durability rules (synced
// in a Sync log); it runs on one of the log's goroutines and must not
// block. data must not change until cb runs.
func (l *Log) AppendRawAsync(pos int64, data []byte, cb func(end int64, err error)) error {
	if len(data) == 0 {
		return fmt.Errorf("%w: no records", ErrInvalid)
	}
	segSize := l.opts.SegmentSize
	if pos+int64(len(data)) > (pos/segSize+1)*segSize {
		return fmt.Errorf("%w: [%d, %d) crosses a segment end", ErrPosition, pos, pos+int64(len(data)))
	}
	var rec Record
	for off := 0; off < len(data); {
		n, err := DecodeRecord(data[off:], &rec)
		if err != nil {
			return fmt.Errorf("replicated bytes at %d: %w", pos+int64(off), err)
		}
		off += n
	}
	if len(data) > l.opts.maxRecord()+l.opts.MaxBatchBytes {
		return fmt.Errorf("%w: %d replicated bytes in one append", ErrTooLarge, len(data))
	}
	r := getRequest()
	r.raw, r.rawPos = data, pos
	r.rawCB = cb
	r.cb = r.rawDone
	if err := l.enqueue(r); err != nil {
		putRequest(r)
		return err
	}
	return nil
}

// rawDone adapts a request's completion to AppendRawAsync's callback.
func (r *request) rawDone(res AppendResult, err error) {
	r.rawCB(res.Pos+int64(res.Size), err)
}

// checkRaw verifies that the replicated requests of a batch continue the
// log: each starts where the previous one (or the log) ends, or at the
// next segment's base, and its records continue every queue's offsets.
// It returns the requests that do; the others (and every replicated one
// after the first that does not) are finished with the error.
func (l *Log) checkRaw(reqs []*request) []*request {
	segSize := l.opts.SegmentSize
	end := l.fl.pos
	next := map[queueKey]uint64{} // offsets this batch moves, over fl.queues
	var broken error
	kept := reqs[:0]
	for _, r := range reqs {
		if r.raw == nil {
			kept = append(kept, r)
			if broken == nil {
				end = -1 // positions are laid out later; raw after it cannot be checked
			}
			continue
		}
		if broken == nil {
			switch {
			case end < 0:
				broken = fmt.Errorf("%w: a replicated append after a local one in one batch", ErrPosition)
			case r.rawPos != end && r.rawPos != (end/segSize+1)*segSize:
				broken = fmt.Errorf("%w: at %d, but the log ends at %d", ErrPosition, r.rawPos, end)
			}
		}
		if broken == nil {
			var rec Record
			for off := 0; off < len(r.raw) && broken == nil; {
				n, _ := DecodeRecord(r.raw[off:], &rec) // verified at enqueue
				k := queueKey{topic: string(rec.Topic), id: rec.QueueID}
				want, ok := next[k]
				if !ok {
					want, ok = l.fl.queues[k]
				}
				if ok && rec.QueueOffset != want {
					broken = fmt.Errorf("%w: %s/%d offset %d at position %d, this log's next is %d",
						ErrPosition, rec.Topic, rec.QueueID, rec.QueueOffset, r.rawPos+int64(off), want)
				}
				next[k] = rec.QueueOffset + uint64(rec.Count)
				off += n
			}
		}
		if broken != nil {
			r.err = broken
			r.finish()
			continue
		}
		end = r.rawPos + int64(len(r.raw))
		kept = append(kept, r)
	}
	return kept
}

// layoutRaw copies a replicated request's records into the ring at its
// position (sealing the previous segment when it starts a new one) and
// records them for dispatch.
func (l *Log) layoutRaw(r *request, pos int64, b *batch) int64 {
	if r.rawPos != pos {
		l.seal(pos, r.rawPos)
	}
	l.ringCopyIn(r.rawPos, r.raw)
	var rec Record
	for off := 0; off < len(r.raw); {
		n, _ := DecodeRecord(r.raw[off:], &rec)
		k := queueKey{topic: string(rec.Topic), id: rec.QueueID}
		if _, ok := l.fl.queues[k]; !ok {
			k.topic = string(rec.Topic)
		}
		l.fl.queues[k] = rec.QueueOffset + uint64(rec.Count)
		var ri RecordInfo
		infoOf(&ri, r.rawPos+int64(off), &rec)
		b.infos = append(b.infos, ri)
		off += n
	}
	r.res = AppendResult{Pos: r.rawPos, Size: int32(len(r.raw))}
	return r.rawPos + int64(len(r.raw))
}
