package sdk

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// TopicInfo is a topic and its number of queues.
type TopicInfo = wire.TopicInfo

// Status is a broker's status document (docs/operations.md).
type Status = wire.Status

// Admin manages topics and reads status. Get one with Client.Admin.
type Admin struct{ cl *Client }

// Admin returns the client's admin interface.
func (cl *Client) Admin() *Admin { return &Admin{cl: cl} }

// DeleteTopic deletes a topic on every broker group of the cluster: its
// messages are no longer readable (the log's records go with retention),
// its consume-queue files are removed, the consumer groups' committed
// offsets of it are dropped, and its name is free. Sends to it fail
// (UNKNOWN_TOPIC; with auto-create on, a send creates it again, empty).
// Deleting a topic that does not exist fails with UNKNOWN_TOPIC.
func (a *Admin) DeleteTopic(ctx context.Context, name string) error {
	t, err := a.cl.router.routes(ctx)
	if err != nil {
		return err
	}
	req := wire.DeleteTopic{Topic: name}
	err = a.everyGroup(ctx, t.names, wire.TypeDeleteTopic, req.Append)
	a.cl.router.unlearn(name)
	a.cl.router.stale()
	if err != nil {
		return fmt.Errorf("quiver: deleting topic %s: %w", name, err)
	}
	return nil
}

