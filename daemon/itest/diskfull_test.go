package itest

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// loopFS mounts a fresh ext4 file system of mib MiB on a loop device and
// returns its mount point; it is unmounted when the test ends. It needs
// root, mkfs.ext4 and loop devices, and skips the test (saying which is
// missing) without them.
func loopFS(t *testing.T, mib int) string {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to loop-mount a small ext4 file system")
	}
	mkfs, err := exec.LookPath("mkfs.ext4")
	if err != nil {
		t.Skip("needs mkfs.ext4 (e2fsprogs) to make a small file system")
	}
	dir := t.TempDir()
	img, mnt := filepath.Join(dir, "fs.img"), filepath.Join(dir, "mnt")
	if err := os.WriteFile(img, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(img, int64(mib)<<20); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(mkfs, "-q", "-F", img).CombinedOutput(); err != nil {
		t.Fatalf("mkfs.ext4: %v\n%s", err, out)
	}
	if err := os.Mkdir(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-o", "loop", img, mnt).CombinedOutput(); err != nil {
		t.Skipf("cannot loop-mount a file system here: %v: %s", err, bytes.TrimSpace(out))
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", mnt).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", mnt, err, out)
		}
	})
	return mnt
}

// diskBody is a send's body: its id, then bytes that are a function of it.
func diskBody(id uint64, n int) []byte {
	b := make([]byte, n)
	binary.LittleEndian.PutUint64(b, id)
	for i := 8; i < n; i++ {
		b[i] = byte(id*31 + uint64(i))
	}
	return b
}

func diskStatus(t *testing.T, b *testbroker.Broker) wire.Status {
	t.Helper()
	var st wire.Status
	if err := json.Unmarshal(b.Get("/status"), &st); err != nil {
		t.Fatal(err)
	}
	return st
}

// The operator's experiment of issue 12, replayed: a broker with default
// settings but 16 MiB segments on a small ext4, fed until the disk is
// full. Sends are then refused with DISK_FULL (before: the first ENOSPC
// fail-stopped the log, commits failed too); every acknowledged send stays
// readable and consumer commits go on; the broker stops and restarts on
// the full disk and serves reads (before: SIGBUS in the key index); once a
// file on that file system is deleted, sends succeed again within 20 s with
// no restart.
func TestDiskFullRefusesSendsAndRecovers(t *testing.T) {
	t.Run("reserve", func(t *testing.T) { diskFull(t, false) })
	// With no reserve to speak of (1 byte), the disk really runs out: an
	// append that needs a segment, an index write, a key-index chunk each
	// meet ENOSPC, and none of them may fail the log or lose a send; what
	// was stored but not yet indexed becomes visible once there is room.
	t.Run("no-reserve", func(t *testing.T) { diskFull(t, true) })
}

