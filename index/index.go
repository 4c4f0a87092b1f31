package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/internal/fsutil"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

// Errors.
var (
	// ErrNotFound: the offset is outside the queue's [min, max) or the queue does not exist.
	ErrNotFound = errors.New("index: not found")
	// ErrCorrupt: index files or dispatched records are inconsistent.
	ErrCorrupt = errors.New("index: corrupt")
	// ErrClosed: the index was closed.
	ErrClosed = errors.New("index: closed")
)

// QueueBounds are a queue's readable offsets and the time of its newest message.
type QueueBounds struct {
	Min, Max  uint64 // readable offsets are [Min, Max)
	LastStore int64  // unix nanoseconds of the newest message, 0 if none
}

// QueueStatus is one queue's line on the status page.
type QueueStatus struct {
	Topic string
	Queue uint32
	QueueBounds
}

// Index is the set of consume queues and the key index.
type Index struct {
	opts   Options
	logger *slog.Logger

	// mu serialises the writers: Dispatch (the log's flusher), Truncated,
	// DropBefore and the bookkeeping part of Checkpoint.
	mu      sync.Mutex
	cache   *fileCache // the consume-queue files open now (at most MaxOpenFiles)
	touched []*cqueue
	pending []*cqueue // queues with entries in memory (cqueue.mem) since the last checkpoint took them
	spare   []*cqueue // the previous pending slice, reused
	pos     int64     // end of the last dispatched record
	resume  int64     // checkpointed position at open, -1 if none
	// onDisk is the position the checkpoint file holds (-1: none), and
	// snapOnDisk the producer snapshot's (-1: none): Truncated rewrites
	// either when it is past the new end.
	onDisk, snapOnDisk int64

	// wmu serialises the writing out of buffered entries (cqueue.writeOut)
	// and the changes to queue files; taken after mu when both are.
	wmu   sync.Mutex
	dirty map[string]struct{} // consume-queue files written since the last checkpoint
	dirs  map[string]struct{} // directories whose names changed since the last checkpoint
	// The queue table (table.go) and the queues whose state changed since
	// its last edit.
	table  *queueTable
	tdirty []*cqueue

	bufs     bufPool      // mem buffers of queues that had none left
	buffered atomic.Int64 // entries in the queues' mem
	warned   atomic.Bool  // a forced write-out failed and said so

	qmu    sync.RWMutex
	queues map[string]map[uint32]*cqueue

	keys      *keyIndex
	producers *producerTable // idempotent sends (producers.go)
	closed    atomic.Bool
	// failed is the first failed fsync of Checkpoint: after it no
	// checkpoint is written again (the failed pages may be lost while the
	// kernel calls them clean, so a later fsync proves nothing); the next
	// open replays from the last good one.
	failed atomic.Pointer[error]
}

const checkpointName = "checkpoint"

