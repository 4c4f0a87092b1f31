package log

import (
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/quivermq/quiver/ioengine"
)

// Recovery.
//
// The checkpoint names a position that was synced and verified; recovery
// trusts what lies before it and verifies every record after it (length,
// CRC32C, field bounds). The first record that fails is either the torn tail
// of the last group commits, which were never acknowledged and are truncated,
// or damage to data that was acknowledged, on which the log refuses to open.
// It is the tail only when all of these hold:
//
//   - it lies at or after the checkpoint;
//   - at most one segment follows its segment (a group commit spans two);
//   - nothing but zeros lies more than maxUnsynced group commits beyond it
//     (the commits written and not synced cannot reach further);
//   - the valid records after it belong to at most maxUnsynced group
//     commits (see commitsAfter). Its own commit may be one of them: the
//     next commit's write begins by rewriting the torn commit's last
//     partial page, and pages land in any order, so records of the torn
//     commit can follow the damage. The price: damage to the last records
//     of a synced commit, followed by no more than maxUnsynced commits, is
//     taken for a torn tail; damage with more after it is refused.
//
// Those bounds hold only while every commit is synced before the next two:
// once a run commits a batch without syncing it (async mode or async
// appends) its checkpoints say so, and then any damage at or after the
// checkpoint is an unsynced tail, whatever follows it (a power cut keeps,
// drops or tears each unsynced write independently).
//
// Repair (Options.Repair) truncates at the first bad record whatever lies
// after it; it is the operator's explicit choice, named in the refusal.

// recover opens the segments, finds the end of valid data and prepares the
// flusher's state. It runs before the flusher starts.
func (l *Log) recover() error {
	dir, segSize := l.opts.Dir, l.opts.SegmentSize
	bases, err := listSegments(dir)
	if err != nil {
		return fmt.Errorf("log: %w", err)
	}
	l.fl.queues = map[queueKey]uint64{}
	l.fl.async = l.opts.Durability == Async
	if len(bases) == 0 {
		s, err := l.createSegment(0)
		if err != nil {
			return err
		}
		l.segMu.segs = []*segment{s}
		return l.finishRecovery(0, false)
	}
	for _, b := range bases {
		if b%segSize != 0 {
			return fmt.Errorf("log: segment %s is not at a multiple of the segment size %d (was SegmentSize changed?)", segmentName(dir, b), segSize)
		}
		f, err := l.eng.Open(segmentName(dir, b))
		if err != nil {
			return fmt.Errorf("log: open segment: %w", err)
		}
		s := &segment{base: b, file: f, eng: l.eng}
		s.refs.Store(1)
		l.segMu.segs = append(l.segMu.segs, s)
	}
	cp, ok, err := readCheckpoint(l.opts.FS, dir)
	if err != nil {
		l.logger.Warn("checkpoint unreadable; verifying the whole log", "err", err)
	}
	segs := l.segMu.segs
	for i := 1; i < len(segs); i++ {
		if segs[i].base == segs[i-1].base+segSize {
			continue
		}
		if !ok || cp.pos < segs[i].base {
			return fmt.Errorf("%w: segment %s is missing (the log jumps from %s to %s)", ErrCorrupt,
				segmentName(dir, segs[i-1].base+segSize), segs[i-1].file.Name(), segs[i].file.Name())
		}
		// The checkpoint lies after the gap: the segments before it were
		// being deleted by retention, and a crash kept the removal of a
		// later one but not theirs (a reader held them longer). Finish it.
		for _, s := range segs[:i] {
			l.logger.Warn("log: removing a segment retention had deleted, which the crash brought back (a later one is gone)",
				"file", s.file.Name(), "missing", segmentName(dir, segs[i-1].base+segSize))
			s.deleted.Store(true)
			s.release()
		}
		segs = segs[i:]
		l.segMu.segs = segs
		i = 0
	}
	l.start.Store(segs[0].base)

	from, trusted := segs[0].base, int64(-1)
	// Written in async mode (by this configuration or, says the checkpoint,
	// by the run that crashed): any number of commits after the checkpoint
	// may have been unsynced, so the torn tail is not bounded.
	l.unbounded = l.opts.Durability == Async || ok && cp.async
	if ok {
		for k, v := range cp.queues {
			l.fl.queues[k] = v
		}
		if cp.pos >= segs[0].base && cp.pos <= segs[len(segs)-1].base+segSize {
			from, trusted = cp.pos, cp.pos
		}
	}
	began := time.Now()
	end, dirty, err := l.findEnd(from, trusted)
	if err != nil {
		return err
	}
	if l.opts.Truncate && l.opts.TruncateTo < end {
		if err := l.truncateTo(l.opts.TruncateTo, end); err != nil {
			return err
		}
		end, dirty = l.opts.TruncateTo, true
	}
	l.logger.Info("log recovered", "dir", dir, "from", from, "end", end,
		"segments", len(l.segMu.segs), "took", time.Since(began).Round(time.Millisecond))
	return l.finishRecovery(end, dirty)
}

