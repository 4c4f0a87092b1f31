package broker

import (
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quivermq/quiver/daemon/store"
	"github.com/quivermq/quiver/internal/fsutil"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/replica"
	"github.com/quivermq/quiver/sdk/wire"
)

// Options configure a Broker.
type Options struct {
	// ID names the broker in responses and status (default "quiverd").
	ID string
	// Dir is the data directory (the store is opened in it).
	Dir string
	// Store holds the storage options; Dir, Notify and Logger are set by New.
	Store store.Options
	// NoAutoCreate turns off creating a topic on its first produce (on by
	// default, with DefaultQueues queues).
	NoAutoCreate bool
	// DefaultQueues is the queue count of auto-created topics (default 4).
	DefaultQueues int
	// MaxTopics is how many topics the broker holds at most (default and
	// at most wire.MaxTopics): creations past it are refused.
	MaxTopics int
	// MaxFetchWait caps a fetch's long poll (default 30s).
	MaxFetchWait time.Duration
	// LagWarn is how long written data may stay invisible to consumers (or,
	// in async mode, unsynced past twice the async interval) before status
	// reports a warning (default 1s; incident 003).
	LagWarn time.Duration
	// SnapshotEvery is how often the control tables are snapshotted (default 10s).
	SnapshotEvery time.Duration
	Logger        *slog.Logger
	// Now is the clock for group sessions (default time.Now).
	Now func() time.Time
	// Replication configures the broker's role in its group (replication.go).
	Replication ReplicationOptions
	// Cluster says how the broker learns the other groups (cluster.go).
	Cluster ClusterOptions
	// Disk sets the free-space watermark (disk.go).
	Disk DiskOptions
}