// Open opens the index in opts.Dir. Without a valid checkpoint it starts
// empty (and the log replays everything into it).
func Open(opts Options) (*Index, error) {
	opts.EnsureDefaults()
	if err := opts.Validate(); err != nil {
		return nil, err
	}
	idx := &Index{opts: opts, logger: opts.Logger.With("component", "index"),
		dirty: map[string]struct{}{}, dirs: map[string]struct{}{}, queues: map[string]map[uint32]*cqueue{}, resume: -1,
		onDisk: -1, snapOnDisk: -1,
		cache: newFileCache(opts.FS, opts.MaxOpenFiles)}
	if err := fsutil.MkdirAll(opts.FS, opts.Dir, 0o755); err != nil {
		return nil, fmt.Errorf("index: %w", err)
	}
	pos, version := readIndexCheckpoint(opts.FS, filepath.Join(opts.Dir, checkpointName))
	var states map[string]map[uint32]qstate
	if version == 3 {
		t, st, err := loadTable(opts.FS, opts.Dir)
		if err != nil {
			idx.logger.Warn("the queue table cannot be read: the index is rebuilt from the log", "err", err)
			version = 0
		}
		idx.table, states = t, st
	}
	ok := version > 0
	if !ok {
		// Nothing durable to trust: rebuild everything from the log.
		for _, d := range []string{"cq", "keys", tableName} {
			if err := opts.FS.RemoveAll(filepath.Join(opts.Dir, d)); err != nil {
				return nil, fmt.Errorf("index: %w", err)
			}
		}
		if err := opts.FS.SyncDir(opts.Dir); err != nil {
			return nil, fmt.Errorf("index: %w", err)
		}
	} else {
		idx.resume, idx.onDisk = pos, pos
	}
	// The producer table replays from its own snapshot's position when
	// that is older than the checkpoint (the other indexes skip what they
	// hold: Dispatch). Every checkpoint of this code is preceded by a
	// snapshot (checkpoint), so none means no send before the checkpoint.
	var snap int64
	idx.producers, snap = loadProducers(opts.FS, opts.Dir, idx.logger)
	idx.snapOnDisk = snap
	idx.producers.every = opts.ProducerSnapshotEvery
	switch {
	case snap >= 0:
		idx.producers.lastSnap = idx.producers.now() // the next one when due, not at once
		if ok && snap < pos {
			idx.resume = snap
		}
	case snap == -2:
		idx.resume = -1 // unreadable: rebuilt from the whole log
	}
	fail := func(err error) (*Index, error) {
		idx.closeFiles()
		return nil, err
	}
	if version == 3 {
		idx.tableQueues(states)
	} else if err := idx.loadQueues(); err != nil {
		return fail(err)
	}
	keys, err := openKeyIndex(opts.FS, filepath.Join(opts.Dir, "keys"), opts.KeySlots, opts.KeyEntries, opts.Reader)
	if err != nil {
		return fail(fmt.Errorf("index: %w", err))
	}
	idx.keys = keys
	if ok {
		// Entries past the checkpoint may be torn (key entries), or be in
		// the table while the key index lost theirs: the log replays them.
		// (With the table, a read only of queues whose newest entry is
		// past it: tailPos.)
		if err := idx.truncateFrom(pos); err != nil {
			return fail(err)
		}
	}
	if version == 2 {
		// The layout before the queue table: a queue's start was not
		// recorded.
		for _, q := range idx.allQueues() {
			if err := q.skipGap(); err != nil {
				return fail(fmt.Errorf("index: %w", err))
			}
		}
	}
	if ok {
		idx.pos = pos
	}
	if version == 3 {
		// Files below a queue's start that a crash left (retention removes
		// them after the edit that moves the start).
		idx.wmu.Lock()
		err = idx.removeBelowMin(idx.allQueues())
		if err == nil {
			err = idx.persist()
		}
		idx.wmu.Unlock()
	} else {
		// A new table, of what the files hold.
		for _, q := range idx.allQueues() {
			q.wEnd, q.wLast, q.wTail = q.max.Load(), q.lastStore.Load(), q.tailPos
		}
		idx.table = &queueTable{fs: opts.FS, path: filepath.Join(opts.Dir, tableName), slack: tableSlack}
		idx.wmu.Lock()
		err = idx.rewriteTable()
		idx.wmu.Unlock()
	}
	if err != nil {
		return fail(err)
	}
	return idx, nil
}

// tableQueues makes the queues the table lists: no file is read (a queue's
// files are the ones its bounds reach; they open when read).
func (idx *Index) tableQueues(states map[string]map[uint32]qstate) {
	per := uint64(idx.opts.EntriesPerFile)
	for topic, m := range states {
		dir := topicDir(idx.opts.Dir, topic)
		for id, st := range m {
			q := idx.newQueue(dir, topic, id)
			q.min.Store(st.min)
			q.max.Store(st.max)
			q.memFrom = st.max
			q.lastStore.Store(st.lastStore)
			q.tailPos = st.tailPos
			q.wEnd, q.wLast, q.wTail, q.low = st.max, st.lastStore, st.tailPos, st.low
			for first := st.min / per * per; first < st.max; first += per {
				q.segs[first] = q.fileName(first)
			}
			idx.addQueue(q)
		}
	}
}

func (idx *Index) newQueue(dir, topic string, id uint32) *cqueue {
	return &cqueue{dir: dir, topic: topic, id: id, per: uint64(idx.opts.EntriesPerFile), segs: map[uint64]string{},
		fs: idx.opts.FS, cache: idx.cache, tailPos: -1, wTail: -1}
}

func (idx *Index) loadQueues() error {
	root := filepath.Join(idx.opts.Dir, "cq")
	topics, err := idx.opts.FS.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	// Topics load in parallel: a broker with 100,000 queues waits on a
	// directory read and a file open and read for each, one at a time.
	work := make(chan os.DirEntry)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for t := range work {
				var topic []byte
				var err error
				if _, serr := fmt.Sscanf(t.Name(), "%x", &topic); serr != nil || !t.IsDir() {
					err = fmt.Errorf("%w: unexpected %s", ErrCorrupt, filepath.Join(root, t.Name()))
				}
				var qs []*cqueue
				if err == nil {
					qs, err = loadTopic(idx.opts.FS, idx.cache, filepath.Join(root, t.Name()), string(topic), uint64(idx.opts.EntriesPerFile))
				}
				if err != nil {
					mu.Lock()
					if first == nil {
						first = fmt.Errorf("index: %w", err)
					}
					mu.Unlock()
					continue
				}
				for _, q := range qs {
					idx.addQueue(q)
				}
			}
		}()
	}
	for _, t := range topics {
		work <- t
	}
	close(work)
	wg.Wait()
	return first
}

