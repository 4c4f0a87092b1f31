// Package console is quiverd's web console, served on the admin address
// under /ui/: the pages (embedded in the binary; no CDN, nothing fetched
// at run time) and the JSON they read under /ui/api/.
//
// A sampler reads the broker's counters once a second into a ring of
// points (10 minutes: sends/s, bytes/s, send latency percentiles from a
// rolling HdrHistogram, lags), and every group's per-queue lag every 5
// seconds, so that a page opened at 3 a.m. shows the last minutes, not
// only what happens while it is open. Its memory is bounded (Options).
//
// The console is read-only: its message browser reads records the way a
// fetch does, and nothing under /ui/ writes.
package console

import (
	"context"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/quivermq/quiver/sdk/wire"
)

// Counters are a broker's running totals and gauges, as the sampler reads
// them.
type Counters struct {
	Sends    int64 // messages acknowledged
	Written  int64 // the log's written position (bytes)
	Fetched  int64 // records sent to consumers
	Errors   int64 // produce requests failed (every code)
	Busy     int64 // sends refused BUSY
	DiskFull int64 // sends refused DISK_FULL

	NotVisibleBytes, NotVisibleMs int64 // incident 003
	NotDurableBytes, NotDurableMs int64
	QueueDepth                    int64 // sends waiting for the log
	ReplLagBytes, ReplLagMs       int64 // the farthest in-sync follower (on a leader)
}

// QueueLag is one consumer group's lag in one queue.
type QueueLag struct {
	Group, Topic string
	Queue        uint32
	Lag          uint64
}

// Broker is what the console reads from the broker.
type Broker interface {
	Counters() Counters
	// SwapLatency installs h (empty) as the histogram the broker records
	// send latencies in (microseconds), and returns the one it replaces.
	SwapLatency(h *hdrhistogram.Histogram) *hdrhistogram.Histogram
	// GroupLags appends every consumer group's lag per queue to dst.
	GroupLags(dst []QueueLag) []QueueLag
	// Browse reads up to max records of a queue from offset, read-only.
	Browse(topic string, queue uint32, offset uint64, max int) (wire.FetchHeader, []wire.FetchedMessage, *wire.Error)
	Lookup(req *wire.Lookup) (wire.LookupResp, *wire.Error)
	Offsets(req *wire.Offsets) (wire.OffsetsResp, *wire.Error)
}

// Options of a console.
type Options struct {
	Broker Broker
	// Status is the status document (/status).
	Status func(wire.StatusSel) wire.Status
	// Interval between samples (default 1 s) and how many are kept
	// (default 600: 10 minutes).
	Interval time.Duration
	Keep     int
	// LagEvery: the groups' lags are sampled every LagEvery samples
	// (default 5), LagKeep of them kept (default 120), for at most
	// MaxLagSeries queues of groups (default 4,096: beyond it the newest
	// queues have no history, and the page says so).
	LagEvery, LagKeep, MaxLagSeries int
}

// NewLatencyHistogram is the histogram the broker records send latencies
// in: 1 µs to 60 s, 3 significant digits.
func NewLatencyHistogram() *hdrhistogram.Histogram {
	return hdrhistogram.New(1, 60_000_000, 3)
}

// Console samples a broker and serves its pages.
type Console struct {
	o Options

	mu     sync.Mutex
	points ring[Point]
	lags   lagHistory
	spare  *hdrhistogram.Histogram
	prev   Counters
	prevAt time.Time
	n      int // samples taken
}

// Point is one sample: rates over the interval before T, gauges at T.
type Point struct {
	T                                   int64 // unix ms
	Sends, Bytes, Fetched               float64
	Errors, Busy, DiskFull              float64
	P50, P90, P99, P999, Max            float64 // µs; 0 when no send completed
	NotVisibleMs, NotDurableMs          float64
	NotVisibleBytes, NotDurableBytes    float64
	QueueDepth, ReplLagBytes, ReplLagMs float64
}

// New returns a console; Run samples.
func New(o Options) *Console {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Keep <= 0 {
		o.Keep = 600
	}
	if o.LagEvery <= 0 {
		o.LagEvery = 5
	}
	if o.LagKeep <= 0 {
		o.LagKeep = 120
	}
	if o.MaxLagSeries <= 0 {
		o.MaxLagSeries = 4096
	}
	c := &Console{o: o, points: newRing[Point](o.Keep), spare: NewLatencyHistogram()}
	c.lags.init(o.LagKeep, o.MaxLagSeries)
	return c
}

// Run samples the broker until ctx ends.
func (c *Console) Run(ctx context.Context) {
	c.sample(time.Now())
	t := time.NewTicker(c.o.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			c.sample(now)
		}
	}
}

// sample takes one point (and every LagEvery-th time the groups' lags).
func (c *Console) sample(now time.Time) {
	cur := c.o.Broker.Counters()
	h := c.o.Broker.SwapLatency(c.spare)
	var lags []QueueLag
	if c.n%c.o.LagEvery == 0 {
		lags = c.o.Broker.GroupLags(nil)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	first := c.n == 0
	c.n++
	if lags != nil || first {
		c.lags.add(now.UnixMilli(), lags)
	}
	p := Point{T: now.UnixMilli(),
		NotVisibleMs: float64(cur.NotVisibleMs), NotDurableMs: float64(cur.NotDurableMs),
		NotVisibleBytes: float64(cur.NotVisibleBytes), NotDurableBytes: float64(cur.NotDurableBytes),
		QueueDepth: float64(cur.QueueDepth), ReplLagBytes: float64(cur.ReplLagBytes), ReplLagMs: float64(cur.ReplLagMs)}
	if h.TotalCount() > 0 {
		p.P50, p.P90, p.P99, p.P999 = float64(h.ValueAtQuantile(50)), float64(h.ValueAtQuantile(90)), float64(h.ValueAtQuantile(99)), float64(h.ValueAtQuantile(99.9))
		p.Max = float64(h.Max())
	}
	h.Reset()
	c.spare = h
	if !first {
		sec := now.Sub(c.prevAt).Seconds()
		if sec <= 0 {
			sec = c.o.Interval.Seconds()
		}
		rate := func(now, before int64) float64 { return float64(max(now-before, 0)) / sec }
		p.Sends, p.Bytes, p.Fetched = rate(cur.Sends, c.prev.Sends), rate(cur.Written, c.prev.Written), rate(cur.Fetched, c.prev.Fetched)
		p.Errors, p.Busy, p.DiskFull = rate(cur.Errors, c.prev.Errors), rate(cur.Busy, c.prev.Busy), rate(cur.DiskFull, c.prev.DiskFull)
		c.points.push(p)
	}
	c.prev, c.prevAt = cur, now
}

// ring keeps the newest n values.
type ring[T any] struct {
	buf   []T
	next  int
	count int
}

func newRing[T any](n int) ring[T] { return ring[T]{buf: make([]T, n)} }

func (r *ring[T]) push(v T) {
	r.buf[r.next] = v
	r.next = (r.next + 1) % len(r.buf)
	r.count = min(r.count+1, len(r.buf))
}

// each calls f on the values oldest first.
func (r *ring[T]) each(f func(*T)) {
	for i := 0; i < r.count; i++ {
		f(&r.buf[(r.next-r.count+i+len(r.buf))%len(r.buf)])
	}
}
