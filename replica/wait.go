package replica

import (
	"fmt"
	"slices"
	"sync"
	"time"
)

// waiter is a send that waits for k followers to have the log durable up
// to end (synchronous replication).
type waiter struct {
	end      int64
	k        int
	deadline time.Time
	done     func(error)
}

// waitQueue holds the waiting sends in log order (by end: a send with
// async durability can complete its append before an earlier sync one).
// Once failed (the leader stops), it fails every later add at once.
type waitQueue struct {
	mu     sync.Mutex
	q      []*waiter
	closed error
}

func (w *waitQueue) add(x *waiter) {
	w.mu.Lock()
	if err := w.closed; err != nil {
		w.mu.Unlock()
		x.done(err)
		return
	}
	i := len(w.q)
	for i > 0 && w.q[i-1].end > x.end {
		i--
	}
	w.q = slices.Insert(w.q, i, x)
	w.mu.Unlock()
}

// release completes the waiters at the head whose end the followers have.
func (w *waitQueue) release(commitPos func(k int) int64) {
	w.mu.Lock()
	if len(w.q) == 0 {
		w.mu.Unlock()
		return
	}
	var ready []*waiter
	k, pos := -1, int64(0)
	for len(w.q) > 0 {
		x := w.q[0]
		if x.k != k {
			k, pos = x.k, commitPos(x.k)
		}
		if x.end > pos {
			break
		}
		ready = append(ready, x)
		w.q[0] = nil
		w.q = w.q[1:]
	}
	w.mu.Unlock()
	for _, x := range ready {
		x.done(nil)
	}
}

// expire fails the waiters at the head whose deadline passed.
func (w *waitQueue) expire(now time.Time, inSync func() int) {
	w.mu.Lock()
	var late []*waiter
	for len(w.q) > 0 && now.After(w.q[0].deadline) {
		late = append(late, w.q[0])
		w.q[0] = nil
		w.q = w.q[1:]
	}
	w.mu.Unlock()
	if len(late) == 0 {
		return
	}
	n := inSync()
	for _, x := range late {
		x.done(fmt.Errorf("%w: %d needed, %d in sync, and they did not all acknowledge in time", ErrNotEnoughReplicas, x.k, n))
	}
}

func (w *waitQueue) failAll(err error) {
	w.mu.Lock()
	q := w.q
	w.q, w.closed = nil, err
	w.mu.Unlock()
	for _, x := range q {
		x.done(err)
	}
}
