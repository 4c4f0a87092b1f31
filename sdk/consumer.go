package sdk

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// StartFrom is where a group starts reading a queue it has never committed.
type StartFrom uint8

const (
	Earliest StartFrom = iota // the oldest message still stored (default)
	Latest                    // only messages stored from now on
)

// ConsumerOpt configures a Consumer.
type ConsumerOpt func(*consumerConfig)

type consumerConfig struct {
	start      StartFrom
	startAt    time.Time // WithStartAt
	tags       string    // WithTagFilter ("" or "*": all)
	filter     wire.TagFilter
	autoCommit time.Duration
	heartbeat  time.Duration
	session    time.Duration
	fetchMax   int
	maxWait    time.Duration
	memberID   string

	redeliver       bool // redelivery.go
	maxRedeliveries int
	backoff         []time.Duration
}

// WithStartFrom sets where a queue without a committed offset is read from.
func WithStartFrom(s StartFrom) ConsumerOpt { return func(c *consumerConfig) { c.start = s } }

// WithTagFilter subscribes to the messages whose tags are one of expr's:
// "a || b || c" (exactly one of those tags), or "*" (every message, the
// default). The brokers skip the others in their consume queues: they are
// not read nor sent, and the committed offset passes them with the next
// message handled after them. A batch sent with SendBatch
// is sent whole, and its messages filtered here. The group's redeliveries
// are not filtered (they passed once).
func WithTagFilter(expr string) ConsumerOpt { return func(c *consumerConfig) { c.tags = expr } }

// WithStartAt makes a queue without a committed offset start at its first
// message stored at or after t (its end when there is none).
func WithStartAt(t time.Time) ConsumerOpt { return func(c *consumerConfig) { c.startAt = t } }

// WithAutoCommit commits processed offsets every interval (default 1s), and
// when queues are revoked and at Close. WithManualCommit turns it off.
func WithAutoCommit(every time.Duration) ConsumerOpt {
	return func(c *consumerConfig) { c.autoCommit = every }
}

// WithManualCommit leaves commits to Commit (still made at revocation and
// Close for what Commit marked).
func WithManualCommit() ConsumerOpt { return func(c *consumerConfig) { c.autoCommit = 0 } }

// WithHeartbeat sets the heartbeat interval and the session after which a
// silent member's queues go to others (defaults 1s and 10s).
func WithHeartbeat(every, session time.Duration) ConsumerOpt {
	return func(c *consumerConfig) { c.heartbeat, c.session = every, session }
}

// WithFetchMax bounds the messages one fetch asks for (default 256); the
// consumer buffers at most four fetches' worth ahead of Run or Poll.
func WithFetchMax(n int) ConsumerOpt { return func(c *consumerConfig) { c.fetchMax = n } }

// WithMemberID names the member (default: the client id and a random suffix).
func WithMemberID(id string) ConsumerOpt { return func(c *consumerConfig) { c.memberID = id } }

// Consumer consumes topics as a member of a consumer group: the group's
// members share the topics' queues, each queue consumed by one member at a
// time, and the group's committed offsets say where each queue resumes.
// Delivery is at least once: a message is committed only after it was
// processed (Run's handler returned nil, or Commit was called).
//
// A topic's queues may live in several broker groups: the consumer joins
// the consumer group on each broker group that hosts one of its topics
// (each coordinates its own queues, and keeps their offsets in its log),
// and follows the routes as groups and topics appear. It reads from a
// group's followers while its leader is unreachable.
type Consumer struct {
	cl     *Client
	group  string
	topics []string
	member string
	cfg    consumerConfig

	ctx    context.Context
	cancel context.CancelFunc
	msgs   chan *Message
	wg     sync.WaitGroup
	closed atomic.Bool
	done   chan struct{}         // every broker group was left
	failed atomic.Pointer[error] // why the consumer stopped by itself (fail)

	mu       sync.Mutex
	members  map[string]*membership // by broker group
	lastPoll []*Message

	redo redeliverer // redelivery.go
}

