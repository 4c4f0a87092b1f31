package sdk

import (
	"context"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// asideReporter tells the brokers the client has sessions with which
// brokers it sets aside (wire.ClientReport), when that changed and every
// wire.ClientReportEvery while some are, so that their status and web
// console show what clients see (a broker slow for its clients may look
// healthy from inside). Best effort: a broker that does not know the
// request, or does not answer, is not told.
type asideReporter struct {
	key     string // the addresses last reported
	at      time.Time
	running bool // a report is being sent (router goroutine only)
	done    chan struct{}
}

// reportAside runs on the router's goroutine after each refresh.
func (cl *Client) reportAside() {
	r := &cl.aside
	if r.running {
		select {
		case <-r.done:
			r.running = false
		default:
			return // the last one is still going out
		}
	}
	rep := wire.ClientReport{Aside: cl.faults.asideReport()}
	key := ""
	for _, a := range rep.Aside {
		key += a.Addr + " "
	}
	now := time.Now()
	if key == r.key && (key == "" || now.Sub(r.at) < wire.ClientReportEvery) {
		return
	}
	cl.connMu.RLock()
	var to []*brokerConn
	for _, bc := range cl.conns {
		if bc.live() != nil && cl.faults.usable(bc.addr) {
			to = append(to, bc)
		}
	}
	cl.connMu.RUnlock()
	r.key, r.at = key, now
	if len(to) == 0 {
		return
	}
	done := make(chan struct{})
	if !cl.goBg(func() {
		defer close(done)
		payload := rep.Append(nil)
		for _, bc := range to {
			ctx, cancel := context.WithTimeout(cl.ctx, time.Second)
			c, err := cl.request(ctx, bc, streamControl, wire.TypeClientReport, func(b []byte) []byte { return append(b, payload...) })
			cancel()
			if err == nil {
				c.release()
			}
		}
	}) {
		return
	}
	r.running, r.done = true, done
}
