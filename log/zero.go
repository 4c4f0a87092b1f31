package log

import (
	"time"

	"github.com/quivermq/quiver/ioengine"
)

// Zeroing ahead of the tail.
//
// Segments are preallocated with fallocate, which leaves unwritten extents:
// the first write to each extent must convert it, and the fdatasync that
// follows then has to commit that metadata through the file system journal.
// Measured on ext4 here, a 64 KiB write + fdatasync took 544 µs (p50) into
// fallocated space and 291 µs into space already written with zeros. So a
// background goroutine writes zeros (and syncs them) a little ahead of the
// tail, and the flusher's syncs find plain overwrites. It also creates the
// next segment before the flusher needs it, which takes segment creation
// off the commit path.
//
// The zeroer never writes where the flusher has written: zero.to is the end
// of the region that is zeroed or claimed by the flusher; the zeroer writes
// only at or above it and holds zero.mu while it does; the flusher, when its
// flush reaches above zero.to, takes zero.mu and raises zero.to first.

// zeroChunk is the zeroer's unit of work.
const zeroChunk = 1 << 20

func (l *Log) zeroAhead() int64 {
	if l.opts.ZeroAhead < 0 {
		return 0
	}
	return min(l.opts.ZeroAhead, l.opts.SegmentSize/2)
}

// claimZeroed is called by the flusher before it writes up to end.
func (l *Log) claimZeroed(end int64) {
	end = (end + ioengine.Alignment - 1) / ioengine.Alignment * ioengine.Alignment
	if end <= l.zero.to.Load() {
		return
	}
	l.zero.mu.Lock()
	if l.zero.to.Load() < end {
		l.zero.to.Store(end)
	}
	l.zero.mu.Unlock()
}

// kickZeroer wakes the zeroer when the tail comes near the zeroed region.
func (l *Log) kickZeroer(pos int64) {
	ahead := l.zeroAhead()
	if ahead == 0 || l.zero.to.Load()-pos > ahead/2 {
		return
	}
	select {
	case l.zero.kick <- struct{}{}:
	default:
	}
}

func (l *Log) zeroer() {
	defer l.bg.Done()
	zeros := ioengine.AlignedBuffer(zeroChunk)
	for {
		select {
		case <-l.zero.kick:
		case <-l.stopBg:
			return
		}
		for l.zeroOne(zeros) {
			select {
			case <-l.stopBg:
				return
			default:
			}
		}
	}
}

// zeroOne zeroes one chunk ahead of the tail; false when there is nothing
// to do (or it failed, which only costs speed: the zeroes are an optimisation).
func (l *Log) zeroOne(zeros []byte) bool {
	segSize := l.opts.SegmentSize
	target := l.written.Load() + l.zeroAhead()
	l.zero.mu.Lock()
	from := l.zero.to.Load()
	if from >= target {
		l.zero.mu.Unlock()
		return false
	}
	base := from / segSize * segSize
	seg := l.segmentForZeroing(base)
	if seg == nil {
		l.zero.mu.Unlock()
		return false
	}
	n := min(int64(zeroChunk), base+segSize-from)
	began := time.Now()
	_, err := seg.file.WriteAt(zeros[:n], from-base)
	if err == nil {
		l.zero.to.Store(from + n)
	}
	l.zero.mu.Unlock()
	if err == nil {
		err = seg.file.Sync()
	}
	seg.release()
	if err != nil {
		l.logger.Warn("zeroing ahead of the tail failed; appends stay correct but syncs get slower", "err", err)
		return false
	}
	l.stats.zeroNanos.Add(int64(time.Since(began)))
	return true
}

// segmentForZeroing returns the segment at base, acquired: the active one,
// or the next one, created here ahead of the flusher's roll.
func (l *Log) segmentForZeroing(base int64) *segment {
	l.segMu.RLock()
	segs := l.segMu.segs
	active := segs[len(segs)-1]
	next := l.segMu.next
	l.segMu.RUnlock()
	switch {
	case active.base == base:
		active.acquire()
		return active
	case base == active.base+l.opts.SegmentSize:
		if next == nil {
			if time.Since(l.zero.failedAt) < time.Second {
				return nil
			}
			s, err := l.createSegment(base)
			if err != nil {
				l.zero.failedAt = time.Now()
				if time.Since(l.zero.loggedAt) >= time.Minute {
					l.zero.loggedAt = l.zero.failedAt
					l.logger.Warn("creating the next segment ahead of time failed; the flusher creates it when it rolls", "err", err)
				}
				return nil
			}
			l.segMu.Lock()
			if l.segMu.next == nil && l.segMu.segs[len(l.segMu.segs)-1].base+l.opts.SegmentSize == base {
				l.segMu.next = s
			} else {
				// The flusher rolled meanwhile, to this very file (its own
				// handle): drop ours, never the file (it holds the log).
				l.dropSpareLocked(s)
				s = nil
			}
			next = l.segMu.next
			l.segMu.Unlock()
		}
		if next == nil || next.base != base {
			return nil
		}
		next.acquire()
		return next
	}
	return nil
}
