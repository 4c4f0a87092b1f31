package bench

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// stampLen is the size of the send time written at the start of every
// body (little-endian Unix nanoseconds), read back by the consumers.
const stampLen = 8

// clock is the time the load runs on: the real one, or a fake in tests.
type clock interface {
	Now() time.Time
	// SleepUntil returns at t, or earlier when ctx is done.
	SleepUntil(ctx context.Context, t time.Time)
}

// goTimerClock sleeps on Go's timers. On Linux they wake about a
// millisecond late for short sleeps (the netpoller waits in whole
// milliseconds), which would show as the generator's send lag in open
// loop: clock_linux.go uses a timerfd instead.
type goTimerClock struct{ timer *time.Timer }

func (*goTimerClock) Now() time.Time { return time.Now() }

func (c *goTimerClock) SleepUntil(ctx context.Context, t time.Time) {
	d := time.Until(t)
	if d <= 0 {
		return
	}
	if c.timer == nil {
		c.timer = time.NewTimer(d)
	} else {
		c.timer.Reset(d)
	}
	select {
	case <-c.timer.C:
	case <-ctx.Done():
		c.timer.Stop()
	}
}

// Progress is what a run reports while it goes, about four times a second.
type Progress struct {
	Phase    string  // "warmup", "measure" or "drain"
	Fraction float64 // of the measured phase done, 0..1
	Msgs     int64   // messages acknowledged in the measured phase so far
	Errors   int64
	Elapsed  time.Duration // of the measured phase
}

// Run runs the workload against t and returns its result. progress, if
// not nil, is called from another goroutine while it runs. Cancelling ctx
// stops the load early; the result then covers what was done and says so.
func Run(ctx context.Context, cfg Config, t Target, progress func(Progress)) (*Result, error) {
	return run(ctx, cfg, t, progress, newRealClock)
}

// runner is one run: the schedule every worker follows.
type runner struct {
	cfg   Config
	ctx   context.Context
	clock clock // for the consumers and the run's own marks

	start  time.Time // the warmup begins; the open-loop schedule starts here
	t0     time.Time // the measured phase begins
	end    time.Time // and ends (duration mode)
	period float64   // open loop: nanoseconds between two sends, in total

	t0Nanos atomic.Int64 // t0 for the consumers; 0 before the load starts
	claimed atomic.Int64 // count mode: messages claimed by the workers

	workers   []*worker
	consumers []*consumerStats
}

func closeClock(c clock) {
	if cl, ok := c.(io.Closer); ok {
		cl.Close()
	}
}

// pastEnd reports whether a send at t would fall after the measured phase.
func (r *runner) pastEnd(t time.Time) bool {
	return r.cfg.Count == 0 && !t.Before(r.end)
}

// intended is the time open-loop worker w's i-th send is due: the workers
// take turns, so that the sends are evenly spaced at the total rate.
func (r *runner) intended(w int, i int64) time.Time {
	k := float64(i)*float64(r.cfg.Producers) + float64(w)
	return r.start.Add(time.Duration(k * r.period))
}

// claim takes up to n messages of the count; 0 when it is used up.
func (r *runner) claim(n int) int {
	after := r.claimed.Add(int64(n))
	before := after - int64(n)
	if before >= r.cfg.Count {
		return 0
	}
	return int(min(after, r.cfg.Count) - before)
}

// slot is one send in flight: its bodies and when it was due.
type slot struct {
	w        *worker
	body     []byte
	bodies   [][]byte // batch
	t0       time.Time
	n        int
	measured bool
	done     func(error)
}

// worker is one producer's loop.
type worker struct {
	r     *runner
	id    int
	p     Producer
	clk   clock
	sync  *slot      // synchronous sends
	slots chan *slot // pipelined: the free slots, Window of them

	// Open loop, the worker's goroutine only: how late it woke for sends
	// it waited for, and how many sends were due before it could send them.
	lag    *hdrhistogram.Histogram
	behind int64

	mu       sync.Mutex // the sends' outcomes, written where sends complete
	hist     *hdrhistogram.Histogram
	count    int64 // messages acknowledged
	sends    int64 // send calls acknowledged
	errs     int64 // messages failed
	firstErr error
	last     time.Time // last completion of a measured send

	live, liveErrs atomic.Int64 // for Progress
}

