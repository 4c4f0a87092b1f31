package itest

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

// Incident 001's advice built in (WithOutbox): with every broker group
// down, sends return no error and are kept on local disk; the producer is
// closed with them still there; once the brokers are back, a new producer
// on the same dir delivers every one. Messages sent while the outbox
// drains wait behind their key's earlier ones, so each key's messages are
// consumed in the order they were sent.
func TestOutboxDeliversWhatAnOutageHeld(t *testing.T) {
	c := testbroker.StartCluster(t, 2, 0, nil, nil)
	cl := clusterClient(t, c)
	ctx := ctxT(t, 120*time.Second)
	if err := cl.Admin().CreateTopic(ctx, "payments", 2); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	const keys = 4
	seq := 0
	send := func(p *sdk.Producer, wantOutboxed bool) {
		t.Helper()
		k := fmt.Sprintf("acct-%d", seq%keys)
		res, err := p.Send(ctx, &sdk.Message{Topic: "payments", Key: []byte(k), Body: []byte(fmt.Sprintf("%s:%d", k, seq))})
		if err != nil {
			t.Fatalf("send %d: %v", seq, err)
		}
		if wantOutboxed && !res.Outboxed {
			t.Fatalf("send %d acknowledged by %s with every broker down", seq, res.Broker)
		}
		seq++
	}
	p1, err := cl.NewProducer(sdk.WithOutbox(dir), sdk.WithSendTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for range 8 {
		send(p1, false)
	}
	if st := p1.Outbox(); st.Pending != 0 || st.Added != 0 {
		t.Fatalf("outbox used while the brokers were up: %+v", st)
	}
	for _, g := range c.Groups {
		g.Leader.Kill()
	}
	for range 20 {
		send(p1, true)
	}
	if st := p1.Outbox(); st.Pending != 20 || st.Resent != 0 {
		t.Fatalf("outbox during the outage: %+v", st)
	}
	if err := p1.Close(); err != nil {
		t.Fatal(err)
	}

	for _, g := range c.Groups {
		g.Leader.Restart()
	}
	p2, err := cl.NewProducer(sdk.WithOutbox(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Close()
	for range 8 { // while the outbox drains: behind their keys, or sent at once when the key has none left
		send(p2, false)
	}
	testbroker.WaitFor(t, "the outbox to drain", func() bool { return p2.Outbox().Pending == 0 })
	if st := p2.Outbox(); st.Resent < 20 || st.Rejected != 0 {
		t.Fatalf("outbox after the outage: %+v", st)
	}

	// Every message at least once (a resend whose answer was lost may
	// repeat), each key's in send order.
	cons, err := cl.NewConsumer("ledger", []string{"payments"})
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	last := map[string]int{}
	seen := map[int]bool{}
	rctx, done := context.WithCancel(ctx)
	var bad error
	cons.Run(rctx, func(_ context.Context, m *sdk.Message) error {
		k, n, _ := strings.Cut(string(m.Body), ":")
		i, err := strconv.Atoi(n)
		switch {
		case err != nil || string(m.Key) != k:
			bad = fmt.Errorf("message %q with key %q", m.Body, m.Key)
		case seen[i]:
			return nil
		case last[k] > i:
			bad = fmt.Errorf("key %s: message %d consumed after %d", k, i, last[k])
		}
		seen[i], last[k] = true, i
		if bad != nil || len(seen) == seq {
			done()
		}
		return nil
	})
	done()
	if bad != nil {
		t.Fatal(bad)
	}
	for i := range seq {
		if !seen[i] {
			t.Fatalf("message %d was never delivered (%d of %d consumed)", i, len(seen), seq)
		}
	}
}
