package index

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"

	"github.com/quivermq/quiver/internal/fsutil"
)

// The queue table is what an open needs to know of each queue without
// touching its files: its bounds, the time of its newest message and that
// message's log position, as its files held them when last synced. Without
// it an open reads a directory per topic and the newest entry of every
// queue (100,000 queues: 2.6 s of system calls); with it, one file.
//
// It is a log of edits, like pebble's and RocksDB's MANIFEST: each
// checkpoint appends the states of the queues it wrote out (and syncs them
// before the checkpoint's position moves past their entries); a topic's
// deletion and retention's new starts are appended (and synced) before
// their files are removed. When the log has grown to three times a full
// table it is rewritten as one (WriteAtomic).
//
// The table is authoritative for a checkpoint of this layout (QIX3): a
// queue's readable offsets are the table's, and entries a file holds past
// the table's max (written after the last edit, before a crash) are
// ignored and written over when the log replays them.
//
// File: "QTB1", then records: len u32 | crc32c(payload) u32 | payload.
// A payload is a kind byte and then:
//   - tableStates: queue states, each topicLen u16 | topic | queue u32 |
//     low u64 | min u64 | max u64 | lastStore i64 | tailPos i64;
//   - tableDropTopic: topicLen u16 | topic (its queues are gone).
//
// A torn last record (a crash during an append that was never synced, and
// so never relied on) ends the table and is cut at open.
const (
	tableName      = "queues"
	tableMagic     = "QTB1"
	tableStates    = 1
	tableDropTopic = 2
	maxTableRecord = 256 << 20
)

// qstate is a queue as the table records it: its readable offsets [min,
// max), the first offset of its oldest file that may still exist (low: files
// below min are removed after the edit that moved min, and an open removes
// any a crash left), and the newest entry's store time and log position
// (tailPos -1: none).
type qstate struct {
	low, min, max      uint64
	lastStore, tailPos int64
}

type queueTable struct {
	fs   fsutil.FS
	path string
	f    fsutil.File // open for appends
	size int64       // bytes of valid records (appends go here)
	full int64       // size after the last rewrite: the next one is due at 3x (+ slack)

	slack    int64 // (tests set it to 0)
	rewrites int
}

// loadTable reads the table in dir and opens it for appends (cutting a torn
// last record). It returns every queue's state by topic and queue.
func loadTable(fs fsutil.FS, dir string) (*queueTable, map[string]map[uint32]qstate, error) {
	path := filepath.Join(dir, tableName)
	b, err := fsutil.ReadFile(fs, path)
	if err != nil {
		return nil, nil, fmt.Errorf("index: queue table: %w", err)
	}
	if len(b) < len(tableMagic) || string(b[:len(tableMagic)]) != tableMagic {
		return nil, nil, fmt.Errorf("%w: %s is not a queue table", ErrCorrupt, path)
	}
	states := map[string]map[uint32]qstate{}
	off := len(tableMagic)
	for {
		p, n := nextTableRecord(b[off:])
		if n == 0 {
			break
		}
		if err := applyTableRecord(states, p); err != nil {
			return nil, nil, fmt.Errorf("%w: %s at %d: %v", ErrCorrupt, path, off, err)
		}
		off += n
	}
	f, err := fs.OpenFile(path, os.O_RDWR, 0o644)
	if err != nil {
		return nil, nil, fmt.Errorf("index: queue table: %w", err)
	}
	t := &queueTable{fs: fs, path: path, f: f, size: int64(off), full: int64(off), slack: tableSlack}
	if off < len(b) {
		if err := f.Truncate(int64(off)); err != nil {
			f.Close()
			return nil, nil, fmt.Errorf("index: queue table: cut torn tail: %w", err)
		}
	}
	return t, states, nil
}

// nextTableRecord returns the payload of the record at the start of b and
// the record's length, or n == 0 when b holds no whole, intact record.
func nextTableRecord(b []byte) (payload []byte, n int) {
	if len(b) < 8 {
		return nil, 0
	}
	l := binary.LittleEndian.Uint32(b)
	if l == 0 || l > maxTableRecord || uint64(len(b)-8) < uint64(l) {
		return nil, 0
	}
	p := b[8 : 8+l]
	if crc32.Checksum(p, crcTable) != binary.LittleEndian.Uint32(b[4:]) {
		return nil, 0
	}
	return p, 8 + int(l)
}