func newWorker(r *runner, id int, p Producer, clk clock) *worker {
	w := &worker{r: r, id: id, p: p, clk: clk, hist: newHist()}
	if r.cfg.Rate > 0 {
		w.lag = newHist()
	}
	rnd := rand.New(rand.NewPCG(uint64(id)+1, 0x9e3779b97f4a7c15))
	newSlot := func() *slot {
		s := &slot{w: w}
		s.done = func(err error) { w.complete(s, err) }
		if b := r.cfg.batch(); b > 1 {
			for range b {
				s.bodies = append(s.bodies, makeBody(r.cfg.Size, r.cfg.Compressible, rnd))
			}
		} else {
			s.body = makeBody(r.cfg.Size, r.cfg.Compressible, rnd)
		}
		return s
	}
	if r.cfg.Window > 0 {
		w.slots = make(chan *slot, r.cfg.Window)
		for range r.cfg.Window {
			w.slots <- newSlot()
		}
	} else {
		w.sync = newSlot()
	}
	return w
}

func (w *worker) run(ctx context.Context) {
	r := w.r
	open := r.cfg.Rate > 0
	for i := int64(0); ctx.Err() == nil; i++ {
		var due time.Time
		if open {
			due = r.intended(w.id, i)
			if r.pastEnd(due) {
				break
			}
			measured := !due.Before(r.t0)
			if w.clk.Now().Before(due) {
				w.clk.SleepUntil(ctx, due)
				if measured {
					record(w.lag, w.clk.Now().Sub(due)) // the generator's own lateness
				}
			} else if measured {
				w.behind++ // held up by this producer's previous sends
			}
		}
		s := w.sync
		if w.slots != nil {
			select {
			case s = <-w.slots:
			case <-ctx.Done():
			}
			if ctx.Err() != nil {
				if s != nil {
					w.slots <- s
				}
				break
			}
		}
		now := w.clk.Now()
		// Open loop: latency counts from when the send was due, not from
		// when it left, so a stall delays the sends scheduled behind it
		// and each of them records the wait (coordinated omission).
		if open {
			s.t0 = due
		} else {
			if r.pastEnd(now) {
				w.release(s)
				break
			}
			s.t0 = now
		}
		s.n, s.measured = r.cfg.batch(), !s.t0.Before(r.t0)
		if s.measured {
			if r.cfg.Count > 0 {
				if s.n = r.claim(s.n); s.n == 0 {
					w.release(s)
					break
				}
			}
		}
		w.send(ctx, s)
	}
	// Wait for the sends in flight: every slot back.
	for range cap(w.slots) {
		<-w.slots
	}
}

func (w *worker) release(s *slot) {
	if w.slots != nil {
		w.slots <- s
	}
}

func (w *worker) send(ctx context.Context, s *slot) {
	stamp := uint64(s.t0.UnixNano())
	switch {
	case w.slots != nil:
		stampBody(s.body, stamp)
		if err := w.p.SendAsync(ctx, s.body, s.done); err != nil {
			w.complete(s, err)
		}
	case s.bodies != nil:
		for _, b := range s.bodies[:s.n] {
			stampBody(b, stamp)
		}
		w.complete(s, w.p.SendBatch(ctx, s.bodies[:s.n]))
	default:
		stampBody(s.body, stamp)
		w.complete(s, w.p.Send(ctx, s.body))
	}
}

// complete records a send's outcome and frees its slot.
func (w *worker) complete(s *slot, err error) {
	if s.measured {
		now := w.clk.Now()
		n := int64(s.n)
		interrupted := err != nil && w.r.ctx.Err() != nil
		w.mu.Lock()
		switch {
		case interrupted:
		case err != nil:
			w.errs += n
			if w.firstErr == nil {
				w.firstErr = err
			}
		default:
			w.count += n
			w.sends++
			record(w.hist, now.Sub(s.t0))
		}
		if !interrupted && now.After(w.last) {
			w.last = now
		}
		w.mu.Unlock()
		switch {
		case interrupted:
		case err != nil:
			w.liveErrs.Add(n)
		default:
			w.live.Add(n)
		}
	}
	w.release(s)
}

