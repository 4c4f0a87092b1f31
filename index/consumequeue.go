package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/quivermq/quiver/internal/fsutil"
)

const entrySize = 32

// entryBuf is a read buffer of 64 entries. Reads go through an interface
// (fsutil.File), so a buffer on the stack would escape: they take one
// from entryBufs instead, and allocate nothing.
type entryBuf [64 * entrySize]byte

var entryBufs = sync.Pool{New: func() any { return new(entryBuf) }}

// Entry is one consume-queue entry: where the message at a queue offset is.
type Entry struct {
	Pos       int64  // log position of the record
	Size      int32  // record size
	Inner     uint32 // index of the message inside a batch record
	StoreTime int64  // unix nanoseconds
	TagHash   uint64 // hash of the record's tags, 0 without tags
}

func putEntry(b []byte, e Entry) {
	le := binary.LittleEndian
	le.PutUint64(b, uint64(e.Pos))
	le.PutUint32(b[8:], uint32(e.Size))
	le.PutUint32(b[12:], e.Inner)
	le.PutUint64(b[16:], uint64(e.StoreTime))
	le.PutUint64(b[24:], e.TagHash)
}

func getEntry(b []byte) Entry {
	le := binary.LittleEndian
	return Entry{Pos: int64(le.Uint64(b)), Size: int32(le.Uint32(b[8:])), Inner: le.Uint32(b[12:]),
		StoreTime: int64(le.Uint64(b[16:])), TagHash: le.Uint64(b[24:])}
}

// cqueue is one topic/queue's consume queue. The dispatcher goroutine
// appends; readers read concurrently. An offset becomes readable only when
// max is published, after its entry is written.
type cqueue struct {
	dir   string
	topic string
	id    uint32
	per   uint64 // entries per file

	fs    fsutil.FS
	cache *fileCache // the index's open files
	mu    sync.RWMutex
	segs  map[uint64]string // its files' paths by their first offsets (made once: no allocation per read or write)

	min, max  atomic.Uint64 // readable offsets are [min, max)
	lastStore atomic.Int64
	// tailPos is the log position of the entry at max-1 when known and
	// whole (-1: read it): truncateFrom checks a queue without a read.
	// (dispatcher-owned: written and read under Index.mu)
	tailPos int64

	// Dispatcher-owned staging of new entries.
	buf     []byte
	bufFrom uint64

	// Published entries not yet written to their files (guarded by mu):
	// offsets [memFrom, memFrom+len(mem)/entrySize), which end at max.
	// Dispatch appends here and does no file I/O, so its cost does not
	// depend on how many queues a commit touches; Checkpoint writes them
	// out, each queue once (Index.writeOut), and so does Dispatch when
	// more than Options.MaxBufferedEntries wait.
	mem     []byte
	memFrom uint64
	listed  bool // in Index.pending (guarded by Index.mu)
	deleted bool // its topic was deleted: nothing more is written (set under Index.mu and wmu)

	// What its files hold, for the queue table (table.go; guarded by
	// Index.wmu): offsets below wEnd are written to them, the entry at
	// wEnd-1 has store time wLast and log position wTail (-1: none); low
	// is the first offset of its oldest file that may exist.
	wEnd         uint64
	wLast, wTail int64
	low          uint64
	tdirty       bool // in Index.tdirty: its state changed since the table's last edit
}

// tableState is the queue's state for the table. (Index.wmu held)
func (q *cqueue) tableState() qstate {
	s := qstate{low: q.low, min: q.min.Load(), max: q.wEnd, lastStore: q.wLast, tailPos: q.wTail}
	if s.max < s.min {
		// Retention dropped past what was written out.
		s.max, s.tailPos = s.min, -1
	}
	s.low = min(s.low, s.min/q.per*q.per)
	return s
}

// topicDir is where a topic's queue files are: one directory per topic
// (not per queue: a new queue costs a file, not a directory too).
func topicDir(root, topic string) string {
	return filepath.Join(root, "cq", fmt.Sprintf("%x", topic))
}

func (q *cqueue) fileName(first uint64) string {
	return filepath.Join(q.dir, fmt.Sprintf("%d.%020d.cq", q.id, first))
}

