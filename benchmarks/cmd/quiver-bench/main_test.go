package main

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quivermq/quiver/benchmarks/internal/proc"
)

// The smoke tests run quiver-bench as scripts do: built with go build,
// starting its own quiverd (built from the main module) or nats-server,
// for about a second each.

var binDir string // quiver-bench and quiverd, side by side

func TestMain(m *testing.M) {
	// quiver-bench with the race detector when the tests have it (the
	// packages are then already compiled so), quiverd as make build does.
	dir, err := proc.Build(raceEnabled)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	binDir = dir
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// runBench runs quiver-bench with args and returns its stdout, stderr and
// exit status. Started systems put their data under dataDir.
func runBench(t *testing.T, dataDir string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if dataDir != "" {
		args = append(args, "--data-dir", dataDir)
	}
	cmd := exec.CommandContext(ctx, filepath.Join(binDir, "quiver-bench"), args...)
	cmd.Dir = t.TempDir() // no ./quiver-data here
	cmd.Env = append(os.Environ(), "QUIVER_CA=")
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("quiver-bench %s: %v", strings.Join(args, " "), err)
	}
	return out.String(), errOut.String(), code
}

// runJSON runs quiver-bench with --json, requires success, and decodes
// its stdout (exactly one JSON value) into v; it returns stderr.
func runJSON(t *testing.T, dataDir string, v any, args ...string) string {
	t.Helper()
	stdout, stderr, code := runBench(t, dataDir, append(args, "--json")...)
	if code != 0 {
		t.Fatalf("quiver-bench %s: exit %d\n%s", strings.Join(args, " "), code, stderr)
	}
	decodeOne(t, stdout, v)
	return stderr
}

// result holds the JSON fields scripts rely on, named independently of
// the code that writes them.
type result struct {
	System     string  `json:"system"`
	Name       string  `json:"name"`
	Label      string  `json:"label"`
	Durability string  `json:"durability"`
	Mode       string  `json:"mode"`
	Producers  int     `json:"producers"`
	Size       int     `json:"size"`
	Count      int64   `json:"count"`
	Sends      int64   `json:"sends"`
	Errors     int64   `json:"errors"`
	DurationS  float64 `json:"duration_s"`
	MsgsPerSec float64 `json:"msgs_per_sec"`
	MBPerSec   float64 `json:"mb_per_sec"`
	P50        int64   `json:"p50_us"`
	P90        int64   `json:"p90_us"`
	P99        int64   `json:"p99_us"`
	P999       int64   `json:"p999_us"`
	Max        int64   `json:"max_us"`
	Min        int64   `json:"min_us"`

	E2ECount   *int64 `json:"e2e_count"`
	E2EMissing int64  `json:"e2e_missing"`
	E2EP50     int64  `json:"e2e_p50_us"`
	E2EP99     int64  `json:"e2e_p99_us"`
	E2EP999    int64  `json:"e2e_p999_us"`
	E2EMax     int64  `json:"e2e_max_us"`
}

// decodeOne parses stdout as exactly one JSON value.
func decodeOne(t *testing.T, stdout string, v any) {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(stdout))
	if err := dec.Decode(v); err != nil {
		t.Fatalf("stdout is not JSON: %v\n%s", err, stdout)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("more than one JSON value on stdout:\n%s", stdout)
	}
}

