package broker

import (
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/quivermq/quiver/sdk/wire"
)

// Below the reserve (free space plus the log's preallocated room), or below
// the indexes' minimum of free space, sends are refused with DISK_FULL
// naming the numbers, while commits (control records) go on; with room
// again, sends resume with no restart.
func TestDiskReserveRefusesSendsOnly(t *testing.T) {
	o := testOpts(t.TempDir())
	var free atomic.Int64
	free.Store(100 << 20)
	o.Disk.Free = func() (int64, int64, error) { return free.Load(), 1 << 30, nil }
	o.Disk.Reserve = 64 << 20
	b := open(t, o)
	defer b.Close()
	if want := int64(1 << 20); b.disk.o.MinFree != want {
		t.Fatalf("default minimum free %d, want %d (4 MiB segments)", b.disk.o.MinFree, want)
	}
	b.CreateTopic("t", 2)
	send := func() *wire.Error {
		_, werr := produce(b, wire.Produce{Topic: "t", Queue: wire.AnyQueue, Body: []byte("x")})
		return werr
	}
	if werr := send(); werr != nil {
		t.Fatal(werr)
	}
	gsync(b, "m1")

	room := b.log.Room()
	if room <= 0 || room > 2*b.log.SegmentSize() {
		t.Fatalf("log room %d", room)
	}
	for _, c := range []struct {
		free int64
		want string
	}{
		{b.disk.o.Reserve - room - 1, fmt.Sprintf("bytes free on the data file system and %d left in the log's preallocated segments, below the %d reserved", room, b.disk.o.Reserve)},
		{b.disk.o.MinFree - 1, fmt.Sprintf("%d bytes free on the data file system, below the %d the indexes need", b.disk.o.MinFree-1, b.disk.o.MinFree)},
	} {
		free.Store(c.free)
		b.disk.measure(b)
		werr := send()
		if werr == nil || werr.Code != wire.CodeDiskFull || !werr.Retryable() || !strings.Contains(werr.Message, c.want) {
			t.Fatalf("send with %d free: %v, want DISK_FULL with %q", c.free, werr, c.want)
		}
		if werr := b.Commit(&wire.Commit{Group: "g", Member: "m1", Offsets: []wire.OffsetCommit{{QueueRef: wire.QueueRef{Topic: "t", Queue: 0}, Offset: 1}}}); werr != nil {
			t.Fatalf("commit with %d free: %v", c.free, werr)
		}
		st := b.Status()
		if !st.Disk.Full || st.Disk.LogRoomBytes > room || st.Disk.LogRoomBytes == 0 || len(st.Warnings) == 0 || !strings.Contains(st.Warnings[len(st.Warnings)-1], "disk full") {
			t.Fatalf("status with %d free: %+v %q", c.free, st.Disk, st.Warnings)
		}
	}

	free.Store(b.disk.o.Reserve - b.log.Room()) // with the room that is left
	b.disk.measure(b)
	if werr := send(); werr != nil {
		t.Fatalf("send once there is room: %v", werr)
	}
	if st := b.Status(); st.Disk.Full {
		t.Fatalf("status once there is room: %+v", st.Disk)
	}
}

// A write that found no room (ENOSPC from the log: another writer filled
// the disk since the last measurement) refuses sends at once, without
// waiting for the next measurement.
func TestNoSpaceRefusesAtOnce(t *testing.T) {
	o := testOpts(t.TempDir())
	var free atomic.Int64
	free.Store(1 << 30)
	o.Disk.Free = func() (int64, int64, error) { return free.Load(), 1 << 40, nil }
	o.Disk.Every = 1 << 62 // measured at the start, and when kicked
	b := open(t, o)
	defer b.Close()
	if werr := b.disk.refusal(); werr != nil {
		t.Fatal(werr)
	}
	free.Store(b.disk.o.Reserve) // statfs saw room; the write did not
	if werr := b.storageErr(errNoSpaceForTest); werr.Code != wire.CodeDiskFull {
		t.Fatalf("ENOSPC maps to %v", werr)
	}
	if werr := b.disk.refusal(); werr == nil || werr.Code != wire.CodeDiskFull {
		t.Fatalf("after ENOSPC: %v", werr)
	}
	// Above the reserve but not a segment above what was free when the
	// write failed: still refused (else sends would meet ENOSPC again).
	free.Store(b.disk.o.Reserve + 1)
	b.disk.measure(b)
	if werr := b.disk.refusal(); werr == nil || !strings.Contains(werr.Message, "needed since a write found no room") {
		t.Fatalf("just above the reserve after ENOSPC: %v", werr)
	}
	free.Store(b.disk.o.Reserve + b.log.SegmentSize())
	b.disk.measure(b)
	if werr := b.disk.refusal(); werr != nil {
		t.Fatalf("a segment free after ENOSPC: %v", werr)
	}
}

var errNoSpaceForTest = fmt.Errorf("log: roll: %w", syscall.ENOSPC)

// The free-space check on the send path (an atomic load; statfs runs on its
// own goroutine once a second), next to a whole in-process async send.
// go test -ldflags=-checklinkname=0 -run '^$' -bench 'DiskCheck|ProduceAsync' ./daemon/broker/
func BenchmarkDiskCheck(bb *testing.B) {
	b := open(bb, testOpts(bb.TempDir()))
	defer b.Close()
	for bb.Loop() {
		if b.disk.refusal() != nil {
			bb.Fatal("refused")
		}
	}
}

// The idempotent sub-benchmark is the same send with a producer id and a
// sequence number (the pending table, the producer-table lookup and take,
// 16 more bytes in the record): the cost of idempotence.
func BenchmarkProduceAsync(bb *testing.B) {
	for _, producer := range []uint64{0, 42} {
		name := "plain"
		if producer != 0 {
			name = "idempotent"
		}
		bb.Run(name, func(bb *testing.B) {
			b := open(bb, testOpts(bb.TempDir()))
			defer b.Close()
			b.CreateTopic("t", 4)
			p := wire.Produce{Topic: "t", Queue: wire.AnyQueue, Durability: wire.DurabilityAsync, Body: make([]byte, 1024), ProducerID: producer}
			for bb.Loop() {
				if producer != 0 {
					p.Seq++
				}
				if _, werr := produce(b, p); werr != nil {
					bb.Fatal(werr)
				}
			}
		})
	}
}
