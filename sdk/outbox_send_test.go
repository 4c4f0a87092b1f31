package sdk

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/quivermq/quiver/sdk/internal/outbox"
)

// nowhereClient is a client whose only broker does not exist: every send
// exhausts its retries on network errors.
func nowhereClient(t *testing.T) *Client {
	t.Helper()
	cl, err := NewClient(WithBrokers("127.0.0.1:9"), WithFingerprint(strings.Repeat("ab", 32)), WithDialTimeout(100*time.Millisecond),
		WithReconnectBackoff(10*time.Millisecond, 50*time.Millisecond, time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return cl
}

// With an outbox, a send whose retries ran out returns no error and is
// kept on disk, in order; a later message of a key already there follows
// it without an attempt; a send the application cancelled is not kept;
// what the outbox holds outlives the producer.
func TestOutboxKeepsWhatRetriesCouldNot(t *testing.T) {
	cl := nowhereClient(t)
	dir := t.TempDir()
	p, err := cl.NewProducer(WithOutbox(dir), WithSendTimeout(300*time.Millisecond), WithAttemptTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	send := func(key, body string) SendResult {
		t.Helper()
		m := &Message{Topic: "orders", Body: []byte(body)}
		if key != "" {
			m.Key = []byte(key)
		}
		res, err := p.Send(ctx, m)
		if err != nil || !res.Outboxed {
			t.Fatalf("send %s with the cluster down: %+v, %v", body, res, err)
		}
		return res
	}
	if res := send("", "a"); len(res.Failed) < 2 || res.Failed[0].Code != "NETWORK" || res.Broker != "" {
		t.Fatalf("an outboxed send names its failed attempts: %+v", res)
	}
	if res := send("k1", "b"); len(res.Failed) == 0 {
		t.Fatalf("the first message of k1 was tried: %+v", res)
	}
	if res := send("k1", "c"); len(res.Failed) != 0 {
		t.Fatalf("a message of k1 behind one in the outbox must not be tried (it could overtake it): %+v", res)
	}
	// SendAsync: the callback sees the same.
	got := make(chan SendResult, 1)
	if err := p.SendAsync(ctx, &Message{Topic: "orders", Key: []byte("k1"), Body: []byte("d")}, func(r SendResult, err error) {
		if err != nil {
			r.Topic = "error: " + err.Error()
		}
		got <- r
	}); err != nil {
		t.Fatal(err)
	}
	if r := <-got; !r.Outboxed {
		t.Fatalf("async send: %+v", r)
	}
	// Cancelled by the application: an error, not kept.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := p.Send(cctx, &Message{Topic: "orders", Body: []byte("cancelled")}); !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled send: %v", err)
	}
	st := p.Outbox()
	if st.Pending != 4 || st.Added != 4 || st.Resent != 0 || st.Dir != dir {
		t.Fatalf("stats: %+v", st)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	ob, err := outbox.Open(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer ob.Close()
	var bodies []string
	for {
		id, req, ok, err := ob.Peek()
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			break
		}
		if req.ClientTime == 0 || req.Count != 1 {
			t.Fatalf("entry %d lost its send time or count: %+v", id, req)
		}
		bodies = append(bodies, string(req.Key)+":"+string(req.Body))
		if err := ob.Ack(id); err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(bodies) != "[:a k1:b k1:c k1:d]" {
		t.Fatalf("outbox after close holds %v", bodies)
	}
}

// A full outbox does not swallow the send: the error says both what the
// brokers said and that the outbox refused it.
func TestOutboxFullReturnsTheError(t *testing.T) {
	cl := nowhereClient(t)
	p, err := cl.NewProducer(WithOutbox(t.TempDir()), WithOutboxLimit(300),
		WithSendTimeout(200*time.Millisecond), WithAttemptTimeout(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	body := make([]byte, 200)
	if res, err := p.Send(context.Background(), &Message{Topic: "t", Body: body}); err != nil || !res.Outboxed {
		t.Fatalf("first send: %+v %v", res, err)
	}
	_, err = p.Send(context.Background(), &Message{Topic: "t", Body: body})
	var se *SendError
	if !errors.Is(err, ErrOutboxFull) || !errors.As(err, &se) || len(se.Attempts) == 0 {
		t.Fatalf("send past the outbox's limit: %v", err)
	}
	if st := p.Outbox(); st.Pending != 1 {
		t.Fatalf("pending %d after a refused add", st.Pending)
	}
}

// One producer per outbox dir: a second is refused, not allowed to resend
// the same entries.
func TestOutboxDirIsExclusive(t *testing.T) {
	cl := nowhereClient(t)
	dir := t.TempDir()
	p, err := cl.NewProducer(WithOutbox(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := cl.NewProducer(WithOutbox(dir)); err == nil {
		t.Fatal("a second producer opened the same outbox")
	}
}

// holeClient is a client whose one broker address takes datagrams and
// never answers: a dial to it waits out its 5 s timeout.
func holeClient(t *testing.T) (net.PacketConn, *Client) {
	t.Helper()
	hole, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { hole.Close() })
	cl, err := NewClient(WithBrokers(hole.LocalAddr().String()), WithFingerprint(strings.Repeat("ab", 32)), WithDialTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return hole, cl
}

// SendAsync never makes its caller wait for the routes or a dial (a probe
// of a dead broker can take the whole attempt): the send goes on in the
// background and its callback reports it.
func TestSendAsyncNeverWaitsOnItsCaller(t *testing.T) {
	_, cl := holeClient(t)
	p, err := cl.NewProducer(WithSendTimeout(5*time.Second), WithAttemptTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	if err := p.SendAsync(ctx, &Message{Topic: "t", Body: []byte("x")}, func(_ SendResult, err error) { done <- err }); err != nil {
		t.Fatal(err)
	}
	// Cancelled as soon as SendAsync returned: had it waited for the
	// routes or the dial, an attempt would have ended (after the 2 s route
	// request or the 5 s dial) before the cancel.
	cancel()
	err = <-done
	var se *SendError
	if !errors.As(err, &se) || !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled send: %v", err)
	}
	for _, a := range se.Attempts {
		if a.Code != "CANCELLED" {
			t.Fatalf("an attempt ended before SendAsync returned: %v", a)
		}
	}
}

// A route fetch the caller cancels mid-dial reads CANCELLED, not NETWORK:
// the send was given up, the network did not fail (CI once caught SendAsync's
// background fetch reporting a cancel as a network failure).
func TestRouteFetchCancelledMidDialIsCancelled(t *testing.T) {
	hole, cl := holeClient(t)
	ctx, cancel := context.WithCancel(context.Background())
	// Cancel once the dial's first datagram has reached the hole: the fetch
	// is then certainly mid-dial.
	go func() {
		buf := make([]byte, 2048)
		if _, _, err := hole.ReadFrom(buf); err == nil {
			cancel()
		}
	}()
	_, err := cl.router.routes(ctx)
	if !errors.Is(err, context.Canceled) || codeOf(err) != "CANCELLED" || Retryable(err) {
		t.Fatalf("cancelled route fetch: %v (code %s, retryable %v)", err, codeOf(err), Retryable(err))
	}
}
