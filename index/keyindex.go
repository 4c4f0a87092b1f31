package index

import (
	"bytes"
	"encoding/binary"
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

// Key-index file layout (little endian), memory-mapped:
//
//	header (64 B): "QKI1" | slots u32 | capacity u32 | count u32 | zeros
//	slots × u32:   1 + index of the newest entry whose hash falls in the slot, 0 if none
//	capacity × 40 B entries:
//	    hash u64 | pos i64 | size u32 | prev u32 | queue offset u64 | queue u32 | zero u32
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
	data  []byte
	slots uint32
	cap   uint32
	count uint32
	alloc int64 // bytes from the start given disk blocks (see ensureAlloc)
}

// A key file is as long as its capacity from the start, but only the
// header, the slots and the entries written so far (plus up to
// kiAllocChunk) have disk blocks: writing through the mapping into a hole
// on a full file system would kill the process with SIGBUS, so the blocks
// are allocated (fsutil.Allocate, which fails with ENOSPC) before the
// mapping is written there.
const kiAllocChunk = 1 << 20

// need is the bytes from the start that n entries use.
func (k *keyFile) need(n uint32) int64 {
	return int64(kiHeader + 4*int(k.slots) + kiEntry*int(n))
}

// ensureAlloc gives disk blocks to the file's first end bytes (rounded
// up to a chunk, within the file), opening f when it is nil.
func (k *keyFile) ensureAlloc(f *os.File, end int64) error {
	if end <= k.alloc {
		return nil
	}
	size := int64(len(k.data))
	to := min((end+kiAllocChunk-1)/kiAllocChunk*kiAllocChunk, size)
	if f == nil {
		var err error
		if f, err = os.OpenFile(k.path, os.O_RDWR, 0); err != nil {
			return fmt.Errorf("index: %w", err)
		}
		defer f.Close()
	}
	if err := fsutil.Allocate(f, k.alloc, to-k.alloc); err != nil {
		return fmt.Errorf("index: key index: %w", err)
	}
	k.alloc = to
	return nil
}

func (k *keyFile) slotAt(i uint32) []byte { return k.data[kiHeader+4*i:] }
func (k *keyFile) entryAt(j uint32) []byte {
	off := kiHeader + 4*int(k.slots) + kiEntry*int(j)
	return k.data[off : off+kiEntry]
}

type keyIndex struct {
	dir     string
	slots   uint32
	cap     uint32
	reader  RecordReader
	mu      sync.RWMutex
	files   []*keyFile // oldest first; the last one takes new entries
	nextSeq int
}

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

func openKeyIndex(dir string, slots, capacity int, reader RecordReader) (*keyIndex, error) {
	ki := &keyIndex{dir: dir, slots: uint32(slots), cap: uint32(capacity), reader: reader}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(dir)
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
	for _, s := range seqs {
		kf, err := mapKeyFile(filepath.Join(dir, fmt.Sprintf("%020d.ki", s)), 0, 0)
		if err != nil {
			ki.close()
			return nil, err
		}
		ki.files = append(ki.files, kf)
		ki.nextSeq = s + 1
	}
	return ki, nil
}

