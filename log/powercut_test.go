package log

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/crashtest"
	"github.com/quivermq/quiver/ioengine"
)

// The power-cut property. Writers append concurrently (small segments, so
// commits overlap and roll; sync mode in even rounds, async with a random
// interval in odd ones, where many writes wait for their sync); at a
// random moment the power
// fails: every write not yet synced is kept, dropped or torn at a random
// sector, independently (the fault engine's PowerCut). Then the log must
// open (a power cut never leaves a state recovery may refuse), hold every
// acknowledged record as it was sent, and serve nothing else but whole
// records that some writer appended.
func TestPowerCutLosesNoAck(t *testing.T) {
	rounds := crashtest.PowerCuts(t, 12)
	base := uint64(rand.Int64())
	var total PowerCutTotals
	for r := 0; r < rounds; r++ {
		seed := base + uint64(r)
		t.Run(fmt.Sprintf("seed=%d", seed), func(t *testing.T) {
			total.add(powerCutRound(t, seed))
		})
		if t.Failed() {
			break
		}
	}
	t.Logf("%d power cuts: %d acknowledged records verified; unsynced writes kept %d, dropped %d, torn %d; %d file creations or removals undone; %d unacknowledged records found whole after recovery",
		rounds, total.acked, total.cut.Kept, total.cut.Dropped, total.cut.Torn, total.cut.NamesLost, total.extra)
}

// PowerCutTotals sums what the rounds did.
type PowerCutTotals struct {
	acked, extra int
	cut          ioengine.PowerCutStats
}

func (p *PowerCutTotals) add(q PowerCutTotals) {
	p.acked += q.acked
	p.extra += q.extra
	p.cut.Add(q.cut)
}

func powerCutRound(t *testing.T, seed uint64) PowerCutTotals {
	rng := rand.New(rand.NewPCG(seed, seed>>1|1))
	dir := t.TempDir()
	backends := ioengine.Backends()
	backend := backends[int(seed/2)%len(backends)]
	t.Logf("backend %s", backend)
	faulty := ioengine.NewFaulty(newEngine(t, backend))
	faulty.Crashable()
	o := smallOpts(dir, faulty)
	// Retention runs all along (so segments are removed, sometimes out of
	// order: a reader below holds older ones), and its removals may be
	// undone by the cut.
	o.RetentionBytes = 3 * o.SegmentSize
	o.RetentionCheck = 5 * time.Millisecond
	async := seed%2 == 1 // acknowledged before the sync: only what was durable must survive
	if async {
		o.Durability = Async
		o.AsyncInterval = time.Duration(5+rng.IntN(50)) * time.Millisecond
	}
	l := openLog(t, o)

	const writers = 4
	cutAfter := 50 + rng.IntN(1500) // acknowledged appends before the cut
	var mu sync.Mutex
	acked := map[int]AppendResult{}
	cut := make(chan struct{})
	var once sync.Once
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; ; i += writers {
				res, err := l.Append(testMessage(i))
				if err != nil {
					if !errors.Is(err, ErrFailed) {
						t.Errorf("append %d: %v", i, err)
					}
					return
				}
				mu.Lock()
				acked[i] = res
				n := len(acked)
				mu.Unlock()
				if n >= cutAfter {
					once.Do(func() { close(cut) })
				}
			}
		}()
	}
	// A reader holding segments now and then.
	rdone := make(chan struct{})
	go func() {
		defer close(rdone)
		var r Record
		for {
			select {
			case <-cut:
				return
			default:
			}
			mu.Lock()
			var pos int64 = -1
			for _, res := range acked { // a random one (map order)
				pos = res.Pos
				break
			}
			mu.Unlock()
			if pos >= 0 {
				l.Read(pos, nil, &r) // may be gone to retention: fine
			}
		}
	}()
	<-cut
	<-rdone
	durable := l.Positions().Durable // at least this much survives
	st, err := faulty.PowerCut(rng)
	if err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	l.Close() // fails: the disk is gone

	l, err = Open(smallOpts(dir, newEngine(t, backend)))
	if err != nil {
		t.Fatalf("recovery refused the state a power cut left (cut kept %d, dropped %d, tore %d unsynced writes): %v",
			st.Kept, st.Dropped, st.Torn, err)
	}
	defer l.Close()
	mu.Lock()
	defer mu.Unlock()
	verified := 0
	start := l.Positions().Start
	for i, res := range acked {
		if async && res.Pos+int64(res.Size) > durable {
			continue // acknowledged, not yet synced: async may lose it
		}
		if res.Pos < start {
			continue // deleted by retention
		}
		checkRecord(t, l, res, testMessage(i))
		verified++
	}
	// Everything served is a whole record some writer appended: its key
	// names it, and it is exactly that message.
	extra := 0
	ackedAt := map[int64]bool{}
	for _, res := range acked {
		ackedAt[res.Pos] = true
	}
	err = l.Scan(0, func(pos int64, r *Record) error {
		var i int
		if _, err := fmt.Sscanf(string(r.Key), "key-%d", &i); err != nil {
			return fmt.Errorf("record at %d has key %q", pos, r.Key)
		}
		m := testMessage(i)
		if string(r.Topic) != m.Topic || r.QueueID != m.QueueID || !bytes.Equal(r.Body, m.Body) || !bytes.Equal(r.Headers, m.Headers) {
			return fmt.Errorf("record at %d (key %q) is not what was appended", pos, r.Key)
		}
		if !ackedAt[pos] {
			extra++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return PowerCutTotals{acked: verified, extra: extra, cut: st}
}
