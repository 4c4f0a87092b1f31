package sdk

import (
	"fmt"
	"reflect"
	"testing"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

func rb(id, group, addr, role string, epoch uint64, leader string, age uint32, topics ...wire.TopicInfo) wire.RouteBroker {
	return wire.RouteBroker{ID: id, Group: group, Addr: addr, Role: role, Epoch: epoch, Leader: leader, AgeMs: age, Topics: topics}
}

// Routes: groups with their leader first, topics over the groups that host
// them, the freshest description of each broker winning.
func TestRouteTable(t *testing.T) {
	now := time.Unix(1e9, 0)
	orders := wire.TopicInfo{Name: "orders", Queues: 4}
	got := []wire.RouteBroker{
		rb("a0", "ga", "a0:1", "leader", 1, "a0:1", 0, orders),
		rb("a1", "ga", "a1:1", "follower", 1, "a0:1", 300, orders),
		rb("b0", "gb", "b0:1", "leader", 3, "b0:1", 500, wire.TopicInfo{Name: "orders", Queues: 2}),
		rb("b1", "gb", "b1:1", "fenced", 2, "", 200), // an old leader, fenced
		rb("", "", "c0:1", "", 0, "", ^uint32(0)),    // never heard from
	}
	tab := (*routeTable)(nil).merge(got, "a0:1", nil, now)
	if !reflect.DeepEqual(tab.names, []string{"ga", "gb"}) {
		t.Fatalf("groups %v", tab.names)
	}
	if g := tab.groups["gb"]; g.leader != "b0:1" || g.epoch != 3 || !reflect.DeepEqual(g.members, []string{"b0:1", "b1:1"}) {
		t.Fatalf("group gb: %+v", g)
	}
	if p := tab.topics["orders"]; !reflect.DeepEqual(p, []topicPart{{"ga", 4}, {"gb", 2}}) || !reflect.DeepEqual(tab.hosts["orders"], []string{"ga", "gb"}) {
		t.Fatalf("orders: %+v %v", p, tab.hosts["orders"])
	}

	// A later answer from another broker: older news of b0 does not win,
	// fresher news of a0 (now fenced, its follower promoted) does.
	tab = tab.merge([]wire.RouteBroker{
		rb("a1", "ga", "a1:1", "leader", 2, "a1:1", 0, orders),
		rb("a0", "ga", "a0:1", "fenced", 1, "", 100),
		rb("b0", "gb", "b0:1", "follower", 3, "b1:1", 60000),
	}, "a1:1", nil, now.Add(time.Second))
	if g := tab.groups["ga"]; g.leader != "a1:1" || g.epoch != 2 {
		t.Fatalf("after the promotion, group ga: %+v", g)
	}
	if g := tab.groups["gb"]; g.leader != "b0:1" {
		t.Fatalf("stale news replaced gb's leader: %+v", g)
	}

	// A group whose leader nobody heard from: the one its follower follows.
	tab = (*routeTable)(nil).merge([]wire.RouteBroker{rb("x1", "gx", "x1:1", "follower", 1, "x0:1", 0)}, "x1:1", nil, now)
	if g := tab.groups["gx"]; g.leader != "x0:1" || !reflect.DeepEqual(g.members, []string{"x0:1", "x1:1"}) {
		t.Fatalf("leaderless group: %+v", g)
	}

	// Brokers not heard from for ten minutes are forgotten, unless they
	// are bootstrap addresses.
	tab = (*routeTable)(nil).merge(got, "a0:1", map[string]bool{"c0:1": true}, now)
	tab = tab.merge(nil, "a0:1", map[string]bool{"c0:1": true}, now.Add(11*time.Minute))
	if len(tab.brokers) != 1 || tab.brokers["c0:1"] == nil {
		t.Fatalf("after 11 minutes of silence: %v", tab.brokers)
	}
}

// Keys map to queues over every group's queues, evenly and stably, with
// the broker's hash.
func TestKeyQueue(t *testing.T) {
	parts := []topicPart{{"ga", 4}, {"gb", 2}}
	count := map[string]int{}
	for i := 0; i < 6000; i++ {
		key := []byte(fmt.Sprintf("customer-%d", i))
		g, q, idx, total := keyQueue(parts, key)
		if total != 6 || idx != wire.KeyHash(key)%6 {
			t.Fatalf("key %s: index %d of %d", key, idx, total)
		}
		g2, q2, _, _ := keyQueue(parts, key)
		if g != g2 || q != q2 {
			t.Fatal("a key moved")
		}
		count[fmt.Sprintf("%s/%d", g, q)]++
	}
	if len(count) != 6 {
		t.Fatalf("keys reached %d queues: %v", len(count), count)
	}
	for qq, n := range count {
		if n < 800 || n > 1200 {
			t.Fatalf("queue %s got %d of 6000 keys", qq, n)
		}
	}
	// FNV-1a, which the broker uses too.
	if wire.KeyHash([]byte("a")) != 0xe40c292c || wire.KeyHash(nil) != 0x811c9dc5 {
		t.Fatal("not FNV-1a")
	}
}

// A topic this client created is routed at once, with the queues of every
// group that created it, while the routes show it on fewer groups (the
// broker answering for the cluster hears from the others a second later):
// a key maps to the same queue before and after they do. Once they show
// it everywhere, or after learnedFor, the routes alone decide.
func TestCreatedTopicsBeforeTheRoutesShowThem(t *testing.T) {
	now := time.Now()
	got := []wire.RouteBroker{
		rb("a0", "ga", "a0:1", "leader", 1, "a0:1", 0, wire.TopicInfo{Name: "orders", Queues: 3}),
		rb("b0", "gb", "b0:1", "leader", 1, "b0:1", 0),
	}
	r := &router{changed: make(chan struct{}), cl: &Client{}, leaders: map[string]knownLeader{}}
	r.learn("orders", []string{"gb", "ga"}, 3)
	r.learn("fresh", []string{"ga", "gb"}, 2)
	r.publish((*routeTable)(nil).merge(got, "a0:1", nil, now))
	tab := r.table()
	want := []topicPart{{"ga", 3}, {"gb", 3}}
	if p := tab.partsOf("orders"); !reflect.DeepEqual(p, want) || !reflect.DeepEqual(tab.hostsOf("orders"), []string{"ga", "gb"}) {
		t.Fatalf("orders, shown on one group of two: %+v %v", p, tab.hostsOf("orders"))
	}
	if p := tab.partsOf("fresh"); !reflect.DeepEqual(p, []topicPart{{"ga", 2}, {"gb", 2}}) {
		t.Fatalf("fresh, not shown yet: %+v", p)
	}
	_, q1, _, _ := keyQueue(tab.partsOf("orders"), []byte("k"))

	// The routes show orders on both groups: its entry goes.
	got[1].Topics = []wire.TopicInfo{{Name: "orders", Queues: 3}}
	r.publish(tab.merge(got, "a0:1", nil, now.Add(time.Second)))
	tab = r.table()
	if _, ok := r.learned.Load("orders"); ok {
		t.Fatal("orders is still learned once the routes show it everywhere")
	}
	if p := tab.partsOf("orders"); !reflect.DeepEqual(p, want) {
		t.Fatalf("orders from the routes: %+v", p)
	}
	if _, q2, _, _ := keyQueue(tab.partsOf("orders"), []byte("k")); q2 != q1 {
		t.Fatalf("key k moved from queue %d to %d when the routes caught up", q1, q2)
	}
	// Deleted, or never shown within learnedFor: forgotten.
	r.unlearn("fresh")
	if p := tab.partsOf("fresh"); p != nil {
		t.Fatalf("fresh after unlearn: %+v", p)
	}
	r.learn("old", []string{"ga"}, 1)
	v, _ := r.learned.Load("old")
	v.(*learnedTopic).at = now.Add(-learnedFor)
	if p := tab.partsOf("old"); p != nil {
		t.Fatalf("a creation older than learnedFor: %+v", p)
	}
}

// movedLeaders over a sequence of routes: a move is a newer epoch led by
// another broker, also when the routes first name the new leader without
// its epoch (inferred from a follower: epoch 0), which used to hide it.
func TestMovedLeaders(t *testing.T) {
	type step struct {
		leader string
		epoch  uint64
		want   string // "old>new", or "" for no move
	}
	cases := []struct {
		name  string
		steps []step
	}{
		{"a failover", []step{{"x", 2, ""}, {"y", 3, "x>y"}}},
		{"the new leader named first without its epoch", []step{{"x", 2, ""}, {"y", 0, ""}, {"y", 3, "x>y"}}},
		{"no leader for a while", []step{{"x", 2, ""}, {"", 0, ""}, {"y", 3, "x>y"}}},
		{"the same leader in a new epoch", []step{{"x", 2, ""}, {"x", 3, ""}}},
		{"an older view", []step{{"x", 3, ""}, {"y", 2, ""}, {"x", 3, ""}}},
		{"the same epoch named with another leader", []step{{"x", 3, ""}, {"y", 3, ""}}},
		{"two moves", []step{{"x", 1, ""}, {"y", 2, "x>y"}, {"z", 0, ""}, {"x", 4, "y>x"}}},
	}
	for _, c := range cases {
		known := map[string]knownLeader{}
		for i, s := range c.steps {
			tab := &routeTable{groups: map[string]*groupRoute{"g": {name: "g", leader: s.leader, epoch: s.epoch}}}
			got := ""
			for _, m := range movedLeaders(known, tab) {
				got += m.old + ">" + m.new
				if m.group != "g" || m.epoch != s.epoch {
					t.Errorf("%s, step %d: move %+v", c.name, i, m)
				}
			}
			if got != s.want {
				t.Errorf("%s, step %d (%s@%d): moves %q, want %q", c.name, i, s.leader, s.epoch, got, s.want)
			}
		}
	}
}
