package broker

import (
	"container/heap"
	"encoding/binary"
	"errors"
	"fmt"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/index"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

// Delayed delivery (RocketMQ's timer, over the log).
//
// A send with a delivery time (wire.ProduceAt, 1 s to 30 days ahead) is
// stored in the hidden topic __delay, in queue (hour of its time) mod 744:
// 744 hours are 31 days, more than the longest delay, so a queue holds the
// messages of one hour before those of its next cycle (stored at least a
// day after that hour ended). The record keeps the message as sent, its
// body prefixed by an envelope: target topic and queue, and the time.
//
// The leader's delayer, every delayTick: for each queue whose first
// undelivered message's hour has begun, it loads that hour's messages
// (their times and positions: 40 bytes each, only hours that have begun)
// into a heap, and stores each one due in its target queue (a produce of
// the broker's own, idempotent: producer id delayPID+queue, sequence its
// offset in the delay queue, so a re-put after a restart or failover is
// answered from the producer table, not stored twice). Once an hour's
// messages are all stored, the queue's progress (the offset after them)
// is committed as consumer group __delay's: a control record, replicated
// like any commit. Every broker computes the oldest log position an
// undelivered message needs, which retention keeps (Hold).
const (
	delayTopicName = "__delay"
	delayAtTopic   = "__delay-at" // the group's commits for it: each queue's time watermark
	delayGroup     = "__delay"
	delayQueues    = 744
	delaySlack     = time.Hour // beyond wire.MaxDelay, for clocks
	delayTick      = 100 * time.Millisecond
	delayPID       = uint64(0xde1a7) << 40
	delayBatch     = 256 // due messages stored at once
)

// delayQueue is the delay queue of a delivery time.
func delayQueue(at int64) uint32 { return uint32((at / int64(time.Hour)) % delayQueues) }

// delayTopic returns the delay topic for a send to deliver at at (nil:
// deliver now, it is less than a second ahead), or an error beyond the
// longest delay.
func (b *Broker) delayTopic(at int64, now time.Time) (*topic, *wire.Error) {
	if at <= now.Add(time.Second).UnixNano() {
		return nil, nil
	}
	if at > now.Add(wire.MaxDelay+delaySlack).UnixNano() {
		return nil, &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("deliver at %s: more than 30 days ahead",
			time.Unix(0, at).UTC().Format(time.RFC3339))}
	}
	return b.ensureTopic(delayTopicName, delayQueues, false)
}

// Envelope: "QD" 1 | topic length u16 | topic | queue u32 | at i64 | body.
func appendEnvelope(dst []byte, topic string, queue uint32, at int64, body []byte) []byte {
	dst = append(dst, 'Q', 'D', 1)
	dst = binary.LittleEndian.AppendUint16(dst, uint16(len(topic)))
	dst = append(dst, topic...)
	dst = binary.LittleEndian.AppendUint32(dst, queue)
	dst = binary.LittleEndian.AppendUint64(dst, uint64(at))
	return append(dst, body...)
}

var errEnvelope = errors.New("broker: delay record without its envelope")

func openEnvelope(b []byte) (topic string, queue uint32, at int64, body []byte, err error) {
	if len(b) < 5 || b[0] != 'Q' || b[1] != 'D' || b[2] != 1 {
		return "", 0, 0, nil, errEnvelope
	}
	n := int(binary.LittleEndian.Uint16(b[3:]))
	if len(b) < 5+n+12 {
		return "", 0, 0, nil, errEnvelope
	}
	topic = string(b[5 : 5+n])
	queue = binary.LittleEndian.Uint32(b[5+n:])
	at = int64(binary.LittleEndian.Uint64(b[9+n:]))
	return topic, queue, at, b[17+n:], nil
}

// delayed is one message waiting in the heap.
type delayed struct {
	at    int64
	queue uint32
	off   uint64
	pos   int64
	size  int32
}

type delayHeap []delayed

