package replica

import (
	"errors"
	"github.com/quivermq/quiver/internal/fsutil"
	"os"
	"path/filepath"
	"testing"

	"go.uber.org/goleak"

	"github.com/quivermq/quiver/sdk/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The history survives a reopen and tells where each epoch ends: what a
// follower that comes back with an older epoch must keep.
func TestEpochHistory(t *testing.T) {
	dir := t.TempDir()
	e, err := OpenEpochs(fsutil.OS, dir)
	if err != nil {
		t.Fatal(err)
	}
	if e.Last().Epoch != 0 {
		t.Fatal("a new history is not empty")
	}
	for _, ep := range []wire.Epoch{{Epoch: 1, Start: 0, Leader: "a"}, {Epoch: 2, Start: 900, Leader: "b"}, {Epoch: 4, Start: 1500, Leader: "a"}} {
		if err := e.Begin(ep); err != nil {
			t.Fatal(err)
		}
	}
	e, err = OpenEpochs(fsutil.OS, dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.All(); len(got) != 3 || got[2] != (wire.Epoch{Epoch: 4, Start: 1500, Leader: "a"}) {
		t.Fatalf("after reopen: %+v", got)
	}
	cases := []struct {
		epoch uint64
		end   int64
		ok    bool
	}{
		{0, 0, true},    // no epoch: only what predates the first
		{1, 900, true},  // epoch 1 ended where 2 began
		{2, 1500, true}, // 2 ended where 4 began
		{3, 1500, true}, // never this broker's: ends where the next newer one began
		{4, 2000, true}, // the newest runs to the log's end
		{5, 0, false},   // newer than anything known
	}
	for _, c := range cases {
		end, ok := e.EndOf(c.epoch, 2000)
		if ok != c.ok || (ok && end != c.end) {
			t.Errorf("EndOf(%d) = %d, %v; want %d, %v", c.epoch, end, ok, c.end, c.ok)
		}
	}
	// An older epoch cannot begin after a newer one.
	if err := e.Begin(wire.Epoch{Epoch: 3, Start: 2500, Leader: "c"}); !errors.Is(err, ErrEpochs) {
		t.Fatalf("epoch 3 after 4: %v", err)
	}
	// A follower adopts its leader's history up to its own end.
	f, _ := OpenEpochs(fsutil.OS, t.TempDir())
	if err := f.Adopt(e.All(), 1200); err != nil {
		t.Fatal(err)
	}
	if got := f.All(); len(got) != 2 || got[1].Epoch != 2 {
		t.Fatalf("adopted up to 1200: %+v", got)
	}
	// A damaged file is refused, not silently emptied.
	os.WriteFile(filepath.Join(dir, "epochs"), []byte("1 0 a\n2 x b\n"), 0o644)
	if _, err := OpenEpochs(fsutil.OS, dir); !errors.Is(err, ErrEpochs) {
		t.Fatalf("damaged history: %v", err)
	}
}
