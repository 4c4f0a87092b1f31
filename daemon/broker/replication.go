package broker

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quivermq/quiver/replica"
	"github.com/quivermq/quiver/sdk/wire"
)

// ReplicationOptions configure the broker's place in its group.
type ReplicationOptions struct {
	// Role is "leader" (default) or "follower".
	Role string
	// LeaderAddr is, for a follower, the leader's QUIC address.
	LeaderAddr string
	// Advertise is this broker's QUIC address as peers and clients reach it.
	Advertise string
	// Peers are the other brokers' QUIC addresses (told of a promotion).
	Peers []string
	// PeerTLS verifies peers; PeerToken is presented to them.
	PeerTLS   *tls.Config
	PeerToken []byte
	// MinInsync followers must have a send durable before it is acknowledged.
	MinInsync int
	// Heartbeat, Timeout and InsyncLag: see replica; AckTimeout bounds the
	// wait for MinInsync acknowledgements (defaults 1s, 10s, 5s, 2s).
	Heartbeat, Timeout, InsyncLag, AckTimeout time.Duration
	// CatchupRate bounds what is sent to followers catching up, in bytes
	// per second (0: no limit).
	CatchupRate int64
}

// Roles.
const (
	roleLeader   int32 = iota
	roleFollower       // copies the leader's log; refuses writes
	roleFenced         // a leader that learned of a newer epoch: refuses writes
)

var roleNames = [...]string{"leader", "follower", "fenced"}

type replication struct {
	role   atomic.Int32
	epochs *replica.Epochs
	// change serializes role changes (Promote, EpochNotice, stopping): two
	// at once could start two leaders, or one after the broker stopped.
	change sync.Mutex

	mu       sync.Mutex
	leader   *replica.Leader
	follower *replica.Follower
	cancel   context.CancelFunc
	done     chan struct{}
	note     string // why this broker does not take writes
}

func (o *ReplicationOptions) ensureDefaults() {
	if o.Role == "" {
		o.Role = "leader"
	}
	if o.Heartbeat == 0 {
		o.Heartbeat = time.Second
	}
	if o.Timeout == 0 {
		o.Timeout = 10 * time.Second
	}
	if o.InsyncLag == 0 {
		o.InsyncLag = 5 * time.Second
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = 2 * time.Second
	}
}

// SetAdvertise sets the address peers and clients reach this broker at,
// when it is known only once the server listens.
func (b *Broker) SetAdvertise(addr string) {
	b.repl.mu.Lock()
	b.opts.Replication.Advertise = addr
	b.repl.mu.Unlock()
}

// startReplication takes up the configured role, or the one the epoch
// history says this broker has (a promoted follower stays the leader
// across restarts; a replaced leader does not lead again).
func (b *Broker) startReplication() error {
	o := &b.opts.Replication
	o.ensureDefaults()
	ep, err := replica.OpenEpochs(filepath.Join(b.opts.Dir, "state"))
	if err != nil {
		return err
	}
	b.repl.epochs = ep
	last := ep.Last()
	switch {
	case last.Leader == b.opts.ID:
		b.becomeLeader(false)
		// A leader that was down may have been replaced meanwhile: ask.
		go b.askPeers()
	case o.Role == "follower":
		if o.PeerTLS == nil {
			return errors.New("broker: a follower needs the leader's certificate (peer_ca)")
		}
		b.becomeFollower(o.LeaderAddr)
	case last.Epoch == 0:
		// A leader with no history: its first epoch begins here.
		if err := ep.Begin(wire.Epoch{Epoch: 1, Start: b.log.Positions().Written, Leader: b.opts.ID}); err != nil {
			return err
		}
		b.becomeLeader(false)
		go b.askPeers()
	default:
		b.repl.role.Store(roleFenced)
		b.repl.note = fmt.Sprintf("this broker's log follows epoch %d led by %s: start it as a follower of that leader, or promote it", last.Epoch, last.Leader)
		b.logger.Error("not taking writes: " + b.repl.note)
	}
	return nil
}

