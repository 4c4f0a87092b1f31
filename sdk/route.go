package sdk

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// The client's routes: which broker groups there are, who leads each,
// and which groups host each topic's queues. They come from any broker
// (every broker keeps a view of the cluster, docs/architecture.md) and
// are refreshed every WithRouteRefresh and at once after a routing error.

// routeTable is one immutable snapshot of the routes.
type routeTable struct {
	at      time.Time
	source  string                  // the broker that answered last
	brokers map[string]*brokerRoute // by address
	groups  map[string]*groupRoute
	names   []string // group names, sorted
	topics  map[string][]topicPart
	hosts   map[string][]string // topic -> its groups' names, sorted
	// learned are the topics this client created that the routes did not
	// show yet (the router's, shared by its tables; see router.learn).
	learned *sync.Map // topic -> *learnedTopic
}

// learnedTopic is a topic every group answered OK to creating: its
// queues on each, as the routes will show them.
type learnedTopic struct {
	parts []topicPart
	hosts []string
	at    time.Time
}

// learnedFor is how long a created topic the routes do not show is
// taken as created (the routes show it within about a second).
const learnedFor = 30 * time.Second

// partsOf returns the topic's queues by group: from the routes, or from
// its creation by this client while the routes do not show it on every
// group that created it yet.
func (t *routeTable) partsOf(topic string) []topicPart {
	if l := t.learnedTopic(topic); l != nil {
		return l.parts
	}
	return t.topics[topic]
}

// hostsOf returns the groups hosting the topic, as partsOf does.
func (t *routeTable) hostsOf(topic string) []string {
	if l := t.learnedTopic(topic); l != nil {
		return l.hosts
	}
	return t.hosts[topic]
}

// learnedTopic is the topic as this client created it, when the routes
// show it on fewer groups (nil otherwise).
func (t *routeTable) learnedTopic(topic string) *learnedTopic {
	if t.learned == nil {
		return nil
	}
	v, ok := t.learned.Load(topic)
	if !ok {
		return nil
	}
	l := v.(*learnedTopic)
	if len(t.topics[topic]) >= len(l.parts) || time.Since(l.at) >= learnedFor {
		return nil
	}
	return l
}

type brokerRoute struct {
	info  wire.RouteBroker
	heard time.Time // zero: never heard from
}

// groupRoute is one broker group.
type groupRoute struct {
	name    string
	leader  string   // address; "" when none is known
	epoch   uint64   // of the leader
	members []string // leader first, then the others, freshest first
}

// topicPart is one group's share of a topic's queues.
type topicPart struct {
	group  string
	queues uint32
}

// forgetBroker drops a broker nobody heard from for this long (unless it
// is a bootstrap address).
const forgetBroker = 10 * time.Minute

// merge returns a table with prev's brokers updated by what got says,
// keeping for each broker the freshest description.
func (prev *routeTable) merge(got []wire.RouteBroker, source string, boot map[string]bool, now time.Time) *routeTable {
	t := &routeTable{at: now, source: source, brokers: map[string]*brokerRoute{}, groups: map[string]*groupRoute{}, topics: map[string][]topicPart{}}
	if prev != nil {
		for a, b := range prev.brokers {
			if boot[a] || (!b.heard.IsZero() && now.Sub(b.heard) < forgetBroker) {
				t.brokers[a] = b
			}
		}
	}
	for _, r := range got {
		if r.Addr == "" {
			continue
		}
		var heard time.Time
		if r.ID != "" && r.AgeMs != ^uint32(0) {
			heard = now.Add(-time.Duration(r.AgeMs) * time.Millisecond)
		}
		old := t.brokers[r.Addr]
		if old == nil || (!heard.IsZero() && heard.After(old.heard)) {
			r.Peers = nil
			t.brokers[r.Addr] = &brokerRoute{info: r, heard: heard}
		}
	}
	t.build()
	return t
}

