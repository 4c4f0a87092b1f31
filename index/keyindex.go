package index

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/quivermq/quiver/internal/fsutil"
	qlog "github.com/quivermq/quiver/log"
)

// Key-index file layout (little endian):
//
//	header (64 B): "QKI1" | slots u32 | capacity u32 | count u32 | flags u8 | zeros
//	    flags bit 0 (sealed): the slot table is complete and durable
//	slots × u32:   1 + index of the newest entry whose hash falls in the slot, 0 if none
//	capacity × 40 B entries:
//	    hash u64 | pos i64 | size u32 | prev u32 | queue offset u64 | queue u32 | zero u32
//
// Files are read through a read-only memory mapping and written with
// pwrite (through the index's fsutil.FS, so that a crash test can cut the
// power under them): a write to a full file system fails with ENOSPC
// instead of killing the process with SIGBUS, and reading a hole reads
// zeros. Entries are appended; the count in the header and the slot table
// are written at checkpoints only: the slot table of the file taking
// entries lives in memory, is written once the file takes no more, and
// only after it is durable is the file marked sealed; a file that is not
// sealed has its table rebuilt from its entries at open. So a keyed record
// costs no system call of its own: a dispatch writes its entries with one
// pwrite.
const (
	kiHeader = 64
	kiEntry  = 40
)

var kiMagic = []byte("QKI1")

// KeyHit is one record found by key.
type KeyHit struct {
	Pos         int64
	Size        int32
	Queue       uint32
	QueueOffset uint64
}

type keyFile struct {
	path  string
	f     fsutil.File
	data  []byte // read-only mapping of the whole file
	slots uint32
	cap   uint32
	count uint32
	// mem is the slot table when it is newer than the file's (the newest
	// file, or one whose slots were rebuilt); nil: the mapping has it.
	mem []uint32
	// dirty: entries, count or slots changed since the last sync.
	dirty bool
	// sealed: the file's slot table is durable and flagged so (kiSealed).
	sealed bool
}

const (
	kiFlags  = 16 // offset of the flags byte
	kiSealed = 1
)

func (k *keyFile) entryOff(j uint32) int64 { return int64(kiHeader + 4*int(k.slots) + kiEntry*int(j)) }

func (k *keyFile) entryAt(j uint32) []byte {
	off := k.entryOff(j)
	return k.data[off : off+kiEntry]
}

func (k *keyFile) slot(i uint32) uint32 {
	if k.mem != nil {
		return k.mem[i]
	}
	return binary.LittleEndian.Uint32(k.data[kiHeader+4*i:])
}

func (k *keyFile) close() {
	if k.data != nil {
		unix.Munmap(k.data)
		k.data = nil
	}
	k.f.Close()
}

// keyRec is a keyed record waiting for the dispatch's flush.
type keyRec struct {
	hash  uint64
	pos   int64
	size  int32
	qoff  uint64
	queue uint32
}

type keyIndex struct {
	dir     string
	fs      fsutil.FS
	slots   uint32
	cap     uint32
	reader  RecordReader
	mu      sync.RWMutex
	files   []*keyFile // oldest first; the last one takes new entries
	nextSeq int
	// dirChanged: a file was created or removed since the last sync.
	dirChanged bool

	staged []keyRec // owned by the dispatcher (Index.mu)
	buf    []byte   // flush's entries, reused
	undos  []slotUndo
}

// slotUndo is a slot's value before a flush changed it.
type slotUndo struct{ slot, old uint32 }

// end is the log position after the newest entry's record: a record below
// it is already indexed (a failed dispatch is retried, and must not index
// a record twice). (mu held)
func (ki *keyIndex) end() int64 {
	le := binary.LittleEndian
	for i := len(ki.files) - 1; i >= 0; i-- {
		if kf := ki.files[i]; kf.count > 0 {
			e := kf.entryAt(kf.count - 1)
			return int64(le.Uint64(e[8:])) + int64(le.Uint32(e[16:]))
		}
	}
	return -1
}

func keyHash(topic, key []byte) uint64 {
	h := uint64(14695981039346656037)
	for _, c := range topic {
		h = (h ^ uint64(c)) * 1099511628211
	}
	h = (h ^ 0xff) * 1099511628211
	for _, c := range key {
		h = (h ^ uint64(c)) * 1099511628211
	}
	return h
}

