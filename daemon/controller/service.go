package controller

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	raftboltdb "github.com/hashicorp/raft-boltdb/v2"
	"go.etcd.io/bbolt"

	"github.com/quivermq/quiver/daemon/peer"
	"github.com/quivermq/quiver/sdk/wire"
)

// Options configure a voter's Service and every broker's Client.
type Options struct {
	ID     string   // this broker's id
	Addr   string   // its advertised address: its raft server id and address
	Voters []string // the voters' addresses (1, 3 or 5)
	// Dir holds the raft log and snapshots (DATA/controller; voters only).
	Dir    string
	Dialer *peer.Dialer
	// Heartbeat is how often brokers report to the controller; Session
	// is how long the controller waits without a report before it
	// considers a broker gone (defaults 500ms and 2s).
	Heartbeat, Session time.Duration
	// InitialWait: a group's first election waits for every configured
	// broker, or this long and a majority of them (default 10s).
	InitialWait time.Duration
	Logger      *slog.Logger
	Now         func() time.Time
}

// Defaults of the controller's timing, written once.
const (
	DefaultHeartbeat   = 500 * time.Millisecond
	DefaultSession     = 2 * time.Second
	DefaultInitialWait = 10 * time.Second
	applyTimeout       = 5 * time.Second
)

func (o *Options) ensureDefaults() {
	if o.Heartbeat == 0 {
		o.Heartbeat = DefaultHeartbeat
	}
	if o.Session == 0 {
		o.Session = DefaultSession
	}
	if o.InitialWait == 0 {
		o.InitialWait = DefaultInitialWait
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

// Lease is how long a broker may act on its role after the controller
// answered a heartbeat it sent: shorter than the session by a heartbeat,
// so that a leader cut off from the controller stops taking writes
// before the controller can elect another (min-insync 0 relies on it).
func (o *Options) Lease() time.Duration { return o.Session - o.Heartbeat }

// Service is the controller on a voter: the raft member, and, while it
// leads the quorum, the brokers' sessions and the decisions (elections,
// in-sync sets) made from them.
type Service struct {
	o      Options
	logger *slog.Logger
	fsm    *fsm
	raft   *raft.Raft
	layer  *streamLayer
	store  *raftboltdb.BoltStore

	mu        sync.Mutex
	leading   bool
	since     time.Time
	reports   map[string]Report
	firstSeen map[string]time.Time
	waiting   map[string]string
	live      map[string]bool // as last pushed
	sessions  map[*session]struct{}
	regs      map[string]bool // registrations being proposed
	// lastTransfer: when this voter last handed its leadership over
	// (decide's goroutine only).
	lastTransfer time.Time

	kick chan struct{}
	stop chan struct{}
	wg   sync.WaitGroup
}

// Start opens (or creates) this voter's raft state in o.Dir, joins the
// quorum over peer streams (it serves mux's Raft and CtlSession streams)
// and starts deciding whenever it leads.
func Start(o Options, mux *peer.Mux) (*Service, error) {
	o.ensureDefaults()
	if err := os.MkdirAll(o.Dir, 0o755); err != nil {
		return nil, err
	}
	s := &Service{o: o, logger: o.Logger.With("component", "controller"), fsm: newFSM(), reports: map[string]Report{},
		firstSeen: map[string]time.Time{}, waiting: map[string]string{}, live: map[string]bool{}, sessions: map[*session]struct{}{},
		regs: map[string]bool{}, kick: make(chan struct{}, 1), stop: make(chan struct{})}
	hl := hcLogger(s.logger, "raft")
	conf := raft.DefaultConfig()
	conf.LocalID = raft.ServerID(o.Addr)
	conf.Logger = hl
	// Timing from the session: the quorum notices its leader gone within
	// a quarter to half a session (raft randomizes it), so that a new
	// controller leader is there well before the brokers' sessions, which
	// it gives a session's time, would expire.
	conf.HeartbeatTimeout = o.Session / 4
	conf.ElectionTimeout = o.Session / 4
	conf.LeaderLeaseTimeout = o.Session / 4 // a leader steps down after this without a quorum: not less, or a busy machine makes it flap
	conf.SnapshotThreshold = 1024
	conf.TrailingLogs = 1024
	store, err := raftboltdb.New(raftboltdb.Options{Path: filepath.Join(o.Dir, "raft.db"), BoltOptions: &bbolt.Options{Timeout: 5 * time.Second}})
	if err != nil {
		return nil, fmt.Errorf("controller: raft log %s: %w", filepath.Join(o.Dir, "raft.db"), err)
	}
	snaps, err := raft.NewFileSnapshotStoreWithLogger(o.Dir, 2, hl)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("controller: %w", err)
	}
	s.store = store
	s.layer = newStreamLayer(o.Dialer, o.Addr)
	trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{Stream: s.layer, MaxPool: 3, Timeout: 2 * time.Second, Logger: hl})
	has, err := raft.HasExistingState(store, store, snaps)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("controller: %w", err)
	}
	if !has {
		var cfg raft.Configuration
		for _, v := range o.Voters {
			cfg.Servers = append(cfg.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(v), Address: raft.ServerAddress(v)})
		}
		if err := raft.BootstrapCluster(conf, store, store, snaps, trans, cfg); err != nil {
			store.Close()
			return nil, fmt.Errorf("controller: bootstrap: %w", err)
		}
		s.logger.Info("controller quorum bootstrapped", "voters", o.Voters)
	}
	mux.Handle(wire.TypeRaft, s.layer.handle)
	mux.Handle(wire.TypeCtlSession, s.serveSession)
	r, err := raft.NewRaft(conf, s.fsm, store, store, snaps, trans)
	if err != nil {
		store.Close()
		return nil, fmt.Errorf("controller: %w", err)
	}
	s.raft = r
	s.wg.Add(2)
	go s.watchLeadership()
	go s.pusher()
	return s, nil
}

