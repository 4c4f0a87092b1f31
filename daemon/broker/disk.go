package broker

import (
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/quivermq/quiver/sdk/wire"
)

// DiskOptions set the free-space watermark of the data directory's file
// system.
type DiskOptions struct {
	// Reserve: while the file system's free space plus the unused room of
	// the log's preallocated segments is below this, sends are refused with
	// DISK_FULL (retryable); fetches, consumer groups, commits and topic
	// changes go on in the room kept. Default: a segment and an eighth, so
	// that the log can still roll for its control records.
	Reserve int64
	// MinFree: sends are also refused while the free space alone is below
	// this, which the indexes grow into (default: a sixteenth of a
	// segment, at least 1 MiB, at most Reserve).
	MinFree int64
	// Every is how often free space is measured (default 1s).
	Every time.Duration
	// Free reports the bytes free to the broker and the file system's size
	// (default: statfs of the data directory). For tests.
	Free func() (free, total int64, err error)

	segment int64 // the log's segment size
}

func (o *DiskOptions) ensureDefaults(dir string, segmentSize int64) {
	o.segment = segmentSize
	if o.Reserve == 0 {
		o.Reserve = segmentSize + segmentSize/8
	}
	if o.MinFree == 0 {
		o.MinFree = min(max(1<<20, segmentSize/16), o.Reserve)
	}
	if o.Every == 0 {
		o.Every = time.Second
	}
	if o.Free == nil {
		o.Free = func() (int64, int64, error) { return statfs(dir) }
	}
}

// statfs returns the bytes available to unprivileged users on dir's file
// system (what a write can use: root's reserved blocks are not counted),
// and the file system's size.
func statfs(dir string) (free, total int64, err error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return 0, 0, fmt.Errorf("statfs %s: %w", dir, err)
	}
	return int64(st.Bavail) * int64(st.Bsize), int64(st.Blocks) * int64(st.Bsize), nil
}

// diskWatch keeps the data file system's free space, and whether sends
// are refused for the lack of it.
type diskWatch struct {
	o     DiskOptions
	full  atomic.Bool
	free  atomic.Int64
	room  atomic.Int64 // the log's preallocated room (Log.Room)
	total atomic.Int64
	kick  chan struct{}

	mu       sync.Mutex // the state below
	since    time.Time  // when the disk became full
	loggedAt time.Time
	lastErr  string
	// floor: after a write found no room, sends stay refused until free
	// space is above this (what was free then, plus a segment), however
	// small the reserve: otherwise they would resume at the next
	// measurement and meet ENOSPC again.
	floor int64
}

func newDiskWatch(o DiskOptions) *diskWatch {
	return &diskWatch{o: o, kick: make(chan struct{}, 1)}
}

// refusal is the error a send gets while the disk is full, else nil.
func (d *diskWatch) refusal() *wire.Error {
	if !d.full.Load() {
		return nil
	}
	free, room := d.free.Load(), d.room.Load()
	d.mu.Lock()
	floor := d.floor
	d.mu.Unlock()
	var why string
	switch {
	case free < floor:
		why = fmt.Sprintf("%d bytes free on the data file system, below the %d needed since a write found no room", free, floor)
	case free < d.o.MinFree:
		why = fmt.Sprintf("%d bytes free on the data file system, below the %d the indexes need", free, d.o.MinFree)
	default:
		why = fmt.Sprintf("%d bytes free on the data file system and %d left in the log's preallocated segments, below the %d reserved (disk_reserve)",
			free, room, d.o.Reserve)
	}
	return &wire.Error{Code: wire.CodeDiskFull, Message: "disk full: " + why + "; sends resume by themselves once there is room"}
}

// noSpace records that a write found no room (the log's ENOSPC): sends are
// refused at once, and free space is measured again.
// Every request of a refused batch reports it: the floor is taken once
// (until the disk has room again), with one statfs.
func (d *diskWatch) noSpace() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.floor > 0 {
		return
	}
	if free, _, err := d.o.Free(); err == nil {
		d.floor = free + d.o.segment
	}
	d.full.Store(true)
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

// measure reads free space and updates the refusal, logging its changes
// (and, while full, once a minute).
func (d *diskWatch) measure(b *Broker) {
	free, total, err := d.o.Free()
	d.mu.Lock()
	defer d.mu.Unlock()
	if err != nil {
		if e := err.Error(); e != d.lastErr {
			d.lastErr = e
			b.logger.Warn("cannot measure the data file system's free space; sends are not refused for it", "err", err)
		}
		return
	}
	d.lastErr = ""
	room := b.Log().Room()
	d.free.Store(free)
	d.room.Store(room)
	d.total.Store(total)
	now := time.Now()
	full := free < d.floor || free < d.o.MinFree || free+room < d.o.Reserve
	if !full {
		d.floor = 0
	}
	switch was := d.full.Load(); {
	case full && (!was || d.since.IsZero()):
		d.since, d.loggedAt = now, now
		b.logger.Warn("disk full: sends are refused with DISK_FULL until the data file system has room again; reads, consumer groups and commits go on",
			"free_bytes", free, "log_room_bytes", room, "reserve_bytes", d.o.Reserve, "total_bytes", total)
	case full && now.Sub(d.loggedAt) >= time.Minute:
		d.loggedAt = now
		b.logger.Warn("disk still full: sends are refused with DISK_FULL",
			"free_bytes", free, "reserve_bytes", d.o.Reserve, "full_for", now.Sub(d.since).Round(time.Second))
	case !full && was:
		b.logger.Info("disk has room again: sends resume", "free_bytes", free, "reserve_bytes", d.o.Reserve,
			"full_for", now.Sub(d.since).Round(time.Second))
		d.since = time.Time{}
	}
	d.full.Store(full)
}

// watch measures free space every Every, and at once when kicked, until
// stop is closed.
func (d *diskWatch) watch(b *Broker, stop <-chan struct{}) {
	every(stop, d.o.Every, d.kick, func() { d.measure(b) })
}
