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
// topic for QUIVER_SWEEP_DURATION (default 8 s), twice (the first window
// creates every queue's file, the second finds them), then kill -9 and a
// restart. It reports sends/s in each window, topic creations/s, the
// broker's RSS and open files, and the restart time (recovery included).
// With QUIVER_SWEEP_PROFILE=DIR, CPU profiles of the broker go to DIR.
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
	var rows []sweepRow
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil {
			t.Fatal(err)
		}
		rows = append(rows, sweepOne(t, n, dur))
	}
	var table []string
	for _, r := range rows {
		table = append(table, r.line)
	}
	t.Logf("many topics (4 queues each), 16 closed-loop producers, 1 KiB sync sends over every topic round robin, %v each window:\n"+
		"| topics (queues) | sends/s, first window | sends/s, second window | topic creations/s | RSS, topics made, none written | RSS after the sends | open files | restart (kill -9) |\n|---|---|---|---|---|---|---|---|\n%s\n\n%s",
		dur, strings.Join(table, "\n"), sweepPlot(rows))
}

type sweepRow struct {
	queues        int
	first, steady float64 // sends/s
	line          string
}

// sweepPlot draws sends/s against the number of queues: a bar for each
// window (# the second, on queues that have files; + the first).
func sweepPlot(rows []sweepRow) string {
	top := 0.0
	for _, r := range rows {
		top = max(top, r.first, r.steady)
	}
	var b strings.Builder
	fmt.Fprintf(&b, "sends/s against queues (full width: %.0f/s)\n", top)
	for _, r := range rows {
		fmt.Fprintf(&b, "%7d queues, second window |%-50s| %.0f\n", r.queues, strings.Repeat("#", int(50*r.steady/top+0.5)), r.steady)
		fmt.Fprintf(&b, "%7s         first window |%-50s| %.0f\n", "", strings.Repeat("+", int(50*r.first/top+0.5)), r.first)
	}
	return b.String()
}

func sweepOne(t *testing.T, topics int, dur time.Duration) sweepRow {
	prof := os.Getenv("QUIVER_SWEEP_PROFILE") // a directory: a CPU profile of each send window goes there
	args := []string{"--auto-create-topics=false"}
	if prof != "" {
		args = append(args, "--admin-pprof")
	}
	b := testbroker.Start(t, args...)
	defer b.Kill()
	cl := b.Client()
	ctx := ctxT(t, 30*time.Minute)

	start := time.Now()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for w := 0; w < 64; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := int(next.Add(1) - 1); i < topics; i = int(next.Add(1) - 1) {
				if err := cl.Admin().CreateTopic(ctx, sweepTopic(i), 4); err != nil {
					errs <- fmt.Errorf("create %s: %w", sweepTopic(i), err)
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
	idle := b.RSS() // every topic made, none written: what idle topics cost

	// Two windows: the first right after the topics were made (every
	// queue's first message creates its file), the second on queues that
	// have files (the steady state of a broker that has run a while).
	first := sweepSends(t, b, cl, topics, dur, "first", prof)
	steady := sweepSends(t, b, cl, topics, dur, "steady", prof)
	rss, files := b.RSS(), b.OpenFiles()

	b.Kill()
	restart := time.Now()
	b.Restart()
	took := time.Since(restart)
	return sweepRow{queues: 4 * topics, first: first, steady: steady,
		line: fmt.Sprintf("| %d (%d) | %.0f | %.0f | %.0f | %.0f MiB | %.0f MiB | %d | %.2f s |", topics, 4*topics, first, steady, createRate,
			float64(idle)/(1<<20), float64(rss)/(1<<20), files, took.Seconds())}
}

// sweepSends runs 16 closed-loop producers over every topic for dur and
// returns their sends/s; with prof, a CPU profile of the broker goes to
// prof/sweep-<topics>-<window>.pprof.
func sweepSends(t *testing.T, b *testbroker.Broker, cl *sdk.Client, topics int, dur time.Duration, window, prof string) float64 {
	ctx := ctxT(t, 5*time.Minute)
	body := make([]byte, 1024)
	var wg sync.WaitGroup
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
				if _, err := pr.Send(sctx, &sdk.Message{Topic: sweepTopic(i), Body: body}); err != nil {
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
	if prof != "" {
		secs := int((dur - time.Second) / time.Second)
		data := b.Get(fmt.Sprintf("/debug/pprof/profile?seconds=%d", max(secs, 1)))
		if err := os.WriteFile(fmt.Sprintf("%s/sweep-%d-%s.pprof", prof, topics, window), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
	if failed.Load() > 0 {
		t.Errorf("%d topics, %s window: %d sends failed, the first: %v", topics, window, failed.Load(), *firstErr.Load())
	}
	return float64(sent.Load()) / time.Since(runStart).Seconds()
}

func sweepTopic(i int) string { return fmt.Sprintf("s%d", i) }
