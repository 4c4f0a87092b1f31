package broker

import (
	"testing"
	"time"

	"github.com/quivermq/quiver/daemon/console"
)

// What the console's latency histogram adds to each acknowledged produce.
func BenchmarkLatencyRecord(b *testing.B) {
	l := latencies{cur: console.NewLatencyHistogram()}
	b.RunParallel(func(pb *testing.PB) {
		d := 700 * time.Microsecond
		for pb.Next() {
			l.record(d)
		}
	})
}