// consumerStats is one consumer's end-to-end latencies.
type consumerStats struct {
	mu       sync.Mutex
	hist     *hdrhistogram.Histogram
	received atomic.Int64
}

// deliver takes a consumed body: its first bytes say when it was sent.
func (r *runner) deliver(i int, body []byte) {
	t0 := r.t0Nanos.Load()
	if len(body) < stampLen || t0 == 0 || i < 0 || i >= len(r.consumers) {
		return
	}
	sent := int64(binary.LittleEndian.Uint64(body))
	if sent < t0 {
		return // warmup, or another run's
	}
	c := r.consumers[i]
	lat := time.Duration(r.clock.Now().UnixNano() - sent)
	c.mu.Lock()
	record(c.hist, lat)
	c.mu.Unlock()
	c.received.Add(1)
}

func run(ctx context.Context, cfg Config, t Target, progress func(Progress), newClock func() clock) (*Result, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	r := &runner{cfg: cfg, ctx: ctx, clock: newClock()}
	defer func() {
		closeClock(r.clock)
		for _, w := range r.workers {
			closeClock(w.clk)
		}
	}()
	if cfg.Rate > 0 {
		r.period = float64(time.Second) / cfg.Rate * float64(cfg.batch())
	}
	producers := make([]Producer, 0, cfg.Producers)
	defer func() {
		for _, p := range producers {
			p.Close()
		}
	}()
	for i := range cfg.Producers {
		p, err := t.NewProducer(ctx, i)
		if err != nil {
			return nil, fmt.Errorf("producer %d: %w", i, err)
		}
		producers = append(producers, p)
		r.workers = append(r.workers, newWorker(r, i, p, newClock()))
	}
	var stopConsumers func() error
	if cfg.Consumers > 0 {
		for range cfg.Consumers {
			r.consumers = append(r.consumers, &consumerStats{hist: newHist()})
		}
		stop, err := t.StartConsumers(ctx, cfg.Consumers, r.deliver)
		if err != nil {
			return nil, fmt.Errorf("consumers: %w", err)
		}
		stopConsumers = stop
		defer func() {
			if stopConsumers != nil {
				stopConsumers()
			}
		}()
	}

	r.start = r.clock.Now()
	r.t0 = r.start.Add(cfg.Warmup)
	r.end = r.t0.Add(cfg.Duration)
	r.t0Nanos.Store(r.t0.UnixNano())
	var wg sync.WaitGroup
	for _, w := range r.workers {
		wg.Go(func() { w.run(ctx) })
	}
	stopProgress := r.reportProgress(progress, &wg)
	wg.Wait()

	res := r.result()
	if stopConsumers != nil {
		stopProgress("drain")
		r.drain(ctx, res.Count)
		err := stopConsumers()
		stopConsumers = nil
		if err != nil && ctx.Err() == nil {
			return nil, fmt.Errorf("consumers: %w", err)
		}
		r.addE2E(res)
	}
	stopProgress("")
	res.Interrupted = ctx.Err() != nil
	return res, nil
}