func (idx *Index) addQueue(q *cqueue) {
	idx.qmu.Lock()
	defer idx.qmu.Unlock()
	m := idx.queues[q.topic]
	if m == nil {
		m = map[uint32]*cqueue{}
		idx.queues[q.topic] = m
	}
	m[q.id] = q
}

// allQueues returns every queue (a snapshot: queues added later are not in it).
func (idx *Index) allQueues() []*cqueue {
	idx.qmu.RLock()
	defer idx.qmu.RUnlock()
	var qs []*cqueue
	for _, m := range idx.queues {
		for _, q := range m {
			qs = append(qs, q)
		}
	}
	return qs
}

func (idx *Index) queue(topic string, id uint32) *cqueue {
	idx.qmu.RLock()
	defer idx.qmu.RUnlock()
	return idx.queues[topic][id]
}

// queueBytes is queue() for a topic given as bytes, without allocating.
func (idx *Index) queueBytes(topic []byte, id uint32) *cqueue {
	idx.qmu.RLock()
	defer idx.qmu.RUnlock()
	return idx.queues[string(topic)][id]
}

// ResumeFrom implements log.Resumer.
func (idx *Index) ResumeFrom() int64 { return idx.resume }

// Truncated implements log.Resumer: the log now ends at end.
//
// When end is before what the checkpoint or the producer snapshot on disk
// says (a follower's log cut back to its new leader's, which then writes
// other records there), both are rewritten at once, the snapshot first (a
// checkpoint always has one at or before it): a start before the next
// checkpoint would replay from a position that now lies inside a record,
// and refuse to start (make chaos's kill -9 rounds found it: a broker
// killed within 10 s of such a cut could not start again).
func (idx *Index) Truncated(end int64) error {
	if err := idx.truncateFrom(end); err != nil {
		return err
	}
	if idx.snapOnDisk > end {
		b, pos := idx.producers.snapshotNow()
		if err := writeProducers(idx.opts.FS, idx.opts.Dir, b); err != nil {
			return err
		}
		idx.snapOnDisk = pos
	}
	if idx.onDisk > end {
		// truncateFrom made the queues and the table durable; the key
		// index's cut too before the checkpoint says end.
		if err := idx.keys.sync(); err != nil {
			return err
		}
		if err := writeIndexCheckpoint(idx.opts.FS, idx.opts.Dir, end); err != nil {
			return err
		}
		idx.onDisk = end
	}
	return nil
}

func (idx *Index) truncateFrom(end int64) error {
	idx.mu.Lock()
	defer idx.mu.Unlock()
	idx.wmu.Lock()
	defer idx.wmu.Unlock()
	// Files are cut: every entry goes to its file first.
	if err := idx.writeOut(idx.pending); err != nil {
		return err
	}
	qs := idx.allQueues()
	for _, q := range qs {
		changed, err := q.truncateFrom(end, idx.dirty, idx.dirs)
		if err != nil {
			return err
		}
		if changed {
			idx.markTable(q)
		}
	}
	// The table must not keep the cut entries: the log writes other
	// records where they pointed.
	if err := idx.persist(); err != nil {
		return err
	}
	if err := idx.keys.truncateFrom(end); err != nil {
		return err
	}
	idx.producers.truncateFrom(end)
	if idx.pos > end {
		idx.pos = end
	}
	return nil
}

