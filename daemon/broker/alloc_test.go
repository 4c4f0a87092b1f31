package broker

import (
	"testing"

	"github.com/quivermq/quiver/sdk/wire"
)

// The produce path does not allocate per message: the call, the log's
// request and the record's bytes are pooled or written in place.
func TestProduceDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates; run without -race")
	}
	b := open(t, testOpts(t.TempDir()))
	defer b.Close()
	if werr := b.CreateTopic("t", 4); werr != nil {
		t.Fatal(werr)
	}
	done := make(chan struct{}, 1)
	reply := func(_ *ProduceCall, _ wire.ProduceAck, werr *wire.Error) {
		if werr != nil {
			t.Error(werr)
		}
		done <- struct{}{}
	}
	body := make([]byte, 1024)
	run := func() {
		c := NewProduceCall()
		c.In = wire.Produce{Topic: "t", Queue: wire.AnyQueue, Body: body}
		c.Reply = reply
		b.Produce(c)
		<-done
	}
	for i := 0; i < 100; i++ {
		run() // warm the pools
	}
	if n := testing.AllocsPerRun(200, run); n > 0 {
		t.Fatalf("a produce allocates %v times", n)
	}
}
