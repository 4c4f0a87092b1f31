package log

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"testing"
)

func TestCheckpointRoundTrip(t *testing.T) {
	cp := checkpoint{pos: 12345, async: true, queues: map[queueKey]uint64{{"a", 1}: 10, {"b", 0}: 3}}
	got, err := decodeCheckpoint(encodeCheckpoint(cp))
	if err != nil || got.pos != cp.pos || !got.async || len(got.queues) != 2 || got.queues[queueKey{"a", 1}] != 10 {
		t.Fatalf("round trip: %+v %v", got, err)
	}
	// A checkpoint of the first format (no flags) still reads.
	v1 := []byte("QCP1")
	v1 = binary.LittleEndian.AppendUint64(v1, 777)
	v1 = binary.LittleEndian.AppendUint32(v1, 1)
	v1 = binary.LittleEndian.AppendUint16(v1, 1)
	v1 = append(v1, 't')
	v1 = binary.LittleEndian.AppendUint32(v1, 2)
	v1 = binary.LittleEndian.AppendUint64(v1, 9)
	v1 = binary.LittleEndian.AppendUint32(v1, crc32.Checksum(v1, crcTable))
	if got, err := decodeCheckpoint(v1); err != nil || got.pos != 777 || got.async || got.queues[queueKey{"t", 2}] != 9 {
		t.Fatalf("first format: %+v %v", got, err)
	}
	b := encodeCheckpoint(cp)
	for i := range b {
		c := append([]byte(nil), b...)
		c[i] ^= 0x10
		if _, err := decodeCheckpoint(c); !errors.Is(err, errBadCheckpoint) {
			t.Fatalf("flipped byte %d accepted", i)
		}
	}
}

func FuzzDecodeCheckpoint(f *testing.F) {
	f.Add(encodeCheckpoint(checkpoint{pos: 1, queues: map[queueKey]uint64{{"t", 0}: 1}}))
	f.Fuzz(func(t *testing.T, b []byte) {
		decodeCheckpoint(b) // must not panic
	})
}
