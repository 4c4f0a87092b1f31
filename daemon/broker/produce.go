package broker

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quivermq/quiver/index"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/replica"
	"github.com/quivermq/quiver/sdk/wire"
)

// ProduceCall is one produce in flight. The caller fills In (whose byte
// fields may alias its frame buffer), Reply and whatever of Owner, ReqID
// and Buf it needs, and hands it to Produce. Reply is called exactly once,
// on some goroutine of the broker or the log; it must not block, and the
// call and everything In aliases belong to the caller again once it runs.
type ProduceCall struct {
	In    wire.Produce
	Reply func(c *ProduceCall, ack wire.ProduceAck, err *wire.Error)
	Owner any    // the caller's (the stream that answers)
	ReqID uint64 // the caller's
	Buf   *[]byte
	// DeliverAt (unix ns), when set, makes the send's messages visible at
	// that time (delay.go): stored in the delay topic until then.
	DeliverAt int64

	msg          qlog.Message
	onAppend     func(qlog.AppendResult, error) // bound once per pooled call
	onReplicated func(error)
	ack          wire.ProduceAck
	epoch        uint64 // of the leadership that accepted it
	start        time.Time
	b            *Broker
	leader       *replica.Leader // min-insync: the leader it was accepted by
	dedup        *dedupSend      // an idempotent send this call stores (dedup.go)
	retry        bool            // answered with a copy the log holds (dedup.go)
	delayed      []byte          // a delayed send's envelope and body (delay.go)
}

var callPool sync.Pool

func init() {
	callPool.New = func() any {
		c := &ProduceCall{}
		c.onAppend = c.appended
		c.onReplicated = c.replicated
		return c
	}
}

// NewProduceCall returns a pooled call; it goes back to the pool after
// Reply returns.
func NewProduceCall() *ProduceCall { return callPool.Get().(*ProduceCall) }

func (c *ProduceCall) release() {
	c.In, c.Owner, c.Buf, c.Reply, c.msg, c.b, c.leader, c.dedup, c.retry = wire.Produce{}, nil, nil, nil, qlog.Message{}, nil, nil, nil, false
	c.DeliverAt, c.delayed = 0, c.delayed[:0]
	if cap(c.delayed) > 64<<10 {
		c.delayed = nil // a pooled call keeps no large body
	}
	callPool.Put(c)
}

func (c *ProduceCall) reply(ack wire.ProduceAck, werr *wire.Error) {
	b, s, producer := c.b, c.dedup, c.In.ProducerID // c belongs to the caller once answered
	c.Reply(c, ack, werr)
	c.release()
	if s == nil {
		return
	}
	// The retries of this send that arrived while it was stored get its
	// answer (its failure: their own retries then find it in the log if
	// it was stored, or store it).
	waiters, first := b.dedup.resolve(producer, s)
	for _, w := range waiters {
		if werr != nil {
			w.reply(wire.ProduceAck{}, werr)
			continue
		}
		w.reply(ackAt(ack, first, w.In.Seq), nil)
	}
}

