package broker

import (
	"context"
	"encoding/binary"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/index"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

// fetchState is a fetch's scratch space, pooled.
type fetchState struct {
	entries []index.Entry
	rec     []byte
	r       qlog.Record
}

var fetchPool = sync.Pool{New: func() any { return &fetchState{} }}

// Fetch answers f by appending a FetchResp payload to dst. At the end of
// the queue it waits for a record up to f.MaxWaitMs (capped by
// MaxFetchWait), or until ctx is done or the broker closes.
func (b *Broker) Fetch(ctx context.Context, f *wire.Fetch, dst []byte) ([]byte, *wire.Error) {
	t := b.topic(f.Topic)
	switch {
	case t == nil:
		return dst, &wire.Error{Code: wire.CodeUnknownTopic, Message: fmt.Sprintf("topic %s does not exist", f.Topic)}
	case f.Queue >= t.queues:
		return dst, &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("topic %s has %d queues, not %d", t.name, t.queues, f.Queue+1)}
	}
	b.metrics.fetches.Inc()
	wait := min(time.Duration(f.MaxWaitMs)*time.Millisecond, b.opts.MaxFetchWait)
	var deadline time.Time
	var timer *time.Timer
	for {
		bounds := b.bounds(t.name, f.Queue)
		switch {
		case f.Offset < bounds.Min:
			// Retention removed it: tell the consumer where the queue starts.
			return wire.AppendFetchResp(dst, wire.FetchHeader{Next: bounds.Min, Min: bounds.Min, Max: bounds.Max}), nil
		case f.Offset > bounds.Max:
			return dst, &wire.Error{Code: wire.CodeOffsetOutOfRange, Message: fmt.Sprintf(
				"%s/%d offset %d is past the end of the queue [%d, %d)", t.name, f.Queue, f.Offset, bounds.Min, bounds.Max)}
		case f.Offset < bounds.Max:
			return b.read(t.name, f, bounds, dst)
		}
		// At the end: wait for the next record of this queue.
		if wait <= 0 || b.closed.Load() {
			return wire.AppendFetchResp(dst, wire.FetchHeader{Next: f.Offset, Min: bounds.Min, Max: bounds.Max}), nil
		}
		if deadline.IsZero() {
			deadline = time.Now().Add(wait)
			timer = time.NewTimer(wait)
			defer timer.Stop()
		}
		ch := b.waiters.add(t.name, f.Queue)
		if nb := b.bounds(t.name, f.Queue); nb.Max != bounds.Max {
			b.waiters.remove(t.name, f.Queue, ch)
			continue // arrived while registering
		}
		select {
		case <-ch:
			continue
		case <-timer.C:
			b.waiters.remove(t.name, f.Queue, ch)
			wait = 0
		case <-ctx.Done():
			b.waiters.remove(t.name, f.Queue, ch)
			wait = 0
		case <-b.stop:
			b.waiters.remove(t.name, f.Queue, ch)
			wait = 0
		}
	}
}

func (b *Broker) bounds(topic string, q uint32) index.QueueBounds {
	b.stMu.RLock()
	defer b.stMu.RUnlock()
	bounds, _ := b.st.Index.Bounds(topic, q)
	return bounds
}

// fetch response header layout (see wire.AppendFetchResp).
const (
	offNext  = 0
	offCount = 24
)

// read appends the records from f.Offset on, up to f.MaxMessages messages
// and about f.MaxBytes bytes (at least one record).
func (b *Broker) read(topic string, f *wire.Fetch, bounds index.QueueBounds, dst []byte) ([]byte, *wire.Error) {
	b.stMu.RLock()
	defer b.stMu.RUnlock()
	fs := fetchPool.Get().(*fetchState)
	defer fetchPool.Put(fs)
	n := int(min(uint64(f.MaxMessages), bounds.Max-f.Offset))
	if cap(fs.entries) < n {
		fs.entries = make([]index.Entry, 0, n)
	}
	ents, err := b.st.Index.Read(topic, f.Queue, f.Offset, fs.entries[:0:n])
	if err != nil && len(ents) == 0 {
		return dst, &wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("reading the index of %s/%d at %d: %v", topic, f.Queue, f.Offset, err)}
	}
	start := len(dst)
	dst = wire.AppendFetchResp(dst, wire.FetchHeader{Min: bounds.Min, Max: bounds.Max})
	next, count, bytes := f.Offset, uint32(0), 0
	for i := 0; i < len(ents); {
		e := ents[i]
		first := next - uint64(e.Inner) // the record's first offset
		if count > 0 && bytes+int(e.Size) > int(f.MaxBytes) {
			break
		}
		fs.rec, err = b.log.ReadRecord(e.Pos, e.Size, fs.rec)
		if err == nil {
			_, err = qlog.DecodeRecord(fs.rec, &fs.r)
		}
		if err != nil {
			if count > 0 {
				break // answer with what was read; the next fetch reports it
			}
			return dst[:start], &wire.Error{Code: wire.CodeInternal, Message: fmt.Sprintf("reading %s/%d offset %d at log position %d: %v", topic, f.Queue, next, e.Pos, err)}
		}
		r := &fs.r
		m := wire.FetchedMessage{Offset: first, StoreTime: r.StoreTime, ClientTime: r.ClientTime, Flags: r.Flags &^ qlog.FlagProducer,
			Count: r.Count, Key: r.Key, Tags: r.Tags, Headers: r.Headers, Body: r.Body}
		dst = m.Append(dst)
		count++
		bytes += int(e.Size)
		next = first + uint64(r.Count)
		// Skip the entries of the rest of this record.
		i += int(r.Count - e.Inner)
	}
	binary.LittleEndian.PutUint64(dst[start+offNext:], next)
	binary.LittleEndian.PutUint32(dst[start+offCount:], count)
	b.metrics.fetched(count, bytes)
	return dst, nil
}

// waiters are the fetches parked at the end of a queue.
type waitKey struct {
	topic string
	queue uint32
}

type waiters struct {
	n  atomic.Int32 // parked fetches, so that dispatch skips the lock when none
	mu sync.Mutex
	m  map[waitKey][]chan struct{}
}

func (w *waiters) add(topic string, q uint32) chan struct{} {
	ch := make(chan struct{})
	w.mu.Lock()
	k := waitKey{topic, q}
	w.m[k] = append(w.m[k], ch)
	w.mu.Unlock()
	w.n.Add(1)
	return ch
}

func (w *waiters) remove(topic string, q uint32, ch chan struct{}) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := waitKey{topic, q}
	l := w.m[k]
	for i, c := range l {
		if c == ch {
			l[i] = l[len(l)-1]
			l = l[:len(l)-1]
			w.n.Add(-1)
			break
		}
	}
	if len(l) == 0 {
		delete(w.m, k)
	} else {
		w.m[k] = l
	}
}

// wake releases the fetches waiting on the queues of recs (on the flusher).
func (w *waiters) wake(recs []qlog.RecordInfo) {
	if w.n.Load() == 0 {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for i := range recs {
		k := waitKey{string(recs[i].Topic), recs[i].QueueID}
		l, ok := w.m[k]
		if !ok {
			continue
		}
		for _, ch := range l {
			close(ch)
		}
		w.n.Add(-int32(len(l)))
		delete(w.m, k)
	}
}

func (w *waiters) wakeAll() {
	w.mu.Lock()
	defer w.mu.Unlock()
	for k, l := range w.m {
		for _, ch := range l {
			close(ch)
		}
		w.n.Add(-int32(len(l)))
		delete(w.m, k)
	}
}
