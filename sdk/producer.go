package sdk

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// Durability of a send.
type Durability uint8

const (
	// DurabilityDefault is the topic's or broker's setting (sync unless
	// the broker was configured otherwise).
	DurabilityDefault Durability = iota
	// Sync: acknowledged after the broker synced the message to disk.
	Sync
	// Async: acknowledged after the write; the broker syncs it within its
	// async interval. A broker crash in between can lose it.
	Async
)

// ProducerOpt configures a Producer.
type ProducerOpt func(*producerConfig)

type producerConfig struct {
	timeout        time.Duration
	attemptTimeout time.Duration
	durability     Durability
	maxInFlight    int
	compression    Compression
	retryBase      time.Duration
}

// WithSendTimeout is a send's total deadline, retries included (default
// 3s). A context deadline that comes first wins.
func WithSendTimeout(d time.Duration) ProducerOpt { return func(c *producerConfig) { c.timeout = d } }

// WithAttemptTimeout bounds one attempt (default 1s), so that a stalled
// broker leaves time to retry on another.
func WithAttemptTimeout(d time.Duration) ProducerOpt {
	return func(c *producerConfig) { c.attemptTimeout = d }
}

// WithDurability sets when sends are acknowledged (default: the broker's
// setting, sync unless configured otherwise).
func WithDurability(d Durability) ProducerOpt { return func(c *producerConfig) { c.durability = d } }

// WithMaxInFlight bounds the sends in flight (SendAsync blocks past it;
// default 4096).
func WithMaxInFlight(n int) ProducerOpt { return func(c *producerConfig) { c.maxInFlight = n } }

// WithCompression compresses SendBatch's batches (default none).
func WithCompression(comp Compression) ProducerOpt {
	return func(c *producerConfig) { c.compression = comp }
}

// SendResult says where a message was stored.
type SendResult struct {
	Topic     string
	Queue     uint32
	Offset    uint64 // of the first message, for a batch
	Count     int    // messages (1, or the batch size)
	StoreTime time.Time
	Broker    string
	Attempts  int
}

// Producer sends messages. It is safe for concurrent use.
//
// Send and SendAsync retry every retryable failure (network, timeout,
// BUSY, not-leader, broker stopping...) within the send's deadline, on
// another broker when there is one; failures that retrying cannot fix
// (too large, invalid, unauthorized) return at once. A send that timed out
// on a broker may still have been stored there: delivery is at least once.
type Producer struct {
	cl     *Client
	cfg    producerConfig
	sem    chan struct{}
	cbs    chan *sendOp // completed async sends, in completion order
	wg     sync.WaitGroup
	mu     sync.RWMutex // newOp holds it shared, Close exclusively
	closed atomic.Bool
	ops    sync.WaitGroup // sends in flight, callbacks included
}

// NewProducer returns a producer that sends through the client.
func (cl *Client) NewProducer(opts ...ProducerOpt) (*Producer, error) {
	cfg := producerConfig{timeout: 3 * time.Second, attemptTimeout: time.Second, maxInFlight: 4096, retryBase: 10 * time.Millisecond}
	for _, o := range opts {
		o(&cfg)
	}
	if cfg.timeout <= 0 || cfg.attemptTimeout <= 0 || cfg.maxInFlight < 1 || cfg.durability > Async {
		return nil, errors.New("quiver: producer options out of range")
	}
	// An async send holds its place in sem until its callback has run, so
	// cbs never fills: a reader goroutine never blocks on a slow callback.
	p := &Producer{cl: cl, cfg: cfg, sem: make(chan struct{}, cfg.maxInFlight), cbs: make(chan *sendOp, cfg.maxInFlight)}
	if err := cl.track(p); err != nil {
		return nil, err
	}
	p.wg.Add(1)
	go p.callbacks()
	return p, nil
}

// sendOp is one send through its attempts.
type sendOp struct {
	p        *Producer
	req      wire.Produce
	ctx      context.Context
	deadline time.Time
	attempts []Attempt
	exclude  string
	cur      *brokerConn
	start    time.Time
	oneway   bool

	res      SendResult
	err      error
	cb       func(SendResult, error)
	done     chan struct{}
	onAnswer func(*call)
}