func (o *Options) ensureDefaults() {
	if o.Store.FS == nil {
		o.Store.FS = fsutil.OS
	}
	if o.ID == "" {
		o.ID = "quiverd"
	}
	if o.DefaultQueues == 0 {
		o.DefaultQueues = 4
	}
	if o.MaxFetchWait == 0 {
		o.MaxFetchWait = 30 * time.Second
	}
	if o.LagWarn == 0 {
		o.LagWarn = time.Second
	}
	if o.SnapshotEvery == 0 {
		o.SnapshotEvery = 10 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
}

func (o *Options) validate() error {
	switch {
	case o.Dir == "":
		return errors.New("broker: Options.Dir is empty")
	case o.DefaultQueues < 1 || o.DefaultQueues > wire.MaxQueues:
		return fmt.Errorf("broker: default queues %d (1..%d)", o.DefaultQueues, wire.MaxQueues)
	case o.MaxFetchWait < 0 || o.LagWarn < 0 || o.SnapshotEvery < 0:
		return errors.New("broker: negative duration")
	}
	return nil
}

// Reserved topics: control records live here.
const (
	reservedPrefix = "__"
	topicsTopic    = "__topics"
	offsetsTopic   = "__offsets"
)

// Broker is one broker's state over its store.
type Broker struct {
	opts   Options
	logger *slog.Logger
	// stMu guards st and log, which a follower replaces when it truncates
	// its log to follow a new leader. Readers hold it shared only while
	// they use them, never while they wait.
	stMu  sync.RWMutex
	dedup *dedup   // idempotent sends (dedup.go)
	delay *delayer // delayed delivery (delay.go)
	st    *store.Store
	log   *qlog.Log
	disk  *diskWatch
	start time.Time

	topics struct {
		sync.RWMutex
		m map[string]*topic
	}
	// creating holds the topics whose creation is in flight (their control
	// record being stored): a second creation of one waits for the first;
	// creations of different topics go on at once, and the log's group
	// commit syncs them together.
	createMu sync.Mutex
	creating map[string]chan struct{}
	ctl      *control
	groups   *coordinator
	waiters  waiters
	metrics  *metrics
	repl     replication
	cluster  cluster

	stop   chan struct{}
	bg     sync.WaitGroup
	closed atomic.Bool
}

type topic struct {
	name   string
	queues uint32
	rr     atomic.Uint32 // round-robin queue choice
	// gate orders sends before the topic's deletion: a send holds it (read)
	// while its record is handed to the log, a deletion (write) while its
	// record is, so no send of the topic lands after the deletion record.
	gate    sync.RWMutex
	deleted bool // guarded by gate
}

// ErrClosed is returned after Close.
var ErrClosed = errors.New("broker: closed")

// New opens the store in o.Dir (recovering it) and loads the broker's
// tables from the snapshot and the log.
func New(o Options) (*Broker, error) {
	o.ensureDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	b := &Broker{opts: o, logger: o.Logger.With("component", "broker"), start: time.Now(), stop: make(chan struct{})}
	b.dedup = newDedup(b.storedSend)
	b.delay = newDelayer(b)
	b.topics.m = map[string]*topic{}
	b.waiters.m = map[waitKey][]chan struct{}{}
	b.metrics = newMetrics(b)
	b.ctl = newControl(b)
	b.groups = newCoordinator(b)

	if err := b.openStore(false, 0); err != nil {
		return nil, err
	}
	b.opts.Disk.ensureDefaults(o.Dir, b.log.SegmentSize())
	b.disk = newDiskWatch(b.opts.Disk)
	b.disk.measure(b) // a broker restarted on a full disk refuses sends from the start
	if b.ctl.hasGroups() {
		// Restarted with consumer groups: their members, still running,
		// report the queues they hold at their next heartbeat; until then
		// none is handed to another member (coordinatorGrace).
		b.repl.grace.Store(o.Now().Add(coordinatorGrace).UnixNano())
	}
	if err := b.startReplication(); err != nil {
		b.st.Close()
		return nil, err
	}
	b.startCluster()
	b.bg.Add(4)
	go func() {
		defer b.bg.Done()
		b.delay.run(b.stop)
	}()
	go b.ctl.snapshotLoop()
	go func() {
		defer b.bg.Done()
		b.groups.watchStalls(b.stop)
	}()
	go func() {
		defer b.bg.Done()
		b.disk.watch(b, b.stop)
	}()
	return b, nil
}

// openStore opens (or, truncating, reopens) the store and loads the
// broker's tables from it. The caller holds stMu or is New.
func (b *Broker) openStore(truncate bool, to int64) error {
	so := b.opts.Store
	so.Dir = b.opts.Dir
	so.Logger = b.opts.Logger
	so.Notify = b.dispatched
	so.Index.DeletedTopic = DeletedTopic
	so.Log.RetentionHold = b.delay.Hold
	so.Log.Truncate, so.Log.TruncateTo = truncate, to
	st, err := store.Open(so)
	if err != nil {
		return err
	}
	b.st, b.log = st, st.Log
	if truncate {
		// Topics and offsets past the cut are gone with it.
		b.topics.Lock()
		b.topics.m = map[string]*topic{}
		b.topics.Unlock()
		b.ctl.reset() // in place: the snapshot loop and dispatched hold this one
	}
	if err := b.ctl.loadLocked(); err != nil {
		st.Close()
		return err
	}
	return nil
}

// dispatched runs on the log's flusher after each indexed batch: it wakes
// the fetches waiting on those queues and the applier for control records.
func (b *Broker) dispatched(recs []qlog.RecordInfo) {
	b.waiters.wake(recs)
	b.notifyFollowers()
	for i := range recs {
		if recs[i].Flags&qlog.FlagControl != 0 {
			b.ctl.kick()
			return
		}
	}
}

// Log is the broker's commit log (for positions and tests).
func (b *Broker) Log() *qlog.Log {
	b.stMu.RLock()
	defer b.stMu.RUnlock()
	return b.log
}

// ID is the broker's id.
func (b *Broker) ID() string { return b.opts.ID }

// Close stops the broker's background work and closes the store, which
// commits and syncs every append it accepted.
func (b *Broker) Close() error {
	if b.closed.Swap(true) {
		return ErrClosed
	}
	close(b.stop)
	b.stopCluster()
	b.stopReplication()
	b.bg.Wait()
	b.waiters.wakeAll()
	serr := b.ctl.snapshot()
	b.stMu.Lock()
	defer b.stMu.Unlock()
	err := b.st.Close()
	if err == nil && serr != nil {
		err = serr
	}
	return err
}

// topic returns the topic, or nil.
func (b *Broker) topic(name string) *topic {
	b.topics.RLock()
	defer b.topics.RUnlock()
	return b.topics.m[name]
}

// validTopic reports whether a client may name the topic.
func validTopic(name string) *wire.Error {
	if err := wire.ValidName("topic", name); err != nil {
		return &wire.Error{Code: wire.CodeInvalid, Message: err.Error()}
	}
	if hidden(name) {
		return &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("topic %q: names starting with %q are reserved (but a consumer group's %sG and %sG)",
			name, reservedPrefix, wire.RetryTopicPrefix, wire.DeadLetterTopicPrefix)}
	}
	return nil
}

