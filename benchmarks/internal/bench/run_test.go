package bench

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// fakeClock only moves when told: sleeping jumps to the wake-up time,
// and a fake send advances it by what the send "took".
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) SleepUntil(_ context.Context, t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if t.After(c.now) {
		c.now = t
	}
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

// fakeTarget's sends take `took(i)` on the fake clock (i counts sends
// across producers), or fail when fail(i) says so.
type fakeTarget struct {
	clk  *fakeClock
	mu   sync.Mutex
	n    int
	took func(i int) time.Duration
	fail func(i int) error

	consumed chan []byte // bodies for the consumers, when there are any
}

func (t *fakeTarget) next() (time.Duration, error) {
	t.mu.Lock()
	i := t.n
	t.n++
	t.mu.Unlock()
	var err error
	if t.fail != nil {
		err = t.fail(i)
	}
	return t.took(i), err
}

func (t *fakeTarget) Send(_ context.Context, body []byte) error {
	d, err := t.next()
	t.clk.advance(d)
	if err == nil && t.consumed != nil {
		t.consumed <- bytes.Clone(body)
	}
	return err
}

func (t *fakeTarget) SendBatch(ctx context.Context, bodies [][]byte) error {
	return t.Send(ctx, bodies[0])
}

func (t *fakeTarget) SendAsync(ctx context.Context, body []byte, done func(error)) error {
	done(t.Send(ctx, body))
	return nil
}

func (t *fakeTarget) Close() error { return nil }

func (t *fakeTarget) NewProducer(context.Context, int) (Producer, error) { return t, nil }

func (t *fakeTarget) StartConsumers(_ context.Context, n int, deliver func(int, []byte)) (func() error, error) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		for b := range t.consumed {
			deliver(0, b)
		}
	}()
	return func() error { close(t.consumed); <-done; return nil }, nil
}

