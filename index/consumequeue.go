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
	mu    sync.RWMutex
	files map[uint64]fsutil.File // by first offset

	min, max  atomic.Uint64 // readable offsets are [min, max)
	lastStore atomic.Int64

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

// file returns the file holding offset off, opening or creating it; the
// directories whose names a creation changed go in dirs (for the next
// checkpoint to sync).
func (q *cqueue) file(off uint64, create bool, dirs map[string]struct{}) (fsutil.File, error) {
	first := off / q.per * q.per
	q.mu.RLock()
	f := q.files[first]
	q.mu.RUnlock()
	if f != nil || !create {
		if f == nil {
			return nil, fmt.Errorf("%w: %s/%d offset %d has no file", ErrNotFound, q.topic, q.id, off)
		}
		return f, nil
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
	f, err := q.fs.OpenFile(q.fileName(first), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	dirs[q.dir] = struct{}{}
	q.mu.Lock()
	q.files[first] = f
	q.mu.Unlock()
	return f, nil
}

// readEntry reads the entry at off (which must be below max).
func (q *cqueue) readEntry(off uint64) (Entry, error) {
	bp := entryBufs.Get().(*entryBuf)
	defer entryBufs.Put(bp)
	b := bp[:entrySize]
	f, err := q.file(off, false, nil)
	if err != nil {
		return Entry{}, err
	}
	if _, err := f.ReadAt(b[:entrySize], int64(off%q.per)*entrySize); err != nil {
		return Entry{}, fmt.Errorf("index: read %s: %w", f.Name(), err)
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
func (q *cqueue) flush(dirty map[fsutil.File]struct{}, dirs map[string]struct{}) error {
	b, off := q.buf, q.bufFrom
	for len(b) > 0 {
		f, err := q.file(off, true, dirs)
		if err != nil {
			return fmt.Errorf("index: %w", err)
		}
		room := (q.per - off%q.per) * entrySize
		n := min(uint64(len(b)), room)
		if _, err := f.WriteAt(b[:n], int64(off%q.per)*entrySize); err != nil {
			return fmt.Errorf("index: write %s: %w", f.Name(), err)
		}
		dirty[f] = struct{}{}
		b = b[n:]
		off += n / entrySize
	}
	if len(q.buf) > 0 {
		last := getEntry(q.buf[len(q.buf)-entrySize:])
		q.lastStore.Store(last.StoreTime)
		q.max.Store(off)
	}
	q.buf = q.buf[:0]
	return nil
}

// truncateFrom drops entries whose record lies at or after end (the tail of
// the queue, since positions grow with offsets) and entries that were never
// completely written (size 0).
func (q *cqueue) truncateFrom(end int64, dirty map[fsutil.File]struct{}, dirs map[string]struct{}) error {
	max := q.max.Load()
	for max > q.min.Load() {
		e, err := q.readEntry(max - 1)
		if errors.Is(err, io.EOF) || errors.Is(err, ErrNotFound) {
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
	q.mu.Lock()
	defer q.mu.Unlock()
	for first, f := range q.files {
		switch {
		case first >= max && !(first == max/q.per*q.per):
			f.Close()
			q.fs.Remove(f.Name())
			delete(q.files, first)
			delete(dirty, f)
			dirs[q.dir] = struct{}{}
		case first == max/q.per*q.per:
			if err := f.Truncate(int64(max-first) * entrySize); err != nil {
				return fmt.Errorf("index: truncate %s: %w", f.Name(), err)
			}
		}
	}
	if max > q.min.Load() {
		e, err := q.readEntryLocked(max - 1)
		if err == nil {
			q.lastStore.Store(e.StoreTime)
		}
	}
	return nil
}

func (q *cqueue) readEntryLocked(off uint64) (Entry, error) {
	bp := entryBufs.Get().(*entryBuf)
	defer entryBufs.Put(bp)
	b := bp[:entrySize]
	f := q.files[off/q.per*q.per]
	if f == nil {
		return Entry{}, ErrNotFound
	}
	if _, err := f.ReadAt(b[:entrySize], int64(off%q.per)*entrySize); err != nil {
		return Entry{}, err
	}
	return getEntry(b), nil
}

// load opens an existing queue directory.
func loadQueue(fs fsutil.FS, dir, topic string, id uint32, per uint64) (*cqueue, error) {
	q := &cqueue{dir: dir, topic: topic, id: id, per: per, files: map[uint64]fsutil.File{}, fs: fs}
	ents, err := fs.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var firsts []uint64
	for _, e := range ents {
		name := e.Name()
		if !strings.HasSuffix(name, ".cq") {
			continue
		}
		first, err := strconv.ParseUint(strings.TrimSuffix(name, ".cq"), 10, 64)
		if err != nil || first%per != 0 {
			return nil, fmt.Errorf("%w: unexpected file %s (was EntriesPerFile changed?)", ErrCorrupt, filepath.Join(dir, name))
		}
		firsts = append(firsts, first)
	}
	sort.Slice(firsts, func(i, j int) bool { return firsts[i] < firsts[j] })
	for _, first := range firsts {
		f, err := fs.OpenFile(q.fileName(first), os.O_RDWR, 0)
		if err != nil {
			q.close()
			return nil, err
		}
		q.files[first] = f
	}
	if len(firsts) == 0 {
		return q, nil
	}
	last := q.files[firsts[len(firsts)-1]]
	fi, err := last.Stat()
	if err != nil {
		q.close()
		return nil, err
	}
	q.min.Store(firsts[0])
	q.max.Store(firsts[len(firsts)-1] + uint64(fi.Size())/entrySize)
	if max := q.max.Load(); max > firsts[0] {
		if e, err := q.readEntry(max - 1); err == nil {
			q.lastStore.Store(e.StoreTime)
		}
	}
	return q, nil
}

func (q *cqueue) close() {
	q.mu.Lock()
	defer q.mu.Unlock()
	for k, f := range q.files {
		f.Close()
		delete(q.files, k)
	}
}