// build derives the groups and the topics from the brokers.
func (t *routeTable) build() {
	type cand struct {
		addr string
		b    *brokerRoute
	}
	byGroup := map[string][]cand{}
	for a, b := range t.brokers {
		if b.info.Group != "" && !b.heard.IsZero() {
			byGroup[b.info.Group] = append(byGroup[b.info.Group], cand{a, b})
		}
	}
	for name, cs := range byGroup {
		sort.Slice(cs, func(i, j int) bool {
			if !cs[i].b.heard.Equal(cs[j].b.heard) {
				return cs[i].b.heard.After(cs[j].b.heard)
			}
			return cs[i].addr < cs[j].addr
		})
		g := &groupRoute{name: name}
		var lead *brokerRoute
		for _, c := range cs {
			if c.b.info.Role == "leader" && (lead == nil || c.b.info.Epoch > g.epoch) {
				lead, g.leader, g.epoch = c.b, c.addr, c.b.info.Epoch
			}
		}
		if lead == nil {
			// No leader heard from: the one its freshest follower follows.
			for _, c := range cs {
				if c.b.info.Leader != "" {
					g.leader = c.b.info.Leader
					break
				}
			}
		}
		if g.leader != "" {
			g.members = append(g.members, g.leader)
		}
		for _, c := range cs {
			if c.addr != g.leader {
				g.members = append(g.members, c.addr)
			}
		}
		// The group's topics: its leader's, else its freshest member's
		// (followers hold the same tables).
		src := cs[0].b
		if lead != nil {
			src = lead
		}
		for _, ti := range src.info.Topics {
			t.topics[ti.Name] = append(t.topics[ti.Name], topicPart{group: name, queues: ti.Queues})
		}
		t.groups[name] = g
		t.names = append(t.names, name)
	}
	sort.Strings(t.names)
	t.hosts = make(map[string][]string, len(t.topics))
	for topic, parts := range t.topics {
		sort.Slice(parts, func(i, j int) bool { return parts[i].group < parts[j].group })
		names := make([]string, len(parts))
		for i, p := range parts {
			names[i] = p.group
		}
		t.hosts[topic] = names
	}
}

// keyQueue maps a key to one queue of a topic: FNV-1a of the key over the
// topic's queues in group-name order. The broker uses the same hash when
// it picks the queue of a keyed message itself.
func keyQueue(parts []topicPart, key []byte) (group string, queue uint32, index, total uint32) {
	for _, p := range parts {
		total += p.queues
	}
	index = wire.KeyHash(key) % total
	return queueAt(parts, index), queueIn(parts, index), index, total
}

func queueAt(parts []topicPart, i uint32) string {
	for _, p := range parts {
		if i < p.queues {
			return p.group
		}
		i -= p.queues
	}
	return ""
}

func queueIn(parts []topicPart, i uint32) uint32 {
	for _, p := range parts {
		if i < p.queues {
			return i
		}
		i -= p.queues
	}
	return 0
}

// router owns the client's routes.
type router struct {
	cl      *Client
	mu      sync.Mutex // one refresh at a time
	cur     *routeTable
	curMu   sync.RWMutex
	kick    chan struct{}
	changed chan struct{} // closed (and replaced) by each refresh
	started sync.Once
	boot    map[string]bool
	// lastStart is when the last refresh that succeeded began (mu held).
	lastStart time.Time
	// leaders is each group's newest leader whose epoch the routes named
	// (mu held): leadersMoved compares new routes with it.
	leaders map[string]knownLeader
	learned sync.Map // see routeTable.learned
}

// learn records a topic every one of groups answered OK to creating with
// queues each: the client routes to it and consumes it at once, without
// waiting for a refresh (which lists every topic: with tens of thousands,
// creating them waited on refresh after refresh).
func (r *router) learn(topic string, groups []string, queues uint32) {
	l := &learnedTopic{at: time.Now(), hosts: slices.Clone(groups)}
	sort.Strings(l.hosts)
	for _, g := range l.hosts {
		l.parts = append(l.parts, topicPart{group: g, queues: queues})
	}
	r.learned.Store(topic, l)
}

// unlearn forgets a created topic (deleted since).
func (r *router) unlearn(topic string) { r.learned.Delete(topic) }

// updated returns a channel closed when the routes are next refreshed.
func (r *router) updated() <-chan struct{} {
	r.curMu.RLock()
	defer r.curMu.RUnlock()
	return r.changed
}

func (r *router) table() *routeTable {
	r.curMu.RLock()
	defer r.curMu.RUnlock()
	return r.cur
}

// routes returns the current routes, fetching them first if there are none.
func (r *router) routes(ctx context.Context) (*routeTable, error) {
	if t := r.table(); t != nil {
		return t, nil
	}
	r.start()
	r.mu.Lock()
	defer r.mu.Unlock()
	if t := r.table(); t != nil {
		return t, nil // fetched while this one waited: concurrent first sends fetch once
	}
	if err := r.refreshLocked(ctx); err != nil {
		return nil, err
	}
	return r.table(), nil
}

// start runs the refresh loop, once.
func (r *router) start() {
	r.started.Do(func() { r.cl.goBg(r.loop) })
}