var errTableRecord = errors.New("malformed record")

func applyTableRecord(states map[string]map[uint32]qstate, p []byte) error {
	le := binary.LittleEndian
	kind, p := p[0], p[1:]
	topicOf := func() (string, bool) {
		if len(p) < 2 || len(p) < 2+int(le.Uint16(p)) {
			return "", false
		}
		n := int(le.Uint16(p))
		t := string(p[2 : 2+n])
		p = p[2+n:]
		return t, true
	}
	switch kind {
	case tableStates:
		for len(p) > 0 {
			topic, ok := topicOf()
			if !ok || len(p) < 44 {
				return errTableRecord
			}
			s := qstate{low: le.Uint64(p[4:]), min: le.Uint64(p[12:]), max: le.Uint64(p[20:]),
				lastStore: int64(le.Uint64(p[28:])), tailPos: int64(le.Uint64(p[36:]))}
			if s.max < s.min || s.low > s.min {
				return fmt.Errorf("queue %s/%d: bounds low %d, min %d, max %d", topic, le.Uint32(p), s.low, s.min, s.max)
			}
			m := states[topic]
			if m == nil {
				m = map[uint32]qstate{}
				states[topic] = m
			}
			m[le.Uint32(p)] = s
			p = p[44:]
		}
	case tableDropTopic:
		topic, ok := topicOf()
		if !ok || len(p) != 0 {
			return errTableRecord
		}
		delete(states, topic)
	default:
		return fmt.Errorf("unknown kind %d", kind)
	}
	return nil
}

// appendState adds a queue's state to a tableStates payload.
func appendState(p []byte, topic string, id uint32, s qstate) []byte {
	le := binary.LittleEndian
	p = le.AppendUint16(p, uint16(len(topic)))
	p = append(p, topic...)
	p = le.AppendUint32(p, id)
	p = le.AppendUint64(p, s.low)
	p = le.AppendUint64(p, s.min)
	p = le.AppendUint64(p, s.max)
	p = le.AppendUint64(p, uint64(s.lastStore))
	return le.AppendUint64(p, uint64(s.tailPos))
}

// frame wraps payload as a record.
func frame(payload []byte) []byte {
	b := make([]byte, 8, 8+len(payload))
	binary.LittleEndian.PutUint32(b, uint32(len(payload)))
	binary.LittleEndian.PutUint32(b[4:], crc32.Checksum(payload, crcTable))
	return append(b, payload...)
}

// append writes a record and syncs it. A failed write leaves size where it
// was (the next append writes over what it left); a failed sync is
// returned as an *fsyncError.
func (t *queueTable) append(payload []byte) error {
	rec := frame(payload)
	if _, err := t.f.WriteAt(rec, t.size); err != nil {
		return fmt.Errorf("index: queue table: %w", err)
	}
	if err := t.f.Sync(); err != nil {
		return &fsyncError{fmt.Errorf("index: sync the queue table: %w", err)}
	}
	t.size += int64(len(rec))
	return nil
}

// rewriteDue reports whether the table has grown to three times a full one.
func (t *queueTable) rewriteDue() bool { return t.size > 3*t.full+t.slack }

// tableSlack is what a table may grow by beyond three full ones: a few
// queues' table is not rewritten at every checkpoint.
const tableSlack = 64 << 10

// rewrite replaces the table with one record of every state (states is a
// tableStates payload) and reopens it for appends.
func (t *queueTable) rewrite(states []byte) error {
	b := append([]byte(tableMagic), frame(states)...)
	if err := fsutil.WriteAtomic(t.fs, t.path, b, 0o644); err != nil {
		return fmt.Errorf("index: rewrite the queue table: %w", err)
	}
	f, err := t.fs.OpenFile(t.path, os.O_RDWR, 0o644)
	if err != nil {
		return fmt.Errorf("index: queue table: %w", err)
	}
	if t.f != nil {
		t.f.Close()
	}
	t.f, t.size, t.full = f, int64(len(b)), int64(len(b))
	t.rewrites++
	return nil
}

func (t *queueTable) close() {
	if t != nil && t.f != nil {
		t.f.Close()
		t.f = nil
	}
}
