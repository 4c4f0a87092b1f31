package sendq

import (
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quivermq/quiver/sdk/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// clock is a hand-driven time source.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// outcome records how each request ended.
type outcome struct {
	mu   sync.Mutex
	ran  []int
	errs map[int]*wire.Error
	done chan int
}

func newOutcome() *outcome { return &outcome{errs: map[int]*wire.Error{}, done: make(chan int, 100)} }

func (o *outcome) req(id int, run func()) *Request {
	return &Request{
		Run: func() {
			if run != nil {
				run()
			}
			o.mu.Lock()
			o.ran = append(o.ran, id)
			o.mu.Unlock()
			o.done <- id
		},
		Fail: func(e *wire.Error) {
			o.mu.Lock()
			o.errs[id] = e
			o.mu.Unlock()
			o.done <- id
		},
	}
}

// A stalled writer: requests behind it fail fast with a retryable BUSY that
// names the real wait and depth, instead of waiting out the client's deadline.
func TestStalledWriterFailsWaitersWithBusy(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	q := New(Options{MaxWait: 200 * time.Millisecond, Now: c.now, NoJanitor: true})
	defer q.Close()
	o := newOutcome()
	gate, started := make(chan struct{}), make(chan struct{})
	q.Submit(o.req(0, func() { close(started); <-gate })) // the stalled write
	<-started
	for id := 1; id <= 4; id++ {
		q.Submit(o.req(id, nil))
	}
	c.add(150 * time.Millisecond)
	if n := q.Expire(); n != 0 {
		t.Fatalf("expired %d requests before MaxWait", n)
	}
	c.add(100 * time.Millisecond)
	if n := q.Expire(); n != 4 {
		t.Fatalf("expired %d requests after 250ms, want 4", n)
	}
	for i := 0; i < 4; i++ {
		<-o.done
	}
	for id := 1; id <= 4; id++ {
		e := o.errs[id]
		if e == nil || e.Code != wire.CodeBusy || !e.Retryable() {
			t.Fatalf("request %d: %v, want retryable BUSY", id, e)
		}
		if !strings.Contains(e.Message, "waited 250ms") || !strings.Contains(e.Message, "size of queue: 4") {
			t.Fatalf("BUSY does not carry the wait and depth: %q", e.Message)
		}
	}
	close(gate)
	if id := <-o.done; id != 0 {
		t.Fatalf("request %d finished, want the stalled one", id)
	}
	q.Submit(o.req(5, nil))
	if id := <-o.done; id != 5 {
		t.Fatalf("the queue did not recover: %d", id)
	}
}

func TestFullQueueFailsAtOnce(t *testing.T) {
	q := New(Options{Depth: 2, NoJanitor: true})
	o := newOutcome()
	gate, started := make(chan struct{}), make(chan struct{})
	q.Submit(o.req(0, func() { close(started); <-gate }))
	<-started
	q.Submit(o.req(1, nil))
	q.Submit(o.req(2, nil))
	q.Submit(o.req(3, nil)) // over Depth
	if id := <-o.done; id != 3 || o.errs[3] == nil || o.errs[3].Code != wire.CodeBusy {
		t.Fatalf("request %d finished first (%v); want 3 to fail at once with BUSY", id, o.errs[3])
	}
	close(gate)
	for i := 0; i < 3; i++ {
		<-o.done
	}
	if len(o.ran) != 3 || o.ran[0] != 0 || o.ran[1] != 1 || o.ran[2] != 2 {
		t.Fatalf("ran %v, want 0 1 2 in order", o.ran)
	}
	q.Close()
}

func TestCloseFailsWaitersWithStopping(t *testing.T) {
	q := New(Options{NoJanitor: true})
	o := newOutcome()
	gate, started := make(chan struct{}), make(chan struct{})
	q.Submit(o.req(0, func() { close(started); <-gate }))
	<-started
	q.Submit(o.req(1, nil))
	go func() { close(gate) }()
	q.Close()
	if e := o.errs[1]; e == nil || e.Code != wire.CodeStopping || !e.Retryable() {
		t.Fatalf("waiting request at close: %v, want retryable STOPPING", e)
	}
	if err := q.Submit(o.req(2, nil)); err != ErrClosed {
		t.Fatalf("submit after close: %v", err)
	}
}

// The janitor runs by itself with the real clock.
func TestJanitorExpiresOnItsOwn(t *testing.T) {
	q := New(Options{MaxWait: 20 * time.Millisecond, CheckEvery: 5 * time.Millisecond})
	defer q.Close()
	o := newOutcome()
	gate, started := make(chan struct{}), make(chan struct{})
	q.Submit(o.req(0, func() { close(started); <-gate }))
	<-started
	q.Submit(o.req(1, nil))
	if id := <-o.done; id != 1 || o.errs[1] == nil || o.errs[1].Code != wire.CodeBusy {
		t.Fatalf("request %d: %v, want 1 to fail with BUSY", id, o.errs[1])
	}
	close(gate)
	<-o.done
}