// stale asks for a refresh soon (after a routing error).
func (r *router) stale() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// troubledRefresh is how often the routes are refreshed while a broker is
// set aside or silent (a leader may be being replaced).
const troubledRefresh = 200 * time.Millisecond

func (r *router) loop() {
	every := r.cl.cfg.routeRefresh
	t := time.NewTimer(every)
	defer t.Stop()
	var last time.Time
	for {
		select {
		case <-t.C:
		case <-r.kick:
			// At most ten refreshes a second, however many errors.
			if wait := 100*time.Millisecond - time.Since(last); wait > 0 {
				select {
				case <-time.After(wait):
				case <-r.cl.ctx.Done():
					return
				}
			}
		case <-r.cl.ctx.Done():
			return
		}
		last = time.Now()
		ctx, cancel := context.WithTimeout(r.cl.ctx, max(every, 2*time.Second))
		if err := r.refresh(ctx); err != nil && r.cl.ctx.Err() == nil {
			r.cl.logger.Debug("route refresh failed", "err", err)
		}
		cancel()
		r.cl.reportAside()
		next := every
		if r.cl.faults.troubled() {
			next = min(every, troubledRefresh)
		}
		if !t.Stop() {
			select {
			case <-t.C:
			default:
			}
		}
		t.Reset(next)
	}
}

// refresh asks one broker for the cluster (the last one that answered
// first, then the others), and each bootstrap broker the answer does not
// describe for itself.
// refresh fetches the routes, unless a refresh that began after this call
// succeeded while it waited for its turn: concurrent callers (many
// CreateTopic at once, each to see its topic) share one refresh instead
// of queueing one each, each of which lists every topic.
func (r *router) refresh(ctx context.Context) error {
	called := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.lastStart.After(called) {
		return nil
	}
	start := time.Now()
	err := r.refreshLocked(ctx)
	if err == nil {
		r.lastStart = start
	}
	return err
}

func (r *router) refreshLocked(ctx context.Context) error {
	prev := r.table()
	var order []string
	seen := map[string]bool{}
	add := func(a string) {
		if a != "" && !seen[a] {
			seen[a] = true
			order = append(order, a)
		}
	}
	if prev != nil {
		add(prev.source)
	}
	for _, a := range r.cl.cfg.brokers {
		add(a)
	}
	if prev != nil {
		for _, n := range prev.names {
			for _, a := range prev.groups[n].members {
				add(a)
			}
		}
	}
	got, source, tried, errs, hard := r.askFirst(ctx, order)
	if source == "" {
		if hard != nil {
			return hard // not the network's: retrying will not help (incident 004)
		}
		if err := ctx.Err(); errors.Is(err, context.Canceled) {
			// The caller gave up: the attempt reads CANCELLED, not NETWORK.
			// (A passed deadline stays a network failure: no broker answered
			// in time, and trying again later may well work.)
			return fmt.Errorf("quiver: route request cancelled (%s): %w", strings.Join(errs, "; "), err)
		}
		return &NetError{Broker: strings.Join(tried, ","), Err: fmt.Errorf("no broker answered for routes: %s", strings.Join(errs, "; "))}
	}
	got = append(got, r.askBootstrap(got, source)...)
	r.publish(prev.merge(got, source, r.boot, time.Now()))
	return nil
}

// routeStagger is how long a route request may go unanswered before the
// next broker is asked as well (happy eyeballs, RFC 8305's 250 ms): a
// bootstrap broker that is down or cut off costs that, not a dial
// timeout, whatever the order of the list.
const routeStagger = 250 * time.Millisecond

// askFirst asks the brokers of order for the cluster, the next one as
// soon as the last failed or after routeStagger, until one answers; the
// others are then cancelled. Without an answer it returns which brokers
// were tried with their errors, and the first error retrying cannot fix.
func (r *router) askFirst(ctx context.Context, order []string) (got []wire.RouteBroker, source string, tried, errs []string, hard error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type answer struct {
		addr string
		resp wire.RouteResp
		err  error
	}
	answers := make(chan answer, len(order))
	next, pending := 0, 0
	stagger := time.NewTimer(routeStagger)
	defer stagger.Stop()
	ask := func() {
		a := order[next]
		next++
		pending++
		go func() {
			resp, err := r.cl.route(ctx, a, 0)
			answers <- answer{a, resp, err}
		}()
		stagger.Reset(routeStagger)
	}
	ask()
	for pending > 0 {
		select {
		case an := <-answers:
			pending--
			if an.err == nil {
				if source == "" {
					got, source = an.resp.Brokers, an.addr
					cancel()
				}
				continue
			}
			if source != "" {
				continue // cancelled: another broker answered
			}
			if !Retryable(an.err) && hard == nil {
				hard = an.err
			}
			tried = append(tried, an.addr)
			errs = append(errs, strings.TrimPrefix(an.err.Error(), "quiver: "))
			if next < len(order) && ctx.Err() == nil {
				ask()
			}
		case <-stagger.C:
			if next < len(order) && source == "" && ctx.Err() == nil {
				ask()
			}
		}
	}
	return got, source, tried, errs, hard
}