// Close hands the quorum's leadership to another voter when this one
// leads (so that the brokers do not wait an election timeout), then
// leaves the quorum's traffic.
func (s *Service) Close() {
	select {
	case <-s.stop:
		return
	default:
	}
	if s.raft.State() == raft.Leader && len(s.o.Voters) > 1 {
		if err := s.raft.LeadershipTransfer().Error(); err != nil {
			s.logger.Warn("could not hand the controller's leadership over before stopping", "err", err)
		}
	}
	close(s.stop)
	s.endSessions()
	if err := s.raft.Shutdown().Error(); err != nil {
		s.logger.Warn("controller shutdown", "err", err)
	}
	s.layer.Close()
	s.wg.Wait()
	s.store.Close()
}

// State is the newest State this voter applied.
func (s *Service) State() *State { return s.fsm.state() }

// Info is the quorum as this voter sees it. (Not raft's Stats: it waits
// for raft's own goroutine, and Info answers every heartbeat.)
func (s *Service) Info() *Info {
	leader, _ := s.raft.LeaderWithID()
	in := &Info{Voters: s.o.Voters, Leader: string(leader), Term: s.raft.CurrentTerm(), Self: s.o.Addr,
		State: s.raft.State().String(), CommitIndex: s.raft.AppliedIndex()}
	switch last := s.raft.LastContact(); {
	case in.State == "Leader":
		in.LastContact = "0s"
	case last.IsZero():
		in.LastContact = "never"
	default:
		in.LastContact = time.Since(last).Round(time.Millisecond).String()
	}
	return in
}