// checkSane asserts what any successful run's figures must satisfy.
func checkSane(t *testing.T, r *result, minDuration time.Duration) {
	t.Helper()
	if r.Count <= 0 || r.Errors != 0 {
		t.Errorf("%s: count %d, errors %d; want messages and no errors", r.Label, r.Count, r.Errors)
	}
	if !(0 < r.P50 && r.P50 <= r.P90 && r.P90 <= r.P99 && r.P99 <= r.P999 && r.P999 <= r.Max) {
		t.Errorf("%s: percentiles out of order or zero: p50 %d p90 %d p99 %d p99.9 %d max %d", r.Label, r.P50, r.P90, r.P99, r.P999, r.Max)
	}
	if r.DurationS < minDuration.Seconds() || r.DurationS > minDuration.Seconds()+10 {
		t.Errorf("%s: duration_s %v, want about %v", r.Label, r.DurationS, minDuration)
	}
	if want := float64(r.Count) / r.DurationS; math.Abs(r.MsgsPerSec-want) > want*1e-6 {
		t.Errorf("%s: msgs_per_sec %v, but count/duration_s is %v", r.Label, r.MsgsPerSec, want)
	}
	if want := r.MsgsPerSec * float64(r.Size) / 1e6; math.Abs(r.MBPerSec-want) > want*1e-6 {
		t.Errorf("%s: mb_per_sec %v, want %v", r.Label, r.MBPerSec, want)
	}
	// A closed-loop producer has one send in flight, each taking at least
	// min_us: it cannot make more than 1/min sends a second.
	if r.Mode == "closed" && r.Min > 0 {
		if bound := float64(r.Producers) / (float64(r.Min) / 1e6) * 1.01; float64(r.Sends)/r.DurationS > bound {
			t.Errorf("%s: %v sends/s by %d closed-loop producers whose fastest send took %d µs", r.Label, float64(r.Sends)/r.DurationS, r.Producers, r.Min)
		}
	}
}

// noLeftovers asserts that started systems removed their data directories.
func noLeftovers(t *testing.T, dataDir string) {
	t.Helper()
	left, _ := os.ReadDir(dataDir)
	for _, e := range left {
		t.Errorf("left behind in the data directory: %s", e.Name())
	}
}

func TestClosedLoopAgainstItsOwnQuiverd(t *testing.T) {
	data := t.TempDir()
	var r result
	stderr := runJSON(t, data, &r, "--producers", "4", "--size", "512", "--duration", "1s", "--warmup", "200ms")
	checkSane(t, &r, time.Second)
	if r.System != "quiver" || r.Mode != "closed" || r.Producers != 4 || r.Size != 512 {
		t.Errorf("ran %+v, want quiver, closed loop, 4 producers of 512 B", r)
	}
	if !strings.Contains(r.Durability, "fsync before ack") {
		t.Errorf("durability %q: a started quiverd is sync by default", r.Durability)
	}
	if r.E2ECount != nil {
		t.Error("end-to-end figures without consumers")
	}
	if stderr != "" {
		t.Errorf("stderr is not a terminal, yet: %q", stderr)
	}
	noLeftovers(t, data)
}

func TestPipelined(t *testing.T) {
	data := t.TempDir()
	var r result
	runJSON(t, data, &r, "--producers", "2", "--window", "16", "--duration", "500ms", "--warmup", "200ms")
	checkSane(t, &r, 500*time.Millisecond)
	if r.Mode != "pipelined" {
		t.Errorf("mode %q, want pipelined", r.Mode)
	}
	noLeftovers(t, data)
}

func TestConsumersOpenLoop(t *testing.T) {
	data := t.TempDir()
	var r result
	runJSON(t, data, &r, "--producers", "2", "--consumers", "2", "--rate", "1000", "--duration", "1s",
		"--warmup", "300ms", "--durability", "async")
	checkSane(t, &r, time.Second)
	if r.Mode != "open" || !strings.HasPrefix(r.Durability, "async") {
		t.Errorf("mode %q durability %q, want open loop, async", r.Mode, r.Durability)
	}
	// 1000/s for 1 s, give or take the last due sends.
	if r.Count < 900 || r.Count > 1001 {
		t.Errorf("count %d at 1000/s for 1s", r.Count)
	}
	if r.E2ECount == nil {
		t.Fatal("no end-to-end figures")
	}
	if *r.E2ECount < r.Count || r.E2EMissing != 0 {
		t.Errorf("consumed %d of %d (missing %d)", *r.E2ECount, r.Count, r.E2EMissing)
	}
	if !(0 < r.E2EP50 && r.E2EP50 <= r.E2EP99 && r.E2EP99 <= r.E2EP999 && r.E2EP999 <= r.E2EMax) {
		t.Errorf("end-to-end percentiles out of order or zero: %+v", r)
	}
	noLeftovers(t, data)
}

