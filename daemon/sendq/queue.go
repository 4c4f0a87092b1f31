// Package sendq is the broker's bounded send queue with fast failure
// (incident 001, broker side).
//
// Produce requests wait here, in arrival order, for the log. When the log
// stalls (a slow disk, a stalled follower under synchronous replication, a
// GC pause), requests must not wait out their client's whole deadline on
// this broker: a janitor checks the head of the queue every CheckEvery and
// fails every request that has waited longer than MaxWait with the
// retryable BUSY code, naming the real wait and the queue depth, so that
// the client retries on another broker while its deadline still allows. A
// full queue fails new requests at once, the same way.
package sendq

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// Options configure a Queue.
type Options struct {
	// Depth bounds the waiting requests (default 10,000).
	Depth int
	// MaxWait is how long a request may wait before it fails with BUSY
	// (default 200ms).
	MaxWait time.Duration
	// CheckEvery is the janitor's period (default 10ms); 0 < CheckEvery.
	CheckEvery time.Duration
	// Now is the clock (default time.Now); tests drive it.
	Now func() time.Time
	// NoJanitor leaves expiry to explicit Expire calls (tests).
	NoJanitor bool
}

// Request is one produce waiting for the log.
type Request struct {
	// Run hands the request to the log. It runs on the queue's worker
	// goroutine, one request at a time, in order; it may block while the
	// log is stalled.
	Run func()
	// Fail reports a fast failure; it runs instead of Run, on the janitor's
	// goroutine or the submitter's, and must not block.
	Fail func(*wire.Error)

	enqueued time.Time
}

// ErrClosed is returned by Submit after Close.
var ErrClosed = errors.New("sendq: closed")

// Queue is a FIFO of requests with a worker and a janitor.
type Queue struct {
	opts Options

	mu struct {
		sync.Mutex
		items  []*Request // ring buffer
		head   int
		n      int
		closed bool
	}
	ready chan struct{} // a request is waiting (capacity 1)
	stop  chan struct{}
	wg    sync.WaitGroup
}

// New starts a queue.
func New(opts Options) *Queue {
	if opts.Depth <= 0 {
		opts.Depth = 10000
	}
	if opts.MaxWait <= 0 {
		opts.MaxWait = 200 * time.Millisecond
	}
	if opts.CheckEvery <= 0 {
		opts.CheckEvery = 10 * time.Millisecond
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	q := &Queue{opts: opts, ready: make(chan struct{}, 1), stop: make(chan struct{})}
	q.mu.items = make([]*Request, opts.Depth)
	q.wg.Add(1)
	go q.worker()
	if !opts.NoJanitor {
		q.wg.Add(1)
		go q.janitor()
	}
	return q
}

// Submit queues r, or fails it at once with BUSY when the queue is full.
func (q *Queue) Submit(r *Request) error {
	q.mu.Lock()
	if q.mu.closed {
		q.mu.Unlock()
		return ErrClosed
	}
	if q.mu.n == len(q.mu.items) {
		depth := q.mu.n
		q.mu.Unlock()
		r.Fail(&wire.Error{Code: wire.CodeBusy, Message: fmt.Sprintf("send queue full, size of queue: %d", depth)})
		return nil
	}
	r.enqueued = q.opts.Now()
	q.mu.items[(q.mu.head+q.mu.n)%len(q.mu.items)] = r
	q.mu.n++
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
	return nil
}

// Len is the number of waiting requests.
func (q *Queue) Len() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	return q.mu.n
}

func (q *Queue) popLocked() *Request {
	r := q.mu.items[q.mu.head]
	q.mu.items[q.mu.head] = nil
	q.mu.head = (q.mu.head + 1) % len(q.mu.items)
	q.mu.n--
	return r
}

func (q *Queue) worker() {
	defer q.wg.Done()
	for {
		q.mu.Lock()
		if q.mu.n == 0 {
			q.mu.Unlock()
			select {
			case <-q.ready:
				continue
			case <-q.stop:
				return
			}
		}
		r := q.popLocked()
		q.mu.Unlock()
		r.Run()
	}
}

func (q *Queue) janitor() {
	defer q.wg.Done()
	t := time.NewTicker(q.opts.CheckEvery)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			q.Expire()
		case <-q.stop:
			return
		}
	}
}

// Expire fails, with BUSY, every request at the head that has waited
// longer than MaxWait, and returns how many. The janitor calls it every
// CheckEvery.
func (q *Queue) Expire() int {
	now := q.opts.Now()
	var expired []*Request
	var waits []time.Duration
	q.mu.Lock()
	depth := q.mu.n
	for q.mu.n > 0 {
		r := q.mu.items[q.mu.head]
		wait := now.Sub(r.enqueued)
		if wait <= q.opts.MaxWait {
			break
		}
		expired = append(expired, q.popLocked())
		waits = append(waits, wait)
	}
	q.mu.Unlock()
	for i, r := range expired {
		r.Fail(&wire.Error{Code: wire.CodeBusy, Message: fmt.Sprintf(
			"broker busy: waited %dms in the send queue (limit %dms), size of queue: %d",
			waits[i].Milliseconds(), q.opts.MaxWait.Milliseconds(), depth)})
	}
	return len(expired)
}

// Close stops the worker and the janitor and fails what still waits with
// STOPPING (retryable: another broker can take it). A Run in progress is
// waited for.
func (q *Queue) Close() {
	q.mu.Lock()
	if q.mu.closed {
		q.mu.Unlock()
		return
	}
	q.mu.closed = true
	var left []*Request
	for q.mu.n > 0 {
		left = append(left, q.popLocked())
	}
	q.mu.Unlock()
	close(q.stop)
	q.wg.Wait()
	for _, r := range left {
		r.Fail(&wire.Error{Code: wire.CodeStopping, Message: "broker stopping"})
	}
}
