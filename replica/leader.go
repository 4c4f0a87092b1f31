package replica

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
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
	// Timeout drops a follower that sent no ack for this long (default 10s).
	Timeout time.Duration
	// Heartbeat is how long the leader stays silent before it sends a
	// heartbeat (default 1s).
	Heartbeat time.Duration
	// InsyncLag: a follower is in sync while it had, this recently,
	// everything the leader had (default 5s).
	InsyncLag time.Duration
	// ChunkBytes bounds the records of one ReplData (default 256 KiB).
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
		o.Timeout = 10 * time.Second
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = time.Second
	}
	if o.InsyncLag == 0 {
		o.InsyncLag = 5 * time.Second
	}
	if o.ChunkBytes == 0 {
		o.ChunkBytes = 256 << 10
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Leader serves the log to followers and tracks what each has.
type Leader struct {
	opts   LeaderOptions
	logger *slog.Logger
	epoch  atomic.Uint64

	mu        sync.Mutex
	followers map[string]*follower

	waiters waitQueue
	catchup *rate.Limiter // nil: CatchupRate 0
	stop    chan struct{}
	wg      sync.WaitGroup
}

// follower is the leader's record of one follower, across its sessions.
type follower struct {
	id string

	mu         sync.Mutex
	addr       string
	session    *session // the live one, or nil
	sessions   int64
	lastClose  string
	lastBy     string
	lastCloseT time.Time

	acked      atomic.Int64 // durable on the follower
	lastHeard  atomic.Int64 // unix ns of its last ack
	caughtUpAt atomic.Int64 // unix ns when it last had everything the leader had
}

// NewLeader returns a Leader for epoch (its own, already in Epochs).
func NewLeader(o LeaderOptions) *Leader {
	o.ensureDefaults()
	l := &Leader{opts: o, logger: o.Logger.With("component", "replica-leader"), followers: map[string]*follower{}, stop: make(chan struct{})}
	l.epoch.Store(o.Epochs.Last().Epoch)
	if o.CatchupRate > 0 {
		l.catchup = rate.NewLimiter(rate.Limit(o.CatchupRate), max(o.ChunkBytes, int(min(o.CatchupRate/10, 1<<30))))
	}
	l.wg.Add(1)
	go l.expireWaiters()
	return l
}

// Epoch is the leader's epoch.
func (l *Leader) Epoch() uint64 { return l.epoch.Load() }

// Close stops the leader: waiting sends fail, sessions end.
func (l *Leader) Close() {
	select {
	case <-l.stop:
		return
	default:
	}
	close(l.stop)
	l.wg.Wait()
	l.waiters.failAll(errors.New("replica: leader stopping"))
	l.mu.Lock()
	for _, f := range l.followers {
		f.mu.Lock()
		if s := f.session; s != nil {
			s.end("leader", "the leader is stopping")
		}
		f.mu.Unlock()
	}
	l.mu.Unlock()
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
	hello := wire.ReplHello{Leader: l.opts.ID, Epoch: l.epoch.Load(), Epochs: l.opts.Epochs.All(), TruncateTo: wire.NoTruncate,
		TimeoutMs: uint32(l.opts.Timeout.Milliseconds()), HeartbeatMs: uint32(l.opts.Heartbeat.Milliseconds())}
	endOf, known := l.opts.Epochs.EndOf(start.LastEpoch, p.Dispatched)
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
	limit := min(endOf, p.Dispatched)
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
	now := l.opts.Now().UnixNano()
	// What the follower has durable: never more than its log's end, which
	// it reports written, not synced (a reconnect must not count as acks).
	f.acked.Store(min(start.End, f.acked.Load()))
	f.lastHeard.Store(now)
	l.logger.Info("follower connected", "follower", start.Follower, "addr", addr, "from", hello.From, "leader_end", p.Dispatched)

	readErr := make(chan error, 1)
	go func() { readErr <- l.readAcks(s, read) }()
	err := l.send(ctx, s, hello.From, readErr)

	s.mu.Lock()
	by, why := s.by, s.why
	s.mu.Unlock()
	f.mu.Lock()
	if f.session == s {
		f.session = nil
	}
	f.lastClose, f.lastBy, f.lastCloseT = why, by, l.opts.Now()
	f.mu.Unlock()
	if by == "leader" {
		c.Close(why)
		l.logger.Warn("replication: closed by the leader (this side)", "follower", f.id, "reason", why)
	} else {
		l.logger.Warn("replication: the follower closed the stream", "follower", f.id, "seen", why)
	}
	l.waiters.release(l.commitPos)
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
		l.acked(s, a)
	}
}

