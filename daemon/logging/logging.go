// Package logging gives quiverd bounded logs (incident 004's 6 GB log):
// a slog handler that lets each cause (a message text) through at most
// Burst times per Interval and then reports how many lines it held back,
// and a log file that is rotated by size, keeping a fixed number of old
// files.
package logging

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"time"
)

// Limit is a per-cause rate limit.
type Limit struct {
	Burst    int           // lines per cause per Interval (default 20)
	Interval time.Duration // default 1 minute
	Causes   int           // causes tracked at once (default 1024)
}

// RateLimited wraps next so that no single cause floods the log.
func RateLimited(next slog.Handler, l Limit) slog.Handler {
	if l.Burst <= 0 {
		l.Burst = 20
	}
	if l.Interval <= 0 {
		l.Interval = time.Minute
	}
	if l.Causes <= 0 {
		l.Causes = 1024
	}
	return &limiter{next: next, state: &limitState{l: l, m: map[string]*cause{}, now: time.Now}}
}

type limiter struct {
	next  slog.Handler
	state *limitState
}

type limitState struct {
	l   Limit
	mu  sync.Mutex
	m   map[string]*cause
	now func() time.Time
}

type cause struct {
	window     time.Time
	n          int
	suppressed int
}

func (h *limiter) Enabled(ctx context.Context, lv slog.Level) bool { return h.next.Enabled(ctx, lv) }

func (h *limiter) Handle(ctx context.Context, r slog.Record) error {
	s := h.state
	now := s.now()
	s.mu.Lock()
	c := s.m[r.Message]
	if c == nil {
		if len(s.m) >= s.l.Causes {
			for k, v := range s.m { // forget a cause whose window is over
				if now.Sub(v.window) >= s.l.Interval {
					delete(s.m, k)
				}
			}
		}
		if len(s.m) >= s.l.Causes {
			s.mu.Unlock()
			return nil // too many distinct causes at once: drop
		}
		c = &cause{window: now}
		s.m[r.Message] = c
	}
	held := 0
	if now.Sub(c.window) >= s.l.Interval {
		held = c.suppressed
		c.window, c.n, c.suppressed = now, 0, 0
	}
	if c.n >= s.l.Burst {
		c.suppressed++
		s.mu.Unlock()
		return nil
	}
	c.n++
	if c.n == s.l.Burst {
		r.AddAttrs(slog.String("rate_limit", fmt.Sprintf("further lines of this message are held back for %v", s.l.Interval)))
	}
	s.mu.Unlock()
	if held > 0 {
		r.AddAttrs(slog.Int("held_back", held))
	}
	return h.next.Handle(ctx, r)
}

func (h *limiter) WithAttrs(as []slog.Attr) slog.Handler {
	return &limiter{next: h.next.WithAttrs(as), state: h.state}
}

func (h *limiter) WithGroup(name string) slog.Handler {
	return &limiter{next: h.next.WithGroup(name), state: h.state}
}

// RotatingFile is an io.Writer that appends to path and, when the file
// would exceed maxBytes, renames it to path.1 (path.1 to path.2, ...,
// keeping keep old files) and starts a new one.
type RotatingFile struct {
	path     string
	maxBytes int64
	keep     int
	mu       sync.Mutex
	f        *os.File
	size     int64
}

// OpenRotating opens (appending) or creates path.
func OpenRotating(path string, maxBytes int64, keep int) (*RotatingFile, error) {
	r := &RotatingFile{path: path, maxBytes: maxBytes, keep: keep}
	if err := r.open(); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *RotatingFile) open() error {
	f, err := os.OpenFile(r.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return err
	}
	r.f, r.size = f, st.Size()
	return nil
}

func (r *RotatingFile) Write(p []byte) (int, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return 0, os.ErrClosed
	}
	if r.size > 0 && r.size+int64(len(p)) > r.maxBytes {
		if err := r.rotate(); err != nil {
			return 0, err
		}
	}
	n, err := r.f.Write(p)
	r.size += int64(n)
	return n, err
}

func (r *RotatingFile) rotate() error {
	r.f.Close()
	r.f = nil
	for i := r.keep - 1; i >= 1; i-- {
		os.Rename(fmt.Sprintf("%s.%d", r.path, i), fmt.Sprintf("%s.%d", r.path, i+1))
	}
	if r.keep > 0 {
		os.Rename(r.path, r.path+".1")
	} else {
		os.Remove(r.path)
	}
	return r.open()
}

// Close closes the file.
func (r *RotatingFile) Close() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.f == nil {
		return nil
	}
	err := r.f.Close()
	r.f = nil
	return err
}

var _ io.WriteCloser = (*RotatingFile)(nil)