func runFake(t *testing.T, cfg Config, tgt *fakeTarget) *Result {
	t.Helper()
	res, err := run(context.Background(), cfg, tgt, nil, func() clock { return tgt.clk })
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// countAtLeast is how many recorded values are ≥ us.
func countAtLeast(h *hdrhistogram.Histogram, us int64) int64 {
	var n int64
	for _, b := range h.Distribution() {
		if b.From >= us {
			n += b.Count
		}
	}
	return n
}

// stallAt200 is a system that answers in 20 µs, except that send 200
// stalls for 100 ms.
func stallAt200(i int) time.Duration {
	if i == 200 {
		return 100 * time.Millisecond
	}
	return 20 * time.Microsecond
}

// At 1000 sends/s, a 100 ms stall delays the ~100 sends due during it:
// corrected for coordinated omission, each records its wait from when it
// was due, so the histogram holds latencies spread up to 100 ms, not one
// sample of 100 ms among ~1000 fast ones.
func TestOpenLoopCorrectsCoordinatedOmission(t *testing.T) {
	tgt := &fakeTarget{clk: newFakeClock(), took: stallAt200}
	res := runFake(t, Config{Producers: 1, Size: 100, Duration: time.Second, Rate: 1000}, tgt)
	h := res.Latency
	if res.Count != 1000 || res.Errors != 0 {
		t.Fatalf("count %d errors %d, want 1000 sends in 1s at 1000/s", res.Count, res.Errors)
	}
	// The stalled send (100 ms) and the ~99 due behind it (99, 98, ... 1 ms).
	if n := countAtLeast(h, 1000); n < 95 || n > 102 {
		t.Errorf("%d latencies ≥ 1 ms, want about 100 (the stall and the sends due during it)", n)
	}
	if n := countAtLeast(h, 50_000); n < 45 || n > 55 {
		t.Errorf("%d latencies ≥ 50 ms, want about 50", n)
	}
	if p := h.ValueAtQuantile(95); p < 45_000 || p > 55_000 {
		t.Errorf("p95 = %d µs, want about 50 ms", p)
	}
	if p := h.ValueAtQuantile(99); p < 85_000 || p > 95_000 {
		t.Errorf("p99 = %d µs, want about 90 ms", p)
	}
	if m := h.Max(); m < 99_000 || m > 101_000 {
		t.Errorf("max = %d µs, want 100 ms", m)
	}
	if p := h.ValueAtQuantile(50); p > 25 {
		t.Errorf("p50 = %d µs, want the 20 µs of an undisturbed send", p)
	}
	// The fake clock wakes exactly on time; the sends due during the
	// stall were behind schedule.
	if o := res.OpenLoop; o == nil || o.SendLagMaxUs != 0 || o.BehindSchedule < 95 || o.BehindSchedule > 105 {
		t.Errorf("open loop %+v, want no wake-up lag and about 100 sends behind schedule (those due during the stall, and while catching up)", res.OpenLoop)
	}
}

// The same stall in closed loop is one slow sample: the sends that would
// have been due simply were not made. This is why open loop exists.
func TestClosedLoopRecordsTheStallOnce(t *testing.T) {
	tgt := &fakeTarget{clk: newFakeClock(), took: stallAt200}
	res := runFake(t, Config{Producers: 1, Size: 100, Duration: time.Second}, tgt)
	if n := countAtLeast(res.Latency, 1000); n != 1 {
		t.Errorf("%d latencies ≥ 1 ms in closed loop, want exactly the stalled one", n)
	}
	if res.OpenLoop != nil {
		t.Error("closed loop reports a send lag")
	}
	// 1 s minus the stall, at 20 µs a send.
	if want := int64(900 * time.Millisecond / (20 * time.Microsecond)); res.Count < want-2 || res.Count > want+2 {
		t.Errorf("count %d, want about %d", res.Count, want)
	}
}

// Pipelined open loop keeps the same schedule: sends leave when due and
// latency counts from then.
func TestOpenLoopPipelined(t *testing.T) {
	tgt := &fakeTarget{clk: newFakeClock(), took: stallAt200}
	res := runFake(t, Config{Producers: 1, Size: 100, Duration: time.Second, Rate: 1000, Window: 4}, tgt)
	if res.Count != 1000 {
		t.Fatalf("count %d, want 1000", res.Count)
	}
	if m := res.Latency.Max(); m < 99_000 {
		t.Errorf("max %d µs, want the 100 ms stall", m)
	}
	if n := countAtLeast(res.Latency, 50_000); n < 45 || n > 55 {
		t.Errorf("%d latencies ≥ 50 ms, want about 50", n)
	}
}

// Warmup sends are not measured; duration_s spans the measured phase.
func TestWarmupIsNotMeasured(t *testing.T) {
	tgt := &fakeTarget{clk: newFakeClock(), took: func(int) time.Duration { return time.Millisecond }}
	res := runFake(t, Config{Producers: 1, Size: 8, Duration: time.Second, Warmup: 500 * time.Millisecond}, tgt)
	if res.Count != 1000 || tgt.n != 1500 {
		t.Errorf("measured %d of %d sends, want 1000 of 1500", res.Count, tgt.n)
	}
	if res.DurationS != 1 || res.MsgsPerSec != 1000 {
		t.Errorf("duration %v s, %v msgs/s; want 1 s and 1000/s", res.DurationS, res.MsgsPerSec)
	}
	if res.P50us != 1000 || res.MaxUs != 1000 {
		t.Errorf("p50 %d max %d, want 1000 µs", res.P50us, res.MaxUs)
	}
}

// --count measures exactly that many messages, batches included.
func TestCountWithBatches(t *testing.T) {
	tgt := &fakeTarget{clk: newFakeClock(), took: func(int) time.Duration { return time.Millisecond }}
	res := runFake(t, Config{Producers: 3, Size: 64, Count: 1005, Batch: 10}, tgt)
	if res.Count != 1005 || res.Sends != 101 {
		t.Errorf("count %d in %d sends, want 1005 in 101", res.Count, res.Sends)
	}
}

func TestErrorsAreCounted(t *testing.T) {
	boom := errors.New("boom")
	tgt := &fakeTarget{clk: newFakeClock(), took: func(int) time.Duration { return time.Millisecond },
		fail: func(i int) error {
			if i%10 == 0 {
				return boom
			}
			return nil
		}}
	res := runFake(t, Config{Producers: 1, Size: 64, Count: 100, Batch: 2}, tgt)
	if res.Errors != 10 || res.Count != 90 || res.FirstError != "boom" {
		t.Errorf("errors %d count %d first %q, want 10 failed messages (5 batches of 2), 90 sent, boom", res.Errors, res.Count, res.FirstError)
	}
	if res.Latency.TotalCount() != 45 {
		t.Errorf("%d latencies, want one per acknowledged batch (45)", res.Latency.TotalCount())
	}
}

// Consumers see every measured message, and not the warmup's.
func TestConsumersMeasureEndToEnd(t *testing.T) {
	tgt := &fakeTarget{clk: newFakeClock(), took: func(int) time.Duration { return time.Millisecond },
		consumed: make(chan []byte, 10000)}
	res := runFake(t, Config{Producers: 1, Size: 16, Duration: time.Second, Warmup: 100 * time.Millisecond, Consumers: 1, Drain: 10 * time.Second}, tgt)
	if res.E2E == nil {
		t.Fatal("no publish-to-consume result")
	}
	if res.E2ECount != res.Count || res.E2EMissing != 0 || res.Count != 1000 {
		t.Errorf("consumed %d of %d (missing %d), want 1000 of 1000", res.E2ECount, res.Count, res.E2EMissing)
	}
	if res.E2ELatency.TotalCount() != res.Count {
		t.Errorf("%d end-to-end latencies, want %d", res.E2ELatency.TotalCount(), res.Count)
	}
}

// The window bounds the sends in flight per producer.
func TestWindowBoundsInFlight(t *testing.T) {
	p := &asyncCounter{}
	res, err := Run(context.Background(), Config{Producers: 2, Size: 8, Count: 2000, Window: 8}, p, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Count != 2000 {
		t.Errorf("count %d, want 2000", res.Count)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.maxInFlight > 8 {
		t.Errorf("%d sends in flight at once, more than the window of 8", p.maxInFlight)
	}
}

// asyncCounter completes sends on another goroutine, 4 at a time, and
// remembers how many were in flight for one producer.
type asyncCounter struct {
	mu          sync.Mutex
	inFlight    map[int]int
	maxInFlight int
}

type asyncProducer struct {
	c  *asyncCounter
	id int
	q  chan func(error)
}

func (c *asyncCounter) NewProducer(_ context.Context, i int) (Producer, error) {
	p := &asyncProducer{c: c, id: i, q: make(chan func(error), 1000)}
	go func() {
		var batch []func(error)
		for done := range p.q {
			batch = append(batch, done)
			if len(batch) < 4 && len(p.q) > 0 {
				continue
			}
			for _, d := range batch {
				c.mu.Lock()
				c.inFlight[p.id]--
				c.mu.Unlock()
				d(nil)
			}
			batch = batch[:0]
		}
	}()
	return p, nil
}

func (c *asyncCounter) StartConsumers(context.Context, int, func(int, []byte)) (func() error, error) {
	return nil, errors.New("none")
}

func (p *asyncProducer) SendAsync(_ context.Context, _ []byte, done func(error)) error {
	p.c.mu.Lock()
	if p.c.inFlight == nil {
		p.c.inFlight = map[int]int{}
	}
	p.c.inFlight[p.id]++
	p.c.maxInFlight = max(p.c.maxInFlight, p.c.inFlight[p.id])
	p.c.mu.Unlock()
	p.q <- done
	return nil
}
func (p *asyncProducer) Send(context.Context, []byte) error {
	return errors.New("sync send in pipelined mode")
}
func (p *asyncProducer) SendBatch(context.Context, [][]byte) error {
	return errors.New("batch in pipelined mode")
}
func (p *asyncProducer) Close() error { close(p.q); return nil }

func TestBodies(t *testing.T) {
	tgt := &fakeTarget{clk: newFakeClock(), took: func(int) time.Duration { return time.Millisecond }, consumed: make(chan []byte, 100)}
	w := newWorker(&runner{cfg: Config{Producers: 1, Size: 1000}}, 0, tgt, tgt.clk)
	if bytes.Count(w.sync.body, []byte{0}) > 20 {
		t.Error("random bodies are mostly zeros")
	}
	w = newWorker(&runner{cfg: Config{Producers: 1, Size: 1000, Compressible: true}}, 0, tgt, tgt.clk)
	if len(w.sync.body) != 1000 || !bytes.Contains(w.sync.body, []byte(`"event":"order_created"`)) {
		t.Errorf("compressible body: %q", w.sync.body[:60])
	}
	stampBody(w.sync.body, 42)
	if binary.LittleEndian.Uint64(w.sync.body) != 42 {
		t.Error("stamp not at the start of the body")
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  Config
		want string
	}{
		{Config{Producers: 0, Duration: time.Second}, "--producers"},
		{Config{Producers: 1}, "--duration"},
		{Config{Producers: 1, Duration: time.Second, Batch: 10, Window: 4}, "cannot be combined"},
		{Config{Producers: 1, Duration: time.Second, Consumers: 1, Size: 4}, "--size of at least 8"},
	} {
		err := c.cfg.Validate()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: %v, want an error about %s", c.cfg, err, c.want)
		}
	}
	if err := (&Config{Producers: 1, Count: 10}).Validate(); err != nil {
		t.Errorf("--count without --duration: %v", err)
	}
}

func TestPointsAndPlot(t *testing.T) {
	h := newHist()
	for i := int64(1); i <= 10000; i++ {
		h.RecordValue(i)
	}
	pts := Points(h)
	for i := 1; i < len(pts); i++ {
		if pts[i].X <= pts[i-1].X || pts[i].Y < pts[i-1].Y {
			t.Fatalf("points not increasing at %d: %v then %v", i, pts[i-1], pts[i])
		}
	}
	if last := pts[len(pts)-1]; last.X != 10000 || last.Y < 9.99 || last.Y > 10.01 {
		t.Errorf("last point %v, want the max (10 ms) at x = count", last)
	}
	dir := t.TempDir()
	for _, name := range []string{"p.svg", "p.png"} {
		file := filepath.Join(dir, name)
		if err := Plot(file, "test", []Series{{Label: "a", Hist: h}, {Label: "b", Hist: h}}); err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		if name == "p.png" {
			if _, err := png.Decode(bytes.NewReader(data)); err != nil {
				t.Errorf("png: %v", err)
			}
		} else if !bytes.Contains(data, []byte("<svg")) || !bytes.Contains(data, []byte("99.9%")) {
			t.Errorf("svg without an svg element or the 99.9%% tick")
		}
	}
	if err := Plot(filepath.Join(dir, "p.jpg"), "", []Series{{Label: "a", Hist: h}}); err == nil {
		t.Error("a .jpg plot was accepted")
	}
}

func TestFormat(t *testing.T) {
	for us, want := range map[int64]string{0: "0µs", 999: "999µs", 1500: "1.50ms", 2_500_000: "2.50s"} {
		if got := FormatUs(us); got != want {
			t.Errorf("FormatUs(%d) = %s, want %s", us, got, want)
		}
	}
	for v, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 1234567.4: "1,234,567"} {
		if got := thousands(v); got != want {
			t.Errorf("thousands(%v) = %s, want %s", v, got, want)
		}
	}
}

func TestComparisonTable(t *testing.T) {
	base := &Result{System: "quiver", Label: "Quiver sync (io_uring)", Durability: "fsync before ack (group commit)",
		Mode: "closed", Config: Config{Producers: 16, Size: 1024, Duration: 8 * time.Second}, MsgsPerSec: 20000, P50us: 800, P99us: 2000, P999us: 3000}
	nats := &Result{System: "nats", Label: "NATS JetStream (sync always)", Durability: "fsync per write (sync_interval: always)",
		Mode: "closed", Config: base.Config, MsgsPerSec: 5000, P50us: 3200, P99us: 4000, P999us: 9000, Errors: 2}
	natsTLS := &Result{System: "nats", Label: "NATS JetStream (default, TLS)", Durability: "fsync every 2 min (default sync_interval)",
		Mode: "closed", Config: base.Config, MsgsPerSec: 40000, P50us: 400, P99us: 1000, P999us: 2000}
	var b strings.Builder
	WriteComparison(&b, []*Result{base, nats, natsTLS}, 0)
	out := b.String()
	for _, want := range []string{
		"closed loop, 16 producers, 1024 B bodies, 8s",
		"fsync per write (sync_interval: always)",
		"base: Quiver sync (io_uring)",
		"1.00×          1.00×       1.00×", // the baseline's own row
		"0.25×          4.00×       2.00×", // the NATS row: msgs/s, p50 and p99 ÷ the baseline's
		"Quiver sync (io_uring) ÷ NATS JetStream (sync always): msgs/s 4.00×, p50 0.25×, p99 0.50×",
		// One such line per NATS row.
		"Quiver sync (io_uring) ÷ NATS JetStream (default, TLS): msgs/s 0.50×, p50 2.00×, p99 2.00×",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("comparison without %q:\n%s", want, out)
		}
	}
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimRight(line, " ") != line {
			t.Errorf("trailing spaces: %q", line)
		}
	}
}
