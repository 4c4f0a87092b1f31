package broker

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quivermq/quiver/daemon/controller"
	"github.com/quivermq/quiver/daemon/peer"
	"github.com/quivermq/quiver/replica"
	"github.com/quivermq/quiver/sdk/wire"
)

// ReplicationOptions configure the broker's place in its group.
type ReplicationOptions struct {
	// Role is "leader" or "follower" for a group run by hand; "" takes it
	// from the controller when there is one, else leads.
	Role string
	// LeaderAddr is, for a follower run by hand, the leader's QUIC address.
	LeaderAddr string
	// Advertise is this broker's QUIC address as peers and clients reach it.
	Advertise string
	// Peers are the group's brokers' QUIC addresses.
	Peers []string
	// Dialer reaches the other brokers (peer connections); nil: this
	// broker has no peer_ca and stands alone.
	Dialer *peer.Dialer
	// MinInsync followers of the in-sync set must have a send durable
	// before it is acknowledged.
	MinInsync int
	// Heartbeat, Timeout, InsyncLag: see replica; AckTimeout bounds the
	// wait for MinInsync acknowledgements (replica.Default*).
	Heartbeat, Timeout, InsyncLag, AckTimeout time.Duration
	// CatchupRate bounds what is sent to followers catching up, in bytes
	// per second (0: no limit).
	CatchupRate int64
	// Controller, when set, makes the controller quorum (its Voters) give
	// this broker its role: ID, Addr, Dialer and Logger are set here.
	Controller *controller.Options
}

// Roles.
const (
	roleLeader   int32 = iota
	roleFollower       // copies the leader's log; refuses writes
	roleFenced         // a leader that learned of a newer epoch: refuses writes
	roleWaiting        // no role from the controller yet (or no leader elected): refuses writes
)

var roleNames = [...]string{"leader", "follower", "fenced", "waiting"}

// replication is the broker's place in its group. One goroutine (roles)
// owns every change of it: role changes are closures run there (do), and
// the controller's states are taken there, newest first.
type replication struct {
	epochs *replica.Epochs
	role   atomic.Int32
	epoch  atomic.Uint64 // the epoch of the role held (leading or following)
	// handingOff: a leader handing its group over stops taking writes.
	handingOff atomic.Bool
	fenced     atomic.Bool // the log failed and the controller was told (report)
	stopping   atomic.Bool // reported to the controller: leave the in-sync set

	events chan func()
	quit   chan struct{}
	done   chan struct{}
	// grace: until then (unix ns) the group coordinator hands no unowned
	// queue to a member (a leadership that took over: groups.go).
	grace atomic.Int64

	// Controller mode.
	ctl       *controller.Client
	ctlCancel context.CancelFunc
	ctlDone   chan struct{}
	svc       atomic.Pointer[controller.Service] // this broker's voter, for status
	latest    atomic.Pointer[controller.State]   // the newest state, taken by roles
	poke      chan struct{}
	seenEpoch uint64 // the newest election of this group counted in metrics (roles)

	// Read by the produce path and status; changed by roles only.
	mu       sync.Mutex
	leader   *replica.Leader
	follower *replica.Follower
	cancel   context.CancelFunc
	fdone    chan struct{}
	note     string // why this broker does not take writes
}

func (o *ReplicationOptions) ensureDefaults() {
	if o.Heartbeat == 0 {
		o.Heartbeat = replica.DefaultHeartbeat
	}
	if o.Timeout == 0 {
		o.Timeout = replica.DefaultTimeout
	}
	if o.InsyncLag == 0 {
		o.InsyncLag = replica.DefaultInsyncLag
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = replica.DefaultAckTimeout
	}
}

// SetAdvertise sets the address peers and clients reach this broker at,
// when it is known only once the server listens.
func (b *Broker) SetAdvertise(addr string) {
	b.repl.mu.Lock()
	b.opts.Replication.Advertise = addr
	b.repl.mu.Unlock()
}

func (b *Broker) advertise() string {
	b.repl.mu.Lock()
	defer b.repl.mu.Unlock()
	return b.opts.Replication.Advertise
}

// controlled reports whether the controller gives this broker its role.
func (b *Broker) controlled() bool { return b.opts.Replication.Controller != nil }

