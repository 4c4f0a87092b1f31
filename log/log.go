package log

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/internal/fsutil"
	"github.com/quivermq/quiver/ioengine"
)

// Errors returned by the log.
var (
	// ErrClosed is returned by appends and reads after Close.
	ErrClosed = errors.New("log: closed")
	// ErrFailed is returned by every append after an I/O or dispatch error.
	// The log does not write again after a failure: it must be closed and
	// reopened, so that recovery decides what is on disk (fail-stop).
	ErrFailed = errors.New("log: failed after an I/O error; reopen to recover")
	// ErrNoSpace is returned by an append that needed a new segment the file
	// system had no room for. Nothing of it was written and the log goes
	// on: appends that fit in the segments it has succeed, and a later one
	// succeeds once there is room (not a failure: a full disk loses nothing).
	ErrNoSpace = errors.New("log: no space left for a new segment")
	// ErrOutOfRange is returned for a read outside [Start, readable end).
	ErrOutOfRange = errors.New("log: position out of range")
)

// AppendResult says where an appended record was stored.
type AppendResult struct {
	Pos         int64 // log position of the record
	Size        int32
	QueueOffset uint64 // of the record's first message
	StoreTime   int64  // unix nanoseconds
}

// Positions are the log's progress markers (log positions). Written >= Durable
// always; in sync mode Dispatched == Durable after every commit; in async mode
// Dispatched runs ahead of Durable by at most AsyncInterval of writes.
type Positions struct {
	Start      int64 // first retained position
	Written    int64 // handed to the disk (in the write buffer or the file)
	Durable    int64 // synced
	Dispatched int64 // indexed: visible to consumers
	// DurableAt and DispatchedAt are when those positions last moved (unix ns).
	DurableAt    int64
	DispatchedAt int64
}

// Log is a segmented, group-committed commit log. Appends may come from any
// goroutine; one flusher goroutine owns the tail and does all writes.
type Log struct {
	opts   Options
	eng    ioengine.Engine
	logger *slog.Logger

	// mu makes Close wait for appenders that are enqueuing; appenders hold it
	// shared only while they hand their request over.
	mu     sync.RWMutex
	closed bool

	in      *intake
	syncs   chan chan error
	toSync  chan *batch   // flusher -> syncer, in log order
	free    chan *batch   // the maxUnsynced batches, when not in flight
	synced  chan struct{} // the syncer has exited
	closing chan struct{}
	done    chan struct{} // the flusher has exited
	bg      sync.WaitGroup
	stopBg  chan struct{}

	written, durable, dispatched atomic.Int64
	durableAt, dispatchedAt      atomic.Int64
	start                        atomic.Int64
	// visible is the end of what readers may read: set after a commit's
	// flush and before its dispatch, so that every index entry a reader
	// can find points at readable bytes.
	visible atomic.Int64
	stats   struct{ commits, records, flushNanos, syncs, syncNanos, zeroNanos, busy atomic.Int64 }
	failure atomic.Pointer[error]
	// lastSyncNanos is the duration of the syncer's last sync (for the linger).
	lastSyncNanos atomic.Int64

	createMu sync.Mutex // serialises createSegment

	// unbounded: recovery found the log written in async mode (see endAt).
	unbounded bool

	// dstall is where dispatching stopped for lack of room (-1: it did
	// not), dstallTried when it was last tried; owned by the syncer (and
	// Open, before it starts). See retryDispatch.
	dstall      int64
	dstallTried time.Time

	segMu struct {
		sync.RWMutex
		segs []*segment // by base; the last one is active
		next *segment   // created ahead of the roll by the zeroer, or nil
	}

	zero struct {
		mu sync.Mutex
		// failedAt and loggedAt: the last failure to create the next segment
		// ahead of time (retried after a second) and its last log line (at
		// most one a minute: a full disk fails it on every commit).
		failedAt, loggedAt time.Time
		to                 atomic.Int64 // end of the region zeroed or claimed by the flusher
		kick               chan struct{}
	}

	// ring holds the most recent TailBytes of log bytes at index pos%TailBytes:
	// the flusher's write buffer and the read cache of the tail.
	ring   []byte
	ringMu struct {
		sync.RWMutex
		low int64 // positions in [low, written) are in ring
	}

	cps chan checkpoint // to the checkpointer

	// Owned by the flusher goroutine (after Open).
	fl flusherState
}

