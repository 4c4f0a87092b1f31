package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/quivermq/quiver/internal/quicerr"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

// LeaderOptions configure a Leader.
type LeaderOptions struct {
	ID     string // this broker's id
	Epochs *Epochs
	// Log returns the broker's log (it may be reopened).
	Log func() *qlog.Log
	// MinInsync is how many followers of the in-sync set a send needs.
	MinInsync int
	// ISR and ISRVersion are the committed in-sync set (followers only)
	// the leadership starts with (the controller's; SetISR updates it).
	ISR        []string
	ISRVersion uint64
	// Propose hands a change of the in-sync set to whoever commits it
	// (the controller), which answers with SetISR. It must not block. Nil:
	// there is no controller (a group run by hand), and changes commit at
	// once.
	Propose func(*Proposal)
	// Timeout drops a follower that sent no ack for this long
	// (DefaultTimeout).
	Timeout time.Duration
	// Heartbeat is how long the leader stays silent before it sends a
	// heartbeat (DefaultHeartbeat).
	Heartbeat time.Duration
	// InsyncLag: a follower leaves the in-sync set when it has not had
	// everything the leader had for this long (DefaultInsyncLag).
	InsyncLag time.Duration
	// ChunkBytes bounds the records of one ReplData (DefaultChunkBytes).
	ChunkBytes int
	// CatchupRate bounds, in bytes per second over all followers, what is
	// sent to followers that are behind by more than a chunk, so that a
	// follower catching up from disk does not take the CPU and disk that
	// producers need. Followers at the tail are never held back. 0: no
	// limit.
	CatchupRate int64
	Logger      *slog.Logger
	// Now is the clock (default time.Now).
	Now func() time.Time
}

