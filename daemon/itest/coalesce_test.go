package itest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// metric reads one unlabelled sample (or the first matching line) from
// the broker's /metrics.
func metric(t *testing.T, b *testbroker.Broker, name string) float64 {
	t.Helper()
	return b.Metric(name)
}

// Natural batching: many concurrent keyless sends of one client's
// producers share frames, and each message still gets its own result: a
// distinct queue offset, where a consumer then finds exactly that message.
func TestCoalescedSendsEachGetTheirOwnResult(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "events", 2); err != nil {
		t.Fatal(err)
	}
	var ps [4]*sdk.Producer // frames are shared across a client's producers
	for i := range ps {
		p, err := cl.NewProducer()
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		ps[i] = p
	}
	const senders, each = 64, 20
	type sent struct {
		body string
		res  sdk.SendResult
	}
	var mu sync.Mutex
	var all []sent
	var wg sync.WaitGroup
	for s := 0; s < senders; s++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				body := fmt.Sprintf("s%d-m%d-%s", s, i, strings.Repeat("x", (s*7+i)%300))
				res, err := ps[s%len(ps)].Send(ctx, &sdk.Message{Topic: "events", Body: []byte(body),
					Headers: []sdk.Header{{Key: "s", Value: []byte(strconv.Itoa(s))}}})
				if err != nil {
					t.Errorf("send %s: %v", body, err)
					return
				}
				mu.Lock()
				all = append(all, sent{body, res})
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	at := map[string]string{}
	for _, s := range all {
		k := fmt.Sprintf("%d/%d", s.res.Queue, s.res.Offset)
		if other, dup := at[k]; dup {
			t.Fatalf("%s and %s were both acknowledged at %s", other, s.body, k)
		}
		if s.res.Count != 1 || s.res.Attempts != 1 {
			t.Fatalf("%s: result %+v", s.body, s.res)
		}
		at[k] = s.body
	}
	frames, msgs := metric(t, b, "quiver_produce_latency_seconds_count"), metric(t, b, "quiver_produced_messages_total")
	t.Logf("%d messages in %.0f produce frames", len(all), frames)
	if msgs != senders*each || frames >= msgs {
		t.Fatalf("%v messages in %v frames: the sends were not coalesced", msgs, frames)
	}
	for _, m := range consumeN(t, ctx, cl, "g", "events", senders*each) {
		k := fmt.Sprintf("%d/%d", m.Queue, m.Offset)
		if at[k] != string(m.Body) || len(m.Headers) != 1 || !strings.HasPrefix(string(m.Body), "s"+string(m.Headers[0].Value)+"-") {
			t.Fatalf("%s holds %q (headers %v), acknowledged there: %q", k, m.Body, m.Headers, at[k])
		}
		delete(at, k)
	}
	if len(at) != 0 {
		t.Fatalf("%d acknowledged messages not consumed", len(at))
	}
}

// A coalesced frame is acknowledged only once its bytes are synced: with
// the broker's disk stalled, no send of any frame succeeds; once it
// resumes, every one does, each with its own offset.
func TestCoalescedSendsWaitForTheSync(t *testing.T) {
	b := testbroker.Start(t, "--debug-faults", "--max-queue-wait", "30s")
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	p, _ := cl.NewProducer(sdk.WithSendTimeout(30*time.Second), sdk.WithAttemptTimeout(20*time.Second))
	defer p.Close()
	if _, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte("warm-up")}); err != nil {
		t.Fatal(err)
	}
	framesBefore := metric(t, b, "quiver_produce_latency_seconds_count")
	b.Post("/debug/faults/stall")
	const n = 40
	results := make(chan error, n)
	offsets := make(chan string, n)
	for i := 0; i < n; i++ {
		go func() {
			res, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte(fmt.Sprint(i))})
			if err == nil && res.Attempts != 1 {
				err = fmt.Errorf("acknowledged after %d attempts, failed ones: %v", res.Attempts, res.Failed)
			}
			if err == nil {
				offsets <- fmt.Sprintf("%d/%d", res.Queue, res.Offset)
			}
			results <- err
		}()
	}
	// The first frames reach the stalled disk (the only produce traffic:
	// the stalled flush holds this test's sends); the rest wait in the SDK.
	testbroker.WaitFor(t, "a flush to stall", func() bool { return strings.Contains(string(b.Get("/debug/faults")), `"stalled_flushes":1`) })
	select {
	case err := <-results:
		t.Fatalf("a send returned while the disk was stalled: %v", err)
	default:
	}
	b.Post("/debug/faults/resume")
	seen := map[string]bool{}
	for i := 0; i < n; i++ {
		if err := <-results; err != nil {
			t.Fatalf("send after the stall: %v", err)
		}
		off := <-offsets
		if seen[off] {
			t.Fatalf("queue/offset %s acknowledged twice", off)
		}
		seen[off] = true
	}
	if frames := metric(t, b, "quiver_produce_latency_seconds_count") - framesBefore; frames >= n {
		t.Fatalf("%d sends in %v frames: not coalesced", n, frames)
	}
}