// Dispatch implements log.Dispatcher: it indexes recs, which are in log order.
// A record already indexed at the same position is skipped, so replays are
// harmless.
func (idx *Index) Dispatch(recs []qlog.RecordInfo) (err error) {
	if idx.closed.Load() {
		return ErrClosed
	}
	idx.mu.Lock()
	defer idx.mu.Unlock()
	// The producer table first: a replay from its snapshot's position
	// brings records the other indexes hold already (before pos).
	from := len(recs)
	idx.producers.mu.Lock()
	for i := range recs {
		idx.producers.take(&recs[i])
		if from == len(recs) && recs[i].Pos >= idx.pos {
			from = i
		}
	}
	idx.producers.mu.Unlock()
	recs = recs[from:]
	touched := idx.touched[:0]
	defer func() {
		if err != nil {
			idx.keys.dropStaged()
			// Nothing staged survives a failed call: the log dispatches
			// the same records again (after an ENOSPC, once there is
			// room), and they must find each queue as it was published.
			for _, q := range touched {
				q.buf = q.buf[:0]
			}
			idx.touched = touched[:0]
		}
	}()
	for i := range recs {
		ri := &recs[i]
		if f := idx.opts.DeletedTopic; f != nil {
			if name, ok := f(ri); ok {
				if err := idx.dropTopic(string(name)); err != nil {
					return err
				}
			}
		}
		q := idx.queueBytes(ri.Topic, ri.QueueID)
		if q == nil {
			topic := string(ri.Topic)
			q = idx.newQueue(topicDir(idx.opts.Dir, topic), topic, ri.QueueID)
			q.min.Store(ri.QueueOffset)
			q.max.Store(ri.QueueOffset)
			q.wEnd, q.low = ri.QueueOffset, ri.QueueOffset/q.per*q.per
			idx.addQueue(q)
		}
		next := q.max.Load() + uint64(len(q.buf)/entrySize)
		switch {
		case ri.QueueOffset == next:
		case ri.QueueOffset < next:
			// Already indexed: a replay after a restart.
			if ri.QueueOffset < q.min.Load() || ri.QueueOffset >= q.max.Load() {
				return fmt.Errorf("%w: %s/%d offset %d overlaps staged entries", ErrCorrupt, ri.Topic, ri.QueueID, ri.QueueOffset)
			}
			e, err := q.readEntry(ri.QueueOffset)
			if err != nil {
				return err
			}
			if e.Pos != ri.Pos {
				return fmt.Errorf("%w: %s/%d offset %d is at log position %d in the index but %d in the log",
					ErrCorrupt, ri.Topic, ri.QueueID, ri.QueueOffset, e.Pos, ri.Pos)
			}
			continue
		case q.max.Load() == q.min.Load() && len(q.buf) == 0:
			// An empty queue starts where the log's oldest record puts it.
			q.min.Store(ri.QueueOffset)
			q.max.Store(ri.QueueOffset)
		default:
			return fmt.Errorf("%w: %s/%d jumps from offset %d to %d", ErrCorrupt, ri.Topic, ri.QueueID, next, ri.QueueOffset)
		}
		if len(q.buf) == 0 {
			touched = append(touched, q)
		}
		th := tagHash(ri.Tags)
		for inner := uint32(0); inner < ri.Count; inner++ {
			q.stage(ri.QueueOffset+uint64(inner), Entry{Pos: ri.Pos, Size: ri.Size, Inner: inner, StoreTime: ri.StoreTime, TagHash: th})
		}
		if len(ri.Key) > 0 {
			idx.keys.stage(ri)
		}
	}
	if err := idx.keys.flush(); err != nil {
		return err
	}
	for _, q := range touched {
		if q.deleted {
			q.buf = q.buf[:0] // staged before its topic's deletion, in this call
			continue
		}
		idx.buffered.Add(int64(q.publish(idx)))
		if !q.listed {
			q.listed = true
			idx.pending = append(idx.pending, q)
		}
	}
	idx.touched = touched[:0]
	if n := len(recs); n > 0 {
		idx.pos = recs[n-1].Pos + int64(recs[n-1].Size)
	}
	if idx.buffered.Load() > int64(idx.opts.MaxBufferedEntries) {
		// Checkpoints do not keep up (a slow or full disk): write out here,
		// which slows the log down to the disk's pace. The entries are
		// readable already; a failure leaves them for the next checkpoint.
		idx.wmu.Lock()
		err := idx.writeOut(idx.pending)
		idx.wmu.Unlock()
		if err != nil && !idx.warned.Swap(true) {
			idx.logger.Warn("index write-out failed; the entries stay in memory and the next checkpoint tries again", "buffered", idx.buffered.Load(), "err", err)
		}
	}
	return nil
}

// dropTopic forgets a deleted topic's queues and removes their files.
// A queue of the same name dispatched later starts anew. (mu held)
func (idx *Index) dropTopic(topic string) error {
	idx.qmu.Lock()
	qs := idx.queues[topic]
	delete(idx.queues, topic)
	idx.qmu.Unlock()
	if len(qs) == 0 {
		return nil
	}
	idx.wmu.Lock()
	defer idx.wmu.Unlock()
	// The table forgets the topic before its files go (an open must not
	// find queues whose files are gone).
	if idx.table != nil {
		p := binary.LittleEndian.AppendUint16([]byte{tableDropTopic}, uint16(len(topic)))
		if err := idx.table.append(append(p, topic...)); err != nil {
			return idx.tableFailed(err)
		}
	}
	for _, q := range qs {
		q.deleted = true
		q.mu.Lock()
		idx.buffered.Add(-int64(len(q.mem) / entrySize))
		q.mem = nil
		for _, path := range q.segs {
			idx.cache.forget(path)
			delete(idx.dirty, path)
		}
		q.mu.Unlock()
	}
	if err := idx.opts.FS.RemoveAll(topicDir(idx.opts.Dir, topic)); err != nil {
		return fmt.Errorf("index: removing deleted topic %s: %w", topic, err)
	}
	idx.dirs[filepath.Join(idx.opts.Dir, "cq")] = struct{}{}
	return nil
}

