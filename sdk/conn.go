package sdk

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quivermq/quiver/internal/buildinfo"
	"github.com/quivermq/quiver/sdk/wire"
)

// backoffPolicy is exponential backoff with full jitter.
type backoffPolicy struct {
	base, max         time.Duration // network failures
	hardBase, hardMax time.Duration // failures that are not the network's
}

func (p backoffPolicy) delay(failures int, hard bool) time.Duration {
	base, max := p.base, p.max
	if hard {
		base, max = p.hardBase, p.hardMax
	}
	d := base
	for i := 1; i < failures && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	if hard {
		// Not the network's fault: never sooner than half the delay, so
		// that no unlucky draw makes a tight loop (incident 004).
		return d/2 + time.Duration(rand.Int64N(int64(d/2)+1))
	}
	return time.Duration(rand.Int64N(int64(d) + 1)) // full jitter: uniform in [0, d]
}

// clientBuild names this SDK's build in every Hello.
var clientBuild = buildinfo.Client()

// brokerConn is the client's connection to one broker: at most one live
// session, redialled on demand with backoff after failures.
type brokerConn struct {
	cl   *Client
	addr string

	mu       sync.Mutex
	cur      *session
	dialing  chan struct{} // closed when the dial in progress ends
	failures int
	nextDial time.Time
	lastErr  error
	dials    atomic.Int64 // connection attempts, for tests and status
}

func newBrokerConn(c *Client, addr string) *brokerConn { return &brokerConn{cl: c, addr: addr} }

func (bc *brokerConn) backingOff() bool {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	return bc.cur == nil && time.Now().Before(bc.nextDial)
}

// live returns the live session, or nil.
func (bc *brokerConn) live() *session {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	if s := bc.cur; s != nil && !s.dead() {
		return s
	}
	return nil
}

// get returns the live session, dialling one if there is none and the
// backoff allows. While backing off it fails at once with the last error.
func (bc *brokerConn) get(ctx context.Context) (*session, error) {
	for {
		bc.mu.Lock()
		if s := bc.cur; s != nil && !s.dead() {
			bc.mu.Unlock()
			return s, nil
		}
		if bc.cl.closed.Load() {
			bc.mu.Unlock()
			return nil, ErrClosed
		}
		if ch := bc.dialing; ch != nil {
			bc.mu.Unlock()
			select {
			case <-ch:
				continue
			case <-ctx.Done():
				return nil, &NetError{Broker: bc.addr, Err: ctx.Err()}
			}
		}
		if wait := time.Until(bc.nextDial); wait > 0 {
			err := bc.lastErr
			bc.mu.Unlock()
			var he *HandshakeError
			if errors.As(err, &he) {
				return nil, err
			}
			return nil, &NetError{Broker: bc.addr, Err: fmt.Errorf("reconnect backing off for %v after: %w", wait.Round(time.Millisecond), err)}
		}
		ch := make(chan struct{})
		bc.dialing = ch
		bc.mu.Unlock()

		s, err := bc.dial(ctx)
		bc.mu.Lock()
		bc.dialing = nil
		close(ch)
		if err == nil {
			bc.cur, bc.failures, bc.lastErr = s, 0, nil
			bc.mu.Unlock()
			return s, nil
		}
		if ctx.Err() != nil {
			// The caller gave up, not the broker: no backoff for others.
			bc.mu.Unlock()
			return nil, &NetError{Broker: bc.addr, Err: fmt.Errorf("connecting: %w", ctx.Err())}
		}
		bc.failures++
		var he *HandshakeError
		hard := errors.As(err, &he)
		bc.lastErr = err
		bc.nextDial = time.Now().Add(bc.cl.cfg.backoff.delay(bc.failures, hard))
		bc.mu.Unlock()
		if hard {
			bc.cl.logger.Warn("broker refused the session; reconnects to it back off", "broker", bc.addr, "err", err,
				"next_attempt_in", time.Until(bc.nextDial).Round(time.Millisecond))
			bc.cl.reportError(err)
		}
		return nil, err
	}
}

// lost forgets a session that died, so that the next get redials after a
// backoff that grows while sessions keep failing quickly.
func (bc *brokerConn) lost(s *session) {
	bc.mu.Lock()
	defer bc.mu.Unlock()
	if bc.cur == s {
		bc.cur = nil
		if time.Since(s.started) < 10*time.Second {
			bc.failures++ // sessions that die young count as failures
		}
		bc.lastErr = s.err
		bc.nextDial = time.Now().Add(bc.cl.cfg.backoff.delay(bc.failures, false))
	}
}

