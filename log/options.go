package log

import (
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/quivermq/quiver/internal/fsutil"
	"github.com/quivermq/quiver/ioengine"
)

// Durability says when an append is acknowledged.
type Durability int

const (
	// Sync acknowledges an append only after its bytes are synced (default).
	Sync Durability = iota
	// Async acknowledges after the write; a sync follows within AsyncInterval.
	Async
)

func (d Durability) String() string {
	if d == Async {
		return "async"
	}
	return "sync"
}

// ParseDurability parses "sync" or "async".
func ParseDurability(s string) (Durability, error) {
	switch s {
	case "sync", "":
		return Sync, nil
	case "async":
		return Async, nil
	}
	return Sync, fmt.Errorf("log: unknown durability %q (want sync or async)", s)
}

// Options configure a Log. Zero values take the defaults of EnsureDefaults.
type Options struct {
	// Dir holds the segment files and the checkpoint.
	Dir string
	// Engine does the disk I/O. The log owns it from Open on and closes it.
	Engine ioengine.Engine
	// FS holds the checkpoint and creates the directory (default
	// fsutil.OS; crash tests pass a fsutil.CrashFS shared with the
	// engine's).
	FS fsutil.FS
	// SegmentSize is the size of each preallocated segment (default 1 GiB).
	// It must be a multiple of TailBytes.
	SegmentSize int64
	// Durability is the acknowledgement mode (default Sync).
	Durability Durability
	// AsyncInterval bounds how long an async append stays unsynced (default 100ms).
	AsyncInterval time.Duration
	// MaxBatchBytes bounds the bytes gathered into one group commit (default 4 MiB).
	MaxBatchBytes int
	// TailBytes is the in-memory ring that holds the most recent log bytes:
	// the write buffer of the flusher and the cache that serves caught-up
	// readers (default 64 MiB, a power of two).
	TailBytes int
	// QueueDepth bounds appends waiting for the flusher (default 8192), and
	// QueueBytes their encoded bytes (default 128 MiB). An append that
	// finds the queue full fails at once with a BusyError.
	QueueDepth int
	QueueBytes int
	// MaxQueueWait fails, with a BusyError, an append that has waited this
	// long in the queue without being taken into a commit (0: never; the
	// broker sets 200ms). See intake.go.
	MaxQueueWait time.Duration
	// QueueCheck is how often the head of the queue is checked against
	// MaxQueueWait (default 10ms).
	QueueCheck time.Duration
	// CheckpointInterval is how often the durable position is checkpointed
	// (default 1s). Recovery verifies records from the checkpoint on.
	CheckpointInterval time.Duration
	// RetentionAge deletes segments whose last write is older (0: keep).
	RetentionAge time.Duration
	// RetentionBytes deletes the oldest segments while the log is larger (0: no limit).
	RetentionBytes int64
	// RetentionHold, when set, is the oldest log position retention must
	// keep (-1: none): a segment that holds it or anything after it stays
	// (the broker's undelivered delayed messages).
	RetentionHold func() int64
	// RetentionCheck is how often retention runs (default 1 minute).
	RetentionCheck time.Duration
	// Truncate cuts the log back to TruncateTo (a record boundary) at open,
	// dropping every record after it: a follower whose log diverged from
	// its leader's (see replica/) does this before it follows.
	Truncate   bool
	TruncateTo int64
	// Repair truncates at the first bad record instead of refusing to open
	// (see recover.go); the operator asks for it with `quiverd repair`.
	Repair bool
	// ZeroAhead is how far ahead of the tail a background goroutine writes
	// zeros into the preallocated segment, so that syncs need no extent
	// conversion (default 16 MiB, at most half a segment; negative: off).
	ZeroAhead int64
	// Dispatcher receives every record once it is visible (see Dispatcher).
	Dispatcher Dispatcher
	// Logger receives the log's structured logs (default slog.Default()).
	Logger *slog.Logger
	// Now is the clock for store times (default time.Now).
	Now func() time.Time
}

// EnsureDefaults fills zero fields with defaults and returns o.
func (o *Options) EnsureDefaults() *Options {
	if o.FS == nil {
		o.FS = fsutil.OS
	}
	if o.SegmentSize == 0 {
		o.SegmentSize = 1 << 30
	}
	if o.AsyncInterval == 0 {
		o.AsyncInterval = 100 * time.Millisecond
	}
	if o.TailBytes == 0 {
		o.TailBytes = 64 << 20
		for int64(o.TailBytes) > o.SegmentSize && o.TailBytes > 1<<20 {
			o.TailBytes /= 2
		}
	}
	if o.MaxBatchBytes == 0 {
		o.MaxBatchBytes = 4 << 20
		if o.MaxBatchBytes > o.TailBytes/4 {
			o.MaxBatchBytes = o.TailBytes / 4
		}
	}
	if o.QueueDepth == 0 {
		o.QueueDepth = 8192
	}
	if o.QueueBytes == 0 {
		o.QueueBytes = 128 << 20
	}
	if o.QueueCheck == 0 {
		o.QueueCheck = 10 * time.Millisecond
	}
	if o.CheckpointInterval == 0 {
		o.CheckpointInterval = time.Second
	}
	if o.ZeroAhead == 0 {
		o.ZeroAhead = 16 << 20
	}
	if o.RetentionCheck == 0 {
		o.RetentionCheck = time.Minute
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// Validate reports the first invalid option.
func (o *Options) Validate() error {
	const page = ioengine.Alignment
	switch {
	case o.Dir == "":
		return errors.New("log: Options.Dir is empty")
	case o.Engine == nil:
		return errors.New("log: Options.Engine is nil")
	case o.TailBytes < 16*page || o.TailBytes&(o.TailBytes-1) != 0:
		return fmt.Errorf("log: TailBytes %d must be a power of two of at least %d", o.TailBytes, 16*page)
	case o.SegmentSize < int64(o.TailBytes) || o.SegmentSize%int64(o.TailBytes) != 0:
		return fmt.Errorf("log: SegmentSize %d must be a multiple of TailBytes %d", o.SegmentSize, o.TailBytes)
	case o.MaxBatchBytes < page || o.MaxBatchBytes > o.TailBytes/2-2*page:
		return fmt.Errorf("log: MaxBatchBytes %d must be between %d and half of TailBytes (%d) less two pages", o.MaxBatchBytes, page, o.TailBytes)
	case o.QueueDepth < 1 || o.QueueBytes < 1:
		return fmt.Errorf("log: QueueDepth %d and QueueBytes %d must be positive", o.QueueDepth, o.QueueBytes)
	case o.MaxQueueWait < 0 || o.QueueCheck < 0:
		return errors.New("log: negative MaxQueueWait or QueueCheck")
	case o.AsyncInterval < 0 || o.CheckpointInterval < 0 || o.RetentionAge < 0 || o.RetentionBytes < 0:
		return errors.New("log: negative interval or size")
	}
	return nil
}

// maxRecord is the largest record this log accepts. A record larger than
// MaxBatchBytes is committed alone, but a commit (at most MaxBatchBytes plus
// one record, plus the unused end of a sealed segment, up to one more
// record) must fit in the ring with the page it rewrites.
func (o *Options) maxRecord() int {
	m := MaxRecordSize
	if r := (o.TailBytes - 4*ioengine.Alignment - o.MaxBatchBytes) / 2; r < m {
		m = r
	}
	if int64(m) > o.SegmentSize-8 {
		m = int(o.SegmentSize - 8)
	}
	return m
}