// Open recovers the log in opts.Dir (creating it when empty) and starts it.
// When opts.Dispatcher is also a Resumer, every record it has not durably
// indexed is dispatched again before Open returns.
func Open(opts Options) (*Log, error) {
	if opts.SegmentSize == 0 && opts.Dir != "" {
		// Adopt the size the existing segments were made with.
		if size, err := existingSegmentSize(opts.Dir); err == nil && size > 0 {
			opts.SegmentSize = size
		}
	}
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	if err := fsutil.MkdirAll(opts.FS, opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("log: %w", err)
	}
	l := &Log{
		dstall:  -1,
		opts:    opts,
		eng:     opts.Engine,
		logger:  opts.Logger.With("component", "log"),
		in:      newIntake(opts.QueueDepth, opts.QueueBytes),
		toSync:  make(chan *batch, maxUnsynced),
		free:    make(chan *batch, maxUnsynced),
		synced:  make(chan struct{}),
		syncs:   make(chan chan error),
		closing: make(chan struct{}),
		done:    make(chan struct{}),
		stopBg:  make(chan struct{}),
		ring:    ioengine.AlignedBuffer(opts.TailBytes),
		cps:     make(chan checkpoint, 1),
	}
	l.zero.kick = make(chan struct{}, 1)
	if err := l.recover(); err != nil {
		l.closeSegments()
		return nil, err
	}
	l.zero.to.Store((l.fl.pos + ioengine.Alignment - 1) / ioengine.Alignment * ioengine.Alignment)
	for i := 0; i < maxUnsynced; i++ {
		l.free <- &batch{}
	}
	go l.syncer()
	go l.run()
	if l.zeroAhead() > 0 {
		l.bg.Add(1)
		go l.zeroer()
		l.kickZeroer(l.fl.pos)
	}
	l.bg.Add(1)
	go l.checkpointer()
	if opts.MaxQueueWait > 0 {
		l.bg.Add(1)
		go l.janitor()
	}
	if opts.RetentionAge > 0 || opts.RetentionBytes > 0 {
		l.bg.Add(1)
		go l.retainer()
	}
	return l, nil
}

// Append stores m and returns once it is acknowledged: synced when m asks
// for sync durability (AckSync, or AckDefault in a Sync log), written
// otherwise. m may be reused when Append returns. An append that waits in
// the intake queue longer than MaxQueueWait, or finds it full, fails with a
// *BusyError (errors.Is(err, ErrBusy)) and nothing of it is written.
func (l *Log) Append(m *Message) (AppendResult, error) {
	r := getRequest()
	r.msg = m
	if err := l.enqueue(r); err != nil {
		putRequest(r)
		return AppendResult{}, err
	}
	<-r.done
	res, err := r.res, r.err
	putRequest(r)
	return res, err
}

// AppendAsync stores m and calls cb once it is acknowledged (or failed). cb
// runs on one of the log's goroutines (the flusher, or the janitor for a
// BusyError) and must not block; m must stay unchanged until cb is called.
// If AppendAsync returns an error, cb is not called.
func (l *Log) AppendAsync(m *Message, cb func(AppendResult, error)) error {
	r := getRequest()
	r.msg, r.cb = m, cb
	if err := l.enqueue(r); err != nil {
		putRequest(r)
		return err
	}
	return nil
}

func (l *Log) enqueue(r *request) error {
	var n int
	if r.raw != nil {
		n = len(r.raw) // verified by AppendRawAsync
	} else {
		if err := r.msg.Validate(); err != nil {
			return err
		}
		n = r.msg.EncodedSize()
		if n > l.opts.maxRecord() {
			return fmt.Errorf("%w: %d bytes, this log's limit is %d", ErrTooLarge, n, l.opts.maxRecord())
		}
	}
	l.mu.RLock()
	defer l.mu.RUnlock()
	if l.closed {
		return ErrClosed
	}
	if err := l.failure.Load(); err != nil {
		return fmt.Errorf("%w: %w", ErrFailed, *err)
	}
	if err := l.in.push(r, n); err != nil {
		l.stats.busy.Add(1)
		return err
	}
	return nil
}

