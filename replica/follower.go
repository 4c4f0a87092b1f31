package replica

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quivermq/quiver/internal/quicerr"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

// FollowerOptions configure a Follower.
type FollowerOptions struct {
	ID         string // this broker's id
	LeaderAddr string
	// Dial opens a peer connection to the leader (daemon/peer): each
	// session has its own, which the leader closes with its reason.
	Dial func(ctx context.Context, addr string) (*quic.Conn, error)
	// MinEpoch is the oldest epoch the follower accepts from a leader (the
	// controller's epoch for the group): an older leader has been replaced
	// and does not know it yet.
	MinEpoch uint64
	// Log returns the broker's log (it is reopened after a truncation).
	Log    func() *qlog.Log
	Epochs *Epochs
	// Truncate reopens the log cut back to a position (see log's
	// Options.Truncate); the follower calls it when its log diverged.
	Truncate func(to int64) error
	// Heartbeat is how often the follower acks when nothing else makes it
	// (DefaultHeartbeat). Its timer is never reset by anything: incident 000.
	Heartbeat time.Duration
	// Timeout closes the connection when the leader sent nothing (data or
	// heartbeat) for this long (DefaultTimeout).
	Timeout time.Duration
	// BackoffBase and BackoffMax bound the reconnect backoff (full jitter;
	// defaults 100ms and 5s).
	BackoffBase, BackoffMax time.Duration
	// InFlight bounds the chunks handed to the log and not yet acknowledged
	// by it (default 8).
	InFlight int
	Logger   *slog.Logger
}

func (o *FollowerOptions) ensureDefaults() {
	if o.Heartbeat == 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Timeout == 0 {
		o.Timeout = DefaultTimeout
	}
	if o.BackoffBase == 0 {
		o.BackoffBase = 100 * time.Millisecond
	}
	if o.BackoffMax == 0 {
		o.BackoffMax = 5 * time.Second
	}
	if o.InFlight == 0 {
		o.InFlight = 8
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// Follower copies its leader's log into this broker's.
type Follower struct {
	opts   FollowerOptions
	logger *slog.Logger

	connected   atomic.Bool
	leaderEnd   atomic.Int64
	lastHeard   atomic.Int64
	sessions    atomic.Int64
	truncations atomic.Int64
	leaderID    atomic.Pointer[string]
	leaderAddr  atomic.Pointer[string]

	mu         sync.Mutex
	lastClose  string
	lastBy     string
	lastCloseT time.Time
}

// NewFollower returns a Follower; Run starts it.
func NewFollower(o FollowerOptions) *Follower {
	o.ensureDefaults()
	f := &Follower{opts: o, logger: o.Logger.With("component", "replica-follower")}
	f.leaderAddr.Store(&o.LeaderAddr)
	return f
}

// SetLeader points the follower at another leader (after a failover); the
// current session ends and the next one goes there.
func (f *Follower) SetLeader(addr string) { f.leaderAddr.Store(&addr) }

// LeaderAddr is the address the follower follows.
func (f *Follower) LeaderAddr() string { return *f.leaderAddr.Load() }

// Run follows the leader until ctx is done, reconnecting with backoff.
func (f *Follower) Run(ctx context.Context) {
	failures := 0
	for ctx.Err() == nil {
		started := time.Now()
		err := f.session(ctx)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errTruncated) {
			failures = 0
			continue // reconnect at once, from the new end
		}
		if time.Since(started) > 2*f.opts.Timeout {
			failures = 0 // a session that lasted is not a failure in a row
		}
		failures++
		wait := backoff(f.opts.BackoffBase, f.opts.BackoffMax, failures)
		f.logger.Info("replication: reconnecting to the leader", "leader", f.LeaderAddr(), "in", wait.Round(time.Millisecond), "attempt", failures)
		t := time.NewTimer(wait)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return
		}
	}
}

// backoff is exponential with full jitter: uniform in [0, min(max, base·2^(n-1))].
func backoff(base, max time.Duration, n int) time.Duration {
	d := base
	for i := 1; i < n && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return time.Duration(rand.Int64N(int64(d) + 1))
}

var errTruncated = errors.New("replica: log truncated to follow the leader")

// ErrStaleLeader ends a session with a leader of an older epoch than the
// group's: it has been replaced and has not learned it yet.
var ErrStaleLeader = errors.New("replica: the leader's epoch is older than the group's")

// closeWith records why a session ended and who ended it.
func (f *Follower) closeWith(by, why string) {
	f.mu.Lock()
	f.lastClose, f.lastBy, f.lastCloseT = why, by, time.Now()
	f.mu.Unlock()
	if by == "follower" {
		f.logger.Warn("replication: closed by the follower (this side)", "leader", f.LeaderAddr(), "reason", why)
	} else {
		f.logger.Warn("replication: the leader closed the connection", "leader", f.LeaderAddr(), "seen", why)
	}
}