// watchLeadership follows this voter's raft leadership: it takes the
// brokers' sessions and starts deciding when it leads, and drops them
// when it no longer does.
func (s *Service) watchLeadership() {
	defer s.wg.Done()
	var decider chan struct{}
	for {
		select {
		case <-s.stop:
			if decider != nil {
				close(decider)
			}
			return
		case leads := <-s.raft.LeaderCh():
			if leads && decider == nil {
				// Every change the old leader committed is applied here
				// before this one decides anything.
				if err := s.raft.Barrier(applyTimeout).Error(); err != nil {
					s.logger.Warn("controller: barrier after winning the election; stepping down", "err", err)
					s.raft.LeadershipTransfer()
					continue
				}
				s.mu.Lock()
				s.leading, s.since = true, s.o.Now()
				clear(s.reports)
				clear(s.firstSeen)
				clear(s.regs)
				s.mu.Unlock()
				s.logger.Info("leading the controller quorum", "term", s.raft.CurrentTerm(), "index", s.fsm.state().Index)
				decider = make(chan struct{})
				s.wg.Add(1)
				go s.decide(decider)
			} else if !leads && decider != nil {
				close(decider)
				decider = nil
				s.mu.Lock()
				s.leading = false
				s.mu.Unlock()
				s.logger.Info("no longer leading the controller quorum")
				s.endSessions()
			}
		}
	}
}

func (s *Service) isLeading() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.leading
}

func (s *Service) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// view is the policy's input, now (under mu).
func (s *Service) viewLocked(now time.Time) *view {
	return &view{now: now, session: s.o.Session, since: s.since, reports: maps.Clone(s.reports),
		firstSeen: maps.Clone(s.firstSeen), initialWait: s.o.InitialWait, self: s.o.ID}
}

// decide runs while this voter leads: it proposes what the policy asks,
// at every new report and at the next moment a session can expire.
func (s *Service) decide(done chan struct{}) {
	defer s.wg.Done()
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-t.C:
		case <-s.kick:
		case <-s.fsm.watch():
		case <-done:
			return
		}
		now := s.o.Now()
		st := s.fsm.state()
		s.mu.Lock()
		for k, g := range st.Groups {
			if _, ok := s.firstSeen[k]; !ok && g.Leader == "" {
				s.firstSeen[k] = now
			}
		}
		v := s.viewLocked(now)
		s.mu.Unlock()
		cmds, waiting := decide(st, v)
		s.noteWaiting(st, waiting)
		s.pushLiveness(st, v)
		for _, c := range cmds {
			if err := s.apply(c); err != nil {
				if !errors.Is(err, ErrStaleEpoch) && !errors.Is(err, ErrStaleISR) {
					s.logger.Warn("controller: could not commit a decision", "op", c.Op, "group", c.Group, "err", err)
				}
				break // decide again from the new state
			}
		}
		if s.spreadLeadership(s.fsm.state(), v) {
			return // leading no more: the new leader decides
		}
		if next := nextDecision(s.fsm.state(), v); !next.IsZero() {
			t.Reset(max(next.Sub(s.o.Now()), 0))
		} else {
			t.Reset(s.o.Session)
		}
	}
}

// spreadLeadership hands the quorum's leadership to another voter when
// this voter's broker leads a group and a live voter leads none: one crash
// then never takes both a group's leader and the controller's, whose new
// leader would first give every session its time (a failover of about a
// session and a raft election instead of a session). It reports whether
// it handed over.
func (s *Service) spreadLeadership(st *State, v *view) bool {
	leads := func(id string) bool {
		for _, g := range st.Groups {
			if g.Leader == id {
				return true
			}
		}
		return false
	}
	if !leads(s.o.ID) || time.Since(s.lastTransfer) < s.o.Session/2 {
		return false
	}
	for _, addr := range s.o.Voters {
		if addr == s.o.Addr {
			continue
		}
		for id, b := range st.Brokers {
			if b.Addr == addr && v.reported(id) && !leads(id) {
				s.lastTransfer = time.Now()
				s.logger.Info("handing the controller's leadership to a voter that leads no group", "to", id, "addr", addr)
				if err := s.raft.LeadershipTransferToServer(raft.ServerID(addr), raft.ServerAddress(addr)).Error(); err != nil {
					s.logger.Warn("controller leadership transfer failed", "to", id, "err", err)
					return false
				}
				return true
			}
		}
	}
	return false
}