// Pending is how many queues have entries in memory, not written out
// since the last checkpoint, and how many entries those are: what the
// next checkpoint writes (a page or two of each queue's file).
func (idx *Index) Pending() (queues, entries int) {
	idx.mu.Lock()
	queues = len(idx.pending)
	idx.mu.Unlock()
	return queues, int(idx.buffered.Load())
}

// writeOut writes the buffered entries of qs to their files. (wmu held)
func (idx *Index) writeOut(qs []*cqueue) error {
	for _, q := range qs {
		n, err := q.writeOut(&idx.bufs, idx.dirty, idx.dirs)
		idx.buffered.Add(-int64(n))
		if n > 0 {
			idx.markTable(q)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// markTable notes that q's state for the table changed. (wmu held)
func (idx *Index) markTable(q *cqueue) {
	if !q.tdirty {
		q.tdirty = true
		idx.tdirty = append(idx.tdirty, q)
	}
}

// persist makes what was written out durable and then records the new
// states of the queues in the table: it syncs the files written and the
// directories changed since the last time, appends the states (synced),
// and removes the files retention left below a queue's new start. (wmu
// held: no entry is written out between the sync and the edit that
// relies on it)
func (idx *Index) persist() error {
	files := make([]string, 0, len(idx.dirty))
	for f := range idx.dirty {
		files = append(files, f)
	}
	dirs := make([]string, 0, len(idx.dirs))
	for d := range idx.dirs {
		dirs = append(dirs, d)
	}
	if len(files)+len(dirs) > syncAllOver {
		// Many files (many queues written since the last one): one
		// syncfs instead of an fsync of each.
		ok, err := fsutil.SyncAll(idx.opts.FS, idx.opts.Dir)
		if err != nil {
			return idx.syncFailed(fmt.Errorf("index: sync the file system of %s: %w", idx.opts.Dir, err))
		}
		if ok {
			files, dirs = files[:0], dirs[:0]
		}
	}
	for _, f := range files {
		if err := idx.cache.sync(f); err != nil {
			return idx.syncFailed(fmt.Errorf("index: sync %s: %w", f, err))
		}
	}
	// The names of new queue files and directories, and of removed ones.
	for _, d := range dirs {
		if err := idx.opts.FS.SyncDir(d); err != nil && !errors.Is(err, os.ErrNotExist) {
			return idx.syncFailed(fmt.Errorf("index: sync directory %s: %w", d, err))
		}
	}
	clear(idx.dirty)
	clear(idx.dirs)
	if idx.table == nil || len(idx.tdirty) == 0 {
		return nil // (an open before its table is made)
	}
	p := []byte{tableStates}
	for _, q := range idx.tdirty {
		if !q.deleted {
			p = appendState(p, q.topic, q.id, q.tableState())
		}
	}
	if len(p) > 1 {
		if err := idx.table.append(p); err != nil {
			return idx.tableFailed(err)
		}
	}
	changed := idx.tdirty
	for _, q := range changed {
		q.tdirty = false
	}
	idx.tdirty = changed[:0:0]
	if err := idx.removeBelowMin(changed); err != nil {
		return err
	}
	if idx.table.rewriteDue() {
		return idx.rewriteTable()
	}
	return nil
}

// removeBelowMin removes the files of qs that hold only entries below
// their queue's start (after an edit recorded the start: an open must not
// find the start in a file that is gone), and notes the new low. (wmu held)
func (idx *Index) removeBelowMin(qs []*cqueue) error {
	for _, q := range qs {
		floor := q.min.Load() / q.per * q.per
		if q.deleted || q.low >= floor {
			continue
		}
		q.mu.Lock()
		for first := q.low; first < floor; first += q.per {
			path := q.fileName(first)
			if p, ok := q.segs[first]; ok {
				path = p
				delete(q.segs, first)
			}
			idx.cache.forget(path)
			delete(idx.dirty, path)
			if err := idx.opts.FS.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
				q.mu.Unlock()
				return fmt.Errorf("index: remove %s: %w", path, err)
			}
			q.low = first + q.per
		}
		q.mu.Unlock()
		idx.dirs[q.dir] = struct{}{}
		idx.markTable(q) // its new low, in the next edit
	}
	return nil
}

// rewriteTable writes the table anew with every queue's state. (wmu held)
func (idx *Index) rewriteTable() error {
	p := []byte{tableStates}
	for _, q := range idx.allQueues() {
		if !q.deleted {
			p = appendState(p, q.topic, q.id, q.tableState())
		}
	}
	if err := idx.table.rewrite(p); err != nil {
		return idx.tableFailed(err)
	}
	return nil
}

// tableFailed returns err, stopping checkpoints when it is a failed sync.
func (idx *Index) tableFailed(err error) error {
	var fe *fsyncError
	if errors.As(err, &fe) {
		return idx.syncFailed(err)
	}
	return err
}

// bufPool keeps the mem buffers of queues that wrote everything out, for
// queues that publish next: a steady stream over many queues allocates
// nothing, and an idle queue holds no buffer.
type bufPool struct {
	mu   sync.Mutex
	free [][]byte
}

func (p *bufPool) get() []byte {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := len(p.free); n > 0 {
		b := p.free[n-1]
		p.free = p.free[:n-1]
		return b
	}
	return make([]byte, 0, 8*entrySize)
}

// put keeps b for reuse unless 256 wait already or it is over 16 KiB (a
// burst's): memory stays with active queues.
func (p *bufPool) put(b []byte) {
	if cap(b) > 16<<10 {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.free) < 256 {
		p.free = append(p.free, b[:0])
	}
}

func tagHash(tags []byte) uint64 { return wire.TagHash(tags) }

// Lookup returns the entry at offset.
func (idx *Index) Lookup(topic string, queue uint32, offset uint64) (Entry, error) {
	q := idx.queue(topic, queue)
	if q == nil {
		return Entry{}, fmt.Errorf("%w: no queue %s/%d", ErrNotFound, topic, queue)
	}
	if min, max := q.min.Load(), q.max.Load(); offset < min || offset >= max {
		return Entry{}, fmt.Errorf("%w: %s/%d offset %d outside [%d, %d)", ErrNotFound, topic, queue, offset, min, max)
	}
	return q.readEntry(offset)
}

// Read appends the entries from offset from on to dst, up to its capacity.
func (idx *Index) Read(topic string, queue uint32, from uint64, dst []Entry) ([]Entry, error) {
	q := idx.queue(topic, queue)
	if q == nil {
		return dst, fmt.Errorf("%w: no queue %s/%d", ErrNotFound, topic, queue)
	}
	lo, hi := q.min.Load(), q.max.Load()
	if from < lo || from > hi {
		return dst, fmt.Errorf("%w: %s/%d offset %d outside [%d, %d]", ErrNotFound, topic, queue, from, lo, hi)
	}
	// One read per consume-queue file, not one per entry: a fetch of a few
	// hundred messages costs a few system calls.
	bp := entryBufs.Get().(*entryBuf)
	defer entryBufs.Put(bp)
	b := bp[:]
	for off := from; off < hi && len(dst) < cap(dst); {
		q.mu.RLock()
		if len(q.mem) > 0 && off >= q.memFrom {
			// Not written out yet: from memory. mem reaches max, and so hi.
			for i := (off - q.memFrom) * entrySize; i < uint64(len(q.mem)) && off < hi && len(dst) < cap(dst); i += entrySize {
				dst = append(dst, getEntry(q.mem[i:]))
				off++
			}
			q.mu.RUnlock()
			break
		}
		end := hi // the entries below end are in files
		if len(q.mem) > 0 {
			end = min(hi, q.memFrom)
		}
		q.mu.RUnlock()
		n := min(end-off, uint64(cap(dst)-len(dst)), uint64(len(b)/entrySize), q.per-off%q.per)
		cf, err := q.file(off, false, nil)
		if err != nil {
			return dst, err
		}
		chunk := b[:n*entrySize]
		_, err = cf.f.ReadAt(chunk, int64(off%q.per)*entrySize)
		q.cache.put(cf)
		if err != nil {
			return dst, fmt.Errorf("index: read %s: %w", cf.path, err)
		}
		for i := uint64(0); i < n; i++ {
			dst = append(dst, getEntry(chunk[i*entrySize:]))
		}
		off += n
	}
	return dst, nil
}

// Bounds returns a queue's readable offsets.
func (idx *Index) Bounds(topic string, queue uint32) (QueueBounds, bool) {
	q := idx.queue(topic, queue)
	if q == nil {
		return QueueBounds{}, false
	}
	return QueueBounds{Min: q.min.Load(), Max: q.max.Load(), LastStore: q.lastStore.Load()}, true
}

// Queues lists every queue, sorted by topic and queue id.
func (idx *Index) Queues() []QueueStatus {
	idx.qmu.RLock()
	var out []QueueStatus
	for _, m := range idx.queues {
		for _, q := range m {
			out = append(out, QueueStatus{Topic: q.topic, Queue: q.id,
				QueueBounds: QueueBounds{Min: q.min.Load(), Max: q.max.Load(), LastStore: q.lastStore.Load()}})
		}
	}
	idx.qmu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Queue < out[j].Queue
	})
	return out
}

