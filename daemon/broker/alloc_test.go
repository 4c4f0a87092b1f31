package broker

import (
	"testing"

	"github.com/quivermq/quiver/index"
	"github.com/quivermq/quiver/sdk/wire"
)

// The produce path does not allocate per message: the call, the log's
// request and the record's bytes are pooled or written in place; an
// idempotent send's record in the producer's window reuses a forgotten one.
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
	for _, producer := range []uint64{0, 42} {
		seq := uint64(0)
		run := func() {
			seq++
			c := NewProduceCall()
			c.In = wire.Produce{Topic: "t", Queue: wire.AnyQueue, Body: body, ProducerID: producer, Seq: seq}
			c.Reply = reply
			b.Produce(c)
			<-done
		}
		for i := 0; i < index.ProducerWindow+index.ProducerWindow/4; i++ {
			run() // warm the pools and fill the producer's window
		}
		if n := testing.AllocsPerRun(200, run); n > 0 {
			t.Fatalf("producer id %d: a produce allocates %v times", producer, n)
		}
	}
}