// startReplication opens the epoch history and starts the role machine.
// A group run by hand takes the configured role, or the one the epoch
// history says this broker has (a promoted follower stays the leader
// across restarts; a replaced leader does not lead again). Under a
// controller the broker takes no writes until the controller gives it a
// role (StartController).
func (b *Broker) startReplication() error {
	o := &b.opts.Replication
	o.ensureDefaults()
	ep, err := replica.OpenEpochs(b.opts.Store.FS, filepath.Join(b.opts.Dir, "state"))
	if err != nil {
		return err
	}
	r := &b.repl
	r.epochs = ep
	r.events, r.quit, r.done, r.poke = make(chan func()), make(chan struct{}), make(chan struct{}), make(chan struct{}, 1)
	go b.roles()
	if b.controlled() {
		r.role.Store(roleWaiting)
		r.note = "waiting for the controller to give this broker a role"
		return nil
	}
	var startErr error
	b.do(func() { startErr = b.startByHand() })
	return startErr
}

// roles is the goroutine that owns the broker's role.
func (b *Broker) roles() {
	r := &b.repl
	defer close(r.done)
	for {
		select {
		case f := <-r.events:
			f()
		case <-r.poke:
			if st := r.latest.Load(); st != nil {
				b.takeState(st)
			}
		case <-r.quit:
			b.stopFollowing()
			b.stopLeading("the broker is stopping")
			return
		}
	}
}

// do runs f on the role machine and waits for it; false when the machine
// has stopped.
func (b *Broker) do(f func()) bool {
	ran := make(chan struct{})
	select {
	case b.repl.events <- func() { defer close(ran); f() }:
		<-ran
		return true
	case <-b.repl.done:
		return false
	}
}

// becomeLeader starts leading the newest epoch of the history with the
// committed in-sync set isr (followers) at version. (roles)
func (b *Broker) becomeLeader(isr []string, version uint64) {
	o := b.opts.Replication
	last := b.repl.epochs.Last()
	lo := replica.LeaderOptions{ID: b.opts.ID, Epochs: b.repl.epochs, Log: b.Log, MinInsync: o.MinInsync, ISR: isr, ISRVersion: version,
		Timeout: o.Timeout, Heartbeat: o.Heartbeat, InsyncLag: o.InsyncLag, CatchupRate: o.CatchupRate, Logger: b.opts.Logger}
	if b.controlled() {
		lo.Propose = func(p *replica.Proposal) { b.proposeISR(last.Epoch, p) }
	}
	l := replica.NewLeader(lo)
	b.repl.mu.Lock()
	b.repl.leader = l
	b.repl.note = ""
	b.repl.mu.Unlock()
	b.repl.epoch.Store(last.Epoch)
	b.repl.handingOff.Store(false)
	if last.Epoch > 1 {
		b.repl.grace.Store(b.opts.Now().Add(coordinatorGrace).UnixNano())
	}
	b.repl.role.Store(roleLeader)
	b.logger.Info("leading", "epoch", l.Epoch(), "min_insync", o.MinInsync, "in_sync", isr)
}

// coordinatorGrace is how long a leadership that took over from another,
// or a broker restarted with consumer groups, waits for consumers to
// report the queues they hold before it hands out the others: a consumer
// reports as soon as its routes name the new leader (within its route
// refresh) or at its next heartbeat (1 s by default), whichever is first.
const coordinatorGrace = 3 * time.Second

// graceUntil is when the current leadership's grace ends.
func (b *Broker) graceUntil() time.Time { return time.Unix(0, b.repl.grace.Load()) }

// becomeFollower follows the leader at addr, accepting no leader older
// than epoch. (roles)
func (b *Broker) becomeFollower(addr string, epoch uint64) {
	o := b.opts.Replication
	f := replica.NewFollower(replica.FollowerOptions{ID: b.opts.ID, LeaderAddr: addr, Dial: b.dialLeader, MinEpoch: epoch,
		Log: b.Log, Epochs: b.repl.epochs, Truncate: b.truncate, Heartbeat: o.Heartbeat, Timeout: o.Timeout, Logger: b.opts.Logger})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.repl.mu.Lock()
	b.repl.follower, b.repl.cancel, b.repl.fdone = f, cancel, done
	b.repl.note = "this broker follows " + addr
	b.repl.mu.Unlock()
	b.repl.epoch.Store(epoch)
	b.repl.role.Store(roleFollower)
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	b.logger.Info("following", "leader", addr, "epoch", epoch)
}

