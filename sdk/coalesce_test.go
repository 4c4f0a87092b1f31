package sdk

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// A coalesced frame that fails fails each of its messages as that attempt,
// and each then retries on its own: here a batch of three is refused with
// DISK_FULL (retryable) by a broker that is then unreachable, and each
// message ends with its own SendError whose first attempt is the batch's
// DISK_FULL, followed by its own retries. A batch that succeeds gives each
// message its own offset.
func TestFailedBatchFailsEachMessage(t *testing.T) {
	cl, err := NewClient(WithBrokers("127.0.0.1:9"), WithFingerprint(strings.Repeat("ab", 32)), WithDialTimeout(100*time.Millisecond),
		WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	p, err := cl.NewProducer(WithSendTimeout(500*time.Millisecond), WithAttemptTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	batch := func() (*batchFrame, []*sendOp) {
		bf := getBatchFrame()
		bf.c = &coalescer{cl: cl, s: &session{done: make(chan struct{})}, inflight: 1}
		for i := 0; i < 3; i++ {
			op, err := p.newOp(context.Background(), &Message{Topic: "t", Body: []byte{byte(i)}})
			if err != nil {
				t.Fatal(err)
			}
			p.sem <- struct{}{}
			op.cur, op.group, op.start, op.sending = cl.conn("127.0.0.1:9"), "g", time.Now(), true
			cl.faults.begin(op.cur.addr)
			bf.ops = append(bf.ops, op)
		}
		return bf, append([]*sendOp(nil), bf.ops...)
	}

	bf, ops := batch()
	c := newCall()
	c.err = &wire.Error{Code: wire.CodeDiskFull, Message: "disk full"}
	bf.answered(c)
	for i, op := range ops {
		<-op.done
		var se *SendError
		if !errors.As(op.err, &se) || len(se.Attempts) < 2 || se.Attempts[0].Code != "DISK_FULL" {
			t.Fatalf("message %d: %v; want its own SendError starting with the batch's DISK_FULL, then its retries", i, op.err)
		}
		p.release(op)
	}

	bf, ops = batch()
	c = newCall()
	c.ack = wire.ProduceAck{Queue: 2, Offset: 40}
	bf.answered(c)
	for i, op := range ops {
		<-op.done
		if op.err != nil || op.res.Queue != 2 || op.res.Offset != uint64(40+i) || op.res.Count != 1 {
			t.Fatalf("message %d: %+v, %v; want queue 2 offset %d", i, op.res, op.err, 40+i)
		}
		p.release(op)
	}
}

// What a pending batch does, by its wait, the linger, whether it fills a
// frame and the frames in flight: a batch goes in a freed or free slot
// once it has lingered (or at once when full), in an extra frame once it
// also waited coalesceMaxWait behind two frames in flight, and otherwise
// waits exactly until one of those becomes true.
func TestCoalescePolicy(t *testing.T) {
	ms := time.Millisecond
	for _, tc := range []struct {
		name     string
		freed    bool
		since    time.Duration
		linger   time.Duration
		full     bool
		inflight int
		act      int
		wait     time.Duration
	}{
		{"no linger: a freed slot takes it", true, 1 * ms, 0, false, 2, sendPending, 0},
		{"no linger: behind two frames", false, 1 * ms, 0, false, 2, waitMore, 4 * ms},
		{"no linger: an extra frame after the max wait", false, 5 * ms, 0, false, 2, sendPending, 0},
		{"linger: a freed slot stays free while it lingers", true, 2 * ms, 10 * ms, false, 1, leaveSlot, 8 * ms},
		{"linger: lingers with nothing in flight", false, 3 * ms, 10 * ms, false, 0, waitMore, 7 * ms},
		{"linger: goes once lingered", false, 10 * ms, 10 * ms, false, 0, sendPending, 0},
		{"linger: a full batch does not linger", false, 3 * ms, 10 * ms, true, 1, sendPending, 0},
		{"linger: a full batch waits for a slot", false, 3 * ms, 10 * ms, true, 2, waitMore, 12 * ms},
		{"linger: lingered, behind two frames", false, 12 * ms, 10 * ms, false, 2, waitMore, 3 * ms},
		{"linger: then an extra frame", false, 15 * ms, 10 * ms, false, 2, sendPending, 0},
		{"linger: a freed slot once lingered", true, 11 * ms, 10 * ms, false, 2, sendPending, 0},
	} {
		act, wait := decide(tc.freed, tc.since, tc.linger, tc.full, tc.inflight)
		if act != tc.act || wait != tc.wait {
			t.Errorf("%s: action %d, wait %v; want %d, %v", tc.name, act, wait, tc.act, tc.wait)
		}
	}
}

// Linger options that cannot work are refused with a clear error.
func TestLingerOptions(t *testing.T) {
	cl, err := NewClient(WithBrokers("127.0.0.1:9"), WithFingerprint(strings.Repeat("ab", 32)))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for _, tc := range []struct {
		opts []ProducerOpt
		want string
	}{
		{[]ProducerOpt{WithLinger(2 * time.Second)}, "linger 2s is out of range"},
		{[]ProducerOpt{WithLinger(-time.Millisecond)}, "out of range"},
		{[]ProducerOpt{WithLinger(time.Millisecond), WithoutCoalescing()}, "WithoutCoalescing"},
	} {
		if p, err := cl.NewProducer(tc.opts...); err == nil || !strings.Contains(err.Error(), tc.want) {
			if p != nil {
				p.Close()
			}
			t.Errorf("NewProducer: %v; want an error containing %q", err, tc.want)
		}
	}
	p, err := cl.NewProducer(WithLinger(time.Second))
	if err != nil {
		t.Fatalf("the longest linger: %v", err)
	}
	p.Close()
}
