package sdk

import (
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// Natural batching (WithoutCoalescing turns it off). Concurrent keyless
// sends of one client (any of its producers with the same durability and
// compression) to the same broker and topic share produce frames: while coalesceInFlight frames of theirs
// are in flight, further sends wait, and the next frame to go carries all
// of them as one batch record (consecutive offsets in one queue). There is no timer: a lone send goes at once, as before; sends
// only wait behind sends already in flight, the way Kafka's producer fills
// a batch while the previous ones are in flight (linger.ms = 0).
//
// Each message keeps its own outcome: its result (the batch's first offset
// plus its index), its attempts, its retries, its deadline and its part in
// fault avoidance, as if it had been sent alone. A frame that fails with a
// retryable error fails each of its messages as that attempt; one refused
// for good (TOO_LARGE, INVALID) is sent again message by message, so that
// one message cannot take the others down with it. Messages with a key or
// tags are never coalesced: the key index and tag filters see a record's
// own key and tags, not those inside a batch.
const (
	coalesceInFlight = 2
	// coalesceMaxWait bounds how long a send waits behind the frames in
	// flight: past it, what waited goes in a frame of its own beyond the
	// two (a broker that stalls or stops answering would otherwise hold
	// it until those frames time out, which a lone send never waits for).
	coalesceMaxWait  = 5 * time.Millisecond
	coalesceMaxBytes = 256 << 10
	coalesceMaxCount = 512
)

type coalesceKey struct {
	s          *session
	topic      string
	durability uint8
	comp       Compression
}

// coalescer is a client's sends to one topic on one session, with one
// durability and compression.
type coalescer struct {
	cl       *Client
	key      coalesceKey
	s        *session
	mu       sync.Mutex
	inflight int
	pending  []*sendOp
	since    time.Time   // when pending last became non-empty
	stale    *time.Timer // fires coalesceMaxWait after since
}

// coalescable reports whether op may share a frame.
func (op *sendOp) coalescable() bool {
	return !op.p.cfg.noCoalesce && !op.alone && len(op.req.Key) == 0 && len(op.req.Tags) == 0 &&
		op.req.Count == 1 && op.req.Flags == 0
}

func (cl *Client) coalescer(s *session, op *sendOp) *coalescer {
	k := coalesceKey{s, op.req.Topic, op.req.Durability, op.p.cfg.compression}
	if c, ok := cl.coal.Load(k); ok {
		return c.(*coalescer)
	}
	c, _ := cl.coal.LoadOrStore(k, &coalescer{cl: cl, key: k, s: s})
	return c.(*coalescer)
}

// add sends op now, alone, if fewer than coalesceInFlight frames are in
// flight, else queues it for the next frame (whose sending starts its
// attempt: see next).
func (c *coalescer) add(op *sendOp, now, attemptEnd time.Time) {
	c.mu.Lock()
	if c.inflight < coalesceInFlight && len(c.pending) == 0 {
		c.inflight++
		c.mu.Unlock()
		op.coal = c
		op.sendFrame(c.s, now, attemptEnd)
		return
	}
	if len(c.pending) == 0 {
		c.since = now
		if c.stale == nil {
			c.stale = time.AfterFunc(coalesceMaxWait, c.flushStale)
		} else {
			c.stale.Reset(coalesceMaxWait)
		}
	}
	c.pending = append(c.pending, op)
	c.mu.Unlock()
}

// flushStale sends what waited coalesceMaxWait in a frame of its own.
func (c *coalescer) flushStale() { c.next(false) }

// done is called when one of c's frames is answered, successfully or not:
// the next frame takes what waited.
func (c *coalescer) done() { c.next(true) }

// next sends what waits in the frame slot one of c's frames freed (freed),
// or, from the stale timer, in an extra one if it waited long enough.
func (c *coalescer) next(freed bool) {
	var bf *batchFrame
	for {
		c.mu.Lock()
		if !freed && len(c.pending) > 0 {
			if wait := coalesceMaxWait - time.Since(c.since); wait > 0 {
				c.stale.Reset(wait) // a frame took the older ones since
				c.mu.Unlock()
				return
			}
			c.inflight++ // an extra frame; from here on as if a slot was freed
			freed = true
		}
		if len(c.pending) == 0 {
			if freed {
				c.inflight--
			}
			idle := c.inflight == 0
			c.mu.Unlock()
			if idle && c.s.dead() {
				c.cl.coal.CompareAndDelete(c.key, c)
			}
			if bf != nil {
				bf.put()
			}
			return
		}
		if bf == nil {
			bf = getBatchFrame()
		}
		n, size := 0, 0
		for n < len(c.pending) && n < coalesceMaxCount {
			sz := len(c.pending[n].req.Body) + len(c.pending[n].req.Headers) + 16
			if n > 0 && size+sz > coalesceMaxBytes {
				break
			}
			size += sz
			n++
		}
		bf.ops = append(bf.ops[:0], c.pending[:n]...)
		rest := copy(c.pending, c.pending[n:])
		clear(c.pending[rest:])
		c.pending = c.pending[:rest]
		if rest > 0 {
			c.since = time.Now()
			c.stale.Reset(coalesceMaxWait)
		} else {
			c.stale.Stop()
		}
		c.mu.Unlock()

		// Each message's attempt starts now, as a lone send's starts when
		// it is sent; one whose send deadline passed while it waited
		// finishes (attempt says why).
		now := time.Now()
		live := bf.ops[:0]
		for _, op := range bf.ops {
			if !now.Before(op.deadline) || op.ctx.Err() != nil {
				op.attempt()
				continue
			}
			op.attemptEnd = now.Add(op.p.cfg.attemptTimeout)
			if op.deadline.Before(op.attemptEnd) {
				op.attemptEnd = op.deadline
			}
			live = append(live, op)
		}
		bf.ops = live
		switch len(live) {
		case 0:
			continue // this frame slot is free again: look once more
		case 1:
			op := live[0]
			bf.put()
			op.coal = c
			op.sendFrame(c.s, now, op.attemptEnd)
		default:
			c.sendBatch(bf, now)
			bf = nil
		}
		return
	}
}

// batchFrame is one coalesced frame in flight.
type batchFrame struct {
	c        *coalescer
	ops      []*sendOp
	body     []byte
	onAnswer func(*call)
}

var batchFrames sync.Pool

func init() {
	batchFrames.New = func() any {
		bf := &batchFrame{}
		bf.onAnswer = bf.answered // bound once: a method value allocates
		return bf
	}
}

func getBatchFrame() *batchFrame { return batchFrames.Get().(*batchFrame) }

func (bf *batchFrame) put() {
	clear(bf.ops)
	bf.ops, bf.c = bf.ops[:0], nil
	if cap(bf.body) > 1<<20 {
		bf.body = nil
	}
	batchFrames.Put(bf)
}

// sendBatch sends bf.ops (two or more) as one batch record.
func (c *coalescer) sendBatch(bf *batchFrame, now time.Time) {
	bf.c = c
	first := bf.ops[0]
	deadline := first.attemptEnd
	bf.body = bf.body[:0]
	for _, op := range bf.ops {
		if op.attemptEnd.Before(deadline) {
			deadline = op.attemptEnd
		}
		bf.body = wire.AppendBatchEntry(bf.body, &wire.BatchEntry{Headers: op.req.Headers, Body: op.req.Body})
	}
	req := wire.Produce{Topic: first.req.Topic, Queue: wire.AnyQueue, Durability: first.req.Durability,
		Flags: wire.FlagBatch, Count: uint32(len(bf.ops)), ClientTime: first.req.ClientTime, Body: bf.body}
	if c.key.comp != NoCompression {
		body, flags, err := compressBatch(bf.body, c.key.comp)
		if err == nil {
			req.Body, req.Flags = body, flags
		}
	}
	cl := c.cl
	call := newCall()
	call.cb = bf.onAnswer
	st := c.s.streams[streamProduce]
	b, start, err := st.begin(call, wire.TypeProduce, deadline.UnixNano())
	if err != nil {
		call.release()
		for _, op := range bf.ops {
			op.coal = nil
			op.failed(err, now)
		}
		bf.put()
		c.done()
		return
	}
	for _, op := range bf.ops {
		op.start = now
		op.sending = true
		cl.faults.begin(op.cur.addr)
	}
	st.end(call, req.Append(b), start)
}

// answered fans the frame's outcome out to its messages.
func (bf *batchFrame) answered(call *call) {
	err, ack := call.err, call.ack
	call.cb = nil
	call.release()
	c := bf.c
	if err != nil && !Retryable(err) {
		// Refused for good as a whole: each message goes again alone,
		// and gets the answer it would have had (this was not one of its
		// attempts).
		for _, op := range bf.ops {
			op.sending = false
			op.p.cl.faults.end(op.cur.addr, true) // a code is an answer: the broker is alive
			op.p.cl.faults.release(op.cur.addr, op.probe)
			op.alone = true
			go op.attempt() // may dial: not on the session's reader
		}
	} else {
		for i, op := range bf.ops {
			if err != nil {
				op.failed(err, op.start)
				continue
			}
			a := ack
			a.Offset += uint64(i)
			op.succeeded(a)
		}
	}
	bf.put()
	c.done()
}
