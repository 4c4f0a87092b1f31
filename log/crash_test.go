package log

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/crashtest"
)

// The crash test: a child process appends in sync mode from several
// goroutines and prints every acknowledgement; the parent kills it with
// SIGKILL at a random moment, reopens the log, and checks that every
// acknowledged record is there and intact, that every record decodes, and
// that queue offsets are dense. Then it does it again on the same directory.

const crashChildEnv = "QUIVER_LOG_CRASH_CHILD"

// crashRounds is the number of kill/recover rounds per backend; `make crash`
// raises it with QUIVER_CRASH_ROUNDS.
func crashRounds() int { return crashtest.Rounds(12) }

func crashBody(writer, round, seq int) []byte {
	return bytes.Repeat([]byte(fmt.Sprintf("w%d-r%d-s%d|", writer, round, seq)), 1+seq%40)
}

func crashOpts(dir string, backend string, mode Durability, t testing.TB) Options {
	return Options{Dir: dir, Engine: newEngine(t, backend), SegmentSize: 1 << 20, TailBytes: 256 << 10,
		MaxBatchBytes: 64 << 10, Logger: quiet, CheckpointInterval: 50 * time.Millisecond,
		Durability: mode, AsyncInterval: 5 * time.Millisecond}
}

// TestCrashChild is the child process; it does nothing in a normal run.
func TestCrashChild(t *testing.T) {
	spec := os.Getenv(crashChildEnv)
	if spec == "" {
		t.Skip("only runs as the crash test's child")
	}
	parts := strings.Split(spec, ",")
	dir, backend := parts[0], parts[1]
	round, _ := strconv.Atoi(parts[2])
	mode, _ := ParseDurability(parts[3])
	l, err := Open(crashOpts(dir, backend, mode, t))
	if err != nil {
		fmt.Printf("open-error %v\n", err)
		os.Exit(3)
	}
	var mu sync.Mutex
	fmt.Println("ready")
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ; seq++ {
				m := &Message{Topic: fmt.Sprintf("t%d", w%2), QueueID: uint32(w % 3), Body: crashBody(w, round, seq)}
				res, err := l.Append(m)
				if err != nil {
					fmt.Printf("append-error %v\n", err)
					os.Exit(4)
				}
				mu.Lock()
				// The durable position as of this acknowledgement: in sync
				// mode it covers the record; in async mode it may not yet.
				fmt.Fprintf(os.Stdout, "ack %d %d %d %d %d %d\n", w, seq, res.Pos, res.Size, res.QueueOffset, l.Positions().Durable)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

type crashAck struct {
	writer, round, seq int
	pos                int64
	size               int32
	qoff               uint64
	durable            int64 // the log's durable position when it was printed
}

func TestCrashSIGKILL(t *testing.T) { crashTest(t, Sync) }

// In async mode an acknowledged append may be lost if it was not yet
// synced, but every record the log had reported durable must survive, and
// nothing may come back corrupt or with a gap in its queue's offsets.
func TestCrashSIGKILLAsync(t *testing.T) { crashTest(t, Async) }

func crashTest(t *testing.T, mode Durability) {
	if testing.Short() {
		t.Skip("kills child processes")
	}
	forEachBackend(t, func(t *testing.T, backend string) {
		dir := t.TempDir()
		var kept []crashAck // acknowledgements that must survive every later crash
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 7))
		for round := 0; round < crashRounds(); round++ {
			var acks []crashAck
			durable := int64(0)
			// Kill after a random number of acknowledgements, so that the
			// kill lands at a random point of the group-commit cycle.
			env := fmt.Sprintf("%s=%s,%s,%d,%s", crashChildEnv, dir, backend, round, mode)
			crashtest.KillAfter(t, "TestCrashChild", []string{env}, 50+rng.IntN(3000), func(line string) error {
				a := crashAck{round: round}
				if _, err := fmt.Sscanf(line, "ack %d %d %d %d %d %d", &a.writer, &a.seq, &a.pos, &a.size, &a.qoff, &a.durable); err != nil {
					return fmt.Errorf("round %d: child said %q", round, line)
				}
				if mode == Sync && a.durable < a.pos+int64(a.size) {
					return fmt.Errorf("sync append acknowledged at %d before durable (durable %d)", a.pos, a.durable)
				}
				durable = max(durable, a.durable)
				acks = append(acks, a)
				return nil
			})
			for _, a := range acks {
				if a.pos+int64(a.size) <= durable {
					kept = append(kept, a)
				}
			}
			if mode == Sync && len(kept) == 0 {
				t.Fatal("no acknowledgement to check")
			}
			verifyAfterCrash(t, dir, backend, mode, kept)
		}
		t.Logf("%s %s: %d rounds, %d durable acknowledged records verified", backend, mode, crashRounds(), len(kept))
	})
}

func verifyAfterCrash(t *testing.T, dir, backend string, mode Durability, acks []crashAck) {
	t.Helper()
	l, err := Open(crashOpts(dir, backend, mode, t))
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer l.Close()
	var r Record
	for _, a := range acks {
		if _, err := l.Read(a.pos, nil, &r); err != nil {
			t.Fatalf("acknowledged record w%d r%d s%d at %d lost: %v", a.writer, a.round, a.seq, a.pos, err)
		}
		if !bytes.Equal(r.Body, crashBody(a.writer, a.round, a.seq)) || r.QueueOffset != a.qoff {
			t.Fatalf("acknowledged record w%d r%d s%d at %d differs after recovery", a.writer, a.round, a.seq, a.pos)
		}
	}
	next := map[string]uint64{}
	if err := l.Scan(0, func(pos int64, r *Record) error {
		k := fmt.Sprintf("%s/%d", r.Topic, r.QueueID)
		if r.QueueOffset != next[k] {
			return fmt.Errorf("queue %s: offset %d at %d, want %d (not dense)", k, r.QueueOffset, pos, next[k])
		}
		next[k] = r.QueueOffset + uint64(r.Count)
		return nil
	}); err != nil {
		t.Fatalf("after recovery: %v", err)
	}
}
