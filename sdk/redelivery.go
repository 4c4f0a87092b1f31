package sdk

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// Redelivery and dead letters (on by default for a Consumer;
// WithoutRedelivery turns it off).
//
// When Run's handler fails on a message (or Redeliver is called for one),
// the consumer stores a copy of it in its group's redelivery topic
// (wire.RetryTopic: "__retry.<group>") and moves on: the rest of the
// message's queue is not held up by it. The copy keeps the message's key,
// tags, headers and body, and headers of its own (RetryHeaders): where it
// came from, how many deliveries failed, the last error, and when it is
// due. The group's members consume the redelivery topic too, and hand the
// copy to the handler once it is due, as the original message (same topic,
// queue and offset; Message.Redeliveries says how many deliveries failed
// before). Each redelivery waits longer (the backoff: 10 s, 30 s, 1 min,
// 2 min, ... 2 h by default, as RocketMQ's); redelivery k is stored in
// queue k-1 of the redelivery topic, so that each queue holds one delay
// and its messages come due in order (a queue waits for its first
// message only). After MaxRedeliveries failed redeliveries (16 by
// default) the message goes to the group's dead-letter topic
// (wire.DeadLetterTopic: "__dlq.<group>") with the same headers, and is
// not delivered again: `quiver dlq list|show|replay` looks at it and sends
// it back to its topic.
//
// The original is marked processed only once its copy is stored (a failed
// store is retried, the handler called again: nothing is skipped). A
// redelivered message comes after later messages of its queue: with
// redelivery, a key's messages are no longer handled strictly in order
// when one fails (WithoutRedelivery keeps retrying in place, holding the
// queue, for handlers that need that order).

// Headers of a redelivered or dead-lettered message (set by the consumer).
const (
	HeaderOriginTopic  = "quiver-origin-topic"
	HeaderOriginGroup  = "quiver-origin-group" // the broker group of its queue
	HeaderOriginQueue  = "quiver-origin-queue"
	HeaderOriginOffset = "quiver-origin-offset"
	HeaderAttempts     = "quiver-attempts" // deliveries that failed
	HeaderError        = "quiver-error"    // the last one's error (at most 1 KiB)
	HeaderDue          = "quiver-due"      // unix milliseconds: redelivered then
)

// DefaultBackoff is the pause before each redelivery (RocketMQ's retry levels).
var DefaultBackoff = []time.Duration{10 * time.Second, 30 * time.Second, time.Minute, 2 * time.Minute,
	3 * time.Minute, 4 * time.Minute, 5 * time.Minute, 6 * time.Minute, 7 * time.Minute, 8 * time.Minute,
	9 * time.Minute, 10 * time.Minute, 20 * time.Minute, 30 * time.Minute, time.Hour, 2 * time.Hour}

// DefaultMaxRedeliveries is how many times a failed message is redelivered
// before it goes to the dead-letter topic.
const DefaultMaxRedeliveries = 16

// WithRedelivery sets how many times a message whose handler failed is
// redelivered (1..1000) before it goes to the group's dead-letter topic,
// and the pause before each redelivery (the last repeats; 1 ms to 24 h
// each; none: DefaultBackoff). The redelivery topic gets one queue per
// pause.
func WithRedelivery(maxRedeliveries int, backoff ...time.Duration) ConsumerOpt {
	return func(c *consumerConfig) {
		c.redeliver, c.maxRedeliveries = true, maxRedeliveries
		if len(backoff) > 0 {
			c.backoff = append([]time.Duration(nil), backoff...)
		}
	}
}

// WithoutRedelivery makes Run call a failing handler again with the same
// message after a growing pause, holding the rest of its queue, for as
// long as it fails (handlers that need a key's messages strictly in order).
func WithoutRedelivery() ConsumerOpt { return func(c *consumerConfig) { c.redeliver = false } }