// apply commits c and logs what it changed.
func (s *Service) apply(c *Command) error {
	before := s.fsm.state()
	if err := raftApply(s.raft, c, applyTimeout); err != nil {
		return err
	}
	g := before.Groups[c.Group]
	name := c.Group
	if after := s.fsm.state().Groups[c.Group]; after != nil {
		name = after.displayName()
	}
	switch c.Op {
	case OpElect:
		from := ""
		if g != nil {
			from = g.Leader
		}
		e := s.fsm.state().Groups[c.Group].Elections
		last := e[len(e)-1]
		lv := slog.LevelWarn
		msg := "elected a group leader"
		if c.Unclean {
			lv, msg = slog.LevelError, "UNCLEAN election: elected a leader outside the in-sync set; sends acknowledged by the old in-sync set may be lost"
		}
		s.logger.Log(context.Background(), lv, msg, "group", name, "epoch", last.Epoch, "old_leader", from, "new_leader", c.Leader,
			"reason", c.Reason, "in_sync", c.ISR, "leaderless_for_ms", c.TookMs)
	case OpISR:
		s.logger.Info("in-sync set changed", "group", name, "isr", c.ISR, "left", c.Reasons)
	}
	return nil
}

// noteWaiting logs, once per change, a group that waits for something.
func (s *Service) noteWaiting(st *State, waiting map[string]string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, why := range waiting {
		if s.waiting[k] != why {
			name := k
			if g := st.Groups[k]; g != nil {
				name = g.displayName()
			}
			s.logger.Warn("group without a leader", "group", name, "why", why)
		}
	}
	s.waiting = waiting
}

// pushLiveness pushes the state when a broker went from live to not live
// or back (routes and status show it).
func (s *Service) pushLiveness(st *State, v *view) {
	live := map[string]bool{}
	for id := range st.Brokers {
		live[id] = v.alive(id)
	}
	s.mu.Lock()
	changed := !maps.Equal(live, s.live)
	s.live = live
	s.mu.Unlock()
	if changed {
		s.pushAll()
	}
}

// liveLocked is ms since each registered broker was last heard, -1 for
// one not live.
func (s *Service) liveLocked(st *State, now time.Time) map[string]int64 {
	v := s.viewLocked(now)
	out := make(map[string]int64, len(st.Brokers))
	for id := range st.Brokers {
		if v.alive(id) {
			out[id] = now.Sub(v.lastHeard(id)).Milliseconds()
		} else {
			out[id] = -1
		}
	}
	return out
}

// session is one broker's session stream, on the leader.
type session struct {
	w      *wire.Writer
	stream *peer.Stream
	id     string
	mu     sync.Mutex
	sent   uint64 // the newest state index sent whole
}

// serveSession runs a broker's session: first is its first heartbeat.
func (s *Service) serveSession(st *peer.Stream, _ wire.Header, payload []byte) {
	defer st.QS.CancelRead(0)
	defer st.QS.Close()
	w := wire.NewWriter(st.QS, 4<<20)
	go w.Run()
	defer w.Close()
	first, err := DecodeHeartbeat(payload)
	if err != nil {
		send(w, &Msg{Kind: "result", ID: ^uint64(0), Error: err.Error()})
		return
	}
	sess := &session{w: w, stream: st, id: first.Broker}
	s.mu.Lock()
	if !s.leading {
		s.mu.Unlock()
		s.redirect(sess, first.Seq)
		return
	}
	s.sessions[sess] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.sessions, sess)
		s.mu.Unlock()
	}()
	s.heartbeat(sess, first)
	var buf []byte
	for {
		h, p, nb, err := wire.ReadFrame(st.R, buf)
		buf = nb
		if err != nil {
			return
		}
		if h.Type != wire.TypeCtlMsg {
			return
		}
		m, err := DecodeMsg(p)
		if err != nil {
			s.logger.Warn("controller: a bad session message", "broker", sess.id, "err", err)
			return
		}
		switch m.Kind {
		case "heartbeat":
			if !s.heartbeat(sess, m.Heartbeat) {
				return
			}
		case "request":
			s.wg.Add(1)
			go func() {
				defer s.wg.Done()
				err := s.request(sess, m)
				r := &Msg{Kind: "result", ID: m.ID}
				if err != nil {
					r.Error = err.Error()
				}
				send(sess.w, r)
			}()
		}
	}
}

