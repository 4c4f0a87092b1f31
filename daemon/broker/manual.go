package broker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quivermq/quiver/daemon/peer"
	"github.com/quivermq/quiver/sdk/wire"
)

// A group run by hand (no controller: a leader and one follower, or any
// group configured with --role): an operator promotes a follower (quiver
// admin promote), which begins a new epoch and tells its peers; a leader
// that learns of a newer epoch stops taking writes and follows. Every
// change of role runs on the role machine (roles).

// startByHand takes up the configured role, or the one the epoch history
// says this broker has. (roles)
func (b *Broker) startByHand() error {
	o := &b.opts.Replication
	ep := b.repl.epochs
	last := ep.Last()
	switch {
	case last.Leader == b.opts.ID:
		b.becomeLeader(nil, 0)
		// A leader that was down may have been replaced meanwhile: ask.
		go b.askPeers()
	case o.Role == "follower":
		if o.Dialer == nil {
			return errors.New("broker: a follower needs the group's certificates (peer_ca)")
		}
		b.becomeFollower(o.LeaderAddr, 0)
	case last.Epoch == 0:
		// A leader with no history: its first epoch begins here.
		if err := ep.Begin(wire.Epoch{Epoch: 1, Start: b.log.Positions().Written, Leader: b.opts.ID}); err != nil {
			return err
		}
		b.becomeLeader(nil, 0)
		go b.askPeers()
	default:
		b.repl.role.Store(roleFenced)
		b.repl.note = fmt.Sprintf("this broker's log follows epoch %d led by %s: start it as a follower of that leader, or promote it", last.Epoch, last.Leader)
		b.logger.Error("not taking writes: " + b.repl.note)
	}
	return nil
}

// Promote makes this follower the leader of a new epoch, one past every
// epoch it knows, starting at its log's end, and tells its peers (a group
// run by hand; under a controller, quiver admin elect).
func (b *Broker) Promote() (wire.EpochInfo, *wire.Error) {
	if b.controlled() {
		return wire.EpochInfo{}, &wire.Error{Code: wire.CodeInvalid,
			Message: "this group's leaders are elected by the controller: use quiver admin elect --group G"}
	}
	var info wire.EpochInfo
	var werr *wire.Error
	ok := b.do(func() {
		if b.closed.Load() {
			werr = &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"}
			return
		}
		if b.repl.role.Load() != roleLeader {
			b.stopFollowing()
			last := b.repl.epochs.Last()
			ep := wire.Epoch{Epoch: last.Epoch + 1, Start: b.Log().Positions().Written, Leader: b.opts.ID}
			if err := b.repl.epochs.Begin(ep); err != nil {
				werr = &wire.Error{Code: wire.CodeInternal, Message: err.Error()}
				return
			}
			b.logger.Warn("promoted to leader", "epoch", ep.Epoch, "start", ep.Start, "previous_leader", last.Leader)
			b.becomeLeader(nil, 0)
			go b.announce(ep.Epoch)
		}
		info = b.epochInfo()
	})
	if !ok {
		return wire.EpochInfo{}, &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"}
	}
	return info, werr
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
	var out wire.EpochInfo
	ok := b.do(func() {
		last := b.repl.epochs.Last()
		if b.closed.Load() || b.controlled() || info.Epoch <= last.Epoch || info.Leader == b.opts.ID || info.LeaderAddr == "" {
			out = b.epochInfo()
			return
		}
		b.logger.Warn("a newer epoch leads the group", "epoch", info.Epoch, "leader", info.Leader, "addr", info.LeaderAddr,
			"this_epoch", last.Epoch)
		switch b.repl.role.Load() {
		case roleLeader, roleFenced:
			b.fence(fmt.Sprintf("epoch %d is led by %s at %s", info.Epoch, info.Leader, info.LeaderAddr))
			if b.opts.Replication.Dialer != nil {
				b.becomeFollower(info.LeaderAddr, 0)
			}
		case roleFollower:
			b.repl.mu.Lock()
			f := b.repl.follower
			b.repl.mu.Unlock()
			if f != nil && f.LeaderAddr() != info.LeaderAddr {
				b.stopFollowing()
				b.becomeFollower(info.LeaderAddr, 0)
			}
		}
		out = b.epochInfo()
	})
	if !ok {
		return wire.EpochInfo{}
	}
	return out
}

// serveEpochInfo answers a peer's EpochInfo stream.
func (b *Broker) serveEpochInfo(s *peer.Stream, h wire.Header, payload []byte) {
	defer s.QS.Close()
	var m wire.EpochInfo
	var out []byte
	if err := wire.DecodeEpochInfo(payload, &m); err != nil {
		out = wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, RequestID: h.RequestID},
			wire.AppendError(nil, &wire.Error{Code: wire.CodeInvalid, Message: err.Error()}))
	} else {
		info := b.EpochNotice(m)
		out = wire.AppendFrame(nil, wire.Header{Type: wire.TypeEpochInfo, RequestID: h.RequestID}, info.Append(nil))
	}
	s.QS.SetWriteDeadline(time.Now().Add(3 * time.Second))
	s.QS.Write(out)
}

// askPeers asks every peer for its epoch; a newer one led elsewhere
// fences this broker (it then follows that leader).
func (b *Broker) askPeers() {
	o := b.opts.Replication
	if o.Dialer == nil {
		return
	}
	mine := b.epochInfo()
	for _, p := range o.Peers {
		if p == b.advertise() {
			continue
		}
		theirs, err := b.sendEpochInfo(p, mine)
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

// announce tells every peer of this broker's epoch (best effort, a few
// tries each): an old leader stops taking writes, followers follow here.
func (b *Broker) announce(epoch uint64) {
	o := b.opts.Replication
	adv := b.advertise()
	if o.Dialer == nil || adv == "" {
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
				_, err := b.sendEpochInfo(addr, info)
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

// sendEpochInfo sends one EpochInfo to a peer and returns the peer's.
func (b *Broker) sendEpochInfo(addr string, info wire.EpochInfo) (wire.EpochInfo, error) {
	var theirs wire.EpochInfo
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	qs, err := b.opts.Replication.Dialer.Open(ctx, addr, wire.TypeEpochInfo, info.Append(nil))
	if err != nil {
		return theirs, err
	}
	defer qs.CancelRead(0)
	defer qs.Close()
	qs.SetReadDeadline(time.Now().Add(3 * time.Second))
	h, p, _, err := wire.ReadFrame(qs, nil)
	if err != nil {
		return theirs, err
	}
	switch h.Type {
	case wire.TypeError:
		werr, derr := wire.DecodeError(p)
		if derr != nil {
			return theirs, derr
		}
		return theirs, werr
	case wire.TypeEpochInfo:
		return theirs, wire.DecodeEpochInfo(p, &theirs)
	}
	return theirs, fmt.Errorf("peer %s answered an epoch with frame type %d", addr, h.Type)
}

// ServePeers registers the broker's peer streams on mux: replication and
// (groups run by hand) epoch notices.
func (b *Broker) ServePeers(mux *peer.Mux) {
	mux.Handle(wire.TypeReplStart, b.serveReplica)
	mux.Handle(wire.TypeEpochInfo, b.serveEpochInfo)
}
