package log

import (
	"os"
	"time"
)

// Retention deletes whole segments, oldest first, never the active one:
// those whose last write (file mtime) is older than RetentionAge, and then
// more while the log is larger than RetentionBytes.

// Retainer is implemented by a Dispatcher whose data refers to log
// positions (the indexes): after retention moves the log's start, it is told
// so that it can drop what now points nowhere. It may be called concurrently
// with Dispatch.
type Retainer interface {
	DropBefore(pos int64)
}

func (l *Log) retainer() {
	defer l.bg.Done()
	t := time.NewTicker(l.opts.RetentionCheck)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			l.ApplyRetention()
		case <-l.stopBg:
			return
		}
	}
}

// ApplyRetention deletes the segments that retention allows to delete now
// and returns how many it deleted. It runs on a timer; tests call it directly.
func (l *Log) ApplyRetention() int {
	now := l.opts.Now()
	hold := int64(-1)
	if l.opts.RetentionHold != nil {
		hold = l.opts.RetentionHold()
	}
	l.segMu.Lock()
	segs := l.segMu.segs
	drop := 0
	durable := l.durable.Load()
	for drop < len(segs)-1 {
		s := segs[drop]
		if s.base+l.opts.SegmentSize > durable {
			break // not all synced yet (async mode may still sync it)
		}
		if hold >= 0 && s.base+l.opts.SegmentSize > hold {
			break // holds what must be kept
		}
		tooOld := false
		if l.opts.RetentionAge > 0 {
			if fi, err := os.Stat(s.file.Name()); err == nil && now.Sub(fi.ModTime()) > l.opts.RetentionAge {
				tooOld = true
			}
		}
		tooBig := l.opts.RetentionBytes > 0 && int64(len(segs)-drop)*l.opts.SegmentSize > l.opts.RetentionBytes
		if !tooOld && !tooBig {
			break
		}
		drop++
	}
	if drop == 0 {
		l.segMu.Unlock()
		return 0
	}
	gone := segs[:drop]
	l.segMu.segs = append([]*segment(nil), segs[drop:]...)
	start := l.segMu.segs[0].base
	l.start.Store(start)
	l.segMu.Unlock()
	for _, s := range gone {
		l.logger.Info("retention: deleting segment", "file", s.file.Name())
		s.deleted.Store(true)
		s.release()
	}
	if r, ok := l.opts.Dispatcher.(Retainer); ok {
		r.DropBefore(start)
	}
	return drop
}
