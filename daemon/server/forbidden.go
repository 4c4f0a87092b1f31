package server

import (
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/quivermq/quiver/daemon/acl"
	"github.com/quivermq/quiver/sdk/wire"
)

// forbidden counts requests refused FORBIDDEN per principal and right, in
// /metrics and /status, and logs at most one line per principal and right
// a minute however many there are (incident 004: a client refused in a
// loop must not flood the log).
type forbidden struct {
	logger  *slog.Logger
	counter *prometheus.CounterVec
	mu      sync.Mutex
	m       map[forbiddenKey]*forbiddenEntry
	now     func() time.Time
}

type forbiddenKey struct {
	principal string
	right     acl.Right
}

type forbiddenEntry struct {
	count    int64
	last     time.Time
	reason   string
	logged   time.Time
	unlogged int64
}

// maxForbidden bounds the entries kept (principals removed by a reload
// leave theirs); the oldest goes past it.
const maxForbidden = 1024

func (f *forbidden) init(logger *slog.Logger, reg *prometheus.Registry) {
	f.logger, f.m, f.now = logger, map[forbiddenKey]*forbiddenEntry{}, time.Now
	f.counter = prometheus.NewCounterVec(prometheus.CounterOpts{Name: "quiver_forbidden_total",
		Help: "Requests refused FORBIDDEN, by principal and the right it lacked."}, []string{"principal", "right"})
	if reg != nil {
		reg.MustRegister(f.counter)
	}
}

func (f *forbidden) record(principal string, r acl.Right, reason string) {
	f.counter.WithLabelValues(principal, r.String()).Inc()
	now := f.now()
	k := forbiddenKey{principal, r}
	f.mu.Lock()
	e := f.m[k]
	if e == nil {
		if len(f.m) >= maxForbidden {
			evictOldest(f.m, func(e *forbiddenEntry) time.Time { return e.last })
		}
		e = &forbiddenEntry{}
		f.m[k] = e
	}
	e.count++
	e.last, e.reason = now, reason
	e.unlogged++
	logNow := e.logged.IsZero() || now.Sub(e.logged) >= logEvery
	var n, total int64
	if logNow {
		n, total = e.unlogged, e.count
		e.logged, e.unlogged = now, 0
	}
	f.mu.Unlock()
	if logNow {
		f.logger.Warn("requests refused: the principal lacks a right", "principal", principal, "right", r.String(),
			"since_last_line", n, "total", total, "last", reason, "next_line_in", logEvery)
	}
}

func (f *forbidden) report() []wire.Forbidden {
	f.mu.Lock()
	out := make([]wire.Forbidden, 0, len(f.m))
	for k, e := range f.m {
		out = append(out, wire.Forbidden{Principal: k.principal, Right: k.right.String(), Count: e.count,
			Last: e.last.UTC().Format(time.RFC3339Nano), LastReason: e.reason})
	}
	f.mu.Unlock()
	sort.Slice(out, func(i, j int) bool { return out[i].Count > out[j].Count })
	return out
}

// check returns nil when the session's principal may use right r on name
// (a topic or group; "" for admin), else the FORBIDDEN error to answer,
// counted and logged. Without an ACL everything is allowed.
func (c *conn) check(r acl.Right, name string) *wire.Error {
	h := c.s.opts.ACL
	if h == nil {
		return nil
	}
	if r == acl.Produce || r == acl.Consume {
		// A consumer group's redelivery and dead-letter topics are the
		// group's: its members write and read them.
		if g, ok := wire.GroupTopic(name); ok {
			r, name = acl.Groups, g
		}
	}
	p := h.Load().Principal(c.principal)
	if p != nil && p.Allowed(r, name) {
		return nil
	}
	var msg string
	switch {
	case p == nil:
		msg = fmt.Sprintf("principal %s is no longer in the broker's ACL", c.principal)
	case r == acl.Admin:
		msg = fmt.Sprintf("principal %s has no admin right (create topics, promote, elect)", c.principal)
	case r == acl.Groups:
		msg = fmt.Sprintf("principal %s has no groups right on group %s", c.principal, name)
	default:
		msg = fmt.Sprintf("principal %s has no %s right on topic %s", c.principal, r, name)
	}
	c.s.forbidden.record(c.principal, r, msg)
	return &wire.Error{Code: wire.CodeForbidden, Message: msg}
}