func (o *LeaderOptions) ensureDefaults() {
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.InsyncLag == 0 {
		o.InsyncLag = DefaultInsyncLag
	}
	if o.ChunkBytes == 0 {
		o.ChunkBytes = DefaultChunkBytes
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Leader serves the log to followers and tracks what each has. The
// Tracker decides what to acknowledge and when the in-sync set should
// change; the Leader feeds it the sessions' events under mu, and one
// goroutine (run) steps it at its next deadline.
type Leader struct {
	opts   LeaderOptions
	logger *slog.Logger
	epoch  uint64

	mu        sync.Mutex
	tr        *Tracker
	followers map[string]*follower
	closed    error // set by Close: later waits fail at once

	kick    chan struct{} // the tracker's next deadline may have moved
	catchup *rate.Limiter // nil: CatchupRate 0
	stop    chan struct{}
	wg      sync.WaitGroup
}

// follower is the leader's record of one follower's sessions; what it
// has is the tracker's.
type follower struct {
	id string

	mu         sync.Mutex
	addr       string
	session    *session // the live one, or nil
	sessions   int64
	lastClose  string
	lastBy     string
	lastCloseT time.Time

	lastHeard atomic.Int64 // unix ns of its last ack
}

// ErrLeaderStopping fails the sends still waiting when a leader stops
// (it was fenced, or the broker stops): none is acknowledged without its
// followers.
var ErrLeaderStopping = errors.New("replica: leader stopping")

// NewLeader returns the Leader of the newest epoch in o.Epochs, which
// begins at the log's current end.
func NewLeader(o LeaderOptions) *Leader {
	o.ensureDefaults()
	l := &Leader{opts: o, logger: o.Logger.With("component", "replica-leader"), followers: map[string]*follower{},
		kick: make(chan struct{}, 1), stop: make(chan struct{})}
	l.epoch = o.Epochs.Last().Epoch
	l.tr = NewTracker(o.MinInsync, o.InsyncLag, o.ISR, o.ISRVersion, o.Log().Positions().Written, o.Now())
	if o.CatchupRate > 0 {
		l.catchup = rate.NewLimiter(rate.Limit(o.CatchupRate), max(o.ChunkBytes, int(min(o.CatchupRate/10, 1<<30))))
	}
	l.wg.Add(1)
	go l.run()
	return l
}

// Epoch is the leader's epoch.
func (l *Leader) Epoch() uint64 { return l.epoch }

// Close stops the leader: waiting sends fail, and so do later ones;
// sessions end.
func (l *Leader) Close() {
	select {
	case <-l.stop:
		return
	default:
	}
	close(l.stop)
	l.wg.Wait()
	l.mu.Lock()
	l.closed = ErrLeaderStopping
	failed := l.tr.FailAll(ErrLeaderStopping)
	for _, f := range l.followers {
		f.mu.Lock()
		if s := f.session; s != nil {
			s.end("leader", "the leader is stopping")
		}
		f.mu.Unlock()
	}
	l.mu.Unlock()
	for _, w := range failed {
		w.done(w.err)
	}
}

// run steps the tracker at its next deadline (a send's, a member's lag,
// a proposal's retry), re-armed whenever an event may have moved it.
func (l *Leader) run() {
	defer l.wg.Done()
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		l.mu.Lock()
		next := l.tr.NextDeadline()
		l.mu.Unlock()
		t.Stop()
		if !next.IsZero() {
			t.Reset(max(next.Sub(l.opts.Now()), 0))
		}
		select {
		case <-t.C:
			l.step()
		case <-l.kick:
		case <-l.stop:
			return
		}
	}
}

func (l *Leader) poke() {
	select {
	case l.kick <- struct{}{}:
	default:
	}
}

// step settles what the tracker can settle now.
func (l *Leader) step() {
	l.mu.Lock()
	done, p := l.tr.Step(l.opts.Now())
	l.mu.Unlock()
	l.settle(done, p)
}

// settle answers the sends the tracker released and hands out its
// proposal (committing it here when there is no controller).
func (l *Leader) settle(done []*waiter, p *Proposal) {
	for _, w := range done {
		w.done(w.err)
	}
	if p == nil {
		return
	}
	if l.opts.Propose != nil {
		l.opts.Propose(p)
		l.poke()
		return
	}
	l.logger.Info("in-sync set changed", "change", p.String())
	l.SetISR(p.ISR, p.Base+1)
}

// SetISR takes a committed in-sync set (the controller's) at version.
func (l *Leader) SetISR(isr []string, version uint64) {
	l.mu.Lock()
	l.tr.Commit(isr, version)
	done, p := l.tr.Step(l.opts.Now())
	l.mu.Unlock()
	l.poke()
	l.settle(done, p)
}

// Refused takes the controller's refusal of p: its followers stop
// counting for acknowledgements (they were never committed).
func (l *Leader) Refused(p *Proposal) {
	l.mu.Lock()
	l.tr.Refuse(p, l.opts.Now())
	done, np := l.tr.Step(l.opts.Now())
	l.mu.Unlock()
	l.poke()
	l.settle(done, np)
}

// ISR is the committed in-sync set and its version, and the proposal
// waiting for the controller (nil: none).
func (l *Leader) ISR() ([]string, uint64, *Proposal) {
	l.mu.Lock()
	defer l.mu.Unlock()
	isr, v := l.tr.ISR()
	var p *Proposal
	if pp := l.tr.Pending(); pp != nil {
		c := *pp
		p = &c
	}
	return isr, v, p
}

// Admit refuses a send (ErrNotEnoughReplicas) while the committed
// in-sync set has fewer than min-insync followers: nothing is written,
// the client retries elsewhere.
func (l *Leader) Admit() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed != nil {
		return l.closed
	}
	return l.tr.Admit()
}

// Notify wakes the sessions: the log has new readable records. It runs on
// the log's commit path and does not block.
func (l *Leader) Notify() {
	l.mu.Lock()
	for _, f := range l.followers {
		f.mu.Lock()
		if s := f.session; s != nil {
			select {
			case s.wake <- struct{}{}:
			default:
			}
		}
		f.mu.Unlock()
	}
	l.mu.Unlock()
}

// ErrStale is returned to a follower (and by Serve) when the follower knows
// a newer epoch than this leader: this leader has been replaced.
var ErrStale = errors.New("replica: a newer epoch exists; this broker no longer leads")

// Conn is what a replication session needs of its stream.
type Conn interface {
	// Begin/End write one frame (see wire.Writer).
	Begin(h wire.Header) ([]byte, int)
	End(b []byte, start int) error
	WaitRoom(ctx context.Context) error
	// Close ends the connection, telling the peer why.
	Close(reason string)
}

// session is one live replication stream to a follower.
type session struct {
	f    *follower
	wake chan struct{}
	done chan struct{}
	once sync.Once
	conn Conn
	// marks: (end, at) for data sent and not yet acked that reached the
	// leader's visible end as of at: once end is acked the follower had
	// everything the leader had at that time.
	marks []mark
	mu    sync.Mutex
	why   string
	by    string
}

type mark struct {
	end int64
	at  int64
}

func (s *session) end(by, why string) {
	s.once.Do(func() {
		s.mu.Lock()
		s.by, s.why = by, why
		s.mu.Unlock()
		close(s.done)
	})
}

