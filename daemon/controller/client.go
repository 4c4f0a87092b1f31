package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// Client is a broker's side of its session with the controller: it finds
// the quorum's leader among the voters, reports the broker every
// Heartbeat, receives the state (answers and pushes), carries requests,
// and keeps the broker's lease.
type Client struct {
	o      Options
	logger *slog.Logger
	// report fills the broker's part of each heartbeat.
	report func() Heartbeat
	// onState is called with every newer state, on the client's goroutine,
	// in order; it must not block for long.
	onState func(*State)

	seq    atomic.Uint64
	nextID atomic.Uint64
	base   time.Time    // monotonic origin of lease
	lease  atomic.Int64 // ns since base until which the controller vouches for this broker's session

	mu       sync.Mutex
	st       *State
	info     *Info
	live     map[string]int64
	liveAt   time.Time
	waiting  map[string]string
	target   string // the voter to ask first
	cur      *wire.Writer
	pending  map[uint64]chan *Msg
	lastErr  string
	sessions int64
	changed  chan struct{} // closed (and replaced) by every newer state
	joined   chan struct{} // closed (and replaced) when a session starts
}

// NewClient returns a Client; Run starts it. report and onState as above.
func NewClient(o Options, report func() Heartbeat, onState func(*State)) *Client {
	o.ensureDefaults()
	return &Client{o: o, logger: o.Logger.With("component", "controller-client"), report: report, onState: onState,
		base: time.Now(), st: NewState(), pending: map[uint64]chan *Msg{}, changed: make(chan struct{}), joined: make(chan struct{})}
}

// answerTimeout is how long a session waits for the controller to answer
// a heartbeat before it tries another voter: two heartbeats, never more
// than the lease.
func (o *Options) answerTimeout() time.Duration { return min(2*o.Heartbeat, o.Lease()) }

// Run keeps a session with the controller's leader until ctx ends. It
// asks the voters in turn, the one a voter names as the leader first; a
// voter that failed is asked again only after the others.
func (c *Client) Run(ctx context.Context) {
	fails, next := 0, 0
	for ctx.Err() == nil {
		c.mu.Lock()
		addr := c.target
		if addr == "" {
			addr = c.o.Voters[next%len(c.o.Voters)]
		}
		c.target = ""
		c.mu.Unlock()
		next = slices.Index(c.o.Voters, addr) + 1
		redirected, err := c.session(ctx, addr)
		if ctx.Err() != nil {
			return
		}
		if redirected {
			fails = 0
			continue // at once, to the leader it named
		}
		fails++
		if err != nil {
			c.mu.Lock()
			if c.lastErr != err.Error() {
				c.logger.Info("no session with the controller", "voter", addr, "err", err)
			}
			c.lastErr = err.Error()
			c.mu.Unlock()
		}
		// Try the next voter soon; after a round of failures, back off a
		// little (jittered, at most a heartbeat).
		wait := time.Duration(0)
		if fails >= len(c.o.Voters) {
			wait = time.Duration(rand.Int64N(int64(c.o.Heartbeat)))
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
			return
		}
	}
}

var errNoSession = errors.New("controller: no session with the controller's leader")

// RefusedError is the controller's answer that a request was refused
// (unlike a request lost with its session, whose outcome is unknown).
type RefusedError struct{ Msg string }

func (e *RefusedError) Error() string { return e.Msg }