func TestBatchesByCount(t *testing.T) {
	data := t.TempDir()
	var r result
	runJSON(t, data, &r, "--producers", "2", "--batch", "10", "--compression", "zstd", "--compressible",
		"--count", "2000", "--warmup", "100ms")
	if r.Count != 2000 || r.Sends != 200 || r.Errors != 0 {
		t.Errorf("%d messages in %d batches (%d errors), want 2000 in 200", r.Count, r.Sends, r.Errors)
	}
	noLeftovers(t, data)
}

// The table is the default output.
func TestTable(t *testing.T) {
	stdout, stderr, code := runBench(t, t.TempDir(), "--producers", "1", "--count", "200", "--warmup", "0s")
	if code != 0 {
		t.Fatalf("exit %d\n%s", code, stderr)
	}
	for _, want := range []string{"msgs/s", "MB/s", "p50", "p90", "p99", "p99.9", "max", "errors", "closed loop, 1 producer,"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("table without %q:\n%s", want, stdout)
		}
	}
}

func TestCommandLineErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"--batch", "5", "--window", "3"}, 2, "cannot be combined"},
		{[]string{"--duration", "1s", "--count", "5"}, 2, "--duration and --count"},
		{[]string{"--compression", "zstd"}, 2, "give --batch"},
		{[]string{"--plot", "x.jpg"}, 2, ".png or .svg"},
		{[]string{"compare", "--systems", "kafka"}, 2, `no system "kafka"`},
		{[]string{"nats-server", "--dir", "x", "--tls-cert", "cert.pem"}, 2, "--tls-cert and --tls-key go together"},
		// A broker to trust by nothing: no --ca, no QUIVER_CA, no ./quiver-data.
		{[]string{"--broker", "127.0.0.1:1"}, 1, "--ca FILE"},
		{[]string{"--quiverd", "/nonexistent/quiverd"}, 1, "no quiverd to start"},
	} {
		_, stderr, code := runBench(t, "", c.args...)
		if code != c.code || !strings.Contains(stderr, c.want) {
			t.Errorf("quiver-bench %s: exit %d, stderr %q; want %d and %q", strings.Join(c.args, " "), code, stderr, c.code, c.want)
		}
	}
}

func TestCompareNATS(t *testing.T) {
	data := t.TempDir()
	plot := filepath.Join(t.TempDir(), "compare.svg")
	var rs []result
	// Out of order: the rows come in compare's order all the same.
	runJSON(t, data, &rs, "compare", "--systems", "nats-sync-always,nats-default-tls,nats-default", "--producers", "4",
		"--duration", "500ms", "--warmup", "200ms", "--plot", plot)
	want := []struct{ name, label, durability string }{
		{"nats-default", "NATS JetStream (default)", "fsync every 2 min"},
		{"nats-default-tls", "NATS JetStream (default, TLS)", "fsync every 2 min"},
		{"nats-sync-always", "NATS JetStream (sync always)", "fsync per write"},
	}
	if len(rs) != len(want) {
		t.Fatalf("%d rows, want %d", len(rs), len(want))
	}
	for i, w := range want {
		r := rs[i]
		if r.System != "nats" || r.Name != w.name || r.Label != w.label || !strings.Contains(r.Durability, w.durability) {
			t.Errorf("row %d: %s %s %q %q, want nats %s %q %q", i, r.System, r.Name, r.Label, r.Durability, w.name, w.label, w.durability)
		}
		checkSane(t, &r, 500*time.Millisecond)
	}
	checkSVG(t, plot, []string{"NATS JetStream (default)", "NATS JetStream (default, TLS)", "NATS JetStream (sync always)", "99%"})
	noLeftovers(t, data)
}

// checkSVG asserts that file is a well-formed, non-empty SVG document
// holding the texts.
func checkSVG(t *testing.T, file string, texts []string) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(bytes.NewReader(data))
	root := ""
	var chars strings.Builder
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s is not well-formed XML: %v", file, err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if root == "" {
				root = tok.Name.Local
			}
		case xml.CharData:
			chars.Write(tok)
		}
	}
	if root != "svg" {
		t.Errorf("%s: root element %q, want svg", file, root)
	}
	for _, s := range texts {
		if !strings.Contains(chars.String(), s) {
			t.Errorf("%s: no text %q", file, s)
		}
	}
}
