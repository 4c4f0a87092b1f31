package itest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// copies counts how often each body is stored in topic (n messages in all).
func copies(t *testing.T, cl *sdk.Client, topic string, n int) map[string][]string {
	t.Helper()
	ctx := ctxT(t, 30*time.Second)
	at := map[string][]string{}
	for _, m := range consumeN(t, ctx, cl, "count-"+topic, topic, n) {
		at[string(m.Body)] = append(at[string(m.Body)], fmt.Sprintf("%d/%d", m.Queue, m.Offset))
	}
	return at
}

// A send whose first attempt reached the broker but whose answer did not
// come in time is retried on the same broker: with idempotence (the
// default) the broker stores it once and answers the retry with the first
// copy's position; without it, it is stored twice. The disk is stalled so
// that the first copy is still being stored when the retry arrives.
func TestRetriedSendIsStoredOnce(t *testing.T) {
	b := testbroker.Start(t, "--debug-faults", "--max-queue-wait", "30s")
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "once", 1); err != nil {
		t.Fatal(err)
	}
	retried := func(body string, opts ...sdk.ProducerOpt) sdk.SendResult {
		p, err := cl.NewProducer(append([]sdk.ProducerOpt{sdk.WithSendTimeout(30 * time.Second),
			sdk.WithAttemptTimeout(200 * time.Millisecond)}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if _, err := p.Send(ctx, &sdk.Message{Topic: "once", Body: []byte("warm-" + body)}); err != nil {
			t.Fatal(err)
		}
		before := metric(t, b, "quiver_produce_requests_total")
		b.Post("/debug/faults/stall")
		var res sdk.SendResult
		var err2 error
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); res, err2 = p.Send(ctx, &sdk.Message{Topic: "once", Body: []byte(body)}) }()
		// The first attempt times out on the stalled disk and the send is
		// retried on the same broker (the only one).
		testbroker.WaitFor(t, "a retry to reach the broker", func() bool {
			frames := metric(t, b, "quiver_produce_requests_total") - before
			return frames >= 2
		})
		b.Post("/debug/faults/resume")
		wg.Wait()
		if err2 != nil || res.Attempts < 2 {
			t.Fatalf("%s: %+v, %v; want success after a retry", body, res, err2)
		}
		return res
	}
	res := retried("idempotent")
	if dups := metric(t, b, "quiver_produce_duplicates_total"); dups < 1 {
		t.Fatalf("the broker counted %v duplicates", dups)
	}
	retried("not-idempotent", sdk.WithoutIdempotence())

	at := copies(t, cl, "once", 5)
	if got := at["idempotent"]; len(got) != 1 || got[0] != fmt.Sprintf("%d/%d", res.Queue, res.Offset) {
		t.Fatalf("the idempotent send is stored at %v; want once, at %d/%d where it was acknowledged", got, res.Queue, res.Offset)
	}
	if got := at["not-idempotent"]; len(got) != 2 {
		t.Fatalf("without idempotence the retried send is stored at %v; want twice (or this test proves nothing)", got)
	}
}

