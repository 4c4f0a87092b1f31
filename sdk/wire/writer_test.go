package wire

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// stream is a fake QUIC stream: Write blocks while gate is held, and
// TryWriteAll refuses whenever refuse says so.
type stream struct {
	mu      sync.Mutex
	buf     bytes.Buffer
	gate    sync.Mutex
	entered chan struct{} // if set, signalled when a Write begins
	refuse  func() bool
	direct  int
}

func (s *stream) Write(p []byte) (int, error) {
	if s.entered != nil {
		s.entered <- struct{}{}
	}
	s.gate.Lock()
	defer s.gate.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.buf.Write(p)
}

func (s *stream) TryWriteAll(p []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.refuse != nil && s.refuse() {
		return errors.New("would block")
	}
	s.direct++
	s.buf.Write(p)
	return nil
}

func frames(t *testing.T, b []byte) []uint64 {
	t.Helper()
	r := bytes.NewReader(b)
	var ids []uint64
	var buf []byte
	for r.Len() > 0 {
		h, _, nb, err := ReadFrame(r, buf)
		buf = nb
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, h.RequestID)
	}
	return ids
}

// Frames reach the stream in End order whether they go directly or through
// Run, and Close writes what was buffered before Run returns.
func TestWriterKeepsOrder(t *testing.T) {
	n := 0
	s := &stream{refuse: func() bool { n++; return n%3 == 0 }} // every third direct write refused
	w := NewWriter(s, 1<<20)
	done := make(chan error)
	go func() { done <- w.Run() }()
	for id := uint64(1); id <= 500; id++ {
		b, start := w.Begin(Header{Type: TypeProduce, RequestID: id})
		if err := w.End(append(b, "payload"...), start); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	ids := frames(t, s.buf.Bytes())
	if len(ids) != 500 {
		t.Fatalf("%d frames written, want 500", len(ids))
	}
	for i, id := range ids {
		if id != uint64(i+1) {
			t.Fatalf("frame %d has id %d: out of order", i, id)
		}
	}
	if s.direct == 0 {
		t.Fatal("no frame went directly to the stream")
	}
	if err := w.Frame(Header{Type: TypeOK}, nil); !errors.Is(err, ErrWriterClosed) {
		t.Fatalf("frame after close: %v", err)
	}
}

// While the stream is slow, frames are buffered, WaitRoom blocks past the
// limit and returns once Run has written.
func TestWriterWaitRoom(t *testing.T) {
	s := &stream{refuse: func() bool { return true }, entered: make(chan struct{}, 10)}
	w := NewWriter(s, 100)
	s.gate.Lock() // the stream takes nothing
	done := make(chan error)
	go func() { done <- w.Run() }()
	w.Frame(Header{Type: TypeOK, RequestID: 1}, make([]byte, 200))
	<-s.entered // Run took it and is blocked in Write
	for i := 0; i < 3; i++ {
		w.Frame(Header{Type: TypeOK, RequestID: uint64(2 + i)}, make([]byte, 200))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := w.WaitRoom(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitRoom with 600 bytes buffered over a limit of 100: %v", err)
	}
	s.gate.Unlock()
	if err := w.WaitRoom(context.Background()); err != nil {
		t.Fatal(err)
	}
	w.Close()
	<-done
	if ids := frames(t, s.buf.Bytes()); len(ids) != 4 {
		t.Fatalf("%d frames, want 4", len(ids))
	}
}