func openKeyIndex(fs fsutil.FS, dir string, slots, capacity int, reader RecordReader) (*keyIndex, error) {
	ki := &keyIndex{dir: dir, fs: fs, slots: uint32(slots), cap: uint32(capacity), reader: reader}
	if err := fsutil.MkdirAll(fs, dir, 0o755); err != nil {
		return nil, err
	}
	ents, err := fs.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var seqs []int
	for _, e := range ents {
		if s, err := strconv.Atoi(strings.TrimSuffix(e.Name(), ".ki")); err == nil && strings.HasSuffix(e.Name(), ".ki") {
			seqs = append(seqs, s)
		}
	}
	sort.Ints(seqs)
	for i, s := range seqs {
		path := filepath.Join(dir, fmt.Sprintf("%020d.ki", s))
		kf, err := openKeyFile(fs, path, 0, 0)
		if errors.Is(err, ErrCorrupt) && i == len(seqs)-1 {
			// The newest file, cut off by a power failure while it was
			// being created (creation is synced before any entry goes in
			// it): it holds nothing, and is made again.
			if err := fs.Remove(path); err != nil {
				ki.close()
				return nil, err
			}
			ki.dirChanged = true
			ki.nextSeq = s
			break
		}
		if err != nil {
			ki.close()
			return nil, err
		}
		ki.files = append(ki.files, kf)
		ki.nextSeq = s + 1
	}
	for _, kf := range ki.files {
		if !kf.sealed {
			ki.rebuildSlots(kf) // its table was never written whole
		}
	}
	return ki, nil
}

// openKeyFile opens an existing file (slots == 0) or creates one.
func openKeyFile(fs fsutil.FS, path string, slots, capacity uint32) (*keyFile, error) {
	flag := os.O_RDWR
	if slots != 0 {
		flag |= os.O_CREATE | os.O_EXCL
	}
	f, err := fs.OpenFile(path, flag, 0o644)
	if err != nil {
		return nil, err
	}
	kf := &keyFile{path: path, f: f}
	fail := func(err error) (*keyFile, error) {
		kf.close()
		if slots != 0 {
			fs.Remove(path)
		}
		return nil, err
	}
	le := binary.LittleEndian
	if slots != 0 {
		// The file is as long as its capacity from the start (sparse: only
		// what is written takes blocks); the header is written now.
		var h [kiHeader]byte
		copy(h[:], kiMagic)
		le.PutUint32(h[4:], slots)
		le.PutUint32(h[8:], capacity)
		if err := f.Truncate(int64(kiHeader + 4*int(slots) + kiEntry*int(capacity))); err != nil {
			return fail(fmt.Errorf("index: key index %s: %w", path, err))
		}
		if _, err := f.WriteAt(h[:], 0); err != nil {
			return fail(fmt.Errorf("index: key index %s: %w", path, err))
		}
		// Made durable at once (a file takes a million entries, so this
		// is rare): a later file then exists only after this one is
		// whole, and open can tell a file a power cut took back (the
		// newest, with a bad header) from a corrupt one.
		if err := f.Sync(); err != nil {
			return fail(fmt.Errorf("index: key index %s: %w", path, err))
		}
		if err := fs.SyncDir(filepath.Dir(path)); err != nil {
			return fail(fmt.Errorf("index: key index %s: %w", path, err))
		}
	}
	fi, err := f.Stat()
	if err != nil {
		return fail(err)
	}
	if fi.Size() < kiHeader {
		return fail(fmt.Errorf("%w: key index %s too short", ErrCorrupt, path))
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fail(fmt.Errorf("index: mmap %s: %w", path, err))
	}
	kf.data = data
	kf.slots, kf.cap, kf.count = le.Uint32(data[4:]), le.Uint32(data[8:]), le.Uint32(data[12:])
	kf.sealed = data[kiFlags]&kiSealed != 0
	if !bytes.Equal(data[:4], kiMagic) || kf.slots == 0 ||
		int64(kiHeader+4*int(kf.slots)+kiEntry*int(kf.cap)) != fi.Size() || kf.count > kf.cap {
		return fail(fmt.Errorf("%w: key index %s has a bad header", ErrCorrupt, path))
	}
	if slots != 0 {
		kf.mem = make([]uint32, slots)
	}
	return kf, nil
}

// stage queues a keyed record for flush. (Index.mu held)
func (ki *keyIndex) stage(ri *qlog.RecordInfo) {
	ki.staged = append(ki.staged, keyRec{hash: keyHash(ri.Topic, ri.Key), pos: ri.Pos, size: ri.Size,
		qoff: ri.QueueOffset, queue: ri.QueueID})
}

