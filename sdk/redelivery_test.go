package sdk

import (
	"slices"
	"strconv"
	"testing"
	"time"
)

// A copy read back from the redelivery topic is the message that failed:
// its topic, queue and offset, the sender's headers only, its count of
// failed deliveries and its place in the redelivery queue (to commit);
// a message without the consumer's headers is handed over as it is.
func TestRestoreRedeliveredMessage(t *testing.T) {
	due := time.UnixMilli(time.Now().Add(time.Minute).UnixMilli())
	m := &Message{Topic: "__retry.billing", Queue: 2, Offset: 77, Body: []byte("b"), Headers: []Header{
		{Key: "trace", Value: []byte("t1")},
		{Key: HeaderOriginTopic, Value: []byte("orders")},
		{Key: HeaderOriginGroup, Value: []byte("g2")},
		{Key: HeaderOriginQueue, Value: []byte("3")},
		{Key: HeaderOriginOffset, Value: []byte("41")},
		{Key: HeaderAttempts, Value: []byte("2")},
		{Key: HeaderError, Value: []byte("boom")},
		{Key: HeaderDue, Value: strconv.AppendInt(nil, due.UnixMilli(), 10)},
	}}
	got, ok := restore(m)
	if !ok || !got.Equal(due) {
		t.Fatalf("restore: due %v ok %v, want %v", got, ok, due)
	}
	if m.Topic != "orders" || m.Group != "g2" || m.Queue != 3 || m.Offset != 41 || m.Redeliveries() != 2 || m.doneAt() != 78 ||
		len(m.Headers) != 1 || m.Headers[0].Key != "trace" {
		t.Fatalf("restored %+v (redeliveries %d, done at %d)", m, m.Redeliveries(), m.doneAt())
	}
	for _, bad := range [][]Header{
		nil, // a message some producer wrote to the topic
		{{Key: HeaderOriginTopic, Value: []byte("orders")}, {Key: HeaderOriginQueue, Value: []byte("x")},
			{Key: HeaderOriginOffset, Value: []byte("1")}, {Key: HeaderAttempts, Value: []byte("1")}},
		{{Key: HeaderOriginTopic, Value: []byte("orders")}, {Key: HeaderOriginQueue, Value: []byte("1")},
			{Key: HeaderOriginOffset, Value: []byte("1")}, {Key: HeaderAttempts, Value: []byte("0")}},
	} {
		m := &Message{Topic: "__retry.billing", Offset: 5, Headers: slices.Clone(bad)}
		if _, ok := restore(m); ok || m.Topic != "__retry.billing" || m.doneAt() != 6 || m.Redeliveries() != 0 {
			t.Fatalf("headers %v: restored as %+v", bad, m)
		}
	}
}

func TestRedeliveryOptions(t *testing.T) {
	for _, tc := range []struct {
		opt ConsumerOpt
		ok  bool
	}{
		{WithRedelivery(16), true},
		{WithRedelivery(3, time.Second, time.Minute), true},
		{WithRedelivery(0), false},
		{WithRedelivery(1001), false},
		{WithRedelivery(3, 0), false},
		{WithRedelivery(3, 25*time.Hour), false},
		{WithoutRedelivery(), true},
	} {
		cfg := consumerConfig{redeliver: true, maxRedeliveries: DefaultMaxRedeliveries, backoff: DefaultBackoff}
		tc.opt(&cfg)
		if err := cfg.validateRedelivery(); (err == nil) != tc.ok {
			t.Errorf("%+v: %v", cfg, err)
		}
	}
}
