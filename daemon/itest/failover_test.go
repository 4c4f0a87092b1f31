package itest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// Automatic failover (issue 11): groups of three brokers started alike,
// whose leader the controller quorum elects. Every test checks the
// invariant users rely on: no acknowledged send is lost, and each queue's
// offsets stay dense.

// acked is one acknowledged send.
type ackedSend struct {
	queue  uint32
	offset uint64
	epoch  uint64
	group  string
	at     time.Time
}

// ledger records acknowledged sends by body, and failures.
type ledger struct {
	mu     sync.Mutex
	acks   map[string]ackedSend
	errs   []error
	errsAt []time.Time
}

func newLedger() *ledger { return &ledger{acks: map[string]ackedSend{}} }

func (l *ledger) add(body string, r sdk.SendResult) {
	if len(r.Failed) > 0 && os.Getenv("QUIVER_DEBUG_ATTEMPTS") != "" {
		fmt.Printf("%s ok after %v: %v\n", time.Now().Format("15:04:05.000"), r.Failed, r.Broker)
	}
	l.mu.Lock()
	l.acks[body] = ackedSend{queue: r.Queue, offset: r.Offset, epoch: r.Epoch, group: r.Group, at: time.Now()}
	l.mu.Unlock()
}

func (l *ledger) fail(err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.errsAt = append(l.errsAt, time.Now())
	l.mu.Unlock()
}

func (l *ledger) count() (acks, errs int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.acks), len(l.errs)
}

// firstAckAfter is when the first send of an epoch newer than epoch was
// acknowledged after t (zero: none yet).
func (l *ledger) firstAckAfter(t time.Time, epoch uint64) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	var first time.Time
	for _, a := range l.acks {
		if a.epoch > epoch && a.at.After(t) && (first.IsZero() || a.at.Before(first)) {
			first = a.at
		}
	}
	return first
}

// sendLoad runs workers producers sending bodies tag-w-i to topic (every
// other worker with a key, so that keyed sends meet the failover too)
// until stop is called, which waits for them.
func sendLoad(t *testing.T, cl *sdk.Client, topic, tag string, workers int, l *ledger, opts ...sdk.ProducerOpt) (stop func()) {
	t.Helper()
	p, err := cl.NewProducer(opts...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for w := 0; w < workers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ctx.Err() == nil; i++ {
				body := fmt.Sprintf("%s-%d-%d", tag, w, i)
				m := &sdk.Message{Topic: topic, Body: []byte(body)}
				if w%2 == 1 {
					m.Key = []byte(fmt.Sprintf("key-%d", w))
				}
				r, err := p.Send(context.Background(), m)
				if err != nil {
					l.fail(err)
					continue
				}
				l.add(body, r)
			}
		}()
	}
	return func() {
		cancel()
		wg.Wait()
		p.Close()
	}
}

// waitAcks waits until the ledger has n more acknowledgements than now.
func waitAcks(t *testing.T, l *ledger, n int) {
	t.Helper()
	a0, _ := l.count()
	testbroker.WaitFor(t, fmt.Sprintf("%d more acknowledged sends", n), func() bool { a, _ := l.count(); return a >= a0+n })
}