// flush indexes the staged records: one pwrite of their entries per file.
// On an error (ENOSPC) nothing of it is published and the dispatch is
// retried. (Index.mu held)
func (ki *keyIndex) flush() error {
	recs := ki.staged
	ki.staged = ki.staged[:0]
	if len(recs) == 0 {
		return nil
	}
	ki.mu.Lock()
	defer ki.mu.Unlock()
	// Records indexed by an earlier try of this dispatch are skipped.
	end := ki.end()
	for len(recs) > 0 && recs[0].pos < end {
		recs = recs[1:]
	}
	le := binary.LittleEndian
	for len(recs) > 0 {
		var kf *keyFile
		if n := len(ki.files); n > 0 && ki.files[n-1].count < ki.files[n-1].cap {
			kf = ki.files[n-1]
		} else {
			var err error
			kf, err = openKeyFile(ki.fs, filepath.Join(ki.dir, fmt.Sprintf("%020d.ki", ki.nextSeq)), ki.slots, ki.cap)
			if err != nil {
				return err
			}
			ki.nextSeq++
			ki.files = append(ki.files, kf)
		}
		if kf.mem == nil {
			ki.rebuildSlots(kf)
		}
		n := min(uint32(len(recs)), kf.cap-kf.count)
		ki.buf = ki.buf[:0]
		undos := ki.undos[:0]
		for i, r := range recs[:n] {
			s := uint32(r.hash % uint64(kf.slots))
			var e [kiEntry]byte
			le.PutUint64(e[:], r.hash)
			le.PutUint64(e[8:], uint64(r.pos))
			le.PutUint32(e[16:], uint32(r.size))
			le.PutUint32(e[20:], kf.mem[s])
			le.PutUint64(e[24:], r.qoff)
			le.PutUint32(e[32:], r.queue)
			ki.buf = append(ki.buf, e[:]...)
			undos = append(undos, slotUndo{s, kf.mem[s]})
			kf.mem[s] = kf.count + uint32(i) + 1
		}
		ki.undos = undos
		if _, err := kf.f.WriteAt(ki.buf, kf.entryOff(kf.count)); err != nil {
			for i := len(undos) - 1; i >= 0; i-- {
				kf.mem[undos[i].slot] = undos[i].old
			}
			return fmt.Errorf("index: key index %s: %w", kf.path, err)
		}
		kf.count += n
		kf.dirty = true
		recs = recs[n:]
	}
	return nil
}

// dropStaged forgets staged records (a failed dispatch). (Index.mu held)
func (ki *keyIndex) dropStaged() { ki.staged = ki.staged[:0] }

// lookup returns up to max records whose topic and key match, newest first.
func (ki *keyIndex) lookup(topic, key []byte, max int) ([]KeyHit, error) {
	ki.mu.RLock()
	defer ki.mu.RUnlock()
	le := binary.LittleEndian
	h := keyHash(topic, key)
	var hits []KeyHit
	var buf []byte
	var rec qlog.Record
	for i := len(ki.files) - 1; i >= 0 && len(hits) < max; i-- {
		kf := ki.files[i]
		j := kf.slot(uint32(h % uint64(kf.slots)))
		for steps := uint32(0); j != 0 && len(hits) < max && steps <= kf.count; steps++ {
			if j > kf.count {
				break // points past the entries that count: a torn update
			}
			e := kf.entryAt(j - 1)
			if le.Uint64(e) == h {
				hit := KeyHit{Pos: int64(le.Uint64(e[8:])), Size: int32(le.Uint32(e[16:])),
					QueueOffset: le.Uint64(e[24:]), Queue: le.Uint32(e[32:])}
				var err error
				buf, err = ki.reader.ReadRecord(hit.Pos, hit.Size, buf)
				if err == nil {
					if _, err = qlog.DecodeRecord(buf, &rec); err == nil &&
						bytes.Equal(rec.Topic, topic) && bytes.Equal(rec.Key, key) {
						hits = append(hits, hit)
					}
				}
				// A record retention deleted is simply not a hit.
			}
			prev := le.Uint32(e[20:])
			if prev >= j {
				break // links only point back: a torn entry
			}
			j = prev
		}
	}
	return hits, nil
}

// truncateFrom drops entries of records at or after end (or never fully
// written) from the newest files, and rebuilds their slot tables.
func (ki *keyIndex) truncateFrom(end int64) error {
	ki.mu.Lock()
	defer ki.mu.Unlock()
	le := binary.LittleEndian
	for i := len(ki.files) - 1; i >= 0; i-- {
		kf := ki.files[i]
		n := kf.count
		for n > 0 {
			e := kf.entryAt(n - 1)
			if le.Uint32(e[16:]) != 0 && int64(le.Uint64(e[8:])) < end {
				break
			}
			n--
		}
		if n != kf.count {
			if kf.sealed {
				// Its table is about to change: unsealed first, durably,
				// so that a crash before the new table is synced has it
				// rebuilt at open rather than trusted.
				if err := kf.setFlags(0); err != nil {
					return err
				}
			}
			kf.count = n
			kf.dirty = true
			ki.rebuildSlots(kf)
		}
		if n > 0 {
			break
		}
	}
	return nil
}

