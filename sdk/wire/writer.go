package wire

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"
)

// ErrWriterClosed is returned by a Writer used after Close or after its
// stream failed.
var ErrWriterClosed = errors.New("wire: writer closed")

// Writer coalesces the frames of one stream. Any goroutine appends frames
// (Begin, then the payload, then End). When the stream has been quiet for
// a while, nothing is buffered, and the stream can take the frame at once
// without blocking (a QUIC stream's TryWriteAll), End hands it over
// directly, on the caller's goroutine: a lone request or acknowledgement
// costs no goroutine switch. In a burst, frames are buffered and one
// goroutine (Run) writes whatever has accumulated in one Write: quic-go
// copies frames queued with TryWriteAll into a growing buffer, which costs
// more than one large Write once several are queued. Frames reach the
// stream in End order.
//
// Begin/End never block on the stream. Callers that may produce a lot
// (fetch responses) call WaitRoom first, which blocks while more than the
// limit is buffered.
type Writer struct {
	dst     io.Writer
	try     tryWriter // dst's non-blocking write, if it has one
	mu      sync.Mutex
	buf     []byte
	spare   []byte
	writing bool      // Run is writing a batch: End must buffer, to keep order
	direct  time.Time // the last frame handed over directly
	err     error     // sticky: the stream failed, or the writer was closed
	wake    chan struct{}
	room    chan struct{} // made by WaitRoom, closed by Run after a write
	limit   int
	closed  bool
}

// quiet is how long a stream must have had no direct frame for the next
// one to go directly.
const quiet = 50 * time.Microsecond

// tryWriter is a stream that can queue bytes without blocking, or refuse
// them all (quic-go's SendStream.TryWriteAll).
type tryWriter interface {
	TryWriteAll([]byte) error
}

// NewWriter returns a Writer for dst; WaitRoom blocks while more than limit
// bytes are buffered.
func NewWriter(dst io.Writer, limit int) *Writer {
	w := &Writer{dst: dst, wake: make(chan struct{}, 1), limit: limit,
		buf: make([]byte, 0, 64<<10), spare: make([]byte, 0, 64<<10)}
	w.try, _ = dst.(tryWriter)
	return w
}

// Begin locks the writer and starts a frame; append the payload to the
// returned slice and pass it to End. Nothing else may be called in between.
func (w *Writer) Begin(h Header) ([]byte, int) {
	w.mu.Lock()
	return BeginFrame(w.buf, h)
}

// End finishes the frame started by Begin and unlocks. It returns the
// writer's error: a frame ended after the writer failed is dropped.
func (w *Writer) End(b []byte, start int) error {
	if w.err != nil {
		w.buf = b[:start]
		w.mu.Unlock()
		return w.err
	}
	w.buf = EndFrame(b, start)
	if start == 0 && !w.writing && w.try != nil {
		if now := time.Now(); now.Sub(w.direct) > quiet && w.try.TryWriteAll(w.buf) == nil {
			w.buf = w.buf[:0] // handed over directly
			w.direct = now
			w.mu.Unlock()
			return nil
		}
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
	return nil
}

// Frame appends a frame whose payload is already encoded.
func (w *Writer) Frame(h Header, payload []byte) error {
	b, start := w.Begin(h)
	return w.End(append(b, payload...), start)
}

// WaitRoom blocks while more than the limit is buffered, until ctx is done
// or the writer fails.
func (w *Writer) WaitRoom(ctx context.Context) error {
	for {
		w.mu.Lock()
		n, err := len(w.buf), w.err
		if err != nil || n <= w.limit {
			w.mu.Unlock()
			return err
		}
		if w.room == nil {
			w.room = make(chan struct{})
		}
		room := w.room
		w.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Run writes the buffered frames to the stream until Close (after writing
// what was buffered) or a write error, which it returns and which fails
// every later Begin/End.
func (w *Writer) Run() error {
	for {
		w.mu.Lock()
		for len(w.buf) == 0 && !w.closed {
			w.mu.Unlock()
			<-w.wake
			w.mu.Lock()
		}
		if len(w.buf) == 0 {
			w.mu.Unlock()
			return nil
		}
		out := w.buf
		w.buf = w.spare[:0]
		w.spare = nil
		w.writing = true
		room := w.room
		w.room = nil
		w.mu.Unlock()
		if room != nil {
			close(room)
		}

		_, err := w.dst.Write(out)
		if cap(out) > 4<<20 {
			out = make([]byte, 0, 64<<10) // do not keep a burst's buffer forever
		}
		w.mu.Lock()
		w.spare = out[:0]
		w.writing = false
		if err != nil {
			w.err = err
			w.buf = w.buf[:0]
			room = w.room
			w.room = nil
			w.mu.Unlock()
			if room != nil {
				close(room)
			}
			return err
		}
		w.mu.Unlock()
	}
}

// Close makes Run return once the buffered frames are written; later
// frames fail with ErrWriterClosed.
func (w *Writer) Close() {
	w.mu.Lock()
	w.closed = true
	if w.err == nil {
		w.err = ErrWriterClosed
	}
	w.mu.Unlock()
	select {
	case w.wake <- struct{}{}:
	default:
	}
}