var opPool sync.Pool

func init() {
	opPool.New = func() any {
		op := &sendOp{done: make(chan struct{}, 1)}
		op.onAnswer = op.answered // bound once: a method value allocates
		return op
	}
}

// Send sends m and returns once a broker acknowledged it (with the
// producer's durability), or with a *SendError naming every attempt.
func (p *Producer) Send(ctx context.Context, m *Message) (SendResult, error) {
	op, err := p.newOp(ctx, m)
	if err != nil {
		return SendResult{}, err
	}
	p.sem <- struct{}{}
	op.attempt()
	<-op.done
	res, err := op.res, op.err
	p.release(op)
	return res, err
}

// SendAsync sends m and calls cb with the outcome. Callbacks run one at a
// time, on one goroutine of the producer, in the order sends complete; they
// must not call Close. SendAsync blocks while WithMaxInFlight sends are in
// flight. m's slices must not change until cb runs.
func (p *Producer) SendAsync(ctx context.Context, m *Message, cb func(SendResult, error)) error {
	op, err := p.newOp(ctx, m)
	if err != nil {
		return err
	}
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		p.release(op)
		return ctx.Err()
	}
	op.cb = cb
	op.attempt()
	return nil
}

// SendOneway sends m without waiting for, or asking for, an answer. It is
// lossy by design: a message lost in the network or refused by the broker
// is never reported and never retried. Use Send or SendAsync for anything
// that matters.
func (p *Producer) SendOneway(ctx context.Context, m *Message) error {
	op, err := p.newOp(ctx, m)
	if err != nil {
		return err
	}
	defer p.release(op)
	bc := p.cl.pick("")
	s, err := bc.get(ctx)
	if err != nil {
		return err
	}
	st := s.streams[streamProduce]
	b, start := st.send(wire.TypeProduce, wire.FrameNoReply)
	st.endOneway(op.req.Append(b), start)
	return nil
}

// SendBatch sends msgs (all to the same topic) as one record: one queue,
// consecutive offsets, stored and replicated as one unit, compressed with
// WithCompression. It returns the first offset.
func (p *Producer) SendBatch(ctx context.Context, msgs []*Message) (SendResult, error) {
	if len(msgs) == 0 {
		return SendResult{}, errors.New("quiver: empty batch")
	}
	topic := msgs[0].Topic
	for _, m := range msgs[1:] {
		if m.Topic != topic {
			return SendResult{}, fmt.Errorf("quiver: a batch goes to one topic, not %s and %s", topic, m.Topic)
		}
	}
	body, flags, err := packBatch(msgs, p.cfg.compression)
	if err != nil {
		return SendResult{}, err
	}
	op, err := p.newOp(ctx, &Message{Topic: topic, Body: body})
	if err != nil {
		return SendResult{}, err
	}
	op.req.Flags, op.req.Count = flags, uint32(len(msgs))
	p.sem <- struct{}{}
	op.attempt()
	<-op.done
	res, err := op.res, op.err
	res.Count = len(msgs)
	p.release(op)
	return res, err
}