// QueueRef names a queue: its broker group, topic and number in the group.
type QueueRef struct {
	Group string
	Topic string
	Queue uint32
}

// membership is the consumer's membership of its group on one broker
// group, which assigns that broker group's queues.
type membership struct {
	c      *Consumer
	bgroup string
	done   chan struct{} // left
	err    error         // from leaving

	mu       sync.Mutex
	queues   map[wire.QueueRef]*queueState
	commitMu sync.Mutex
	gen      atomic.Uint64
}

// queueState is the consumer's hold on one assigned queue.
type queueState struct {
	m      *membership
	ref    wire.QueueRef
	ctx    context.Context
	cancel context.CancelFunc
	fdone  chan struct{} // the fetcher has stopped

	mu        sync.Mutex
	idle      *sync.Cond
	busy      int  // handlers running on its messages
	revoked   bool // set under mu; later messages are dropped
	done      uint64
	hasDone   bool
	committed uint64
	hasCommit bool
	// Seek: epoch counts the seeks; a message fetched in an earlier one is
	// dropped. seekTo is where the fetcher goes on; cancel ends its fetch.
	epoch       uint64
	seekTo      *uint64
	cancelFetch context.CancelFunc
}

// enter claims m for processing; false if its queue was revoked or
// sought since m was fetched.
func (q *queueState) enter(m *Message) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.revoked || m.epoch != q.epoch {
		return false
	}
	q.busy++
	return true
}

// current reports whether m was fetched in the queue's current epoch (not
// revoked, not sought since).
func (q *queueState) current(m *Message) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return !q.revoked && m.epoch == q.epoch
}

func (q *queueState) exit() {
	q.mu.Lock()
	q.busy--
	if q.busy == 0 {
		q.idle.Broadcast()
	}
	q.mu.Unlock()
}

// markDone marks m processed (nothing if the queue was sought since m was
// fetched).
func (q *queueState) markDone(m *Message) {
	next := m.doneAt()
	q.mu.Lock()
	if m.epoch == q.epoch && (!q.hasDone || next > q.done) {
		q.done, q.hasDone = next, true
	}
	q.mu.Unlock()
}

// NewConsumer joins group as a consumer of topics and starts fetching the
// queues the group assigns to it.
func (cl *Client) NewConsumer(group string, topics []string, opts ...ConsumerOpt) (*Consumer, error) {
	cfg := consumerConfig{autoCommit: time.Second, heartbeat: time.Second, session: 10 * time.Second, fetchMax: 256, maxWait: 5 * time.Second,
		redeliver: true, maxRedeliveries: DefaultMaxRedeliveries, backoff: DefaultBackoff}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validateRedelivery(); err != nil {
		return nil, err
	}
	if cfg.tags != "" {
		f, err := wire.ParseTagFilter(cfg.tags)
		if err != nil {
			return nil, fmt.Errorf("quiver: %w", err)
		}
		cfg.filter = f
	} else {
		cfg.filter.All = true
	}
	if err := wire.ValidName("group", group); err != nil {
		return nil, fmt.Errorf("quiver: %w", err)
	}
	switch {
	case len(topics) == 0:
		return nil, errors.New("quiver: a consumer needs at least one topic")
	case cfg.heartbeat <= 0 || cfg.session < 2*cfg.heartbeat:
		return nil, errors.New("quiver: the session must be at least twice the heartbeat")
	case cfg.fetchMax < 1 || cfg.fetchMax > wire.MaxFetchMessages:
		return nil, fmt.Errorf("quiver: fetch max %d (1..%d)", cfg.fetchMax, wire.MaxFetchMessages)
	}
	if cfg.memberID == "" {
		var r [4]byte
		rand.Read(r[:])
		cfg.memberID = cl.cfg.clientID + "-" + hex.EncodeToString(r[:])
	}
	ctx, cancel := context.WithCancel(cl.ctx)
	topics = slices.Clone(topics)
	if cfg.redeliver && !slices.Contains(topics, wire.RetryTopic(group)) {
		topics = append(topics, wire.RetryTopic(group)) // the group's redeliveries come back to its members
	}
	c := &Consumer{cl: cl, group: group, topics: topics, member: cfg.memberID, cfg: cfg,
		ctx: ctx, cancel: cancel, msgs: make(chan *Message, 4*cfg.fetchMax), done: make(chan struct{}),
		members: map[string]*membership{}}
	if err := cl.track(c); err != nil {
		cancel()
		return nil, err
	}
	c.wg.Add(1)
	go c.watch()
	return c, nil
}