// A coalesced frame that fails fails each of its messages as that
// attempt, and each is retried on its own, exactly as a lone send: here
// the broker refuses every send (DISK_FULL, retryable) until the send
// timeout, so every message ends with its own error naming its own
// attempts, all DISK_FULL, while the broker saw fewer frames than
// attempts.
func TestFailedCoalescedFrameFailsEachMessage(t *testing.T) {
	b := testbroker.Start(t, "--disk-reserve", strconv.FormatInt(1<<60, 10))
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	p, _ := cl.NewProducer(sdk.WithSendTimeout(400 * time.Millisecond))
	defer p.Close()
	const n = 30
	errs := make(chan error, n)
	for i := 0; i < n; i++ {
		go func() {
			_, err := p.Send(ctx, &sdk.Message{Topic: "t", Body: []byte(fmt.Sprint(i))})
			errs <- err
		}()
	}
	attempts := 0
	for i := 0; i < n; i++ {
		err := <-errs
		var se *sdk.SendError
		if !errors.As(err, &se) || len(se.Attempts) < 2 {
			t.Fatalf("send to a full disk: %v (want a SendError after retries)", err)
		}
		for _, a := range se.Attempts {
			var we *wire.Error
			if !errors.As(a.Err, &we) || we.Code != wire.CodeDiskFull {
				t.Fatalf("attempt %v: want DISK_FULL", a.Err)
			}
		}
		attempts += len(se.Attempts)
	}
	refused := 0.0
	sc := bufio.NewScanner(bytes.NewReader(b.Get("/metrics")))
	for sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, `quiver_produce_errors_total{code="DISK_FULL"}`) {
			refused, _ = strconv.ParseFloat(strings.Fields(line)[1], 64)
		}
	}
	t.Logf("%d attempts of %d messages in %.0f refused frames", attempts, n, refused)
	if refused == 0 || refused >= float64(attempts) {
		t.Fatalf("%d attempts in %v refused frames: not coalesced", attempts, refused)
	}
}

// WithLinger: sends made one after the other with nothing in flight, which
// natural batching alone sends in frames of their own, wait for each other
// and go in one frame, each with its own offset, in the order sent.
func TestLingerBatchesSendsWithNothingInFlight(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "lingered", 1); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer(sdk.WithLinger(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if _, err := p.Send(ctx, &sdk.Message{Topic: "lingered", Body: []byte("warm-up")}); err != nil {
		t.Fatal(err)
	}
	before := metric(t, b, "quiver_produce_latency_seconds_count")
	const n = 20
	type outcome struct {
		i   int
		res sdk.SendResult
		err error
	}
	done := make(chan outcome, n)
	for i := 0; i < n; i++ {
		err := p.SendAsync(ctx, &sdk.Message{Topic: "lingered", Body: []byte(fmt.Sprint(i))}, func(res sdk.SendResult, err error) {
			done <- outcome{i, res, err}
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	offsets := make([]uint64, n)
	for range n {
		o := <-done
		if o.err != nil {
			t.Fatalf("send %d: %v", o.i, o.err)
		}
		offsets[o.i] = o.res.Offset
	}
	for i := range offsets {
		if offsets[i] != offsets[0]+uint64(i) {
			t.Fatalf("offsets %v: want consecutive, in the order sent", offsets)
		}
	}
	if frames := metric(t, b, "quiver_produce_latency_seconds_count") - before; frames != 1 {
		t.Fatalf("%d lingered sends went in %v frames, want 1", n, frames)
	}
}

// SendBatchAsync: each batch's callback has its first offset and count,
// the batch was encoded before the call returned (the caller reuses its
// messages at once), and a consumer finds every message where its batch's
// result says.
func TestSendBatchAsync(t *testing.T) {
	b := testbroker.Start(t)
	cl := b.Client()
	ctx := ctxT(t, 60*time.Second)
	p, err := cl.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	const batches, size = 6, 5
	type outcome struct {
		b   int
		res sdk.SendResult
		err error
	}
	done := make(chan outcome, batches)
	msgs := make([]*sdk.Message, size)
	for i := range msgs {
		msgs[i] = &sdk.Message{Topic: "batched"}
	}
	for bi := 0; bi < batches; bi++ {
		for i, m := range msgs {
			m.Body = []byte(fmt.Sprintf("b%d-m%d", bi, i)) // the same messages, reused
		}
		err := p.SendBatchAsync(ctx, msgs, func(res sdk.SendResult, err error) { done <- outcome{bi, res, err} })
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := p.SendBatchAsync(ctx, nil, func(sdk.SendResult, error) {}); err == nil {
		t.Fatal("an empty batch was accepted")
	}
	want := map[string]string{}
	for range batches {
		o := <-done
		if o.err != nil || o.res.Count != size {
			t.Fatalf("batch %d: %+v, %v", o.b, o.res, o.err)
		}
		for i := 0; i < size; i++ {
			want[fmt.Sprintf("%d/%d", o.res.Queue, o.res.Offset+uint64(i))] = fmt.Sprintf("b%d-m%d", o.b, i)
		}
	}
	for _, m := range consumeN(t, ctx, cl, "g", "batched", batches*size) {
		k := fmt.Sprintf("%d/%d", m.Queue, m.Offset)
		if want[k] != string(m.Body) {
			t.Fatalf("%s holds %q, want %q", k, m.Body, want[k])
		}
		delete(want, k)
	}
	if len(want) != 0 {
		t.Fatalf("%d messages not consumed: %v", len(want), want)
	}
}