// LookupTime returns the first offset whose store time is at or after t
// (Max when every message is older).
func (idx *Index) LookupTime(topic string, queue uint32, t int64) (uint64, error) {
	q := idx.queue(topic, queue)
	if q == nil {
		return 0, fmt.Errorf("%w: no queue %s/%d", ErrNotFound, topic, queue)
	}
	min, max := q.min.Load(), q.max.Load()
	var err error
	i := sort.Search(int(max-min), func(i int) bool {
		e, rerr := q.readEntry(min + uint64(i))
		if rerr != nil {
			err = rerr
			return true
		}
		return e.StoreTime >= t
	})
	return min + uint64(i), err
}

// LookupKey returns up to max records of topic whose key is key, newest first.
func (idx *Index) LookupKey(topic string, key []byte, max int) ([]KeyHit, error) {
	if idx.opts.Reader == nil {
		return nil, errors.New("index: no RecordReader to verify key hits")
	}
	hits, err := idx.keys.lookup([]byte(topic), key, max)
	// The key index keeps what retention or a topic's deletion dropped
	// from the queues: a hit counts only while its queue still reaches it
	// (a topic created again after a deletion starts past its offsets).
	kept := hits[:0]
	for _, h := range hits {
		if q := idx.queue(topic, h.Queue); q != nil && h.QueueOffset >= q.min.Load() && h.QueueOffset < q.max.Load() {
			kept = append(kept, h)
		}
	}
	return kept, err
}