func (b *Broker) dialLeader(ctx context.Context, addr string) (*quic.Conn, error) {
	d := b.opts.Replication.Dialer
	if d == nil {
		return nil, errors.New("broker: a follower needs the group's certificates (peer_ca)")
	}
	return d.Dial(ctx, addr)
}

// stopFollowing ends the follower's replication and waits for it (and
// for the records it handed to the log). (roles)
func (b *Broker) stopFollowing() {
	b.repl.mu.Lock()
	cancel, done := b.repl.cancel, b.repl.fdone
	b.repl.follower, b.repl.cancel, b.repl.fdone = nil, nil, nil
	b.repl.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

// stopLeading stops the leader; its waiting sends fail. (roles)
func (b *Broker) stopLeading(why string) {
	b.repl.mu.Lock()
	l := b.repl.leader
	b.repl.leader = nil
	b.repl.mu.Unlock()
	if l != nil {
		l.Close()
		b.logger.Info("stopped leading", "epoch", l.Epoch(), "reason", why)
	}
}

// fence stops a leader taking writes: a newer epoch exists. (roles)
func (b *Broker) fence(why string) {
	if b.repl.role.Load() != roleLeader {
		return
	}
	b.repl.role.Store(roleFenced)
	b.repl.mu.Lock()
	b.repl.note = "fenced: " + why
	b.repl.mu.Unlock()
	b.logger.Error("fenced: this broker takes no more writes", "reason", why)
	b.stopLeading("fenced")
}

func (b *Broker) stopReplication() {
	r := &b.repl
	if r.ctlCancel != nil {
		r.ctlCancel()
		<-r.ctlDone
	}
	if r.quit != nil {
		close(r.quit)
		<-r.done
	}
}

// truncate reopens the store with the log cut back to to: the follower's
// log diverged from its new leader's.
func (b *Broker) truncate(to int64) error {
	b.stMu.Lock()
	defer b.stMu.Unlock()
	b.waiters.wakeAll()
	if err := b.st.Close(); err != nil {
		b.logger.Warn("closing the store before truncating", "err", err)
	}
	b.logger.Warn("truncating the log to follow the leader", "to", to)
	return b.openStore(true, to)
}

func (b *Broker) leader() *replica.Leader {
	b.repl.mu.Lock()
	defer b.repl.mu.Unlock()
	return b.repl.leader
}

func (b *Broker) notifyFollowers() {
	if l := b.leader(); l != nil {
		l.Notify()
	}
}

// writable fails a write on a broker that does not lead, or must not now:
// it is handing its group over, or (min-insync 0 under a controller) its
// lease lapsed, so that the controller may have elected another leader.
func (b *Broker) writable() *wire.Error {
	if b.repl.role.Load() == roleLeader {
		switch {
		case b.repl.handingOff.Load():
			return &wire.Error{Code: wire.CodeNotLeader, Message: "this broker is handing its group's leadership over"}
		case b.opts.Replication.MinInsync == 0 && b.repl.ctl != nil && !b.repl.ctl.LeaseValid():
			return &wire.Error{Code: wire.CodeNotLeader, Message: fmt.Sprintf("no answer from the controller for %v: another broker may lead by now",
				(b.ctlLease() - b.repl.ctl.LeaseLeft()).Round(time.Millisecond))}
		}
		return nil
	}
	b.repl.mu.Lock()
	note := b.repl.note
	b.repl.mu.Unlock()
	return &wire.Error{Code: wire.CodeNotLeader, Message: note}
}

func (b *Broker) ctlLease() time.Duration { return b.opts.Replication.Controller.Lease() }

// replicaCheck fails a write at once while the in-sync set has fewer
// followers than min-insync (nothing is written: the client retries
// elsewhere). It returns the leader that must then have the write
// acknowledged (nil without min-insync).
func (b *Broker) replicaCheck() (*replica.Leader, *wire.Error) {
	if b.opts.Replication.MinInsync == 0 {
		return nil, nil
	}
	l := b.leader()
	if l == nil {
		return nil, &wire.Error{Code: wire.CodeNotLeader, Message: "not leading"}
	}
	if err := l.Admit(); err != nil {
		return nil, &wire.Error{Code: wire.CodeNotEnoughReplicas, Message: err.Error()}
	}
	return l, nil
}

// replicated waits until the in-sync set has the log durable up to end
// (the write was admitted by l; nil: no min-insync).
func (b *Broker) replicated(l *replica.Leader, end int64) error {
	if l == nil {
		return nil
	}
	done := make(chan error, 1)
	l.WaitAcks(end, time.Now().Add(b.opts.Replication.AckTimeout), func(err error) { done <- err })
	return <-done
}

// serveReplica serves a follower's replication stream (a peer stream
// whose first frame is ReplStart) until it ends.
func (b *Broker) serveReplica(s *peer.Stream, _ wire.Header, payload []byte) {
	c := &replConn{s: s, w: wire.NewWriter(s.QS, 32<<20)}
	go c.w.Run()
	defer c.w.Close()
	var start wire.ReplStart
	if err := wire.DecodeReplStart(payload, &start); err != nil {
		c.refuse(&wire.Error{Code: wire.CodeInvalid, Message: err.Error()})
		return
	}
	l := b.leader()
	if l == nil {
		c.refuse(b.writable())
		return
	}
	var buf []byte
	read := func() (wire.Header, []byte, error) {
		h, p, nb, err := wire.ReadFrame(s.R, buf)
		buf = nb
		return h, p, err
	}
	err := l.Serve(s.QS.Context(), s.Remote(), &start, read, c)
	if errors.Is(err, replica.ErrStale) {
		b.do(func() {
			if b.leader() == l {
				b.fence(fmt.Sprintf("follower %s knows epoch %d, newer than this leader's", start.Follower, start.LastEpoch))
			}
		})
	}
}

// closeReplication is the QUIC code a leader closes a replication
// connection with (the message says why).
const closeReplication quic.ApplicationErrorCode = 4

// replConn is a replication session's view of its peer stream; each
// session has a connection of its own, which the leader closes with its
// reason.
type replConn struct {
	s *peer.Stream
	w *wire.Writer
}

func (c *replConn) Begin(h wire.Header) ([]byte, int)  { return c.w.Begin(h) }
func (c *replConn) End(b []byte, start int) error      { return c.w.End(b, start) }
func (c *replConn) WaitRoom(ctx context.Context) error { return c.w.WaitRoom(ctx) }
func (c *replConn) Close(reason string) {
	c.w.Close()
	go func() {
		// Give the follower a moment to read what was written.
		t := time.NewTimer(time.Second)
		defer t.Stop()
		select {
		case <-c.s.Conn.Context().Done():
		case <-t.C:
		}
		c.s.Conn.CloseWithError(closeReplication, reason)
	}()
}

func (c *replConn) refuse(werr *wire.Error) {
	b, st := c.w.Begin(wire.Header{Type: wire.TypeError})
	c.w.End(wire.AppendError(b, werr), st)
	c.Close(werr.Message)
}

// replicationStatus is the status document's replication section.
func (b *Broker) replicationStatus() *wire.Replication {
	if b.repl.epochs == nil {
		return nil
	}
	last := b.repl.epochs.Last()
	r := &wire.Replication{Role: roleNames[b.repl.role.Load()], Epoch: last.Epoch, Leader: last.Leader,
		MinInsync: b.opts.Replication.MinInsync, Epochs: b.repl.epochs.All()}
	b.repl.mu.Lock()
	l, f, note := b.repl.leader, b.repl.follower, b.repl.note
	b.repl.mu.Unlock()
	if r.Role != "leader" {
		r.Note = note
	} else if err := b.writable(); err != nil {
		r.Note = err.Message
	}
	if l != nil {
		r.Followers = l.Status()
		isr, v, p := l.ISR()
		r.InSync, r.ISR, r.ISRVersion = len(isr), isr, v
		if p != nil {
			r.Proposal = p.String()
		}
	}
	if f != nil {
		st := f.Status()
		r.Following = &st
	}
	if b.controlled() {
		r.Controller = b.controllerStatus()
	}
	return r
}