// Serve runs one replication stream: the follower's ReplStart was start;
// frames from the follower are read with read (ReplAck frames; io.EOF or a
// network error when the stream ends). It returns when the session ends,
// having logged who ended it and why.
func (l *Leader) Serve(ctx context.Context, addr string, start *wire.ReplStart, read func() (wire.Header, []byte, error), c Conn) error {
	lg := l.opts.Log()
	p := lg.Positions()
	end := lg.Replicable()
	hello := wire.ReplHello{Leader: l.opts.ID, Epoch: l.epoch, Epochs: l.opts.Epochs.All(), TruncateTo: wire.NoTruncate,
		TimeoutMs: uint32(l.opts.Timeout.Milliseconds()), HeartbeatMs: uint32(l.opts.Heartbeat.Milliseconds())}
	endOf, known := l.opts.Epochs.EndOf(start.LastEpoch, end)
	switch {
	case start.SegmentSize != lg.SegmentSize():
		return l.refuse(c, start, fmt.Errorf("segment size %d, the leader's is %d: configure the same on both", start.SegmentSize, lg.SegmentSize()))
	case start.LastEpoch > hello.Epoch || !known:
		l.logger.Error("a follower knows a newer epoch than this leader's: this broker must not take writes", "follower", start.Follower,
			"follower_epoch", start.LastEpoch, "epoch", hello.Epoch)
		return l.refuse(c, start, fmt.Errorf("%w: the follower has epoch %d, this leader %d", ErrStale, start.LastEpoch, hello.Epoch))
	case start.End < p.Start:
		return l.refuse(c, start, fmt.Errorf("the follower's log ends at %d, before the leader's starts (%d): re-seed it from an empty data directory", start.End, p.Start))
	}
	limit := min(endOf, end)
	hello.From = min(start.End, limit)
	if start.End > limit {
		hello.TruncateTo = limit
	}
	b, st := c.Begin(wire.Header{Type: wire.TypeReplHello})
	if err := c.End(hello.Append(b), st); err != nil {
		return err
	}
	if hello.TruncateTo != wire.NoTruncate {
		l.logger.Warn("follower's log diverged from the leader's: it truncates before following", "follower", start.Follower,
			"follower_end", start.End, "truncate_to", hello.TruncateTo, "follower_epoch", start.LastEpoch)
		return nil
	}

	f := l.follower(start.Follower)
	s := &session{f: f, wake: make(chan struct{}, 1), done: make(chan struct{}), conn: c}
	f.mu.Lock()
	if old := f.session; old != nil {
		old.end("leader", "replaced by a newer session of the same follower")
	}
	f.session = s
	f.sessions++
	f.addr = addr
	f.mu.Unlock()
	now := l.opts.Now()
	// What the follower has durable: never more than its log's end, which
	// it reports written, not synced (a reconnect must not count as acks).
	l.mu.Lock()
	l.tr.Connected(start.Follower, start.End, now)
	l.mu.Unlock()
	f.lastHeard.Store(now.UnixNano())
	l.logger.Info("follower connected", "follower", start.Follower, "addr", addr, "from", hello.From, "leader_end", end)

	readErr := make(chan error, 1)
	go func() { readErr <- l.readAcks(s, read) }()
	err := l.send(ctx, s, hello.From, readErr)

	s.mu.Lock()
	by, why := s.by, s.why
	s.mu.Unlock()
	f.mu.Lock()
	current := f.session == s
	if current {
		f.session = nil
	}
	f.lastClose, f.lastBy, f.lastCloseT = why, by, l.opts.Now()
	f.mu.Unlock()
	if current {
		l.mu.Lock()
		l.tr.Disconnected(f.id, l.opts.Now())
		l.mu.Unlock()
		l.poke()
	}
	if by == "leader" {
		c.Close(why)
		l.logger.Warn("replication: closed by the leader (this side)", "follower", f.id, "reason", why)
	} else {
		l.logger.Warn("replication: the follower closed the stream", "follower", f.id, "seen", why)
	}
	return err
}

func (l *Leader) refuse(c Conn, start *wire.ReplStart, err error) error {
	b, st := c.Begin(wire.Header{Type: wire.TypeError})
	c.End(wire.AppendError(b, &wire.Error{Code: wire.CodeInvalid, Message: err.Error()}), st)
	l.logger.Warn("replication refused", "follower", start.Follower, "reason", err)
	c.Close(err.Error())
	return err
}

