package sdk

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/sdk/internal/outbox"
	"github.com/quivermq/quiver/sdk/wire"
)

// WithOutbox keeps, in dir on local disk, every send that exhausted its
// retries (its deadline passed while every broker group that could take it
// was failing), and
// resends it in the background until a broker takes it. Such a send
// returns a nil error and a SendResult with Outboxed set: the message is
// durable on local disk (fsynced) instead of acknowledged by a broker.
// Incident 001's advice to applications, built in.
//
// Order per key holds: while the outbox holds a message with a key, later
// sends of that key (by the same producer) go to the outbox behind it, so
// a key's messages reach the broker in the order they were sent. The
// resender takes entries strictly oldest first, one at a time; an entry
// that cannot be delivered yet holds back the ones behind it.
//
// Errors that retrying cannot fix (message too large, invalid, not
// authorized, a cancelled context) are returned, never kept. An entry that
// a broker refuses for such a reason on resend is moved to
// dir/outbox.rejected and logged, not dropped. The outbox survives
// restarts: a producer opened on the same dir resends what the last one
// left. Only one producer may use a dir at a time (it is locked).
func WithOutbox(dir string) ProducerOpt { return func(c *producerConfig) { c.outboxDir = dir } }

// WithOutboxLimit bounds the outbox's pending bytes (default 1 GiB). A
// send that would pass it fails with its SendError and ErrOutboxFull.
func WithOutboxLimit(bytes int64) ProducerOpt {
	return func(c *producerConfig) { c.outboxMax = bytes }
}

// OutboxStats describes a producer's outbox (Producer.Outbox).
type OutboxStats struct {
	Dir      string
	Pending  int    // entries waiting to be resent, the oldest first
	Bytes    int64  // their size on disk
	Added    uint64 // entries this producer added
	Resent   uint64 // entries this producer's resender delivered
	Rejected uint64 // entries a broker refused for good (in outbox.rejected)
	// LastErr is the last resend failure, "" once a resend succeeded.
	LastErr string
}

var (
	// ErrOutboxFull is returned when an entry does not fit in the outbox's
	// byte limit (WithOutboxLimit). Nothing was written: the send is lost
	// unless the caller keeps it.
	ErrOutboxFull = outbox.ErrFull
	// ErrOutboxCorrupt is returned when the outbox's files hold damage that
	// a crash cannot explain. The error names the file and offset; the
	// files are left as they are, for inspection or repair.
	ErrOutboxCorrupt = outbox.ErrCorrupt
)

// errBehindKey marks a send that goes to the outbox without an attempt:
// an earlier message of its key is there.
var errBehindKey = errors.New("quiver: an earlier message of this key is in the outbox")

// resendBackoff spaces resends of an entry that failed: from 100 ms to 5 s,
// never less than half the step (the cluster is known to be failing).
var resendBackoff = backoffPolicy{hardBase: 100 * time.Millisecond, hardMax: 5 * time.Second}

// outboxState is a producer's outbox and its resender.
type outboxState struct {
	ob   *outbox.Outbox
	wake chan struct{} // an entry was added
	stop chan struct{} // closed by Close
	done chan struct{} // closed when the resender returned
	ctx  context.Context
	quit context.CancelFunc

	mu      sync.Mutex
	keys    map[string]int // pending entries per topic and key
	lastErr string

	added, resent, rejected atomic.Uint64
}

func outboxKey(topic string, key []byte) string { return topic + "\x00" + string(key) }

func openOutboxState(dir string, limit int64) (*outboxState, error) {
	ob, err := outbox.Open(dir, limit)
	if err != nil {
		return nil, err
	}
	o := &outboxState{ob: ob, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		keys: make(map[string]int)}
	o.ctx, o.quit = context.WithCancel(context.Background())
	err = ob.Scan(func(p *wire.Produce) {
		if len(p.Key) > 0 {
			o.keys[outboxKey(p.Topic, p.Key)]++
		}
	})
	if err != nil {
		ob.Close()
		return nil, err
	}
	return o, nil
}

func (o *outboxState) keyPending(topic string, key []byte) bool {
	if len(key) == 0 {
		return false
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	return o.keys[outboxKey(topic, key)] > 0
}

// add keeps req durably and wakes the resender.
func (o *outboxState) add(req *wire.Produce) error {
	if err := o.ob.Add(req); err != nil {
		if errors.Is(err, outbox.ErrClosed) {
			return fmt.Errorf("%w: %w", ErrClosed, err)
		}
		return err
	}
	if len(req.Key) > 0 {
		o.mu.Lock()
		o.keys[outboxKey(req.Topic, req.Key)]++
		o.mu.Unlock()
	}
	o.added.Add(1)
	select {
	case o.wake <- struct{}{}:
	default:
	}
	return nil
}

func (o *outboxState) delivered(req *wire.Produce, errText string) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if len(req.Key) > 0 {
		k := outboxKey(req.Topic, req.Key)
		if o.keys[k]--; o.keys[k] <= 0 {
			delete(o.keys, k)
		}
	}
	o.lastErr = errText
}