func send(w *wire.Writer, m *Msg) error {
	b, start := w.Begin(wire.Header{Type: wire.TypeCtlMsg})
	b, err := AppendMsg(b, m)
	if err != nil {
		return err
	}
	return w.End(b, start)
}

// redirect tells a broker this voter does not lead, and who does.
func (s *Service) redirect(sess *session, seq uint64) {
	leader, _ := s.raft.LeaderWithID()
	send(sess.w, &Msg{Kind: "state", Ack: seq, Redirect: string(leader), Info: s.Info()})
}

// heartbeat records a report and answers it; false: the session must end
// (this voter no longer leads).
func (s *Service) heartbeat(sess *session, hb *Heartbeat) bool {
	now := s.o.Now()
	st := s.fsm.state()
	s.mu.Lock()
	if !s.leading {
		s.mu.Unlock()
		s.redirect(sess, hb.Seq)
		return false
	}
	prev, seen := s.reports[hb.Broker]
	s.reports[hb.Broker] = Report{Heartbeat: *hb, Heard: now}
	if gap := now.Sub(prev.Heard); seen && hb.Seq == prev.Seq+1 && gap > 3*s.o.Heartbeat/2 {
		// Late heartbeats eat into the session: a broker whose
		// heartbeats come this late is close to being replaced.
		s.logger.Warn("a broker's heartbeat came late", "broker", hb.Broker, "gap", gap.Round(time.Millisecond), "heartbeat", s.o.Heartbeat)
	}
	register := !sameRegistration(st, hb) && !s.regs[hb.Broker]
	if register {
		s.regs[hb.Broker] = true
	}
	live := s.liveLocked(st, now)
	waiting := maps.Clone(s.waiting)
	s.mu.Unlock()
	if !seen || prev.Stopping != hb.Stopping || prev.Failed != hb.Failed || prev.Heard.Before(now.Add(-s.o.Session)) {
		s.poke()
	}
	if register {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			c := &Command{Op: OpRegister, AtMs: now.UnixMilli(), Broker: &Broker{ID: hb.Broker, Addr: hb.Addr, Group: hb.Group, MinInsync: hb.MinInsync},
				GroupName: hb.GroupName, Peers: hb.Peers}
			if err := raftApply(s.raft, c, applyTimeout); err != nil {
				s.logger.Warn("controller: could not register a broker", "broker", hb.Broker, "err", err)
			} else {
				s.logger.Info("broker registered", "broker", hb.Broker, "addr", hb.Addr, "group", hb.Group)
			}
			s.mu.Lock()
			delete(s.regs, hb.Broker)
			s.mu.Unlock()
		}()
	}
	m := &Msg{Kind: "state", Ack: hb.Seq, Leader: true, Info: s.Info(), Live: live, Waiting: waiting}
	sess.mu.Lock()
	if st.Index > hb.Version && st.Index > sess.sent {
		m.State = st
		sess.sent = st.Index
	}
	err := send(sess.w, m)
	sess.mu.Unlock()
	return err == nil
}

// pusher pushes every new state to every session the moment it is
// applied.
func (s *Service) pusher() {
	defer s.wg.Done()
	for {
		select {
		case <-s.fsm.watch():
			if s.isLeading() {
				s.pushAll()
			}
		case <-s.stop:
			return
		}
	}
}

