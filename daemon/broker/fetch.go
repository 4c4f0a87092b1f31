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
	return b.fetch(ctx, f, nil, dst)
}

// TagFilter is a consumer's tag subscription as the fetch path uses it:
// the consume queue's tag hashes of its tags.
type TagFilter struct {
	wire.TagFilter
	hashes []uint64
}

// NewTagFilter prepares f (nil for "*": every message).
func NewTagFilter(f wire.TagFilter) *TagFilter {
	if f.All {
		return nil
	}
	tf := &TagFilter{TagFilter: f}
	for _, t := range f.Tags {
		tf.hashes = append(tf.hashes, wire.TagHash([]byte(t)))
	}
	return tf
}

// maySkip reports an entry whose record's tags cannot match (read no
// further): a hash of other tags. Entries without tags (hash 0) may be
// batches, whose messages carry their own tags: read.
func (tf *TagFilter) maySkip(hash uint64) bool {
	if hash == 0 {
		return false
	}
	for _, h := range tf.hashes {
		if h == hash {
			return false
		}
	}
	return true
}

// FetchTags is Fetch of the messages whose tags pass tf: the others are
// skipped in the consume queue (not read, not sent), and the answer's next
// offset passes them; at the end of the queue, or when every message up to
// it was skipped, it waits like Fetch. A batch record is sent whole (its
// messages carry their own tags: the SDK filters them).
func (b *Broker) FetchTags(ctx context.Context, f *wire.Fetch, tf *TagFilter, dst []byte) ([]byte, *wire.Error) {
	return b.fetch(ctx, f, tf, dst)
}

func (b *Broker) fetch(ctx context.Context, f *wire.Fetch, tf *TagFilter, dst []byte) ([]byte, *wire.Error) {
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
			start := len(dst)
			out, werr := b.read(t.name, f, tf, bounds, dst)
			if werr != nil || tf == nil {
				return out, werr
			}
			next := binary.LittleEndian.Uint64(out[start+offNext:])
			if binary.LittleEndian.Uint32(out[start+offCount:]) > 0 || next == f.Offset {
				return out, nil
			}
			// Everything read was filtered out: go on from past it.
			dst, f.Offset = out[:start], next
			continue
		}
		// At the end: wait for the next record of this queue.
		if wait <= 0 || b.closed.Load() || !deadline.IsZero() && !time.Now().Before(deadline) {
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
func (b *Broker) read(topic string, f *wire.Fetch, tf *TagFilter, bounds index.QueueBounds, dst []byte) ([]byte, *wire.Error) {
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
		if tf != nil && tf.maySkip(e.TagHash) {
			next++ // one message's entry (a batch record's tags are empty)
			i++
			continue
		}
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
		if tf != nil && r.Flags&qlog.FlagBatch == 0 && !tf.Match(r.Tags) {
			// Untagged, or a hash collision: filtered out after all.
			next = first + uint64(r.Count)
			i += int(r.Count - e.Inner)
			continue
		}
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
