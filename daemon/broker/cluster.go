package broker

import (
	"context"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// ClusterOptions say how a broker learns the cluster: the broker groups
// around it. There is no name server: every broker asks the brokers it
// knows of (its replication peers, Seeds, and those they know of) for
// their own description, every Refresh, and answers clients' Route
// requests with what it heard.
type ClusterOptions struct {
	// Group names this broker's group. Empty: the id of the broker that
	// led the group's first epoch, which every member of the group knows
	// from the epoch history and which never changes.
	Group string
	// Seeds are addresses of other brokers of the cluster, in any group.
	Seeds []string
	// Refresh is how often each known broker is asked (default 1s).
	Refresh time.Duration
	// Ask asks the broker at addr for its own description (RouteSelf).
	// Nil: the broker knows only itself.
	Ask func(ctx context.Context, addr string) (wire.RouteBroker, error)
}

// forgetAfter drops a learned (not configured) address that did not
// answer for this long.
const forgetAfter = 10 * time.Minute

type cluster struct {
	ctx    context.Context // ends when the broker closes
	cancel context.CancelFunc
	mu     sync.Mutex
	peers  map[string]*peerView // by address
	self   map[string]bool      // other addresses of this broker: never asked
	wg     sync.WaitGroup
}

// peerView is what this broker last heard from another.
type peerView struct {
	addr       string
	configured bool
	added      time.Time
	info       wire.RouteBroker // the last good answer (ID "" until one)
	heard      time.Time
	err        string
	lastLogged bool // its silence was logged (its return will be)
}

// startCluster starts asking the configured brokers, when there is a way
// to ask them.
func (b *Broker) startCluster() {
	o := &b.opts.Cluster
	if o.Refresh <= 0 {
		o.Refresh = time.Second
	}
	b.cluster.peers, b.cluster.self = map[string]*peerView{}, map[string]bool{}
	b.cluster.ctx, b.cluster.cancel = context.WithCancel(context.Background())
	if o.Ask == nil || b.controlled() {
		return // under a controller, its state describes the cluster
	}
	for _, a := range append(append([]string(nil), b.opts.Replication.Peers...), o.Seeds...) {
		b.learn(a, true)
	}
}

// learn adds an address to ask, and starts asking it.
func (b *Broker) learn(addr string, configured bool) {
	if addr == "" || b.opts.Cluster.Ask == nil || addr == b.advertise() {
		return
	}
	c := &b.cluster
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.peers[addr]; p != nil {
		p.configured = p.configured || configured
		return
	}
	if c.self[addr] {
		return
	}
	if c.ctx.Err() != nil || len(c.peers) >= wire.MaxRouteBrokers-1 {
		return
	}
	p := &peerView{addr: addr, configured: configured, added: time.Now()}
	c.peers[addr] = p
	c.wg.Add(1)
	go b.watchPeer(p)
}

// watchPeer asks one broker for its description every Refresh, until the
// broker stops or a learned address stays silent for forgetAfter.
func (b *Broker) watchPeer(p *peerView) {
	defer b.cluster.wg.Done()
	o := b.opts.Cluster
	t := time.NewTicker(o.Refresh)
	defer t.Stop()
	for {
		ctx, cancel := context.WithTimeout(b.cluster.ctx, max(o.Refresh, time.Second))
		info, err := o.Ask(ctx, p.addr)
		cancel()
		now := time.Now()
		var learned []string
		c := &b.cluster
		c.mu.Lock()
		wasSilent, silent := p.err != "" || p.heard.IsZero(), err != nil
		if err == nil {
			if info.ID == b.opts.ID {
				// Our own address under another name: stop asking it, and
				// do not learn it again from the peers that list it.
				delete(c.peers, p.addr)
				c.self[p.addr] = true
				c.mu.Unlock()
				return
			}
			info.Addr, info.AgeMs, info.Err = p.addr, 0, ""
			p.info, p.heard, p.err = info, now, ""
			learned = append(learned, info.Peers...)
			if info.Leader != "" {
				learned = append(learned, info.Leader)
			}
		} else {
			p.err = err.Error()
			last := p.heard
			if last.IsZero() {
				last = p.added
			}
			if !p.configured && now.Sub(last) > forgetAfter {
				delete(c.peers, p.addr)
				c.mu.Unlock()
				b.logger.Info("forgetting a broker that stopped answering", "addr", p.addr, "silent_for", now.Sub(last).Round(time.Second))
				return
			}
		}
		c.mu.Unlock()
		// One line when a broker stops answering and one when it is back,
		// not one per question.
		switch {
		case silent && !wasSilent:
			b.logger.Warn("a broker of the cluster stopped answering", "addr", p.addr, "err", err)
		case !silent && wasSilent && p.lastLogged:
			b.logger.Info("a broker of the cluster answers again", "addr", p.addr, "id", info.ID, "group", info.Group)
		}
		if silent && !wasSilent {
			p.lastLogged = true
		} else if !silent {
			p.lastLogged = false
		}
		for _, a := range learned {
			b.learn(a, false)
		}
		select {
		case <-t.C:
		case <-b.cluster.ctx.Done():
			return
		}
	}
}

// group is this broker's group name ("" while a new follower has not
// learned its group's history).
func (b *Broker) group() string {
	if g := b.opts.Cluster.Group; g != "" {
		return g
	}
	if st := b.repl.latest.Load(); st != nil {
		if g := st.Groups[b.groupKey()]; g != nil && g.Name != "" {
			return g.Name
		}
	}
	if b.repl.epochs == nil {
		return b.opts.ID
	}
	if es := b.repl.epochs.All(); len(es) > 0 {
		return es[0].Leader
	}
	return ""
}

// self describes this broker as its peers and clients see it.
func (b *Broker) self(withPeers bool) wire.RouteBroker {
	r := wire.RouteBroker{ID: b.opts.ID, Group: b.group(), Addr: b.advertise(), Role: roleNames[b.repl.role.Load()]}
	if b.controlled() {
		r.Epoch = b.repl.epoch.Load() // the epoch of its role, as the controller gave it
	} else if b.repl.epochs != nil {
		r.Epoch = b.repl.epochs.Last().Epoch
	}
	switch b.repl.role.Load() {
	case roleLeader:
		r.Leader = r.Addr
	case roleFollower:
		b.repl.mu.Lock()
		if f := b.repl.follower; f != nil {
			r.Leader = f.LeaderAddr()
		}
		b.repl.mu.Unlock()
	}
	r.Topics = b.Metadata(nil).Topics
	if len(r.Topics) > wire.MaxRouteTopics {
		r.Topics = r.Topics[:wire.MaxRouteTopics]
	}
	if withPeers {
		b.cluster.mu.Lock()
		for a, p := range b.cluster.peers {
			// Not the ones gone silent: a broker that forgot a dead
			// address would learn it again from this list.
			if p.configured || p.err == "" {
				r.Peers = append(r.Peers, a)
			}
		}
		b.cluster.mu.Unlock()
		sort.Strings(r.Peers)
	}
	return r
}

// Route answers a Route request: this broker, then every broker it knows
// of with what it last heard from it.
func (b *Broker) Route(m wire.Route) wire.RouteResp {
	resp := wire.RouteResp{Brokers: []wire.RouteBroker{b.self(m.Flags&wire.RouteSelf != 0)}}
	if m.Flags&wire.RouteSelf != 0 {
		return resp
	}
	if b.controlled() {
		resp.Brokers = append(resp.Brokers, b.controlledRoute()...)
	} else {
		resp.Brokers = append(resp.Brokers, b.clusterView()...)
	}
	return resp
}

// clusterView is what this broker heard from the others, by address.
func (b *Broker) clusterView() []wire.RouteBroker {
	now := time.Now()
	c := &b.cluster
	c.mu.Lock()
	out := make([]wire.RouteBroker, 0, len(c.peers))
	for _, p := range c.peers {
		r := p.info
		r.Addr, r.Err, r.Peers = p.addr, p.err, nil
		if len(r.Err) > 1000 {
			r.Err = r.Err[:1000]
		}
		if p.heard.IsZero() {
			r.AgeMs = ^uint32(0)
		} else {
			r.AgeMs = uint32(min(now.Sub(p.heard).Milliseconds(), int64(^uint32(0)-1)))
		}
		out = append(out, r)
	}
	c.mu.Unlock()
	slices.SortFunc(out, func(x, y wire.RouteBroker) int {
		switch {
		case x.Addr < y.Addr:
			return -1
		case x.Addr > y.Addr:
			return 1
		}
		return 0
	})
	return out
}

func (b *Broker) stopCluster() {
	if b.cluster.cancel != nil {
		b.cluster.cancel()
	}
	b.cluster.wg.Wait()
}