// acked records an ack: what the follower has, when it was heard, and
// whether it has caught up with what was sent.
func (l *Leader) acked(s *session, a wire.ReplAck) {
	f := s.f
	now := l.opts.Now().UnixNano()
	f.lastHeard.Store(now)
	if a.Durable > f.acked.Load() {
		f.acked.Store(a.Durable)
	}
	s.mu.Lock()
	var caught int64
	i := 0
	for ; i < len(s.marks) && s.marks[i].end <= a.Durable; i++ {
		caught = s.marks[i].at
	}
	s.marks = s.marks[:copy(s.marks, s.marks[i:])]
	if len(s.marks) == 0 && a.Durable >= l.opts.Log().Positions().Dispatched {
		caught = now // it has everything: caught up now, not when the data went out
	}
	s.mu.Unlock()
	if caught > f.caughtUpAt.Load() {
		f.caughtUpAt.Store(caught)
	}
	l.waiters.release(l.commitPos)
}

// send streams records from pos until the session ends.
func (l *Leader) send(ctx context.Context, s *session, pos int64, readErr chan error) error {
	var buf []byte
	lastSent := l.opts.Now()
	hb := time.NewTimer(l.opts.Heartbeat)
	defer hb.Stop()
	watch := time.NewTicker(max(l.opts.Timeout/10, 10*time.Millisecond))
	defer watch.Stop()
	epoch := l.epoch.Load()
	for {
		select {
		case <-s.done:
			return nil
		default:
		}
		lg := l.opts.Log()
		asOf, visible := l.opts.Now().UnixNano(), lg.Positions().Dispatched
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
				visible = lg.Positions().Dispatched
			} else {
				asOf = 0 // behind: this chunk does not bring it up to date
				if !l.inSync(s.f, l.opts.Now().UnixNano()) && !l.pace(ctx, s, len(buf)) {
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
			if err := l.sendData(s, epoch, pos, pos, lg.Positions().Dispatched, 0, nil); err != nil {
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

// inSync reports whether f is in sync now.
func (l *Leader) inSync(f *follower, now int64) bool {
	f.mu.Lock()
	live := f.session != nil
	f.mu.Unlock()
	return live && now-f.caughtUpAt.Load() <= int64(l.opts.InsyncLag)
}

// InSync is the number of followers in sync now.
func (l *Leader) InSync() int {
	now := l.opts.Now().UnixNano()
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, f := range l.followers {
		if l.inSync(f, now) {
			n++
		}
	}
	return n
}

// commitPos is the highest position that k in-sync followers have durable.
func (l *Leader) commitPos(k int) int64 {
	now := l.opts.Now().UnixNano()
	l.mu.Lock()
	var acked []int64
	for _, f := range l.followers {
		if l.inSync(f, now) {
			acked = append(acked, f.acked.Load())
		}
	}
	l.mu.Unlock()
	if k <= 0 {
		return 1<<63 - 1
	}
	if len(acked) < k {
		return -1
	}
	sort.Slice(acked, func(i, j int) bool { return acked[i] > acked[j] })
	return acked[k-1]
}

// ErrNotEnoughReplicas fails a send that fewer than min-insync followers
// acknowledged in time.
var ErrNotEnoughReplicas = errors.New("replica: not enough in-sync followers")

// WaitAcks calls done once k in-sync followers have the log durable up to
// end, or with ErrNotEnoughReplicas when that has not happened by
// deadline. done runs on a goroutine of the leader and must not block.
func (l *Leader) WaitAcks(end int64, k int, deadline time.Time, done func(error)) {
	if l.commitPos(k) >= end {
		done(nil)
		return
	}
	l.waiters.add(&waiter{end: end, k: k, deadline: deadline, done: done})
	l.waiters.release(l.commitPos) // an ack may have come in between
}

// expireWaiters fails the waiters whose deadline passed.
func (l *Leader) expireWaiters() {
	defer l.wg.Done()
	t := time.NewTicker(5 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			l.waiters.expire(l.opts.Now(), l.InSync)
			l.waiters.release(l.commitPos)
		case <-l.stop:
			return
		}
	}
}

// Status is the leader's view of its followers.
func (l *Leader) Status() []wire.ReplicaStatus {
	now := l.opts.Now()
	visible := l.opts.Log().Positions().Dispatched
	l.mu.Lock()
	defer l.mu.Unlock()
	out := make([]wire.ReplicaStatus, 0, len(l.followers))
	for _, f := range l.followers {
		f.mu.Lock()
		st := wire.ReplicaStatus{ID: f.id, Addr: f.addr, Connected: f.session != nil, Acked: f.acked.Load(),
			Sessions: f.sessions, Reconnects: max(f.sessions-1, 0), LastClose: f.lastClose, LastCloseBy: f.lastBy}
		if !f.lastCloseT.IsZero() {
			st.LastCloseAgo = now.Sub(f.lastCloseT).Milliseconds()
		}
		f.mu.Unlock()
		st.InSync = l.inSync(f, now.UnixNano())
		st.LagBytes = max(visible-st.Acked, 0)
		switch c := f.caughtUpAt.Load(); {
		case st.LagBytes == 0:
		case c == 0:
			st.LagMs = -1 // it never had everything the leader had
		default:
			st.LagMs = now.Sub(time.Unix(0, c)).Milliseconds()
		}
		st.LastAckMs = now.Sub(time.Unix(0, f.lastHeard.Load())).Milliseconds()
		out = append(out, st)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}
