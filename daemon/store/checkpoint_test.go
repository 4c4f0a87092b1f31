package store

import (
	"testing"
	"time"
)

// Index checkpoints come every interval while few queues wait to be
// written; with thousands, each holding a new entry or two, they wait
// until the queues hold 4 each on average, or 10 intervals.
func TestCheckpointPacing(t *testing.T) {
	for _, c := range []struct {
		queues, entries int
		since           time.Duration
		due             bool
	}{
		{0, 0, time.Second, true},
		{40, 12_000, time.Second, true},
		{256, 256, time.Second, true},
		{20_000, 20_000, time.Second, false},
		{20_000, 79_999, 9 * time.Second, false},
		{20_000, 80_000, 2 * time.Second, true},
		{20_000, 20_000, 10 * time.Second, true},
	} {
		if got := checkpointDue(c.queues, c.entries, c.since, time.Second); got != c.due {
			t.Errorf("%d queues with %d entries, %v since the last: due %v, want %v", c.queues, c.entries, c.since, got, c.due)
		}
	}
}