// Sync makes every acknowledged append durable now (async mode) and returns
// the log's failure, if any. In sync mode there is nothing to do.
func (l *Log) Sync() error {
	l.mu.RLock()
	if l.closed {
		l.mu.RUnlock()
		return ErrClosed
	}
	ch := make(chan error, 1)
	l.syncs <- ch
	l.mu.RUnlock()
	return <-ch
}

// Positions returns the current progress markers.
func (l *Log) Positions() Positions {
	return Positions{
		Start:        l.start.Load(),
		Written:      l.written.Load(),
		Durable:      l.durable.Load(),
		Dispatched:   l.dispatched.Load(),
		DurableAt:    l.durableAt.Load(),
		DispatchedAt: l.dispatchedAt.Load(),
	}
}

// Stats are cumulative counters of the commit path.
type Stats struct {
	Commits    int64 // group commits (one write each)
	Records    int64 // records committed
	Syncs      int64 // syncs (one covers every batch written before it)
	FlushNanos int64 // time spent writing (the engine's Flush)
	SyncNanos  int64 // time spent in fdatasync
	Busy       int64 // appends failed with ErrBusy (queue full or waited too long)
	Queued     int   // appends waiting in the intake queue now
}

// Stats returns the commit counters; Records/Commits is the mean batch.
func (l *Log) Stats() Stats {
	return Stats{Commits: l.stats.commits.Load(), Records: l.stats.records.Load(),
		Syncs: l.stats.syncs.Load(), FlushNanos: l.stats.flushNanos.Load(), SyncNanos: l.stats.syncNanos.Load(),
		Busy: l.stats.busy.Load(), Queued: l.in.len()}
}

// Err returns the error that failed the log, or nil.
func (l *Log) Err() error {
	if e := l.failure.Load(); e != nil {
		return *e
	}
	return nil
}

// Durability is the log's acknowledgement mode.
func (l *Log) Durability() Durability { return l.opts.Durability }

// SegmentSize is the size of the log's segments (replicas must match it).
func (l *Log) SegmentSize() int64 { return l.opts.SegmentSize }

// Room is the unused part of the log's preallocated segments: what the
// active segment has left after the written position, plus the next
// segment when it was made ahead of time. Appends that fit there need no
// new disk space.
func (l *Log) Room() int64 {
	segSize := l.opts.SegmentSize
	l.segMu.RLock()
	defer l.segMu.RUnlock()
	active := l.segMu.segs[len(l.segMu.segs)-1]
	room := max(0, active.base+segSize-l.written.Load())
	if n := l.segMu.next; n != nil && n.base == active.base+segSize {
		room += segSize
	}
	return room
}

// EngineName is the I/O backend in use.
func (l *Log) EngineName() string { return l.eng.Name() }

// readable is the end of what readers may see.
func (l *Log) readable() int64 { return l.visible.Load() }

// ReadRecord reads the record of the given size at pos into dst (grown if
// needed) and returns it. It serves the recent tail from memory.
func (l *Log) ReadRecord(pos int64, size int32, dst []byte) ([]byte, error) {
	if size < HeaderSize || int(size) > MaxRecordSize {
		return nil, fmt.Errorf("%w: size %d", ErrOutOfRange, size)
	}
	end := pos + int64(size)
	if pos < l.start.Load() || end > l.readable() {
		return nil, fmt.Errorf("%w: [%d, %d) outside [%d, %d)", ErrOutOfRange, pos, end, l.start.Load(), l.readable())
	}
	if cap(dst) < int(size) {
		dst = make([]byte, size)
	}
	dst = dst[:size]
	if l.readRing(pos, dst) {
		return dst, nil
	}
	return dst, l.readFile(pos, dst)
}