// findEnd verifies records from pos from and returns the end of valid data,
// dropping segments past it. dirty reports that bytes past the end must be
// cleared.
func (l *Log) findEnd(from, trusted int64) (end int64, dirty bool, err error) {
	segSize := l.opts.SegmentSize
	segs := l.segMu.segs
	i := int((from - segs[0].base) / segSize)
	if i == len(segs) { // the checkpoint is at the very end of the last segment
		i--
	}
	pos := from
	var rec Record
	for {
		seg := segs[i]
		segEnd := seg.base + segSize
		rd := newSegReader(seg.file, segSize)
		sealed := false
		for !sealed {
			if segEnd-pos < 4 {
				break
			}
			hdr, err := rd.peek(pos-seg.base, 4)
			if err != nil {
				return 0, false, err
			}
			n := RecordSize(hdr)
			if n == 0 {
				return l.endAt(i, pos, trusted, nil)
			}
			if n == -1 {
				break
			}
			b, err := rd.peek(pos-seg.base, n)
			if err == nil {
				_, err = DecodeRecord(b, &rec)
			}
			if err != nil {
				return l.endAt(i, pos, trusted, err)
			}
			k := queueKey{topic: string(rec.Topic), id: rec.QueueID}
			if next := rec.QueueOffset + uint64(rec.Count); next > l.fl.queues[k] {
				l.fl.queues[k] = next
			}
			pos += int64(n)
		}
		// Sealed: the next record is at the next segment's base.
		i++
		pos = segEnd
		if i == len(segs) {
			s, err := l.createSegment(segEnd)
			if err != nil {
				return 0, false, err
			}
			l.segMu.segs = append(l.segMu.segs, s)
			return segEnd, false, nil
		}
	}
}

// endAt decides whether the log may end at pos in segment i (bad is the
// decode error there, nil for clean zeros), and drops later segments.
func (l *Log) endAt(i int, pos, trusted int64, bad error) (int64, bool, error) {
	segs := l.segMu.segs
	seg := segs[i]
	refuse := func(why string) (int64, bool, error) {
		what := "unexpected end of data"
		if bad != nil {
			what = bad.Error()
		}
		return 0, false, fmt.Errorf("%w in %s at file offset %d (log position %d): %s; %s, so this is not a torn write "+
			"and Quiver will not discard it. Inspect the disk, then run `quiverd repair --data %s` to truncate the log "+
			"at position %d (every record from there on is lost)",
			ErrCorrupt, seg.file.Name(), pos-seg.base, pos, what, why, l.opts.Dir, pos)
	}
	if !l.opts.Repair {
		if bad != nil && pos < trusted {
			return refuse(fmt.Sprintf("it lies before the checkpoint at %d, which was synced", trusted))
		}
		if l.unbounded {
			// Whatever follows lies after the synced checkpoint and may all
			// have been unsynced: a power cut can leave holes anywhere in
			// it. (Damage to data that was synced there cannot be told
			// apart: in async mode it is truncated too, and said loudly.)
			if later := len(segs) - 1 - i; later > 0 || bad != nil {
				l.logger.Warn("log: async mode: truncating at the first bad record after the checkpoint; what follows was not synced, or is lost",
					"file", seg.file.Name(), "offset", pos-seg.base, "pos", pos, "later_segments", later, "reason", bad)
			}
		} else if why, err := l.beyondTornTail(i, pos); err != nil {
			return 0, false, err
		} else if why != "" {
			return refuse(why)
		}
	}
	dirty := bad != nil
	if bad != nil {
		l.logger.Warn("log: truncating torn tail", "file", seg.file.Name(), "offset", pos-seg.base, "pos", pos, "reason", bad)
	}
	for _, s := range segs[i+1:] {
		l.logger.Warn("log: removing segment past the end of valid data", "file", s.file.Name())
		s.deleted.Store(true)
		s.release()
		dirty = true
	}
	l.segMu.segs = segs[:i+1]
	if !dirty {
		// Garbage after a clean end (pages of a torn flush that landed out of order).
		d, err := l.hasData(seg, pos)
		if err != nil {
			return 0, false, err
		}
		dirty = d
	}
	return pos, dirty, nil
}

