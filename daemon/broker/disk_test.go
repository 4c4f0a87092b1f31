package broker

import (
	"fmt"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"github.com/quivermq/quiver/sdk/wire"
)

// Below the reserve, sends are refused with DISK_FULL naming the free and
// reserved bytes, while commits (control records) go on; above it, sends
// resume with no restart. The default reserve is a segment and an eighth.
func TestDiskReserveRefusesSendsOnly(t *testing.T) {
	o := testOpts(t.TempDir())
	var free atomic.Int64
	free.Store(100 << 20)
	o.Disk.Free = func() (int64, int64, error) { return free.Load(), 1 << 30, nil }
	b := open(t, o)
	defer b.Close()
	if want := int64(4<<20 + 4<<20/8); b.disk.o.Reserve != want {
		t.Fatalf("default reserve %d, want %d", b.disk.o.Reserve, want)
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

	free.Store(b.disk.o.Reserve - 1)
	b.disk.measure(b)
	werr := send()
	if werr == nil || werr.Code != wire.CodeDiskFull || !werr.Retryable() ||
		!strings.Contains(werr.Message, "4718591 bytes free") || !strings.Contains(werr.Message, "4718592 reserved") {
		t.Fatalf("send below the reserve: %v", werr)
	}
	if werr := b.Commit(&wire.Commit{Group: "g", Member: "m1", Offsets: []wire.OffsetCommit{{QueueRef: wire.QueueRef{Topic: "t", Queue: 0}, Offset: 1}}}); werr != nil {
		t.Fatalf("commit below the reserve: %v", werr)
	}
	st := b.Status()
	if !st.Disk.Full || len(st.Warnings) == 0 || !strings.Contains(st.Warnings[len(st.Warnings)-1], "disk full") {
		t.Fatalf("status below the reserve: %+v %q", st.Disk, st.Warnings)
	}

	free.Store(b.disk.o.Reserve)
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

func BenchmarkProduceAsync(bb *testing.B) {
	b := open(bb, testOpts(bb.TempDir()))
	defer b.Close()
	b.CreateTopic("t", 4)
	p := wire.Produce{Topic: "t", Queue: wire.AnyQueue, Durability: wire.DurabilityAsync, Body: make([]byte, 1024)}
	for bb.Loop() {
		if _, werr := produce(b, p); werr != nil {
			bb.Fatal(werr)
		}
	}
}