// Read reads the record at pos and decodes it into r. The record's slices
// alias the returned buffer.
func (l *Log) Read(pos int64, dst []byte, r *Record) ([]byte, error) {
	var hdr [4]byte
	if pos+4 > l.readable() || pos < l.start.Load() {
		return nil, fmt.Errorf("%w: %d", ErrOutOfRange, pos)
	}
	if !l.readRing(pos, hdr[:]) {
		if err := l.readFile(pos, hdr[:]); err != nil {
			return nil, err
		}
	}
	n := RecordSize(hdr[:])
	if n < HeaderSize || n > MaxRecordSize {
		return nil, fmt.Errorf("%w: no record at position %d", ErrCorrupt, pos)
	}
	b, err := l.ReadRecord(pos, int32(n), dst)
	if err != nil {
		return nil, err
	}
	if _, err := DecodeRecord(b, r); err != nil {
		return nil, fmt.Errorf("%w (position %d)", err, pos)
	}
	return b, nil
}

func (l *Log) readRing(pos int64, dst []byte) bool {
	l.ringMu.RLock()
	defer l.ringMu.RUnlock()
	if pos < l.ringMu.low {
		return false
	}
	l.ringCopyOut(pos, dst)
	return true
}

// ringCopyOut copies ring bytes for [pos, pos+len(dst)), wrapping.
func (l *Log) ringCopyOut(pos int64, dst []byte) {
	i := int(pos % int64(len(l.ring)))
	n := copy(dst, l.ring[i:])
	copy(dst[n:], l.ring)
}

func (l *Log) readFile(pos int64, dst []byte) error {
	seg := l.segmentFor(pos)
	if seg == nil {
		return fmt.Errorf("%w: no segment holds position %d", ErrOutOfRange, pos)
	}
	defer seg.release()
	if pos+int64(len(dst)) > seg.base+l.opts.SegmentSize {
		return fmt.Errorf("%w: [%d, %d) crosses a segment end", ErrOutOfRange, pos, pos+int64(len(dst)))
	}
	if _, err := seg.file.ReadAt(dst, pos-seg.base); err != nil {
		return fmt.Errorf("log: read %s at %d: %w", seg.file.Name(), pos-seg.base, err)
	}
	return nil
}

// segmentFor returns the segment holding pos, acquired, or nil.
func (l *Log) segmentFor(pos int64) *segment {
	l.segMu.RLock()
	defer l.segMu.RUnlock()
	segs := l.segMu.segs
	i := sort.Search(len(segs), func(i int) bool { return segs[i].base > pos }) - 1
	if i < 0 || pos >= segs[i].base+l.opts.SegmentSize {
		return nil
	}
	segs[i].acquire()
	return segs[i]
}

// Close stops accepting appends, commits and syncs every append already
// accepted, writes a checkpoint and releases the files and the engine.
func (l *Log) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	l.closed = true
	l.mu.Unlock()
	close(l.closing)
	<-l.done
	close(l.stopBg)
	l.bg.Wait()
	err := l.Err()
	if err == nil {
		err = writeCheckpoint(l.opts.FS, l.opts.Dir, l.fl.snapshot(l.durable.Load()))
	}
	l.closeSegments()
	if cerr := l.eng.Close(); err == nil {
		err = cerr
	}
	return err
}

func (l *Log) closeSegments() {
	l.segMu.Lock()
	defer l.segMu.Unlock()
	for _, s := range l.segMu.segs {
		s.release()
	}
	l.segMu.segs = nil
	if s := l.segMu.next; s != nil {
		// Made ahead of time and never used: a later open would only delete it.
		s.deleted.Store(true)
		s.release()
		l.segMu.next = nil
	}
}

func (l *Log) fail(err error) {
	if l.failure.CompareAndSwap(nil, &err) {
		l.logger.Error("log failed; appends are refused until restart", "err", err)
	}
}

// checkpointer writes the checkpoints the flusher hands it, off the commit path.
func (l *Log) checkpointer() {
	defer l.bg.Done()
	for {
		select {
		case cp := <-l.cps:
			if err := writeCheckpoint(l.opts.FS, l.opts.Dir, cp); err != nil {
				l.logger.Warn("checkpoint failed", "err", err)
			}
		case <-l.stopBg:
			return
		}
	}
}

func nowNanos() int64 { return time.Now().UnixNano() }
