package log

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sort"

	"github.com/quivermq/quiver/internal/fsutil"
)

// The checkpoint records a durable position and the next queue offset of
// every queue at that position. Recovery trusts the records before it and
// verifies those after it. Format, little endian:
//
//	"QCP2" | pos i64 | flags u8 | n u32 | n × (topicLen u16 | topic | queue u32 | next u64) | crc32c u32
//
// Flag 1 (async): the log was being written in async mode, where any
// number of commits after pos may be written and not synced (recovery's
// torn-tail rule then cannot bound them). "QCP1" files, without flags, are
// read too.
const checkpointFile = "checkpoint"

var (
	checkpointMagic   = [4]byte{'Q', 'C', 'P', '2'}
	checkpointMagicV1 = [4]byte{'Q', 'C', 'P', '1'}
)

const checkpointAsync = 1

type queueKey struct {
	topic string
	id    uint32
}

type checkpoint struct {
	pos    int64
	async  bool // written in async mode (flag 1)
	queues map[queueKey]uint64
}

func encodeCheckpoint(cp checkpoint) []byte {
	keys := make([]queueKey, 0, len(cp.queues))
	for k := range cp.queues {
		keys = append(keys, k)
	}
	// Sorted so that equal states give equal files.
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].topic != keys[j].topic {
			return keys[i].topic < keys[j].topic
		}
		return keys[i].id < keys[j].id
	})
	b := append([]byte(nil), checkpointMagic[:]...)
	b = binary.LittleEndian.AppendUint64(b, uint64(cp.pos))
	var flags byte
	if cp.async {
		flags |= checkpointAsync
	}
	b = append(b, flags)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(keys)))
	for _, k := range keys {
		b = binary.LittleEndian.AppendUint16(b, uint16(len(k.topic)))
		b = append(b, k.topic...)
		b = binary.LittleEndian.AppendUint32(b, k.id)
		b = binary.LittleEndian.AppendUint64(b, cp.queues[k])
	}
	return binary.LittleEndian.AppendUint32(b, crc32.Checksum(b, crcTable))
}

var errBadCheckpoint = errors.New("log: bad checkpoint")

func decodeCheckpoint(b []byte) (checkpoint, error) {
	le := binary.LittleEndian
	if len(b) < 20 || [4]byte(b[:4]) != checkpointMagic && [4]byte(b[:4]) != checkpointMagicV1 {
		return checkpoint{}, fmt.Errorf("%w: header", errBadCheckpoint)
	}
	if crc32.Checksum(b[:len(b)-4], crcTable) != le.Uint32(b[len(b)-4:]) {
		return checkpoint{}, fmt.Errorf("%w: crc", errBadCheckpoint)
	}
	cp := checkpoint{pos: int64(le.Uint64(b[4:])), queues: map[queueKey]uint64{}}
	p := 12
	if [4]byte(b[:4]) == checkpointMagic {
		if len(b) < 21 || b[12]&^checkpointAsync != 0 {
			return checkpoint{}, fmt.Errorf("%w: flags", errBadCheckpoint)
		}
		cp.async = b[12]&checkpointAsync != 0
		p++
	}
	n := int(le.Uint32(b[p:]))
	p += 4
	end := len(b) - 4
	for i := 0; i < n; i++ {
		if p+2 > end {
			return checkpoint{}, fmt.Errorf("%w: truncated", errBadCheckpoint)
		}
		tl := int(le.Uint16(b[p:]))
		p += 2
		if p+tl+12 > end {
			return checkpoint{}, fmt.Errorf("%w: truncated", errBadCheckpoint)
		}
		k := queueKey{topic: string(b[p : p+tl]), id: le.Uint32(b[p+tl:])}
		cp.queues[k] = le.Uint64(b[p+tl+4:])
		p += tl + 12
	}
	if p != end || cp.pos < 0 {
		return checkpoint{}, fmt.Errorf("%w: trailing bytes", errBadCheckpoint)
	}
	return cp, nil
}

// writeCheckpoint replaces dir's checkpoint atomically and durably.
func writeCheckpoint(fs fsutil.FS, dir string, cp checkpoint) error {
	return fsutil.WriteAtomic(fs, filepath.Join(dir, checkpointFile), encodeCheckpoint(cp), 0o644)
}

// readCheckpoint returns the checkpoint, or ok=false when there is none or it
// cannot be trusted (then recovery verifies the whole log).
func readCheckpoint(fs fsutil.FS, dir string) (checkpoint, bool, error) {
	b, err := fsutil.ReadFile(fs, filepath.Join(dir, checkpointFile))
	if errors.Is(err, os.ErrNotExist) {
		return checkpoint{}, false, nil
	}
	if err != nil {
		return checkpoint{}, false, err
	}
	cp, err := decodeCheckpoint(b)
	if err != nil {
		return checkpoint{}, false, err
	}
	return cp, true, nil
}