// session connects, handshakes, and copies records until the session ends.
func (f *Follower) session(ctx context.Context) error {
	addr := f.LeaderAddr()
	dctx, cancel := context.WithTimeout(ctx, f.opts.Timeout)
	qc, err := f.opts.Dial(dctx, addr)
	cancel()
	if err != nil {
		f.closeWith("follower", "connecting: "+err.Error())
		return err
	}
	f.sessions.Add(1)
	closeWhy := "follower stopping"
	defer func() { qc.CloseWithError(0, closeWhy) }()
	qs, err := qc.OpenStreamSync(ctx)
	if err != nil {
		f.closeWith("follower", "opening a stream: "+err.Error())
		return err
	}
	w := wire.NewWriter(qs, 32<<20)
	go w.Run()
	defer w.Close()
	br := bufio.NewReaderSize(qs, 256<<10)
	var buf []byte
	read := func() (wire.Header, []byte, error) {
		var h wire.Header
		var p []byte
		h, p, buf, err = wire.ReadFrame(br, buf)
		return h, p, err
	}
	expect := func(typ wire.Type, what string) ([]byte, error) {
		qs.SetReadDeadline(time.Now().Add(f.opts.Timeout))
		defer qs.SetReadDeadline(time.Time{})
		h, p, err := read()
		if err != nil {
			return nil, err
		}
		if h.Type == wire.TypeError {
			werr, derr := wire.DecodeError(p)
			if derr != nil {
				return nil, derr
			}
			return nil, fmt.Errorf("the leader refused %s: %w", what, werr)
		}
		if h.Type != typ {
			return nil, fmt.Errorf("the leader answered %s with frame type %d", what, h.Type)
		}
		return p, nil
	}
	// ReplStart is the stream's first frame: a peer connection has no
	// Hello (its certificate is the credential).
	lg := f.opts.Log()
	p := lg.Positions()
	start := wire.ReplStart{Follower: f.opts.ID, SegmentSize: lg.SegmentSize(), LastEpoch: f.opts.Epochs.Last().Epoch,
		End: p.Written, HeartbeatMs: uint32(f.opts.Heartbeat.Milliseconds())}
	b, st := w.Begin(wire.Header{Type: wire.TypeReplStart})
	w.End(start.Append(b), st)
	payload, err := expect(wire.TypeReplHello, "replication")
	if err != nil {
		f.closeWith("follower", "replication handshake: "+err.Error())
		return err
	}
	var rh wire.ReplHello
	if err := wire.DecodeReplHello(payload, &rh); err != nil {
		f.closeWith("follower", err.Error())
		return err
	}
	f.leaderID.Store(&rh.Leader)
	if rh.Epoch < f.opts.MinEpoch {
		err := fmt.Errorf("%w: %s at %s leads epoch %d; the group is at epoch %d", ErrStaleLeader, rh.Leader, addr, rh.Epoch, f.opts.MinEpoch)
		closeWhy = err.Error()
		f.closeWith("follower", err.Error())
		return err
	}
	if rh.TruncateTo != wire.NoTruncate {
		closeWhy = "truncating to follow"
		qc.CloseWithError(0, closeWhy)
		f.logger.Warn("replication: this log diverged from the leader's; truncating", "leader", rh.Leader, "epoch", rh.Epoch,
			"end", p.Written, "truncate_to", rh.TruncateTo)
		if err := f.opts.Truncate(rh.TruncateTo); err != nil {
			f.closeWith("follower", "truncating: "+err.Error())
			return err
		}
		f.truncations.Add(1)
		if err := f.opts.Epochs.Adopt(rh.Epochs, rh.TruncateTo); err != nil {
			return err
		}
		return errTruncated
	}
	if rh.From != p.Written {
		err := fmt.Errorf("the leader starts at %d, this log ends at %d", rh.From, p.Written)
		f.closeWith("follower", err.Error())
		return err
	}
	if err := f.opts.Epochs.Adopt(rh.Epochs, p.Written); err != nil {
		f.closeWith("follower", err.Error())
		return err
	}
	f.connected.Store(true)
	defer f.connected.Store(false)
	f.lastHeard.Store(time.Now().UnixNano())
	f.logger.Info("replication: following", "leader", rh.Leader, "addr", addr, "epoch", rh.Epoch, "from", rh.From)

	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var ackWG sync.WaitGroup
	kick := make(chan struct{}, 1)
	ackWG.Add(1)
	go func() { defer ackWG.Done(); f.acks(sctx, w, rh.Epoch, kick) }()
	defer ackWG.Wait()
	defer stop()

	by, why, err := f.receive(sctx, read, rh, kick)
	closeWhy = why
	f.closeWith(by, why)
	return err
}

// acks sends the follower's position after every applied batch (kick) and
// on its own timer, which nothing else resets (incident 000: a timer that
// incoming data reset starved the acks, and the leader dropped the
// follower every cycle).
func (f *Follower) acks(ctx context.Context, w *wire.Writer, epoch uint64, kick chan struct{}) {
	t := time.NewTicker(f.opts.Heartbeat)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-kick:
		case <-ctx.Done():
			return
		}
		p := f.opts.Log().Positions()
		a := wire.ReplAck{Epoch: epoch, Durable: p.Durable, Written: p.Written}
		b, st := w.Begin(wire.Header{Type: wire.TypeReplAck})
		if w.End(a.Append(b), st) != nil {
			return
		}
	}
}