// Message fields set on a redelivered message, and how the consumer finds
// its place. (A field of Message: see lease.)
type redelivery struct {
	count int    // deliveries that failed before this one
	at    uint64 // its offset in the redelivery topic's queue
}

// Redeliveries is how many deliveries of m failed before this one (0 for
// a first delivery).
func (m *Message) Redeliveries() int {
	if m.redo == nil {
		return 0
	}
	return m.redo.count
}

// doneAt is the offset to mark processed in m's lease (its queue) once m
// is handled.
func (m *Message) doneAt() uint64 {
	if m.redo != nil {
		return m.redo.at + 1
	}
	return m.Offset + 1
}

// redeliverer stores the copies: a producer of the consumer's own and the
// topics it created.
type redeliverer struct {
	mu      sync.Mutex
	p       *Producer
	created map[string]bool
}

// validateRedelivery checks the options.
func (cfg *consumerConfig) validateRedelivery() error {
	if !cfg.redeliver {
		return nil
	}
	if cfg.maxRedeliveries < 1 || cfg.maxRedeliveries > 1000 {
		return fmt.Errorf("quiver: %d redeliveries (1..1000)", cfg.maxRedeliveries)
	}
	if len(cfg.backoff) > wire.MaxQueues {
		return fmt.Errorf("quiver: %d redelivery pauses (at most %d)", len(cfg.backoff), wire.MaxQueues)
	}
	for _, d := range cfg.backoff {
		if d < time.Millisecond || d > 24*time.Hour {
			return fmt.Errorf("quiver: redelivery pause %v (1ms..24h)", d)
		}
	}
	return nil
}

// Redeliver sets m aside for redelivery after the group's backoff (or, past
// the maximum, in the dead-letter topic), with cause as its error, and marks
// it processed: the Poll counterpart of a failed Run handler. With
// WithManualCommit the next Commit commits it.
func (c *Consumer) Redeliver(ctx context.Context, m *Message, cause error) error {
	if m.lease == nil {
		return errors.New("quiver: Redeliver of a message that was not received by this consumer")
	}
	if !c.cfg.redeliver {
		return errors.New("quiver: Redeliver on a consumer made WithoutRedelivery")
	}
	if err := c.setAside(ctx, m, cause); err != nil {
		return err
	}
	m.lease.markDone(m)
	return nil
}

// setAside stores m's copy in the redelivery topic, or in the dead-letter
// topic once it failed 1+maxRedeliveries times.
func (c *Consumer) setAside(ctx context.Context, m *Message, cause error) error {
	failed := m.Redeliveries() + 1
	topic, queue := wire.RetryTopic(c.group), uint32(0)
	var due time.Time
	if failed > c.cfg.maxRedeliveries {
		topic = wire.DeadLetterTopic(c.group)
	} else {
		level := min(failed, len(c.cfg.backoff)) - 1
		queue, due = uint32(level), time.Now().Add(c.cfg.backoff[level])
	}
	p, err := c.redelivery(ctx, topic)
	if err != nil {
		return err
	}
	msg := "<nil>"
	if cause != nil {
		msg = cause.Error()
	}
	if len(msg) > 1024 {
		msg = msg[:1024]
	}
	hs := make([]Header, 0, len(m.Headers)+7)
	for _, h := range m.Headers {
		if !isRedeliveryHeader(h.Key) {
			hs = append(hs, h)
		}
	}
	hs = append(hs,
		Header{Key: HeaderOriginTopic, Value: []byte(m.Topic)},
		Header{Key: HeaderOriginGroup, Value: []byte(m.Group)},
		Header{Key: HeaderOriginQueue, Value: strconv.AppendUint(nil, uint64(m.Queue), 10)},
		Header{Key: HeaderOriginOffset, Value: strconv.AppendUint(nil, m.Offset, 10)},
		Header{Key: HeaderAttempts, Value: strconv.AppendInt(nil, int64(failed), 10)},
		Header{Key: HeaderError, Value: []byte(msg)})
	if !due.IsZero() {
		hs = append(hs, Header{Key: HeaderDue, Value: strconv.AppendInt(nil, due.UnixMilli(), 10)})
	}
	cp := &Message{Topic: topic, Key: m.Key, Tags: m.Tags, Headers: hs, Body: m.Body}
	op, err := p.newOp(ctx, cp)
	if err != nil {
		return err
	}
	if topic == wire.RetryTopic(c.group) {
		op.fixed, op.fixedQ = true, queue
	}
	if _, err := p.wait(op); err != nil {
		return fmt.Errorf("quiver: setting aside %s/%d offset %d of group %s: %w", m.Topic, m.Queue, m.Offset, c.group, err)
	}
	return nil
}