// watch joins the consumer group on every broker group that hosts one of
// the topics, as the routes show them, until the consumer closes.
func (c *Consumer) watch() {
	defer c.wg.Done()
	defer close(c.done)
	warned := false
	for {
		changed := c.cl.router.updated()
		t, err := c.cl.router.routes(c.ctx)
		if err == nil {
			groups := map[string]bool{}
			for _, topic := range c.topics {
				for _, p := range t.partsOf(topic) {
					groups[p.group] = true
				}
			}
			if len(groups) == 0 && !warned {
				warned = true
				c.cl.logger.Warn("consumer subscribed to topics that do not exist; waiting for them", "group", c.group,
					"topics", slices.DeleteFunc(slices.Clone(c.topics), func(t string) bool { return t == wire.RetryTopic(c.group) }))
			}
			c.mu.Lock()
			for g := range groups {
				if c.members[g] == nil && c.ctx.Err() == nil {
					m := &membership{c: c, bgroup: g, done: make(chan struct{}), queues: map[wire.QueueRef]*queueState{}}
					c.members[g] = m
					c.wg.Add(1)
					go m.loop()
				}
			}
			c.mu.Unlock()
		}
		t2 := time.NewTimer(c.cl.cfg.routeRefresh)
		select {
		case <-changed:
		case <-t2.C:
		case <-c.ctx.Done():
			t2.Stop()
			for _, m := range c.memberships() {
				<-m.done
			}
			return
		}
		t2.Stop()
	}
}

func (c *Consumer) memberships() []*membership {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Collect(maps.Values(c.members))
}

// Member is the consumer's member id in its group.
func (c *Consumer) Member() string { return c.member }

// Assigned lists the queues the consumer holds now.
func (c *Consumer) Assigned() []QueueRef {
	var out []QueueRef
	for _, m := range c.memberships() {
		m.mu.Lock()
		for r := range m.queues {
			out = append(out, QueueRef{Group: m.bgroup, Topic: r.Topic, Queue: r.Queue})
		}
		m.mu.Unlock()
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Group != out[j].Group {
			return out[i].Group < out[j].Group
		}
		if out[i].Topic != out[j].Topic {
			return out[i].Topic < out[j].Topic
		}
		return out[i].Queue < out[j].Queue
	})
	return out
}

// Run calls handler for each message, one at a time, in order within each
// queue, until ctx is done (it then returns ctx.Err()), the consumer is
// closed (ErrClosed) or a broker refuses it a right it needs (the
// FORBIDDEN error: the group, or reading a topic; Poll returns it too). A message is marked processed when handler returns
// nil. When it returns an error, the message is set aside for redelivery
// (redelivery.go: it comes back later, after a pause, while the rest of its
// queue goes on; after MaxRedeliveries it goes to the group's dead-letter
// topic) and marked processed once its copy is stored; WithoutRedelivery
// makes Run call handler again with the same message after a growing
// pause instead, holding its queue. Either way nothing is skipped. With
// auto-commit, processed offsets are committed every interval. Run must not
// be called from two goroutines at once, and handler must not call Close.
func (c *Consumer) Run(ctx context.Context, handler func(context.Context, *Message) error) error {
	for {
		// A cancelled ctx wins over a waiting message: no new message is
		// started after it.
		if err := ctx.Err(); err != nil {
			return err
		}
		var m *Message
		select {
		case m = <-c.msgs:
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return c.stopped()
		}
		q := m.lease
		if !q.enter(m) {
			continue // its queue moved to another member, or was sought
		}
		for failures := 0; ; failures++ {
			err := handler(ctx, m)
			if err == nil {
				break
			}
			if c.cfg.redeliver {
				serr := c.setAside(ctx, m, err)
				if serr == nil {
					break // the copy is stored: this one is processed
				}
				err = fmt.Errorf("%w (and setting it aside for redelivery failed: %v)", err, serr)
			}
			pause := min(100*time.Millisecond<<min(failures, 7), 10*time.Second)
			c.cl.logger.Warn("message handler failed; retrying the same message", "group", c.group,
				"topic", m.Topic, "queue", m.Queue, "offset", m.Offset, "failures", failures+1, "err", err, "retry_in", pause)
			t := time.NewTimer(pause)
			select {
			case <-t.C:
			case <-ctx.Done():
				t.Stop()
				q.exit()
				return ctx.Err()
			}
		}
		q.markDone(m)
		q.exit()
	}
}

