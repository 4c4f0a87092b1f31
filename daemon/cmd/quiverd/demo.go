package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/spf13/cobra"

	"github.com/quivermq/quiver/daemon/store"
	"github.com/quivermq/quiver/index"
	qlog "github.com/quivermq/quiver/log"
)

func demoCmd() *cobra.Command {
	var dir, engine string
	var count, appenders int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Append, index and read back messages with the storage core",
		Long: `demo opens (or recovers) the store in --data, appends --count messages to
two topics from --appenders concurrent appenders in sync mode (each append
acknowledged only after fdatasync), reads some back through the queue index
and by key, and prints the log's positions and every queue's offsets.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if count < 1 || appenders < 1 {
				return fmt.Errorf("--count and --appenders must be at least 1")
			}
			return runDemo(dir, engine, count, appenders)
		},
	}
	cmd.Flags().StringVar(&dir, "data", "./quiver-data", "data directory")
	cmd.Flags().StringVar(&engine, "engine", "auto", "I/O backend: auto, io_uring or portable")
	cmd.Flags().IntVar(&count, "count", 4000, "messages to append")
	cmd.Flags().IntVar(&appenders, "appenders", 16, "concurrent appenders")
	return cmd
}

func runDemo(dir, engine string, count, appenders int) error {
	logger := newLogger()
	s, err := store.Open(store.Options{Dir: dir, Engine: engine, Logger: logger,
		Log: qlog.Options{SegmentSize: 64 << 20}})
	if err != nil {
		return err
	}
	defer s.Close()
	fmt.Printf("store open in %s, engine %s, durability %s\n", dir, s.Log.EngineName(), s.Log.Durability())

	topics := []struct {
		name   string
		queues uint32
	}{{"orders", 4}, {"payments", 2}}
	start := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, appenders)
	var lastKey, lastTopic string
	var mu sync.Mutex
	for a := 0; a < appenders; a++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := a; i < count; i += appenders {
				t := topics[i%2]
				key := fmt.Sprintf("%s-%d-%d", t.name, start.Unix(), i)
				m := &qlog.Message{Topic: t.name, QueueID: uint32(i/2) % t.queues, Key: []byte(key),
					Body:       []byte(fmt.Sprintf(`{"n":%d,"at":%q}`, i, time.Now().Format(time.RFC3339Nano))),
					ClientTime: time.Now().UnixNano()}
				if _, err := s.Log.Append(m); err != nil {
					errs <- err
					return
				}
				if i == count-1 {
					mu.Lock()
					lastKey, lastTopic = key, t.name
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		return err
	}
	took := time.Since(start)
	fmt.Printf("appended %d messages in %v (%.0f msgs/s), every one synced before its acknowledgement\n",
		count, took.Round(time.Millisecond), float64(count)/took.Seconds())

	// Read back the newest messages of orders/0 through the consume queue.
	if b, ok := s.Index.Bounds("orders", 0); ok && b.Max > b.Min {
		from := b.Max - min(3, b.Max-b.Min)
		ents, err := s.Index.Read("orders", 0, from, make([]index.Entry, 0, 3))
		if err != nil {
			return err
		}
		for i, e := range ents {
			var r qlog.Record
			if _, err := s.Log.Read(e.Pos, nil, &r); err != nil {
				return err
			}
			fmt.Printf("orders/0 offset %d -> %s\n", from+uint64(i), r.Body)
		}
	}
	// And the last message by its key.
	hits, err := s.Index.LookupKey(lastTopic, []byte(lastKey), 1)
	if err != nil {
		return err
	}
	if len(hits) != 1 {
		return fmt.Errorf("key %q not found in the key index", lastKey)
	}
	fmt.Printf("key %s -> %s/%d offset %d at log position %d\n", lastKey, lastTopic, hits[0].Queue, hits[0].QueueOffset, hits[0].Pos)

	p := s.Log.Positions()
	out := map[string]any{"positions": p, "queues": s.Index.Queues()}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}