// receive applies the leader's records until the session ends; it returns
// who ended it and why.
func (f *Follower) receive(ctx context.Context, read func() (wire.Header, []byte, error), rh wire.ReplHello, kick chan struct{}) (string, string, error) {
	type result struct {
		h   wire.Header
		p   []byte
		err error
	}
	// The reader hands over a copy of each frame: the log keeps the
	// records until it acknowledges them, and the reader's buffer is
	// reused for the next frame. (It used to hand over the buffer itself
	// and wait for it back, and a stop between the two left the receive
	// loop waiting forever for a reader that had returned.)
	frames := make(chan result)
	go func() {
		for {
			h, p, err := read()
			if err == nil {
				p = append([]byte(nil), p...)
			}
			select {
			case frames <- result{h, p, err}:
			case <-ctx.Done():
				return
			}
			if err != nil {
				return
			}
		}
	}()
	slots := make(chan struct{}, f.opts.InFlight)
	// When the session ends, wait for the records handed to the log: a
	// follower that becomes the leader begins its epoch where its log
	// ends, after every record of the old leader it took.
	defer func() {
		for i := 0; i < cap(slots); i++ {
			slots <- struct{}{}
		}
	}()
	var failed atomic.Pointer[error]
	watch := time.NewTicker(max(f.opts.Timeout/10, 10*time.Millisecond))
	defer watch.Stop()
	epochsKnown := rh.Epochs
	for {
		select {
		case <-ctx.Done():
			return "follower", "the broker is stopping", nil
		case <-watch.C:
			if e := failed.Load(); e != nil {
				return "follower", "applying records: " + (*e).Error(), *e
			}
			silent := time.Since(time.Unix(0, f.lastHeard.Load()))
			if silent > f.opts.Timeout {
				return "follower", fmt.Sprintf("the leader sent nothing for %v (timeout %v)", silent.Round(time.Millisecond), f.opts.Timeout), nil
			}
		case r := <-frames:
			if r.err != nil {
				return "leader", quicerr.CloseReason(r.err), r.err
			}
			f.lastHeard.Store(time.Now().UnixNano())
			if r.h.Type != wire.TypeReplData {
				err := fmt.Errorf("unexpected frame type %d from the leader", r.h.Type)
				return "follower", err.Error(), err
			}
			var d wire.ReplData
			if err := wire.DecodeReplData(r.p, &d); err != nil {
				return "follower", err.Error(), err
			}
			f.leaderEnd.Store(d.Visible)
			if d.Epoch != rh.Epoch {
				err := fmt.Errorf("records of epoch %d on a session of epoch %d", d.Epoch, rh.Epoch)
				return "follower", err.Error(), err
			}
			if len(d.Records) == 0 {
				continue
			}
			data := d.Records // a copy of the reader's: the log keeps it until it acknowledges
			select {
			case slots <- struct{}{}:
			case <-ctx.Done():
				return "follower", "the broker is stopping", nil
			}
			end := d.Pos + int64(len(data))
			if err := f.opts.Log().AppendRawAsync(d.Pos, data, func(_ int64, err error) {
				<-slots
				if err != nil {
					failed.CompareAndSwap(nil, &err)
				}
				select {
				case kick <- struct{}{}:
				default:
				}
			}); err != nil {
				<-slots
				return "follower", "applying records: " + err.Error(), err
			}
			// Record the epochs this log now has data of.
			for _, ep := range epochsKnown {
				if ep.Start < end && ep.Epoch > f.opts.Epochs.Last().Epoch {
					if err := f.opts.Epochs.Adopt(epochsKnown, end); err != nil {
						return "follower", err.Error(), err
					}
					break
				}
			}
		}
	}
}

// Status is the follower's view of its replication.
func (f *Follower) Status() wire.FollowerStatus {
	p := f.opts.Log().Positions()
	st := wire.FollowerStatus{LeaderAddr: f.LeaderAddr(), Connected: f.connected.Load(), End: p.Written, Durable: p.Durable,
		LeaderEnd: f.leaderEnd.Load(), Sessions: f.sessions.Load(), Reconnects: max(f.sessions.Load()-1, 0),
		Truncations: f.truncations.Load()}
	st.LagBytes = max(st.LeaderEnd-st.Durable, 0)
	if h := f.lastHeard.Load(); h > 0 {
		st.LastDataMs = time.Since(time.Unix(0, h)).Milliseconds()
	}
	f.mu.Lock()
	st.LastClose, st.LastCloseBy = f.lastClose, f.lastBy
	if !f.lastCloseT.IsZero() {
		st.LastCloseAgo = time.Since(f.lastCloseT).Milliseconds()
	}
	f.mu.Unlock()
	return st
}

// LeaderID is the id of the leader of the last session ("" before one).
func (f *Follower) LeaderID() string {
	if p := f.leaderID.Load(); p != nil {
		return *p
	}
	return ""
}