// Poll returns the messages available now, waiting until there is at least
// one or ctx is done. With auto-commit, the messages of the previous Poll
// count as processed; with WithManualCommit, pass them to Commit.
func (c *Consumer) Poll(ctx context.Context) ([]*Message, error) {
	if c.cfg.autoCommit > 0 {
		for _, m := range c.lastPoll {
			m.lease.markDone(m)
		}
	}
	c.lastPoll = c.lastPoll[:0]
	var out []*Message
	add := func(m *Message) {
		if m.lease.current(m) {
			out = append(out, m)
		}
	}
	for len(out) == 0 {
		select {
		case m := <-c.msgs:
			add(m)
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-c.ctx.Done():
			return nil, c.stopped()
		}
	drain:
		for len(out) < c.cfg.fetchMax {
			select {
			case m := <-c.msgs:
				add(m)
			default:
				break drain
			}
		}
	}
	c.lastPoll = append(c.lastPoll, out...)
	return out, nil
}

// Commit marks msgs processed and commits every processed offset now. A
// message of a queue that moved to another member fails with FENCED.
func (c *Consumer) Commit(ctx context.Context, msgs ...*Message) error {
	for _, m := range msgs {
		if m.lease == nil {
			return errors.New("quiver: Commit of a message that was not received by this consumer")
		}
		m.lease.markDone(m)
	}
	held := map[*queueState]bool{}
	var errs []error
	for _, mb := range c.memberships() {
		qs := mb.held()
		for _, q := range qs {
			held[q] = true
		}
		// Commit what this member still holds; then report what moved.
		if err := mb.commit(ctx, qs); err != nil {
			errs = append(errs, err)
		}
	}
	err := errors.Join(errs...)
	for _, m := range msgs {
		if !held[m.lease] && err == nil {
			err = &wire.Error{Code: wire.CodeFenced, Message: fmt.Sprintf("%s/%d of group %s is no longer assigned to this consumer; its new member re-reads from the last commit",
				m.Topic, m.Queue, m.Group)}
		}
	}
	return err
}

// commit commits the processed offsets of qs that moved since the last commit.
func (m *membership) commit(ctx context.Context, qs []*queueState) error {
	c := m.c
	m.commitMu.Lock()
	defer m.commitMu.Unlock()
	req := wire.Commit{Group: c.group, Member: c.member}
	var sent []*queueState
	var epochs []uint64
	for _, q := range qs {
		q.mu.Lock()
		if q.hasDone && (!q.hasCommit || q.done > q.committed) {
			req.Offsets = append(req.Offsets, wire.OffsetCommit{QueueRef: q.ref, Offset: q.done})
			sent = append(sent, q)
			epochs = append(epochs, q.epoch)
		}
		q.mu.Unlock()
	}
	if len(sent) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	call, err := c.cl.requestGroup(ctx, m.bgroup, streamControl, wire.TypeCommit, req.Append)
	if err != nil {
		return fmt.Errorf("quiver: commit of group %s on broker group %s: %w", c.group, m.bgroup, err)
	}
	call.release()
	for i, q := range sent {
		q.mu.Lock()
		// A Seek while it was on its way: the sought offset is committed next.
		if q.epoch == epochs[i] && (!q.hasCommit || req.Offsets[i].Offset > q.committed) {
			q.committed, q.hasCommit = req.Offsets[i].Offset, true
		}
		q.mu.Unlock()
	}
	return nil
}