// session runs one session with the voter at addr. redirected: the voter
// does not lead and named the one that does (c.target).
func (c *Client) session(ctx context.Context, addr string) (redirected bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	hb := c.heartbeat()
	sent := map[uint64]time.Time{hb.Seq: time.Now()}
	first, _ := json.Marshal(hb)
	dctx, dcancel := context.WithTimeout(sctx, c.o.answerTimeout())
	qs, err := c.o.Dialer.Open(dctx, addr, wire.TypeCtlSession, first)
	dcancel()
	if err != nil {
		c.o.Dialer.Forget(addr)
		return false, err
	}
	defer qs.CancelRead(0)
	defer qs.Close()
	w := wire.NewWriter(qs, 1<<20)
	go w.Run()
	defer w.Close()
	msgs := make(chan *Msg)
	readErr := make(chan error, 1)
	go func() {
		var buf []byte
		r := qs
		for {
			h, p, nb, err := wire.ReadFrame(r, buf)
			buf = nb
			if err == nil && h.Type != wire.TypeCtlMsg {
				err = fmt.Errorf("controller: frame type %d on a session", h.Type)
			}
			var m *Msg
			if err == nil {
				m, err = DecodeMsg(p)
			}
			if err != nil {
				readErr <- err
				return
			}
			select {
			case msgs <- m:
			case <-sctx.Done():
				return
			}
		}
	}()
	t := time.NewTicker(c.o.Heartbeat)
	defer t.Stop()
	answered := time.Now()
	leading := false
	defer func() {
		c.mu.Lock()
		if c.cur == w {
			c.cur = nil
		}
		for id, ch := range c.pending {
			ch <- &Msg{Kind: "result", ID: id, Error: errNoSession.Error()}
			delete(c.pending, id)
		}
		c.mu.Unlock()
	}()
	for {
		select {
		case m := <-msgs:
			switch m.Kind {
			case "state":
				if !m.Leader {
					c.mu.Lock()
					c.info = m.Info
					c.target = m.Redirect
					c.mu.Unlock()
					return m.Redirect != "" && m.Redirect != addr, fmt.Errorf("%s does not lead the controller quorum (leader: %q)", addr, m.Redirect)
				}
				answered = time.Now()
				if !leading {
					leading = true
					c.mu.Lock()
					c.cur = w
					c.sessions++
					c.lastErr = ""
					close(c.joined)
					c.joined = make(chan struct{})
					c.mu.Unlock()
					c.logger.Info("session with the controller", "voter", addr)
				}
				if s, ok := sent[m.Ack]; ok {
					c.lease.Store(int64(s.Sub(c.base) + c.o.Lease()))
					for q := range sent {
						if q <= m.Ack {
							delete(sent, q)
						}
					}
				}
				c.take(m)
			case "result":
				c.mu.Lock()
				if ch := c.pending[m.ID]; ch != nil {
					ch <- m
					delete(c.pending, m.ID)
				}
				c.mu.Unlock()
			}
		case err := <-readErr:
			return false, err
		case <-t.C:
			// No answer for two heartbeats: the voter is gone or cut off;
			// another may lead by now. Its pooled connection may be dead
			// without knowing it yet: the next session dials afresh.
			if time.Since(answered) > c.o.answerTimeout() {
				c.o.Dialer.Forget(addr)
				return false, fmt.Errorf("no answer from %s for %v", addr, time.Since(answered).Round(time.Millisecond))
			}
			hb := c.heartbeat()
			sent[hb.Seq] = time.Now()
			if err := send(w, &Msg{Kind: "heartbeat", Heartbeat: &hb}); err != nil {
				return false, err
			}
		case <-ctx.Done():
			return false, ctx.Err()
		}
	}
}

func (c *Client) heartbeat() Heartbeat {
	hb := c.report()
	hb.Seq = c.seq.Add(1)
	hb.Broker, hb.Addr = c.o.ID, c.o.Addr
	c.mu.Lock()
	hb.Version = c.st.Index
	c.mu.Unlock()
	return hb
}

// take applies a state message.
func (c *Client) take(m *Msg) {
	c.mu.Lock()
	c.info, c.live, c.liveAt, c.waiting = m.Info, m.Live, time.Now(), m.Waiting
	newer := m.State != nil && m.State.Index > c.st.Index
	if newer {
		c.st = m.State
		close(c.changed)
		c.changed = make(chan struct{})
	}
	st := c.st
	c.mu.Unlock()
	if newer && c.onState != nil {
		c.onState(st)
	}
}

// Changed returns a channel closed when a newer state arrives.
func (c *Client) Changed() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.changed
}

// LeaseValid reports whether the controller vouched for this broker's
// session recently enough that it cannot have elected another leader in
// its place (Options.Lease).
func (c *Client) LeaseValid() bool {
	return int64(time.Since(c.base)) < c.lease.Load()
}

// LeaseLeft is how long the lease still runs (negative: lapsed).
func (c *Client) LeaseLeft() time.Duration {
	return time.Duration(c.lease.Load() - int64(time.Since(c.base)))
}

// State is the newest state the controller sent.
func (c *Client) State() *State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.st
}

// View is what the client knows besides the state: the quorum, each
// broker's time since the controller heard it (-1: not live), as of at,
// and the groups that wait for a leader.
func (c *Client) View() (info *Info, live map[string]int64, at time.Time, waiting map[string]string, connected bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.info, c.live, c.liveAt, c.waiting, c.cur != nil
}

// Request sends a request on the current session (waiting for one, while
// ctx lasts: a new controller leader is being found) and waits for its
// result: nil, a *RefusedError, or an error that leaves the outcome
// unknown (the session ended first, or ctx did).
func (c *Client) Request(ctx context.Context, m *Msg) error {
	m.Kind, m.ID = "request", c.nextID.Add(1)
	ch := make(chan *Msg, 1)
	c.mu.Lock()
	for c.cur == nil {
		joined := c.joined
		c.mu.Unlock()
		select {
		case <-joined:
		case <-ctx.Done():
			return fmt.Errorf("%w (%v)", errNoSession, ctx.Err())
		}
		c.mu.Lock()
	}
	w := c.cur
	c.pending[m.ID] = ch
	c.mu.Unlock()
	if err := send(w, m); err != nil {
		c.mu.Lock()
		delete(c.pending, m.ID)
		c.mu.Unlock()
		return err
	}
	select {
	case r := <-ch:
		switch {
		case r.Error == errNoSession.Error():
			return errNoSession
		case r.Error != "":
			return &RefusedError{Msg: r.Error}
		}
		return nil
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.pending, m.ID)
		c.mu.Unlock()
		return ctx.Err()
	}
}
