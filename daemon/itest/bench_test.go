package itest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

// BenchmarkSendSync measures end-to-end sync sends of 1 KiB through a real
// quiverd over QUIC on loopback: each Send returns after the broker synced
// the message. Latency is per Send, in an HdrHistogram per producer.
//
//	go test -ldflags=-checklinkname=0 -run '^$' -bench BenchmarkSendSync -benchtime 20000x ./daemon/itest/
func BenchmarkSendSync(b *testing.B) {
	for _, engine := range []string{"io_uring", "portable"} {
		for _, producers := range []int{1, 16} {
			b.Run(fmt.Sprintf("engine=%s/producers=%d", engine, producers), func(b *testing.B) {
				benchSend(b, engine, producers, sdk.Sync)
			})
		}
	}
}

// BenchmarkSendAsyncAck is the same with async durability: acknowledged
// after the write, no fsync. The difference to BenchmarkSendSync is what
// the sync costs; what is left is the transport and the broker's CPU.
func BenchmarkSendAsyncAck(b *testing.B) {
	for _, producers := range []int{1, 16} {
		b.Run(fmt.Sprintf("producers=%d", producers), func(b *testing.B) {
			benchSend(b, "io_uring", producers, sdk.Async)
		})
	}
}

func benchSend(b *testing.B, engine string, producers int, durability sdk.Durability) {
	br := testbroker.Start(b, "--engine", engine)
	cl := br.Client()
	ctx := context.Background()
	if err := cl.Admin().CreateTopic(ctx, "bench", 8); err != nil {
		b.Fatal(err)
	}
	p, err := cl.NewProducer(sdk.WithDurability(durability))
	if err != nil {
		b.Fatal(err)
	}
	body := make([]byte, 1024)
	// Warm up the connection and the broker.
	for i := 0; i < 200; i++ {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "bench", Body: body}); err != nil {
			b.Fatal(err)
		}
	}
	hists := make([]*hdrhistogram.Histogram, producers)
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	for w := 0; w < producers; w++ {
		h := hdrhistogram.New(1, int64(10*time.Second/time.Microsecond), 3)
		hists[w] = h
		n := b.N / producers
		if w < b.N%producers {
			n++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			m := &sdk.Message{Topic: "bench", Body: body}
			for i := 0; i < n; i++ {
				t0 := time.Now()
				if _, err := p.Send(ctx, m); err != nil {
					b.Error(err)
					return
				}
				h.RecordValue(time.Since(t0).Microseconds())
			}
		}()
	}
	wg.Wait()
	took := time.Since(start)
	b.StopTimer()
	all := hdrhistogram.New(1, int64(10*time.Second/time.Microsecond), 3)
	for _, h := range hists {
		all.Merge(h)
	}
	b.ReportMetric(float64(b.N)/took.Seconds(), "msgs/s")
	b.ReportMetric(float64(all.ValueAtQuantile(50)), "p50-µs")
	b.ReportMetric(float64(all.ValueAtQuantile(99)), "p99-µs")
	b.ReportMetric(float64(all.ValueAtQuantile(99.9)), "p99.9-µs")
	p.Close()
}
