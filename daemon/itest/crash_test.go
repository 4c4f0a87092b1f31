package itest

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/crashtest"
	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

type acked struct {
	queue  uint32
	offset uint64
	body   string
}

// SIGKILL of the broker under load from concurrent producers in sync mode,
// then a restart: every acknowledged message is there, at the queue and
// offset it was acknowledged with, with the bytes that were sent. Several
// rounds on one data directory, so recovery runs over earlier recoveries.
func TestCrashBrokerUnderLoadLosesNoAck(t *testing.T) {
	rounds := crashtest.Rounds(3)
	b := testbroker.Start(t)
	const topic, queues, producers = "crash", 4, 8
	{
		cl := b.Client()
		if err := cl.Admin().CreateTopic(ctxT(t, 30*time.Second), topic, queues); err != nil {
			t.Fatal(err)
		}
		cl.Close()
	}
	var all []acked
	for round := 0; round < rounds; round++ {
		cl := b.Client(sdk.WithReconnectBackoff(10*time.Millisecond, 100*time.Millisecond, time.Second))
		p, err := cl.NewProducer(sdk.WithSendTimeout(2 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var got []acked
		killAt := 500 + 300*round
		killed := make(chan struct{})
		var once sync.Once
		var wg sync.WaitGroup
		ctx, cancel := context.WithCancel(context.Background())
		for w := 0; w < producers; w++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for seq := 0; ctx.Err() == nil; seq++ {
					body := fmt.Sprintf("r%d-w%d-s%d-%0*d", round, w, seq, seq%700, 0)
					res, err := p.Send(ctx, &sdk.Message{Topic: topic, Body: []byte(body)})
					if err != nil {
						return // the broker is gone: acknowledged sends are what counts
					}
					mu.Lock()
					got = append(got, acked{res.Queue, res.Offset, body})
					n := len(got)
					mu.Unlock()
					if n == killAt {
						once.Do(func() { b.Kill(); close(killed) })
					}
				}
			}()
		}
		<-killed
		cancel()
		wg.Wait()
		p.Close()
		cl.Close()
		all = append(all, got...)
		b.Restart()
		verifyAcked(t, b, topic, queues, all)
		t.Logf("round %d: %d acknowledged before SIGKILL, all %d found after restart", round, len(got), len(all))
	}
}

// verifyAcked reads every queue from the start and checks each acked
// message is at its offset with its body.
func verifyAcked(t *testing.T, b *testbroker.Broker, topic string, queues int, want []acked) {
	t.Helper()
	cl := b.Client()
	defer cl.Close()
	ctx := ctxT(t, 60*time.Second)
	// A fresh group each time: its consumer reads everything from the start.
	group := fmt.Sprintf("verify-%d", time.Now().UnixNano())
	st := b.Status()
	total := uint64(0)
	for _, ts := range st.Topics {
		if ts.Name == topic {
			for _, q := range ts.Queues {
				total += q.Max - q.Min
			}
		}
	}
	got := map[[2]uint64]string{}
	for _, m := range consumeN(t, ctx, cl, group, topic, int(total)) {
		k := [2]uint64{uint64(m.Queue), m.Offset}
		if _, dup := got[k]; dup {
			t.Fatalf("queue %d offset %d delivered twice to one consumer", m.Queue, m.Offset)
		}
		got[k] = string(m.Body)
	}
	for _, a := range want {
		body, ok := got[[2]uint64{uint64(a.queue), a.offset}]
		if !ok {
			t.Fatalf("acknowledged message %q (queue %d offset %d) is lost", a.body, a.queue, a.offset)
		}
		if body != a.body {
			t.Fatalf("queue %d offset %d holds %q, acknowledged %q", a.queue, a.offset, body, a.body)
		}
	}
}