// DropBefore implements log.Retainer: queues no longer reach below the log's
// new start, and files that only held such entries are deleted.
func (idx *Index) DropBefore(pos int64) {
	idx.mu.Lock()
	defer idx.mu.Unlock()
	idx.wmu.Lock()
	defer idx.wmu.Unlock()
	qs := idx.allQueues()
	for _, q := range qs {
		min, max := q.min.Load(), q.max.Load()
		n := sort.Search(int(max-min), func(i int) bool {
			e, err := q.readEntry(min + uint64(i))
			return err != nil || e.Pos >= pos
		})
		newMin := min + uint64(n)
		q.min.Store(newMin)
		q.mu.Lock()
		if len(q.mem) > 0 && newMin > q.memFrom {
			// Dropped before they were written out.
			k := int(newMin-q.memFrom) * entrySize
			left := copy(q.mem, q.mem[k:])
			q.mem = q.mem[:left]
			q.memFrom = newMin
			idx.buffered.Add(-int64(k / entrySize))
		}
		q.mu.Unlock()
		if newMin != min {
			// Its files below the new start go once the table has it
			// (the next checkpoint: removeBelowMin).
			idx.markTable(q)
		}
	}
	idx.keys.dropBefore(pos)
}

// Checkpoint makes the index durable up to the last dispatched record and
// records that position, so that the next open replays only what follows.
// The producer table is written too when it is due (producers.go).
func (idx *Index) Checkpoint() error { return idx.checkpoint(false) }

func (idx *Index) checkpoint(closing bool) error {
	if err := idx.failed.Load(); err != nil {
		return *err
	}
	// The queues with entries in memory, and the position they reach:
	// every entry before pos is in the memory of a queue taken here, or
	// written out already (by a Dispatch over MaxBufferedEntries: its
	// files are in dirty).
	idx.mu.Lock()
	pos := idx.pos
	qs := idx.pending
	for _, q := range qs {
		q.listed = false
	}
	idx.pending, idx.spare = idx.spare[:0], nil
	idx.mu.Unlock()

	// Oldest entry first: after each chunk, every record before the
	// oldest entry still in memory is indexed, and a long checkpoint (the
	// first one after thousands of queues were made writes that many new
	// files) records that position once a second, so that a crash
	// during it does not replay everything since the one before.
	oldest := make([]int64, len(qs))
	for i, q := range qs {
		oldest[i] = q.oldestPos()
	}
	sort.Sort(byOldest{qs, oldest})

	// A chunk of queues at a time, each chunk synced (where the file
	// system syncs in one call) before the next: the files it made and
	// their names go to the journal in small commits. The log's fdatasync
	// commits the journal's running transaction too, and behind thousands
	// of new files at once it waited past the send queue's limit (BUSY).
	var err error
	last := time.Now()
	for i := 0; i < len(qs) && err == nil; {
		n := min(len(qs)-i, writeOutChunk)
		idx.wmu.Lock()
		err = idx.writeOut(qs[i : i+n])
		idx.wmu.Unlock()
		if i += n; err != nil || i == len(qs) {
			break
		}
		if at := oldest[i]; at != math.MinInt64 && time.Since(last) >= idx.opts.PartialCheckpointEvery {
			err = idx.commit(min(pos, at), false, false)
			last = time.Now()
		} else if _, serr := fsutil.SyncAll(idx.opts.FS, idx.opts.Dir); serr != nil {
			err = idx.syncFailed(fmt.Errorf("index: sync the file system of %s: %w", idx.opts.Dir, serr))
		}
	}
	if err == nil {
		err = idx.commit(pos, true, closing)
	}
	idx.mu.Lock()
	defer idx.mu.Unlock()
	if err != nil {
		// A full disk: what is left stays in memory for the next one.
		for _, q := range qs {
			if !q.listed && q.buffered() > 0 {
				q.listed = true
				idx.pending = append(idx.pending, q)
			}
		}
		return err
	}
	idx.spare = qs[:0]
	return nil
}

