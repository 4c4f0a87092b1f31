package sdk

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
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
	keyFailover    bool
	outboxDir      string
	outboxMax      int64
	noCoalesce     bool
	linger         time.Duration
	noIdempotence  bool
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

// WithoutCoalescing sends every message in a frame of its own. By default
// concurrent keyless sends of the client's producers to the same broker
// and topic share frames while two of theirs are in flight, and the next
// frame carries everything that waited (at most 5 ms) as one batch record:
// natural batching (coalesce.go). Each message keeps its own result,
// attempts and retries.
func WithoutCoalescing() ProducerOpt { return func(c *producerConfig) { c.noCoalesce = true } }

// WithoutIdempotence sends without the producer id and sequence numbers
// that let a broker store a retried send once (idempotence.go): a send
// whose first attempt landed is then stored twice when retried.
func WithoutIdempotence() ProducerOpt { return func(c *producerConfig) { c.noIdempotence = true } }

// WithLinger makes natural batching wait d on purpose (Kafka's linger.ms):
// the first keyless send of a batch waits up to d for others to join it,
// even when no frame is in flight, unless the batch fills first (512
// messages or 256 KiB). At a moderate rate, fewer and larger frames cost
// the client and the broker less CPU per message, for up to d of latency.
// Default 0: a send waits only behind frames already in flight. At most
// 1 s; not with WithoutCoalescing.
func WithLinger(d time.Duration) ProducerOpt { return func(c *producerConfig) { c.linger = d } }

// maxLinger bounds WithLinger.
const maxLinger = time.Second

// WithKeyFailover lets a message with a key move to another queue while
// its key's queue is unavailable (its group has no reachable leader). By
// default such a send keeps trying the key's queue and then fails with an
// error that says so: moving would let a later message of the key be
// consumed before an earlier one (incident 002). With this option, order
// per key holds only while the key's queue is available.
func WithKeyFailover() ProducerOpt { return func(c *producerConfig) { c.keyFailover = true } }

// SendResult says where a message was stored.
type SendResult struct {
	Topic     string
	Group     string // the broker group
	Queue     uint32 // within the group
	Offset    uint64 // of the first message, for a batch
	Count     int    // messages (1, or the batch size)
	StoreTime time.Time
	Broker    string
	// Epoch is the leader epoch of the group when it stored the message:
	// it grows with every change of the group's leader.
	Epoch    uint64
	Attempts int
	// Failed lists the attempts that failed before the one that
	// succeeded (nil when the first one did), or all of them when the
	// message was outboxed.
	Failed []Attempt
	// Outboxed means no broker has the message yet: it is kept in the
	// producer's outbox on local disk and will be resent (WithOutbox).
	// Group, Queue, Offset, StoreTime and Broker are then unset.
	Outboxed bool
}

// Producer sends messages. It is safe for concurrent use.
//
// A message without a key goes to any broker group hosting its topic, in
// turn, skipping groups whose leader is set aside (WithFaultAvoidance); the
// group's broker picks the queue. A message with a key goes to the key's
// queue (a hash of the key over the topic's queues), so that the messages
// of a key are consumed in the order they were sent (see WithKeyFailover).
//
// Send and SendAsync retry every retryable failure (network, timeout,
// BUSY, not-leader, not enough replicas, broker stopping) within the
// send's deadline, on another group when the message has no key;
// failures that retrying cannot fix (too large, invalid, unauthorized)
// return at once. A send that timed out on a broker may still have been
// stored there: delivery is at least once.
type Producer struct {
	cl     *Client
	rr     atomic.Uint32
	cfg    producerConfig
	sem    chan struct{}
	cbs    chan *sendOp // completed async sends, in completion order
	wg     sync.WaitGroup
	mu     sync.RWMutex // newOp holds it shared, Close exclusively
	closed atomic.Bool
	ops    sync.WaitGroup // sends in flight, callbacks included
	out    *outboxState   // WithOutbox
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
	switch {
	case cfg.linger < 0 || cfg.linger > maxLinger:
		return nil, fmt.Errorf("quiver: linger %v is out of range (0 to %v)", cfg.linger, maxLinger)
	case cfg.linger > 0 && cfg.noCoalesce:
		return nil, errors.New("quiver: WithLinger batches sends, which WithoutCoalescing turns off")
	}
	// An async send holds its place in sem until its callback has run, so
	// cbs never fills: a reader goroutine never blocks on a slow callback.
	p := &Producer{cl: cl, cfg: cfg, sem: make(chan struct{}, cfg.maxInFlight), cbs: make(chan *sendOp, cfg.maxInFlight)}
	if cfg.outboxDir != "" {
		o, err := openOutboxState(cfg.outboxDir, cfg.outboxMax)
		if err != nil {
			return nil, err
		}
		p.out = o
	}
	if err := cl.track(p); err != nil {
		if p.out != nil {
			p.out.ob.Close()
		}
		return nil, err
	}
	p.wg.Add(1)
	go p.callbacks()
	if p.out != nil {
		go p.resender()
	}
	return p, nil
}

