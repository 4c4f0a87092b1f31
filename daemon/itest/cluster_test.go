package itest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// clusterClient is a client that starts from one broker of the cluster,
// returned once it sees every group and broker.
func clusterClient(t *testing.T, c *testbroker.Cluster, opts ...sdk.Opt) *sdk.Client {
	t.Helper()
	cl := c.Client(append([]sdk.Opt{sdk.WithRouteRefresh(500 * time.Millisecond)}, opts...)...)
	testbroker.WaitFor(t, "the client to see every group", func() bool {
		groups, _, err := cl.Admin().Cluster(context.Background())
		if err != nil || len(groups) != len(c.Groups) {
			return false
		}
		for i, g := range groups {
			if g.Leader != c.Groups[i].Leader.Addr || len(g.Followers) != len(c.Groups[i].Followers) {
				return false
			}
		}
		return true
	})
	return cl
}

// A client that knows one broker learns every group, leader and follower
// from it; a topic created through it has queues on every group; messages
// without a key spread over the groups, messages with a key stay in their
// key's queue and are consumed in order; a consumer group reads every
// message once.
func TestClusterRoutesAndSpreads(t *testing.T) {
	c := testbroker.StartCluster(t, 2, 1, nil, nil)
	cl := clusterClient(t, c) // from g0's leader only
	ctx := ctxT(t, 60*time.Second)
	groups, _, _ := cl.Admin().Cluster(ctx)
	if groups[1].Name != "g1" || groups[1].Followers[0] != c.Groups[1].Followers[0].Addr {
		t.Fatalf("group g1 as the client sees it: %+v", groups[1])
	}
	if err := cl.Admin().CreateTopic(ctx, "orders", 3); err != nil {
		t.Fatal(err)
	}
	infos, err := cl.Admin().Topics(ctx, "orders")
	if err != nil || infos[0].Queues != 6 {
		t.Fatalf("orders over two groups: %+v %v", infos, err)
	}
	p, _ := cl.NewProducer()
	defer p.Close()
	byGroup := map[string]int{}
	keyQueue := map[string]string{}
	const n = 600
	for i := 0; i < n; i++ {
		m := &sdk.Message{Topic: "orders", Body: []byte(fmt.Sprint(i))}
		if i%2 == 1 {
			m.Key = []byte(fmt.Sprintf("customer-%d", i%10))
		}
		res, err := p.Send(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		byGroup[res.Group]++
		if m.Key != nil {
			at := fmt.Sprintf("%s/%d", res.Group, res.Queue)
			if prev, ok := keyQueue[string(m.Key)]; ok && prev != at {
				t.Fatalf("key %s went to %s, then %s", m.Key, prev, at)
			}
			keyQueue[string(m.Key)] = at
		}
	}
	if byGroup["g0"] < n/4 || byGroup["g1"] < n/4 {
		t.Fatalf("sends by group: %v", byGroup)
	}
	msgs := consumeN(t, ctx, cl, "billing", "orders", n)
	seen := map[string]bool{}
	last := map[string]int{}
	for _, m := range msgs {
		if seen[string(m.Body)] {
			t.Fatalf("message %s consumed twice", m.Body)
		}
		seen[string(m.Body)] = true
		if len(m.Key) > 0 {
			var i int
			fmt.Sscan(string(m.Body), &i)
			if prev, ok := last[string(m.Key)]; ok && prev > i {
				t.Fatalf("key %s: %d consumed after %d", m.Key, i, prev)
			}
			last[string(m.Key)] = i
		}
	}
}

// Incident 002, producer side: a broker group's leader killed under load.
// With the default deadline no send fails; after its first failure the
// dead broker gets no more than probes; consumers keep reading the other
// groups' queues.
func TestIncident002BrokerKilled(t *testing.T) {
	c := testbroker.StartCluster(t, 3, 0, nil, nil)
	cl := clusterClient(t, c)
	ctx := ctxT(t, 90*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "events", 2); err != nil {
		t.Fatal(err)
	}
	dead := c.Groups[1].Leader
	cons, err := cl.NewConsumer("audit", []string{"events"})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	testbroker.WaitFor(t, "the consumer to hold all 6 queues", func() bool { return len(cons.Assigned()) == 6 })
	var mu sync.Mutex
	received := map[string]bool{}
	rctx, rstop := context.WithCancel(ctx)
	defer rstop()
	go cons.Run(rctx, func(_ context.Context, m *sdk.Message) error {
		mu.Lock()
		received[string(m.Body)] = true
		mu.Unlock()
		return nil
	})

	p, _ := cl.NewProducer()
	defer p.Close()
	var killedAt time.Time
	var touched, after, failed int
	var live []string // acknowledged by the groups still up
	for i := 0; i < 3000; i++ {
		if i == 1000 {
			dead.Kill()
			killedAt = time.Now()
		}
		start := time.Now()
		body := fmt.Sprint(i)
		res, err := p.Send(ctx, &sdk.Message{Topic: "events", Body: []byte(body)})
		if err != nil {
			failed++
			t.Errorf("send %d failed: %v", i, err)
			continue
		}
		if res.Broker != dead.Addr {
			live = append(live, body)
		}
		if killedAt.IsZero() {
			continue
		}
		after++
		if res.Broker == dead.Addr {
			t.Fatalf("send %d acknowledged by the killed broker", i)
		}
		for _, a := range res.Failed {
			t.Logf("send %d at +%v: failed attempt %v", i, start.Sub(killedAt), a)
			if a.Broker == dead.Addr && start.Sub(killedAt) > 100*time.Millisecond {
				touched++
			}
		}
	}
	// Once it failed, the dead broker is set aside (1 s, doubling) and
	// gets one probe each time: a handful of attempts in all.
	t.Logf("%d sends after the kill, %d of them tried the dead broker", after, touched)
	if touched > 8 {
		t.Fatalf("%d of %d sends after the kill tried the dead broker", touched, after)
	}
	if failed != 0 {
		t.Fatalf("%d sends failed", failed)
	}
	// The consumer gets every message the live groups acknowledged.
	testbroker.WaitFor(t, "the consumer to receive every message of the live groups", func() bool {
		mu.Lock()
		defer mu.Unlock()
		for _, b := range live {
			if !received[b] {
				return false
			}
		}
		return true
	})
}

// Ordered sends by key: while the key's queue's group is down, a send
// with that key fails loudly, saying it was not moved; with
// WithKeyFailover it moves to another group's queue.
func TestOrderedSendWhileItsQueueIsDown(t *testing.T) {
	c := testbroker.StartCluster(t, 2, 0, nil, nil)
	cl := clusterClient(t, c)
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "ledger", 2); err != nil {
		t.Fatal(err)
	}
	p, _ := cl.NewProducer(sdk.WithSendTimeout(time.Second))
	defer p.Close()
	// A key of g1's.
	var key []byte
	for i := 0; key == nil; i++ {
		k := []byte(fmt.Sprintf("acct-%d", i))
		res, err := p.Send(ctx, &sdk.Message{Topic: "ledger", Key: k, Body: []byte("open")})
		if err != nil {
			t.Fatal(err)
		}
		if res.Group == "g1" {
			key = k
		}
	}
	c.Groups[1].Leader.Kill()
	_, err := p.Send(ctx, &sdk.Message{Topic: "ledger", Key: key, Body: []byte("debit")})
	var se *sdk.SendError
	if !errors.As(err, &se) || !strings.HasPrefix(se.KeyQueue, "g1/") || !strings.Contains(err.Error(), "not moved to another queue") {
		t.Fatalf("ordered send to a dead group: %v", err)
	}
	for _, a := range se.Attempts {
		if a.Broker != c.Groups[1].Leader.Addr {
			t.Fatalf("an ordered send tried another broker: %v", a)
		}
	}
	moving, _ := cl.NewProducer(sdk.WithKeyFailover())
	defer moving.Close()
	res, err := moving.Send(ctx, &sdk.Message{Topic: "ledger", Key: key, Body: []byte("debit")})
	if err != nil || res.Group != "g0" {
		t.Fatalf("with WithKeyFailover: %+v %v", res, err)
	}
}