func (o *outboxState) setErr(err error) {
	o.mu.Lock()
	o.lastErr = err.Error()
	o.mu.Unlock()
}

// outboxable reports whether a failed send is one the outbox keeps: its
// retries ran out (or the producer closed) on failures that time may fix.
func outboxable(err error) bool {
	var se *SendError
	if errors.As(err, &se) {
		err = se.Err
	}
	return Retryable(err) || errors.Is(err, ErrClosed) || errors.Is(err, context.DeadlineExceeded)
}

// settle turns a send that failed for good into an outboxed one, when the
// producer has an outbox. It runs on the sender's goroutine (Send) or the
// callback goroutine (SendAsync), never on a connection's reader: it
// fsyncs.
func (p *Producer) settle(op *sendOp) {
	o := p.out
	if o == nil || op.fromOutbox || op.err == nil || op.deliverAt != 0 {
		return // (the outbox keeps no delivery time: a delayed send is not outboxed)
	}
	behind := errors.Is(op.err, errBehindKey)
	if !behind && !outboxable(op.err) {
		return
	}
	if err := o.add(&op.req); err != nil {
		if behind {
			op.err = fmt.Errorf("quiver: send to %s: %w, and the outbox did not take this one: %w", op.req.Topic, errBehindKey, err)
		} else {
			op.err = fmt.Errorf("%w (and the outbox did not take it: %w)", op.err, err)
		}
		return
	}
	op.res = SendResult{Topic: op.req.Topic, Count: int(op.req.Count), Outboxed: true, Attempts: len(op.attempts)}
	if len(op.attempts) > 0 {
		op.res.Failed = append([]Attempt(nil), op.attempts...)
	}
	op.err = nil
}

// resender delivers the outbox's entries, oldest first, until Close.
func (p *Producer) resender() {
	o := p.out
	defer close(o.done)
	failures := 0
	for {
		if failures > 0 {
			t := time.NewTimer(resendBackoff.delay(failures, true))
			select {
			case <-t.C:
			case <-o.stop:
				t.Stop()
				return
			}
		}
		id, req, ok, err := o.ob.Peek()
		if errors.Is(err, ErrClosed) {
			return
		}
		if err != nil {
			// Damage found on read: nothing later can be delivered in
			// order. Say so, and keep trying (an operator may fix it).
			failures++
			p.cl.logger.Error("outbox: cannot read the next entry", "dir", o.ob.Dir(), "err", err)
			o.setErr(err)
			continue
		}
		if !ok {
			select {
			case <-o.wake:
				continue
			case <-o.stop:
				return
			}
		}
		op, err := p.newOpReq(o.ctx, *req)
		if err != nil {
			return // closed
		}
		op.fromOutbox = true
		p.sem <- struct{}{}
		op.attempt()
		<-op.done
		serr := op.err
		p.release(op)
		switch {
		case serr == nil:
			failures = 0
			if err := o.ob.Ack(id); errors.Is(err, outbox.ErrNotReclaimed) {
				p.cl.logger.Warn("outbox: delivered and marked an entry, but could not free space", "dir", o.ob.Dir(), "err", err)
			} else if err != nil {
				// Delivered but maybe not acked on disk: a restart may
				// send it again (at least once, as for any send).
				p.cl.logger.Error("outbox: delivered an entry but could not mark it", "dir", o.ob.Dir(), "err", err)
				if errors.Is(err, ErrClosed) {
					return
				}
				failures++
				continue
			}
			o.resent.Add(1)
			o.delivered(req, "")
		case o.ctx.Err() != nil || errors.Is(serr, ErrClosed):
			return
		case outboxable(serr):
			failures++
			o.setErr(serr)
		default:
			failures = 0
			p.cl.logger.Error("outbox: a broker refused an entry for good; moved to outbox.rejected",
				"dir", o.ob.Dir(), "topic", req.Topic, "err", serr)
			if err := o.ob.Reject(id, req); errors.Is(err, outbox.ErrNotReclaimed) {
				p.cl.logger.Warn("outbox: moved a refused entry aside, but could not free space", "dir", o.ob.Dir(), "err", err)
			} else if err != nil {
				p.cl.logger.Error("outbox: could not move a refused entry aside", "dir", o.ob.Dir(), "err", err)
				failures++
				continue
			}
			o.rejected.Add(1)
			o.delivered(req, serr.Error())
		}
	}
}

// Outbox describes the producer's outbox (the zero value without
// WithOutbox).
func (p *Producer) Outbox() OutboxStats {
	o := p.out
	if o == nil {
		return OutboxStats{}
	}
	n, b := o.ob.Pending()
	o.mu.Lock()
	last := o.lastErr
	o.mu.Unlock()
	return OutboxStats{Dir: o.ob.Dir(), Pending: n, Bytes: b, Added: o.added.Load(), Resent: o.resent.Load(),
		Rejected: o.rejected.Load(), LastErr: last}
}