// sendOp is one send through its attempts.
type sendOp struct {
	p          *Producer
	req        wire.Produce
	ctx        context.Context
	deadline   time.Time
	attempts   []Attempt
	tried      []string // groups that failed this send (no key)
	cur        *brokerConn
	group      string
	probe      bool // this attempt is its broker's probe (fault avoidance)
	sending    bool // the attempt went out (faults.begin)
	queued     bool // goes to the outbox without an attempt (errBehindKey)
	fromOutbox bool // the resender's: never outboxed again
	offloaded  bool // an async attempt moved off the caller's goroutine to dial
	known      bool // the topic was in the routes
	keyBound   bool // a keyed send kept to its key's queue (op.group, op.req.Queue)
	alone      bool // never coalesced again (its batch was refused as a whole)
	fixed      bool // a keyless send to queue fixedQ of whichever group (redelivery.go)
	fixedQ     uint32
	deliverAt  int64 // a delayed send (unix ns; Message.DeliverAt)
	start      time.Time
	attemptEnd time.Time  // its attempt's end, set when its coalesced frame goes
	coal       *coalescer // the coalescer whose frame slot this lone attempt holds

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
	return p.wait(op)
}

// wait runs op once it has a place in flight and returns its outcome.
func (p *Producer) wait(op *sendOp) (SendResult, error) {
	p.sem <- struct{}{}
	op.run()
	<-op.done
	p.settle(op)
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
	return p.startAsync(ctx, op, cb)
}

// startAsync starts op with its callback, once it has a place in flight.
func (p *Producer) startAsync(ctx context.Context, op *sendOp, cb func(SendResult, error)) error {
	select {
	case p.sem <- struct{}{}:
	case <-ctx.Done():
		p.release(op)
		return ctx.Err()
	}
	op.cb = cb
	op.run()
	return nil
}

// SendOneway sends m without waiting for, or asking for, an answer. It is
// lossy by design: a message lost in the network or refused by the broker
// is never reported and never retried. Use Send or SendAsync for anything
// that matters.
func (p *Producer) SendOneway(ctx context.Context, m *Message) error {
	if !m.DeliverAt.IsZero() {
		return errors.New("quiver: SendOneway with DeliverAt: use Send or SendAsync")
	}
	op, err := p.newOp(ctx, m)
	if err != nil {
		return err
	}
	defer p.release(op)
	bc, err := op.target(p.cl.router.table())
	if err != nil {
		return err
	}
	p.cl.faults.release(bc.addr, op.probe) // a oneway send tells nothing of the broker
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
	op, err := p.newBatchOp(ctx, msgs)
	if err != nil {
		return SendResult{}, err
	}
	return p.wait(op)
}

// SendBatchAsync sends msgs as SendBatch does and calls cb with the
// outcome, as SendAsync does (one callback per batch, in completion order,
// on the producer's callback goroutine). The batch is encoded before it
// returns: msgs may be reused at once. It blocks while WithMaxInFlight
// sends are in flight.
func (p *Producer) SendBatchAsync(ctx context.Context, msgs []*Message, cb func(SendResult, error)) error {
	op, err := p.newBatchOp(ctx, msgs)
	if err != nil {
		return err
	}
	return p.startAsync(ctx, op, cb)
}