func (l *Leader) follower(id string) *follower {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.followers[id]
	if f == nil {
		f = &follower{id: id}
		l.followers[id] = f
	}
	return f
}

// readAcks reads the follower's acks until the stream ends.
func (l *Leader) readAcks(s *session, read func() (wire.Header, []byte, error)) error {
	for {
		h, p, err := read()
		if err != nil {
			s.end("follower", quicerr.CloseReason(err))
			return err
		}
		if h.Type != wire.TypeReplAck {
			why := fmt.Sprintf("unexpected frame type %d on a replication stream", h.Type)
			s.end("leader", why)
			return errors.New(why)
		}
		var a wire.ReplAck
		if err := wire.DecodeReplAck(p, &a); err != nil {
			s.end("leader", err.Error())
			return err
		}
		if a.Epoch != l.epoch {
			why := fmt.Sprintf("an ack of epoch %d on a session of epoch %d", a.Epoch, l.epoch)
			s.end("leader", why)
			return errors.New(why)
		}
		l.acked(s, a)
	}
}

// acked records an ack: what the follower has, when it was heard, and
// whether it has caught up with what was sent; then settles what that
// allows.
func (l *Leader) acked(s *session, a wire.ReplAck) {
	f := s.f
	now := l.opts.Now()
	f.lastHeard.Store(now.UnixNano())
	s.mu.Lock()
	var caught int64
	i := 0
	for ; i < len(s.marks) && s.marks[i].end <= a.Durable; i++ {
		caught = s.marks[i].at
	}
	s.marks = s.marks[:copy(s.marks, s.marks[i:])]
	if len(s.marks) == 0 && a.Durable >= l.opts.Log().Replicable() {
		caught = now.UnixNano() // it has everything: caught up now, not when the data went out
	}
	s.mu.Unlock()
	l.mu.Lock()
	l.tr.Acked(f.id, a.Durable)
	if caught > 0 {
		l.tr.CaughtUp(f.id, time.Unix(0, caught))
	}
	done, p := l.tr.Step(now)
	l.mu.Unlock()
	l.settle(done, p)
}

// send streams records from pos until the session ends.
func (l *Leader) send(ctx context.Context, s *session, pos int64, readErr chan error) error {
	var buf []byte
	lastSent := l.opts.Now()
	hb := time.NewTimer(l.opts.Heartbeat)
	defer hb.Stop()
	watch := time.NewTicker(max(l.opts.Timeout/10, 10*time.Millisecond))
	defer watch.Stop()
	epoch := l.epoch
	for {
		select {
		case <-s.done:
			return nil
		default:
		}
		lg := l.opts.Log()
		asOf, visible := l.opts.Now().UnixNano(), lg.Replicable()
		var next int64
		var err error
		buf, next, err = lg.ReadChunk(pos, l.opts.ChunkBytes, buf)
		if err != nil {
			s.end("leader", "reading the log: "+err.Error())
			return err
		}
		if len(buf) > 0 || next != pos {
			if err := s.conn.WaitRoom(ctx); err != nil {
				s.end("leader", "the connection is closing: "+err.Error())
				return err
			}
			if next >= visible {
				visible = lg.Replicable()
			} else {
				asOf = 0 // behind: this chunk does not bring it up to date
				if !l.atTail(s.f.id) && !l.pace(ctx, s, len(buf)) {
					return nil
				}
			}
			if err := l.sendData(s, epoch, pos, next, visible, asOf, buf); err != nil {
				s.end("leader", "writing to the follower: "+err.Error())
				return err
			}
			pos = next
			lastSent = l.opts.Now()
			continue
		}
		if !hb.Stop() {
			select {
			case <-hb.C:
			default:
			}
		}
		hb.Reset(max(l.opts.Heartbeat-l.opts.Now().Sub(lastSent), 0))
		select {
		case <-s.wake:
		case <-hb.C:
			if err := l.sendData(s, epoch, pos, pos, lg.Replicable(), 0, nil); err != nil {
				s.end("leader", "writing to the follower: "+err.Error())
				return err
			}
			lastSent = l.opts.Now()
		case <-watch.C:
			silent := l.opts.Now().Sub(time.Unix(0, s.f.lastHeard.Load()))
			if silent > l.opts.Timeout {
				s.end("leader", fmt.Sprintf("no ack from the follower for %v (timeout %v)", silent.Round(time.Millisecond), l.opts.Timeout))
				return nil
			}
		case <-readErr:
			return nil // readAcks ended the session
		case <-ctx.Done():
			s.end("leader", "the broker is stopping")
			return nil
		case <-l.stop:
			s.end("leader", "the leader is stopping")
			return nil
		}
	}
}

