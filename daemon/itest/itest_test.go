// Package itest holds the integration tests of the broker and the SDK: real
// quiverd processes (internal/testbroker) over real QUIC on loopback.
package itest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(wrapped{m})
}

// wrapped removes the binaries testbroker built once the tests ran.
type wrapped struct{ m *testing.M }

func (w wrapped) Run() int {
	code := w.m.Run()
	testbroker.RemoveBuilds()
	return code
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// consumeN consumes with group until n messages arrived or ctx ends, and
// returns them in arrival order.
func consumeN(t *testing.T, ctx context.Context, cl *sdk.Client, group, topic string, n int, opts ...sdk.ConsumerOpt) []*sdk.Message {
	t.Helper()
	c, err := cl.NewConsumer(group, []string{topic}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	var got []*sdk.Message
	rctx, cancel := context.WithCancel(ctx)
	err = c.Run(rctx, func(_ context.Context, m *sdk.Message) error {
		got = append(got, m)
		if len(got) == n {
			cancel()
		}
		return nil
	})
	cancel()
	if cerr := c.Close(); cerr != nil {
		t.Fatalf("consumer close: %v", cerr)
	}
	if len(got) < n {
		t.Fatalf("consumed %d of %d messages before %v", len(got), n, err)
	}
	return got
}

// Produce and consume through a real broker: every field comes back, and
// each queue's offsets are dense and in send order.
func TestProduceConsumeRoundTrip(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "orders", 3); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	const n = 300
	sent := map[string]sdk.SendResult{}
	for i := 0; i < n; i++ {
		m := &sdk.Message{Topic: "orders", Key: []byte(fmt.Sprintf("k%d", i)), Tags: []byte("t"),
			Headers: []sdk.Header{{Key: "i", Value: []byte(fmt.Sprint(i))}},
			Body:    bytes.Repeat([]byte{byte('a' + i%26)}, 1+i*7%3000)}
		res, err := p.Send(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		sent[fmt.Sprint(i)] = res
	}
	got := consumeN(t, ctx, cl, "g", "orders", n)
	next := map[uint32]uint64{}
	for _, m := range got {
		i := string(m.Headers[0].Value)
		res, ok := sent[i]
		if !ok {
			t.Fatalf("message with header i=%s was never sent", i)
		}
		delete(sent, i)
		var idx int
		fmt.Sscan(i, &idx)
		if m.Queue != res.Queue || m.Offset != res.Offset || string(m.Key) != "k"+i || string(m.Tags) != "t" ||
			!bytes.Equal(m.Body, bytes.Repeat([]byte{byte('a' + idx%26)}, 1+idx*7%3000)) {
			t.Fatalf("message %s came back different: queue %d offset %d (sent %d/%d)", i, m.Queue, m.Offset, res.Queue, res.Offset)
		}
		if m.Offset != next[m.Queue] {
			t.Fatalf("queue %d: offset %d after %d", m.Queue, m.Offset, next[m.Queue])
		}
		next[m.Queue]++
	}
	if len(sent) != 0 {
		t.Fatalf("%d messages not consumed", len(sent))
	}
	p.Close()
}

// A batch is one record, compressed as asked, unpacked by the consumer.
func TestBatchesRoundTrip(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	cl.Admin().CreateTopic(ctx, "logs", 1)
	var want []string
	for _, comp := range []sdk.Compression{sdk.NoCompression, sdk.Zstd, sdk.S2} {
		p, err := cl.NewProducer(sdk.WithCompression(comp))
		if err != nil {
			t.Fatal(err)
		}
		var batch []*sdk.Message
		for i := 0; i < 50; i++ {
			body := fmt.Sprintf("comp%d-line%d %s", comp, i, strings.Repeat("x", i))
			want = append(want, body)
			batch = append(batch, &sdk.Message{Topic: "logs", Body: []byte(body)})
		}
		res, err := p.SendBatch(ctx, batch)
		if err != nil {
			t.Fatal(err)
		}
		if res.Count != 50 || res.Offset != uint64(len(want)-50) {
			t.Fatalf("batch acked at offset %d count %d", res.Offset, res.Count)
		}
		p.Close()
	}
	got := consumeN(t, ctx, cl, "g", "logs", len(want))
	for i, m := range got {
		if string(m.Body) != want[i] || m.Offset != uint64(i) {
			t.Fatalf("message %d: offset %d %q, want %q", i, m.Offset, m.Body, want[i])
		}
	}
	// A group whose committed offset falls inside a batch resumes exactly
	// there: the broker sends the whole record, the consumer skips the
	// entries before its offset.
	c, err := cl.NewConsumer("half", []string{"logs"}, sdk.WithManualCommit())
	if err != nil {
		t.Fatal(err)
	}
	// One Poll returns what the fetcher has handed over so far, which may
	// be less than one record's 50 entries: poll until 25 arrived.
	var msgs []*sdk.Message
	for len(msgs) < 25 {
		more, err := c.Poll(ctx)
		if err != nil {
			t.Fatalf("poll after %d messages: %v", len(msgs), err)
		}
		msgs = append(msgs, more...)
	}
	for i, m := range msgs[:25] {
		if m.Offset != uint64(i) {
			t.Fatalf("poll: message %d has offset %d", i, m.Offset)
		}
	}
	if err := c.Commit(ctx, msgs[:25]...); err != nil {
		t.Fatal(err)
	}
	c.Close()
	rest := consumeN(t, ctx, cl, "half", "logs", len(want)-25)
	if rest[0].Offset != 25 || string(rest[0].Body) != want[25] {
		t.Fatalf("resumed at offset %d %q, want 25 %q", rest[0].Offset, rest[0].Body, want[25])
	}
}

// Two members share a topic's queues, a leaving member's queues move to
// the other at once, and no message is processed twice.
func TestConsumerGroupRebalance(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	cl.Admin().CreateTopic(ctx, "jobs", 4)
	p, _ := cl.NewProducer()
	defer p.Close()

	var mu sync.Mutex
	seen := map[string]string{} // body -> member
	dup := ""
	handler := func(member string) func(context.Context, *sdk.Message) error {
		return func(_ context.Context, m *sdk.Message) error {
			mu.Lock()
			defer mu.Unlock()
			if prev, ok := seen[string(m.Body)]; ok && dup == "" {
				dup = fmt.Sprintf("%s consumed by %s and %s", m.Body, prev, member)
			}
			seen[string(m.Body)] = member
			return nil
		}
	}
	fast := []sdk.ConsumerOpt{sdk.WithHeartbeat(200*time.Millisecond, 3*time.Second), sdk.WithAutoCommit(100 * time.Millisecond)}
	c1, err := cl.NewConsumer("workers", []string{"jobs"}, append(fast, sdk.WithMemberID("m1"))...)
	if err != nil {
		t.Fatal(err)
	}
	run1 := make(chan error, 1)
	go func() { run1 <- c1.Run(ctx, handler("m1")) }()
	testbroker.WaitFor(t, "m1 to hold every queue", func() bool { return len(c1.Assigned()) == 4 })

	sendRange := func(from, to int) {
		for i := from; i < to; i++ {
			if _, err := p.Send(ctx, &sdk.Message{Topic: "jobs", Body: []byte(fmt.Sprint(i))}); err != nil {
				t.Error(err)
				return
			}
		}
	}
	sendRange(0, 200)
	c2, err := cl.NewConsumer("workers", []string{"jobs"}, append(fast, sdk.WithMemberID("m2"))...)
	if err != nil {
		t.Fatal(err)
	}
	run2 := make(chan error, 1)
	go func() { run2 <- c2.Run(ctx, handler("m2")) }()
	testbroker.WaitFor(t, "the queues to split 2/2", func() bool { return len(c1.Assigned()) == 2 && len(c2.Assigned()) == 2 })
	sendRange(200, 400)
	testbroker.WaitFor(t, "400 messages consumed", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 400 })
	mu.Lock()
	byM2 := 0
	for _, m := range seen {
		if m == "m2" {
			byM2++
		}
	}
	mu.Unlock()
	if byM2 == 0 {
		t.Fatal("the second member consumed nothing after the rebalance")
	}
	// m2 leaves: m1 gets its queues back without waiting for a session timeout.
	c2.Close()
	<-run2
	testbroker.WaitFor(t, "m1 to hold every queue again", func() bool { return len(c1.Assigned()) == 4 })
	sendRange(400, 500)
	testbroker.WaitFor(t, "500 messages consumed", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 500 })
	c1.Close()
	<-run1
	if dup != "" {
		t.Fatal(dup)
	}
	st := b.Status()
	for _, g := range st.Groups {
		if g.Name != "workers" {
			continue
		}
		for _, o := range g.Offsets {
			if o.Lag != 0 {
				t.Fatalf("group lag after consuming everything: %+v", g.Offsets)
			}
		}
	}
}