func diskFull(t *testing.T, noReserve bool) {
	mnt := loopFS(t, 96)
	// A file the operator can delete to make room.
	ballast := filepath.Join(mnt, "ballast")
	if err := os.WriteFile(ballast, bytes.Repeat([]byte{1}, 24<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	data := filepath.Join(mnt, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	args := []string{"--segment-size", "16777216"}
	if noReserve {
		args = append(args, "--disk-reserve", "1")
	}
	b := testbroker.StartIn(t, data, args...)
	cl := b.Client()
	ctx := ctxT(t, 3*time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "fill", 4); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer(sdk.WithSendTimeout(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()

	// Fill it: 32 KiB sends, every fourth keyed (the key index is a
	// memory-mapped file), until one is refused.
	const size = 32 << 10
	acked := map[uint64]bool{}
	var refusal error
	for id := uint64(0); id < 10000 && refusal == nil; id++ {
		m := &sdk.Message{Topic: "fill", Body: diskBody(id, size)}
		if id%4 == 0 {
			m.Key = []byte(fmt.Sprintf("k%d", id))
		}
		if _, err := p.Send(ctx, m); err != nil {
			refusal = err
			break
		}
		acked[id] = true
	}
	var we *wire.Error
	if refusal == nil || !errors.As(refusal, &we) || we.Code != wire.CodeDiskFull {
		t.Fatalf("after %d acknowledged sends: %v, want a DISK_FULL refusal", len(acked), refusal)
	}
	t.Logf("%d sends of %d KiB acknowledged, then: %v", len(acked), size>>10, refusal)
	st := diskStatus(t, b)
	if !noReserve && (!st.Disk.Full || st.Disk.FreeBytes >= st.Disk.ReserveBytes || !strings.Contains(strings.Join(st.Warnings, "\n"), "disk full")) {
		t.Fatalf("status while full: disk %+v, warnings %q", st.Disk, st.Warnings)
	}
	for _, w := range st.Warnings {
		if strings.Contains(w, "log failed") {
			t.Fatalf("the log fail-stopped on a full disk: %s", w)
		}
	}

	// Every acknowledged send reads back, and the group's commits work.
	checkAll := func(group string) {
		t.Helper()
		got := consumeN(t, ctx, cl, group, "fill", len(acked))
		seen := map[uint64]bool{}
		for _, m := range got {
			id := binary.LittleEndian.Uint64(m.Body)
			if !bytes.Equal(m.Body, diskBody(id, size)) {
				t.Fatalf("message %d at %d/%d is corrupt", id, m.Queue, m.Offset)
			}
			seen[id] = true
		}
		for id := range acked {
			if !seen[id] {
				t.Fatalf("acknowledged send %d not read back (group %s)", id, group)
			}
		}
	}
	if !noReserve {
		checkAll("readers")
	}
	if _, err := p.Send(ctx, &sdk.Message{Topic: "fill", Body: diskBody(1<<40, size)}); err == nil {
		t.Fatal("a send succeeded while the disk is full")
	}

	// SIGTERM and restart on the full disk: it comes up, refuses sends,
	// serves reads.
	if err := b.Stop(); err != nil {
		t.Fatalf("stop on a full disk: %v\n%s", err, b.Log())
	}
	b.Restart()
	// (A restart may free the segment made ahead of time: then the disk
	// has room again. Either way, status says which.)
	// (16 MiB segments: the indexes need 1 MiB free.)
	if d := diskStatus(t, b).Disk; !noReserve && d.Full != (d.FreeBytes+d.LogRoomBytes < d.ReserveBytes || d.FreeBytes < 1<<20) {
		t.Fatalf("restarted: status's disk section contradicts itself: %+v", d)
	}
	if !noReserve {
		checkAll("readers-after-restart")
	}

	// Make room: sends resume by themselves within 20 s.
	if err := os.Remove(ballast); err != nil {
		t.Fatal(err)
	}
	removed := time.Now()
	var last error
	for time.Since(removed) < 20*time.Second {
		if _, last = p.Send(ctx, &sdk.Message{Topic: "fill", Body: diskBody(1<<41, size)}); last == nil {
			break
		}
	}
	if last != nil {
		t.Fatalf("no send succeeded within 20 s of freeing space: %v\n%s", last, b.Log())
	}
	t.Logf("first send acknowledged %v after the ballast was deleted", time.Since(removed).Round(time.Millisecond))
	acked[1<<41] = true
	checkAll("readers-with-room")
	for _, w := range diskStatus(t, b).Warnings {
		if strings.Contains(w, "log failed") {
			t.Fatalf("the log fail-stopped: %s", w)
		}
	}
}

// A producer with an outbox keeps what a full disk refused: DISK_FULL is
// retryable, so once the send's deadline is spent the send goes to the
// outbox instead of failing, and is delivered once the broker takes sends
// again. (No small file system needed: the reserve is set above the disk.)
func TestDiskFullSendsWaitInTheOutbox(t *testing.T) {
	b := testbroker.Start(t, "--disk-reserve", strconv.FormatInt(1<<60, 10))
	cl := b.Client()
	ctx := ctxT(t, time.Minute)
	if err := cl.Admin().CreateTopic(ctx, "orders", 2); err != nil {
		t.Fatalf("creating a topic on a full disk: %v", err)
	}
	dir := t.TempDir()
	p, err := cl.NewProducer(sdk.WithOutbox(dir), sdk.WithSendTimeout(500*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		res, err := p.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte(fmt.Sprintf("o%d", i))})
		if err != nil || !res.Outboxed {
			t.Fatalf("send %d on a full disk: %+v %v, want it kept in the outbox", i, res, err)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	// The disk has room again (here: a restart with the default reserve).
	if err := b.Stop(); err != nil {
		t.Fatal(err)
	}
	b.Args = nil
	b.Restart()
	p, err = cl.NewProducer(sdk.WithOutbox(dir))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	testbroker.WaitFor(t, "the outbox to drain", func() bool { return p.Outbox().Pending == 0 })
	got := map[string]bool{}
	for _, m := range consumeN(t, ctx, cl, "g", "orders", 10) {
		got[string(m.Body)] = true
	}
	for i := range 10 {
		if !got[fmt.Sprintf("o%d", i)] {
			t.Fatalf("o%d was not delivered from the outbox (got %v)", i, got)
		}
	}
}
