package itest

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk/wire"
)

// 20,000 queues under an open-file limit of 512 (soft and hard): a broker
// that keeps a file open per queue cannot even start again ("too many open
// files", issue 17's report). This one says how many files it keeps open,
// serves every queue, recovers them all after kill -9, and stays under the
// limit throughout.
func TestManyQueuesUnderAFileLimit(t *testing.T) {
	const topics, queues, limit = 20, 1000, 512
	b := testbroker.StartLimited(t, limit)
	if !strings.Contains(b.Log(), "consume_queue_files_kept_open=256") {
		t.Fatalf("the broker did not fit max_open_files (4096) under the limit of %d: %s", limit, b.Log())
	}
	ctx := ctxT(t, 3*time.Minute)
	cl := b.Client()
	for i := 0; i < topics; i++ {
		if err := cl.Admin().CreateTopic(ctx, fmt.Sprintf("m%d", i), queues); err != nil {
			t.Fatal(err)
		}
	}
	// One message in every queue, each with its own key, over eight
	// connections at once.
	send := func(round int) {
		t.Helper()
		var wg sync.WaitGroup
		errs := make(chan error, topics)
		for w := 0; w < 8; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := testbroker.DialAt(ctx, b.Addr, b.CAFile)
				if err != nil {
					errs <- err
					return
				}
				defer c.Close()
				for tp := w; tp < topics; tp += 8 {
					for j := 0; j < queues; j++ {
						key := fmt.Sprintf("m%d-%d-%d", tp, round, j)
						// BUSY (a send queue past its wait limit, on a loaded
						// machine) is retryable: a client sends again, as the
						// SDK does, a few times at most here.
						var err error
						for try := 0; try < 20; try++ {
							_, err = c.ProduceTo(ctx, wire.Produce{Topic: fmt.Sprintf("m%d", tp), Queue: int32(j), Key: []byte(key), Body: []byte("body of " + key)})
							var werr *wire.Error
							if !errors.As(err, &werr) || werr.Code != wire.CodeBusy {
								break
							}
							time.Sleep(50 * time.Millisecond)
						}
						if err != nil {
							errs <- fmt.Errorf("send %s: %w", key, err)
							return
						}
					}
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
	}
	everyQueueHolds := func(when string, n uint64) {
		t.Helper()
		st := b.Status()
		seen := 0
		for _, tp := range st.Topics {
			for _, q := range tp.Queues {
				if q.Max != n {
					t.Fatalf("%s: %s/%d holds offsets up to %d, want %d", when, tp.Name, q.Queue, q.Max, n)
				}
				seen++
			}
		}
		if seen != topics*queues {
			t.Fatalf("%s: %d queues in the status, want %d", when, seen, topics*queues)
		}
		if n := b.OpenFiles(); n > limit {
			t.Fatalf("%s: %d files open, limit %d", when, n, limit)
		}
	}
	// found reads a sample of the messages back by key, bodies included.
	found := func(when string, round int) {
		t.Helper()
		for i := 0; i < 100; i++ {
			tp, j := i%topics, (i*97)%queues
			key := fmt.Sprintf("m%d-%d-%d", tp, round, j)
			var got struct {
				Messages []struct {
					Body struct{ Text string }
				}
			}
			if err := json.Unmarshal(b.Get(fmt.Sprintf("/ui/api/messages?topic=m%d&key=%s", tp, url.QueryEscape(key))), &got); err != nil {
				t.Fatal(err)
			}
			if len(got.Messages) != 1 || got.Messages[0].Body.Text != "body of "+key {
				t.Fatalf("%s: key %s found %+v", when, key, got.Messages)
			}
		}
	}
	send(0)
	everyQueueHolds("after 20,000 sends", 1)
	found("after 20,000 sends", 0)
	if m := b.Metric("quiver_index_files_open"); m > 256 {
		t.Errorf("quiver_index_files_open %v, kept open at most 256", m)
	}

	b.Kill()
	start := time.Now()
	b.Restart()
	t.Logf("restarted with %d queues under %d files in %v", topics*queues, limit, time.Since(start).Round(time.Millisecond))
	everyQueueHolds("after kill -9 and restart", 1)
	found("after kill -9 and restart", 0)
	send(1)
	everyQueueHolds("after 20,000 more sends", 2)
	found("after 20,000 more sends", 1)
}
