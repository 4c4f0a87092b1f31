package log

import (
	"errors"
	"fmt"
	"sync"
	"time"
)

// The intake queue and fast failure (incident 001, broker side).
//
// Appends wait here, in arrival order, until the flusher takes them into a
// group commit. This queue is the only place where an append waits before
// anything of it is written, so it is where the broker may still refuse it
// safely: an append failed here was never laid out, so a client that
// retries it on another broker creates no duplicate.
//
// When the disk stalls (a slow device, a long fdatasync, a GC pause), the
// flusher stops taking appends and they age in the queue. With
// MaxQueueWait set, a janitor looks at the head of the queue every
// QueueCheck and fails every append that has waited longer with a
// BusyError, naming the real wait and the depth, so that the client retries
// elsewhere within its deadline instead of waiting out the stall here. An
// append that finds the queue full (QueueDepth appends or QueueBytes bytes)
// fails the same way at once: the log never blocks an appender and never
// holds more than its bounds.
//
// The appends of a commit already handed to the engine are not failed:
// their outcome is whatever the disk does, and they are acknowledged (or
// failed with ErrFailed) when it is known.

// ErrBusy is matched (errors.Is) by every BusyError.
var ErrBusy = errors.New("log: busy")

// BusyError fails an append that waited too long in the intake queue, or
// found it full. It is retryable: nothing of the append was written.
type BusyError struct {
	Waited time.Duration // how long the append waited (0 when the queue was full)
	Limit  time.Duration // MaxQueueWait
	Depth  int           // appends waiting when it failed
	Full   bool          // the queue was full on arrival
}

func (e *BusyError) Error() string {
	if e.Full {
		return fmt.Sprintf("log: busy: the send queue is full, size of queue: %d", e.Depth)
	}
	return fmt.Sprintf("log: busy: waited %dms in the send queue (limit %dms), size of queue: %d",
		e.Waited.Milliseconds(), e.Limit.Milliseconds(), e.Depth)
}

// Is makes errors.Is(err, ErrBusy) true.
func (e *BusyError) Is(target error) bool { return target == ErrBusy }

// intake is a FIFO ring of requests. Appenders push; the flusher pops
// batches; the janitor expires the head.
type intake struct {
	mu struct {
		sync.Mutex
		ring  []*request
		head  int
		n     int
		bytes int
	}
	maxBytes int
	ready    chan struct{} // capacity 1: something was pushed
	epoch    time.Time     // enqueue times are monotonic offsets from it
}

func newIntake(depth, maxBytes int) *intake {
	in := &intake{maxBytes: maxBytes, ready: make(chan struct{}, 1), epoch: time.Now()}
	in.mu.ring = make([]*request, depth)
	return in
}

func (in *intake) now() time.Duration { return time.Since(in.epoch) }

// push queues r, or returns a BusyError when the queue is full.
func (in *intake) push(r *request, size int) error {
	r.size = size
	r.enqueued = in.now()
	in.mu.Lock()
	if in.mu.n == len(in.mu.ring) || (in.mu.n > 0 && in.mu.bytes+size > in.maxBytes) {
		depth := in.mu.n
		in.mu.Unlock()
		return &BusyError{Depth: depth, Full: true}
	}
	in.mu.ring[(in.mu.head+in.mu.n)%len(in.mu.ring)] = r
	in.mu.n++
	in.mu.bytes += size
	in.mu.Unlock()
	select {
	case in.ready <- struct{}{}:
	default:
	}
	return nil
}

func (in *intake) popLocked() *request {
	r := in.mu.ring[in.mu.head]
	in.mu.ring[in.mu.head] = nil
	in.mu.head = (in.mu.head + 1) % len(in.mu.ring)
	in.mu.n--
	in.mu.bytes -= r.size
	return r
}

// pop appends waiting requests to b while bytes stays under maxBytes (the
// first request of an empty batch is always taken, whatever its size).
func (in *intake) pop(b []*request, bytes, maxBytes int) ([]*request, int) {
	in.mu.Lock()
	for in.mu.n > 0 {
		next := in.mu.ring[in.mu.head].size
		if len(b) > 0 && bytes+next > maxBytes {
			break
		}
		b = append(b, in.popLocked())
		bytes += next
	}
	in.mu.Unlock()
	return b, bytes
}

// len is the number of waiting requests.
func (in *intake) len() int {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.mu.n
}

// expire removes every request at the head that has waited longer than
// limit and returns them with the error each must fail with.
func (in *intake) expire(limit time.Duration, dst []*request) []*request {
	now := in.now()
	in.mu.Lock()
	depth := in.mu.n
	for in.mu.n > 0 {
		r := in.mu.ring[in.mu.head]
		waited := now - r.enqueued
		if waited <= limit {
			break
		}
		in.popLocked()
		r.err = &BusyError{Waited: waited, Limit: limit, Depth: depth}
		dst = append(dst, r)
	}
	in.mu.Unlock()
	return dst
}

// janitor fails the appends that waited past MaxQueueWait.
func (l *Log) janitor() {
	defer l.bg.Done()
	t := time.NewTicker(l.opts.QueueCheck)
	defer t.Stop()
	var expired []*request
	for {
		select {
		case <-t.C:
			expired = l.in.expire(l.opts.MaxQueueWait, expired[:0])
			if len(expired) > 0 {
				l.stats.busy.Add(int64(len(expired)))
			}
			for i, r := range expired {
				r.finish()
				expired[i] = nil
			}
		case <-l.stopBg:
			return
		}
	}
}
