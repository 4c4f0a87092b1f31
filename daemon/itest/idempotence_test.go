package itest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
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
