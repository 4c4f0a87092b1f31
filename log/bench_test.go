package log

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/quivermq/quiver/ioengine"
)

// BenchmarkAppendSync measures 1 KiB appends in sync mode (acknowledged
// after fdatasync) with 1, 16 and 64 concurrent appenders, on every backend
// in one run: `make bench-storage`. Reported: records/s and the p50, p99 and
// p99.9 latency of one Append, from call to acknowledgement.
func BenchmarkAppendSync(b *testing.B) {
	for _, backend := range ioengine.Backends() {
		for _, appenders := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("backend=%s/appenders=%d", backend, appenders), func(b *testing.B) {
				benchAppend(b, backend, appenders, Sync)
			})
		}
	}
}

// BenchmarkAppendAsync is the same workload acknowledged after the write.
func BenchmarkAppendAsync(b *testing.B) {
	for _, backend := range ioengine.Backends() {
		b.Run(fmt.Sprintf("backend=%s/appenders=16", backend), func(b *testing.B) {
			benchAppend(b, backend, 16, Async)
		})
	}
}

func benchAppend(b *testing.B, backend string, appenders int, mode Durability) {
	l, err := Open(Options{Dir: b.TempDir(), Engine: newEngine(b, backend), SegmentSize: 256 << 20,
		Durability: mode, Logger: quiet, ZeroAhead: benchZeroAhead(b)})
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	body := make([]byte, 1024-HeaderSize-len("bench"))
	hists := make([]*hdrhistogram.Histogram, appenders)
	for i := range hists {
		hists[i] = hdrhistogram.New(1, int64(10*time.Second/time.Microsecond*1000), 3)
	}
	// Warm up: the first appends pay for page faults and extent conversion.
	for i := 0; i < 100; i++ {
		l.Append(&Message{Topic: "bench", Body: body})
	}
	b.SetBytes(1024)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	per := b.N / appenders
	if per == 0 {
		per = 1
	}
	for a := 0; a < appenders; a++ {
		wg.Add(1)
		go func(h *hdrhistogram.Histogram) {
			defer wg.Done()
			m := &Message{Topic: "bench", Body: body}
			for i := 0; i < per; i++ {
				t0 := time.Now()
				if _, err := l.Append(m); err != nil {
					b.Error(err)
					return
				}
				h.RecordValue(int64(time.Since(t0)))
			}
		}(hists[a])
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	all := hdrhistogram.New(1, int64(10*time.Second), 3)
	for _, h := range hists {
		all.Merge(h)
	}
	st := l.Stats()
	b.ReportMetric(float64(st.Records)/float64(max(st.Commits, 1)), "records/commit")
	b.ReportMetric(float64(st.FlushNanos)/float64(max(st.Commits, 1))/1e3, "flush-µs")
	b.ReportMetric(float64(per*appenders)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(all.ValueAtQuantile(50))/1e3, "p50-µs")
	b.ReportMetric(float64(all.ValueAtQuantile(99))/1e3, "p99-µs")
	b.ReportMetric(float64(all.ValueAtQuantile(99.9))/1e3, "p999-µs")
}

// benchZeroAhead lets a run compare zeroing ahead on and off:
// QUIVER_BENCH_ZERO_AHEAD=-1 turns it off (0 or unset: the default).
func benchZeroAhead(b *testing.B) int64 {
	v := os.Getenv("QUIVER_BENCH_ZERO_AHEAD")
	if v == "" {
		return 0
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil {
		b.Fatalf("QUIVER_BENCH_ZERO_AHEAD=%q: %v", v, err)
	}
	return n
}
