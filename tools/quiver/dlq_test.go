//go:build !windows

package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

// delivery is one call of the handler.
type delivery struct {
	body         string
	redeliveries int
	topic        string
	queue        uint32
	offset       uint64
}

// A handler that always fails on one message: the message is redelivered
// the maximum number of times, each time later, while every other message
// of its queue is handled; then it is in the group's dead-letter topic,
// with where it came from, its tries and the last error (dlq list, show).
// dlq replay sends it back to its topic, where the group (its handler
// healed) takes it once; a second replay sends nothing.
func TestDeadLetters(t *testing.T) {
	b, cli, cl, p, ctx := withTopic(t, "orders", 1)
	const n, poison, maxRedeliveries = 20, "m5", 16
	for i := range n {
		if _, err := p.Send(ctx, &sdk.Message{Topic: "orders", Key: []byte("k"), Headers: []sdk.Header{{Key: "trace", Value: []byte(fmt.Sprint(i))}},
			Body: []byte(fmt.Sprintf("m%d", i))}); err != nil {
			t.Fatal(err)
		}
	}

	var mu sync.Mutex
	var got []delivery
	var healed atomic.Bool
	c, err := cl.NewConsumer("billing", []string{"orders"}, sdk.WithRedelivery(maxRedeliveries, 20*time.Millisecond, 40*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stop := context.WithCancel(ctx)
	ran := make(chan error, 1)
	go func() {
		ran <- c.Run(rctx, func(_ context.Context, m *sdk.Message) error {
			mu.Lock()
			got = append(got, delivery{string(m.Body), m.Redeliveries(), m.Topic, m.Queue, m.Offset})
			mu.Unlock()
			if len(m.Headers) != 1 || m.Headers[0].Key != "trace" {
				return fmt.Errorf("%s: headers %v, want the sender's only", m.Body, m.Headers)
			}
			if string(m.Body) == poison && !healed.Load() {
				return errors.New("poison: cannot bill")
			}
			return nil
		})
	}()
	deliveries := func(body string) []delivery {
		mu.Lock()
		defer mu.Unlock()
		var out []delivery
		for _, d := range got {
			if d.body == body {
				out = append(out, d)
			}
		}
		return out
	}
	testbroker.WaitFor(t, "the poison message in the dead-letter topic", func() bool {
		var list []dlqJSON
		json.Unmarshal([]byte(cli("dlq", "list", "--json").stdout), &list)
		return len(list) == 1 && list[0].Stored == 1
	})
	ds := deliveries(poison)
	if len(ds) != 1+maxRedeliveries {
		t.Fatalf("the poison message was delivered %d times, want %d", len(ds), 1+maxRedeliveries)
	}
	for i, d := range ds {
		if d.redeliveries != i || d.topic != "orders" || d.queue != 0 || d.offset != 5 {
			t.Fatalf("delivery %d of the poison message: %+v; want redeliveries %d of orders/0 offset 5", i, d, i)
		}
	}
	mu.Lock()
	last := -1 // the poison message's last delivery
	for i, d := range got {
		if d.body == poison {
			last = i
		}
	}
	for i := range n {
		body := fmt.Sprintf("m%d", i)
		if body == poison {
			continue
		}
		k := -1
		for j, d := range got {
			if d.body == body {
				if k >= 0 {
					mu.Unlock()
					t.Fatalf("%s was delivered twice", body)
				}
				k = j
			}
		}
		if k < 0 || k > last {
			mu.Unlock()
			t.Fatalf("%s was handled at %d, the poison message's last try at %d: its queue was held up", body, k, last)
		}
	}
	mu.Unlock()
	if r, d := b.Metric(`quiver_redeliveries_total{group="billing"}`), b.Metric(`quiver_dead_letters_total{group="billing"}`); r != maxRedeliveries || d != 1 {
		t.Fatalf("metrics: %v redeliveries, %v dead letters; want %d and 1", r, d, maxRedeliveries)
	}

	var dl deadLetter
	r := must(t, cli("dlq", "show", "--group", "billing", "--json", "--idle", "500ms"))
	if err := json.Unmarshal([]byte(r.stdout), &dl); err != nil || len(lines(t, r.stdout)) != 1 {
		t.Fatalf("dlq show --json: %v\n%s", err, r.stdout)
	}
	if dl.OriginTopic != "orders" || dl.OriginQueue != "0" || dl.OriginOffset != "5" || dl.Attempts != fmt.Sprint(1+maxRedeliveries) ||
		dl.Error != "poison: cannot bill" || dl.Body != poison || dl.Key != "k" || dl.Headers["trace"] != "5" {
		t.Fatalf("dlq show: %+v", dl)
	}
	if r := must(t, cli("dlq", "show", "--group", "billing", "--count", "1")); !strings.Contains(r.stdout, "from orders/0 offset 5") || !strings.Contains(r.stdout, "17 deliveries failed, last error: poison: cannot bill") {
		t.Fatalf("dlq show:\n%s", r.stdout)
	}

	healed.Store(true)
	if r := must(t, cli("dlq", "replay", "--group", "billing", "--idle", "500ms")); r.stdout != "replayed 1 dead letter(s) of group billing\n" {
		t.Fatalf("dlq replay: %v", r)
	}
	testbroker.WaitFor(t, "the replayed message handled", func() bool {
		ds := deliveries(poison)
		return len(ds) == 2+maxRedeliveries
	})
	if d := deliveries(poison)[1+maxRedeliveries]; d.redeliveries != 0 || d.topic != "orders" || d.offset != n {
		t.Fatalf("the replayed message was delivered as %+v; want a new message at orders/0 offset %d", d, n)
	}
	if r := must(t, cli("dlq", "replay", "--group", "billing", "--idle", "500ms")); r.stdout != "replayed 0 dead letter(s) of group billing\n" {
		t.Fatalf("a second dlq replay: %v", r)
	}
	var list []dlqJSON
	if err := json.Unmarshal([]byte(must(t, cli("dlq", "list", "--json")).stdout), &list); err != nil || len(list) != 1 || list[0] != (dlqJSON{"billing", 1, 1}) {
		t.Fatalf("dlq list after the replay: %+v %v", list, err)
	}
	stop()
	if err := <-ran; !errors.Is(err, context.Canceled) {
		t.Fatalf("Run: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// A redelivery topic made with fewer queues than a member has pauses (by
// a member with fewer): the later redeliveries go to its last queue, and
// the message still reaches the dead-letter topic.
func TestRedeliveryTopicWithFewerQueues(t *testing.T) {
	b, _, cl, p, ctx := withTopic(t, "orders", 1)
	if err := cl.Admin().CreateTopic(ctx, "__retry.short", 1); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte("poison")}); err != nil {
		t.Fatal(err)
	}
	c, err := cl.NewConsumer("short", []string{"orders"}, sdk.WithRedelivery(3, 10*time.Millisecond, 20*time.Millisecond, 30*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rctx, stop := context.WithCancel(ctx)
	defer stop()
	go c.Run(rctx, func(context.Context, *sdk.Message) error { return errors.New("always") })
	testbroker.WaitFor(t, "the dead letter", func() bool { return b.Metric(`quiver_dead_letters_total{group="short"}`) == 1 })
	if r := b.Metric(`quiver_redeliveries_total{group="short"}`); r != 3 {
		t.Fatalf("%v redeliveries, want 3", r)
	}
}