// drain waits until the consumers received every measured message, or
// for cfg.Drain at most.
func (r *runner) drain(ctx context.Context, want int64) {
	deadline := time.Now().Add(r.cfg.Drain)
	for ctx.Err() == nil && time.Now().Before(deadline) {
		var got int64
		for _, c := range r.consumers {
			got += c.received.Load()
		}
		if got >= want {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// reportProgress calls progress every 250 ms until the workers are done;
// the returned function reports a new phase, or stops with "".
func (r *runner) reportProgress(progress func(Progress), wg *sync.WaitGroup) func(phase string) {
	if progress == nil {
		return func(string) {}
	}
	var (
		mu    sync.Mutex
		phase = ""
		stop  = make(chan struct{})
		done  = make(chan struct{})
	)
	report := func() {
		var p Progress
		for _, w := range r.workers {
			p.Msgs += w.live.Load()
			p.Errors += w.liveErrs.Load()
		}
		now := r.clock.Now()
		mu.Lock()
		p.Phase = phase
		mu.Unlock()
		if p.Phase == "" {
			p.Phase = "measure"
			if now.Before(r.t0) {
				p.Phase = "warmup"
			}
		}
		if now.After(r.t0) {
			p.Elapsed = now.Sub(r.t0)
		}
		switch {
		case r.cfg.Count > 0:
			p.Fraction = float64(p.Msgs+p.Errors) / float64(r.cfg.Count)
		case r.cfg.Duration > 0:
			p.Fraction = float64(p.Elapsed) / float64(r.cfg.Duration)
		}
		p.Fraction = min(max(p.Fraction, 0), 1)
		progress(p)
	}
	go func() {
		defer close(done)
		tick := time.NewTicker(250 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-tick.C:
				report()
			case <-stop:
				return
			}
		}
	}()
	stopped := false
	return func(next string) {
		if stopped {
			return
		}
		mu.Lock()
		phase = next
		mu.Unlock()
		if next == "" {
			stopped = true
			close(stop)
			<-done
			report()
			return
		}
		report()
	}
}

// result merges the workers' histograms and counts.
func (r *runner) result() *Result {
	all := newHist()
	res := &Result{Config: r.cfg, Mode: r.cfg.Mode(), WarmupS: r.cfg.Warmup.Seconds()}
	last := r.t0
	var (
		lag    *hdrhistogram.Histogram
		behind int64
	)
	if r.cfg.Rate > 0 {
		lag = newHist()
	}
	for _, w := range r.workers {
		w.mu.Lock()
		all.Merge(w.hist)
		res.Count += w.count
		res.Sends += w.sends
		res.Errors += w.errs
		if w.firstErr != nil && res.FirstError == "" {
			res.FirstError = w.firstErr.Error()
		}
		if w.last.After(last) {
			last = w.last
		}
		w.mu.Unlock()
		if lag != nil {
			lag.Merge(w.lag)
			behind += w.behind
		}
	}
	// The measured phase lasts its duration at least: in open loop the
	// last send is due a little before it ends and may complete before.
	if r.cfg.Count == 0 && last.Before(r.end) && r.ctx.Err() == nil {
		last = r.end
	}
	res.DurationS = last.Sub(r.t0).Seconds()
	if res.DurationS > 0 {
		res.MsgsPerSec = float64(res.Count) / res.DurationS
		res.MBPerSec = res.MsgsPerSec * float64(r.cfg.Size) / 1e6
	}
	res.setLatency(all)
	if lag != nil {
		res.OpenLoop = &OpenLoop{SendLagP50us: lag.ValueAtQuantile(50), SendLagP99us: lag.ValueAtQuantile(99),
			SendLagMaxUs: lag.Max(), BehindSchedule: behind}
	}
	return res
}

func (r *runner) addE2E(res *Result) {
	all := newHist()
	var got int64
	for _, c := range r.consumers {
		c.mu.Lock()
		all.Merge(c.hist)
		c.mu.Unlock()
		got += c.received.Load()
	}
	res.setE2E(all, got)
}

// histMax is the largest latency recorded (10 minutes, in µs); longer ones
// are recorded as it.
const histMax = int64(10 * time.Minute / time.Microsecond)

func newHist() *hdrhistogram.Histogram { return hdrhistogram.New(1, histMax, 3) }

func record(h *hdrhistogram.Histogram, d time.Duration) {
	us := max(min(d.Microseconds(), histMax), 0)
	h.RecordValue(us)
}

func stampBody(b []byte, ns uint64) {
	if len(b) >= stampLen {
		binary.LittleEndian.PutUint64(b, ns)
	}
}

// makeBody returns size bytes: random ones, or JSON-like text that
// compresses several-fold when compressible.
func makeBody(size int, compressible bool, rnd *rand.Rand) []byte {
	b := make([]byte, 0, size)
	if !compressible {
		b = b[:size]
		for i := 0; i < size; i += 8 {
			var w [8]byte
			binary.LittleEndian.PutUint64(w[:], rnd.Uint64())
			copy(b[i:], w[:])
		}
		return b
	}
	for len(b) < size {
		b = fmt.Appendf(b, `{"id":%d,"event":"order_created","customer":"c-%05d","amount":%d.%02d,"currency":"EUR","status":"pending"}`+"\n",
			rnd.Uint32(), rnd.IntN(100000), rnd.IntN(1000), rnd.IntN(100))
	}
	return b[:size]
}