// Offsets are committed in the broker's log: a consumer restarted after a
// broker restart resumes after what it processed.
func TestOffsetsResumeAfterRestart(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	cl.Admin().CreateTopic(ctx, "events", 2)
	p, _ := cl.NewProducer()
	for i := 0; i < 100; i++ {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "events", Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	first := consumeN(t, ctx, cl, "g", "events", 40)
	cl.Close()
	if err := b.Stop(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	b.Restart()
	cl = b.Client()
	p, _ = cl.NewProducer()
	for i := 100; i < 120; i++ {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "events", Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	p.Close()
	rest := consumeN(t, ctx, cl, "g", "events", 80)
	seen := map[string]int{}
	for _, m := range append(first, rest...) {
		seen[string(m.Body)]++
	}
	for i := 0; i < 120; i++ {
		if seen[fmt.Sprint(i)] != 1 {
			t.Fatalf("message %d consumed %d times across the restart", i, seen[fmt.Sprint(i)])
		}
	}
}

// Incident 001, broker side, end to end: with the broker's disk stalled,
// a send behind the commit in flight is answered BUSY (retryable, naming
// the real wait and depth) while the disk is still stalled, and the
// producer's error lists every attempt. The commit in flight is not lost.
func TestBusyFastFailureUnderStalledWriter(t *testing.T) {
	b := testbroker.Start(t, "--debug-faults", "--max-queue-wait", "200ms")
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	p, _ := cl.NewProducer(sdk.WithSendTimeout(1500*time.Millisecond), sdk.WithAttemptTimeout(time.Second))
	defer p.Close()
	if _, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte("warm-up")}); err != nil {
		t.Fatal(err)
	}
	b.Post("/debug/faults/stall")
	inFlight := make(chan error, 1)
	slow, _ := cl.NewProducer(sdk.WithSendTimeout(time.Minute), sdk.WithAttemptTimeout(time.Minute))
	defer slow.Close()
	go func() {
		_, err := slow.Send(ctx, &sdk.Message{Topic: "t", Body: []byte("in flight")})
		inFlight <- err
	}()
	testbroker.WaitFor(t, "a flush to stall", func() bool { return strings.Contains(string(b.Get("/debug/faults")), `"stalled_flushes":1`) })

	_, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte("behind the stall")})
	var se *sdk.SendError
	if !errors.As(err, &se) {
		t.Fatalf("send behind a stalled disk: %v", err)
	}
	busy := 0
	for _, a := range se.Attempts {
		var be *wire.Error
		if errors.As(a.Err, &be) && be.Code == wire.CodeBusy {
			busy++
			if !strings.Contains(be.Message, "waited") || !strings.Contains(be.Message, "size of queue") {
				t.Fatalf("BUSY does not name the wait and the depth: %q", be.Message)
			}
		}
	}
	if busy == 0 || !sdk.Retryable(se.Err) {
		t.Fatalf("no retryable BUSY among the attempts: %v", err)
	}
	if !strings.Contains(string(b.Get("/debug/faults")), `"stalled_flushes":1`) {
		t.Fatal("the send failed only after the stall ended: not a fast failure")
	}
	select {
	case err := <-inFlight:
		t.Fatalf("the send in flight finished during the stall: %v", err)
	default:
	}
	if st := b.Status(); st.SendQueue.BusyTotal == 0 {
		t.Fatalf("status does not count BUSY answers: %+v", st.SendQueue)
	}
	if !strings.Contains(string(b.Get("/metrics")), "quiver_send_queue_busy_total") {
		t.Fatal("no BUSY metric")
	}
	b.Post("/debug/faults/resume")
	if err := <-inFlight; err != nil {
		t.Fatalf("the send in flight during the stall failed: %v", err)
	}
	// After the stall the broker takes sends again.
	if _, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte("after")}); err != nil {
		t.Fatal(err)
	}
}

