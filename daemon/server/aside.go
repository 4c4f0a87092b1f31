package server

import (
	"sort"
	"sync"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// asides keeps what clients report they set aside (wire.ClientReport): per
// client (its id and source address), the newest report, forgotten after
// wire.ClientReportTTL or when the client reports none. At most
// maxReporters clients are kept (the oldest report is dropped past it).
type asides struct {
	mu  sync.Mutex
	m   map[string]asideReport
	now func() time.Time
}

type asideReport struct {
	at      time.Time
	entries []wire.AsideReport
}

const maxReporters = 1024

func (a *asides) record(client string, r *wire.ClientReport) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[string]asideReport{}
	}
	if len(r.Aside) == 0 {
		delete(a.m, client)
		return
	}
	if _, ok := a.m[client]; !ok && len(a.m) >= maxReporters {
		oldest, at := "", now
		for k, v := range a.m {
			if !v.at.After(at) {
				oldest, at = k, v.at
			}
		}
		delete(a.m, oldest)
	}
	a.m[client] = asideReport{at: now, entries: r.Aside}
}

// report sums the live reports per broker address.
func (a *asides) report() []wire.SetAside {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	by := map[string]*wire.SetAside{}
	last := map[string]time.Time{}
	for k, r := range a.m {
		if now.Sub(r.at) > wire.ClientReportTTL {
			delete(a.m, k)
			continue
		}
		for _, e := range r.entries {
			s := by[e.Addr]
			if s == nil {
				s = &wire.SetAside{Addr: e.Addr}
				by[e.Addr] = s
			}
			s.Clients++
			if r.at.After(last[e.Addr]) {
				last[e.Addr] = r.at
				s.Reason, s.Last = e.Reason, r.at.UTC().Format(time.RFC3339)
			}
		}
	}
	out := make([]wire.SetAside, 0, len(by))
	for _, s := range by {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Addr < out[j].Addr })
	return out
}