func (b *Broker) becomeLeader(announce bool) {
	o := b.opts.Replication
	l := replica.NewLeader(replica.LeaderOptions{ID: b.opts.ID, Epochs: b.repl.epochs, Log: b.Log, Timeout: o.Timeout,
		Heartbeat: o.Heartbeat, InsyncLag: o.InsyncLag, CatchupRate: o.CatchupRate, Logger: b.opts.Logger})
	b.repl.mu.Lock()
	b.repl.leader = l
	b.repl.note = ""
	b.repl.mu.Unlock()
	b.repl.role.Store(roleLeader)
	b.logger.Info("leading", "epoch", l.Epoch(), "min_insync", o.MinInsync)
	if announce {
		go b.announce(l.Epoch())
	}
}

func (b *Broker) becomeFollower(addr string) {
	o := b.opts.Replication
	f := replica.NewFollower(replica.FollowerOptions{ID: b.opts.ID, LeaderAddr: addr, TLS: o.PeerTLS, Token: o.PeerToken,
		Log: b.Log, Epochs: b.repl.epochs, Truncate: b.truncate, Heartbeat: o.Heartbeat, Timeout: o.Timeout, Logger: b.opts.Logger})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	b.repl.mu.Lock()
	b.repl.follower, b.repl.cancel, b.repl.done = f, cancel, done
	b.repl.note = "this broker follows " + addr
	b.repl.mu.Unlock()
	b.repl.role.Store(roleFollower)
	go func() {
		defer close(done)
		f.Run(ctx)
	}()
	b.logger.Info("following", "leader", addr)
}

// stopFollowing ends the follower's replication and waits for it.
func (b *Broker) stopFollowing() {
	b.repl.mu.Lock()
	cancel, done := b.repl.cancel, b.repl.done
	b.repl.follower, b.repl.cancel, b.repl.done = nil, nil, nil
	b.repl.mu.Unlock()
	if cancel != nil {
		cancel()
		<-done
	}
}

func (b *Broker) stopLeading() {
	b.repl.mu.Lock()
	l := b.repl.leader
	b.repl.leader = nil
	b.repl.mu.Unlock()
	if l != nil {
		l.Close()
	}
}