// beyondTornTail says why damage at pos in segment i cannot be the torn
// tail of a log whose commits were all synced before the next two ("" if
// it can be): what lies after it reaches past the commits that may have
// been written and not synced.
func (l *Log) beyondTornTail(i int, pos int64) (string, error) {
	segs := l.segMu.segs
	if later := len(segs) - 1 - i; later > 1 {
		return fmt.Sprintf("%d segments follow it", later), nil
	}
	// The syncer may have had maxUnsynced commits written and not synced
	// when the process died; their pages can land in any order.
	window := maxUnsynced*int64(l.opts.MaxBatchBytes) + 2*ioengine.Alignment
	far, err := l.hasData(segs[i], pos+window)
	if err == nil && !far && i+1 < len(segs) {
		far, err = l.hasData(segs[i+1], segs[i+1].base+window)
	}
	if err != nil {
		return "", err
	}
	if far {
		return fmt.Sprintf("data lies more than %d group commits beyond it", maxUnsynced), nil
	}
	n, err := l.commitsAfter(i, pos, window)
	if err != nil {
		return "", err
	}
	if n > maxUnsynced {
		return fmt.Sprintf("valid records of %d group commits follow it (at most %d commits are ever written and not synced)", n, maxUnsynced), nil
	}
	return "", nil
}

// commitsAfter counts the distinct group commits among the valid records
// found within window bytes after pos (in segment i and the next one). All
// records of one commit share its store time, and at most maxUnsynced
// commits are written and not synced at any time, the damaged one's own
// included, so records of more than maxUnsynced commits after a damaged
// record prove the damage hit acknowledged data. Records are found by trying
// every byte offset: the damaged record's length cannot be trusted.
func (l *Log) commitsAfter(i int, pos, window int64) (int, error) {
	segs := l.segMu.segs
	times := map[int64]bool{}
	scan := func(seg *segment, from, to int64) error {
		to = min(to, seg.base+l.opts.SegmentSize)
		if from >= to {
			return nil
		}
		buf := make([]byte, to-from)
		n, err := seg.file.ReadAt(buf, from-seg.base)
		if err != nil && n == 0 && !isEOF(err) {
			return fmt.Errorf("log: read %s: %w", seg.file.Name(), err)
		}
		buf = buf[:n]
		var rec Record
		for j := 0; j+HeaderSize <= len(buf); {
			if buf[j+8] != RecordMagic {
				j++
				continue
			}
			size, err := DecodeRecord(buf[j:], &rec)
			if err != nil {
				j++
				continue
			}
			times[rec.StoreTime] = true
			j += size
		}
		return nil
	}
	if err := scan(segs[i], pos+1, pos+window); err != nil {
		return 0, err
	}
	if i+1 < len(segs) {
		if err := scan(segs[i+1], segs[i+1].base, segs[i+1].base+window); err != nil {
			return 0, err
		}
	}
	return len(times), nil
}

// hasData reports whether the 64 KiB at log position pos (in seg) hold
// anything but zeros. Past the segment's end it reports false.
func (l *Log) hasData(seg *segment, pos int64) (bool, error) {
	off := pos - seg.base
	if off >= l.opts.SegmentSize {
		return false, nil
	}
	buf := make([]byte, min(64<<10, l.opts.SegmentSize-off))
	n, err := seg.file.ReadAt(buf, off)
	if err != nil && n == 0 && !isEOF(err) {
		return false, fmt.Errorf("log: read %s: %w", seg.file.Name(), err)
	}
	for _, c := range buf[:n] {
		if c != 0 {
			return true, nil
		}
	}
	return false, nil
}

