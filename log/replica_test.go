package log

import (
	"bytes"
	"errors"
	"fmt"
	"testing"
)

// copyLog replicates leader into follower chunk by chunk, as the replica
// package does, until the follower has everything readable.
func copyLog(t *testing.T, leader, follower *Log, max int) {
	t.Helper()
	var buf []byte
	for {
		pos := follower.fl.pos
		var next int64
		var err error
		buf, next, err = leader.ReadChunk(pos, max, buf)
		if err != nil {
			t.Fatalf("ReadChunk(%d): %v", pos, err)
		}
		if len(buf) == 0 {
			if next == pos {
				return // caught up
			}
			// The leader's segment ends here: the follower will seal it
			// when the next chunk starts at next.
			buf, next2, err := leader.ReadChunk(next, max, buf)
			if err != nil {
				t.Fatal(err)
			}
			if len(buf) == 0 {
				if next2 == next {
					return
				}
				t.Fatalf("two empty chunks at %d and %d", pos, next)
			}
			appendRaw(t, follower, next, buf)
			continue
		}
		appendRaw(t, follower, pos, buf)
	}
}

func appendRaw(t *testing.T, l *Log, pos int64, data []byte) {
	t.Helper()
	done := make(chan error, 1)
	if err := l.AppendRawAsync(pos, append([]byte(nil), data...), func(end int64, err error) {
		if err == nil && end != pos+int64(len(data)) {
			err = fmt.Errorf("acknowledged end %d, want %d", end, pos+int64(len(data)))
		}
		done <- err
	}); err != nil {
		t.Fatalf("AppendRawAsync(%d, %d bytes): %v", pos, len(data), err)
	}
	if err := <-done; err != nil {
		t.Fatalf("raw append at %d: %v", pos, err)
	}
}

// A follower that copies a leader's chunks has a byte-identical log: the
// same records at the same positions, segments sealed at the same places,
// and the same next offset in every queue.
func TestReplicatedLogIsByteIdentical(t *testing.T) {
	forEachBackend(t, func(t *testing.T, backend string) {
		lo := smallOpts(t.TempDir(), newEngine(t, backend))
		leader := openLog(t, lo)
		defer leader.Close()
		fo := smallOpts(t.TempDir(), newEngine(t, backend))
		follower := openLog(t, fo)
		defer follower.Close()
		for round := 0; round < 3; round++ {
			for i := 0; i < 400; i++ {
				if _, err := leader.Append(testMessage(round*1000 + i)); err != nil {
					t.Fatal(err)
				}
			}
			copyLog(t, leader, follower, 8<<10)
		}
		lp, fp := leader.Positions(), follower.Positions()
		if fp.Written != lp.Written || fp.Durable != lp.Written {
			t.Fatalf("follower at %+v, leader at %+v", fp, lp)
		}
		if len(leader.segMu.segs) < 3 {
			t.Fatalf("the test must cross segments (%d)", len(leader.segMu.segs))
		}
		for i, s := range leader.segMu.segs {
			n := min(lo.SegmentSize, lp.Written-s.base)
			a, b := make([]byte, n), make([]byte, n)
			s.file.ReadAt(a, 0)
			follower.segMu.segs[i].file.ReadAt(b, 0)
			if !bytes.Equal(a, b) {
				t.Fatalf("segment %d differs", i)
			}
		}
		for k, v := range leader.fl.queues {
			if follower.fl.queues[k] != v {
				t.Fatalf("queue %v: follower next %d, leader %d", k, follower.fl.queues[k], v)
			}
		}
		// The follower, promoted, continues every queue densely.
		res, err := follower.Append(testMessage(2000))
		if err != nil {
			t.Fatal(err)
		}
		k := queueKey{topic: testMessage(2000).Topic, id: testMessage(2000).QueueID}
		if res.QueueOffset != leader.fl.queues[k] {
			t.Fatalf("after promotion: offset %d, want %d", res.QueueOffset, leader.fl.queues[k])
		}
	})
}

