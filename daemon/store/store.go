// Package store wires the broker's storage together: the I/O engine, the
// commit log and the indexes derived from it, opened and recovered in the
// right order, with the index checkpointed in the background.
package store

import (
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync"
	"time"

	"github.com/quivermq/quiver/index"
	"github.com/quivermq/quiver/internal/fsutil"
	"github.com/quivermq/quiver/ioengine"
	qlog "github.com/quivermq/quiver/log"
)

// Options configure a Store.
type Options struct {
	// Dir is the data directory: the log in Dir/log, indexes in Dir/index.
	Dir string
	// Engine is "auto" (default), "io_uring" or "portable".
	Engine string
	// Log holds the log's tuning; Dir, Engine, Dispatcher, FS and Logger are set by Open.
	Log qlog.Options
	// Index holds the indexes' file sizes; Dir, Reader, FS and Logger are set by Open.
	Index index.Options
	// IndexCheckpoint is how often the indexes are made durable (default
	// 1s) while few queues are written; with many, up to 10 times less
	// often (checkpointDue).
	IndexCheckpoint time.Duration
	// FS holds everything but the segments (checkpoints, indexes; the
	// broker's state files too): default fsutil.OS; crash tests pass a
	// fsutil.CrashFS that the engine's fault wrapper shares (CrashWith).
	FS fsutil.FS
	// WrapEngine, when set, wraps the I/O engine before the log uses it
	// (quiverd --debug-faults wraps it in an ioengine.Faulty).
	WrapEngine func(ioengine.Engine) ioengine.Engine
	// Notify, when set, is called on the log's flusher goroutine after each
	// batch of records is indexed (the records are then readable through
	// the index). It must not block: the broker uses it to wake
	// long-polling fetches.
	Notify func(recs []qlog.RecordInfo)
	Logger *slog.Logger
}

// notifier is the log's Dispatcher: the index, then Notify.
type notifier struct {
	*index.Index
	notify func(recs []qlog.RecordInfo)
}

func (n notifier) Dispatch(recs []qlog.RecordInfo) error {
	if err := n.Index.Dispatch(recs); err != nil {
		return err
	}
	n.notify(recs)
	return nil
}

// Store is an open log with its indexes.
type Store struct {
	Log   *qlog.Log
	Index *index.Index

	stop chan struct{}
	wg   sync.WaitGroup
}

// logReader lets the index read records from the log opened after it.
type logReader struct{ l *qlog.Log }

func (r *logReader) ReadRecord(pos int64, size int32, dst []byte) ([]byte, error) {
	if r.l == nil {
		return nil, errors.New("store: log not open yet")
	}
	return r.l.ReadRecord(pos, size, dst)
}

// Open opens (recovering if needed) the store in o.Dir.
func Open(o Options) (*Store, error) {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Engine == "" {
		o.Engine = "auto"
	}
	if o.FS == nil {
		o.FS = fsutil.OS
	}
	if o.IndexCheckpoint == 0 {
		o.IndexCheckpoint = time.Second
	}
	eng, err := ioengine.New(o.Engine, o.Logger)
	if err != nil {
		return nil, err
	}
	if o.WrapEngine != nil {
		eng = o.WrapEngine(eng)
	}
	rd := &logReader{}
	io := o.Index
	io.Dir, io.Logger, io.Reader, io.FS = filepath.Join(o.Dir, "index"), o.Logger, rd, o.FS
	idx, err := index.Open(io)
	if err != nil {
		eng.Close()
		return nil, fmt.Errorf("store: %w", err)
	}
	lo := o.Log
	lo.Dir = filepath.Join(o.Dir, "log")
	lo.Engine = eng
	lo.Dispatcher = idx
	if o.Notify != nil {
		lo.Dispatcher = notifier{idx, o.Notify}
	}
	lo.Logger = o.Logger
	lo.FS = o.FS
	l, err := qlog.Open(lo)
	if err != nil {
		idx.Close()
		eng.Close()
		return nil, err
	}
	rd.l = l
	// Retention may have moved the log's start while the index was closed.
	idx.DropBefore(l.Positions().Start)
	s := &Store{Log: l, Index: idx, stop: make(chan struct{})}
	s.wg.Add(1)
	go s.checkpointLoop(o.IndexCheckpoint, o.Logger)
	return s, nil
}

func (s *Store) checkpointLoop(every time.Duration, logger *slog.Logger) {
	defer s.wg.Done()
	t := time.NewTicker(every)
	defer t.Stop()
	var logged time.Time
	last := time.Now()
	for {
		select {
		case <-t.C:
			if queues, entries := s.Index.Pending(); !checkpointDue(queues, entries, time.Since(last), every) {
				continue
			}
			last = time.Now()
			// A failed fsync stops checkpoints for good and the index said
			// so once; others (a full disk) are retried, and logged at
			// most once a minute.
			if err := s.Index.Checkpoint(); err != nil && s.Index.CheckpointErr() == nil && time.Since(logged) >= time.Minute {
				logged = time.Now()
				logger.Warn("index checkpoint failed; retried every interval", "err", err)
			}
		case <-s.stop:
			return
		}
	}
}

// checkpointDue says whether an index checkpoint is due, since after the
// last one. A checkpoint writes a page of each queue written since the
// last one and syncs them: with thousands of queues each holding one or
// two new entries, that is thousands of random page writes for a few
// bytes each, and the disk that syncs the log does them. So with more
// than 256 such queues it waits until they hold 4 entries each on
// average, or 10 intervals have passed (what a restart replays from the
// log stays bounded: at most 10 intervals of sends).
func checkpointDue(queues, entries int, since, every time.Duration) bool {
	return queues <= 256 || entries >= 4*queues || since >= 10*every
}

// Close closes the log (committing what it accepted) and then the indexes.
func (s *Store) Close() error {
	close(s.stop)
	s.wg.Wait()
	err := s.Log.Close()
	if ierr := s.Index.Close(); err == nil {
		err = ierr
	}
	return err
}