// Incident 004, broker side: a client whose Hello is always refused (bad
// credentials) gets a non-retryable error at once, its reconnects back off
// instead of looping, and the broker counts the failures per source and
// logs at most one line about them.
func TestRefusedHandshakeIsNotALoop(t *testing.T) {
	b := testbroker.Start(t, "--tokens", "s3cret")
	var reported []error
	var mu sync.Mutex
	cl := b.Client(sdk.WithCredentials([]byte("wrong")), sdk.WithClientID("stale-app"),
		sdk.WithErrorHandler(func(err error) { mu.Lock(); reported = append(reported, err); mu.Unlock() }))
	p, _ := cl.NewProducer()
	defer p.Close()
	ctx := ctxT(t, 30*time.Second)
	start := time.Now()
	sends := 0
	for time.Since(start) < 2*time.Second {
		_, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte("x")})
		var he *sdk.HandshakeError
		if !errors.As(err, &he) || sdk.Retryable(err) {
			t.Fatalf("send with refused credentials: %v", err)
		}
		var be *wire.Error
		if !errors.As(err, &be) || be.Code != wire.CodeUnauthorized {
			t.Fatalf("the refusal does not carry UNAUTHORIZED: %v", err)
		}
		sends++
	}
	st := b.Status()
	var fails int64
	for _, f := range st.Connections.FailedHandshakes {
		if f.ClientID == "stale-app" {
			fails += f.Count
			if !strings.Contains(f.LastReason, "UNAUTHORIZED") {
				t.Fatalf("failure reason: %q", f.LastReason)
			}
		}
	}
	// Hard failures back off from 5s (never under half of it): at most two
	// sessions in two seconds, however many sends the application made.
	if fails < 1 || fails > 2 {
		t.Fatalf("%d refused sessions in 2s of %d sends; want 1 or 2", fails, sends)
	}
	mu.Lock()
	nrep := len(reported)
	mu.Unlock()
	if nrep < 1 || int64(nrep) != fails {
		t.Fatalf("%d refusals reported to the application, %d refused sessions", nrep, fails)
	}
	if n := strings.Count(b.Log(), "connections closed before a session was established"); n != 1 {
		t.Fatalf("the broker logged %d lines about the refused client, want 1", n)
	}
}

