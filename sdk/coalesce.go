package sdk

import (
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// Natural batching (WithoutCoalescing turns it off). Concurrent keyless
// sends of one client (any of its producers with the same durability,
// compression and linger) to the same broker and topic share produce
// frames: while coalesceInFlight frames of theirs are in flight, further
// sends wait, and the next frame to go carries all of them as one batch
// record (consecutive offsets in one queue). By default there is no
// timer: a lone send goes at once, as before; sends only wait behind sends
// already in flight, the way Kafka's producer fills a batch while the
// previous ones are in flight (linger.ms = 0). WithLinger(d) makes the
// first send of a batch wait d on purpose (Kafka's linger.ms), unless the
// batch fills first: fewer, larger frames at a moderate rate, for d of
// latency.
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
	// flight (after its linger): past it, what waited goes in a frame of
	// its own beyond the two (a broker that stalls or stops answering
	// would otherwise hold it until those frames time out, which a lone
	// send never waits for).
	coalesceMaxWait  = 5 * time.Millisecond
	coalesceMaxBytes = 256 << 10
	coalesceMaxCount = 512
)

type coalesceKey struct {
	s          *session
	topic      string
	durability uint8
	comp       Compression
	linger     time.Duration
	idem       bool
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
	bytes    int         // of pending, as counted against coalesceMaxBytes
	since    time.Time   // when pending last became non-empty
	stale    *time.Timer // fires when what is pending must go (see next)
}

// coalescable reports whether op may share a frame.
func (op *sendOp) coalescable() bool {
	return !op.p.cfg.noCoalesce && !op.alone && !op.fixed && op.deliverAt == 0 && len(op.req.Key) == 0 && len(op.req.Tags) == 0 &&
		op.req.Count == 1 && op.req.Flags == 0 && op.req.Seq == 0 // a retry keeps its own sequence number
}

func (cl *Client) coalescer(s *session, op *sendOp) *coalescer {
	k := coalesceKey{s, op.req.Topic, op.req.Durability, op.p.cfg.compression, op.p.cfg.linger, !op.p.cfg.noIdempotence}
	if c, ok := cl.coal.Load(k); ok {
		return c.(*coalescer)
	}
	c, _ := cl.coal.LoadOrStore(k, &coalescer{cl: cl, key: k, s: s})
	return c.(*coalescer)
}

// add sends op now, alone, if fewer than coalesceInFlight frames are in
// flight and the client does not linger, else queues it for the next frame
// (whose sending starts its attempt: see next).
func (c *coalescer) add(op *sendOp, now, attemptEnd time.Time) {
	c.mu.Lock()
	if c.key.linger == 0 && c.inflight < coalesceInFlight && len(c.pending) == 0 {
		c.inflight++
		c.mu.Unlock()
		op.coal = c
		op.sendFrame(c.s, now, attemptEnd)
		return
	}
	if len(c.pending) == 0 {
		c.since = now
		wait := c.key.linger
		if wait == 0 {
			wait = coalesceMaxWait
		}
		if c.stale == nil {
			c.stale = time.AfterFunc(wait, c.flushStale)
		} else {
			c.stale.Reset(wait)
		}
	}
	c.pending = append(c.pending, op)
	c.bytes += op.coalesceSize()
	full := c.key.linger > 0 && c.full() && c.inflight < coalesceInFlight
	c.mu.Unlock()
	if full {
		c.next(false) // a full batch does not linger
	}
}

// coalesceSize is what op counts against coalesceMaxBytes.
func (op *sendOp) coalesceSize() int { return len(op.req.Body) + len(op.req.Headers) + 16 }

// full reports whether what is pending fills a frame. c.mu is held.
func (c *coalescer) full() bool {
	return len(c.pending) >= coalesceMaxCount || c.bytes >= coalesceMaxBytes
}

// flushStale sends what waited coalesceMaxWait in a frame of its own.
func (c *coalescer) flushStale() { c.next(false) }

// done is called when one of c's frames is answered, successfully or not:
// the next frame takes what waited.
func (c *coalescer) done() { c.next(true) }

// next sends what waits in the frame slot one of c's frames freed (freed),
// or, from the stale timer (or add, for a full batch), in a free slot once
// it has lingered, or in an extra one if it also waited coalesceMaxWait
// behind the frames in flight. A slot freed while the batch still lingers
// stays free.
func (c *coalescer) next(freed bool) {
	var bf *batchFrame
	for {
		c.mu.Lock()
		if len(c.pending) > 0 {
			act, wait := decide(freed, time.Since(c.since), c.key.linger, c.full(), c.inflight)
			switch act {
			case sendPending:
				if !freed {
					c.inflight++ // a free slot, or an extra frame
					freed = true
				}
			case leaveSlot, waitMore:
				if act == leaveSlot {
					c.inflight-- // the timer sends the batch once it has lingered
				}
				c.stale.Reset(wait)
				c.mu.Unlock()
				if bf != nil {
					bf.put()
				}
				return
			}
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
			sz := c.pending[n].coalesceSize()
			if n > 0 && size+sz > coalesceMaxBytes {
				break
			}
			size += sz
			n++
		}
		c.bytes -= size
		bf.ops = append(bf.ops[:0], c.pending[:n]...)
		rest := copy(c.pending, c.pending[n:])
		clear(c.pending[rest:])
		c.pending = c.pending[:rest]
		if rest > 0 {
			c.since = time.Now()
			if c.key.linger > 0 {
				c.stale.Reset(c.key.linger)
			} else {
				c.stale.Reset(coalesceMaxWait)
			}
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

// What next does with a pending batch.
const (
	sendPending = iota // in the slot freed, a free one or an extra one
	leaveSlot          // free the slot and wait: the batch still lingers
	waitMore           // wait: it lingers, or waits behind the frames in flight
)

// decide is next's policy for a pending batch that has waited since, with
// the client's linger, whether it fills a frame, and the frames in flight;
// freed says whether a frame of c's was just answered. It returns the
// action and, for the waits, when to look again.
func decide(freed bool, since, linger time.Duration, full bool, inflight int) (int, time.Duration) {
	ready := since >= linger || full
	switch {
	case ready && (freed || inflight < coalesceInFlight):
		return sendPending, 0
	case freed:
		return leaveSlot, linger - since
	case ready && since >= linger+coalesceMaxWait:
		return sendPending, 0 // an extra frame beyond coalesceInFlight
	case ready:
		return waitMore, linger + coalesceMaxWait - since
	default:
		return waitMore, linger - since
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
	if c.key.idem {
		// Consecutive sequence numbers, kept by each message for its
		// retries (which go alone: see coalescable).
		req.ProducerID, req.Seq = c.cl.pid, c.cl.sequences(uint64(len(bf.ops)))
		for i, op := range bf.ops {
			op.req.Seq = req.Seq + uint64(i)
		}
	}
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