// byOldest sorts queues by the log position of their oldest entry in memory.
type byOldest struct {
	qs  []*cqueue
	pos []int64
}

func (b byOldest) Len() int           { return len(b.qs) }
func (b byOldest) Less(i, j int) bool { return b.pos[i] < b.pos[j] }
func (b byOldest) Swap(i, j int) {
	b.qs[i], b.qs[j] = b.qs[j], b.qs[i]
	b.pos[i], b.pos[j] = b.pos[j], b.pos[i]
}

// commit makes everything written out durable, records it in the queue
// table and checkpoints pos (every record before it is indexed). The
// producer table goes with the last commit of a checkpoint, when due.
func (idx *Index) commit(pos int64, final, closing bool) error {
	idx.wmu.Lock()
	err := idx.persist()
	idx.wmu.Unlock()
	if err != nil {
		return err
	}
	if err := idx.keys.sync(); err != nil {
		var fe *fsyncError
		if !errors.As(err, &fe) {
			return err // a write failed (a full disk): the next checkpoint tries again
		}
		return idx.syncFailed(err)
	}
	if final {
		if b, snapPos := idx.producers.snapshot(closing); b != nil {
			if err := writeProducers(idx.opts.FS, idx.opts.Dir, b); err != nil {
				idx.producers.mu.Lock()
				idx.producers.changed = true // the next checkpoint tries again
				idx.producers.mu.Unlock()
				return err
			}
			idx.snapOnDisk = snapPos
		}
	}
	if err := writeIndexCheckpoint(idx.opts.FS, idx.opts.Dir, pos); err != nil {
		return err
	}
	idx.onDisk = pos
	return nil
}

// syncAllOver is how many files and directories a checkpoint syncs one by
// one; over it, it syncs the file system instead (fsutil.SyncAll).
const syncAllOver = 64

// writeOutChunk is how many queues a checkpoint writes out between syncs.
const writeOutChunk = 256

// syncFailed stops checkpoints for good (see failed) and returns err.
func (idx *Index) syncFailed(err error) error {
	err = fmt.Errorf("%w (index checkpoints stop until a restart, which replays the log from the last one)", err)
	if idx.failed.CompareAndSwap(nil, &err) {
		idx.logger.Error("index fsync failed: no index checkpoint is written again by this process; the next start rebuilds what follows the last one from the log", "err", err)
	}
	return *idx.failed.Load()
}

// CheckpointErr is the failed fsync that stopped checkpoints, or nil.
func (idx *Index) CheckpointErr() error {
	if err := idx.failed.Load(); err != nil {
		return *err
	}
	return nil
}

// Close checkpoints and closes every file.
func (idx *Index) Close() error {
	if idx.closed.Swap(true) {
		return ErrClosed
	}
	err := idx.checkpoint(true)
	idx.closeFiles()
	return err
}

func (idx *Index) closeFiles() {
	idx.cache.closeAll()
	idx.table.close()
	if idx.keys != nil {
		idx.keys.close()
	}
}

// checkpoint file: "QIX3" | pos i64 | crc32c u32: the queue table (table.go)
// holds the queues. QIX2 had no table (the files said where each queue
// ends: an index with one is read that way once, and its table made);
// QIX1 was the layout with a directory per queue (rebuilt from the log).
var crcTable = crc32.MakeTable(crc32.Castagnoli)

// readIndexCheckpoint returns the checkpointed position and the layout's
// version (0: no valid checkpoint).
func readIndexCheckpoint(fs fsutil.FS, path string) (int64, int) {
	b, err := fsutil.ReadFile(fs, path)
	if err != nil || len(b) != 16 || (string(b[:4]) != "QIX2" && string(b[:4]) != "QIX3") ||
		crc32.Checksum(b[:12], crcTable) != binary.LittleEndian.Uint32(b[12:]) {
		return 0, 0
	}
	return int64(binary.LittleEndian.Uint64(b[4:])), int(b[3] - '0')
}

func writeIndexCheckpoint(fs fsutil.FS, dir string, pos int64) error {
	b := append([]byte("QIX3"), make([]byte, 12)...)
	binary.LittleEndian.PutUint64(b[4:], uint64(pos))
	binary.LittleEndian.PutUint32(b[12:], crc32.Checksum(b[:12], crcTable))
	err := fsutil.WriteAtomic(fs, filepath.Join(dir, checkpointName), b, 0o644)
	if err != nil {
		return fmt.Errorf("index: checkpoint: %w", err)
	}
	return nil
}