func (bc *brokerConn) close() {
	bc.mu.Lock()
	s := bc.cur
	bc.cur = nil
	ch := bc.dialing
	bc.mu.Unlock()
	if ch != nil {
		<-ch
		bc.mu.Lock()
		s = bc.cur
		bc.cur = nil
		bc.mu.Unlock()
	}
	if s != nil {
		s.close(ErrClosed)
	}
}

// Stream roles of a session.
const (
	streamControl = iota // Hello, metadata, groups, commits, status
	streamProduce
	streamFetch
	numStreams
)

// session is one QUIC connection with an established Quiver session.
type session struct {
	bc      *brokerConn
	qc      *quic.Conn
	streams [numStreams]*cstream
	nextID  atomic.Uint64
	started time.Time
	hello   wire.HelloOK

	doneOnce sync.Once
	done     chan struct{}
	err      error
	wg       sync.WaitGroup
}

// dial connects, runs the Hello handshake and opens the data streams,
// within the dial timeout, the caller's ctx and the client's life.
func (bc *brokerConn) dial(caller context.Context) (*session, error) {
	cl := bc.cl
	bc.dials.Add(1)
	ctx, cancel := context.WithTimeout(cl.ctx, cl.cfg.dialTimeout)
	defer cancel()
	stop := context.AfterFunc(caller, cancel)
	defer stop()
	qc, err := quic.DialAddr(ctx, bc.addr, cl.cfg.tls, &quic.Config{
		HandshakeIdleTimeout:           cl.cfg.dialTimeout,
		MaxIdleTimeout:                 cl.cfg.idleTimeout,
		KeepAlivePeriod:                cl.cfg.idleTimeout / 5,
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 2 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
	})
	if err != nil {
		if nonNetwork(err) {
			return nil, &HandshakeError{Broker: bc.addr, Err: err}
		}
		return nil, &NetError{Broker: bc.addr, Err: err}
	}
	s := &session{bc: bc, qc: qc, started: time.Now(), done: make(chan struct{})}
	fail := func(err error) (*session, error) {
		s.close(err)
		s.wg.Wait()
		return nil, err
	}
	ctrl, err := s.open(ctx)
	if err != nil {
		return fail(&NetError{Broker: bc.addr, Err: err})
	}
	s.streams[streamControl] = ctrl
	c := newCall()
	defer c.release()
	hello := wire.Hello{Version: wire.ProtocolVersion, ClientID: cl.cfg.clientID, Credentials: cl.cfg.credentials, Build: clientBuild}
	b, start, _ := ctrl.begin(c, wire.TypeHello, 0)
	ctrl.end(c, hello.Append(b), start)
	if err := c.wait(ctx); err != nil {
		var be *wire.Error
		if errors.As(err, &be) {
			return fail(&HandshakeError{Broker: bc.addr, Err: err})
		}
		return fail(&NetError{Broker: bc.addr, Err: fmt.Errorf("hello: %w", err)})
	}
	if c.typ != wire.TypeHelloOK || wire.DecodeHelloOK(c.resp, &s.hello) != nil {
		return fail(&HandshakeError{Broker: bc.addr, Err: fmt.Errorf("unexpected answer to Hello (type %d)", c.typ)})
	}
	for i := streamProduce; i < numStreams; i++ {
		st, err := s.open(ctx)
		if err != nil {
			return fail(&NetError{Broker: bc.addr, Err: err})
		}
		s.streams[i] = st
	}
	s.wg.Add(1)
	go s.sweep()
	return s, nil
}

// open opens one stream and starts its reader and writer.
func (s *session) open(ctx context.Context) (*cstream, error) {
	qs, err := s.qc.OpenStreamSync(ctx)
	if err != nil {
		return nil, err
	}
	st := &cstream{s: s, qs: qs, w: wire.NewWriter(qs, 8<<20), pending: map[uint64]*call{}}
	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		if err := st.w.Run(); err != nil {
			s.close(err)
		}
	}()
	go st.read()
	return st, nil
}

func (s *session) dead() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// close ends the session and fails every pending call with err.
func (s *session) close(err error) {
	s.doneOnce.Do(func() {
		s.err = err
		close(s.done)
		for _, st := range s.streams {
			if st != nil {
				st.w.Close()
			}
		}
		code, msg := quic.ApplicationErrorCode(0), "client closing"
		if !errors.Is(err, ErrClosed) {
			msg = "client: " + err.Error()
		}
		s.qc.CloseWithError(code, msg)
		for _, st := range s.streams {
			if st != nil {
				st.failAll(&NetError{Broker: s.bc.addr, Err: err})
			}
		}
		s.bc.lost(s)
	})
}

