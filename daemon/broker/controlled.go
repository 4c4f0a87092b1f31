package broker

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/quivermq/quiver/daemon/controller"
	"github.com/quivermq/quiver/replica"
	"github.com/quivermq/quiver/sdk/wire"
)

// A group under a controller: the controller quorum (daemon/controller)
// says who leads each group, in which epoch, and which followers are in
// sync. This broker heartbeats it, takes every state it sends on the role
// machine, proposes its in-sync set when it leads, registers its group's
// topics, and hands its group over when it stops.

// StartController starts the broker's session with the controller (once
// the server listens: its advertised address is known). svc is this
// broker's own voter, if it is one (for status).
func (b *Broker) StartController(svc *controller.Service) {
	o := b.opts.Replication.Controller
	if o == nil {
		return
	}
	if svc != nil {
		b.repl.svc.Store(svc)
	}
	co := *o
	co.ID, co.Addr, co.Dialer, co.Logger = b.opts.ID, b.advertise(), b.opts.Replication.Dialer, b.opts.Logger
	b.repl.ctl = controller.NewClient(co, b.report, b.onState)
	ctx, cancel := context.WithCancel(context.Background())
	b.repl.ctlCancel, b.repl.ctlDone = cancel, make(chan struct{})
	go func() {
		defer close(b.repl.ctlDone)
		b.repl.ctl.Run(ctx)
	}()
}

// groupKey is this broker's group's key at the controller.
func (b *Broker) groupKey() string {
	return controller.GroupKey(b.opts.Cluster.Group, b.opts.Replication.Peers)
}

// report is this broker's part of a heartbeat (on the client's goroutine:
// atomics and short locks only).
func (b *Broker) report() controller.Heartbeat {
	hb := controller.Heartbeat{Group: b.groupKey(), Peers: b.opts.Replication.Peers, Role: roleNames[b.repl.role.Load()],
		Epoch: b.repl.epoch.Load(), Stopping: b.repl.stopping.Load(), MinInsync: b.opts.Replication.MinInsync}
	if es := b.repl.epochs.All(); len(es) > 0 {
		hb.LastEpoch = es[len(es)-1].Epoch
		hb.GroupName = es[0].Leader
	}
	if n := b.opts.Cluster.Group; n != "" {
		hb.GroupName = n
	}
	hb.Durable = b.Log().Positions().Durable
	if err := b.Log().Err(); err != nil {
		// Fail-stop: a failed write or fsync may have lost acknowledged
		// pages, so this broker must not lead or count as in sync until a
		// restart's recovery has decided what is on disk. The controller
		// elects another leader and drops it from the in-sync set.
		hb.Failed = err.Error()
		if b.repl.fenced.CompareAndSwap(false, true) {
			b.logger.Error("the log failed: this broker fences itself, giving up its group's leadership and its place in the in-sync set; restart it to recover", "err", err)
		}
	}
	return hb
}

// onState takes a newer state from the controller: the role machine
// applies the newest one it has not applied yet.
func (b *Broker) onState(st *controller.State) {
	b.repl.latest.Store(st)
	select {
	case b.repl.poke <- struct{}{}:
	default:
	}
}

// takeState takes the role the state gives this broker. (roles)
func (b *Broker) takeState(st *controller.State) {
	if b.closed.Load() {
		return
	}
	g := st.Groups[b.groupKey()]
	if g == nil || !slices.Contains(g.Members, b.opts.ID) {
		b.toWaiting("the controller has not registered this broker yet")
		return
	}
	b.countElections(g)
	switch {
	case b.Log().Err() != nil:
		// Fenced (see report): it neither leads nor follows, which would
		// reopen the log in-process, until a restart recovers it.
		b.toWaiting("this broker's log failed (" + b.Log().Err().Error() + "): it is fenced until a restart")
	case g.Leader != b.opts.ID && b.repl.stopping.Load():
		b.toWaiting("this broker is stopping") // it follows nobody: its leader would wait for it
	case g.Leader == "":
		b.toWaiting("the group has no leader elected yet")
	case g.Leader == b.opts.ID:
		b.toLeader(g)
	default:
		lb := st.Brokers[g.Leader]
		if lb == nil {
			b.toWaiting(fmt.Sprintf("the controller names %s as the leader but not its address", g.Leader))
			return
		}
		b.toFollower(lb.Addr, g.Leader, g.Epoch)
	}
}

// toWaiting takes no role: no leading, no following. (roles)
func (b *Broker) toWaiting(why string) {
	if b.repl.role.Load() == roleWaiting {
		b.repl.mu.Lock()
		b.repl.note = why
		b.repl.mu.Unlock()
		return
	}
	b.stopLeading(why)
	b.stopFollowing()
	b.repl.role.Store(roleWaiting)
	b.repl.mu.Lock()
	b.repl.note = why
	b.repl.mu.Unlock()
	b.logger.Warn("taking no writes", "reason", why)
}

