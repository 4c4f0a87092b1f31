package itest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// quiver topic delete, end to end: the topic's messages, consume-queue
// files and the groups' offsets of it go at once and its name is free; a
// topic created again under that name holds only what is sent to it
// afterwards, by offset and by key, and stays so after kill -9.
func TestTopicDelete(t *testing.T) {
	b := testbroker.Start(t, "--auto-create-topics=false")
	cl := b.Client()
	ctx := ctxT(t, 2*time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "orders", 4); err != nil {
		t.Fatal(err)
	}
	if err := cl.Admin().CreateTopic(ctx, "other", 1); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	send := func(topic, body string, key string) {
		t.Helper()
		if _, err := p.Send(ctx, &sdk.Message{Topic: topic, Key: []byte(key), Body: []byte(body)}); err != nil {
			t.Fatalf("send %s to %s: %v", body, topic, err)
		}
	}
	for i := 0; i < 20; i++ {
		send("orders", fmt.Sprintf("old-%d", i), fmt.Sprintf("k%d", i))
	}
	send("other", "kept", "k0")
	consumeN(t, ctx, cl, "billing", "orders", 20) // commits its offsets
	// The index writes the queues' files at its checkpoint (every second).
	dir := filepath.Join(b.Dir, "index", "cq", fmt.Sprintf("%x", "orders"))
	deadline := time.Now().Add(10 * time.Second)
	for _, err := os.Stat(dir); err != nil; _, err = os.Stat(dir) {
		if time.Now().After(deadline) {
			t.Fatalf("no consume-queue files for orders: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}

	if err := cl.Admin().DeleteTopic(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Fatalf("the deleted topic's files are still there: %v", err)
	}
	topics, err := cl.Admin().Topics(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, tp := range topics {
		if tp.Name == "orders" {
			t.Fatalf("topics after the deletion: %+v", topics)
		}
	}
	var werr *wire.Error
	if _, err := p.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte("late")}); !errors.As(err, &werr) || werr.Code != wire.CodeUnknownTopic {
		t.Fatalf("send to the deleted topic: %v, want UNKNOWN_TOPIC", err)
	}
	if err := cl.Admin().DeleteTopic(ctx, "orders"); !errors.As(err, &werr) || werr.Code != wire.CodeUnknownTopic {
		t.Fatalf("deleting it again: %v, want UNKNOWN_TOPIC", err)
	}
	if err := cl.Admin().DeleteTopic(ctx, "__topics"); !errors.As(err, &werr) || werr.Code != wire.CodeInvalid {
		t.Fatalf("deleting a reserved topic: %v, want INVALID", err)
	}

	// The name again, with 2 queues: only what is sent from now on.
	if err := cl.Admin().CreateTopic(ctx, "orders", 2); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		send("orders", fmt.Sprintf("new-%d", i), fmt.Sprintf("k%d", i))
	}
	check := func(when string) {
		t.Helper()
		group := fmt.Sprintf("fresh-%d", time.Now().UnixNano())
		var bodies []string
		for _, m := range consumeN(t, ctx, cl, group, "orders", 5) {
			bodies = append(bodies, string(m.Body))
		}
		sort.Strings(bodies)
		if fmt.Sprint(bodies) != "[new-0 new-1 new-2 new-3 new-4]" {
			t.Fatalf("%s: a new group reads %v from the topic created again", when, bodies)
		}
		ms, err := cl.Admin().Lookup(ctx, "orders", []byte("k1"), 10)
		if err != nil || len(ms) != 1 || string(ms[0].Body) != "new-1" {
			t.Fatalf("%s: key k1 finds %d messages (%v), want only new-1", when, len(ms), err)
		}
		if ms, err := cl.Admin().Lookup(ctx, "orders", []byte("k10"), 10); err != nil || len(ms) != 0 {
			t.Fatalf("%s: key k10 of the deleted topic finds %d messages (%v)", when, len(ms), err)
		}
		// billing's offsets of the old topic were dropped: it starts over.
		offs, err := cl.Admin().Offsets(ctx, "billing", "orders", time.Time{})
		if err != nil {
			t.Fatal(err)
		}
		for _, q := range offs.Queues {
			if q.Committed != sdk.NoOffset {
				t.Fatalf("%s: billing's committed offset of queue %d survived the deletion: %d", when, q.Queue, q.Committed)
			}
		}
		if ms, err := cl.Admin().Lookup(ctx, "other", []byte("k0"), 10); err != nil || len(ms) != 1 {
			t.Fatalf("%s: the other topic's message: %d (%v)", when, len(ms), err)
		}
	}
	check("created again")
	b.Kill()
	b.Restart()
	check("after kill -9 and a restart")
}