// file returns the file holding offset off, from the index's file cache
// (give it back with q.cache.put), creating it when create is set; the
// directories whose names a creation changed go in dirs (for the next
// checkpoint to sync).
func (q *cqueue) file(off uint64, create bool, dirs map[string]struct{}) (*cachedFile, error) {
	first := off / q.per * q.per
	q.mu.RLock()
	path, ok := q.segs[first]
	q.mu.RUnlock()
	if ok {
		return q.cache.get(path, os.O_RDWR)
	}
	if !create {
		return nil, fmt.Errorf("%w: %s/%d offset %d has no file", ErrNotFound, q.topic, q.id, off)
	}
	if _, err := os.Stat(q.dir); err != nil {
		for d := q.dir; ; d = filepath.Dir(d) {
			if _, err := os.Stat(d); err == nil {
				break
			}
			dirs[filepath.Dir(d)] = struct{}{} // a directory the next checkpoint syncs
		}
		if err := q.fs.MkdirAll(q.dir, 0o755); err != nil {
			return nil, err
		}
	}
	path = q.fileName(first)
	cf, err := q.cache.get(path, osCreate)
	if err != nil {
		return nil, err
	}
	dirs[q.dir] = struct{}{}
	q.mu.Lock()
	q.segs[first] = path
	q.mu.Unlock()
	return cf, nil
}

// readEntry reads the entry at off (which must be below max).
func (q *cqueue) readEntry(off uint64) (Entry, error) {
	q.mu.RLock()
	if off >= q.memFrom {
		if i := (off - q.memFrom) * entrySize; i < uint64(len(q.mem)) {
			e := getEntry(q.mem[i:])
			q.mu.RUnlock()
			return e, nil
		}
	}
	q.mu.RUnlock()
	bp := entryBufs.Get().(*entryBuf)
	defer entryBufs.Put(bp)
	b := bp[:entrySize]
	cf, err := q.file(off, false, nil)
	if err != nil {
		return Entry{}, err
	}
	defer q.cache.put(cf)
	if _, err := cf.f.ReadAt(b[:entrySize], int64(off%q.per)*entrySize); err != nil {
		return Entry{}, fmt.Errorf("index: read %s: %w", cf.path, err)
	}
	return getEntry(b), nil
}

// stage adds an entry for offset off (== bufFrom+len(buf)/entrySize).
func (q *cqueue) stage(off uint64, e Entry) {
	if len(q.buf) == 0 {
		q.bufFrom = off
	}
	var tmp [entrySize]byte
	putEntry(tmp[:], e)
	q.buf = append(q.buf, tmp[:]...)
}

// publish makes the staged entries readable: it moves them to mem (no
// I/O) and moves max. It returns how many it published. (dispatcher, under
// Index.mu)
func (q *cqueue) publish(idx *Index) int {
	n := len(q.buf) / entrySize
	if n == 0 {
		return 0
	}
	last := getEntry(q.buf[len(q.buf)-entrySize:])
	q.mu.Lock()
	if len(q.mem) == 0 {
		q.memFrom = q.bufFrom
		if q.mem == nil {
			q.mem = idx.bufs.get()
		}
	}
	q.mem = append(q.mem, q.buf...)
	q.mu.Unlock()
	q.lastStore.Store(last.StoreTime)
	q.tailPos = last.Pos
	q.max.Store(q.bufFrom + uint64(n))
	q.buf = q.buf[:0]
	return n
}