// redelivery returns the consumer's producer, having created topic (the
// redelivery topic with one queue per pause; the dead-letter topic with one).
func (c *Consumer) redelivery(ctx context.Context, topic string) (*Producer, error) {
	r := &c.redo
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.p == nil {
		p, err := c.cl.NewProducer()
		if err != nil {
			return nil, err
		}
		r.p, r.created = p, map[string]bool{}
	}
	if !r.created[topic] {
		// Made already (perhaps by a member with other pauses, with another
		// number of queues: a redelivery then goes to the last queue there
		// is, see sendOp.target), or made now.
		infos, err := c.cl.Admin().Topics(ctx, topic)
		if err != nil {
			return nil, err
		}
		if infos[0].Queues == 0 {
			queues := 1
			if topic == wire.RetryTopic(c.group) {
				queues = len(c.cfg.backoff)
			}
			if err := c.cl.Admin().CreateTopic(ctx, topic, queues); err != nil {
				return nil, err // made meanwhile with other queues: the next failure finds it
			}
		}
		r.created[topic] = true
	}
	return r.p, nil
}

// closeRedelivery closes the consumer's producer.
func (c *Consumer) closeRedelivery() {
	c.redo.mu.Lock()
	defer c.redo.mu.Unlock()
	if c.redo.p != nil {
		c.redo.p.Close()
	}
}

func isRedeliveryHeader(k string) bool {
	switch k {
	case HeaderOriginTopic, HeaderOriginGroup, HeaderOriginQueue, HeaderOriginOffset, HeaderAttempts, HeaderError, HeaderDue:
		return true
	}
	return false
}

// restore turns a message read from the redelivery topic back into the
// one that failed (its topic, queue, offset, and headers without the
// consumer's), and returns when it is due. ok is false for a message
// that does not carry the headers (not written by a consumer: it is
// handed over as it is).
func restore(m *Message) (due time.Time, ok bool) {
	var topic, group string
	var queue, offset uint64
	var attempts int64
	var dueMs int64
	var seen int
	user := m.Headers[:0:0]
	for _, h := range m.Headers {
		var err error
		switch h.Key {
		case HeaderOriginTopic:
			topic, seen = string(h.Value), seen+1
		case HeaderOriginGroup:
			group = string(h.Value)
		case HeaderOriginQueue:
			queue, err = strconv.ParseUint(string(h.Value), 10, 32)
			seen++
		case HeaderOriginOffset:
			offset, err = strconv.ParseUint(string(h.Value), 10, 64)
			seen++
		case HeaderAttempts:
			attempts, err = strconv.ParseInt(string(h.Value), 10, 32)
			seen++
		case HeaderDue:
			dueMs, err = strconv.ParseInt(string(h.Value), 10, 64)
		case HeaderError:
		default:
			user = append(user, h)
		}
		if err != nil {
			return time.Time{}, false
		}
	}
	if seen != 4 || attempts < 1 {
		return time.Time{}, false
	}
	m.redo = &redelivery{count: int(attempts), at: m.Offset}
	m.Topic, m.Group, m.Queue, m.Offset, m.Headers = topic, group, uint32(queue), offset, user
	if dueMs > 0 {
		due = time.UnixMilli(dueMs)
	}
	return due, true
}