// sweep fails calls whose deadline passed (their broker may be stalled).
func (s *session) sweep() {
	defer s.wg.Done()
	t := time.NewTicker(10 * time.Millisecond)
	defer t.Stop()
	var expired []*call
	for {
		select {
		case <-s.done:
			return
		case now := <-t.C:
			for _, st := range s.streams {
				expired = st.expire(now.UnixNano(), expired[:0])
				for _, c := range expired {
					c.err = &NetError{Broker: s.bc.addr, Err: ErrTimeout}
					c.complete()
				}
			}
		}
	}
}

// cstream is one stream of a session: requests out, responses in.
type cstream struct {
	s  *session
	qs *quic.Stream
	w  *wire.Writer
	mu sync.Mutex
	// pending calls by request id; a call is completed by whoever removes it.
	pending map[uint64]*call
	closed  bool
}

// begin registers c and starts its request frame; append the payload and
// call end. deadline (unix ns, 0: none) fails the call when passed.
func (st *cstream) begin(c *call, typ wire.Type, deadline int64) ([]byte, int, error) {
	id := st.s.nextID.Add(1)
	c.id, c.st, c.deadline = id, st, deadline
	st.mu.Lock()
	if st.closed {
		st.mu.Unlock()
		err := st.s.err
		if err == nil {
			err = ErrClosed
		}
		return nil, 0, &NetError{Broker: st.s.bc.addr, Err: err}
	}
	st.pending[id] = c
	st.mu.Unlock()
	b, start := st.w.Begin(wire.Header{Type: typ, RequestID: id})
	return b, start, nil
}

// send starts a frame with flags that gets no response (finish it with endOneway).
func (st *cstream) send(typ wire.Type, flags uint8) ([]byte, int) {
	return st.w.Begin(wire.Header{Type: typ, Flags: flags, RequestID: st.s.nextID.Add(1)})
}

// end finishes the request frame of c. From here on c may complete at
// any moment (its caller must not touch what the payload was built from).
func (st *cstream) end(c *call, b []byte, start int) {
	id := c.id // c may be completed and reused as soon as it is marked sent
	c.sent.Store(true)
	if err := st.w.End(b, start); err != nil {
		// The writer failed: the session is closing. If nobody completed
		// the call yet, it is this goroutine's to fail.
		st.s.close(err)
		if c := st.take(id); c != nil {
			c.err = &NetError{Broker: st.s.bc.addr, Err: err}
			c.complete()
		}
	}
}

// endOneway finishes a frame sent with send.
func (st *cstream) endOneway(b []byte, start int) {
	if err := st.w.End(b, start); err != nil {
		st.s.close(err)
	}
}

// take removes and returns the pending call id, or nil.
func (st *cstream) take(id uint64) *call {
	st.mu.Lock()
	c := st.pending[id]
	delete(st.pending, id)
	st.mu.Unlock()
	return c
}

func (st *cstream) expire(now int64, dst []*call) []*call {
	st.mu.Lock()
	for id, c := range st.pending {
		if c.deadline != 0 && now > c.deadline && c.sent.Load() {
			delete(st.pending, id)
			dst = append(dst, c)
		}
	}
	st.mu.Unlock()
	return dst
}

// failPending fails the calls sent and not answered yet, keeping the
// stream open (an answer that comes later finds no call and is dropped).
func (st *cstream) failPending(err error) {
	st.mu.Lock()
	calls := make([]*call, 0, len(st.pending))
	for id, c := range st.pending {
		if c.sent.Load() {
			delete(st.pending, id)
			calls = append(calls, c)
		}
	}
	st.mu.Unlock()
	for _, c := range calls {
		c.err = err
		c.complete()
	}
}

func (st *cstream) failAll(err error) {
	st.mu.Lock()
	st.closed = true // begin registers no call from here on
	st.mu.Unlock()
	st.failPending(err)
}