// writeOut writes the queue's published entries that are still in mem to
// its files, creating files and directories as needed; the files written
// go in dirty and the directories whose names changed in dirs, for the
// next checkpoint to sync. It returns how many entries it wrote.
// (Index.wmu held: one writer at a time)
func (q *cqueue) writeOut(bufs *bufPool, dirty, dirs map[string]struct{}) (int, error) {
	if q.deleted {
		return 0, nil
	}
	q.mu.RLock()
	// Only the writer shrinks mem and the dispatcher only appends: the
	// first len(b) bytes stay as they are while the lock is not held.
	b, from := q.mem, q.memFrom
	q.mu.RUnlock()
	if len(b) == 0 {
		return 0, nil
	}
	for rest, off := b, from; len(rest) > 0; {
		cf, err := q.file(off, true, dirs)
		if err != nil {
			return 0, fmt.Errorf("index: %w", err)
		}
		room := (q.per - off%q.per) * entrySize
		n := min(uint64(len(rest)), room)
		_, err = cf.f.WriteAt(rest[:n], int64(off%q.per)*entrySize)
		q.cache.put(cf)
		if err != nil {
			return 0, fmt.Errorf("index: write %s: %w", cf.path, err)
		}
		dirty[cf.path] = struct{}{}
		rest = rest[n:]
		off += n / entrySize
	}
	last := getEntry(b[len(b)-entrySize:])
	q.wEnd, q.wLast, q.wTail = from+uint64(len(b)/entrySize), last.StoreTime, last.Pos
	q.mu.Lock()
	left := copy(q.mem, q.mem[len(b):])
	q.mem = q.mem[:left]
	q.memFrom += uint64(len(b) / entrySize)
	if left == 0 {
		bufs.put(q.mem)
		q.mem = nil
	}
	q.mu.Unlock()
	return len(b) / entrySize, nil
}

// oldestPos is the log position of the oldest entry in mem, or MinInt64
// when mem is empty (written out already: only a sync is owed).
func (q *cqueue) oldestPos() int64 {
	q.mu.RLock()
	defer q.mu.RUnlock()
	if len(q.mem) == 0 {
		return math.MinInt64
	}
	return getEntry(q.mem).Pos
}

// buffered is how many entries wait in mem.
func (q *cqueue) buffered() int {
	q.mu.RLock()
	defer q.mu.RUnlock()
	return len(q.mem) / entrySize
}

// truncateFrom drops entries whose record lies at or after end (the tail of
// the queue, since positions grow with offsets) and entries that were never
// completely written (size 0). Its entries must all be written out.
func (q *cqueue) truncateFrom(end int64, dirty, dirs map[string]struct{}) (changed bool, err error) {
	max := q.max.Load()
	if q.tailPos >= 0 && q.tailPos < end {
		return false, nil // its newest entry is whole and before end: nothing to cut
	}
	q.tailPos = -1
	for max > q.min.Load() {
		e, err := q.readEntry(max - 1)
		if errors.Is(err, io.EOF) || errors.Is(err, ErrNotFound) || errors.Is(err, os.ErrNotExist) {
			// Past the end of a file that is not the last, or a file that
			// is gone: a power cut took back the entries there (after the
			// checkpoint, which synced everything before it).
			e, err = Entry{}, nil
		}
		if err != nil {
			return false, err
		}
		if e.Size > 0 && e.Pos < end {
			break
		}
		max--
	}
	if max == q.max.Load() {
		return false, nil
	}
	q.max.Store(max)
	// Drop whole files past the end and cut the last one.
	last := max / q.per * q.per
	q.mu.Lock()
	q.memFrom = max     // mem is empty: the caller wrote it out
	cut := q.segs[last] // the file that holds max, if any
	for first, path := range q.segs {
		if first > last {
			q.cache.forget(path)
			q.fs.Remove(path)
			delete(q.segs, first)
			delete(dirty, path)
			dirs[q.dir] = struct{}{}
		}
	}
	q.mu.Unlock()
	if cut != "" {
		cf, err := q.cache.get(cut, os.O_RDWR)
		if err != nil {
			return false, fmt.Errorf("index: truncate: %w", err)
		}
		err = cf.f.Truncate(int64(max-last) * entrySize)
		q.cache.put(cf)
		if err != nil {
			return false, fmt.Errorf("index: truncate %s: %w", cf.path, err)
		}
		dirty[cf.path] = struct{}{}
	}
	if max > q.min.Load() {
		if e, err := q.readEntry(max - 1); err == nil {
			q.lastStore.Store(e.StoreTime)
			if e.Size > 0 {
				q.tailPos = e.Pos
			}
		}
	}
	q.wEnd, q.wLast, q.wTail = max, q.lastStore.Load(), q.tailPos
	return true, nil
}