// hidden reports a topic of the broker's own (reserved names but a
// consumer group's redelivery and dead-letter topics): clients cannot
// write it, and lists leave it out.
func hidden(name string) bool {
	if !strings.HasPrefix(name, reservedPrefix) {
		return false
	}
	_, ok := wire.GroupTopic(name)
	return !ok
}

// validGroup checks a consumer group's name.
func validGroup(name string) *wire.Error {
	if err := wire.ValidName("group", name); err != nil {
		return &wire.Error{Code: wire.CodeInvalid, Message: err.Error()}
	}
	return nil
}

// CreateTopic creates a topic with the given queue count. Creating an
// existing topic with the same count succeeds; with another count fails.
func (b *Broker) CreateTopic(name string, queues uint32) *wire.Error {
	if werr := validTopic(name); werr != nil {
		return werr
	}
	if queues == 0 || queues > wire.MaxQueues {
		return &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("queues %d (1..%d)", queues, wire.MaxQueues)}
	}
	if werr := b.writable(); werr != nil {
		return werr
	}
	_, werr := b.ensureTopic(name, queues, true)
	return werr
}

// ensureTopic returns the topic, creating it (a control record, synced)
// when it does not exist. exact: an existing topic must have queues.
func (b *Broker) ensureTopic(name string, queues uint32, exact bool) (*topic, *wire.Error) {
	if t := b.topic(name); t != nil {
		if exact && t.queues != queues {
			return nil, &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("topic %s exists with %d queues", name, t.queues)}
		}
		return t, nil
	}
	b.createMu.Lock()
	if wait, ok := b.creating[name]; ok {
		b.createMu.Unlock()
		<-wait // being created: use it, or try again if that failed
		return b.ensureTopic(name, queues, exact)
	}
	if t := b.topic(name); t != nil { // created meanwhile
		b.createMu.Unlock()
		return b.ensureTopic(name, queues, exact)
	}
	b.topics.RLock()
	held := len(b.topics.m)
	b.topics.RUnlock()
	if max := b.maxTopics(); held+len(b.creating) >= max {
		b.createMu.Unlock()
		return nil, &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("topic %s: the broker holds %d topics, the most it can (%d; quiver topic delete frees names)", name, held, max)}
	}
	if b.creating == nil {
		b.creating = map[string]chan struct{}{}
	}
	done := make(chan struct{})
	b.creating[name] = done
	b.createMu.Unlock()
	err := b.ctl.appendTopic(name, queues)
	b.createMu.Lock()
	delete(b.creating, name)
	b.createMu.Unlock()
	close(done)
	if err != nil {
		return nil, b.storageErr(err)
	}
	t := b.topic(name)
	if t == nil {
		return nil, &wire.Error{Code: wire.CodeInternal, Message: "topic record applied but not found"}
	}
	b.logger.Info("topic created", "topic", name, "queues", queues)
	b.topicCreated()
	return t, nil
}