func (h delayHeap) Len() int { return len(h) }
func (h delayHeap) Less(i, j int) bool {
	if h[i].at != h[j].at {
		return h[i].at < h[j].at
	}
	return h[i].off < h[j].off
}
func (h delayHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)   { *h = append(*h, x.(delayed)) }
func (h *delayHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// delayer is the broker's scheduler of delayed messages.
type delayer struct {
	b    *Broker
	hold atomic.Int64 // oldest log position an undelivered message needs; -1 none

	// Owned by the delayer's goroutine.
	leading bool
	held    time.Time           // when hold was computed
	from    [delayQueues]uint64 // first offset not known delivered
	// upto: in the hour being delivered, every message due at or before
	// it was stored (committed as group __delay's offset of __delay-at/q,
	// at most every second): a new leader skips them. done counts the
	// deliveries since the last such commit.
	upto     [delayQueues]int64
	uptoSent [delayQueues]int64
	done     [delayQueues]int
	uptoAt   time.Time
	hour     [delayQueues]int64  // the hour loaded (0: none)
	end      [delayQueues]uint64 // loaded up to
	waiting  [delayQueues]int    // of its loaded messages, not stored yet
	// The hour of the first message at peekOff, when that hour had not
	// begun: the queue is not read again until it begins.
	peekOff  [delayQueues]uint64
	peekHour [delayQueues]int64
	h        delayHeap
	batch    []delayed
	ents     []index.Entry
	rec      []byte
	r        qlog.Record
}

func newDelayer(b *Broker) *delayer {
	d := &delayer{b: b}
	d.hold.Store(0) // keep everything until the first look
	return d
}

// Hold is the oldest log position retention must keep (-1: none).
func (d *delayer) Hold() int64 { return d.hold.Load() }

// run steps every delayTick until stop.
func (d *delayer) run(stop <-chan struct{}) { every(stop, delayTick, nil, d.step) }

func (d *delayer) step() {
	if d.b.topic(delayTopicName) == nil {
		d.hold.Store(-1)
		return
	}
	leading := d.b.writable() == nil
	if leading != d.leading {
		d.reset() // taking over (or giving up): start from the committed progress
		d.leading = leading
	}
	d.loadProgress()
	if time.Since(d.held) >= time.Second {
		// Once a second is enough: a stale hold is older, keeping more;
		// a message stored since is in the newest segment, never removed.
		d.updateHold()
		d.held = time.Now()
	}
	if leading {
		d.tick(time.Now())
	}
}

// reset forgets what was loaded.
func (d *delayer) reset() {
	d.h = d.h[:0]
	d.hour, d.end, d.waiting = [delayQueues]int64{}, [delayQueues]uint64{}, [delayQueues]int{}
	d.peekHour = [delayQueues]int64{}
}

// loadProgress raises each queue's start and time watermark to its
// committed progress (a new leader's, or after a commit of the old one
// replicated here).
func (d *delayer) loadProgress() {
	for q := range uint32(delayQueues) {
		if c := d.b.ctl.committed(delayGroup, wire.QueueRef{Topic: delayTopicName, Queue: q}); c != wire.NoOffset && uint64(c) > d.from[q] {
			d.from[q] = uint64(c)
		}
		if c := d.b.ctl.committed(delayGroup, wire.QueueRef{Topic: delayAtTopic, Queue: q}); c != wire.NoOffset && c > d.upto[q] {
			d.upto[q] = c
			d.uptoSent[q] = max(d.uptoSent[q], c)
		}
	}
}

// commitUpto commits the time watermarks that moved: at most every second,
// or at once for a queue with 4,096 deliveries since its last (a new
// leader re-stores what was delivered after the last commit, and the
// producer table answers for the last 16,384 of a queue).
func (d *delayer) commitUpto(force bool) {
	due := force || time.Since(d.uptoAt) >= time.Second
	cm := wire.Commit{Group: delayGroup, Member: "quiver-delay"}
	for q := range uint32(delayQueues) {
		if d.upto[q] > d.uptoSent[q] && (due || d.done[q] >= 4096) {
			cm.Offsets = append(cm.Offsets, wire.OffsetCommit{QueueRef: wire.QueueRef{Topic: delayAtTopic, Queue: q}, Offset: uint64(d.upto[q])})
		}
	}
	if due {
		d.uptoAt = time.Now()
	}
	if len(cm.Offsets) == 0 {
		return
	}
	if err := d.b.ctl.appendCommit(&cm); err != nil {
		d.b.logger.Warn("delay progress not committed; retried", "err", err)
		return
	}
	for _, o := range cm.Offsets {
		d.uptoSent[o.Queue], d.done[o.Queue] = int64(o.Offset), 0
	}
}

// updateHold computes the oldest position an undelivered message needs.
func (d *delayer) updateHold() {
	hold := int64(-1)
	d.b.stMu.RLock()
	for q := range uint32(delayQueues) {
		bounds, ok := d.b.st.Index.Bounds(delayTopicName, q)
		if !ok || max(d.from[q], bounds.Min) >= bounds.Max {
			continue
		}
		e, err := d.b.st.Index.Lookup(delayTopicName, q, max(d.from[q], bounds.Min))
		if err != nil {
			hold = 0 // cannot tell: keep everything
			break
		}
		if hold < 0 || e.Pos < hold {
			hold = e.Pos
		}
	}
	d.b.stMu.RUnlock()
	d.hold.Store(hold)
}

// tick loads the hours that have begun and stores what is due.
func (d *delayer) tick(now time.Time) {
	nowNs := now.UnixNano()
	for q := range uint32(delayQueues) {
		d.load(q, nowNs)
	}
	for len(d.h) > 0 && d.h[0].at <= nowNs {
		// Up to delayBatch due messages at once, in due order.
		batch := d.batch[:0]
		for len(d.h) > 0 && d.h[0].at <= nowNs && len(batch) < delayBatch {
			batch = append(batch, heap.Pop(&d.h).(delayed))
		}
		d.batch = batch
		errs := d.deliverAll(batch)
		retry := false
		var last [delayQueues]int64 // the latest time stored, per queue
		for i, m := range batch {
			err := errs[i]
			if err != nil {
				var werr *wire.Error
				if !errors.As(err, &werr) || werr.Retryable() {
					d.b.logger.Warn("delayed message not delivered yet; retried", "queue", m.queue, "offset", m.off, "err", err)
					heap.Push(&d.h, m) // retried at the next tick
					retry = true
					continue
				}
				// It can never be stored (it would hold up every later one).
				d.b.logger.Error("delayed message cannot be delivered; left in the delay topic", "queue", m.queue, "offset", m.off, "err", err)
			}
			d.waiting[m.queue]--
			d.done[m.queue]++
			last[m.queue] = max(last[m.queue], m.at)
		}
		if retry {
			break
		}
		// Every message of a queue due before the latest stored was stored
		// (the heap gives them in time order); one due at the same time may
		// still wait: the watermark stays just below.
		for q, at := range last {
			if at-1 > d.upto[q] {
				d.upto[q] = at - 1
			}
		}
		d.commitUpto(false)
	}
	d.commitUpto(false)
	// An hour is done once it has ended and all of it was stored (until it
	// ends, more of it may come: the time watermark keeps its progress).
	for q := range uint32(delayQueues) {
		if h := d.hour[q]; h != 0 && (h+1)*int64(time.Hour) <= nowNs && d.waiting[q] == 0 && !d.more(q) {
			d.complete(q)
		}
	}
}

// read reads the delay queue's entries from off on (a chunk).
func (d *delayer) read(q uint32, off uint64) []index.Entry {
	d.b.stMu.RLock()
	defer d.b.stMu.RUnlock()
	if cap(d.ents) < 256 {
		d.ents = make([]index.Entry, 0, 256)
	}
	ents, _ := d.b.st.Index.Read(delayTopicName, q, off, d.ents[:0:256])
	return ents
}

// timeOf reads the delivery time in the record of e.
func (d *delayer) timeOf(e index.Entry) (int64, error) {
	d.b.stMu.RLock()
	var err error
	d.rec, err = d.b.log.ReadRecord(e.Pos, e.Size, d.rec)
	d.b.stMu.RUnlock()
	if err != nil {
		return 0, err
	}
	if _, err := qlog.DecodeRecord(d.rec, &d.r); err != nil {
		return 0, err
	}
	_, _, at, _, err := openEnvelope(d.r.Body)
	return at, err
}

// load loads queue q's current hour into the heap once it has begun, and
// what arrived for it since.
func (d *delayer) load(q uint32, now int64) {
	off := d.end[q]
	if d.hour[q] == 0 {
		off = d.from[q]
		if d.peekHour[q] != 0 && d.peekOff[q] == off && d.peekHour[q]*int64(time.Hour) > now {
			return // its first message's hour has not begun
		}
	}
	start := off
	for {
		ents := d.read(q, off)
		if len(ents) == 0 {
			return
		}
		for i, e := range ents {
			o := off + uint64(i)
			if e.Inner > 0 {
				continue // a batch's other messages: one record
			}
			at, err := d.timeOf(e)
			if err != nil {
				d.b.logger.Error("delay record unreadable; skipped", "queue", q, "offset", o, "err", err)
				continue
			}
			hour := at / int64(time.Hour)
			if d.hour[q] == 0 {
				if hour*int64(time.Hour) > now {
					d.peekOff[q], d.peekHour[q] = start, hour
					return // its hour has not begun
				}
				d.hour[q] = hour
			}
			if hour != d.hour[q] {
				return // the next cycle's: after this hour is done
			}
			d.end[q] = o + 1
			if at <= d.upto[q] {
				continue // stored before (a new leader's: below the committed watermark)
			}
			heap.Push(&d.h, delayed{at: at, queue: q, off: o, pos: e.Pos, size: e.Size})
			d.waiting[q]++
		}
		off += uint64(len(ents))
		d.end[q] = max(d.end[q], off)
	}
}

// more reports whether queue q has entries past what was loaded (of its
// hour: load takes them at the next tick).
func (d *delayer) more(q uint32) bool {
	bounds := d.b.bounds(delayTopicName, q)
	if d.end[q] >= bounds.Max {
		return false
	}
	ents := d.read(q, d.end[q])
	if len(ents) == 0 {
		return false
	}
	at, err := d.timeOf(ents[0])
	return err == nil && at/int64(time.Hour) == d.hour[q]
}

// complete commits queue q's progress past its loaded hour.
func (d *delayer) complete(q uint32) {
	cm := wire.Commit{Group: delayGroup, Member: "quiver-delay",
		Offsets: []wire.OffsetCommit{{QueueRef: wire.QueueRef{Topic: delayTopicName, Queue: q}, Offset: d.end[q]}}}
	if err := d.b.ctl.appendCommit(&cm); err != nil {
		d.b.logger.Warn("delay progress not committed; retried", "queue", q, "err", err)
		return
	}
	d.from[q], d.hour[q] = d.end[q], 0
}

// deliverAll stores each message of ms in its target queue, as produces
// of the broker's own, all at once; it returns each one's error.
func (d *delayer) deliverAll(ms []delayed) []error {
	errs := make([]error, len(ms))
	done := make(chan struct{}, len(ms))
	started := 0
	for i, m := range ms {
		d.b.stMu.RLock()
		rec, err := d.b.log.ReadRecord(m.pos, m.size, nil) // its own: the produce keeps it until answered
		d.b.stMu.RUnlock()
		var r qlog.Record
		if err == nil {
			_, err = qlog.DecodeRecord(rec, &r)
		}
		var topic string
		var queue uint32
		var body []byte
		if err == nil {
			topic, queue, _, body, err = openEnvelope(r.Body)
		}
		if err != nil {
			errs[i] = err
			continue
		}
		c := NewProduceCall()
		c.In = wire.Produce{Topic: topic, Queue: int32(queue), Flags: r.Flags &^ (qlog.FlagProducer | qlog.FlagControl), Count: r.Count,
			ClientTime: r.ClientTime, Key: r.Key, Tags: r.Tags, Headers: r.Headers, Body: body,
			ProducerID: delayPID | uint64(m.queue), Seq: m.off + 1}
		c.Reply = func(_ *ProduceCall, _ wire.ProduceAck, werr *wire.Error) {
			if werr != nil {
				errs[i] = werr // a *wire.Error: tick tells permanent refusals
			}
			done <- struct{}{}
		}
		started++
		d.b.Produce(c)
	}
	for range started {
		<-done
	}
	return errs
}