// finishRecovery loads the last partial page into the ring, clears garbage
// past end when dirty, dispatches what the indexes lack, and sets positions.
func (l *Log) finishRecovery(end int64, dirty bool) error {
	const page = ioengine.Alignment
	segs := l.segMu.segs
	active := segs[len(segs)-1]
	pageStart := end / page * page
	if pageStart < active.base {
		pageStart = active.base
	}
	if end > pageStart {
		tmp := make([]byte, end-pageStart)
		if _, err := active.file.ReadAt(tmp, pageStart-active.base); err != nil && !isEOF(err) {
			return fmt.Errorf("log: read tail of %s: %w", active.file.Name(), err)
		}
		l.ringCopyIn(pageStart, tmp)
	}
	l.ringMu.low = pageStart
	l.fl.pos, l.fl.flushedTo = end, end
	if fi, err := active.file.Size(); err == nil && fi < l.opts.SegmentSize {
		if err := active.file.Allocate(l.opts.SegmentSize); err != nil {
			return fmt.Errorf("log: preallocate %s: %w", active.file.Name(), err)
		}
	}
	if dirty {
		if err := l.clearAfter(active, end); err != nil {
			return err
		}
	}
	l.written.Store(end)
	l.durable.Store(end)
	now := nowNanos()
	l.durableAt.Store(now)
	if err := l.resumeDispatcher(end); err != nil {
		return err
	}
	l.visible.Store(end)
	if l.dstall >= 0 {
		l.dispatched.Store(l.dstall)
	} else {
		l.dispatched.Store(end)
	}
	l.dispatchedAt.Store(now)
	if l.start.Load() < segs[0].base {
		l.start.Store(segs[0].base)
	}
	return writeCheckpoint(l.opts.FS, l.opts.Dir, l.fl.snapshot(end))
}

// clearAfter zeroes the segment from end on: the rest of end's page is
// rewritten from the ring, the pages after it are zero-ranged.
func (l *Log) clearAfter(seg *segment, end int64) error {
	const page = ioengine.Alignment
	pageStart := end / page * page
	if end%page != 0 {
		i := int(end % int64(len(l.ring)))
		clear(l.ring[i : i+int(page-end%page)])
		pi := pageStart % int64(len(l.ring))
		op := ioengine.WriteOp{File: seg.file, Buf: l.ring[pi : pi+page], Off: pageStart - seg.base}
		if err := l.eng.Flush([]ioengine.WriteOp{op}, false); err != nil {
			return fmt.Errorf("log: clear tail page: %w", err)
		}
	}
	from := (end + page - 1) / page * page
	if n := seg.base + l.opts.SegmentSize - from; n > 0 {
		err := zeroRange(seg.file.Fd(), from-seg.base, n)
		if errors.Is(err, errors.ErrUnsupported) {
			err = l.writeZeros(seg, from, min(n, int64(l.opts.MaxBatchBytes)+4*page))
		}
		if err != nil {
			return fmt.Errorf("log: clear %s after %d: %w", seg.file.Name(), from-seg.base, err)
		}
	}
	if err := seg.file.Sync(); err != nil {
		return fmt.Errorf("log: sync %s: %w", seg.file.Name(), err)
	}
	return l.eng.SyncDir(l.opts.Dir)
}

func (l *Log) writeZeros(seg *segment, from, n int64) error {
	z := ioengine.AlignedBuffer(1 << 20)
	for n > 0 {
		c := min(n, int64(len(z)))
		if _, err := seg.file.WriteAt(z[:c], from-seg.base); err != nil {
			return err
		}
		from += c
		n -= c
	}
	return nil
}

// resumeDispatcher re-dispatches what a Resumer has not durably indexed.
func (l *Log) resumeDispatcher(end int64) error {
	r, ok := l.opts.Dispatcher.(Resumer)
	if !ok {
		return nil
	}
	if err := r.Truncated(end); err != nil {
		return fmt.Errorf("log: index truncate: %w", err)
	}
	from := r.ResumeFrom()
	if from > end {
		from = end
	}
	err := l.redispatch(from, end)
	if IsNoSpace(err) {
		// Not a failure: the records are in the log; they are indexed once
		// the disk has room (see retryDispatch). Reads serve what is.
		l.logger.Warn("no room to index the recovered log: its newest records become visible once the disk has room", "from", from, "to", end, "err", err)
		l.dstall = max(from, l.start.Load())
		return nil
	}
	return err
}