// newBatchOp checks and encodes a batch.
func (p *Producer) newBatchOp(ctx context.Context, msgs []*Message) (*sendOp, error) {
	if len(msgs) == 0 {
		return nil, errors.New("quiver: empty batch")
	}
	topic := msgs[0].Topic
	for _, m := range msgs {
		if m.Topic != topic {
			return nil, fmt.Errorf("quiver: a batch goes to one topic, not %s and %s", topic, m.Topic)
		}
		if !m.DeliverAt.IsZero() {
			return nil, errors.New("quiver: a batch with DeliverAt: delayed messages go with Send or SendAsync")
		}
	}
	body, flags, err := packBatch(msgs, p.cfg.compression)
	if err != nil {
		return nil, err
	}
	op, err := p.newOp(ctx, &Message{Topic: topic, Body: body})
	if err != nil {
		return nil, err
	}
	op.req.Flags, op.req.Count = flags, uint32(len(msgs))
	return op, nil
}

func (p *Producer) newOp(ctx context.Context, m *Message) (*sendOp, error) {
	if m.Topic == "" {
		return nil, errors.New("quiver: message has no topic")
	}
	var hdr []byte
	if len(m.Headers) > 0 {
		hdr = wire.AppendHeaders(nil, m.Headers)
	}
	op, err := p.newOpReq(ctx, wire.Produce{Topic: m.Topic, Durability: uint8(p.cfg.durability), Count: 1,
		Key: m.Key, Tags: m.Tags, Headers: hdr, Body: m.Body})
	if err != nil {
		return nil, err
	}
	op.req.ClientTime = op.start.UnixNano()
	if !m.DeliverAt.IsZero() {
		if m.DeliverAt.After(op.start.Add(time.Duration(wire.MaxDelay))) {
			p.release(op)
			return nil, fmt.Errorf("quiver: deliver at %s: more than 30 days ahead", m.DeliverAt.Format(time.RFC3339))
		}
		op.deliverAt = m.DeliverAt.UnixNano()
	}
	op.queued = p.out != nil && p.out.keyPending(m.Topic, m.Key)
	return op, nil
}

// newOpReq starts an op for req (the resender's keep their ClientTime).
func (p *Producer) newOpReq(ctx context.Context, req wire.Produce) (*sendOp, error) {
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
	op.req = req
	op.req.Queue = wire.AnyQueue
	p.ops.Add(1)
	return op, nil
}

func (p *Producer) release(op *sendOp) {
	*op = sendOp{done: op.done, attempts: op.attempts[:0], tried: op.tried[:0], onAnswer: op.onAnswer}
	opPool.Put(op)
	p.ops.Done()
}

// run starts the op: its first attempt, or straight to the outbox.
func (op *sendOp) run() {
	if op.queued {
		op.finish(errBehindKey)
		return
	}
	op.attempt()
}

// offload makes the attempt again on a goroutine of its own. SendAsync's
// first attempt runs on its caller; fetching the routes can take up to
// the attempt's time, and the caller's later sends would wait behind it
// (a dial is moved off the caller by attempt). Retries already run on
// their own goroutine (time.AfterFunc).
func (op *sendOp) offload() {
	op.offloaded = true
	go op.attempt()
}

