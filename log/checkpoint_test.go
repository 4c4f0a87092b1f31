package log

import (
	"errors"
	"testing"
)

func TestCheckpointRoundTrip(t *testing.T) {
	cp := checkpoint{pos: 12345, queues: map[queueKey]uint64{{"a", 1}: 10, {"b", 0}: 3}}
	got, err := decodeCheckpoint(encodeCheckpoint(cp))
	if err != nil || got.pos != cp.pos || len(got.queues) != 2 || got.queues[queueKey{"a", 1}] != 10 {
		t.Fatalf("round trip: %+v %v", got, err)
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
