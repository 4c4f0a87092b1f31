package itest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// groupClient is a client that knows every broker of g.
func groupClient(t *testing.T, g *testbroker.Group, opts ...sdk.Opt) *sdk.Client {
	t.Helper()
	cl, err := sdk.NewClient(append([]sdk.Opt{sdk.WithBrokers(g.Addrs...), sdk.WithCAFile(g.Bundle),
		sdk.WithReconnectBackoff(20*time.Millisecond, 200*time.Millisecond, time.Second)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

func replStatus(t *testing.T, b *testbroker.Broker) *wire.Replication {
	t.Helper()
	r := b.Status().Replication
	if r == nil {
		t.Fatal("no replication section in the status")
	}
	return r
}

// caughtUp waits until the follower has everything the leader has.
func caughtUp(t *testing.T, leader, follower *testbroker.Broker) int64 {
	t.Helper()
	var end int64
	testbroker.WaitFor(t, "the follower to catch up", func() bool {
		end = leader.Status().Positions.Durable
		return follower.Status().Positions.Durable == end
	})
	return end
}

// sameLog checks that two brokers' logs hold the same bytes up to end
// (log positions are segment base + offset; segment files are named by
// their base).
func sameLog(t *testing.T, a, b *testbroker.Broker, end int64) {
	t.Helper()
	segs, err := filepath.Glob(filepath.Join(a.Dir, "log", "*.seg"))
	if err != nil || len(segs) == 0 {
		t.Fatalf("segments of %s: %v", a.Dir, err)
	}
	sort.Strings(segs)
	for _, sa := range segs {
		var base int64
		fmt.Sscanf(filepath.Base(sa), "%d.seg", &base)
		if base >= end {
			break
		}
		n := end - base
		if i := sort.SearchStrings(segs, sa); i+1 < len(segs) {
			var next int64
			fmt.Sscanf(filepath.Base(segs[i+1]), "%d.seg", &next)
			n = min(n, next-base)
		}
		read := func(path string) []byte {
			f, err := os.Open(path)
			if err != nil {
				t.Fatalf("segment %s: %v", path, err)
			}
			defer f.Close()
			buf := make([]byte, n)
			if _, err := f.ReadAt(buf, 0); err != nil {
				t.Fatalf("reading %s: %v", path, err)
			}
			return buf
		}
		if !bytes.Equal(read(sa), read(filepath.Join(b.Dir, "log", filepath.Base(sa)))) {
			t.Fatalf("segment %s differs in its first %d bytes", filepath.Base(sa), n)
		}
	}
}

// fill creates topic with queues queues and sends it n messages, bodies
// "0" to "n-1", each acknowledged before the next.
func fill(t *testing.T, ctx context.Context, cl *sdk.Client, topic string, queues, n int) {
	t.Helper()
	if err := cl.Admin().CreateTopic(ctx, topic, queues); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for i := 0; i < n; i++ {
		if _, err := p.Send(ctx, &sdk.Message{Topic: topic, Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
}

// A follower copies the leader's log byte for byte, holds its topics and
// committed offsets, serves reads, and refuses writes.
func TestFollowerCopiesTheLog(t *testing.T) {
	g := testbroker.StartGroup(t, 1, []string{"--min-insync", "1"}, nil)
	l, f := g.Leader, g.Followers[0]
	ctx := ctxT(t, 60*time.Second)
	cl := groupClient(t, g)
	fill(t, ctx, cl, "orders", 3, 300)
	consumeN(t, ctx, cl, "billing", "orders", 120)
	end := caughtUp(t, l, f)
	sameLog(t, l, f, end)

	fs := f.Status()
	if len(fs.Topics) != 1 || fs.Topics[0].Name != "orders" || len(fs.Topics[0].Queues) != 3 {
		t.Fatalf("follower's topics: %+v", fs.Topics)
	}
	testbroker.WaitFor(t, "the follower to apply the committed offsets", func() bool {
		for _, grp := range f.Status().Groups {
			if grp.Name == "billing" {
				var sum uint64
				for _, o := range grp.Offsets {
					sum += o.Committed
				}
				return sum == 120
			}
		}
		return false
	})
	r := replStatus(t, l)
	if r.Role != "leader" || len(r.Followers) != 1 || !r.Followers[0].InSync || r.Followers[0].Reconnects != 0 {
		t.Fatalf("leader's replication status: %+v", r)
	}
	if fr := replStatus(t, f); fr.Role != "follower" || fr.Following == nil || !fr.Following.Connected {
		t.Fatalf("follower's replication status: %+v", fr)
	}

	// The follower refuses writes with the retryable NOT_LEADER...
	h, p := f.Request(wire.TypeCreate, (&wire.Create{Topic: "nope", Queues: 1}).Append(nil))
	if werr, _ := wire.DecodeError(p); h.Type != wire.TypeError || werr == nil || werr.Code != wire.CodeNotLeader {
		t.Fatalf("create on a follower: answer type %d, %v", h.Type, werr)
	}
	// ...and a client that knows only the follower learns the leader from it.
	fc := f.Client()
	if err := fc.Admin().CreateTopic(ctx, "routed", 2); err != nil {
		t.Fatalf("create through a client that knows only the follower: %v", err)
	}
	infos, err := l.Client().Admin().Topics(ctx, "routed")
	if err != nil || len(infos) != 1 || infos[0].Queues != 2 {
		t.Fatalf("the topic on the leader: %+v %v", infos, err)
	}
}

// Incident 000 replayed: whatever the leader's heartbeat and the
// follower's ack interval (equal, or each a multiple of the other, or half
// the timeout), under load and idle for several timeouts: no reconnect,
// bounded lag, and every synchronous send (min-insync 1) succeeds.
func TestIncident000AckStarvation(t *testing.T) {
	pairs := []struct{ push, ack string }{
		{"200ms", "200ms"}, // the incident: both sides on the same period
		{"100ms", "300ms"},
		{"300ms", "100ms"},
		{"500ms", "500ms"}, // each half the timeout
	}
	for _, pr := range pairs {
		t.Run("push="+pr.push+"/ack="+pr.ack, func(t *testing.T) {
			g := testbroker.StartGroup(t, 1,
				[]string{"--min-insync", "1", "--replica-heartbeat", pr.push, "--replica-timeout", "1s"},
				[]string{"--replica-heartbeat", pr.ack, "--replica-timeout", "1s"})
			ctx := ctxT(t, 60*time.Second)
			cl := groupClient(t, g)
			p, _ := cl.NewProducer()
			defer p.Close()
			var sent, failed atomic.Int64
			load, stop := context.WithTimeout(ctx, 2500*time.Millisecond) // 2.5 timeouts under load
			defer stop()
			var wg sync.WaitGroup
			for w := 0; w < 4; w++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for load.Err() == nil {
						if _, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: make([]byte, 512)}); err != nil {
							failed.Add(1)
							t.Errorf("sync send failed: %v", err)
							return
						}
						sent.Add(1)
					}
				}()
			}
			wg.Wait()
			// Then idle for 2.5 timeouts: only timers keep the session.
			idle := time.Now().Add(2500 * time.Millisecond)
			var maxLag int64
			for time.Now().Before(idle) {
				fr := replStatus(t, g.Leader).Followers
				if len(fr) != 1 {
					t.Fatalf("followers: %+v", fr)
				}
				maxLag = max(maxLag, fr[0].LagBytes)
				time.Sleep(100 * time.Millisecond) // sampling period, not synchronisation
			}
			r := replStatus(t, g.Leader)
			fs := replStatus(t, g.Followers[0]).Following
			t.Logf("%d sync sends, %d failed; leader sees %d session(s), reconnects %d; follower %d session(s); max lag while idle %d B",
				sent.Load(), failed.Load(), r.Followers[0].Sessions, r.Followers[0].Reconnects, fs.Sessions, maxLag)
			if r.Followers[0].Reconnects != 0 || fs.Reconnects != 0 || r.Followers[0].LastClose != "" {
				t.Fatalf("the replication connection was dropped: leader %+v follower %+v", r.Followers[0], fs)
			}
			if !r.Followers[0].InSync || r.Followers[0].LagBytes != 0 {
				t.Fatalf("follower out of sync after the load: %+v", r.Followers[0])
			}
			if sent.Load() == 0 || failed.Load() != 0 {
				t.Fatalf("%d sends, %d failed", sent.Load(), failed.Load())
			}
		})
	}
}

// A follower killed under load catches up when it restarts, and its log is
// byte-identical to the leader's up to the same position.
func TestFollowerRestartCatchesUp(t *testing.T) {
	g := testbroker.StartGroup(t, 1, nil, nil)
	l, f := g.Leader, g.Followers[0]
	ctx := ctxT(t, 90*time.Second)
	cl := groupClient(t, g)
	p, _ := cl.NewProducer()
	defer p.Close()
	send := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: bytes.Repeat([]byte{byte(i)}, 700)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(500)
	f.Kill()
	send(3000) // the follower is now far behind
	f.Restart()
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); send(500) }() // load while it catches up
	wg.Wait()
	end := caughtUp(t, l, f)
	sameLog(t, l, f, end)
}

// The leader killed, the follower promoted: every send acknowledged with
// min-insync 1 is on the new leader, and a consumer group continues from
// its committed offsets with no duplicates beyond those in flight.
func TestPromotionLosesNoAcknowledgedSend(t *testing.T) {
	g := testbroker.StartGroup(t, 1, []string{"--min-insync", "1"}, nil)
	l, f := g.Leader, g.Followers[0]
	ctx := ctxT(t, 90*time.Second)
	cl := groupClient(t, g)
	if err := cl.Admin().CreateTopic(ctx, "pay", 2); err != nil {
		t.Fatal(err)
	}
	p, _ := cl.NewProducer(sdk.WithSendTimeout(2 * time.Second))

	var mu sync.Mutex
	acked := map[string]bool{}
	for i := 0; i < 400; i++ {
		body := fmt.Sprintf("m%d", i)
		if _, err := p.Send(ctx, &sdk.Message{Topic: "pay", Body: []byte(body)}); err != nil {
			t.Fatal(err)
		}
		acked[body] = true
	}
	// A consumer processes and commits part of it.
	first := consumeN(t, ctx, cl, "ledger", "pay", 150)

	// More sends under way when the leader dies.
	load, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; load.Err() == nil; i++ {
				body := fmt.Sprintf("w%d-%d", w, i)
				if _, err := p.Send(load, &sdk.Message{Topic: "pay", Body: []byte(body)}); err == nil {
					mu.Lock()
					acked[body] = true
					mu.Unlock()
				}
			}
		}()
	}
	testbroker.WaitFor(t, "load", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) > 600 })
	l.Kill()
	ac := f.Client()
	info, err := ac.Admin().Promote(ctx, f.Addr)
	if err != nil {
		t.Fatal(err)
	}
	if info.Leader != "b1" || info.Epoch != 2 {
		t.Fatalf("after promotion: %+v", info)
	}
	testbroker.WaitFor(t, "sends to reach the new leader", func() bool {
		_, err := p.Send(ctx, &sdk.Message{Topic: "pay", Body: []byte("after")})
		return err == nil
	})
	stop()
	wg.Wait()
	p.Close()
	mu.Lock()
	acked["after"] = true
	want := len(acked)
	mu.Unlock()

	// Every acknowledged send is on the new leader.
	var total uint64
	for _, ts := range f.Status().Topics {
		if ts.Name == "pay" {
			for _, q := range ts.Queues {
				total += q.Max - q.Min
			}
		}
	}
	all := consumeN(t, ctx, f.Client(), fmt.Sprintf("audit-%d", time.Now().UnixNano()), "pay", int(total))
	have := map[string]int{}
	for _, m := range all {
		have[string(m.Body)]++
	}
	for body := range acked {
		if have[body] == 0 {
			t.Fatalf("acknowledged send %q is not on the new leader (%d acknowledged, %d stored)", body, want, len(all))
		}
	}
	// The group resumes after its commits: nothing it processed comes again.
	rest := consumeN(t, ctx, f.Client(), "ledger", "pay", int(total)-len(first))
	seen := map[string]bool{}
	for _, m := range first {
		seen[string(m.Body)] = true
	}
	for _, m := range rest {
		if seen[string(m.Body)] {
			t.Fatalf("%q consumed again after the failover", m.Body)
		}
	}
}

