package itest

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

// TestManyTopicsSweep measures what many topics cost (make bench-topics):
// for each count of QUIVER_TOPICS_SWEEP (topics of 4 queues), a new broker,
// the topics created through the SDK with 64 requests in flight, then 16
// closed-loop producers of 1 KiB sync sends spread round robin over every
// topic for QUIVER_SWEEP_DURATION (default 8 s), then kill -9 and a restart.
// It reports sends/s, topic creations/s, the broker's RSS and open files,
// and the restart time (recovery included).
func TestManyTopicsSweep(t *testing.T) {
	spec := os.Getenv("QUIVER_TOPICS_SWEEP")
	if spec == "" {
		t.Skip("a measurement: make bench-topics (QUIVER_TOPICS_SWEEP=10,100,1000,5000,25000)")
	}
	dur := 8 * time.Second
	if v := os.Getenv("QUIVER_SWEEP_DURATION"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatal(err)
		}
		dur = d
	}
	var rows []string
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, sweepOne(t, n, dur))
	}
	t.Logf("many topics (4 queues each), 16 closed-loop producers, 1 KiB sync sends over every topic round robin, %v each:\n"+
		"| topics (queues) | sends/s | topic creations/s | broker RSS | open files | restart (kill -9) |\n|---|---|---|---|---|---|\n%s",
		dur, strings.Join(rows, "\n"))
}

func sweepOne(t *testing.T, topics int, dur time.Duration) string {
	b := testbroker.Start(t, "--auto-create-topics=false")
	defer b.Kill()
	cl := b.Client()
	ctx := ctxT(t, 30*time.Minute)
	name := func(i int) string { return fmt.Sprintf("s%d", i) }

	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < topics; i = int(next.Add(1) - 1) {
				if err := cl.Admin().CreateTopic(ctx, name(i), 4); err != nil {
					errs <- fmt.Errorf("create %s: %w", name(i), err)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	createRate := float64(topics) / time.Since(start).Seconds()

	body := make([]byte, 1024)
	var sent atomic.Int64
	var failed atomic.Int64
	var firstErr atomic.Pointer[error]
	var turn atomic.Int64
	sctx, cancel := context.WithTimeout(ctx, dur)
	defer cancel()
	for p := 0; p < 16; p++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pr, err := cl.NewProducer()
			if err != nil {
				t.Error(err)
				return
			}
			defer pr.Close()
			for sctx.Err() == nil {
				i := int(turn.Add(1)-1) % topics
				if _, err := pr.Send(sctx, &sdk.Message{Topic: name(i), Body: body}); err != nil {
					// A send cut by the window's end is not a failure (the
					// SDK may see the deadline a moment before sctx does).
					if dl, _ := sctx.Deadline(); time.Until(dl) > 50*time.Millisecond {
						failed.Add(1)
						err := fmt.Errorf("%w (%v before the end)", err, time.Until(dl).Round(time.Millisecond))
						firstErr.CompareAndSwap(nil, &err)
					}
					continue
				}
				sent.Add(1)
			}
		}()
	}
	runStart := time.Now()
	wg.Wait()
	rate := float64(sent.Load()) / time.Since(runStart).Seconds()
	rss, files := b.RSS(), b.OpenFiles()
	if failed.Load() > 0 {
		t.Errorf("%d topics: %d sends failed, the first: %v", topics, failed.Load(), *firstErr.Load())
	}

	b.Kill()
	restart := time.Now()
	b.Restart()
	took := time.Since(restart)
	return fmt.Sprintf("| %d (%d) | %.0f | %.0f | %.0f MiB | %d | %.2f s |", topics, 4*topics, rate, createRate, float64(rss)/(1<<20), files, took.Seconds())
}