// Produce validates the call and hands it to the log; Reply follows. It
// does not block.
func (b *Broker) Produce(c *ProduceCall) {
	c.b = b
	c.start = time.Now()
	b.metrics.produceReqs.Inc()
	if b.closed.Load() {
		b.metrics.produceFailed(wire.CodeStopping)
		c.reply(wire.ProduceAck{}, &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"})
		return
	}
	p := &c.In
	werr := b.writable()
	var t *topic
	if werr == nil {
		t, werr = b.produceTopic(p.Topic)
	}
	if werr == nil {
		werr = checkProduce(p, t)
	}
	if werr == nil {
		werr = b.disk.refusal()
	}
	if werr == nil {
		c.leader, werr = b.replicaCheck()
	}
	c.epoch = b.repl.epoch.Load()
	// A delayed send is stored in the delay topic until its time.
	stored := t
	if werr == nil && c.DeliverAt != 0 {
		var dt *topic
		if dt, werr = b.delayTopic(c.DeliverAt, c.start); dt != nil {
			stored = dt
		}
	}
	kind := claimNew
	var found index.StoredSend
	if werr == nil && p.ProducerID != 0 {
		kind, found, werr = b.dedup.claim(c, stored.name)
	}
	if werr != nil {
		b.metrics.produceFailed(werr.Code)
		c.reply(wire.ProduceAck{}, werr)
		return
	}
	switch kind {
	case claimWaiting:
		// A retry of a send being stored: answered with the first copy (reply).
		b.metrics.dedupHits.Inc()
		return
	case claimStored:
		// A retry of a send the log holds: not stored again. Answered with
		// the stored copy once that is on the in-sync followers.
		b.metrics.dedupHits.Inc()
		c.retry = true
		ack := ackAt(wire.ProduceAck{Queue: found.Queue, Offset: found.Offset, StoreTime: found.StoreTime, Epoch: c.epoch}, found.Seq, p.Seq)
		if c.leader != nil {
			c.ack = ack
			c.leader.WaitAcks(found.Pos+int64(found.Size), time.Now().Add(b.opts.Replication.AckTimeout), c.onReplicated)
			return
		}
		c.reply(ack, nil)
		return
	}
	q := uint32(p.Queue)
	switch {
	case p.Queue != wire.AnyQueue:
	case len(p.Key) > 0:
		q = wire.KeyHash(p.Key) % t.queues // the SDK maps keys the same way
	default:
		q = t.rr.Add(1) % t.queues
	}
	c.msg = qlog.Message{Topic: t.name, QueueID: q, Flags: p.Flags, Count: p.Count, ClientTime: p.ClientTime,
		Key: p.Key, Tags: p.Tags, Headers: p.Headers, Body: p.Body, ProducerID: p.ProducerID, Seq: p.Seq}
	if stored != t {
		c.delayed = appendEnvelope(c.delayed[:0], t.name, q, c.DeliverAt, p.Body)
		c.msg.Topic, c.msg.QueueID, c.msg.Body = stored.name, delayQueue(c.DeliverAt), c.delayed
	}
	switch p.Durability {
	case wire.DurabilitySync:
		c.msg.Ack = qlog.AckSync
	case wire.DurabilityAsync:
		c.msg.Ack = qlog.AckAsync
	}
	t.gate.RLock()
	var err error
	if t.deleted {
		err = errTopicDeleted
	} else {
		b.stMu.RLock()
		err = b.log.AppendAsync(&c.msg, c.onAppend)
		b.stMu.RUnlock()
	}
	t.gate.RUnlock()
	if err == errTopicDeleted {
		werr := &wire.Error{Code: wire.CodeUnknownTopic, Message: fmt.Sprintf("topic %s was deleted", t.name)}
		b.metrics.produceFailed(werr.Code)
		c.reply(wire.ProduceAck{}, werr)
		return
	}
	if err != nil {
		werr := b.storageErr(err)
		b.metrics.produceFailed(werr.Code)
		c.reply(wire.ProduceAck{}, werr)
	}
}

var errTopicDeleted = errors.New("topic deleted")

// appended is the log's callback (on the flusher or the janitor).
func (c *ProduceCall) appended(res qlog.AppendResult, err error) {
	b := c.b
	if err != nil {
		werr := b.storageErr(err)
		b.metrics.produceFailed(werr.Code)
		c.reply(wire.ProduceAck{}, werr)
		return
	}
	ack := wire.ProduceAck{Queue: c.msg.QueueID, Offset: res.QueueOffset, StoreTime: res.StoreTime, Epoch: c.epoch}
	if c.leader != nil {
		// The leader that accepted the send, even if it has stopped leading
		// since: a stopped one fails the wait (no ack without the followers).
		c.ack = ack
		c.leader.WaitAcks(res.Pos+int64(res.Size), time.Now().Add(b.opts.Replication.AckTimeout), c.onReplicated)
		return
	}
	b.metrics.produced(c.msg.Topic, c.msg.Count, time.Since(c.start))
	c.reply(ack, nil)
}

// replicated is the leader's callback once min-insync followers have the
// record durable (or did not in time).
func (c *ProduceCall) replicated(err error) {
	b := c.b
	if err != nil {
		werr := &wire.Error{Code: wire.CodeNotEnoughReplicas, Message: err.Error()}
		b.metrics.produceFailed(werr.Code)
		c.reply(wire.ProduceAck{}, werr)
		return
	}
	if !c.retry {
		b.metrics.produced(c.msg.Topic, c.msg.Count, time.Since(c.start))
	}
	c.reply(c.ack, nil)
}

// storedSend looks a send up in the index's producer table.
func (b *Broker) storedSend(pid, seq uint64, n uint32) (index.StoredSend, string, bool, bool) {
	b.stMu.RLock()
	defer b.stMu.RUnlock()
	return b.st.Index.StoredSend(pid, seq, n)
}

// produceTopic finds the topic, creating it when auto-create is on.
func (b *Broker) produceTopic(name string) (*topic, *wire.Error) {
	if hidden(name) {
		return nil, validTopic(name)
	}
	if t := b.topic(name); t != nil {
		return t, nil
	}
	if werr := validTopic(name); werr != nil {
		return nil, werr
	}
	if b.opts.NoAutoCreate {
		return nil, &wire.Error{Code: wire.CodeUnknownTopic, Message: fmt.Sprintf("topic %s does not exist and auto-create is off", name)}
	}
	return b.ensureTopic(name, uint32(b.opts.DefaultQueues), false)
}

// checkProduce refuses what the log would store wrongly or a client may
// not ask for; the log checks sizes itself.
func checkProduce(p *wire.Produce, t *topic) *wire.Error {
	switch {
	case p.Queue != wire.AnyQueue && uint32(p.Queue) >= t.queues:
		return &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("topic %s has %d queues, not %d", t.name, t.queues, p.Queue+1)}
	case p.Flags&wire.FlagControl != 0:
		return &wire.Error{Code: wire.CodeInvalid, Message: "the control flag is reserved for the broker"}
	case p.Flags&^(wire.FlagCompressionMask|wire.FlagBatch) != 0:
		return &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("unknown flags %#x", p.Flags)}
	case p.Flags&wire.FlagBatch == 0 && p.Count > 1:
		return &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("count %d without the batch flag", p.Count)}
	case p.Flags&wire.FlagBatch != 0 && p.Count == 0:
		return &wire.Error{Code: wire.CodeInvalid, Message: "a batch of 0 messages"}
	}
	return nil
}