// read delivers responses to their calls until the stream fails.
func (st *cstream) read() {
	defer st.s.wg.Done()
	br := bufio.NewReaderSize(st.qs, 64<<10)
	buf := make([]byte, 0, 64<<10)
	for {
		h, payload, nb, err := wire.ReadFrame(br, buf)
		buf = nb
		if err != nil {
			st.s.close(fmt.Errorf("reading from broker: %w", err))
			return
		}
		c := st.take(h.RequestID)
		if c == nil {
			continue // its caller gave up (timeout or cancel)
		}
		c.typ = h.Type
		switch h.Type {
		case wire.TypeError:
			if werr, derr := wire.DecodeError(payload); derr != nil {
				c.err = derr
			} else {
				c.err = werr
			}
		case wire.TypeProduceAck:
			c.err = wire.DecodeProduceAck(payload, &c.ack)
		default:
			c.resp = append(c.resp[:0], payload...)
		}
		c.complete()
		if cap(buf) > 4<<20 {
			buf = make([]byte, 0, 64<<10)
		}
	}
}

// call is one request in flight. It completes exactly once: through its
// callback (on the reader, the sweeper or a failing goroutine; it must not
// block) or by signalling done.
type call struct {
	id       uint64
	st       *cstream
	deadline int64
	typ      wire.Type
	resp     []byte
	ack      wire.ProduceAck
	err      error
	cb       func(*call)
	done     chan struct{}
	sent     atomic.Bool // its frame is complete; see end
}

var callPool = sync.Pool{New: func() any { return &call{done: make(chan struct{}, 1)} }}

func newCall() *call { return callPool.Get().(*call) }

func (c *call) release() {
	c.st, c.cb, c.err, c.typ, c.deadline = nil, nil, nil, 0, 0
	c.sent.Store(false)
	c.ack = wire.ProduceAck{}
	if cap(c.resp) > 1<<20 {
		c.resp = nil
	}
	c.resp = c.resp[:0]
	callPool.Put(c)
}

func (c *call) complete() {
	if c.cb != nil {
		c.cb(c)
		return
	}
	c.done <- struct{}{}
}

// wait waits for a call made without a callback. When ctx ends first the
// call is withdrawn (or, if its answer is being delivered, waited for).
func (c *call) wait(ctx context.Context) error {
	select {
	case <-c.done:
		return c.err
	case <-ctx.Done():
		if c.st.take(c.id) == nil {
			<-c.done // being completed right now
			return c.err
		}
		return &NetError{Broker: c.st.s.bc.addr, Err: ctx.Err()}
	}
}

// requestAny sends a request that any broker can answer (status,
// metadata) to the brokers in turn while the failure is retryable.
func (cl *Client) requestAny(ctx context.Context, role int, typ wire.Type, payload func([]byte) []byte) (*call, error) {
	var addrs, msgs []string
	for _, bc := range cl.order() {
		c, err := cl.request(ctx, bc, role, typ, payload)
		if err == nil {
			return c, nil
		}
		if !Retryable(err) {
			return nil, err // an answer another broker would give too
		}
		addrs = append(addrs, bc.addr)
		msgs = append(msgs, strings.TrimPrefix(err.Error(), "quiver: "))
		if ctx.Err() != nil {
			break
		}
	}
	if len(msgs) == 1 {
		return nil, &NetError{Broker: addrs[0], Err: errors.New(strings.TrimPrefix(msgs[0], "broker "+addrs[0]+": "))}
	}
	return nil, &NetError{Broker: strings.Join(addrs, ","), Err: fmt.Errorf("no broker answered: %s", strings.Join(msgs, "; "))}
}

// order lists the bootstrap brokers round robin, those set aside last.
func (cl *Client) order() []*brokerConn {
	n := len(cl.boot)
	out := make([]*brokerConn, 0, n)
	var aside []*brokerConn
	start := int(cl.rr.Add(1))
	for i := 0; i < n; i++ {
		bc := cl.boot[(start+i)%n]
		if cl.faults.usable(bc.addr) && !bc.backingOff() {
			out = append(out, bc)
		} else {
			aside = append(aside, bc)
		}
	}
	return append(out, aside...)
}

// request sends one request on the stream role and waits for its answer;
// the answer's payload is in c.resp (valid until c.release).
func (cl *Client) request(ctx context.Context, bc *brokerConn, role int, typ wire.Type, payload func([]byte) []byte) (*call, error) {
	s, err := bc.get(ctx)
	if err != nil {
		return nil, err
	}
	c := newCall()
	var deadline int64
	if d, ok := ctx.Deadline(); ok {
		deadline = d.UnixNano()
	}
	st := s.streams[role]
	b, start, err := st.begin(c, typ, deadline)
	if err != nil {
		c.release()
		return nil, err
	}
	st.end(c, payload(b), start)
	if err := c.wait(ctx); err != nil {
		c.release()
		return nil, err
	}
	return c, nil
}
