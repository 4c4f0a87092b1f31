package broker

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/quivermq/quiver/daemon/console"
	"github.com/quivermq/quiver/sdk/wire"
)

// What the web console (package console) reads: *Broker is its
// console.Broker.
var _ console.Broker = (*Broker)(nil)

// latencies is the rolling send-latency histogram: every acknowledged
// produce records into cur; the console's sampler swaps it out each second.
type latencies struct {
	mu  sync.Mutex
	cur *hdrhistogram.Histogram
}

func (l *latencies) record(d time.Duration) {
	us := max(d.Microseconds(), 1)
	l.mu.Lock()
	l.cur.RecordValue(min(us, l.cur.HighestTrackableValue()))
	l.mu.Unlock()
}

// SwapLatency implements console.Broker.
func (b *Broker) SwapLatency(h *hdrhistogram.Histogram) *hdrhistogram.Histogram {
	l := &b.metrics.lat
	l.mu.Lock()
	defer l.mu.Unlock()
	old := l.cur
	l.cur = h
	return old
}

// Counters implements console.Broker.
func (b *Broker) Counters() console.Counters {
	now := time.Now()
	p := b.log.Positions()
	ls := b.log.Stats()
	lag := lagOf(p, now)
	c := console.Counters{Sends: b.metrics.sends.Load(), Written: p.Written, Fetched: b.metrics.fetchedRecs.Load(),
		Errors: b.metrics.errors.Load(), Busy: ls.Busy, DiskFull: b.metrics.diskFull.Load(),
		NotVisibleBytes: lag.WrittenNotVisible, NotVisibleMs: lag.NotVisibleMs, NotDurableBytes: lag.WrittenNotDurable, NotDurableMs: lag.NotDurableMs,
		QueueDepth: int64(ls.Queued)}
	if l := b.leader(); l != nil {
		for _, r := range l.Status() {
			c.ReplLagBytes = max(c.ReplLagBytes, r.LagBytes)
			c.ReplLagMs = max(c.ReplLagMs, r.LagMs)
		}
	}
	return c
}

// GroupLags implements console.Broker: every consumer group's committed
// offset against its queue's end.
func (b *Broker) GroupLags(dst []console.QueueLag) []console.QueueLag {
	b.stMu.RLock()
	defer b.stMu.RUnlock()
	b.ctl.mu.RLock()
	defer b.ctl.mu.RUnlock()
	for g, m := range b.ctl.offs {
		if g == delayGroup {
			continue
		}
		for q, off := range m {
			bounds, _ := b.st.Index.Bounds(q.Topic, q.Queue)
			var lag uint64
			if bounds.Max > off {
				lag = bounds.Max - off
			}
			dst = append(dst, console.QueueLag{Group: g, Topic: q.Topic, Queue: q.Queue, Lag: lag})
		}
	}
	return dst
}

// Browse implements console.Broker: a fetch that never waits, decoded.
// It reads any topic, hidden ones included (the console shows what the
// broker holds), and counts in the fetch metrics like any fetch.
func (b *Broker) Browse(topic string, queue uint32, offset uint64, n int) (wire.FetchHeader, []wire.FetchedMessage, *wire.Error) {
	bounds := b.bounds(topic, queue)
	f := &wire.Fetch{Topic: topic, Queue: queue, Offset: min(max(offset, bounds.Min), bounds.Max), MaxMessages: uint32(n), MaxBytes: 4 << 20}
	buf, werr := b.fetch(context.Background(), f, nil, nil)
	if werr != nil {
		return wire.FetchHeader{}, nil, werr
	}
	h, msgs, err := wire.DecodeFetchResp(buf, nil)
	if err != nil {
		return h, nil, &wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("%s/%d at %d: %v", topic, queue, f.Offset, err)}
	}
	return h, msgs, nil
}

// consoleCounters are the totals the console samples, kept as atomics
// beside the Prometheus counters (which cannot be read back cheaply).
type consoleCounters struct {
	sends, fetchedRecs, errors, diskFull atomic.Int64
	lat                                  latencies
}
