package logging

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// One cause cannot flood the log: past its burst, lines are held back and
// the next line after the interval says how many.
func TestRateLimitPerCause(t *testing.T) {
	var out bytes.Buffer
	h := RateLimited(slog.NewTextHandler(&out, nil), Limit{Burst: 3, Interval: time.Minute})
	clock := time.Unix(0, 0)
	h.(*limiter).state.now = func() time.Time { return clock }
	log := slog.New(h)
	for i := 0; i < 1000; i++ {
		log.Warn("connection refused", "i", i)
		log.With("component", "x").Info("other cause")
	}
	if n := strings.Count(out.String(), "connection refused"); n != 3 {
		t.Fatalf("%d lines of one cause in a minute, want 3", n)
	}
	if n := strings.Count(out.String(), "other cause"); n != 3 {
		t.Fatalf("a second cause got %d lines, want its own 3", n)
	}
	out.Reset()
	clock = clock.Add(time.Minute)
	log.Warn("connection refused")
	if !strings.Contains(out.String(), "held_back=997") {
		t.Fatalf("the line after the window does not report what was held back: %s", out.String())
	}
}

func TestRotatingFileIsBounded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "quiverd.log")
	r, err := OpenRotating(path, 1000, 2)
	if err != nil {
		t.Fatal(err)
	}
	line := []byte(strings.Repeat("x", 99) + "\n")
	for i := 0; i < 500; i++ {
		if _, err := r.Write(line); err != nil {
			t.Fatal(err)
		}
	}
	r.Close()
	var total int64
	for _, p := range []string{path, path + ".1", path + ".2"} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatalf("%s: %v", p, err)
		}
		if st.Size() > 1000 {
			t.Fatalf("%s is %d bytes, over its 1000", p, st.Size())
		}
		total += st.Size()
	}
	if _, err := os.Stat(path + ".3"); !os.IsNotExist(err) {
		t.Fatal("more old files than kept")
	}
	if total > 3000 {
		t.Fatalf("log files hold %d bytes", total)
	}
}