// loop heartbeats, applies assignments and commits, then leaves the
// group when the consumer closes.
func (m *membership) loop() {
	c := m.c
	defer c.wg.Done()
	defer close(m.done)
	var commitTick <-chan time.Time
	if c.cfg.autoCommit > 0 {
		t := time.NewTicker(c.cfg.autoCommit)
		defer t.Stop()
		commitTick = t.C
	}
	failures, commitFailures := 0, 0
	for {
		// A new leader of a group in the routes: its coordinator has no
		// memberships yet and waits briefly for members to report what
		// they hold; report at once.
		moved := c.cl.leaderMoved()
		a, err := m.sync(c.ctx, false)
		wait := c.cfg.heartbeat
		if err != nil {
			if forbidden(err) {
				c.fail(err)
			}
			if c.ctx.Err() != nil {
				break
			}
			failures++
			if failures == 1 || failures%10 == 0 {
				c.cl.logger.Warn("consumer group heartbeat failed", "group", c.group, "broker_group", m.bgroup, "member", c.member, "failures", failures, "err", err)
			}
			wait = min(c.cl.cfg.backoff.delay(failures, false), c.cfg.heartbeat)
		} else {
			failures = 0
			if m.apply(a) {
				wait = 0 // report the release at once
			} else if a.Pending {
				wait = min(wait, 100*time.Millisecond)
			}
		}
		t := time.NewTimer(wait)
	waiting:
		for {
			select {
			case <-t.C:
				break waiting
			case <-moved:
				t.Stop()
				break waiting
			case <-commitTick:
				if err := m.commit(c.ctx, m.held()); err != nil && c.ctx.Err() == nil {
					commitFailures++
					if commitFailures == 1 || commitFailures%10 == 0 {
						c.cl.logger.Warn("auto-commit failed", "group", c.group, "broker_group", m.bgroup, "failures", commitFailures, "err", err)
					}
				} else if err == nil {
					commitFailures = 0
				}
			case <-c.ctx.Done():
				t.Stop()
				goto leave
			}
		}
		if c.ctx.Err() != nil {
			break
		}
	}
leave:
	// Stop every queue (waiting for handlers), commit, and leave, on a
	// context of its own: the consumer's is already cancelled.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	qs := m.held()
	for _, q := range qs {
		c.stopQueue(q)
	}
	err := m.commit(ctx, qs)
	if _, lerr := m.sync(ctx, true); lerr != nil && err == nil && !errors.Is(lerr, ErrClosed) {
		err = lerr
	}
	m.err = err
}

func (m *membership) held() []*queueState {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Collect(maps.Values(m.queues))
}

// sync sends the member's GroupSync (a heartbeat, or its leave).
func (m *membership) sync(ctx context.Context, leave bool) (wire.Assignment, error) {
	c := m.c
	req := wire.GroupSync{Group: c.group, Member: c.member, SessionMs: uint32(c.cfg.session.Milliseconds()), Topics: c.topics}
	if leave {
		req.Flags = wire.GroupLeave
	} else {
		m.mu.Lock()
		for r := range m.queues {
			req.Owned = append(req.Owned, r)
		}
		m.mu.Unlock()
	}
	ctx, cancel := context.WithTimeout(ctx, max(c.cfg.heartbeat, 2*time.Second))
	defer cancel()
	call, err := c.cl.requestGroup(ctx, m.bgroup, streamControl, wire.TypeGroupSync, req.Append)
	if err != nil {
		return wire.Assignment{}, err
	}
	defer call.release()
	var a wire.Assignment
	if err := wire.DecodeAssignment(call.resp, &a); err != nil {
		return a, err
	}
	m.gen.Store(a.Generation)
	return a, nil
}