// attempt makes the next attempt, or finishes the op. It may block while
// a connection is dialled, so the retry path runs it on its own goroutine.
func (op *sendOp) attempt() {
	p := op.p
	now := time.Now()
	// A send accepted before Close goes on, retries included, until it
	// succeeds or its deadline passes: Close waits for it.
	if !now.Before(op.deadline) || op.ctx.Err() != nil {
		err := op.ctx.Err()
		if err == nil {
			err = ErrTimeout
		}
		op.finish(err)
		return
	}
	t := p.cl.router.table()
	if t == nil && op.cb != nil && !op.offloaded {
		op.offload() // the routes must be fetched first
		return
	}
	bc, err := op.target(t)
	op.cur = bc
	if err != nil {
		op.failed(err, now)
		return
	}
	if t == nil {
		now = time.Now() // the routes were fetched first: not the broker's latency
	}
	attemptEnd := now.Add(p.cfg.attemptTimeout)
	if op.deadline.Before(attemptEnd) {
		attemptEnd = op.deadline
	}
	if s := bc.live(); s != nil {
		op.sendOn(s, now, attemptEnd)
		return
	}
	if op.cb != nil && !op.offloaded {
		// Dial the broker chosen on a goroutine of its own. (Choosing
		// again there moved the send to another group with no failure
		// recorded, whatever the avoidance mode: with avoidance off, a
		// dead broker's share silently went to the group after it.)
		op.offloaded = true
		go op.dialAndSend(bc, now, attemptEnd)
		return
	}
	op.dialAndSend(bc, now, attemptEnd)
}

// dialAndSend gets a session to bc, dialling if needed, and sends on it.
func (op *sendOp) dialAndSend(bc *brokerConn, now, attemptEnd time.Time) {
	ctx, cancel := context.WithDeadline(op.ctx, attemptEnd)
	s, err := bc.get(ctx)
	cancel()
	if err != nil {
		op.failed(err, now)
		return
	}
	// The dial is not the broker's latency: fault avoidance would take a
	// handshake for a slow send.
	op.sendOn(s, time.Now(), attemptEnd)
}

// sendOn sends the attempt on s, a session to op.cur: alone, or with the
// client's other sends to the topic (coalesce.go).
func (op *sendOp) sendOn(s *session, now, attemptEnd time.Time) {
	if op.coalescable() {
		op.p.cl.coalescer(s, op).add(op, now, attemptEnd)
		return
	}
	op.sendFrame(s, now, attemptEnd)
}

