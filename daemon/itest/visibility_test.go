package itest

import (
	"context"
	"os"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

// soakFor is QUIVER_SOAK when set (`make soak` raises it to minutes), else def.
func soakFor(def time.Duration) time.Duration {
	if d, err := time.ParseDuration(os.Getenv("QUIVER_SOAK")); err == nil && d > 0 {
		return d
	}
	return def
}

// Incident 003 replayed: producers at the broker's limit for a sustained
// period while a consumer group reads. Written data becomes visible to
// consumers in the same commit that makes it durable, so what is durable
// and not yet visible stays at the scale of one commit's dispatch, the
// status never warns, and every acknowledged message reaches the
// consumer. (How long written data waits for its fsync is the disk's: a
// loaded CI machine once stalled one for 296 ms.)
func TestVisibleLagUnderSustainedLoad(t *testing.T) {
	dur := soakFor(4 * time.Second)
	b := testbroker.Start(t)
	cl := b.Client()
	ctx, cancel := context.WithTimeout(context.Background(), dur+60*time.Second)
	defer cancel()
	if err := cl.Admin().CreateTopic(ctx, "binlog", 4); err != nil {
		t.Fatal(err)
	}
	p, _ := cl.NewProducer()
	defer p.Close()

	var acked, consumed atomic.Int64
	c, err := cl.NewConsumer("es-sync", []string{"binlog"})
	if err != nil {
		t.Fatal(err)
	}
	var e2eMu sync.Mutex
	var e2e []time.Duration // store time to consumption
	runDone := make(chan struct{})
	rctx, stopRun := context.WithCancel(ctx)
	go func() {
		defer close(runDone)
		c.Run(rctx, func(_ context.Context, m *sdk.Message) error {
			e2eMu.Lock()
			e2e = append(e2e, time.Since(m.StoreTime))
			e2eMu.Unlock()
			consumed.Add(1)
			return nil
		})
	}()

	// Sample the broker's positions while the load runs.
	var maxNotVisible, maxBehind, samples int64
	var warnings []string
	sampleDone := make(chan struct{})
	loadCtx, stopLoad := context.WithTimeout(ctx, dur)
	defer stopLoad()
	go func() {
		defer close(sampleDone)
		for loadCtx.Err() == nil {
			st := b.Status()
			samples++
			maxNotVisible = max(maxNotVisible, st.Lag.NotVisibleMs)
			// Durable and not visible: the dispatcher's own lag (the
			// commit made it durable at DurableAt and has not indexed it).
			if p := st.Positions; p.Durable > p.Dispatched {
				if at, err := time.Parse(time.RFC3339Nano, p.DurableAt); err == nil {
					maxBehind = max(maxBehind, time.Since(at).Milliseconds())
				}
			}
			warnings = append(warnings, st.Warnings...)
			time.Sleep(20 * time.Millisecond) // sampling period, not synchronisation
		}
	}()
	var wg sync.WaitGroup
	body := make([]byte, 1024)
	for w := 0; w < 16; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for loadCtx.Err() == nil {
				if _, err := p.Send(ctx, &sdk.Message{Topic: "binlog", Body: body}); err != nil {
					t.Error(err)
					return
				}
				acked.Add(1)
			}
		}()
	}
	wg.Wait()
	<-sampleDone
	testbroker.WaitFor(t, "the consumer to catch up", func() bool { return consumed.Load() >= acked.Load() })
	stopRun()
	<-runDone
	c.Close()

	e2eMu.Lock()
	sort.Slice(e2e, func(i, j int) bool { return e2e[i] < e2e[j] })
	p99 := e2e[len(e2e)*99/100]
	e2eMu.Unlock()
	t.Logf("%v of load: %d acknowledged, %d consumed; %d status samples, max not-visible %d ms (durable and not visible %d ms); store-to-consume p50 %v p99 %v",
		dur, acked.Load(), consumed.Load(), samples, maxNotVisible, maxBehind, e2e[len(e2e)/2], p99)
	if len(warnings) > 0 {
		t.Fatalf("status warned under load: %v", warnings[0])
	}
	// One commit takes a few hundred microseconds; allow for scheduling on
	// a loaded 2-core machine, but not for a dispatcher that falls behind.
	if maxBehind > 100 {
		t.Fatalf("durable data stayed invisible to consumers for %d ms", maxBehind)
	}
	if consumed.Load() != acked.Load() {
		t.Fatalf("consumed %d, acknowledged %d", consumed.Load(), acked.Load())
	}
}
