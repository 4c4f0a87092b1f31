package fsutil

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"testing"
)

// WriteAtomic under power cuts: whenever the power fails, the file holds
// one whole version that was written, never a mix, never nothing once a
// version was complete; and the version WriteAtomic last returned for is
// the one there (or, when the cut came during a later call, that later
// one).
func TestWriteAtomicSurvivesPowerCuts(t *testing.T) {
	for seed := uint64(0); seed < 300; seed++ {
		rng := rand.New(rand.NewPCG(seed, 7))
		dir := t.TempDir()
		path := filepath.Join(dir, "state")
		c := NewCrashFS(OS)
		version := func(i int) []byte {
			return bytes.Repeat([]byte(fmt.Sprintf("v%d;", i)), 100+i*50) // several sectors
		}
		if err := MkdirAll(c, filepath.Join(dir, "sub"), 0o755); err != nil {
			t.Fatal(err)
		}
		n := rng.IntN(6)
		for i := 1; i <= n; i++ {
			if err := WriteAtomic(c, path, version(i), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		// A last call cut short somewhere: its file written, maybe synced,
		// maybe renamed, not yet the directory synced.
		tmp := path + ".tmp"
		f, err := c.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		f.Write(version(n + 1))
		step := rng.IntN(3)
		if step >= 1 {
			f.Sync()
		}
		f.Close()
		if step >= 2 {
			c.Rename(tmp, path)
		}
		if _, err := c.PowerCut(rng); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(path)
		switch {
		case n == 0 && os.IsNotExist(err):
		case err != nil:
			t.Fatalf("seed %d: %d versions written, then %v", seed, n, err)
		case !bytes.Equal(got, version(n)) && !(step == 2 && bytes.Equal(got, version(n+1))):
			t.Fatalf("seed %d: after %d versions (cut at step %d) the file holds %d bytes: %.20q", seed, n, step, len(got), got)
		}
		if fi, err := os.Stat(filepath.Join(dir, "sub")); err != nil || !fi.IsDir() {
			t.Fatalf("seed %d: a directory made with MkdirAll is gone after the cut: %v", seed, err)
		}
	}
}

// The model itself: what is not synced can be lost, a name not synced
// into its directory can vanish (its removal be undone), and after the
// cut every call fails.
func TestCrashFSLosesWhatWasNotSynced(t *testing.T) {
	lostData, lostName, back := false, false, false
	for seed := uint64(0); seed < 200 && !(lostData && lostName && back); seed++ {
		rng := rand.New(rand.NewPCG(seed, 1))
		dir := t.TempDir()
		c := NewCrashFS(OS)
		keep := filepath.Join(dir, "kept")
		if err := WriteAtomic(c, keep, []byte("durable"), 0o644); err != nil {
			t.Fatal(err)
		}
		f, err := c.OpenFile(keep, os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		f.WriteAt(bytes.Repeat([]byte("x"), 2048), 0) // not synced
		f.Close()
		gone := filepath.Join(dir, "gone")
		WriteAtomic(c, gone, []byte("was here"), 0o644)
		nf, err := c.OpenFile(filepath.Join(dir, "new"), os.O_CREATE|os.O_RDWR, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		nf.Sync() // its data, not its name
		nf.Close()
		c.Remove(gone) // not synced
		if _, err := c.PowerCut(rng); err != nil {
			t.Fatal(err)
		}
		if _, err := c.OpenFile(keep, os.O_RDONLY, 0); err == nil {
			t.Fatal("open after the power cut succeeded")
		}
		b, _ := os.ReadFile(keep)
		if !bytes.HasPrefix(b, []byte("durable")) && !bytes.HasPrefix(b, []byte("xxxxxxx")) {
			t.Fatalf("seed %d: synced file holds %.20q", seed, b)
		}
		lostData = lostData || bytes.HasPrefix(b, []byte("durable"))
		_, err = os.Stat(filepath.Join(dir, "new"))
		lostName = lostName || os.IsNotExist(err)
		b, err = os.ReadFile(gone)
		if err == nil && string(b) != "was here" {
			t.Fatalf("seed %d: a removed file came back as %q", seed, b)
		}
		back = back || err == nil
	}
	if !lostData || !lostName || !back {
		t.Fatalf("in 200 cuts: an unsynced write lost %v, an unsynced name lost %v, an unsynced removal undone %v; want all", lostData, lostName, back)
	}
}