// Incident 001 across groups: one group's disk stalls; its sends are
// answered BUSY within max-queue-wait and retried on the other groups:
// every send succeeds, and none reports BUSY to the application.
func TestIncident001BusyRetriedElsewhere(t *testing.T) {
	c := testbroker.StartCluster(t, 3, 0, []string{"--debug-faults", "--max-queue-wait", "200ms"}, nil)
	cl := clusterClient(t, c)
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "pay", 2); err != nil {
		t.Fatal(err)
	}
	stalled := c.Groups[2].Leader
	stalled.Post("/debug/faults/stall")
	defer stalled.Post("/debug/faults/resume")
	p, _ := cl.NewProducer()
	defer p.Close()
	var wg sync.WaitGroup
	var busy, failed atomic.Int64
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 150; i++ {
				res, err := p.Send(ctx, &sdk.Message{Topic: "pay", Body: []byte("x")})
				if err != nil {
					failed.Add(1)
					t.Errorf("send failed: %v", err)
					return
				}
				for _, a := range res.Failed {
					if a.Code == "BUSY" {
						busy.Add(1)
					}
				}
			}
		}()
	}
	wg.Wait()
	if failed.Load() != 0 {
		t.Fatalf("%d sends failed", failed.Load())
	}
	if busy.Load() == 0 {
		t.Fatal("no send met the stalled group: the test proves nothing")
	}
	t.Logf("600 sends, %d retried after BUSY, 0 failed", busy.Load())
}