// mapKeyFile maps an existing file (slots == 0) or creates one.
func mapKeyFile(path string, slots, capacity uint32) (*keyFile, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if slots != 0 {
		if err := f.Truncate(int64(kiHeader + 4*int(slots) + kiEntry*int(capacity))); err != nil {
			return nil, err
		}
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() < kiHeader {
		return nil, fmt.Errorf("%w: key index %s too short", ErrCorrupt, path)
	}
	le := binary.LittleEndian
	kf := &keyFile{path: path}
	if slots != 0 {
		// The header and the slots get their blocks before anything is
		// written through the mapping.
		kf.slots = slots
		kf.data = make([]byte, fi.Size()) // ensureAlloc's bound only
		if err := kf.ensureAlloc(f, kf.need(0)); err != nil {
			os.Remove(path)
			return nil, err
		}
	}
	data, err := unix.Mmap(int(f.Fd()), 0, int(fi.Size()), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("index: mmap %s: %w", path, err)
	}
	kf.data = data
	if slots != 0 {
		copy(data, kiMagic)
		le.PutUint32(data[4:], slots)
		le.PutUint32(data[8:], capacity)
	}
	kf.slots, kf.cap, kf.count = le.Uint32(data[4:]), le.Uint32(data[8:]), le.Uint32(data[12:])
	if !bytes.Equal(data[:4], kiMagic) || kf.slots == 0 ||
		int64(kiHeader+4*int(kf.slots)+kiEntry*int(kf.cap)) != fi.Size() || kf.count > kf.cap {
		unix.Munmap(data)
		return nil, fmt.Errorf("%w: key index %s has a bad header", ErrCorrupt, path)
	}
	// An existing file: what it holds has its blocks (a no-op for files
	// written this way; a file from before gets them now, or fails here
	// rather than with SIGBUS when its slots are rebuilt).
	if err := kf.ensureAlloc(f, kf.need(kf.count)); err != nil {
		unix.Munmap(data)
		return nil, err
	}
	return kf, nil
}

// add indexes one record (caller holds mu).
func (ki *keyIndex) addLocked(ri *qlog.RecordInfo) error {
	if ri.Pos < ki.end() {
		return nil // indexed by an earlier try of this dispatch
	}
	var kf *keyFile
	if n := len(ki.files); n > 0 && ki.files[n-1].count < ki.files[n-1].cap {
		kf = ki.files[n-1]
	} else {
		var err error
		kf, err = mapKeyFile(filepath.Join(ki.dir, fmt.Sprintf("%020d.ki", ki.nextSeq)), ki.slots, ki.cap)
		if err != nil {
			return err
		}
		ki.nextSeq++
		ki.files = append(ki.files, kf)
	}
	if err := kf.ensureAlloc(nil, kf.need(kf.count+1)); err != nil {
		return err
	}
	le := binary.LittleEndian
	h := keyHash(ri.Topic, ri.Key)
	slot := kf.slotAt(uint32(h % uint64(kf.slots)))
	j := kf.count
	e := kf.entryAt(j)
	le.PutUint64(e, h)
	le.PutUint64(e[8:], uint64(ri.Pos))
	le.PutUint32(e[16:], uint32(ri.Size))
	le.PutUint32(e[20:], le.Uint32(slot))
	le.PutUint64(e[24:], ri.QueueOffset)
	le.PutUint32(e[32:], ri.QueueID)
	le.PutUint32(slot, j+1)
	kf.count = j + 1
	le.PutUint32(kf.data[12:], kf.count)
	return nil
}

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
		j := le.Uint32(kf.slotAt(uint32(h % uint64(kf.slots))))
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
			j = le.Uint32(e[20:])
		}
	}
	return hits, nil
}

// truncateFrom drops entries of records at or after end (or never fully
// written) from the newest files, and rebuilds their slot tables.
func (ki *keyIndex) truncateFrom(end int64) {
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
		kf.count = n
		le.PutUint32(kf.data[12:], n)
		ki.rebuildSlots(kf)
		if n > 0 {
			break
		}
	}
}

// rebuildSlots recomputes kf's slot table and links from its entries, so
// that no slot points at a dropped entry.
func (ki *keyIndex) rebuildSlots(kf *keyFile) {
	le := binary.LittleEndian
	clear(kf.data[kiHeader : kiHeader+4*int(kf.slots)])
	for j := uint32(0); j < kf.count; j++ {
		e := kf.entryAt(j)
		slot := kf.slotAt(uint32(le.Uint64(e) % uint64(kf.slots)))
		le.PutUint32(e[20:], le.Uint32(slot))
		le.PutUint32(slot, j+1)
	}
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
		unix.Munmap(kf.data)
		os.Remove(kf.path)
		ki.files = ki.files[1:]
	}
}

func (ki *keyIndex) sync() error {
	ki.mu.RLock()
	defer ki.mu.RUnlock()
	for _, kf := range ki.files {
		if err := unix.Msync(kf.data, unix.MS_SYNC); err != nil {
			return fmt.Errorf("index: msync %s: %w", kf.path, err)
		}
	}
	return nil
}

func (ki *keyIndex) close() {
	ki.mu.Lock()
	defer ki.mu.Unlock()
	for _, kf := range ki.files {
		unix.Munmap(kf.data)
	}
	ki.files = nil
}