// verifyLedger reads the whole topic from the leaders of the groups
// hosting it (one broker each) with a new consumer group, and checks that
// every queue's offsets are dense from 0 and that every acknowledged send
// is where its acknowledgement said.
func verifyLedger(t *testing.T, cl *sdk.Client, leaders []*testbroker.Broker, topic string, l *ledger) {
	t.Helper()
	type gq struct {
		group string
		queue uint32
	}
	total := 0
	maxOf := map[gq]uint64{}
	for _, b := range leaders {
		// The group healed (its followers back in the in-sync set), so that
		// the audit's own commits are taken.
		testbroker.WaitFor(t, "the group's followers in sync again", func() bool {
			r := b.Status().Replication
			return r.Role == "leader" && len(r.ISR) >= r.MinInsync
		})
		s := b.Status()
		group := s.Replication.Controller.Groups[0].Name
		for _, g := range s.Replication.Controller.Groups {
			if g.Leader == s.Broker.ID {
				group = g.Name
			}
		}
		for _, ts := range s.Topics {
			if ts.Name == topic {
				for _, q := range ts.Queues {
					if q.Min != 0 {
						t.Fatalf("queue %s/%d starts at %d: retention is off in this test", group, q.Queue, q.Min)
					}
					total += int(q.Max)
					maxOf[gq{group, q.Queue}] = q.Max
				}
			}
		}
	}
	ctx := ctxT(t, 2*time.Minute)
	got := consumeN(t, ctx, cl, fmt.Sprintf("audit-%d", time.Now().UnixNano()), topic, total)
	at := map[gq]map[uint64]string{}
	stored := map[string]int{}
	for _, m := range got {
		stored[string(m.Body)]++
		k := gq{m.Group, m.Queue}
		if at[k] == nil {
			at[k] = map[uint64]string{}
		}
		if _, dup := at[k][m.Offset]; dup {
			t.Fatalf("queue %s/%d offset %d delivered twice to one new group", m.Group, m.Queue, m.Offset)
		}
		at[k][m.Offset] = string(m.Body)
	}
	for k, max := range maxOf {
		for o := uint64(0); o < max; o++ {
			if _, ok := at[k][o]; !ok {
				t.Fatalf("queue %s/%d: offset %d missing (max %d): offsets are not dense", k.group, k.queue, o, max)
			}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	lost := 0
	var example string
	for body, a := range l.acks {
		if at[gq{a.group, a.queue}][a.offset] != body {
			lost++
			example = fmt.Sprintf("%q acknowledged at %s/%d/%d in epoch %d, found %q", body, a.group, a.queue, a.offset, a.epoch, at[gq{a.group, a.queue}][a.offset])
		}
	}
	if lost > 0 {
		t.Fatalf("%d of %d acknowledged sends lost or moved, e.g. %s", lost, len(l.acks), example)
	}
	twice := 0
	for _, n := range stored {
		if n > 1 {
			twice++
		}
	}
	t.Logf("verified: %d acknowledged sends, %d records in %d queues, dense; %d sends stored more than once (retried after a failure the broker had stored)",
		len(l.acks), total, len(maxOf), twice)
}

func idOf(c *testbroker.Controlled, b *testbroker.Broker) string { return c.ID(b) }

// The contract: three brokers started alike with no role elect exactly one
// leader; the others follow it, its in-sync set holds both, and every
// broker shows the same controller quorum and group.
func TestControllerElectsOneLeader(t *testing.T) {
	c := testbroker.StartControlled(t, 3, []string{"--min-insync", "1"}, nil)
	l := c.Leader(t)
	testbroker.WaitFor(t, "both followers in the in-sync set", func() bool {
		r := l.Status().Replication
		return len(r.ISR) == 2
	})
	var voters []string
	for _, b := range c.Brokers {
		cs := b.Status().Replication.Controller
		if cs == nil || len(cs.Voters) != 3 || len(cs.Groups) != 1 {
			t.Fatalf("%s: controller section %+v", b.Addr, cs)
		}
		if voters == nil {
			voters = cs.Voters
		} else if !slices.Equal(voters, cs.Voters) {
			t.Fatalf("voters differ: %v and %v", voters, cs.Voters)
		}
		if g := cs.Groups[0]; g.Leader != idOf(c, l) || len(g.ISR) != 3 {
			t.Fatalf("%s sees group %+v", b.Addr, g)
		}
	}
	cl := c.Client(t)
	ctx := ctxT(t, 30*time.Second)
	fill(t, ctx, cl, "orders", 4, 50)
	// Only the leader takes writes.
	for _, b := range c.Brokers {
		if b == l {
			continue
		}
		conn, err := testbroker.DialAt(ctx, b.Addr, c.Bundle)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Produce(ctx, wire.Produce{Topic: "orders", Body: []byte("x")})
		conn.Close()
		if werr, ok := err.(*wire.Error); !ok || werr.Code != wire.CodeNotLeader {
			t.Fatalf("a follower answered a produce with %v", err)
		}
	}
}

// failoverRounds is how many times TestLeaderKilledLosesNoAcknowledgedSend
// kills the leader (QUIVER_FAILOVER_ROUNDS; make chaos runs 20).
func failoverRounds() int {
	if n, err := strconv.Atoi(os.Getenv("QUIVER_FAILOVER_ROUNDS")); err == nil && n > 0 {
		return n
	}
	return 2
}

// kill -9 of the leader under min-insync sends, round after round: another
// broker leads within seconds, no acknowledged send is lost, offsets stay
// dense, and the old leader comes back as a follower.
func TestLeaderKilledLosesNoAcknowledgedSend(t *testing.T) {
	c := testbroker.StartControlled(t, 3, []string{"--min-insync", "1"}, nil)
	cl := c.Client(t)
	ctx := ctxT(t, 10*time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "pay", 4); err != nil {
		t.Fatal(err)
	}
	l := newLedger()
	stop := sendLoad(t, cl, "pay", "w", 4, l, sdk.WithSendTimeout(10*time.Second))
	var took []time.Duration
	for round := 0; round < failoverRounds(); round++ {
		leader := c.Leader(t)
		_, epoch := leader.Role()
		waitAcks(t, l, 200)
		_, errs0 := l.count()
		// Whether the kill takes the controller's raft leader too (a raft
		// election and fresh sessions first: a slower failover).
		ctl := leader.Status().Replication.Controller
		both := ctl != nil && ctl.Leader == leader.Public
		killed := time.Now()
		leader.Kill()
		var first time.Time
		testbroker.WaitFor(t, "a send acknowledged by a new leader", func() bool {
			first = l.firstAckAfter(killed, epoch)
			return !first.IsZero()
		})
		took = append(took, first.Sub(killed))
		if nl := c.Leader(t); nl != nil {
			g := nl.Status().Replication.Controller.Groups[0]
			e := g.Elections[len(g.Elections)-1]
			at, _ := time.Parse(time.RFC3339Nano, e.At)
			t.Logf("round %d: elected %s at %v after the kill (leaderless %d ms, %s)", round, e.To, at.Sub(killed).Round(time.Millisecond), e.LeaderlessMs, e.Reason)
		}
		_, errs1 := l.count()
		t.Logf("round %d: %s killed in epoch %d (the controller's raft leader too: %v); first send acknowledged by the new leader after %v; %d send errors",
			round, idOf(c, leader), epoch, both, first.Sub(killed).Round(time.Millisecond), errs1-errs0)
		if first.Sub(killed) > 15*time.Second {
			t.Fatalf("failover took %v (contract: 15 s)", first.Sub(killed))
		}
		leader.Restart()
		nl := c.Leader(t) // it rejoins as a follower: still one leader
		if role, _ := leader.Role(); role != "follower" {
			t.Fatalf("the old leader came back as %q", role)
		}
		// One fault at a time: the next kill waits until the restarted
		// broker is back in the in-sync set and the controller's raft
		// leader reaches it (its raft member heard from the leader within
		// 300 ms). Killed before that, the kill took, as the raft leader
		// saw it, two of its three voters: the leader's connection to the
		// restarted broker still went to the dead process until a
		// stateless reset about a second later, so it stepped down, and a
		// raft election plus fresh sessions made those failovers 3-3.5 s
		// instead of 1.5-2 s.
		testbroker.WaitFor(t, "the restarted broker back in the in-sync set and reached by the raft leader", func() bool {
			ctl, own := nl.Status().Replication.Controller, leader.Status().Replication.Controller
			if ctl == nil || len(ctl.Groups) != 1 || !slices.Contains(ctl.Groups[0].ISR, idOf(c, leader)) || own == nil {
				return false
			}
			d, err := time.ParseDuration(own.LastContact)
			return own.RaftState == "Follower" && err == nil && d < 300*time.Millisecond
		})
	}
	waitAcks(t, l, 100)
	stop()
	_, errs := l.count()
	if errs > 0 {
		t.Errorf("%d sends failed within their 10 s deadline, e.g. %v", errs, l.errs[0])
	}
	sort.Slice(took, func(i, j int) bool { return took[i] < took[j] })
	t.Logf("failover (kill to first acknowledged send on the new leader) over %d rounds: min %v, p50 %v, max %v",
		len(took), took[0].Round(time.Millisecond), took[len(took)/2].Round(time.Millisecond), took[len(took)-1].Round(time.Millisecond))
	writeFailoverResult(t, took)
	verifyLedger(t, cl, []*testbroker.Broker{c.Leader(t)}, "pay", l)
}

// writeFailoverResult appends the rounds' failover times to
// QUIVER_FAILOVER_OUT (make chaos), one per line in milliseconds.
func writeFailoverResult(t *testing.T, took []time.Duration) {
	path := os.Getenv("QUIVER_FAILOVER_OUT")
	if path == "" {
		return
	}
	var b strings.Builder
	for _, d := range took {
		fmt.Fprintf(&b, "%d\n", d.Milliseconds())
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
		t.Error(err)
	}
}

// SIGTERM on the leader under load hands the group to an in-sync
// follower first: no send fails, and the election says why.
func TestGracefulStopHandsOver(t *testing.T) {
	c := testbroker.StartControlled(t, 3, []string{"--min-insync", "1"}, nil)
	cl := c.Client(t)
	ctx := ctxT(t, 2*time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "pay", 4); err != nil {
		t.Fatal(err)
	}
	leader, _, l, took := leaderFaultUnderLoad(t, c, cl, "pay", "h", "the handoff", func(leader *testbroker.Broker) {
		if err := leader.Stop(); err != nil {
			t.Fatalf("graceful stop: %v\n%s", err, leader.Log())
		}
	})
	if !strings.Contains(leader.Log(), "handing the group over") {
		t.Fatalf("the leader did not hand over:\n%s", leader.Log())
	}
	next := c.Leader(t)
	g := next.Status().Replication.Controller.Groups[0]
	if e := g.Elections[len(g.Elections)-1]; !strings.HasPrefix(e.Reason, "handoff") || e.From != idOf(c, leader) {
		t.Fatalf("last election %+v, want a handoff from %s", e, idOf(c, leader))
	}
	t.Logf("handoff: first send acknowledged by %s %v after SIGTERM", idOf(c, next), took.Round(time.Millisecond))
	leader.Restart()
	verifyLedger(t, cl, []*testbroker.Broker{c.Leader(t)}, "pay", l)
}

// All brokers killed at once and restarted: the same leader leads the
// same epoch again, and nothing acknowledged is lost.
func TestWholeGroupRestartKeepsLeaderAndEpoch(t *testing.T) {
	c := testbroker.StartControlled(t, 3, []string{"--min-insync", "1"}, nil)
	cl := c.Client(t)
	ctx := ctxT(t, 2*time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "pay", 2); err != nil {
		t.Fatal(err)
	}
	l := newLedger()
	stop := sendLoad(t, cl, "pay", "r", 2, l, sdk.WithSendTimeout(20*time.Second))
	leader := c.Leader(t)
	_, epoch := leader.Role()
	waitAcks(t, l, 200)
	for _, b := range c.Brokers {
		b.Kill()
	}
	var wg sync.WaitGroup
	for _, b := range c.Brokers {
		wg.Add(1)
		go func() { defer wg.Done(); b.Restart() }()
	}
	wg.Wait()
	again := c.Leader(t)
	_, epoch2 := again.Role()
	if again != leader || epoch2 != epoch {
		t.Fatalf("after restarting every broker: %s leads epoch %d; before: %s, epoch %d", idOf(c, again), epoch2, idOf(c, leader), epoch)
	}
	waitAcks(t, l, 100)
	stop()
	verifyLedger(t, cl, []*testbroker.Broker{again}, "pay", l)
}

// controlledBy starts a data group of three brokers whose controller is
// another group of three (so that the data group's brokers can all be
// down while the quorum decides).
func controlledBy(t *testing.T, args ...string) (ctl, data *testbroker.Controlled) {
	t.Helper()
	// Both groups host the tests' topics (a topic spans every group): both
	// run with the same settings, min-insync included.
	gs := testbroker.StartControlledGroups(t, testbroker.Spec{Prefix: "c", N: 3, Args: args}, testbroker.Spec{Prefix: "d", N: 3, Args: args, VotersOf: "c"})
	return gs[0], gs[1]
}

// groupOf is the name of the group c's brokers form.
func groupOf(t *testing.T, c *testbroker.Controlled) string {
	t.Helper()
	l := c.Leader(t)
	id := c.ID(l)
	for _, g := range l.Status().Replication.Controller.Groups {
		if g.Leader == id {
			return g.Name
		}
	}
	t.Fatalf("no group led by %s", id)
	return ""
}

// followersOf returns the two brokers of c other than leader.
func followersOf(c *testbroker.Controlled, leader *testbroker.Broker) (f1, f2 *testbroker.Broker) {
	for _, b := range c.Brokers {
		switch {
		case b == leader:
		case f1 == nil:
			f1 = b
		default:
			f2 = b
		}
	}
	return f1, f2
}

// acksIn counts the acknowledged sends stored on group.
func (l *ledger) acksIn(group string) int {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := 0
	for _, a := range l.acks {
		if a.group == group {
			n++
		}
	}
	return n
}

// The replay of commitPos(k): two in-sync followers, one of them stalled.
// Sends keep being acknowledged only once the controller has taken the
// stalled one out of the in-sync set; so when the leader and the other
// follower die, the stalled one, back, is not elected (it lacks those
// sends), and the group waits for a member of the set.
func TestLaggingFollowerIsNeverElected(t *testing.T) {
	ctl, c := controlledBy(t, "--min-insync", "1", "--replica-insync-lag", "2s")
	cl := c.Client(t)
	ctx := ctxT(t, 2*time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "pay", 2); err != nil {
		t.Fatal(err)
	}
	leader := c.Leader(t)
	group := groupOf(t, c)
	testbroker.WaitFor(t, "both followers in sync", func() bool { return len(leader.Status().Replication.ISR) == 2 })
	f1, f2 := followersOf(c, leader)
	l := newLedger()
	stop := sendLoad(t, cl, "pay", "s", 2, l, sdk.WithSendTimeout(10*time.Second))
	waitAcks(t, l, 100)
	f2.Pause()
	testbroker.WaitFor(t, "the stalled follower out of the in-sync set", func() bool {
		r := leader.Status().Replication
		return len(r.ISR) == 1 && r.ISR[0] == idOf(c, f1)
	})
	// Sends go on the data group's queues (and the controllers', which
	// host the topic too) without f2.
	n0 := l.acksIn(group)
	testbroker.WaitFor(t, "sends acknowledged on the data group without f2", func() bool { return l.acksIn(group) >= n0+100 })
	stop()
	leader.Kill()
	f1.Kill()
	f2.Resume()
	// The controller hears f2 again and does not elect it.
	ws := ctl.Brokers[0]
	testbroker.WaitFor(t, "the controller to see f2 live and the group waiting", func() bool {
		for _, g := range ws.Status().Replication.Controller.Groups {
			for _, m := range g.Members {
				if m.ID == idOf(c, f2) && m.Live && strings.Contains(g.Waiting, "no live member of the in-sync set") {
					return true
				}
			}
		}
		return false
	})
	if role, _ := f2.Role(); role == "leader" {
		t.Fatal("the follower outside the in-sync set was elected")
	}
	// The member of the set comes back: it leads, and has everything.
	f1.Restart()
	testbroker.WaitFor(t, "f1 to lead", func() bool { role, _ := f1.Role(); return role == "leader" })
	verifyLedger(t, cl, []*testbroker.Broker{f1, ctl.Leader(t)}, "pay", l)
	leader.Restart()
	c.Leader(t)
}

// The replay of commitPos(k) itself: two in-sync followers, one whose
// disk stalls (it stops acknowledging, but keeps its controller session:
// it stays in the in-sync set for the lag). Sends made meanwhile must
// not be acknowledged on the other follower's word alone: when the leader
// and that follower die, the controller elects the stalled one (the only
// live member of the set), and it must hold every acknowledged send.
func TestAckWaitsForEveryInSyncFollower(t *testing.T) {
	ctl, c := controlledBy(t, "--min-insync", "1", "--replica-insync-lag", "20s", "--debug-faults")
	cl := c.Client(t)
	ctx := ctxT(t, 2*time.Minute)
	leader := c.Leader(t)
	group := groupOf(t, c)
	testbroker.WaitFor(t, "both followers in sync", func() bool { return len(leader.Status().Replication.ISR) == 2 })
	if err := cl.Admin().CreateTopic(ctx, "pay", 2); err != nil {
		t.Fatal(err)
	}
	f1, f2 := followersOf(c, leader)
	l := newLedger()
	stop := sendLoad(t, cl, "pay", "k", 2, l, sdk.WithSendTimeout(30*time.Second))
	testbroker.WaitFor(t, "sends on the data group", func() bool { return l.acksIn(group) >= 100 })
	f2.Post("/debug/faults/stall")
	stalled := time.Now()
	// Sends go on for a few seconds: f2 is in the set and acknowledges
	// nothing, so none of the data group's may be acknowledged.
	n0 := l.acksIn(group)
	deadline := stalled.Add(4 * time.Second)
	testbroker.WaitFor(t, "4 s with f2's disk stalled", func() bool { return time.Now().After(deadline) })
	if r := leader.Status().Replication; !slices.Contains(r.ISR, idOf(c, f2)) {
		t.Fatalf("f2 left the in-sync set within the lag: %v", r.ISR)
	}
	during := l.acksIn(group) - n0
	leader.Kill()
	f1.Kill()
	f2.Post("/debug/faults/resume")
	testbroker.WaitFor(t, "f2 to lead", func() bool { role, _ := f2.Role(); return role == "leader" })
	stop()
	t.Logf("%d sends of the data group acknowledged while f2's disk stalled (at most the ones already written before the stall)", during)
	f1.Restart()
	leader.Restart()
	verifyLedger(t, cl, []*testbroker.Broker{c.Leader(t), ctl.Leader(t)}, "pay", l)
}

// 2 of 3 voters down: no election can happen, and a leader with
// min-insync 1 keeps taking sends within its in-sync set.
func TestQuorumLostLeaderKeepsServing(t *testing.T) {
	ctl, c := controlledBy(t, "--min-insync", "1")
	cl := c.Client(t)
	ctx := ctxT(t, 2*time.Minute)
	fill(t, ctx, cl, "pay", 2, 20)
	leader := c.Leader(t)
	ctl.Brokers[0].Kill()
	ctl.Brokers[1].Kill()
	l := newLedger()
	stop := sendLoad(t, cl, "pay", "q", 2, l)
	// Well past a session: the leader's lease is gone, and it still takes
	// sends (its followers acknowledge them).
	deadline := time.Now().Add(5 * time.Second)
	testbroker.WaitFor(t, "5 s of sends without a controller", func() bool { return time.Now().After(deadline) })
	stop()
	acks, errs := l.count()
	if errs > 0 || acks < 50 {
		t.Fatalf("without a controller quorum: %d sends acknowledged, %d failed (%v)", acks, errs, l.errs)
	}
	if role, _ := leader.Role(); role != "leader" {
		t.Fatalf("the leader became %q", role)
	}
	ctl.Brokers[0].Restart()
	ctl.Brokers[1].Restart()
	verifyLedger(t, cl, []*testbroker.Broker{leader, ctl.Leader(t)}, "pay", l)
}

// The controller's raft leader killed while a group's election is due:
// the quorum elects another raft leader, which then elects the group's.
func TestControllerLeaderKilledDuringElection(t *testing.T) {
	ctl, c := controlledBy(t, "--min-insync", "1")
	cl := c.Client(t)
	ctx := ctxT(t, 2*time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "pay", 2); err != nil {
		t.Fatal(err)
	}
	leader := c.Leader(t)
	_, epoch := leader.Role()
	var raftLeader *testbroker.Broker
	testbroker.WaitFor(t, "the controller's raft leader", func() bool {
		addr := ctl.Brokers[0].Status().Replication.Controller.Leader
		for _, b := range ctl.Brokers {
			if b.Public == addr {
				raftLeader = b
			}
		}
		return raftLeader != nil
	})
	l := newLedger()
	stop := sendLoad(t, cl, "pay", "c", 2, l, sdk.WithSendTimeout(15*time.Second))
	waitAcks(t, l, 100)
	killed := time.Now()
	leader.Kill()
	raftLeader.Kill() // before the leader's session can expire
	var first time.Time
	testbroker.WaitFor(t, "a send acknowledged by a new leader", func() bool {
		first = l.firstAckAfter(killed, epoch)
		return !first.IsZero()
	})
	t.Logf("group failover with the controller's leader killed too: %v", first.Sub(killed).Round(time.Millisecond))
	waitAcks(t, l, 100)
	stop()
	if _, errs := l.count(); errs > 0 {
		t.Errorf("%d sends failed within 15 s, e.g. %v", errs, l.errs[0])
	}
	leader.Restart()
	raftLeader.Restart()
	verifyLedger(t, cl, []*testbroker.Broker{c.Leader(t), ctl.Leader(t)}, "pay", l)
}

// A leader cut off from everything (a relay in front of it drops all its
// traffic), with min-insync 0 and a client that still reaches it
// directly: it stops acknowledging before the new leader's first
// acknowledgement (its lease); on heal it fences itself, truncates what
// only it had, and follows.
func TestCutOffLeaderStopsBeforeTheNewOneBegins(t *testing.T) {
	relays := map[int]*relay{}
	hosts := []string{"127.0.0.11", "127.0.0.12", "127.0.0.13"}
	c := testbroker.StartControlledGroups(t, testbroker.Spec{Prefix: "b", N: 3, Hosts: hosts, Front: func(i int, listen string) string {
		relays[i] = newRelay(t, listen)
		return relays[i].addr()
	}})[0]
	cl := c.Client(t)
	ctx := ctxT(t, 2*time.Minute)
	fill(t, ctx, cl, "pay", 2, 20)
	old := c.Leader(t)
	_, oldEpoch := old.Role()
	direct, err := testbroker.DialAt(ctx, old.Addr, c.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	defer direct.Close()
	// Sends straight to the old leader, all along.
	var lastOld atomic.Int64 // unix ns of the newest acknowledgement in the old epoch
	var oldAcks atomic.Int64
	sctx, scancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; sctx.Err() == nil; i++ {
			actx, cancel := context.WithTimeout(sctx, time.Second)
			ack, err := direct.Produce(actx, wire.Produce{Topic: "pay", Body: []byte(fmt.Sprintf("direct-%d", i))})
			cancel()
			if err == nil && ack.Epoch == oldEpoch {
				lastOld.Store(time.Now().UnixNano())
				oldAcks.Add(1)
			}
		}
	}()
	l := newLedger()
	stop := sendLoad(t, cl, "pay", "n", 2, l, sdk.WithSendTimeout(15*time.Second))
	testbroker.WaitFor(t, "sends straight to the leader", func() bool { return oldAcks.Load() > 10 })
	// Cut: nothing reaches it through its relay, and nothing it sends
	// reaches the others through theirs.
	oi := slices.Index(c.Brokers, old)
	cut := time.Now()
	relays[oi].cut.Store(true)
	for i, r := range relays {
		if i != oi {
			r.block(hosts[oi])
		}
	}
	var first time.Time
	testbroker.WaitFor(t, "a send acknowledged by a new leader", func() bool {
		first = l.firstAckAfter(cut, oldEpoch)
		return !first.IsZero()
	})
	waitAcks(t, l, 50)
	stop()
	scancel()
	wg.Wait()
	last := time.Unix(0, lastOld.Load())
	t.Logf("cut at %v: the old leader's last acknowledgement %v after the cut, the new leader's first %v after it",
		cut.Format("15:04:05.000"), last.Sub(cut).Round(time.Millisecond), first.Sub(cut).Round(time.Millisecond))
	if !last.Before(first) {
		t.Fatalf("the old leader acknowledged a send in epoch %d %v after the new epoch's first acknowledgement", oldEpoch, last.Sub(first))
	}
	// Heal: the old leader learns the new epoch, truncates, follows.
	relays[oi].cut.Store(false)
	for i, r := range relays {
		if i != oi {
			r.unblock(hosts[oi])
		}
	}
	testbroker.WaitFor(t, "the old leader to follow", func() bool {
		r := old.Status().Replication
		return r.Role == "follower" && r.Following != nil && r.Following.Connected
	})
	if !strings.Contains(old.Log(), "fenced") && !strings.Contains(old.Log(), "stopped leading") {
		t.Fatalf("the old leader did not log that it stopped leading:\n%s", old.Log())
	}
	next := c.Leader(t)
	end := caughtUp(t, next, old)
	sameLog(t, next, old, end)
	if tr := old.Status().Replication.Following.Truncations; tr < 1 {
		t.Logf("the old leader had nothing of its own to truncate")
	}
}

// A consumer group across a failover: the running consumer keeps its
// group (it joins the new leader's coordinator) and goes on where its
// commits say; commits made before the kill are on the new leader (they
// are replicated like sends), so nothing below them comes again.
func TestConsumerGroupSurvivesFailover(t *testing.T) {
	c := testbroker.StartControlled(t, 3, []string{"--min-insync", "1"}, nil)
	cl := c.Client(t)
	ctx := ctxT(t, 2*time.Minute)
	fill(t, ctx, cl, "feed", 2, 300)
	cons, err := cl.NewConsumer("billing", []string{"feed"}, sdk.WithAutoCommit(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	type qo struct {
		q uint32
		o uint64
	}
	var got []qo
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- cons.Run(rctx, func(_ context.Context, m *sdk.Message) error {
			mu.Lock()
			seen[string(m.Body)]++
			got = append(got, qo{m.Queue, m.Offset})
			mu.Unlock()
			return nil
		})
	}()
	count := func() int { mu.Lock(); defer mu.Unlock(); return len(seen) }
	testbroker.WaitFor(t, "the consumer half way", func() bool { return count() >= 150 })
	leader := c.Leader(t)
	// What the group committed, as the leader has it: acknowledged, so in
	// the in-sync set.
	var before map[uint32]uint64
	testbroker.WaitFor(t, "commits on the leader", func() bool {
		before = map[uint32]uint64{}
		for _, g := range leader.Status().Groups {
			if g.Name == "billing" {
				for _, o := range g.Offsets {
					before[o.Queue] = o.Committed
				}
			}
		}
		return len(before) == 2
	})
	leader.Kill()
	p, err := cl.NewProducer(sdk.WithSendTimeout(15 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for i := 300; i < 600; i++ {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "feed", Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	testbroker.WaitFor(t, "every message consumed across the failover", func() bool { return count() >= 600 })
	next := c.Leader(t)
	var after map[uint32]uint64
	testbroker.WaitFor(t, "the group to commit everything on the new leader", func() bool {
		after = map[uint32]uint64{}
		var sum uint64
		for _, g := range next.Status().Groups {
			if g.Name == "billing" {
				for _, o := range g.Offsets {
					after[o.Queue] = o.Committed
					sum += o.Committed
				}
			}
		}
		return sum == 600
	})
	cancel()
	if err := <-done; err != nil && !errors.Is(err, context.Canceled) {
		t.Fatalf("the consumer stopped: %v", err)
	}
	cons.Close()
	for q, o := range before {
		if after[q] < o {
			t.Fatalf("queue %d: committed offset went back from %d to %d across the failover", q, o, after[q])
		}
	}
	mu.Lock()
	defer mu.Unlock()
	dups := 0
	delivered := map[qo]int{}
	for _, x := range got {
		delivered[x]++
		if delivered[x] == 2 {
			dups++
			if x.o < before[x.q] {
				t.Fatalf("queue %d offset %d delivered again, below the offset %d committed before the failover", x.q, x.o, before[x.q])
			}
		}
	}
	t.Logf("commits before the kill %v, after %v; %d of %d messages delivered twice (uncommitted when the leader died)", before, after, dups, len(seen))
}

// A leader whose disk fails an fsync fails its log (fail-stop: the failed
// fsync may have dropped acknowledged pages, so it is never retried) and
// fences itself: it tells the controller, which elects another leader at
// once, with no session to wait out; it neither leads nor follows (which
// would reopen its log in-process) until a restart. No acknowledged send is
// lost, and the senders see no error.
func TestFailedFsyncFencesTheLeader(t *testing.T) {
	c := testbroker.StartControlled(t, 3, []string{"--min-insync", "1", "--debug-faults"}, nil)
	cl := c.Client(t)
	ctx := ctxT(t, 2*time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "pay", 4); err != nil {
		t.Fatal(err)
	}
	leader, epoch, l, took := leaderFaultUnderLoad(t, c, cl, "pay", "f", "the failed fsync", func(leader *testbroker.Broker) {
		leader.Post("/debug/faults/fail-sync")
	})
	// The fenced broker neither leads nor follows: it waits for a restart.
	var next *testbroker.Broker
	testbroker.WaitFor(t, "a new leader, the failed broker fenced", func() bool {
		next = nil
		for _, b := range c.Brokers {
			if role, e := b.Role(); role == "leader" && e > epoch && b != leader {
				next = b
			}
		}
		role, _ := leader.Role()
		return next != nil && role == "waiting"
	})
	if st := leader.Status(); !strings.Contains(st.Replication.Note, "fenced until a restart") {
		t.Fatalf("the failed broker's status does not say it is fenced: %+v", st.Replication)
	}
	g := next.Status().Replication.Controller.Groups[0]
	if e := g.Elections[len(g.Elections)-1]; !strings.Contains(e.Reason, "log failed") || e.From != idOf(c, leader) {
		t.Fatalf("last election %+v, want one because %s's log failed", e, idOf(c, leader))
	}
	if slices.Contains(g.ISR, idOf(c, leader)) {
		t.Fatalf("the failed broker is still in the in-sync set %v", g.ISR)
	}
	if !strings.Contains(leader.Log(), "fences itself") {
		t.Fatalf("the failed broker did not say it fenced itself:\n%s", leader.Log())
	}
	t.Logf("failed fsync: first send acknowledged by %s %v later", idOf(c, next), took.Round(time.Millisecond))
	leader.Kill()
	leader.Restart()
	verifyLedger(t, cl, []*testbroker.Broker{c.Leader(t)}, "pay", l)
}

// leaderFaultUnderLoad sends to topic with four producers (the SDK's
// defaults: 3 s per send), applies fault to the group's leader once 300
// sends are acknowledged, waits for the first send acknowledged in a newer
// epoch and 300 more, and fails the test if any send failed during what.
// It returns the faulted leader and its epoch, the ledger of sends, and
// how long after the fault the new leader acknowledged its first send.
func leaderFaultUnderLoad(t *testing.T, c *testbroker.Controlled, cl *sdk.Client, topic, tag, what string,
	fault func(leader *testbroker.Broker)) (*testbroker.Broker, uint64, *ledger, time.Duration) {
	t.Helper()
	l := newLedger()
	stop := sendLoad(t, cl, topic, tag, 4, l)
	leader := c.Leader(t)
	_, epoch := leader.Role()
	waitAcks(t, l, 300)
	at := time.Now()
	fault(leader)
	var first time.Time
	testbroker.WaitFor(t, "a send acknowledged by the new leader", func() bool {
		first = l.firstAckAfter(at, epoch)
		return !first.IsZero()
	})
	waitAcks(t, l, 300)
	stop()
	if _, errs := l.count(); errs > 0 {
		t.Fatalf("%d sends failed during %s, e.g. %v", errs, what, l.errs[0])
	}
	return leader, epoch, l, first.Sub(at)
}