// apply starts the queues newly assigned and stops (and commits) those no
// longer assigned; it reports whether any was released.
func (m *membership) apply(a wire.Assignment) bool {
	c := m.c
	want := make(map[wire.QueueRef]wire.Assigned, len(a.Queues))
	for _, q := range a.Queues {
		want[q.QueueRef] = q
	}
	m.mu.Lock()
	var gone []*queueState
	for r, q := range m.queues {
		if _, ok := want[r]; !ok {
			gone = append(gone, q)
			delete(m.queues, r)
		}
	}
	m.mu.Unlock()
	if len(gone) > 0 {
		for _, q := range gone {
			c.stopQueue(q)
		}
		// Commit what was processed before the new member starts from it.
		// A failed commit only means the new member re-reads those messages.
		if err := m.commit(c.ctx, gone); err != nil && c.ctx.Err() == nil {
			c.cl.logger.Warn("commit at revocation failed; the next member will re-read from the last commit", "group", c.group, "err", err)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c.ctx.Err() != nil {
		return len(gone) > 0
	}
	for r, aq := range want {
		if _, ok := m.queues[r]; ok {
			continue
		}
		q := &queueState{m: m, ref: r, fdone: make(chan struct{})}
		q.idle = sync.NewCond(&q.mu)
		q.ctx, q.cancel = context.WithCancel(c.ctx)
		if aq.Committed != wire.NoOffset {
			q.committed, q.hasCommit = uint64(aq.Committed), true
		}
		m.queues[r] = q
		c.wg.Add(1)
		go c.fetchLoop(q, aq.Committed)
	}
	return len(gone) > 0
}

// stopQueue stops a queue's fetcher and waits for the handlers on its
// messages; its later buffered messages are dropped.
func (c *Consumer) stopQueue(q *queueState) {
	q.cancel()
	<-q.fdone
	q.mu.Lock()
	q.revoked = true
	for q.busy > 0 {
		q.idle.Wait()
	}
	q.mu.Unlock()
}

// fetchLoop long-polls one queue and hands its messages to Run or Poll.
func (c *Consumer) fetchLoop(q *queueState, committed int64) {
	defer c.wg.Done()
	defer close(q.fdone)
	var next uint64
	own := q.ref.Topic == wire.RetryTopic(c.group) // its redeliveries: all of them, whatever the start
	switch {
	case committed != wire.NoOffset:
		next = uint64(committed)
	case own:
	case !c.cfg.startAt.IsZero():
		off, ok := c.startOffset(q, func() (uint64, error) { return c.offsetAt(q) })
		if !ok {
			return
		}
		next = off
	case c.cfg.start == Latest:
		off, ok := c.startOffset(q, func() (uint64, error) {
			h, _, err := c.fetch(q.ctx, q, 0, 1, 0)
			return h.Max, err
		})
		if !ok {
			return
		}
		next = off
	}
	failures := 0
	for q.ctx.Err() == nil {
		q.mu.Lock()
		if q.seekTo != nil {
			next, q.seekTo = *q.seekTo, nil
		}
		epoch := q.epoch
		fctx, cancel := context.WithCancel(q.ctx)
		q.cancelFetch = cancel
		q.mu.Unlock()
		h, recs, err := c.fetch(fctx, q, next, c.cfg.fetchMax, c.cfg.maxWait)
		cancel()
		q.mu.Lock()
		sought := q.epoch != epoch
		q.mu.Unlock()
		if sought {
			continue // what it fetched is from before the seek
		}
		if err != nil {
			var be *wire.Error
			if errors.As(err, &be) && be.Code == wire.CodeOffsetOutOfRange {
				// The queue ends before our offset (the broker lost data, or
				// another log was promoted, or a seek went past it): resume
				// at its end.
				h, _, berr := c.fetch(q.ctx, q, 0, 1, 0)
				if berr == nil {
					c.cl.logger.Error("committed offset is past the end of the queue; resuming at the end",
						"group", c.group, "topic", q.ref.Topic, "queue", q.ref.Queue, "offset", next, "end", h.Max)
					next = h.Max
					continue
				}
				err = berr
			}
			if forbidden(err) {
				c.fail(err)
				return
			}
			failures++
			if !c.pause(q, &err) {
				return
			}
			continue
		}
		failures = 0
		if len(recs) == 0 && h.Next > next {
			if committed != wire.NoOffset || next > 0 {
				c.cl.logger.Warn("messages were removed (by retention, or with their topic's deletion) before this group read them",
					"group", c.group, "topic", q.ref.Topic, "queue", q.ref.Queue, "from", next, "to", h.Next)
			}
		}
		var out []*Message
		for i := range recs {
			out, err = unpack(out[:0], q.ref.Topic, q.ref.Queue, &recs[i], next)
			if err != nil {
				c.cl.logger.Error("skipping a record that does not decode", "topic", q.ref.Topic, "queue", q.ref.Queue,
					"offset", recs[i].Offset, "err", err)
			}
			for _, m := range out {
				m.lease, m.Group, m.epoch = q, q.m.bgroup, epoch
				if recs[i].Flags&wire.FlagBatch != 0 && c.filters(q) && !c.cfg.filter.Match(m.Tags) {
					continue // filtered out of its batch
				}
				if !q.current(m) {
					break // sought meanwhile: the rest is dropped too
				}
				if own {
					if due, ok := restore(m); ok && !c.waitDue(q, due) {
						return
					}
				}
				select {
				case c.msgs <- m:
				case <-q.ctx.Done():
					return
				}
			}
			next = max(next, recs[i].Offset+uint64(recs[i].Count))
		}
		next = max(next, h.Next)
	}
}

// waitDue holds a redelivered message until it is due (at most the longest
// pause: clocks differ); false if the queue was stopped meanwhile. Only
// its queue of the redelivery topic waits: one queue per pause.
func (c *Consumer) waitDue(q *queueState, due time.Time) bool {
	wait := time.Until(due)
	if wait <= 0 {
		return true
	}
	return sleep(q, min(wait, slices.Max(c.cfg.backoff)))
}

// sleep waits d; false when q was stopped meanwhile.
func sleep(q *queueState, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-q.ctx.Done():
		return false
	}
}

// startOffset calls get until it answers; false once the queue or the
// consumer stopped (a FORBIDDEN answer stops the consumer).
func (c *Consumer) startOffset(q *queueState, get func() (uint64, error)) (uint64, bool) {
	for {
		off, err := get()
		if err == nil {
			return off, true
		}
		if forbidden(err) {
			c.fail(err)
			return 0, false
		}
		if !c.pause(q, &err) {
			return 0, false
		}
	}
}

// offsetAt asks q's broker group for q's first offset stored at or after
// the consumer's start time.
func (c *Consumer) offsetAt(q *queueState) (uint64, error) {
	ctx, cancel := context.WithTimeout(q.ctx, 10*time.Second)
	defer cancel()
	req := wire.Offsets{Topic: q.ref.Topic, At: c.cfg.startAt.UnixNano()}
	resp, err := c.cl.Admin().offsetsCall(ctx, q.m.bgroup, wire.TypeOffsets, req.Append)
	if err != nil {
		return 0, err
	}
	for _, qo := range resp.Queues {
		if qo.Queue == q.ref.Queue {
			return qo.AtOffset, nil
		}
	}
	return 0, fmt.Errorf("quiver: broker group %s has no queue %s/%d", q.m.bgroup, q.ref.Topic, q.ref.Queue)
}

// fail stops the consumer for good: err is a refusal that retrying cannot
// change (the principal lacks a right: FORBIDDEN). Run and Poll return it.
func (c *Consumer) fail(err error) {
	if c.failed.CompareAndSwap(nil, &err) {
		c.cl.logger.Warn("consumer stopped: the broker refuses it a right (Run and Poll return the error)", "group", c.group, "member", c.member, "err", err)
		c.cancel()
	}
}

// stopped is what Run and Poll return once the consumer has stopped.
func (c *Consumer) stopped() error {
	if err := c.failed.Load(); err != nil {
		return *err
	}
	return ErrClosed
}

// forbidden reports a refusal for a right the principal lacks.
func forbidden(err error) bool {
	var we *wire.Error
	return errors.As(err, &we) && we.Code == wire.CodeForbidden
}

// pause waits after a failed fetch; false when the queue was stopped.
func (c *Consumer) pause(q *queueState, err *error) bool {
	return q.ctx.Err() == nil && sleep(q, min(200*time.Millisecond, c.cfg.maxWait))
}

// Seek moves the consumer's position in one of the queues it holds (ref:
// as Assigned lists them) to offset: the messages fetched before are
// dropped (a handler already running finishes, and is not marked
// processed), the next ones are read from offset, and the next commit
// commits offset, backwards too. An offset past the queue's end resumes at
// the end; one before its start, at the start. It fails for a queue the
// consumer does not hold (see Assigned; queues move between members).
func (c *Consumer) Seek(ref QueueRef, offset uint64) error {
	c.mu.Lock()
	m := c.members[ref.Group]
	c.mu.Unlock()
	var q *queueState
	if m != nil {
		m.mu.Lock()
		q = m.queues[wire.QueueRef{Topic: ref.Topic, Queue: ref.Queue}]
		m.mu.Unlock()
	}
	if q == nil {
		return fmt.Errorf("quiver: %s/%d of broker group %s is not assigned to this consumer", ref.Topic, ref.Queue, ref.Group)
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.revoked {
		return fmt.Errorf("quiver: %s/%d of broker group %s moved to another member", ref.Topic, ref.Queue, ref.Group)
	}
	q.epoch++
	q.seekTo = &offset
	q.done, q.hasDone = offset, true
	q.hasCommit = false // commit it even if it is behind the last commit
	if q.cancelFetch != nil {
		q.cancelFetch()
	}
	return nil
}

// filters reports whether q's messages are filtered by tags.
func (c *Consumer) filters(q *queueState) bool {
	return !c.cfg.filter.All && q.ref.Topic != wire.RetryTopic(c.group)
}

// fetch asks for up to n messages from offset, waiting up to wait.
func (c *Consumer) fetch(ctx context.Context, q *queueState, offset uint64, n int, wait time.Duration) (wire.FetchHeader, []wire.FetchedMessage, error) {
	ctx, cancel := context.WithTimeout(ctx, wait+5*time.Second)
	defer cancel()
	req := wire.FetchTags{Fetch: wire.Fetch{Topic: q.ref.Topic, Queue: q.ref.Queue, Offset: offset, MaxMessages: uint32(n), MaxBytes: 4 << 20,
		MaxWaitMs: uint32(wait.Milliseconds())}, Expr: c.cfg.tags}
	typ, payload := wire.TypeFetch, req.Fetch.Append
	if c.filters(q) {
		typ, payload = wire.TypeFetchTags, req.Append
	}
	call, err := c.cl.requestGroup(ctx, q.m.bgroup, streamFetch, typ, payload)
	if err != nil {
		return wire.FetchHeader{}, nil, err
	}
	// The messages alias the response, which must outlive the call.
	resp := append([]byte(nil), call.resp...)
	call.release()
	h, recs, err := wire.DecodeFetchResp(resp, nil)
	return h, recs, err
}

// Close stops fetching, waits for running handlers, commits what was
// processed (with auto-commit, the messages of the last Poll count as
// processed), leaves the group (its queues go to other members at once) and
// stops every goroutine of the consumer.
func (c *Consumer) Close() error {
	if c.closed.Swap(true) {
		return ErrClosed
	}
	if c.cfg.autoCommit > 0 {
		// With auto-commit, what the last Poll returned counts as processed.
		for _, m := range c.lastPoll {
			m.lease.markDone(m)
		}
	}
	c.cancel()
	<-c.done
	c.wg.Wait()
	c.closeRedelivery()
	c.cl.untrack(c)
	var errs []error
	for _, m := range c.memberships() {
		if m.err != nil {
			errs = append(errs, fmt.Errorf("broker group %s: %w", m.bgroup, m.err))
		}
	}
	return errors.Join(errs...)
}