// askBootstrap asks the bootstrap brokers that the answer got (from
// source) does not describe first hand (a broker configured with no
// cluster knows only itself) to describe themselves. It waits for them
// up to routeStagger; an answer that comes later is merged when it comes,
// so that one silent bootstrap broker does not hold up a send or an admin
// request that is waiting for the routes.
func (r *router) askBootstrap(got []wire.RouteBroker, source string) []wire.RouteBroker {
	described := map[string]bool{}
	for _, b := range got {
		if b.ID != "" {
			described[b.Addr] = true
		}
	}
	var ask []string
	for _, a := range r.cl.cfg.brokers {
		if !described[a] && a != source {
			ask = append(ask, a)
		}
	}
	if len(ask) == 0 {
		return nil
	}
	var mu sync.Mutex
	var self []wire.RouteBroker
	waiting, pending := true, len(ask)
	all := make(chan struct{})
	// answered counts one answer (nil: none) and says whether it is late.
	answered := func(brokers []wire.RouteBroker) (late bool) {
		mu.Lock()
		defer mu.Unlock()
		if pending--; pending == 0 {
			close(all)
		}
		if waiting {
			self = append(self, brokers...)
		}
		return !waiting
	}
	for _, a := range ask {
		asked := r.cl.goBg(func() {
			resp, err := r.cl.route(r.cl.ctx, a, wire.RouteSelf)
			if err != nil {
				answered(nil)
			} else if answered(resp.Brokers) {
				r.mergeLate(resp.Brokers)
			}
		})
		if !asked {
			answered(nil) // the client is closed
		}
	}
	t := time.NewTimer(routeStagger)
	defer t.Stop()
	select {
	case <-all:
	case <-t.C:
	}
	mu.Lock()
	defer mu.Unlock()
	waiting = false
	return self
}

// mergeLate merges a bootstrap broker's late description of itself into
// the current routes.
func (r *router) mergeLate(got []wire.RouteBroker) {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev := r.table()
	if prev == nil || r.cl.ctx.Err() != nil {
		return
	}
	r.publish(prev.merge(got, prev.source, r.boot, time.Now()))
}

// publish makes t the current routes and wakes whoever waits for a change.
func (r *router) publish(t *routeTable) {
	// Created topics the routes now show, or that they have not shown for
	// too long, need no entry of their own.
	r.learned.Range(func(k, v any) bool {
		if len(t.topics[k.(string)]) >= len(v.(*learnedTopic).parts) || time.Since(v.(*learnedTopic).at) >= learnedFor {
			r.learned.Delete(k)
		}
		return true
	})
	t.learned = &r.learned
	r.curMu.Lock()
	r.cur = t
	close(r.changed)
	r.changed = make(chan struct{})
	r.curMu.Unlock()
	r.cl.leadersMoved(movedLeaders(r.leaders, t))
}

// knownLeader is a group's leader in an epoch.
type knownLeader struct {
	addr  string
	epoch uint64
}

// leaderMove: group's leader old was replaced by new in epoch.
type leaderMove struct {
	group, old, new string
	epoch           uint64
}

// movedLeaders returns the groups whose leader t names in a newer epoch
// than known does, led by another broker, and records t's leaders in
// known. A leader t names without its epoch (0: inferred from what a
// follower follows, before any broker of the group said it leads) is not
// recorded: a move seen first that way is acted on once the epoch comes,
// against the leader before it. (Compared with the previous routes, that
// step hid the move: epoch 0 is not newer, and the next routes named the
// same leader, so sends waiting on the dead leader waited out their
// attempt.)
func movedLeaders(known map[string]knownLeader, t *routeTable) []leaderMove {
	var moves []leaderMove
	for name, ng := range t.groups {
		if ng.leader == "" || ng.epoch == 0 {
			continue
		}
		k, ok := known[name]
		if ok && ng.epoch < k.epoch {
			continue // an older view
		}
		known[name] = knownLeader{ng.leader, ng.epoch}
		if ok && k.addr != ng.leader && ng.epoch > k.epoch {
			moves = append(moves, leaderMove{group: name, old: k.addr, new: ng.leader, epoch: ng.epoch})
		}
	}
	return moves
}