// asyncBurst sends n messages with SendAsync, one every 2 ms, and returns
// how many each group acknowledged once every callback has run.
func asyncBurst(t *testing.T, ctx context.Context, p *sdk.Producer, topic string, n int) map[string]int {
	t.Helper()
	var mu sync.Mutex
	var wg sync.WaitGroup
	byGroup := map[string]int{}
	tick := time.NewTicker(2 * time.Millisecond)
	defer tick.Stop()
	for i := 0; i < n; i++ {
		<-tick.C
		wg.Add(1)
		err := p.SendAsync(ctx, &sdk.Message{Topic: topic, Body: []byte("x")}, func(res sdk.SendResult, err error) {
			defer wg.Done()
			if err != nil {
				t.Errorf("async send failed: %v", err)
				return
			}
			mu.Lock()
			byGroup[res.Group]++
			mu.Unlock()
		})
		if err != nil {
			wg.Done()
			t.Fatalf("SendAsync: %v", err)
		}
	}
	wg.Wait()
	return byGroup
}

// A group set aside does not double its neighbour's load: its share is
// spread evenly over the groups still usable (it all went to the group
// after it: 201 and 399 of 600). When its broker is restarted, async
// sends probe it and return to it.
func TestAsyncSendsSpreadAroundAndReturnToARestartedBroker(t *testing.T) {
	c := testbroker.StartCluster(t, 3, 0, nil, nil)
	cl := clusterClient(t, c)
	ctx := ctxT(t, 120*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "events", 2); err != nil {
		t.Fatal(err)
	}
	p, _ := cl.NewProducer()
	defer p.Close()
	if got := asyncBurst(t, ctx, p, "events", 300); got["g1"] == 0 {
		t.Fatalf("before the kill: %v", got)
	}
	dead := c.Groups[1].Leader
	dead.Kill()
	asyncBurst(t, ctx, p, "events", 300) // the broker is found dead and set aside
	// Adaptive fault avoidance may also set a live group aside for a
	// moment when its sends slow down (a busy VM: g0 at 18 ms against 1 ms
	// once): a burst in which that happened says nothing of how g1's share
	// is spread, and is sent again.
	isolations := func() (n int64) {
		for _, h := range cl.BrokerHealth() {
			if h.Addr != dead.Public {
				n += h.Isolations
			}
		}
		return n
	}
	for attempt := 1; ; attempt++ {
		testbroker.WaitFor(t, "the live groups usable", func() bool {
			for _, h := range cl.BrokerHealth() {
				if h.Addr != dead.Public && h.Aside {
					return false
				}
			}
			return true
		})
		before := isolations()
		got := asyncBurst(t, ctx, p, "events", 600)
		if isolations() != before {
			t.Logf("burst %d: a live group was set aside meanwhile (%v; %+v): again", attempt, got, cl.BrokerHealth())
			if attempt == 5 {
				t.Fatal("in 5 bursts a live group was set aside each time: the spread cannot be judged")
			}
			continue
		}
		t.Logf("while g1 is down: %v", got)
		if got["g0"] < 240 || got["g2"] < 240 {
			t.Fatalf("g1's share went unevenly to the others (each should have about 300 of 600): %v; fault avoidance: %+v", got, cl.BrokerHealth())
		}
		break
	}
	dead.Restart()
	restarted := time.Now()
	for {
		got := asyncBurst(t, ctx, p, "events", 300)
		if got["g1"] >= 60 {
			t.Logf("g1 back to %d of 300 sends %v after its restart", got["g1"], time.Since(restarted).Round(100*time.Millisecond))
			break
		}
		if time.Since(restarted) > 60*time.Second {
			t.Fatalf("a minute after g1's restart its share is still %d of 300: %v", got["g1"], got)
		}
	}
}