// queueFile is one consume-queue file found at open.
type queueFile struct {
	first uint64
	path  string
}

// loadTopic finds an existing topic directory's queue files and makes its
// queues. It opens none but the last file of each queue (its size is the
// queue's end, its last entry the newest message); the cache opens the
// others as they are read.
func loadTopic(fs fsutil.FS, cache *fileCache, dir, topic string, per uint64) ([]*cqueue, error) {
	ents, err := fs.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	files := map[uint32][]queueFile{}
	for _, e := range ents {
		name := e.Name()
		id, first, ok := parseQueueFile(name)
		if !ok || first%per != 0 {
			return nil, fmt.Errorf("%w: unexpected file %s (was EntriesPerFile changed?)", ErrCorrupt, filepath.Join(dir, name))
		}
		files[id] = append(files[id], queueFile{first: first, path: filepath.Join(dir, name)})
	}
	qs := make([]*cqueue, 0, len(files))
	for id, fl := range files {
		q := &cqueue{dir: dir, topic: topic, id: id, per: per, segs: make(map[uint64]string, len(fl)), fs: fs, cache: cache, tailPos: -1}
		sort.Slice(fl, func(i, j int) bool { return fl[i].first < fl[j].first })
		for _, f := range fl {
			q.segs[f.first] = f.path
		}
		// The last file's size gives the queue's end (an fstat of the file
		// the tail read opens anyway: no stat of every file).
		last := fl[len(fl)-1]
		cf, err := cache.get(last.path, os.O_RDWR)
		if err != nil {
			return nil, err
		}
		fi, err := cf.f.Stat()
		cache.put(cf)
		if err != nil {
			return nil, err
		}
		q.low = fl[0].first
		q.min.Store(fl[0].first)
		q.max.Store(last.first + uint64(fi.Size())/entrySize)
		q.memFrom = q.max.Load()
		if max := q.max.Load(); max > fl[0].first {
			if e, err := q.readEntry(max - 1); err == nil {
				q.lastStore.Store(e.StoreTime)
				if e.Size > 0 {
					q.tailPos = e.Pos
				}
			}
		}
		qs = append(qs, q)
	}
	return qs, nil
}

// skipGap moves min past the entries at the start of the queue's first
// file that were never written (all zeros): a queue that started past its
// file's first offset (a topic created again after its deletion; a queue
// whose files retention had all removed). Usually one read of a file the
// open reads anyway. Only after truncateFrom: zeros a power cut left in
// entries past the checkpoint are a torn tail, which it cuts, not a gap.
func (q *cqueue) skipGap() error {
	bp := entryBufs.Get().(*entryBuf)
	defer entryBufs.Put(bp)
	lo, hi := q.min.Load(), q.max.Load()
	for lo < hi {
		n := min(hi-lo, uint64(len(bp)/entrySize), q.per-lo%q.per)
		cf, err := q.file(lo, false, nil)
		if err != nil {
			return err
		}
		chunk := bp[:n*entrySize]
		_, err = cf.f.ReadAt(chunk, int64(lo%q.per)*entrySize)
		q.cache.put(cf)
		if err != nil {
			return fmt.Errorf("index: read %s: %w", cf.path, err)
		}
		for i := uint64(0); i < n; i++ {
			if e := getEntry(chunk[i*entrySize:]); e.Size != 0 || e.Pos != 0 {
				q.min.Store(lo + i)
				return nil
			}
		}
		lo += n
	}
	q.min.Store(hi)
	return nil
}

// parseQueueFile reads a queue file's name: "<queue id>.<first offset>.cq".
func parseQueueFile(name string) (id uint32, first uint64, ok bool) {
	idS, rest, ok1 := strings.Cut(name, ".")
	firstS, ok2 := strings.CutSuffix(rest, ".cq")
	if !ok1 || !ok2 {
		return 0, 0, false
	}
	i, err1 := strconv.ParseUint(idS, 10, 32)
	f, err2 := strconv.ParseUint(firstS, 10, 64)
	return uint32(i), f, err1 == nil && err2 == nil
}