// everyGroup sends one request to every broker group at once, each
// retried while it fails with a retryable error, and joins the failures,
// each naming its group.
func (a *Admin) everyGroup(ctx context.Context, groups []string, typ wire.Type, payload func([]byte) []byte) error {
	errs := make([]error, len(groups))
	var wg sync.WaitGroup
	for i, g := range groups {
		wg.Add(1)
		go func() {
			defer wg.Done()
			err := retrying(ctx, func() error {
				call, err := a.cl.requestGroup(ctx, g, streamControl, typ, payload)
				if err == nil {
					call.release()
				}
				return err
			})
			if err != nil {
				errs[i] = fmt.Errorf("broker group %s: %w", g, err)
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// CreateTopic creates a topic with the given number of queues on every
// broker group of the cluster (on every one it was not created on yet).
// Creating a topic that exists with the same number of queues succeeds. A
// group that cannot be reached makes it fail, naming the group; calling it
// again creates the rest.
func (a *Admin) CreateTopic(ctx context.Context, name string, queues int) error {
	if queues < 1 || queues > wire.MaxQueues {
		return fmt.Errorf("quiver: %d queues (1..%d)", queues, wire.MaxQueues)
	}
	t, err := a.cl.router.routes(ctx)
	if err != nil {
		return err
	}
	req := wire.Create{Topic: name, Queues: uint32(queues)}
	if err := a.everyGroup(ctx, t.names, wire.TypeCreate, req.Append); err != nil {
		a.cl.router.stale()
		return fmt.Errorf("quiver: creating topic %s: %w", name, err)
	}
	// Every group has it. This client routes sends and consumers to all
	// of them at once, with the queues the routes will show (so a key maps
	// to the same queue before and after they do).
	a.cl.router.learn(name, t.names, uint32(queues))
	a.cl.router.stale()
	if len(t.names) == 1 {
		// One group: every client's routes come from it and map its keys
		// the same with or without the topic listed; no need to wait for a
		// refresh, which lists every topic (with tens of thousands,
		// creations waited on refresh after refresh).
		return nil
	}
	// Several: return once the routes show it on every group (the broker
	// answering for the cluster hears from the others about every second),
	// so that other clients, and quiver cluster, see it everywhere too: a
	// client whose routes showed it on one group would map keys over that
	// group's queues alone, and move them once its routes catch up.
	wait, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		if err := a.cl.router.refresh(wait); err == nil && len(a.cl.router.table().topics[name]) >= len(t.names) {
			return nil
		}
		select {
		case <-wait.Done():
			return nil
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// retrying runs f until it succeeds, fails for good, or ctx ends: a
// group that is electing a leader, or whose in-sync set is not complete
// yet, answers with a retryable error for a moment.
func retrying(ctx context.Context, f func() error) error {
	wait := 20 * time.Millisecond
	for {
		err := f()
		if err == nil || !Retryable(err) {
			return err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return err
		case <-t.C:
		}
		wait = min(2*wait, 500*time.Millisecond)
	}
}

// Topics lists the topics (all of them when no names are given; a named
// topic that does not exist has 0 queues), with their queues summed over
// the broker groups that host them, from fresh routes.
func (a *Admin) Topics(ctx context.Context, names ...string) ([]TopicInfo, error) {
	a.cl.router.start()
	if err := a.cl.router.refresh(ctx); err != nil {
		return nil, err
	}
	t := a.cl.router.table()
	if len(names) == 0 {
		for n := range t.topics {
			names = append(names, n)
		}
		a.cl.router.learned.Range(func(k, _ any) bool {
			if n := k.(string); len(t.topics[n]) == 0 && t.learnedTopic(n) != nil {
				names = append(names, n)
			}
			return true
		})
		sort.Strings(names)
	}
	out := make([]TopicInfo, 0, len(names))
	for _, n := range names {
		ti := TopicInfo{Name: n}
		for _, p := range t.partsOf(n) {
			ti.Queues += p.queues
		}
		out = append(out, ti)
	}
	return out, nil
}

// GroupInfo is one broker group as the client's routes show it.
type GroupInfo struct {
	Name      string
	Leader    string // address; "" when none is known
	Epoch     uint64
	Followers []string
	Topics    []TopicInfo // the topics it hosts, with its queues of each
}

// Cluster returns the broker groups as fresh routes show them, and every
// broker with what the answering broker last heard from it.
func (a *Admin) Cluster(ctx context.Context) ([]GroupInfo, []wire.RouteBroker, error) {
	a.cl.router.start()
	if err := a.cl.router.refresh(ctx); err != nil {
		return nil, nil, err
	}
	t := a.cl.router.table()
	var groups []GroupInfo
	for _, n := range t.names {
		g := t.groups[n]
		gi := GroupInfo{Name: n, Leader: g.leader, Epoch: g.epoch}
		for _, m := range g.members {
			if m != g.leader {
				gi.Followers = append(gi.Followers, m)
			}
		}
		for topic, parts := range t.topics {
			for _, p := range parts {
				if p.group == n {
					gi.Topics = append(gi.Topics, TopicInfo{Name: topic, Queues: p.queues})
				}
			}
		}
		sort.Slice(gi.Topics, func(i, j int) bool { return gi.Topics[i].Name < gi.Topics[j].Name })
		groups = append(groups, gi)
	}
	brokers := make([]wire.RouteBroker, 0, len(t.brokers))
	now := time.Now()
	for addr, b := range t.brokers {
		r := b.info
		r.Addr, r.Topics = addr, nil
		if b.heard.IsZero() {
			r.AgeMs = ^uint32(0)
		} else {
			r.AgeMs = uint32(min(now.Sub(b.heard).Milliseconds(), 1<<31))
		}
		brokers = append(brokers, r)
	}
	sort.Slice(brokers, func(i, j int) bool { return brokers[i].Addr < brokers[j].Addr })
	return groups, brokers, nil
}

// Describe asks the broker at addr to describe itself (id, group, role,
// epoch, topics, the brokers it knows of).
func (a *Admin) Describe(ctx context.Context, addr string) (wire.RouteBroker, error) {
	resp, err := a.cl.route(ctx, addr, wire.RouteSelf)
	if err != nil {
		return wire.RouteBroker{}, err
	}
	return resp.Brokers[0], nil
}

// Status returns the status document of one broker (the first reachable).
func (a *Admin) Status(ctx context.Context) (*Status, error) {
	return a.StatusOf(ctx, wire.StatusSel{})
}

// StatusOf is Status with the topics sel selects: one topic, or a page of
// them (Status lists the first wire.DefaultStatusTopics; the document
// counts them all and names the next page's From in TopicsNext).
func (a *Admin) StatusOf(ctx context.Context, sel wire.StatusSel) (*Status, error) {
	call, err := a.cl.requestAny(ctx, streamControl, wire.TypeStatus, sel.Append)
	if err != nil {
		return nil, err
	}
	defer call.release()
	doc, err := wire.DecodeStatusResp(call.resp)
	if err != nil {
		return nil, err
	}
	var s Status
	if err := json.Unmarshal(doc, &s); err != nil {
		return nil, fmt.Errorf("quiver: status document: %w", err)
	}
	return &s, nil
}

// EpochInfo is a broker's epoch and leader.
type EpochInfo = wire.EpochInfo

// Promote makes the follower at addr the
// leader of its group, with a new epoch; it tells the group's other
// brokers, so that an old leader stops taking writes. Promoting a leader
// does nothing. It returns the broker's epoch and leader afterwards.
func (a *Admin) Promote(ctx context.Context, addr string) (EpochInfo, error) {
	return epochInfoOf(a.cl.request(ctx, a.cl.conn(addr), streamControl, wire.TypePromote, func(b []byte) []byte { return b }))
}

// epochInfoOf decodes the EpochInfo a call was answered with.
func epochInfoOf(call *call, err error) (EpochInfo, error) {
	if err != nil {
		return EpochInfo{}, err
	}
	defer call.release()
	var info EpochInfo
	if err := wire.DecodeEpochInfo(call.resp, &info); err != nil {
		return EpochInfo{}, err
	}
	return info, nil
}

// Elect asks the controller (through any broker) to elect a new leader of
// group in a new epoch: broker when given and in the group's in-sync set,
// else the in-sync member with the most data, never the current leader.
// With unclean the controller may elect a member outside the in-sync set:
// that can lose sends the set acknowledged, and is logged as such; it is
// the last resort for a group whose in-sync members are all gone. Groups
// run without a controller answer INVALID (use Promote).
func (a *Admin) Elect(ctx context.Context, group, broker string, unclean bool) (EpochInfo, error) {
	req := wire.Elect{Group: group, Broker: broker}
	if unclean {
		req.Flags |= wire.ElectUnclean
	}
	info, err := epochInfoOf(a.cl.requestAny(ctx, streamControl, wire.TypeElect, req.Append))
	if err == nil {
		a.cl.router.stale()
	}
	return info, err
}
