package replica

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"github.com/quivermq/quiver/internal/fsutil"
	"github.com/quivermq/quiver/sdk/wire"
)

// Epochs is a broker's epoch history: for every leadership its log has
// data of, the epoch number, the log position where it began and the
// leader's broker id, oldest first. A leader appends an entry when it takes
// over; a follower copies its leader's. It is kept in DATA/state/epochs,
// one line per entry, replaced atomically on every change.
type Epochs struct {
	fs   fsutil.FS
	path string
	mu   sync.Mutex
	es   []wire.Epoch
}

// ErrEpochs is returned for an unreadable or inconsistent history.
var ErrEpochs = errors.New("replica: epoch history")

// OpenEpochs reads the history in dir (empty when there is none).
func OpenEpochs(fs fsutil.FS, dir string) (*Epochs, error) {
	e := &Epochs{fs: fs, path: filepath.Join(dir, "epochs")}
	f, err := fs.OpenFile(e.path, os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return e, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEpochs, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(io.NewSectionReader(f, 0, 1<<62))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		var ep wire.Epoch
		fields := strings.Fields(line)
		if len(fields) != 3 {
			return nil, fmt.Errorf("%w: %s: bad line %q", ErrEpochs, e.path, line)
		}
		n, err1 := strconv.ParseUint(fields[0], 10, 64)
		start, err2 := strconv.ParseInt(fields[1], 10, 64)
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("%w: %s: bad line %q", ErrEpochs, e.path, line)
		}
		ep.Epoch, ep.Start, ep.Leader = n, start, fields[2]
		e.es = append(e.es, ep)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrEpochs, err)
	}
	if err := check(e.es); err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrEpochs, e.path, err)
	}
	return e, nil
}

func check(es []wire.Epoch) error {
	for i := 1; i < len(es); i++ {
		if es[i].Epoch <= es[i-1].Epoch || es[i].Start < es[i-1].Start {
			return fmt.Errorf("entry %d (epoch %d at %d) does not follow epoch %d at %d",
				i, es[i].Epoch, es[i].Start, es[i-1].Epoch, es[i-1].Start)
		}
	}
	return nil
}

// All returns a copy of the history.
func (e *Epochs) All() []wire.Epoch {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]wire.Epoch(nil), e.es...)
}

// Last is the newest entry (Epoch 0 when there is none).
func (e *Epochs) Last() wire.Epoch {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.es) == 0 {
		return wire.Epoch{}
	}
	return e.es[len(e.es)-1]
}

// Begin records that epoch begins at start under leader, replacing every
// entry that starts at or after start (a follower that truncated drops
// them). The file is synced before Begin returns.
func (e *Epochs) Begin(ep wire.Epoch) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	es := append([]wire.Epoch(nil), e.es...)
	for len(es) > 0 && es[len(es)-1].Start >= ep.Start && es[len(es)-1].Epoch != ep.Epoch {
		es = es[:len(es)-1]
	}
	if len(es) > 0 && es[len(es)-1].Epoch == ep.Epoch {
		return nil // already known
	}
	if len(es) > 0 && es[len(es)-1].Epoch > ep.Epoch {
		return fmt.Errorf("%w: epoch %d begins after epoch %d", ErrEpochs, ep.Epoch, es[len(es)-1].Epoch)
	}
	es = append(es, ep)
	if err := e.saveLocked(es); err != nil {
		return err
	}
	e.es = es
	return nil
}

// Adopt replaces the history with the leader's entries up to (and not
// after) end, the follower's log end: a follower records the epochs its
// log holds data of.
func (e *Epochs) Adopt(leader []wire.Epoch, end int64) error {
	if err := check(leader); err != nil {
		return fmt.Errorf("%w: the leader's: %v", ErrEpochs, err)
	}
	var es []wire.Epoch
	for _, ep := range leader {
		if ep.Start <= end {
			es = append(es, ep)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if slices.Equal(es, e.es) {
		return nil
	}
	if err := e.saveLocked(es); err != nil {
		return err
	}
	e.es = es
	return nil
}

// EndOf returns where epoch ends in this history, given this log's end:
// the start of the next newer epoch, or end when epoch is the newest. A
// follower whose last epoch is epoch and whose log is longer than this
// diverged. ok is false when the history has no such epoch (the follower
// knows an epoch this broker does not).
func (e *Epochs) EndOf(epoch uint64, end int64) (int64, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if epoch == 0 {
		// The follower has no epoch: its data (if any) predates every
		// leadership this history knows; it may keep what the first
		// epoch's start covers.
		if len(e.es) == 0 {
			return end, true
		}
		return e.es[0].Start, true
	}
	for i, ep := range e.es {
		if ep.Epoch == epoch {
			if i+1 < len(e.es) {
				return e.es[i+1].Start, true
			}
			return end, true
		}
		if ep.Epoch > epoch {
			// The follower's epoch was never this broker's: it ends where
			// the first newer one this broker knows begins.
			return ep.Start, true
		}
	}
	return 0, false
}

func (e *Epochs) saveLocked(es []wire.Epoch) error {
	var b strings.Builder
	b.WriteString("# epoch start-position leader\n")
	for _, ep := range es {
		fmt.Fprintf(&b, "%d %d %s\n", ep.Epoch, ep.Start, ep.Leader)
	}
	if err := fsutil.MkdirAll(e.fs, filepath.Dir(e.path), 0o755); err != nil {
		return err
	}
	if err := fsutil.WriteAtomic(e.fs, e.path, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("%w: write %s: %v", ErrEpochs, e.path, err)
	}
	return nil
}