// errLeaderMoved fails the requests still waiting on a group's old
// leader once the routes name a new one (a failover): they are retried on
// the new leader at once instead of waiting out their time on a broker
// that is gone or no longer leads. (A send the old leader did store is
// then stored twice: delivery is at least once.)
var errLeaderMoved = errors.New("the group has a new leader")

// leadersMoved fails the sends in flight to the leaders that moves
// replaced (a newer epoch led by another broker).
func (cl *Client) leadersMoved(moves []leaderMove) {
	if len(moves) == 0 {
		return
	}
	defer func() {
		cl.moved.Lock()
		if cl.moved.ch != nil {
			close(cl.moved.ch)
			cl.moved.ch = nil
		}
		cl.moved.Unlock()
	}()
	for _, m := range moves {
		cl.connMu.RLock()
		bc := cl.conns[m.old]
		cl.connMu.RUnlock()
		if bc == nil {
			continue
		}
		if s := bc.live(); s != nil {
			// Sends, fetches (long polls that would wait out their time on
			// a dead broker) and group requests: they go on to the new
			// leader.
			for _, role := range []int{streamProduce, streamFetch, streamControl} {
				if st := s.streams[role]; st != nil {
					st.failPending(&NetError{Broker: m.old, Err: fmt.Errorf("%w: %s leads group %s in epoch %d", errLeaderMoved, m.new, m.group, m.epoch)})
				}
			}
		}
	}
}

// route sends one Route request to addr.
func (cl *Client) route(ctx context.Context, addr string, flags uint8) (wire.RouteResp, error) {
	var resp wire.RouteResp
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req := wire.Route{Flags: flags}
	c, err := cl.request(ctx, cl.conn(addr), streamControl, wire.TypeRoute, req.Append)
	if err != nil {
		return resp, err
	}
	defer c.release()
	if err := wire.DecodeRouteResp(c.resp, &resp); err != nil {
		return resp, fmt.Errorf("quiver: route from %s: %w", addr, err)
	}
	if len(resp.Brokers) > 0 {
		// The answering broker, as this client reaches it (which is how the
		// bootstrap list and the next refresh know it).
		resp.Brokers[0].Addr = addr
	}
	return resp, nil
}

// groupMembers lists the addresses to try for a request to group: the
// leader first, then the followers; brokers set aside go last.
func (cl *Client) groupMembers(t *routeTable, group string) []string {
	g := t.groups[group]
	if g == nil {
		return nil
	}
	out := make([]string, 0, len(g.members))
	var aside []string
	for _, a := range g.members {
		if cl.faults.usable(a) {
			out = append(out, a)
		} else {
			aside = append(aside, a)
		}
	}
	return append(out, aside...)
}

// requestGroup sends a request to a broker group: to its leader, then
// its followers (which serve reads and answer writes with NOT_LEADER),
// while the failure is retryable. Failures that say something about a
// broker are remembered (fault avoidance); NOT_LEADER refreshes the
// routes.
func (cl *Client) requestGroup(ctx context.Context, group string, role int, typ wire.Type, payload func([]byte) []byte) (*call, error) {
	t, err := cl.router.routes(ctx)
	if err != nil {
		return nil, err
	}
	members := cl.groupMembers(t, group)
	if len(members) == 0 {
		cl.router.stale()
		return nil, &NetError{Broker: "group " + group, Err: errors.New("no broker of this group is known")}
	}
	var addrs, msgs []string
	for _, a := range members {
		start := time.Now()
		c, err := cl.request(ctx, cl.conn(a), role, typ, payload)
		if err == nil {
			return c, nil
		}
		if !Retryable(err) {
			return nil, err // an answer another broker would give too
		}
		if isNotLeader(err) {
			cl.router.stale()
		} else if brokerFault(err) && ctx.Err() == nil {
			cl.faults.sent(a, time.Since(start), err, false)
		}
		addrs = append(addrs, a)
		msgs = append(msgs, strings.TrimPrefix(err.Error(), "quiver: "))
		if ctx.Err() != nil {
			break
		}
	}
	if len(msgs) == 1 {
		return nil, &NetError{Broker: addrs[0], Err: errors.New(strings.TrimPrefix(msgs[0], "broker "+addrs[0]+": "))}
	}
	return nil, &NetError{Broker: strings.Join(addrs, ","), Err: fmt.Errorf("no broker of group %s answered: %s", group, strings.Join(msgs, "; "))}
}

func isNotLeader(err error) bool {
	var be *wire.Error
	return errors.As(err, &be) && be.Code == wire.CodeNotLeader
}