func (s *Service) pushAll() {
	st := s.fsm.state()
	now := s.o.Now()
	s.mu.Lock()
	live := s.liveLocked(st, now)
	waiting := maps.Clone(s.waiting)
	sessions := slices.Collect(maps.Keys(s.sessions))
	s.mu.Unlock()
	info := s.Info()
	for _, sess := range sessions {
		m := &Msg{Kind: "state", Leader: true, Info: info, Live: live, Waiting: waiting}
		sess.mu.Lock()
		if st.Index > sess.sent {
			m.State = st
			sess.sent = st.Index
		}
		send(sess.w, m)
		sess.mu.Unlock()
	}
}

// endSessions closes every session (this voter stopped leading): the
// brokers find the new leader.
func (s *Service) endSessions() {
	s.mu.Lock()
	sessions := slices.Collect(maps.Keys(s.sessions))
	s.mu.Unlock()
	for _, sess := range sessions {
		sess.stream.QS.CancelRead(0)
		sess.stream.QS.CancelWrite(0)
	}
}

// request serves a broker's request on the leader.
func (s *Service) request(sess *session, m *Msg) error {
	st := s.fsm.state()
	now := s.o.Now()
	s.mu.Lock()
	leading := s.leading
	v := s.viewLocked(now)
	s.mu.Unlock()
	if !leading {
		return errors.New("controller: this voter no longer leads the quorum")
	}
	switch m.Req {
	case ReqISR:
		c := *m.Command
		g := st.Groups[c.Group]
		switch {
		case g == nil:
			return fmt.Errorf("%w: group %s", ErrUnknown, c.Group)
		case g.Leader != sess.id || g.Epoch != c.Epoch:
			return fmt.Errorf("%w: %s does not lead group %s in epoch %d (the leader is %s in epoch %d)", ErrStaleEpoch, sess.id, g.displayName(), c.Epoch, g.Leader, g.Epoch)
		}
		for _, id := range c.ISR {
			if !slices.Contains(g.ISR, id) && !v.reported(id) {
				return fmt.Errorf("%w: %s has no live controller session: it cannot join the in-sync set", ErrNotElectable, id)
			}
		}
		c.Op, c.AtMs = OpISR, now.UnixMilli()
		return s.apply(&c)
	case ReqTopics:
		c := *m.Command
		g := st.Groups[c.Group]
		if g == nil || !slices.Contains(g.Members, sess.id) {
			return fmt.Errorf("%w: %s is not a member of group %s", ErrUnknown, sess.id, c.Group)
		}
		c.Op, c.AtMs = OpTopics, now.UnixMilli()
		return s.apply(&c)
	case ReqElect, ReqHandoff:
		g := st.GroupNamed(m.Group)
		if g == nil {
			return fmt.Errorf("%w: group %s", ErrUnknown, m.Group)
		}
		reason := fmt.Sprintf("quiver admin elect, through %s", sess.id)
		if m.Unclean {
			reason = fmt.Sprintf("quiver admin elect --unclean, through %s", sess.id)
		}
		if m.Req == ReqHandoff {
			if g.Leader != sess.id {
				return fmt.Errorf("%w: %s does not lead group %s (%s does)", ErrStaleEpoch, sess.id, g.displayName(), g.Leader)
			}
			reason = fmt.Sprintf("handoff: the leader %s is stopping", sess.id)
		}
		c, err := electFor(g, v, m.Target, m.Unclean && m.Req == ReqElect, reason)
		// A controller that has just taken over has not heard every
		// broker yet: give them a session's time to report.
		for err != nil && errors.Is(err, ErrNotElectable) && s.o.Now().Sub(v.since) < s.o.Session {
			time.Sleep(s.o.Heartbeat / 5)
			s.mu.Lock()
			v = s.viewLocked(s.o.Now())
			s.mu.Unlock()
			c, err = electFor(s.fsm.state().GroupNamed(m.Group), v, m.Target, m.Unclean && m.Req == ReqElect, reason)
		}
		if err != nil {
			return err
		}
		return s.apply(c)
	}
	return fmt.Errorf("%w: request %q", ErrBadCommand, m.Req)
}