// setFlags writes the flags byte and syncs it.
func (kf *keyFile) setFlags(flags byte) error {
	if _, err := kf.f.WriteAt([]byte{flags}, kiFlags); err != nil {
		return fmt.Errorf("index: key index %s: %w", kf.path, err)
	}
	if err := kf.f.Sync(); err != nil {
		return &fsyncError{fmt.Errorf("index: fsync %s: %w", kf.path, err)}
	}
	kf.sealed = flags&kiSealed != 0
	return nil
}

// rebuildSlots recomputes kf's slot table, in memory, from its entries
// (their links only point back, so they stay right), so that no slot
// points at a dropped entry. (mu held, or not shared yet)
func (ki *keyIndex) rebuildSlots(kf *keyFile) {
	le := binary.LittleEndian
	if kf.mem == nil {
		kf.mem = make([]uint32, kf.slots)
	} else {
		clear(kf.mem)
	}
	for j := uint32(0); j < kf.count; j++ {
		kf.mem[le.Uint64(kf.entryAt(j))%uint64(kf.slots)] = j + 1
	}
	kf.dirty = true
}

// dropBefore removes whole files whose entries all point below pos.
func (ki *keyIndex) dropBefore(pos int64) {
	ki.mu.Lock()
	defer ki.mu.Unlock()
	le := binary.LittleEndian
	for len(ki.files) > 1 {
		kf := ki.files[0]
		if kf.count > 0 && int64(le.Uint64(kf.entryAt(kf.count - 1)[8:])) >= pos {
			return
		}
		kf.close()
		ki.fs.Remove(kf.path)
		ki.files = ki.files[1:]
		ki.dirChanged = true
	}
}

// sync makes every entry indexed so far durable: it writes the counts and
// the slot tables of the files that are full (the newest one's stays in
// memory), then fsyncs them and, when files came or went, the directory.
// The writes are made under mu, the fsyncs outside it, so that a dispatch
// waits for page-cache copies only.
func (ki *keyIndex) sync() error {
	ki.mu.Lock()
	var files, seal []*keyFile
	err := func() error {
		for i, kf := range ki.files {
			if !kf.dirty {
				continue
			}
			files = append(files, kf)
			var h [4]byte
			binary.LittleEndian.PutUint32(h[:], kf.count)
			if _, err := kf.f.WriteAt(h[:], 12); err != nil {
				return fmt.Errorf("index: key index %s: %w", kf.path, err)
			}
			if kf.mem != nil && (i < len(ki.files)-1 || kf.count == kf.cap) {
				b := make([]byte, 4*len(kf.mem))
				for s, v := range kf.mem {
					binary.LittleEndian.PutUint32(b[4*s:], v)
				}
				if _, err := kf.f.WriteAt(b, kiHeader); err != nil {
					return fmt.Errorf("index: key index %s: %w", kf.path, err)
				}
				kf.mem = nil // the mapping sees the pwrite
				seal = append(seal, kf)
			}
		}
		return nil
	}()
	if err != nil {
		ki.mu.Unlock()
		return err // still dirty: the next checkpoint tries again
	}
	syncs := make([]fsutil.File, len(files))
	for i, kf := range files {
		kf.dirty = false
		syncs[i] = kf.f
	}
	dirChanged := ki.dirChanged
	ki.dirChanged = false
	ki.mu.Unlock()
	// A failed fsync ends checkpoints for the process (Index.syncFailed):
	// nothing is marked dirty again.
	for _, f := range syncs {
		if err := f.Sync(); err != nil && !errors.Is(err, os.ErrClosed) {
			return &fsyncError{fmt.Errorf("index: fsync %s: %w", f.Name(), err)}
		}
	}
	if dirChanged {
		if err := ki.fs.SyncDir(ki.dir); err != nil {
			return &fsyncError{fmt.Errorf("index: sync directory %s: %w", ki.dir, err)}
		}
	}
	// Tables now durable: their files are sealed (rare: once per file).
	ki.mu.Lock()
	defer ki.mu.Unlock()
	for _, kf := range seal {
		if kf.mem != nil || kf.data == nil {
			continue // rebuilt by a truncation since, or dropped
		}
		if err := kf.setFlags(kiSealed); err != nil {
			return err
		}
	}
	return nil
}

func (ki *keyIndex) close() {
	ki.mu.Lock()
	defer ki.mu.Unlock()
	for _, kf := range ki.files {
		kf.close()
	}
	ki.files = nil
}

// fsyncError is a failed fsync, after which no checkpoint may be written
// (see Index.failed); other errors of sync are failed writes, retried.
type fsyncError struct{ err error }

func (e *fsyncError) Error() string { return e.err.Error() }
func (e *fsyncError) Unwrap() error { return e.err }