func (b *Broker) stopReplication() {
	b.repl.change.Lock()
	defer b.repl.change.Unlock()
	b.stopFollowing()
	b.stopLeading()
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

// writable fails a write on a broker that does not lead.
func (b *Broker) writable() *wire.Error {
	if b.repl.role.Load() == roleLeader {
		return nil
	}
	b.repl.mu.Lock()
	note := b.repl.note
	b.repl.mu.Unlock()
	return &wire.Error{Code: wire.CodeNotLeader, Message: note}
}

// replicaCheck fails a send at once when fewer followers than min-insync
// are in sync (nothing is written: the client retries elsewhere).
// It returns the leader that must then have the send acknowledged (nil
// without min-insync).
func (b *Broker) replicaCheck() (*replica.Leader, *wire.Error) {
	k := b.opts.Replication.MinInsync
	if k == 0 {
		return nil, nil
	}
	l := b.leader()
	if l == nil {
		return nil, &wire.Error{Code: wire.CodeNotLeader, Message: "not leading"}
	}
	if n := l.InSync(); n < k {
		return nil, &wire.Error{Code: wire.CodeNotEnoughReplicas, Message: fmt.Sprintf("min-insync is %d, %d follower(s) in sync", k, n)}
	}
	return l, nil
}

// ServeReplica serves a follower's replication stream (its first frame
// was start) until it ends.
func (b *Broker) ServeReplica(ctx context.Context, addr string, start *wire.ReplStart, br *bufio.Reader, c replica.Conn) error {
	l := b.leader()
	if l == nil {
		bf, st := c.Begin(wire.Header{Type: wire.TypeError})
		c.End(wire.AppendError(bf, b.writable()), st)
		c.Close("this broker does not lead")
		return errors.New("not leading")
	}
	var buf []byte
	read := func() (wire.Header, []byte, error) {
		h, p, nb, err := wire.ReadFrame(br, buf)
		buf = nb
		return h, p, err
	}
	err := l.Serve(ctx, addr, start, read, c)
	if errors.Is(err, replica.ErrStale) {
		b.fence(fmt.Sprintf("follower %s knows epoch %d, newer than this leader's", start.Follower, start.LastEpoch))
	}
	return err
}

// fence stops a leader taking writes: a newer epoch exists.
func (b *Broker) fence(why string) {
	if b.repl.role.CompareAndSwap(roleLeader, roleFenced) {
		b.repl.mu.Lock()
		b.repl.note = "fenced: " + why
		b.repl.mu.Unlock()
		b.logger.Error("fenced: this broker takes no more writes", "reason", why)
		b.stopLeading()
	}
}

// Promote makes this follower the leader of a new epoch, one past every
// epoch it knows, starting at its log's end, and tells its peers.
func (b *Broker) Promote() (wire.EpochInfo, *wire.Error) {
	b.repl.change.Lock()
	defer b.repl.change.Unlock()
	if b.closed.Load() {
		return wire.EpochInfo{}, &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"}
	}
	if b.repl.role.Load() == roleLeader {
		return b.epochInfo(), nil
	}
	b.stopFollowing()
	last := b.repl.epochs.Last()
	ep := wire.Epoch{Epoch: last.Epoch + 1, Start: b.Log().Positions().Written, Leader: b.opts.ID}
	if err := b.repl.epochs.Begin(ep); err != nil {
		return wire.EpochInfo{}, &wire.Error{Code: wire.CodeInternal, Message: err.Error()}
	}
	b.logger.Warn("promoted to leader", "epoch", ep.Epoch, "start", ep.Start, "previous_leader", last.Leader)
	b.becomeLeader(true)
	return b.epochInfo(), nil
}

func (b *Broker) epochInfo() wire.EpochInfo {
	last := b.repl.epochs.Last()
	info := wire.EpochInfo{Epoch: last.Epoch, Leader: last.Leader}
	if last.Leader == b.opts.ID {
		info.LeaderAddr = b.advertise()
	} else if b.repl.role.Load() == roleFollower {
		b.repl.mu.Lock()
		if f := b.repl.follower; f != nil {
			info.LeaderAddr = f.LeaderAddr()
		}
		b.repl.mu.Unlock()
	}
	return info
}

// EpochNotice handles a peer's EpochInfo: a newer epoch led by another
// broker. A leader stops taking writes and follows it; a follower follows
// it.
func (b *Broker) EpochNotice(info wire.EpochInfo) wire.EpochInfo {
	b.repl.change.Lock()
	defer b.repl.change.Unlock()
	last := b.repl.epochs.Last()
	if b.closed.Load() {
		return b.epochInfo()
	}
	if info.Epoch <= last.Epoch || info.Leader == b.opts.ID || info.LeaderAddr == "" {
		return b.epochInfo()
	}
	b.logger.Warn("a newer epoch leads the group", "epoch", info.Epoch, "leader", info.Leader, "addr", info.LeaderAddr,
		"this_epoch", last.Epoch)
	switch b.repl.role.Load() {
	case roleLeader, roleFenced:
		b.fence(fmt.Sprintf("epoch %d is led by %s at %s", info.Epoch, info.Leader, info.LeaderAddr))
		if b.opts.Replication.PeerTLS != nil {
			b.becomeFollower(info.LeaderAddr)
		}
	case roleFollower:
		b.repl.mu.Lock()
		f := b.repl.follower
		b.repl.mu.Unlock()
		if f != nil && f.LeaderAddr() != info.LeaderAddr {
			b.stopFollowing()
			b.becomeFollower(info.LeaderAddr)
		}
	}
	return b.epochInfo()
}

// askPeers asks every peer for its epoch; a newer one led elsewhere
// fences this broker (it then follows that leader).
func (b *Broker) askPeers() {
	o := b.opts.Replication
	if o.PeerTLS == nil {
		return
	}
	mine := b.epochInfo()
	for _, p := range o.Peers {
		if p == b.advertise() {
			continue
		}
		theirs, err := sendEpochInfo(p, o.PeerTLS, o.PeerToken, b.opts.ID, mine)
		if err != nil {
			b.logger.Info("could not ask a peer for its epoch", "peer", p, "err", err)
			continue
		}
		if theirs.Epoch > mine.Epoch {
			b.EpochNotice(theirs)
			return
		}
	}
}

func (b *Broker) advertise() string {
	b.repl.mu.Lock()
	defer b.repl.mu.Unlock()
	return b.opts.Replication.Advertise
}

// announce tells every peer of this broker's epoch (best effort, a few
// tries each): an old leader stops taking writes, followers follow here.
func (b *Broker) announce(epoch uint64) {
	o := b.opts.Replication
	adv := b.advertise()
	if o.PeerTLS == nil || adv == "" {
		return
	}
	info := wire.EpochInfo{Epoch: epoch, Leader: b.opts.ID, LeaderAddr: adv}
	var wg sync.WaitGroup
	for _, p := range o.Peers {
		if p == adv {
			continue
		}
		wg.Add(1)
		go func(addr string) {
			defer wg.Done()
			for try := 0; try < 5; try++ {
				_, err := sendEpochInfo(addr, o.PeerTLS, o.PeerToken, b.opts.ID, info)
				if err == nil {
					b.logger.Info("told a peer of the new epoch", "peer", addr, "epoch", epoch)
					return
				}
				b.logger.Warn("telling a peer of the new epoch failed", "peer", addr, "err", err, "try", try+1)
				select {
				case <-time.After(time.Duration(try+1) * 500 * time.Millisecond):
				case <-b.stop:
					return
				}
			}
		}(p)
	}
	wg.Wait()
}

// sendEpochInfo opens a session with a peer, sends one EpochInfo and
// returns the peer's.
func sendEpochInfo(addr string, tc *tls.Config, token []byte, id string, info wire.EpochInfo) (wire.EpochInfo, error) {
	var theirs wire.EpochInfo
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	conf := tc.Clone()
	conf.NextProtos = []string{wire.ALPN}
	conf.MinVersion = tls.VersionTLS13
	qc, err := quic.DialAddr(ctx, addr, conf, nil)
	if err != nil {
		return theirs, err
	}
	defer qc.CloseWithError(0, "done")
	qs, err := qc.OpenStreamSync(ctx)
	if err != nil {
		return theirs, err
	}
	qs.SetDeadline(time.Now().Add(3 * time.Second))
	hello := wire.Hello{Version: wire.ProtocolVersion, ClientID: "peer:" + id, Credentials: token}
	out := wire.AppendFrame(nil, wire.Header{Type: wire.TypeHello, RequestID: 1}, hello.Append(nil))
	out = wire.AppendFrame(out, wire.Header{Type: wire.TypeEpochInfo, RequestID: 2}, info.Append(nil))
	if _, err := qs.Write(out); err != nil {
		return theirs, err
	}
	br := bufio.NewReader(qs)
	for {
		h, p, _, err := wire.ReadFrame(br, nil)
		if err != nil {
			return theirs, err
		}
		switch h.Type {
		case wire.TypeError:
			werr, _ := wire.DecodeError(p)
			return theirs, werr
		case wire.TypeEpochInfo:
			return theirs, wire.DecodeEpochInfo(p, &theirs)
		}
	}
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
	l, f := b.repl.leader, b.repl.follower
	b.repl.mu.Unlock()
	if l != nil {
		r.Followers = l.Status()
		r.InSync = l.InSync()
	}
	if f != nil {
		st := f.Status()
		r.Following = &st
	}
	return r
}