// SIGTERM stops the broker gracefully: every acknowledged message, async
// ones included, is on disk after the restart.
func TestGracefulStopKeepsAsyncSends(t *testing.T) {
	b := testbroker.Start(t, "--durability", "async", "--async-interval", "1h")
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	cl.Admin().CreateTopic(ctx, "t", 1)
	p, _ := cl.NewProducer()
	for i := 0; i < 50; i++ {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte(fmt.Sprint(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if st := b.Status(); st.Lag.WrittenNotDurable == 0 {
		t.Fatal("async sends were synced already; the test would prove nothing")
	}
	p.Close()
	cl.Close()
	if err := b.Stop(); err != nil {
		t.Fatalf("graceful stop: %v", err)
	}
	if !strings.Contains(b.Log(), "stopped cleanly") {
		t.Fatalf("no clean stop in the log:\n%s", b.Log())
	}
	b.Restart()
	got := consumeN(t, ctx, b.Client(), "g", "t", 50)
	for i, m := range got {
		if string(m.Body) != fmt.Sprint(i) {
			t.Fatalf("message %d: %q", i, m.Body)
		}
	}
}

// SendAsync calls every callback exactly once, in completion order on one
// goroutine, and every acknowledged message is stored; SendOneway's
// messages arrive on a healthy connection (it reports nothing either way).
func TestAsyncAndOnewaySends(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	cl.Admin().CreateTopic(ctx, "async", 2)
	p, err := cl.NewProducer(sdk.WithMaxInFlight(64))
	if err != nil {
		t.Fatal(err)
	}
	const n = 2000
	var mu sync.Mutex
	calls := map[int]int{}
	offsets := map[[2]uint64]bool{}
	for i := 0; i < n; i++ {
		i := i
		err := p.SendAsync(ctx, &sdk.Message{Topic: "async", Body: []byte(fmt.Sprint(i))}, func(res sdk.SendResult, err error) {
			mu.Lock()
			defer mu.Unlock()
			calls[i]++
			if err != nil {
				t.Errorf("async send %d: %v", i, err)
				return
			}
			offsets[[2]uint64{uint64(res.Queue), res.Offset}] = true
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := p.Close(); err != nil { // waits for every callback
		t.Fatal(err)
	}
	if len(calls) != n || len(offsets) != n {
		t.Fatalf("%d callbacks for %d sends, %d distinct offsets", len(calls), n, len(offsets))
	}
	for i, c := range calls {
		if c != 1 {
			t.Fatalf("callback of send %d ran %d times", i, c)
		}
	}
	ow, _ := cl.NewProducer()
	for i := 0; i < 100; i++ {
		if err := ow.SendOneway(ctx, &sdk.Message{Topic: "async", Body: []byte("oneway")}); err != nil {
			t.Fatal(err)
		}
	}
	ow.Close()
	got := consumeN(t, ctx, cl, "g", "async", n+100)
	oneway := 0
	for _, m := range got {
		if string(m.Body) == "oneway" {
			oneway++
		}
	}
	if oneway != 100 {
		t.Fatalf("%d of 100 oneway messages arrived", oneway)
	}
}

// The broker learns which SDK build talks to it: the status lists the
// build of each open session, and the log names a build the first time it
// connects. The broker says its own build too.
func TestClientBuildInStatus(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	if err := cl.Admin().CreateTopic(ctxT(t, 30*time.Second), "builds", 1); err != nil {
		t.Fatal(err)
	}
	want := fmt.Sprintf("; %s; %s/%s)", runtime.Version(), runtime.GOOS, runtime.GOARCH)
	st := b.Status()
	found := false
	for _, c := range st.Connections.Clients {
		found = found || strings.HasPrefix(c.Build, "quiver-go/") && strings.HasSuffix(c.Build, want) && c.Sessions >= 1
	}
	if !found {
		t.Fatalf("no session of this SDK's build (quiver-go/... %s) in %+v", want, st.Connections.Clients)
	}
	if !strings.Contains(b.Log(), "a client build connected for the first time") {
		t.Fatal("the broker did not log the client's build")
	}
	if !strings.Contains(st.Broker.Build, runtime.Version()) || st.Broker.Version == "" {
		t.Fatalf("broker build %q, version %q", st.Broker.Build, st.Broker.Version)
	}
}