// toLeader leads g's epoch: at once when it is this broker's already (a
// new in-sync set), else after following stopped, beginning the epoch at
// the log's end (or resuming it: this broker led it before a restart, and
// its followers never hold what it could have lost). (roles)
func (b *Broker) toLeader(g *controller.Group) {
	if b.repl.role.Load() == roleLeader && b.repl.epoch.Load() == g.Epoch {
		if l := b.leader(); l != nil {
			l.SetISR(g.Followers(), g.ISRVersion)
		}
		b.registerTopics(g)
		return
	}
	b.stopLeading("a newer epoch")
	b.stopFollowing()
	last := b.repl.epochs.Last()
	switch {
	case last.Epoch == g.Epoch && last.Leader == b.opts.ID:
		b.logger.Info("resuming the leadership of its epoch", "epoch", g.Epoch)
	case last.Epoch < g.Epoch:
		ep := wire.Epoch{Epoch: g.Epoch, Start: b.Log().Positions().Written, Leader: b.opts.ID}
		if err := b.repl.epochs.Begin(ep); err != nil {
			b.toWaiting("could not record the new epoch: " + err.Error())
			return
		}
		b.logger.Warn("elected leader", "epoch", g.Epoch, "start", ep.Start, "previous_leader", last.Leader)
	default:
		b.toWaiting(fmt.Sprintf("the controller gives this broker epoch %d, and its log has epoch %d of %s: refusing to lead", g.Epoch, last.Epoch, last.Leader))
		b.logger.Error("refusing to lead an epoch older than the log's", "epoch", g.Epoch, "log_epoch", last.Epoch)
		return
	}
	b.becomeLeader(g.Followers(), g.ISRVersion)
	b.registerTopics(g)
}

// toFollower follows the group's leader id at addr in epoch. (roles)
func (b *Broker) toFollower(addr, id string, epoch uint64) {
	switch b.repl.role.Load() {
	case roleLeader:
		b.fence(fmt.Sprintf("epoch %d is led by %s at %s", epoch, id, addr))
	case roleFollower:
		b.repl.mu.Lock()
		f := b.repl.follower
		b.repl.mu.Unlock()
		if f != nil && f.LeaderAddr() == addr && b.repl.epoch.Load() == epoch {
			return
		}
	}
	b.stopLeading("following " + id)
	b.stopFollowing()
	b.becomeFollower(addr, epoch)
}

// countElections counts the group's elections this broker has not seen
// (the first state only sets where counting starts). (roles)
func (b *Broker) countElections(g *controller.Group) {
	if b.repl.seenEpoch == 0 {
		b.repl.seenEpoch = max(g.Epoch, 1)
		return
	}
	for _, e := range g.Elections {
		if e.Epoch <= b.repl.seenEpoch {
			continue
		}
		b.metrics.elected(e)
	}
	b.repl.seenEpoch = max(b.repl.seenEpoch, g.Epoch)
}

// proposeISR hands the leader's proposal to the controller; the answer
// comes back as a state. A refusal withdraws it (a follower refused stops
// counting for acknowledgements); a request lost with its session leaves
// it pending, to be made again.
func (b *Broker) proposeISR(epoch uint64, p *replica.Proposal) {
	c := b.repl.ctl
	if c == nil {
		return
	}
	isr := append(slices.Clone(p.ISR), b.opts.ID)
	sort.Strings(isr)
	cmd := &controller.Command{Group: b.groupKey(), Epoch: epoch, ISRVersion: p.Base, ISR: isr, Reasons: p.Removed}
	b.logger.Info("proposing an in-sync set", "change", p.String())
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		err := c.Request(ctx, &controller.Msg{Req: controller.ReqISR, Command: cmd})
		if err == nil {
			return
		}
		b.logger.Warn("the controller did not take the in-sync set", "change", p.String(), "err", err)
		var refused *controller.RefusedError
		if errors.As(err, &refused) {
			if l := b.leader(); l != nil && l.Epoch() == epoch {
				l.Refused(p)
			}
		}
	}()
}

// registerTopics tells the controller of the topics this leader's group
// hosts that its state lacks (created here, or before the controller
// knew the group). (roles: a request of its own)
func (b *Broker) registerTopics(g *controller.Group) {
	c := b.repl.ctl
	if c == nil {
		return
	}
	var missing []wire.TopicInfo
	for _, t := range b.Metadata(nil).Topics {
		if _, ok := g.Topics[t.Name]; !ok {
			missing = append(missing, t)
		}
	}
	if len(missing) == 0 {
		return
	}
	cmd := &controller.Command{Group: g.Key, Topics: missing}
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := c.Request(ctx, &controller.Msg{Req: controller.ReqTopics, Command: cmd}); err != nil {
			b.logger.Info("could not register topics with the controller; will retry", "topics", len(missing), "err", err)
		}
	}()
}