// sendFrame sends the attempt in a frame of its own.
func (op *sendOp) sendFrame(s *session, now, attemptEnd time.Time) {
	p := op.p
	bc := op.cur
	c := newCall()
	c.cb = op.onAnswer
	op.start = now
	st := s.streams[streamProduce]
	typ := wire.TypeProduce
	if op.deliverAt != 0 {
		typ = wire.TypeProduceAt
	}
	b, start, err := st.begin(c, typ, attemptEnd.UnixNano())
	if err != nil {
		c.release()
		co := op.coal
		op.coal = nil
		op.failed(err, now)
		if co != nil {
			co.done()
		}
		return
	}
	op.sending = true
	p.cl.faults.begin(bc.addr)
	op.idempotent()
	if op.deliverAt != 0 {
		b = binary.LittleEndian.AppendUint64(b, uint64(op.deliverAt)) // ProduceAt: the time, then the Produce
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
	co := op.coal // op may be recycled once it has its outcome
	op.coal = nil
	if err != nil {
		op.failed(err, op.start)
	} else {
		op.succeeded(ack)
	}
	if co != nil {
		co.done()
	}
}

// succeeded completes op with the broker's acknowledgement.
func (op *sendOp) succeeded(ack wire.ProduceAck) {
	cl := op.p.cl
	op.sending = false
	cl.faults.succeeded(op.cur.addr, time.Since(op.start), op.probe)
	if !op.known {
		cl.router.stale() // a topic created by this send: learn its queues
	}
	op.res = SendResult{Topic: op.req.Topic, Group: op.group, Queue: ack.Queue, Offset: ack.Offset, Count: int(max(op.req.Count, 1)),
		StoreTime: time.Unix(0, ack.StoreTime), Broker: op.cur.addr, Epoch: ack.Epoch, Attempts: len(op.attempts) + 1}
	if len(op.attempts) > 0 {
		op.res.Failed = append([]Attempt(nil), op.attempts...)
	}
	op.complete()
}

// failed records an attempt and retries when it may help and time allows.
func (op *sendOp) failed(err error, started time.Time) {
	cl := op.p.cl
	addr := "group " + op.group
	var ne *NetError
	var he *HandshakeError
	switch {
	case op.cur != nil:
		addr = op.cur.addr
	case errors.As(err, &ne):
		addr = ne.Broker // the routes could not be had: the brokers asked
	case errors.As(err, &he):
		addr = he.Broker
	}
	lat := time.Since(started)
	op.attempts = append(op.attempts, Attempt{Broker: addr, Code: codeOf(err), Err: err, Latency: lat})
	if op.sending {
		var be *wire.Error
		cl.faults.end(addr, errors.As(err, &be)) // a code is an answer: the broker is alive
		op.sending = false
	}
	// routed: the next refresh of the routes, asked for here; the retry
	// goes as soon as it comes (a new leader may be in it) or after its
	// backoff, whichever is first.
	var routed <-chan struct{}
	notLeader := false
	switch {
	case op.cur == nil:
		routed = cl.router.updated()
		cl.router.stale()
	case isNotLeader(err):
		// The group's leader moved (a failover, a handoff): retry once the
		// routes say where, not on the broker that just said no.
		cl.faults.release(addr, op.probe)
		routed, notLeader = cl.router.updated(), true
		cl.router.stale()
	case brokerFault(err):
		cl.faults.sent(addr, lat, err, op.probe)
		if _, ok := err.(*NetError); ok {
			routed = cl.router.updated()
			cl.router.stale()
		}
	default:
		cl.faults.release(addr, op.probe)
	}
	op.probe = false
	if !Retryable(err) {
		op.finish(err)
		return
	}
	if !op.keyBound && op.group != "" {
		op.tried = append(op.tried, op.group)
	}
	// Go elsewhere at once; back off a little when retrying again (but
	// not after a failover: the new leader is known).
	var wait time.Duration
	if n := len(op.attempts); n > 1 && !errors.Is(err, errLeaderMoved) {
		wait = op.p.cfg.retryBase << min(n-2, 5)
	}
	if errors.Is(err, errLeaderMoved) {
		routed = nil
	}
	if time.Now().Add(wait).After(op.deadline) {
		op.finish(err)
		return
	}
	if routed != nil && (wait > 0 || notLeader) {
		// After NOT_LEADER, at least until the refresh (at most
		// routeWait: it may show the same leader, the broker asked not
		// having heard of the change yet, or fail).
		limit := wait
		if notLeader {
			limit = max(wait, routeWait)
		}
		go func() {
			t := time.NewTimer(limit)
			defer t.Stop()
			select {
			case <-routed:
			case <-t.C:
			case <-op.ctx.Done():
			}
			op.attempt()
		}()
		return
	}
	time.AfterFunc(wait, op.attempt)
}

// routeWait bounds how long a send that met NOT_LEADER waits for the
// routes to be refreshed before it tries again.
const routeWait = 250 * time.Millisecond

func (op *sendOp) finish(err error) {
	se := &SendError{Topic: op.req.Topic, Attempts: append([]Attempt(nil), op.attempts...), Err: err}
	if op.keyBound {
		se.KeyQueue = fmt.Sprintf("%s/%d", op.group, op.req.Queue)
	}
	op.err = se
	op.complete()
}

// target chooses where the next attempt goes: the key's queue, or a group
// hosting the topic that this send did not fail on and whose leader is not
// set aside (else one that is: better than nothing). It sets op.group,
// op.known, op.keyBound, op.probe and, for a key, op.req.Queue. t is the
// current routes (nil: fetched here).
func (op *sendOp) target(t *routeTable) (*brokerConn, error) {
	cl := op.p.cl
	if t == nil {
		ctx, cancel := context.WithDeadline(op.ctx, op.deadline)
		var err error
		t, err = cl.router.routes(ctx)
		cancel()
		if err != nil {
			return nil, err
		}
	}
	op.group, op.probe, op.keyBound = "", false, false
	parts := t.partsOf(op.req.Topic)
	op.known = len(parts) > 0
	leader := func(g string) string {
		if gr := t.groups[g]; gr != nil {
			return gr.leader
		}
		return ""
	}
	if len(op.req.Key) > 0 && op.known && !op.fixed {
		g, q, idx, total := keyQueue(parts, op.req.Key)
		if op.p.cfg.keyFailover {
			for i := uint32(0); i < total; i++ {
				gi := queueAt(parts, (idx+i)%total)
				if l := leader(gi); l != "" && cl.faults.usable(l) {
					g, q = gi, queueIn(parts, (idx+i)%total)
					break
				}
			}
		} else {
			op.keyBound = true
		}
		op.group, op.req.Queue = g, int32(q)
		l := leader(g)
		if l == "" {
			return nil, &NetError{Broker: "group " + g, Err: errors.New("no leader of the group is known")}
		}
		ok, probe := cl.faults.acquire(l)
		op.probe = ok && probe
		return cl.conn(l), nil
	}
	op.req.Queue = wire.AnyQueue
	// A fixed queue, within the chosen group's queues (a redelivery topic
	// another member made with fewer pauses has fewer).
	pick := func(g string) {
		op.group = g
		if !op.fixed {
			return
		}
		q := op.fixedQ
		for _, p := range parts {
			if p.group == g && p.queues > 0 {
				q = min(q, p.queues-1)
			}
		}
		op.req.Queue = int32(q)
	}
	groups := t.names
	if op.known {
		groups = t.hostsOf(op.req.Topic)
	} else if len(op.req.Key) > 0 && len(groups) > 0 && !op.fixed {
		// A new topic: one group per key, so that its first messages stay
		// together (the broker picks the key's queue).
		g := groups[wire.KeyHash(op.req.Key)%uint32(len(groups))]
		groups = []string{g}
	}
	n := len(groups)
	if n == 0 {
		return nil, &NetError{Broker: "routes", Err: errors.New("no broker group with a leader is known")}
	}
	start := op.p.rr.Add(1)
	// The groups this send may go to, those with a known leader: first
	// those it has not failed on yet (fresh), then the others. Round-robin
	// over the fresh ones not set aside, so that a group set aside hands
	// its share evenly to the others; if there are none, the faults'
	// fallback (better one set aside than none, and never a silent one
	// while another answers).
	var gbuf, lbuf [16]string
	cands, leaders := gbuf[:0], lbuf[:0]
	add := func(tried bool) {
		for _, g := range groups {
			if l := leader(g); l != "" && slices.Contains(op.tried, g) == tried {
				cands, leaders = append(cands, g), append(leaders, l)
			}
		}
	}
	add(false)
	fresh := len(cands)
	if i, probe := cl.faults.choose(leaders, start); i >= 0 {
		pick(cands[i])
		op.probe = probe
		return cl.conn(leaders[i]), nil
	}
	add(true)
	i := cl.faults.fallback(leaders, fresh, start)
	if i < 0 {
		return nil, &NetError{Broker: "topic " + op.req.Topic, Err: errors.New("no group hosting it has a known leader")}
	}
	pick(cands[i])
	return cl.conn(leaders[i]), nil
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
		p.settle(op)
		op.cb(op.res, op.err)
		p.release(op)
		<-p.sem
	}
}

// Close waits for the sends in flight to complete, each retried as usual
// within its deadline (WithSendTimeout, 3 s by default), and their
// callbacks to run; then it stops the producer. With WithOutbox, sends whose
// retries run out are kept in the outbox, and what it holds stays on disk for
// the next producer opened on its dir.
func (p *Producer) Close() error {
	p.mu.Lock()
	if p.closed.Swap(true) {
		p.mu.Unlock()
		return ErrClosed
	}
	p.mu.Unlock()
	if p.out != nil {
		close(p.out.stop)
		p.out.quit()
	}
	p.ops.Wait()
	close(p.cbs)
	p.wg.Wait()
	var err error
	if p.out != nil {
		<-p.out.done
		err = p.out.ob.Close()
	}
	p.cl.untrack(p)
	return err
}