// The old leader, restarted after a promotion, learns of the newer epoch
// from its peers, stops taking writes, follows the new leader, and drops
// the records the new leader never had.
func TestOldLeaderRejoinsAsFollower(t *testing.T) {
	g := testbroker.StartGroup(t, 1, nil, nil)
	l, f := g.Leader, g.Followers[0]
	ctx := ctxT(t, 90*time.Second)
	cl := groupClient(t, g)
	p, _ := cl.NewProducer()
	for i := 0; i < 200; i++ {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	caughtUp(t, l, f)
	// The follower stops; the leader takes writes it will never copy.
	f.Kill()
	lc := l.Client()
	lp, _ := lc.NewProducer()
	for i := 0; i < 50; i++ {
		if _, err := lp.Send(ctx, &sdk.Message{Topic: "t", Body: []byte("lost-" + fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	lp.Close()
	l.Kill()
	// The follower comes back and is promoted while the leader is down.
	f.Restart()
	if _, err := f.Client().Admin().Promote(ctx, f.Addr); err != nil {
		t.Fatal(err)
	}
	fp, _ := f.Client().NewProducer()
	for i := 0; i < 100; i++ {
		if _, err := fp.Send(ctx, &sdk.Message{Topic: "t", Body: []byte("new-" + fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	fp.Close()
	// The old leader restarts with its old configuration.
	l.Restart()
	testbroker.WaitFor(t, "the old leader to follow the new one", func() bool {
		r := l.Status().Replication
		return r != nil && r.Role == "follower" && r.Following != nil && r.Following.Connected
	})
	end := caughtUp(t, f, l)
	sameLog(t, f, l, end)
	if fr := l.Status().Replication.Following; fr.Truncations != 1 {
		t.Fatalf("the old leader truncated %d times, want 1", fr.Truncations)
	}
	if !strings.Contains(l.Log(), "fenced") {
		t.Fatal("the old leader did not log that it was fenced")
	}
	// Its tables follow the log after the truncation too: a topic created
	// on the new leader appears in the old one's.
	if err := f.Client().Admin().CreateTopic(ctx, "after", 3); err != nil {
		t.Fatal(err)
	}
	testbroker.WaitFor(t, "the old leader to apply a topic created after its truncation", func() bool {
		for _, tp := range l.Status().Topics {
			if tp.Name == "after" {
				return len(tp.Queues) == 3
			}
		}
		return false
	})
}

// The replication link cut for three timeouts and restored: both sides
// notice the silence and say who closed and why, the follower's reconnects
// back off (no tight loop), and replication resumes where it stopped.
func TestReplicationLinkCutAndRestored(t *testing.T) {
	leaderAddr := testbroker.FreeUDPAddr(t)
	rl := newRelay(t, leaderAddr)
	g := startGroupVia(t, leaderAddr, rl.addr(), []string{"--replica-heartbeat", "200ms", "--replica-timeout", "1s"})
	l, f := g.Leader, g.Followers[0]
	ctx := ctxT(t, 90*time.Second)
	cl := groupClient(t, g)
	p, _ := cl.NewProducer()
	defer p.Close()
	send := func(n int) {
		for i := 0; i < n; i++ {
			if _, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: make([]byte, 300)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	send(200)
	caughtUp(t, l, f)
	attempts := rl.clients.Load()

	rl.cut.Store(true)
	testbroker.WaitFor(t, "both sides to drop the silent link", func() bool {
		fr := replStatus(t, f).Following
		lr := replStatus(t, l).Followers
		return fr != nil && !fr.Connected && len(lr) == 1 && !lr[0].Connected
	})
	send(200) // the leader goes on
	cutFor := 3 * time.Second
	time.Sleep(cutFor) // the outage being simulated, not synchronisation
	during := rl.clients.Load() - attempts
	rl.cut.Store(false)
	end := caughtUp(t, l, f)
	sameLog(t, l, f, end)

	fr := replStatus(t, f).Following
	lr := replStatus(t, l).Followers[0]
	t.Logf("connection attempts during a %v cut: %d; follower: %+v; leader: %+v", cutFor, during, fr, lr)
	if during < 1 || during > 15 {
		t.Fatalf("%d connection attempts in %v: want some, but backed off (a tight loop makes dozens)", during, cutFor)
	}
	if fr.Reconnects < 1 || lr.Reconnects < 1 {
		t.Fatalf("no reconnect recorded: follower %d, leader %d", fr.Reconnects, lr.Reconnects)
	}
	// Each side says who closed and why.
	if !strings.Contains(f.Log(), "closed by the follower (this side)") || !strings.Contains(f.Log(), "the leader sent nothing for") {
		t.Fatalf("the follower did not log closing the silent link:\n%s", f.Log())
	}
	if !strings.Contains(l.Log(), "closed by the leader (this side)") || !strings.Contains(l.Log(), "no ack from the follower for") {
		t.Fatalf("the leader did not log closing the silent link:\n%s", l.Log())
	}
}

// startGroupVia starts a leader on leaderAddr and one follower that
// reaches it through via.
func startGroupVia(t *testing.T, leaderAddr, via string, args []string) *testbroker.Group {
	t.Helper()
	g := testbroker.StartGroupAt(t, []string{leaderAddr}, 1, args, append([]string{"--leader", via}, args...))
	return g
}

// A consumer keeps reading from a follower while the leader does not
// answer: it keeps its queues (its group cannot change without a leader)
// and fetches what the follower has.
func TestConsumerReadsFromFollowerWhenLeaderIsDown(t *testing.T) {
	g := testbroker.StartGroup(t, 1, []string{"--min-insync", "1"}, nil)
	l, f := g.Leader, g.Followers[0]
	ctx := ctxT(t, 60*time.Second)
	cl := groupClient(t, g)
	fill(t, ctx, cl, "feed", 2, 200)
	caughtUp(t, l, f)
	// Small fetches and no Poll yet: the consumer buffers 40 messages at
	// most, so most of the 200 can only come after the leader is gone.
	c, err := cl.NewConsumer("readers", []string{"feed"}, sdk.WithManualCommit(), sdk.WithFetchMax(10))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	testbroker.WaitFor(t, "the consumer to hold both queues", func() bool { return len(c.Assigned()) == 2 })
	l.Kill()
	seen := map[string]bool{}
	for len(seen) < 200 {
		msgs, err := c.Poll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range msgs {
			seen[string(m.Body)] = true
		}
	}
	fs := f.Status()
	if fs.Replication.Role != "follower" {
		t.Fatalf("the follower was promoted by someone: %+v", fs.Replication)
	}
	if m := string(f.Get("/metrics")); !strings.Contains(m, "quiver_fetched_records_total") || strings.Contains(m, "quiver_fetched_records_total 0\n") {
		t.Fatal("the follower served no fetch")
	}
}