// topicCreated asks the controller to record a topic this broker created.
func (b *Broker) topicCreated() {
	if st := b.repl.latest.Load(); st != nil && b.repl.role.Load() == roleLeader {
		if g := st.Groups[b.groupKey()]; g != nil {
			b.registerTopics(g)
		}
	}
}

// HandOff prepares a graceful stop under a controller. A leader stops
// taking writes (sends get NOT_LEADER and go to the new leader), waits
// until an in-sync follower has everything, and asks the controller to
// elect it; a follower asks to leave the in-sync set, so that the
// leader's sends do not wait for it. It returns once that is done, or
// when ctx ends.
func (b *Broker) HandOff(ctx context.Context) error {
	c := b.repl.ctl
	if c == nil {
		return nil
	}
	b.repl.stopping.Store(true)
	var l *replica.Leader
	b.do(func() {
		if b.repl.role.Load() == roleLeader {
			b.repl.handingOff.Store(true)
			l = b.repl.leader
		}
	})
	if l == nil {
		return b.waitState(ctx, func(g *controller.Group) bool { return !slices.Contains(g.ISR, b.opts.ID) })
	}
	// The writes already accepted finish (they cannot be refused any
	// more); wait until the in-sync followers have all of them durable,
	// then hand over to the one with the most.
	for {
		end := b.Log().Positions().Written
		deadline, ok := ctx.Deadline()
		if !ok {
			deadline = time.Now().Add(b.opts.Replication.AckTimeout)
		}
		done := make(chan error, 1)
		l.WaitAcks(end, deadline, func(err error) { done <- err })
		if err := <-done; err != nil {
			return fmt.Errorf("handing over: the in-sync followers did not catch up: %w", err)
		}
		if b.Log().Positions().Written == end {
			break
		}
	}
	target := ""
	var best int64 = -1
	for _, f := range l.Status() {
		if f.InSync && f.Connected && f.Acked > best {
			target, best = f.ID, f.Acked
		}
	}
	if target == "" {
		b.logger.Warn("handing over: no in-sync follower to hand the group to; it waits for the controller to elect one")
		return nil
	}
	b.logger.Info("handing the group over", "to", target, "end", b.Log().Positions().Written)
	if err := c.Request(ctx, &controller.Msg{Req: controller.ReqHandoff, Group: b.groupKey(), Target: target}); err != nil {
		return fmt.Errorf("handing over to %s: %w", target, err)
	}
	return b.waitState(ctx, func(g *controller.Group) bool { return g.Leader != b.opts.ID })
}

// waitState waits until the controller's state of this broker's group
// satisfies ok.
func (b *Broker) waitState(ctx context.Context, ok func(*controller.Group) bool) error {
	return b.waitGroup(ctx, b.groupKey(), ok)
}

