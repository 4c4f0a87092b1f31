package store

import (
	"bytes"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quivermq/quiver/internal/crashtest"
	"github.com/quivermq/quiver/ioengine"
	qlog "github.com/quivermq/quiver/log"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// The store crash test: a child process appends through the whole store
// (log + indexes) in sync mode and prints every acknowledgement; the parent
// kills it with SIGKILL at a random point, reopens the store, and checks
// that every acknowledged message is reachable through its queue index at
// the offset it was acknowledged with, intact, and that each queue's
// offsets are dense. In some rounds the index directory is deleted as well:
// indexes are derived data and must come back whole from the log.

const childEnv = "QUIVER_STORE_CRASH_CHILD"

func rounds() int { return crashtest.Rounds(8) }

func storeOpts(dir, backend string) Options {
	return Options{Dir: dir, Engine: backend, Logger: quiet, IndexCheckpoint: 20 * time.Millisecond,
		Log: qlog.Options{SegmentSize: 1 << 20, TailBytes: 256 << 10, MaxBatchBytes: 64 << 10,
			CheckpointInterval: 30 * time.Millisecond}}
}

func body(w, round, seq int) []byte {
	return []byte(strings.Repeat(fmt.Sprintf("w%d-r%d-s%d;", w, round, seq), 1+seq%25))
}

func TestStoreCrashChild(t *testing.T) {
	spec := os.Getenv(childEnv)
	if spec == "" {
		t.Skip("only runs as the store crash test's child")
	}
	p := strings.Split(spec, ",")
	round, _ := strconv.Atoi(p[2])
	s, err := Open(storeOpts(p[0], p[1]))
	if err != nil {
		fmt.Printf("open-error %v\n", err)
		os.Exit(3)
	}
	fmt.Println("ready")
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 6; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for seq := 0; ; seq++ {
				m := &qlog.Message{Topic: fmt.Sprintf("topic-%d", w%2), QueueID: uint32(w % 3),
					Key: []byte(fmt.Sprintf("k-%d-%d-%d", w, round, seq)), Body: body(w, round, seq)}
				res, err := s.Log.Append(m)
				if err != nil {
					fmt.Printf("append-error %v\n", err)
					os.Exit(4)
				}
				mu.Lock()
				fmt.Printf("ack %d %d %s %d %d\n", w, seq, m.Topic, m.QueueID, res.QueueOffset)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
}

type ack struct {
	w, round, seq int
	topic         string
	queue         uint32
	off           uint64
}

func TestStoreCrashSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("kills child processes")
	}
	for _, backend := range ioengine.Backends() {
		t.Run(backend, func(t *testing.T) {
			dir := t.TempDir()
			rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 3))
			var acks []ack
			for round := 0; round < rounds(); round++ {
				env := fmt.Sprintf("%s=%s,%s,%d", childEnv, dir, backend, round)
				crashtest.KillAfter(t, "TestStoreCrashChild", []string{env}, 20+rng.IntN(1500), func(line string) error {
					a := ack{round: round}
					if _, err := fmt.Sscanf(line, "ack %d %d %s %d %d", &a.w, &a.seq, &a.topic, &a.queue, &a.off); err != nil {
						return fmt.Errorf("round %d: child said %q", round, line)
					}
					acks = append(acks, a)
					return nil
				})
				if round%3 == 2 {
					// Derived data: losing it must lose nothing.
					if err := os.RemoveAll(filepath.Join(dir, "index")); err != nil {
						t.Fatal(err)
					}
				}
				verify(t, dir, backend, acks)
			}
			t.Logf("%s: %d rounds, %d acknowledged messages found through the index", backend, rounds(), len(acks))
		})
	}
}

func verify(t *testing.T, dir, backend string, acks []ack) {
	t.Helper()
	s, err := Open(storeOpts(dir, backend))
	if err != nil {
		t.Fatalf("reopen after SIGKILL: %v", err)
	}
	defer s.Close()
	var r qlog.Record
	for _, a := range acks {
		e, err := s.Index.Lookup(a.topic, a.queue, a.off)
		if err != nil {
			t.Fatalf("acknowledged %s/%d offset %d (w%d r%d s%d) not in the index: %v", a.topic, a.queue, a.off, a.w, a.round, a.seq, err)
		}
		if _, err := s.Log.Read(e.Pos, nil, &r); err != nil {
			t.Fatalf("index entry for %s/%d offset %d points at an unreadable record: %v", a.topic, a.queue, a.off, err)
		}
		if !bytes.Equal(r.Body, body(a.w, a.round, a.seq)) || r.QueueOffset != a.off {
			t.Fatalf("%s/%d offset %d holds another message after recovery", a.topic, a.queue, a.off)
		}
	}
	// Every queue's offsets are dense from its minimum and the index agrees
	// with the log about where each queue ends.
	next := map[string]uint64{}
	if err := s.Log.Scan(0, func(pos int64, r *qlog.Record) error {
		k := fmt.Sprintf("%s/%d", r.Topic, r.QueueID)
		if r.QueueOffset != next[k] {
			return fmt.Errorf("queue %s: offset %d, want %d", k, r.QueueOffset, next[k])
		}
		next[k] = r.QueueOffset + uint64(r.Count)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, q := range s.Index.Queues() {
		k := fmt.Sprintf("%s/%d", q.Topic, q.Queue)
		if q.Max != next[k] {
			t.Fatalf("index says queue %s ends at %d, the log at %d", k, q.Max, next[k])
		}
	}
}
