package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
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
}

func queueDir(root, topic string, id uint32) string {
	return filepath.Join(root, "cq", fmt.Sprintf("%x", topic), strconv.FormatUint(uint64(id), 10))
}

func (q *cqueue) fileName(first uint64) string {
	return filepath.Join(q.dir, fmt.Sprintf("%020d.cq", first))
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
	for d := q.dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		dirs[filepath.Dir(d)] = struct{}{} // a directory the next checkpoint syncs
	}
	if err := q.fs.MkdirAll(q.dir, 0o755); err != nil {
		return nil, err
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

// flush writes the staged entries and publishes them; it returns the files
// it wrote, for the next checkpoint's fsync.
func (q *cqueue) flush(dirty, dirs map[string]struct{}) error {
	b, off := q.buf, q.bufFrom
	for len(b) > 0 {
		cf, err := q.file(off, true, dirs)
		if err != nil {
			return fmt.Errorf("index: %w", err)
		}
		room := (q.per - off%q.per) * entrySize
		n := min(uint64(len(b)), room)
		_, err = cf.f.WriteAt(b[:n], int64(off%q.per)*entrySize)
		q.cache.put(cf)
		if err != nil {
			return fmt.Errorf("index: write %s: %w", cf.path, err)
		}
		dirty[cf.path] = struct{}{}
		b = b[n:]
		off += n / entrySize
	}
	if len(q.buf) > 0 {
		last := getEntry(q.buf[len(q.buf)-entrySize:])
		q.lastStore.Store(last.StoreTime)
		q.tailPos = last.Pos
		q.max.Store(off)
	}
	q.buf = q.buf[:0]
	return nil
}

// truncateFrom drops entries whose record lies at or after end (the tail of
// the queue, since positions grow with offsets) and entries that were never
// completely written (size 0).
func (q *cqueue) truncateFrom(end int64, dirty, dirs map[string]struct{}) error {
	max := q.max.Load()
	if q.tailPos >= 0 && q.tailPos < end {
		return nil // its newest entry is whole and before end: nothing to cut
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
			return err
		}
		if e.Size > 0 && e.Pos < end {
			break
		}
		max--
	}
	if max == q.max.Load() {
		return nil
	}
	q.max.Store(max)
	// Drop whole files past the end and cut the last one.
	last := max / q.per * q.per
	q.mu.Lock()
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
			return fmt.Errorf("index: truncate: %w", err)
		}
		err = cf.f.Truncate(int64(max-last) * entrySize)
		q.cache.put(cf)
		if err != nil {
			return fmt.Errorf("index: truncate %s: %w", cf.path, err)
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
	return nil
}

// loadQueue finds an existing queue directory's files. It opens none: the
// last one's size gives the queue's end, and the cache opens files as
// they are read.
func loadQueue(fs fsutil.FS, cache *fileCache, dir, topic string, id uint32, per uint64) (*cqueue, error) {
	q := &cqueue{dir: dir, topic: topic, id: id, per: per, segs: map[uint64]string{}, fs: fs, cache: cache, tailPos: -1}
	ents, err := fs.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var firsts []uint64
	sizes := map[uint64]int64{}
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".cq") {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(name, ".cq"), 10, 64)
		if err != nil || first%per != 0 {
			return nil, fmt.Errorf("%w: unexpected file %s (was EntriesPerFile changed?)", ErrCorrupt, filepath.Join(dir, name))
		}
		fi, err := e.Info()
		if err != nil {
			return nil, err
		}
		firsts = append(firsts, first)
		sizes[first] = fi.Size()
		q.segs[first] = filepath.Join(dir, name)
	}
	if len(firsts) == 0 {
		return q, nil
	}
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	lastFirst := firsts[len(firsts)-1]
	q.min.Store(firsts[0])
	q.max.Store(lastFirst + uint64(sizes[lastFirst])/entrySize)
	if max := q.max.Load(); max > firsts[0] {
		if e, err := q.readEntry(max - 1); err == nil {
			q.lastStore.Store(e.StoreTime)
			if e.Size > 0 {
				q.tailPos = e.Pos
			}
		}
	}
	return q, nil
}
