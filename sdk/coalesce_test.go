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