// A bootstrap broker that is cut off (it takes datagrams and never
// answers) costs a send no dial timeout, first in the list or last: the
// next broker is asked for the routes after 250 ms, and a standalone
// broker that is silent about itself is not waited for past that. With
// the default 5 s dial timeout and a 1 s send deadline, the send with the
// silent broker first failed before; with it last, the routes waited out
// the send's whole second and the admin request's 5 s dial.
func TestCutOffBootstrapBrokerCostsNoDialTimeout(t *testing.T) {
	b := testbroker.Start(t)
	hole := testbroker.HoleAddr(t)
	ctx := ctxT(t, 60*time.Second)
	for _, brokers := range [][]string{{hole, b.Addr}, {b.Addr, hole}} {
		cl, err := sdk.NewClient(sdk.WithBrokers(brokers...), sdk.WithCAFile(b.CAFile))
		if err != nil {
			t.Fatal(err)
		}
		p, err := cl.NewProducer(sdk.WithSendTimeout(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := p.Send(ctx, &sdk.Message{Topic: "reach", Body: []byte("x")}); err != nil {
			t.Fatalf("brokers %v: %v", brokers, err)
		}
		topics, err := cl.Admin().Topics(ctx, "reach")
		if err != nil || topics[0].Queues == 0 {
			t.Fatalf("brokers %v: topics %v %v", brokers, topics, err)
		}
		p.Close()
		cl.Close()
	}
}

// Clients tell the brokers which brokers they set aside, and the status
// (and the web console's cluster page) shows it: a group whose disk
// stalls answers BUSY, the client sets it aside and the other groups
// report it, with the reason (the BUSY, or its sends waiting with no
// answer); once its time aside is over, they stop.
func TestClientsReportBrokersTheySetAside(t *testing.T) {
	c := testbroker.StartCluster(t, 3, 0, []string{"--debug-faults", "--max-queue-wait", "200ms"}, nil)
	cl := clusterClient(t, c)
	ctx := ctxT(t, 90*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "pay", 2); err != nil {
		t.Fatal(err)
	}
	stalled, other := c.Groups[2].Leader, c.Groups[0].Leader
	reported := func() *wire.SetAside {
		for _, a := range other.Status().ClientsSetAside {
			if a.Addr == stalled.Public {
				return &a
			}
		}
		return nil
	}
	if a := reported(); a != nil {
		t.Fatalf("set aside before any fault: %+v", a)
	}
	stalled.Post("/debug/faults/stall")
	p, _ := cl.NewProducer()
	defer p.Close()
	busy := 0
	for i := 0; busy == 0; i++ {
		if i == 2000 {
			t.Fatal("2,000 sends and none met the stalled group")
		}
		res, err := p.Send(ctx, &sdk.Message{Topic: "pay", Body: []byte("x")})
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range res.Failed {
			if a.Code == "BUSY" {
				busy++
			}
		}
	}
	var got *wire.SetAside
	testbroker.WaitFor(t, "the other group's status to show the stalled broker set aside", func() bool {
		got = reported()
		return got != nil
	})
	// Set aside while its sends waited (no answer past the stall floor),
	// or after their BUSY: either is what the client saw.
	if got.Clients != 1 || !strings.Contains(got.Reason, "BUSY") && !strings.Contains(got.Reason, "no answer for") || got.Last == "" {
		t.Errorf("reported %+v, want 1 client and the BUSY or the wait", got)
	}
	stalled.Post("/debug/faults/resume")
	testbroker.WaitFor(t, "the report to clear once the broker's time aside is over", func() bool { return reported() == nil })
}
