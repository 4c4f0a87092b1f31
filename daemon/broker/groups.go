package broker

import (
	"fmt"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// Session bounds a member may ask for.
const (
	minSession = 500 * time.Millisecond
	maxSession = 5 * time.Minute
)

// coordinator keeps every consumer group's membership and assignment.
type coordinator struct {
	b         *Broker
	topicsGen atomic.Uint64 // bumped when a topic is added: assignments are recomputed
	resetMu   sync.RWMutex  // commits (read) against forced resets (write)
	mu        sync.Mutex
	groups    map[string]*group
	// running is when the coordinator last saw its process run (the real
	// clock, whatever Options.Now says; see noteRunning).
	running time.Time
}

// A broker notes every stallTick that it runs; a gap of more than
// stallMin between two notes is a stall of the whole process (SIGSTOP, a
// paused VM, a swap storm), which must not count as its members' silence.
const (
	stallTick = 100 * time.Millisecond
	stallMin  = time.Second
)

type group struct {
	name       string
	generation uint64
	topicsGen  uint64
	members    map[string]*member
	// owner is who consumes a queue now (granted and not released); target
	// is who should. A queue moves when its owner releases it.
	owner  map[wire.QueueRef]string
	target map[wire.QueueRef]string
	// revoked: queues a forced reset took back from their owner (value),
	// left out of its assignments and refused its commits until it
	// reports them released.
	revoked map[wire.QueueRef]string
}

type member struct {
	id       string
	topics   []string // sorted
	session  time.Duration
	joined   time.Time
	lastSeen time.Time
}

func newCoordinator(b *Broker) *coordinator {
	return &coordinator{b: b, groups: map[string]*group{}, running: time.Now()}
}

// watchStalls notes that the process runs until stop is closed.
func (c *coordinator) watchStalls(stop <-chan struct{}) {
	every(stop, stallTick, nil, func() {
		c.mu.Lock()
		c.noteRunning(time.Now())
		c.mu.Unlock()
	})
}

// noteRunning records that the process runs at real time now. After a
// stall it moves every member's last heartbeat forward by the stall: a
// frozen coordinator heard nobody, and expiring its members for that
// would hand their queues to whichever member reported first, and the
// records they processed since their last commit would be read again.
// (c.mu held)
func (c *coordinator) noteRunning(now time.Time) {
	gap := now.Sub(c.running)
	c.running = now
	if gap <= stallMin {
		return
	}
	stalled := gap - stallTick
	n := 0
	for _, g := range c.groups {
		for _, m := range g.members {
			m.lastSeen = m.lastSeen.Add(stalled)
			n++
		}
	}
	if n > 0 {
		c.b.logger.Warn("the broker stalled: consumer group sessions extended by the stall", "stalled", stalled.Round(time.Millisecond), "members", n)
	}
}

func (c *coordinator) topicsChanged() { c.topicsGen.Add(1) }

// GroupSync handles a member's join, heartbeat or leave and returns its
// assignment.
func (b *Broker) GroupSync(req *wire.GroupSync) (wire.Assignment, *wire.Error) {
	if b.closed.Load() {
		return wire.Assignment{}, &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"}
	}
	if werr := b.writable(); werr != nil {
		return wire.Assignment{}, werr
	}
	if werr := validGroup(req.Group); werr != nil {
		return wire.Assignment{}, werr
	}
	for _, t := range req.Topics {
		// A topic that exists is fine whatever its name (older brokers
		// allowed more characters); a new one must be valid.
		if b.topic(t) == nil {
			if werr := validTopic(t); werr != nil {
				return wire.Assignment{}, werr
			}
		}
	}
	return b.groups.sync(req), nil
}

func (c *coordinator) sync(req *wire.GroupSync) wire.Assignment {
	now := c.b.opts.Now()
	c.mu.Lock()
	defer c.mu.Unlock()
	c.noteRunning(time.Now())
	g := c.groups[req.Group]
	if g == nil {
		g = &group{name: req.Group, members: map[string]*member{}, owner: map[wire.QueueRef]string{}, target: map[wire.QueueRef]string{},
			revoked: map[wire.QueueRef]string{}}
		c.groups[req.Group] = g
	}
	changed := g.expire(now, c.b)
	if req.Flags&wire.GroupLeave != 0 {
		if _, ok := g.members[req.Member]; ok {
			g.remove(req.Member)
			c.b.logger.Info("group member left", "group", g.name, "member", req.Member)
			changed = true
		}
		if changed {
			c.rebalance(g)
		}
		if len(g.members) == 0 {
			delete(c.groups, g.name)
		}
		return wire.Assignment{Generation: g.generation}
	}
	m := g.members[req.Member]
	if m == nil {
		m = &member{id: req.Member, joined: now}
		g.members[req.Member] = m
		changed = true
		c.b.logger.Info("group member joined", "group", g.name, "member", req.Member, "topics", req.Topics)
	}
	m.lastSeen = now
	m.session = min(max(time.Duration(req.SessionMs)*time.Millisecond, minSession), maxSession)
	topics := slices.Clone(req.Topics)
	sort.Strings(topics)
	topics = slices.Compact(topics)
	if !slices.Equal(topics, m.topics) {
		m.topics = topics
		changed = true
	}
	if changed || g.topicsGen != c.topicsGen.Load() {
		c.rebalance(g)
	}

	// What the member reports it consumes now: a queue it no longer lists
	// is released; one it lists and nobody owns is its own.
	owned := make(map[wire.QueueRef]bool, len(req.Owned))
	for _, q := range req.Owned {
		owned[q] = true
		if g.owner[q] == "" {
			g.owner[q] = m.id
		}
	}
	for q, o := range g.owner {
		if o == m.id && !owned[q] {
			delete(g.owner, q)
		}
	}
	for q, o := range g.revoked {
		if o == m.id && !owned[q] || g.members[o] == nil {
			delete(g.revoked, q) // released: it may be handed out again
		}
	}
	a := wire.Assignment{Generation: g.generation}
	for q, t := range g.target {
		if t != m.id {
			continue
		}
		switch o := g.owner[q]; {
		case g.revoked[q] != "":
			a.Pending = true // a forced reset took it back: released first
		case o == "" && now.Before(c.b.graceUntil()):
			// A leader that took over from another has no memberships yet:
			// the members still consuming (from followers, while there was no
			// leader) report what they hold within a heartbeat; until then a
			// queue nobody reported is not handed to another member, which
			// would read again what the holder read meanwhile.
			a.Pending = true
		case o == "" || o == m.id:
			g.owner[q] = m.id
			a.Queues = append(a.Queues, wire.Assigned{QueueRef: q, Committed: c.b.ctl.committed(g.name, q)})
		default:
			a.Pending = true // its old member has not released it yet
		}
	}
	sort.Slice(a.Queues, func(i, j int) bool { return lessRef(a.Queues[i].QueueRef, a.Queues[j].QueueRef) })
	return a
}

// expire removes members whose session ran out, releasing their queues.
func (g *group) expire(now time.Time, b *Broker) bool {
	changed := false
	for id, m := range g.members {
		if now.Sub(m.lastSeen) > m.session {
			g.remove(id)
			b.logger.Warn("group member expired: no heartbeat within its session", "group", g.name, "member", id,
				"session", m.session, "silent_for", now.Sub(m.lastSeen).Round(time.Millisecond))
			changed = true
		}
	}
	return changed
}

func (g *group) remove(id string) {
	delete(g.members, id)
	for q, o := range g.owner {
		if o == id {
			delete(g.owner, q)
		}
	}
}

// rebalance assigns every queue of the group's topics by range over the
// members subscribed to the topic, sorted by id.
func (c *coordinator) rebalance(g *group) {
	g.topicsGen = c.topicsGen.Load()
	target := map[wire.QueueRef]string{}
	subs := map[string][]string{}
	for id, m := range g.members {
		for _, t := range m.topics {
			subs[t] = append(subs[t], id)
		}
	}
	for t, ids := range subs {
		tp := c.b.topic(t)
		if tp == nil {
			continue // not created yet: assigned when it is
		}
		sort.Strings(ids)
		n, k := int(tp.queues), len(ids)
		for i, id := range ids {
			for q := i * n / k; q < (i+1)*n/k; q++ {
				target[wire.QueueRef{Topic: t, Queue: uint32(q)}] = id
			}
		}
	}
	if !mapsEqual(target, g.target) {
		g.target = target
		g.generation++
	}
}

func mapsEqual(a, b map[wire.QueueRef]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func lessRef(a, b wire.QueueRef) bool {
	if a.Topic != b.Topic {
		return a.Topic < b.Topic
	}
	return a.Queue < b.Queue
}

// Commit stores offsets for queues the member owns.
func (b *Broker) Commit(req *wire.Commit) *wire.Error {
	if b.closed.Load() {
		return &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"}
	}
	if werr := b.writable(); werr != nil {
		return werr
	}
	// A forced reset must not be overwritten by a commit that passed the
	// owner check before it (resetMu).
	b.groups.resetMu.RLock()
	defer b.groups.resetMu.RUnlock()
	if werr := b.groups.checkOwner(req); werr != nil {
		return werr
	}
	if err := b.ctl.appendCommit(req); err != nil {
		return b.storageErr(err)
	}
	return nil
}

func (c *coordinator) checkOwner(req *wire.Commit) *wire.Error {
	c.mu.Lock()
	defer c.mu.Unlock()
	g := c.groups[req.Group]
	if g == nil || g.members[req.Member] == nil {
		return &wire.Error{Code: wire.CodeFenced, Message: fmt.Sprintf("%s is not a member of group %s (left or expired)", req.Member, req.Group)}
	}
	for _, o := range req.Offsets {
		if g.owner[o.QueueRef] != req.Member {
			return &wire.Error{Code: wire.CodeFenced, Message: fmt.Sprintf("%s/%d is not owned by %s in group %s", o.Topic, o.Queue, req.Member, req.Group)}
		}
		if g.revoked[o.QueueRef] == req.Member {
			return &wire.Error{Code: wire.CodeFenced, Message: fmt.Sprintf("%s/%d of group %s was reset: it resumes from the new offset", o.Topic, o.Queue, req.Group)}
		}
	}
	return nil
}