// A replicated append that does not continue the log is refused and
// changes nothing.
func TestRawAppendsMustContinueTheLog(t *testing.T) {
	lo := smallOpts(t.TempDir(), newEngine(t, "portable"))
	leader := openLog(t, lo)
	defer leader.Close()
	follower := openLog(t, smallOpts(t.TempDir(), newEngine(t, "portable")))
	defer follower.Close()
	for i := 0; i < 20; i++ {
		leader.Append(testMessage(i))
	}
	chunk, next, err := leader.ReadChunk(0, 1<<20, nil)
	if err != nil || next != leader.Positions().Written {
		t.Fatalf("chunk: next %d, %v", next, err)
	}
	try := func(pos int64, data []byte) error {
		done := make(chan error, 1)
		if err := follower.AppendRawAsync(pos, data, func(_ int64, err error) { done <- err }); err != nil {
			return err
		}
		return <-done
	}
	// Not at the end.
	if err := try(100, chunk); !errors.Is(err, ErrPosition) {
		t.Fatalf("append at the wrong position: %v", err)
	}
	// A damaged byte.
	bad := append([]byte(nil), chunk...)
	bad[HeaderSize+3] ^= 1
	if err := try(0, bad); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("damaged chunk: %v", err)
	}
	// A record cut in half.
	if err := try(0, chunk[:len(chunk)-1]); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("cut chunk: %v", err)
	}
	if p := follower.Positions(); p.Written != 0 {
		t.Fatalf("refused appends wrote up to %d", p.Written)
	}
	// The first records, then a gap in a queue's offsets: refused.
	first, _ := DecodeRecord(chunk, &Record{})
	if err := try(0, chunk[:first]); err != nil {
		t.Fatal(err)
	}
	var rest []byte
	var r Record
	for off := first; off < len(chunk); {
		n, _ := DecodeRecord(chunk[off:], &r)
		if r.QueueID == 0 && string(r.Topic) == "topic-0" && rest == nil {
			off += n // skip one record of queue topic-0/0: a gap
			rest = chunk[off:]
			break
		}
		off += n
	}
	if rest != nil {
		if err := try(int64(len(chunk)-len(rest)), rest); !errors.Is(err, ErrPosition) {
			t.Fatalf("append with a gap in a queue: %v", err)
		}
	}
}

// Truncate at open cuts the log back to a record boundary, recomputes the
// queue offsets, and refuses a position inside a record.
func TestTruncateAtOpen(t *testing.T) {
	dir := t.TempDir()
	o := smallOpts(dir, newEngine(t, "portable"))
	l := openLog(t, o)
	var results []AppendResult
	for i := 0; i < 300; i++ {
		res, err := l.Append(testMessage(i))
		if err != nil {
			t.Fatal(err)
		}
		results = append(results, res)
	}
	l.Close()
	cut := results[150]
	o.Engine = newEngine(t, "portable")
	o.Truncate, o.TruncateTo = true, cut.Pos+1
	if _, err := Open(o); !errors.Is(err, ErrOutOfRange) {
		t.Fatalf("truncating inside a record: %v", err)
	}
	o.Engine.Close()
	o.Engine = newEngine(t, "portable")
	o.TruncateTo = cut.Pos
	l = openLog(t, o)
	if p := l.Positions(); p.Written != cut.Pos {
		t.Fatalf("truncated log ends at %d, want %d", p.Written, cut.Pos)
	}
	for i, res := range results[:150] {
		checkRecord(t, l, res, testMessage(i))
	}
	res, err := l.Append(testMessage(150))
	if err != nil {
		t.Fatal(err)
	}
	if res.Pos != cut.Pos || res.QueueOffset != cut.QueueOffset {
		t.Fatalf("after truncation: %d/%d, want %d/%d", res.Pos, res.QueueOffset, cut.Pos, cut.QueueOffset)
	}
	l.Close()
	// Segments past the cut are gone.
	segs, _ := listSegments(dir)
	if last := segs[len(segs)-1]; last > cut.Pos {
		t.Fatalf("segment %d past the cut survived", last)
	}

}