// The same through a frozen leader: SIGSTOP while a send is on its way,
// retries pile up, SIGCONT: the broker takes the first copy and answers
// the retries with it.
func TestSendThroughAFrozenBrokerIsStoredOnce(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "frozen", 1); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer(sdk.WithSendTimeout(30*time.Second), sdk.WithAttemptTimeout(200*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Send(ctx, &sdk.Message{Topic: "frozen", Body: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	b.Pause()
	done := make(chan struct{})
	var res sdk.SendResult
	go func() { defer close(done); res, err = p.Send(ctx, &sdk.Message{Topic: "frozen", Body: []byte("once")}) }()
	time.Sleep(time.Second) // the fault: frozen for 1 s, five attempt timeouts
	b.Resume()
	<-done
	if err != nil || res.Attempts < 2 {
		t.Fatalf("send through a frozen broker: %+v, %v; want success after retries", res, err)
	}
	if dups := metric(t, b, "quiver_produce_duplicates_total"); dups < 1 {
		t.Fatalf("the broker took no retry for a duplicate (%v): the freeze did not make the send retry on it", dups)
	}
	at := copies(t, cl, "frozen", 2)
	if got := at["once"]; len(got) != 1 || got[0] != fmt.Sprintf("%d/%d", res.Queue, res.Offset) {
		t.Fatalf("stored at %v, want once at %d/%d (%d attempts)", got, res.Queue, res.Offset, res.Attempts)
	}
}

// Messages that went in one coalesced frame and are retried alone (each
// keeps its sequence number) are each answered with their own place in
// the first frame's batch, and stored once.
func TestRetriedCoalescedSendsAreStoredOnce(t *testing.T) {
	b := testbroker.Start(t, "--debug-faults", "--max-queue-wait", "30s")
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "batched-once", 1); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer(sdk.WithSendTimeout(30*time.Second), sdk.WithAttemptTimeout(200*time.Millisecond),
		sdk.WithLinger(50*time.Millisecond)) // the sends below share one frame
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Send(ctx, &sdk.Message{Topic: "batched-once", Body: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	b.Post("/debug/faults/stall")
	const n = 8
	type outcome struct {
		body string
		res  sdk.SendResult
		err  error
	}
	done := make(chan outcome, n)
	for i := 0; i < n; i++ {
		body := fmt.Sprintf("m%d", i)
		if err := p.SendAsync(ctx, &sdk.Message{Topic: "batched-once", Body: []byte(body)}, func(res sdk.SendResult, err error) {
			done <- outcome{body, res, err}
		}); err != nil {
			t.Fatal(err)
		}
	}
	testbroker.WaitFor(t, "every message's retry to reach the broker", func() bool {
		return metric(t, b, "quiver_produce_duplicates_total") >= n
	})
	b.Post("/debug/faults/resume")
	acked := map[string]string{}
	for range n {
		o := <-done
		if o.err != nil || o.res.Attempts < 2 {
			t.Fatalf("%s: %+v, %v; want success after a retry", o.body, o.res, o.err)
		}
		acked[o.body] = fmt.Sprintf("%d/%d", o.res.Queue, o.res.Offset)
	}
	at := copies(t, cl, "batched-once", n+1)
	for body, pos := range acked {
		if got := at[body]; len(got) != 1 || got[0] != pos {
			t.Fatalf("%s is stored at %v; want once, at %s where it was acknowledged", body, got, pos)
		}
	}
}

// replay sends messages seq..seq+n-1 of producer pid to topic over conn,
// one per Produce, as a retry of a send whose answer was lost sends them
// again: same producer id, same sequence number, same body.
func replay(t *testing.T, ctx context.Context, conn *testbroker.Conn, topic string, pid uint64, from, n int) []wire.ProduceAck {
	t.Helper()
	var acks []wire.ProduceAck
	for seq := from; seq < from+n; seq++ {
		ack, err := conn.Produce(ctx, wire.Produce{Topic: topic, ProducerID: pid, Seq: uint64(seq), Body: []byte(fmt.Sprintf("m%d", seq))})
		if err != nil {
			t.Fatalf("send %d: %v", seq, err)
		}
		acks = append(acks, ack)
	}
	return acks
}

// sameAcks checks that retries were answered where the first copies were.
func sameAcks(t *testing.T, what string, first, retried []wire.ProduceAck) {
	t.Helper()
	for i := range first {
		if first[i].Queue != retried[i].Queue || first[i].Offset != retried[i].Offset {
			t.Fatalf("%s: message %d was stored at %d/%d and its retry answered with %d/%d", what, i,
				first[i].Queue, first[i].Offset, retried[i].Queue, retried[i].Offset)
		}
	}
}

// A send whose answer was lost is retried after the broker restarted,
// by kill -9 and by a clean stop: the broker knows the sends its log holds
// (the producer table is recovered at start: from its snapshot and the log
// after it) and answers each retry with the first copy's position; every
// message is stored once.
func TestRetryAfterARestartIsStoredOnce(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "restart-once", 2); err != nil {
		t.Fatal(err)
	}
	const pid, n = 0x5eed, 20
	dial := func() *testbroker.Conn {
		conn, err := testbroker.DialAt(ctx, b.Addr, b.CAFile)
		if err != nil {
			t.Fatal(err)
		}
		return conn
	}
	conn := dial()
	first := replay(t, ctx, conn, "restart-once", pid, 1, n)
	conn.Close()
	for _, restart := range []struct {
		name string
		stop func()
	}{{"kill -9", b.Kill}, {"clean stop", func() { b.Stop() }}} {
		restart.stop()
		b.Restart()
		before := metric(t, b, "quiver_produce_duplicates_total")
		conn := dial()
		sameAcks(t, "after "+restart.name, first, replay(t, ctx, conn, "restart-once", pid, 1, n))
		conn.Close()
		if d := metric(t, b, "quiver_produce_duplicates_total") - before; d != n {
			t.Fatalf("after %s the broker counted %v duplicates, want %d", restart.name, d, n)
		}
	}
	conn = dial()
	replay(t, ctx, conn, "restart-once", pid, n+1, 1) // a new message is stored
	conn.Close()
	cl = b.Client()
	at := copies(t, cl, "restart-once", n+1)
	for seq := 1; seq <= n+1; seq++ {
		if got := at[fmt.Sprintf("m%d", seq)]; len(got) != 1 {
			t.Fatalf("m%d is stored at %v, want once", seq, got)
		}
	}
}

// The same across a failover: the leader that took the sends is killed;
// the follower elected in its place took the same records, so it knows
// the sends, and answers their retries with the first copies' positions.
func TestRetryAfterAFailoverIsStoredOnce(t *testing.T) {
	c := testbroker.StartControlled(t, 3, []string{"--min-insync", "1"}, nil)
	cl := c.Client(t)
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "failover-once", 2); err != nil {
		t.Fatal(err)
	}
	const pid, n = 0xfa11, 20
	old := c.Leader(t)
	conn, err := testbroker.DialAt(ctx, old.Addr, c.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	first := replay(t, ctx, conn, "failover-once", pid, 1, n)
	conn.Close()
	old.Kill()
	nl := c.Leader(t)
	if nl == old {
		t.Fatal("the killed broker still leads")
	}
	conn, err = testbroker.DialAt(ctx, nl.Addr, c.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	sameAcks(t, "after the failover", first, replay(t, ctx, conn, "failover-once", pid, 1, n))
	replay(t, ctx, conn, "failover-once", pid, n+1, 1)
	conn.Close()
	if d := metric(t, nl, "quiver_produce_duplicates_total"); d != n {
		t.Fatalf("the new leader counted %v duplicates, want %d", d, n)
	}
	at := copies(t, c.Client(t), "failover-once", n+1)
	for seq := 1; seq <= n+1; seq++ {
		if got := at[fmt.Sprintf("m%d", seq)]; len(got) != 1 {
			t.Fatalf("m%d is stored at %v, want once", seq, got)
		}
	}
}

// A retry is never answered before the first copy is on the in-sync
// followers: a send that failed for want of replicas is in the leader's
// log, and its retry, while the follower is frozen, fails the same way;
// once the follower is back, the retry is answered with the stored copy,
// and the message is stored once.
func TestRetryOfAnUnreplicatedSendWaitsForTheFollowers(t *testing.T) {
	g := testbroker.StartGroup(t, 1, []string{"--min-insync", "1", "--replica-ack-timeout", "500ms"}, nil)
	ctx := ctxT(t, 60*time.Second)
	conn, err := testbroker.DialAt(ctx, g.Leader.Addr, g.Bundle)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	send := func() (wire.ProduceAck, error) {
		return conn.Produce(ctx, wire.Produce{Topic: "replicated-once", ProducerID: 0xacc, Seq: 1, Body: []byte("m1")})
	}
	testbroker.WaitFor(t, "the follower in the in-sync set", func() bool { return len(replStatus(t, g.Leader).ISR) == 1 })
	if _, err := conn.Produce(ctx, wire.Produce{Topic: "replicated-once", Body: []byte("warm")}); err != nil {
		t.Fatal(err)
	}
	f := g.Followers[0]
	f.Pause()
	for try := 0; try < 2; try++ { // the send, then its retry
		_, err := send()
		if werr, ok := err.(*wire.Error); !ok || werr.Code != wire.CodeNotEnoughReplicas {
			f.Resume()
			t.Fatalf("attempt %d with the follower frozen: %v, want NOT_ENOUGH_REPLICAS", try, err)
		}
	}
	f.Resume()
	var ack wire.ProduceAck
	testbroker.WaitFor(t, "the retry to be answered once the follower is back", func() bool {
		ack, err = send()
		return err == nil
	})
	at := copies(t, groupClient(t, g), "replicated-once", 2)
	if got := at["m1"]; len(got) != 1 || got[0] != fmt.Sprintf("%d/%d", ack.Queue, ack.Offset) {
		t.Fatalf("m1 is stored at %v, want once at %d/%d", got, ack.Queue, ack.Offset)
	}
}