// DeleteTopic deletes a topic: a control record (synced, and replicated
// with min-insync like a creation) that removes it from the topic table,
// drops the consumer groups' offsets of it and, through the index, its
// queues and their files, in log order (index.Options.DeletedTopic).
// The log's records go with retention.
func (b *Broker) DeleteTopic(name string) *wire.Error {
	if werr := validTopic(name); werr != nil {
		return werr
	}
	if werr := b.writable(); werr != nil {
		return werr
	}
	t := b.topic(name)
	if t == nil {
		return &wire.Error{Code: wire.CodeUnknownTopic, Message: fmt.Sprintf("topic %s does not exist", name)}
	}
	t.gate.Lock()
	defer t.gate.Unlock()
	if t.deleted {
		return &wire.Error{Code: wire.CodeUnknownTopic, Message: fmt.Sprintf("topic %s does not exist", name)}
	}
	if err := b.ctl.appendTopicDelete(name); err != nil {
		return b.storageErr(err)
	}
	t.deleted = true
	b.logger.Info("topic deleted", "topic", name)
	b.topicCreated() // the routes change
	return nil
}

func (b *Broker) maxTopics() int {
	if n := b.opts.MaxTopics; n > 0 && n < wire.MaxTopics {
		return n
	}
	return wire.MaxTopics
}

// Metadata lists the asked topics (all when none), with 0 queues for a
// topic that does not exist.
func (b *Broker) Metadata(names []string) wire.MetaResp {
	resp := wire.MetaResp{BrokerID: b.opts.ID}
	b.topics.RLock()
	defer b.topics.RUnlock()
	if len(names) == 0 {
		for _, t := range b.topics.m {
			if !hidden(t.name) {
				resp.Topics = append(resp.Topics, wire.TopicInfo{Name: t.name, Queues: t.queues})
			}
		}
		sortTopics(resp.Topics)
		return resp
	}
	for _, n := range names {
		info := wire.TopicInfo{Name: n}
		if t := b.topics.m[n]; t != nil {
			info.Queues = t.queues
		}
		resp.Topics = append(resp.Topics, info)
	}
	return resp
}

func sortTopics(ts []wire.TopicInfo) {
	sort.Slice(ts, func(i, j int) bool { return ts[i].Name < ts[j].Name })
}

// every runs f every d, and at once whenever kick fires (a nil kick never
// does), until stop is closed.
func every(stop <-chan struct{}, d time.Duration, kick <-chan struct{}, f func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
		case <-kick:
		}
		f()
	}
}

// storageErr maps a write's error to the wire; a write that found no room
// makes the disk watch refuse sends at once.
func (b *Broker) storageErr(err error) *wire.Error {
	werr := storageError(err)
	if werr.Code == wire.CodeDiskFull {
		b.disk.noSpace()
	}
	return werr
}

// storageError maps a write's error to the wire.
func storageError(err error) *wire.Error {
	var be *qlog.BusyError
	var werr *wire.Error
	switch {
	case errors.As(err, &werr):
		return werr
	case errors.Is(err, replica.ErrNotEnoughReplicas), errors.Is(err, replica.ErrLeaderStopping):
		return &wire.Error{Code: wire.CodeNotEnoughReplicas, Message: err.Error()}
	case errors.As(err, &be):
		return &wire.Error{Code: wire.CodeBusy, Message: "broker busy: " + strings.TrimPrefix(be.Error(), "log: busy: ")}
	case qlog.IsNoSpace(err):
		return &wire.Error{Code: wire.CodeDiskFull, Message: "disk full: " + err.Error()}
	case errors.Is(err, qlog.ErrClosed):
		return &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"}
	case errors.Is(err, qlog.ErrFailed):
		return &wire.Error{Code: wire.CodeStorageFailed, Message: err.Error()}
	case errors.Is(err, qlog.ErrTooLarge):
		return &wire.Error{Code: wire.CodeTooLarge, Message: err.Error()}
	case errors.Is(err, qlog.ErrInvalid):
		return &wire.Error{Code: wire.CodeInvalid, Message: err.Error()}
	}
	return &wire.Error{Code: wire.CodeInternal, Message: err.Error()}
}