// sendData sends records [pos, next). asOf, when not 0, is a time at which
// next was at or past the leader's visible end: once the follower acks
// next, it had everything the leader had then.
func (l *Leader) sendData(s *session, epoch uint64, pos, next, visible, asOf int64, recs []byte) error {
	m := wire.ReplData{Epoch: epoch, Pos: pos, Next: next, Visible: visible, Records: recs}
	b, st := s.conn.Begin(wire.Header{Type: wire.TypeReplData})
	if err := s.conn.End(append(wire.AppendReplDataHeader(b, &m), recs...), st); err != nil {
		return err
	}
	if len(recs) > 0 && asOf != 0 {
		s.mu.Lock()
		if len(s.marks) < 100000 {
			s.marks = append(s.marks, mark{end: next, at: asOf})
		}
		s.mu.Unlock()
	}
	return nil
}

// pace waits until n more catch-up bytes fit in CatchupRate. It reports
// false, having ended the session, when the session, the leader or the
// broker ended meanwhile.
func (l *Leader) pace(ctx context.Context, s *session, n int) bool {
	if l.catchup == nil {
		return true
	}
	r := l.catchup.ReserveN(l.opts.Now(), min(n, l.catchup.Burst()))
	d := r.DelayFrom(l.opts.Now())
	if d == 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-s.done:
	case <-ctx.Done():
		s.end("leader", "the broker is stopping")
	case <-l.stop:
		s.end("leader", "the leader is stopping")
	}
	r.Cancel()
	return false
}

// atTail reports whether the follower had everything the leader had
// within the lag, or is in the in-sync set: its frames are never paced.
func (l *Leader) atTail(id string) bool {
	now := l.opts.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.tr.follower(id)
	return slices.Contains(l.tr.isr, id) || (!f.caughtUp.IsZero() && now.Sub(f.caughtUp) <= l.opts.InsyncLag)
}

// InSync is the number of followers in the committed in-sync set.
func (l *Leader) InSync() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.tr.isr)
}

// WaitAcks calls done once every follower of the in-sync set (committed
// and proposed) has the log durable up to end and the committed set holds
// min-insync followers, or with ErrNotEnoughReplicas when that has not
// happened by deadline, or ErrLeaderStopping once the leader stops. done
// runs on a goroutine of the leader or the caller and must not block.
func (l *Leader) WaitAcks(end int64, deadline time.Time, done func(error)) {
	l.mu.Lock()
	if err := l.closed; err != nil {
		l.mu.Unlock()
		done(err)
		return
	}
	l.tr.Wait(end, deadline, done)
	first := len(l.tr.waiters) == 1
	w, p := l.tr.Step(l.opts.Now()) // the followers may have it already
	l.mu.Unlock()
	if first {
		l.poke()
	}
	l.settle(w, p)
}

// Status is the leader's view of its followers.
func (l *Leader) Status() []wire.ReplicaStatus {
	now := l.opts.Now()
	visible := l.opts.Log().Replicable()
	l.mu.Lock()
	states := l.tr.Followers()
	fs := make(map[string]*follower, len(l.followers))
	for id, f := range l.followers {
		fs[id] = f
	}
	l.mu.Unlock()
	out := make([]wire.ReplicaStatus, 0, len(states))
	for _, ts := range states {
		st := wire.ReplicaStatus{ID: ts.ID, Acked: ts.Acked, InSync: ts.InISR, Proposed: ts.Proposed, Leaving: ts.Leaving}
		if f := fs[ts.ID]; f != nil {
			f.mu.Lock()
			st.Addr, st.Connected, st.Sessions, st.Reconnects = f.addr, f.session != nil, f.sessions, max(f.sessions-1, 0)
			st.LastClose, st.LastCloseBy = f.lastClose, f.lastBy
			if !f.lastCloseT.IsZero() {
				st.LastCloseAgo = now.Sub(f.lastCloseT).Milliseconds()
			}
			f.mu.Unlock()
			if h := f.lastHeard.Load(); h > 0 {
				st.LastAckMs = now.Sub(time.Unix(0, h)).Milliseconds()
			}
		}
		st.LagBytes = max(visible-st.Acked, 0)
		switch {
		case st.LagBytes == 0:
		case ts.CaughtUp.IsZero():
			st.LagMs = -1 // it never had everything the leader had
		default:
			st.LagMs = now.Sub(ts.CaughtUp).Milliseconds()
		}
		out = append(out, st)
	}
	return out
}
