package server

import (
	"fmt"
	"testing"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// Reports are summed per broker, the newest reason kept; an empty report
// clears the client's, a report older than the TTL is forgotten, and the
// clients kept are bounded (the oldest report goes).
func TestAsides(t *testing.T) {
	now := time.Unix(1000, 0)
	a := asides{now: func() time.Time { return now }}
	a.record("c1 10.0.0.1", &wire.ClientReport{Aside: []wire.AsideReport{{Addr: "b2:7420", Reason: "slow: answered in 900ms"}}})
	now = now.Add(time.Second)
	a.record("c2 10.0.0.2", &wire.ClientReport{Aside: []wire.AsideReport{{Addr: "b2:7420", Reason: "failed: BUSY"}, {Addr: "b3:7420", Reason: "x"}}})
	got := a.report()
	if len(got) != 2 || got[0].Addr != "b2:7420" || got[0].Clients != 2 || got[0].Reason != "failed: BUSY" || got[1].Clients != 1 {
		t.Fatalf("report %+v", got)
	}
	a.record("c2 10.0.0.2", &wire.ClientReport{})
	if got := a.report(); len(got) != 1 || got[0].Clients != 1 || got[0].Reason != "slow: answered in 900ms" {
		t.Fatalf("after c2 cleared: %+v", got)
	}
	now = now.Add(wire.ClientReportTTL)
	if got := a.report(); len(got) != 0 {
		t.Fatalf("after the TTL: %+v", got)
	}
	for i := 0; i < maxReporters+10; i++ {
		now = now.Add(time.Millisecond)
		a.record(fmt.Sprintf("c%d", i), &wire.ClientReport{Aside: []wire.AsideReport{{Addr: "b:1"}}})
	}
	if n := len(a.m); n != maxReporters {
		t.Errorf("%d clients kept, want %d", n, maxReporters)
	}
	if _, ok := a.m["c0"]; ok {
		t.Error("the oldest report was kept past the bound")
	}
}
