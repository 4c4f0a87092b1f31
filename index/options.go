package index

import (
	"errors"
	"log/slog"
	"time"

	"github.com/quivermq/quiver/internal/fsutil"
	qlog "github.com/quivermq/quiver/log"
)

// RecordReader reads record bytes from the log, for verifying key hits.
type RecordReader interface {
	ReadRecord(pos int64, size int32, dst []byte) ([]byte, error)
}

// Options configure an Index.
type Options struct {
	Dir string
	// EntriesPerFile is the number of entries in each consume-queue file
	// (default 1<<20: 32 MiB files).
	EntriesPerFile int
	// KeySlots and KeyEntries size each key-index file (defaults 1<<20 and
	// 1<<20: about 44 MiB per file).
	KeySlots   int
	KeyEntries int
	// Reader reads records from the log to verify key hits.
	Reader RecordReader
	Logger *slog.Logger
	// FS is where the files are (default fsutil.OS; crash tests pass a
	// fsutil.CrashFS, others one whose fsyncs fail).
	FS fsutil.FS
	// ProducerSnapshotEvery is how often, at most, an index checkpoint
	// writes the producer table (default 10s; producers.go).
	ProducerSnapshotEvery time.Duration
	// MaxOpenFiles bounds the consume-queue files kept open (default
	// DefaultMaxOpenFiles): beyond it the least recently used are closed,
	// and opened again when read or written (filecache.go).
	MaxOpenFiles int
	// MaxBufferedEntries bounds the consume-queue entries kept in memory
	// between checkpoints (default 1<<20: 32 MiB); past it Dispatch
	// writes them out itself.
	MaxBufferedEntries int
	// PartialCheckpointEvery is how often a long checkpoint (thousands of
	// queues written out) records how far it got (default 1s).
	PartialCheckpointEvery time.Duration
	// DeletedTopic, when set, recognises a record that deletes a topic
	// (the broker's control record) and returns the topic's name: Dispatch
	// then drops the topic's queues and removes their files, in log order,
	// so that its records before the deletion are not readable again
	// (replays included) and its records after it start new queues.
	DeletedTopic func(ri *qlog.RecordInfo) (topic []byte, ok bool)
}

// DefaultMaxOpenFiles is the default Options.MaxOpenFiles: far below
// common limits (a soft limit of 1,024 is common, and quiverd raises it to
// the hard one), and more than the files a broker's active queues use.
const DefaultMaxOpenFiles = 4096

// EnsureDefaults fills zero fields.
func (o *Options) EnsureDefaults() *Options {
	if o.FS == nil {
		o.FS = fsutil.OS
	}
	if o.EntriesPerFile == 0 {
		o.EntriesPerFile = 1 << 20
	}
	if o.KeySlots == 0 {
		o.KeySlots = 1 << 20
	}
	if o.KeyEntries == 0 {
		o.KeyEntries = 1 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.MaxOpenFiles == 0 {
		o.MaxOpenFiles = DefaultMaxOpenFiles
	}
	if o.MaxBufferedEntries == 0 {
		o.MaxBufferedEntries = 1 << 20
	}
	if o.PartialCheckpointEvery == 0 {
		o.PartialCheckpointEvery = time.Second
	}
	if o.ProducerSnapshotEvery == 0 {
		o.ProducerSnapshotEvery = 10 * time.Second
	}
	return o
}

// Validate reports the first invalid option.
func (o *Options) Validate() error {
	switch {
	case o.Dir == "":
		return errors.New("index: Options.Dir is empty")
	case o.EntriesPerFile < 1 || o.KeySlots < 1 || o.KeyEntries < 1:
		return errors.New("index: sizes must be positive")
	case o.MaxOpenFiles < 16:
		return errors.New("index: MaxOpenFiles must be at least 16")
	}
	return nil
}