// waitGroup waits until the state of the group named name (or keyed)
// satisfies ok, or the group is not in the state.
func (b *Broker) waitGroup(ctx context.Context, name string, ok func(*controller.Group) bool) error {
	for {
		ch := b.repl.ctl.Changed()
		if g := b.repl.ctl.State().GroupNamed(name); g == nil || ok(g) {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Elect asks the controller to elect a leader of a group (quiver admin
// elect) and answers with the group's new epoch and leader.
func (b *Broker) Elect(ctx context.Context, req *wire.Elect) (wire.EpochInfo, *wire.Error) {
	c := b.repl.ctl
	if c == nil {
		return wire.EpochInfo{}, &wire.Error{Code: wire.CodeInvalid, Message: "this broker runs without a controller: use quiver admin promote"}
	}
	if req.Flags&wire.ElectUnclean != 0 {
		b.logger.Error("UNCLEAN election asked for by an operator: a leader outside the in-sync set may lose acknowledged sends",
			"group", req.Group, "broker", req.Broker)
	}
	var before uint64
	if g := c.State().GroupNamed(req.Group); g != nil {
		before = g.Epoch
	}
	err := c.Request(ctx, &controller.Msg{Req: controller.ReqElect, Group: req.Group, Target: req.Broker, Unclean: req.Flags&wire.ElectUnclean != 0})
	if err == nil {
		// Answer with the new epoch: this broker's copy of the state may
		// not have it yet.
		err = b.waitGroup(ctx, req.Group, func(g *controller.Group) bool { return g.Epoch > before })
	}
	if err != nil {
		code := wire.CodeInvalid
		if strings.Contains(err.Error(), "no session") || errors.Is(err, context.DeadlineExceeded) {
			code = wire.CodeTimeout
		}
		return wire.EpochInfo{}, &wire.Error{Code: code, Message: err.Error()}
	}
	st := c.State()
	g := st.GroupNamed(req.Group)
	if g == nil {
		return wire.EpochInfo{}, &wire.Error{Code: wire.CodeInternal, Message: "elected, but the group is not in the state"}
	}
	info := wire.EpochInfo{Epoch: g.Epoch, Leader: g.Leader}
	if lb := st.Brokers[g.Leader]; lb != nil {
		info.LeaderAddr = lb.Addr
	}
	return info, nil
}

// controllerStatus is the controller section of the status document.
func (b *Broker) controllerStatus() *wire.ControllerStatus {
	o := b.opts.Replication.Controller
	cs := &wire.ControllerStatus{Voters: o.Voters, Groups: []wire.GroupControl{}}
	c := b.repl.ctl
	if c == nil {
		return cs
	}
	info, live, _, waiting, connected := c.View()
	cs.Connected, cs.LeaseMs = connected, c.LeaseLeft().Milliseconds()
	if info != nil {
		cs.Leader, cs.Term = info.Leader, info.Term
	}
	if svc := b.repl.svc.Load(); svc != nil {
		own := svc.Info()
		cs.RaftState, cs.LastContact = own.State, own.LastContact
		cs.Leader, cs.Term = own.Leader, own.Term
	}
	st := c.State()
	cs.Version = st.Index
	now := time.Now()
	for _, key := range slices.Sorted(maps.Keys(st.Groups)) {
		g := st.Groups[key]
		gc := wire.GroupControl{Name: g.Name, Leader: g.Leader, Epoch: g.Epoch, ISR: g.ISR, ISRVersion: g.ISRVersion, Eligible: g.ELR,
			Waiting: waiting[key], Topics: len(g.Topics), Members: []wire.MemberControl{}}
		if gc.Name == "" {
			gc.Name = g.Key
		}
		if lb := st.Brokers[g.Leader]; lb != nil {
			gc.LeaderAddr = lb.Addr
		}
		for _, id := range g.Members {
			m := wire.MemberControl{ID: id, AgeMs: -1, InSync: slices.Contains(g.ISR, id)}
			if br := st.Brokers[id]; br != nil {
				m.Addr = br.Addr
			}
			if age, ok := live[id]; ok && age >= 0 {
				m.Live, m.AgeMs = true, age
			}
			if l, ok := g.Left[id]; ok && !m.InSync {
				m.Left, m.LeftAgoMs = l.Reason, now.Sub(time.UnixMilli(l.AtMs)).Milliseconds()
			}
			gc.Members = append(gc.Members, m)
		}
		for _, e := range g.Elections {
			gc.Elections = append(gc.Elections, wire.ElectionStatus{Epoch: e.Epoch, From: e.From, To: e.To, Reason: e.Reason,
				Unclean: e.Unclean, At: time.UnixMilli(e.AtMs).UTC().Format(time.RFC3339Nano), LeaderlessMs: e.TookMs})
		}
		cs.Groups = append(cs.Groups, gc)
	}
	return cs
}

// controlledRoute describes the cluster from the controller's state: every
// registered broker with its group, its role there, the group's epoch and
// leader, and the group's topics; a broker without a live session is
// reported as not heard from lately.
func (b *Broker) controlledRoute() []wire.RouteBroker {
	c := b.repl.ctl
	if c == nil {
		return nil
	}
	st := c.State()
	_, live, at, _, _ := c.View()
	since := time.Since(at).Milliseconds()
	var out []wire.RouteBroker
	for _, id := range slices.Sorted(maps.Keys(st.Brokers)) {
		if id == b.opts.ID {
			continue
		}
		br := st.Brokers[id]
		g := st.Groups[br.Group]
		if g == nil {
			continue
		}
		r := wire.RouteBroker{ID: id, Group: g.Name, Addr: br.Addr, Role: "follower", Epoch: g.Epoch}
		if r.Group == "" {
			r.Group = g.Key
		}
		if g.Leader == id {
			r.Role = "leader"
		}
		if g.Leader == "" {
			r.Role = "waiting"
		}
		if lb := st.Brokers[g.Leader]; lb != nil {
			r.Leader = lb.Addr
		}
		for name, q := range g.Topics {
			r.Topics = append(r.Topics, wire.TopicInfo{Name: name, Queues: q})
		}
		sortTopics(r.Topics)
		if len(r.Topics) > wire.MaxRouteTopics {
			r.Topics = r.Topics[:wire.MaxRouteTopics]
		}
		switch age, ok := live[id]; {
		case ok && age >= 0:
			r.AgeMs = uint32(min(age+since, int64(^uint32(0)-1)))
		default:
			r.AgeMs = uint32(min(since+b.opts.Replication.Controller.Session.Milliseconds(), int64(^uint32(0)-1)))
			r.Err = "no live session with the controller"
		}
		out = append(out, r)
	}
	return out
}