// redispatch dispatches the records of [from, end) again, read from the
// segment files (the dispatcher takes what it has seen already).
func (l *Log) redispatch(from, end int64) error {
	infos := make([]RecordInfo, 0, 256)
	flush := func() error {
		if len(infos) == 0 {
			return nil
		}
		err := l.opts.Dispatcher.Dispatch(infos)
		infos = infos[:0]
		return err
	}
	// Slices in infos alias the scan buffer, which the next peek may move:
	// dispatch before every buffer refill by copying the variable fields.
	arena := make([]byte, 0, 1<<20)
	err := l.scan(from, end, func(pos int64, rec *Record) error {
		need := len(rec.Topic) + len(rec.Key) + len(rec.Tags)
		if len(infos) == cap(infos) || len(arena)+need > cap(arena) {
			if err := flush(); err != nil {
				return err
			}
			arena = arena[:0]
		}
		var ri RecordInfo
		infoOf(&ri, pos, rec)
		ri.Topic, arena = appendOwned(arena, rec.Topic)
		ri.Key, arena = appendOwned(arena, rec.Key)
		ri.Tags, arena = appendOwned(arena, rec.Tags)
		infos = append(infos, ri)
		return nil
	})
	if err == nil {
		err = flush()
	}
	if err != nil {
		return fmt.Errorf("log: rebuilding indexes from %d: %w", from, err)
	}
	return nil
}

func appendOwned(arena, b []byte) ([]byte, []byte) {
	if cap(arena)-len(arena) < len(b) {
		c := append([]byte(nil), b...)
		return c, arena
	}
	s := len(arena)
	arena = append(arena, b...)
	return arena[s:len(arena):len(arena)], arena
}

func isEOF(err error) bool { return errors.Is(err, io.EOF) }

var errStopScan = errors.New("log: stop scan")

// truncateTo cuts the recovered log (which ends at end) back to to, a
// record boundary: a follower whose log diverged from its new leader's
// drops what the leader does not have. The queue offsets are recomputed
// from the records that stay.
func (l *Log) truncateTo(to, end int64) error {
	start := l.start.Load()
	if to < start {
		return fmt.Errorf("%w: cannot truncate to %d, the log starts at %d", ErrOutOfRange, to, start)
	}
	l.fl.queues = map[queueKey]uint64{}
	boundary := to == start
	err := l.scan(start, end, func(pos int64, rec *Record) error {
		if pos >= to {
			boundary = boundary || pos == to
			return errStopScan
		}
		k := queueKey{topic: string(rec.Topic), id: rec.QueueID}
		l.fl.queues[k] = rec.QueueOffset + uint64(rec.Count)
		return nil
	})
	if err != nil && !errors.Is(err, errStopScan) {
		return fmt.Errorf("log: truncating to %d: %w", to, err)
	}
	if !boundary {
		// to may also be a segment's base right after a seal, which the
		// scan steps over without a record there.
		boundary = to%l.opts.SegmentSize == 0
	}
	if !boundary {
		return fmt.Errorf("%w: %d is not a record boundary", ErrOutOfRange, to)
	}
	base := to / l.opts.SegmentSize * l.opts.SegmentSize
	segs := l.segMu.segs
	keep := len(segs)
	for i, s := range segs {
		if s.base > base {
			keep = i
			break
		}
	}
	for _, s := range segs[keep:] {
		l.logger.Warn("log: removing segment past the truncation point", "file", s.file.Name())
		s.deleted.Store(true)
		s.release()
	}
	l.segMu.segs = segs[:keep]
	if last := l.segMu.segs[len(l.segMu.segs)-1]; last.base < base {
		s, err := l.createSegment(base)
		if err != nil {
			return err
		}
		l.segMu.segs = append(l.segMu.segs, s)
	}
	l.logger.Warn("log: truncated to follow the leader's log", "from", end, "to", to, "dropped_bytes", end-to)
	return nil
}