func (p *Producer) newOp(ctx context.Context, m *Message) (*sendOp, error) {
	if m.Topic == "" {
		return nil, errors.New("quiver: message has no topic")
	}
	p.mu.RLock()
	defer p.mu.RUnlock()
	if p.closed.Load() {
		return nil, ErrClosed
	}
	op := opPool.Get().(*sendOp)
	op.p, op.ctx, op.start = p, ctx, time.Now()
	op.deadline = op.start.Add(p.cfg.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(op.deadline) {
		op.deadline = d
	}
	var hdr []byte
	if len(m.Headers) > 0 {
		hdr = wire.AppendHeaders(nil, m.Headers)
	}
	op.req = wire.Produce{Topic: m.Topic, Queue: wire.AnyQueue, Durability: uint8(p.cfg.durability), Count: 1,
		ClientTime: op.start.UnixNano(), Key: m.Key, Tags: m.Tags, Headers: hdr, Body: m.Body}
	p.ops.Add(1)
	return op, nil
}

func (p *Producer) release(op *sendOp) {
	*op = sendOp{done: op.done, attempts: op.attempts[:0], onAnswer: op.onAnswer}
	opPool.Put(op)
	p.ops.Done()
}

// attempt makes the next attempt, or finishes the op. It may block while
// a connection is dialled, so the retry path runs it on its own goroutine.
func (op *sendOp) attempt() {
	p := op.p
	now := time.Now()
	if p.closed.Load() {
		op.finish(ErrClosed)
		return
	}
	if !now.Before(op.deadline) || op.ctx.Err() != nil {
		err := op.ctx.Err()
		if err == nil {
			err = ErrTimeout
		}
		op.finish(err)
		return
	}
	bc := p.cl.pick(op.exclude)
	op.cur = bc
	attemptEnd := now.Add(p.cfg.attemptTimeout)
	if op.deadline.Before(attemptEnd) {
		attemptEnd = op.deadline
	}
	s := bc.live()
	if s == nil {
		ctx, cancel := context.WithDeadline(op.ctx, attemptEnd)
		var err error
		s, err = bc.get(ctx)
		cancel()
		if err != nil {
			op.failed(bc.addr, err, now)
			return
		}
	}
	c := newCall()
	c.cb = op.onAnswer
	op.start = now
	st := s.streams[streamProduce]
	b, start, err := st.begin(c, wire.TypeProduce, attemptEnd.UnixNano())
	if err != nil {
		c.release()
		op.failed(bc.addr, err, now)
		return
	}
	// After end the answer may complete (and recycle) op at once: nothing
	// of op is touched past this line.
	st.end(c, op.req.Append(b), start)
}

// answered runs on the session's reader (or sweeper) with the outcome.
func (op *sendOp) answered(c *call) {
	err, ack := c.err, c.ack
	c.cb = nil
	c.release()
	bc := op.cur
	if err != nil {
		op.failed(bc.addr, err, op.start)
		return
	}
	if op.p.cl.preferred.Load() != bc {
		op.p.cl.preferred.Store(bc) // it took a write: it leads
	}
	op.res = SendResult{Topic: op.req.Topic, Queue: ack.Queue, Offset: ack.Offset, Count: 1,
		StoreTime: time.Unix(0, ack.StoreTime), Broker: bc.addr, Attempts: len(op.attempts) + 1}
	op.complete()
}

// failed records an attempt and retries when it may help and time allows.
func (op *sendOp) failed(broker string, err error, started time.Time) {
	op.attempts = append(op.attempts, Attempt{Broker: broker, Err: err, Latency: time.Since(started)})
	if !Retryable(err) {
		op.finish(err)
		return
	}
	op.exclude = broker
	// Back off a little (more after each failure), within the deadline.
	n := len(op.attempts)
	wait := op.p.cfg.retryBase << min(n-1, 5)
	if time.Now().Add(wait).After(op.deadline) {
		op.finish(err)
		return
	}
	time.AfterFunc(wait, op.attempt)
}

func (op *sendOp) finish(err error) {
	op.err = &SendError{Topic: op.req.Topic, Attempts: append([]Attempt(nil), op.attempts...), Err: err}
	op.complete()
}

// complete hands the outcome to the waiter or the callback goroutine.
func (op *sendOp) complete() {
	if op.cb == nil {
		<-op.p.sem
		op.done <- struct{}{}
		return
	}
	op.p.cbs <- op
}

// callbacks runs async callbacks in order, one at a time.
func (p *Producer) callbacks() {
	defer p.wg.Done()
	for op := range p.cbs {
		op.cb(op.res, op.err)
		p.release(op)
		<-p.sem
	}
}

// Close waits for the sends in flight to complete (their callbacks run;
// retries stop), then stops the producer.
func (p *Producer) Close() error {
	p.mu.Lock()
	if p.closed.Swap(true) {
		p.mu.Unlock()
		return ErrClosed
	}
	p.mu.Unlock()
	p.ops.Wait()
	close(p.cbs)
	p.wg.Wait()
	p.cl.untrack(p)
	return nil
}
