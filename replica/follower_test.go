package replica

import (
	"context"
	"runtime"
	"testing"
	"time"

	"github.com/quivermq/quiver/sdk/wire"
)

// A follower stopped while it takes a frame from the leader returns: on
// 2026-12-02 a follower catching up got SIGTERM together with its leader
// and never exited (make bench-replication hung on it): its frame reader
// had seen the stop and returned while the receive loop, holding a frame,
// waited forever to hand the reader its buffer back. Here the stop races
// with every frame taken, thousands of times.
func TestFollowerStopsWhileTakingFrames(t *testing.T) {
	f := NewFollower(FollowerOptions{ID: "f", LeaderAddr: "l:1", Timeout: time.Minute})
	// A frame of another epoch ends the session the moment it is taken.
	frame := (&wire.ReplData{Epoch: 2}).Append(nil)
	for i := 0; i < 20000; i++ {
		ctx, cancel := context.WithCancel(context.Background())
		read := func() (wire.Header, []byte, error) {
			go func() {
				runtime.Gosched()
				cancel() // the stop, while the frame is being taken
			}()
			return wire.Header{Type: wire.TypeReplData}, frame, nil
		}
		done := make(chan struct{})
		go func() {
			defer close(done)
			f.receive(ctx, read, wire.ReplHello{Epoch: 1}, make(chan struct{}, 1))
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: the follower did not return after its stop", i)
		}
		cancel()
	}
}
