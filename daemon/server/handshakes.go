package server

import (
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quivermq/quiver/sdk/wire"
)

// handshakes counts connections that closed before a session was
// established, per source (remote IP and client id), and logs at most one
// line per source per logEvery however many there are (incident 004: a
// client reconnecting in a tight loop must not grow the log without bound).
type handshakes struct {
	logger   *slog.Logger
	accepted atomic.Int64
	failed   prometheus.Counter // quiver_handshakes_failed_total (nil without a registry)
	mu       sync.Mutex
	m        map[hsKey]*hsEntry
	now      func() time.Time
}

type hsKey struct{ source, clientID string }

type hsEntry struct {
	count      int64
	minute     time.Time // start of the current one-minute window
	inMinute   int64
	last       time.Time
	lastReason string
	logged     time.Time // last log line
	unlogged   int64     // failures since that line
}

const (
	logEvery   = time.Minute
	maxSources = 1024 // entries kept; the oldest is dropped past it
)

func (h *handshakes) init(logger *slog.Logger) {
	h.logger = logger
	h.m = map[hsKey]*hsEntry{}
	if h.now == nil {
		h.now = time.Now
	}
}

func (h *handshakes) record(source, clientID, reason string) {
	now := h.now()
	h.mu.Lock()
	k := hsKey{source, clientID}
	e := h.m[k]
	if e == nil {
		if len(h.m) >= maxSources {
			h.evictOldestLocked()
		}
		e = &hsEntry{minute: now}
		h.m[k] = e
	}
	e.count++
	if h.failed != nil {
		h.failed.Inc()
	}
	if now.Sub(e.minute) >= time.Minute {
		e.minute, e.inMinute = now, 0
	}
	e.inMinute++
	e.last, e.lastReason = now, reason
	e.unlogged++
	var n, total int64
	logNow := e.logged.IsZero() || now.Sub(e.logged) >= logEvery
	if logNow {
		n, total = e.unlogged, e.count
		e.logged, e.unlogged = now, 0
	}
	h.mu.Unlock()
	if logNow {
		h.logger.Warn("connections closed before a session was established",
			"source", source, "client_id", clientID, "since_last_line", n, "total", total, "last_reason", reason,
			"next_line_in", logEvery)
	}
}

func (h *handshakes) evictOldestLocked() {
	evictOldest(h.m, func(e *hsEntry) time.Time { return e.last })
}

// evictOldest removes the entry of m whose last time is the oldest.
func evictOldest[K comparable, E any](m map[K]*E, last func(*E) time.Time) {
	var oldest K
	var t time.Time
	for k, e := range m {
		if l := last(e); t.IsZero() || l.Before(t) {
			oldest, t = k, l
		}
	}
	delete(m, oldest)
}

func (h *handshakes) report() []wire.HandshakeFail {
	now := h.now()
	h.mu.Lock()
	out := make([]wire.HandshakeFail, 0, len(h.m))
	for k, e := range h.m {
		perMin := e.inMinute
		if now.Sub(e.minute) >= time.Minute {
			perMin = 0
		}
		out = append(out, wire.HandshakeFail{Source: k.source, ClientID: k.clientID, Count: e.count, PerMinute: perMin,
			Last: e.last.UTC().Format(time.RFC3339Nano), LastReason: e.lastReason})
	}
	h.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Count > out[j].Count })
	return out
}
