//go:build !windows

// The CLI's tests drive real brokers (internal/testbroker runs quiverd,
// which is for Linux and macOS): on Windows they are left out, and go vet
// checks the CLI itself.

package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testbroker.RemoveBuilds()
	// The in-process commands must leave no SDK goroutine behind.
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// quiverBinary builds the quiver command once per test process.
func quiverBinary(t *testing.T) string { return testbroker.Build(t, "./tools/quiver") }

// cmdTimeout bounds every command a test runs: a command that hangs
// fails the test instead of hanging it.
const cmdTimeout = 20 * time.Second

type result struct {
	stdout, stderr string
	code           int
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// cliEnv is the environment without QUIVER_* variables, so that the
// caller's shell cannot change what a test checks.
func cliEnv() []string {
	env := []string{"QUIC_GO_DISABLE_RECEIVE_BUFFER_WARNING=true"}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "QUIVER_") {
			env = append(env, kv)
		}
	}
	return env
}

// quiverCmd prepares the quiver binary with args, run in dir (a new
// temporary directory when empty, so that no ./quiver-data is trusted).
func quiverCmd(t *testing.T, ctx context.Context, dir string, args ...string) *exec.Cmd {
	t.Helper()
	if dir == "" {
		dir = t.TempDir()
	}
	cmd := exec.CommandContext(ctx, quiverBinary(t), args...)
	cmd.Dir = dir
	cmd.Env = cliEnv()
	return cmd
}

// runBin runs the quiver binary to completion.
func runBin(t *testing.T, dir, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := quiverCmd(t, ctx, dir, args...)
	var out, errb bytes.Buffer
	cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("quiver %q did not finish in %v; stdout:\n%s\nstderr:\n%s", args, cmdTimeout, out.String(), errb.String())
	}
	r := result{stdout: out.String(), stderr: errb.String()}
	if err != nil {
		ee, ok := err.(*exec.ExitError)
		if !ok {
			t.Fatalf("quiver %q: %v", args, err)
		}
		r.code = ee.ExitCode()
	}
	return r
}

func noEnv(string) (string, bool) { return "", false }

// runCLI runs a command line in-process.
func runCLI(t *testing.T, lookupEnv func(string) (string, bool), stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	var out, errb bytes.Buffer
	code := run(ctx, args, strings.NewReader(stdin), &out, &errb, lookupEnv)
	return result{stdout: out.String(), stderr: errb.String(), code: code}
}

// must fails the test unless the command exited 0.
func must(t *testing.T, r result) result {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("command failed: %v", r)
	}
	return r
}

// with returns the global flags that reach b, then args.
func with(b *testbroker.Broker, args ...string) []string {
	return append([]string{"--broker", b.Addr, "--ca", b.CAFile}, args...)
}

// lines splits output into its lines; every line must end in a newline.
func lines(t *testing.T, out string) []string {
	t.Helper()
	if out == "" {
		return nil
	}
	if !strings.HasSuffix(out, "\n") {
		t.Fatalf("output does not end with a newline: %q", out)
	}
	return strings.Split(strings.TrimSuffix(out, "\n"), "\n")
}

func decodeJSON[T any](t *testing.T, r result) T {
	t.Helper()
	var v T
	if err := json.Unmarshal([]byte(must(t, r).stdout), &v); err != nil {
		t.Fatalf("output is not JSON of %T: %v\n%s", v, err, r.stdout)
	}
	return v
}

type pos struct {
	queue  uint32
	offset uint64
}

// parseAcks checks produce --acks output: "<line> <queue> <offset>" for
// lines 1..n in order, every (queue, offset) distinct. It returns the
// position of each line.
func parseAcks(t *testing.T, out string, n int) []pos {
	t.Helper()
	ls := lines(t, out)
	if len(ls) != n {
		t.Fatalf("%d ack lines for %d input lines:\n%s", len(ls), n, out)
	}
	seen := map[pos]int{}
	ps := make([]pos, n)
	for i, l := range ls {
		f := strings.Fields(l)
		if len(f) != 3 {
			t.Fatalf("ack line %q: want <line> <queue> <offset>", l)
		}
		num, err1 := strconv.Atoi(f[0])
		q, err2 := strconv.ParseUint(f[1], 10, 32)
		o, err3 := strconv.ParseUint(f[2], 10, 64)
		if err1 != nil || err2 != nil || err3 != nil || num != i+1 {
			t.Fatalf("ack line %d is %q", i+1, l)
		}
		p := pos{uint32(q), o}
		if prev, dup := seen[p]; dup {
			t.Fatalf("lines %d and %d both acknowledged at queue %d offset %d", prev, num, q, o)
		}
		seen[p] = num
		ps[i] = p
	}
	return ps
}

// sameMultiset fails unless got and want hold the same strings, each as
// many times.
func sameMultiset(t *testing.T, what string, got, want []string) {
	t.Helper()
	g, w := slices.Clone(got), slices.Clone(want)
	slices.Sort(g)
	slices.Sort(w)
	if !slices.Equal(g, w) {
		t.Fatalf("%s: got %d bodies %q, want %d bodies %q", what, len(g), short(g), len(w), short(w))
	}
}

// short abbreviates long bodies for failure messages.
func short(ss []string) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		if len(s) > 40 {
			s = fmt.Sprintf("%s...(%d bytes)", s[:20], len(s))
		}
		out[i] = s
	}
	return out
}

// groupOffsets reads the group's committed offsets in topic from the
// broker's /status.
func groupOffsets(t *testing.T, b *testbroker.Broker, group, topic string) map[uint32]uint64 {
	t.Helper()
	out := map[uint32]uint64{}
	for _, g := range b.Status().Groups {
		if g.Name != group {
			continue
		}
		for _, o := range g.Offsets {
			if o.Topic == topic {
				out[o.Queue] = o.Committed
			}
		}
	}
	return out
}

// produceSDK sends bodies to topic through the SDK and returns where each
// was stored.
func produceSDK(t *testing.T, b *testbroker.Broker, topic string, bodies ...string) []pos {
	t.Helper()
	p, err := b.Client().NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ps := make([]pos, len(bodies))
	for i, body := range bodies {
		res, err := p.Send(context.Background(), &sdk.Message{Topic: topic, Body: []byte(body)})
		if err != nil {
			t.Fatal(err)
		}
		ps[i] = pos{res.Queue, res.Offset}
	}
	return ps
}

func sdkMessage(topic, body string) *sdk.Message {
	return &sdk.Message{Topic: topic, Body: []byte(body)}
}

func numbered(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i+1)
	}
	return out
}

// fingerprint is the SHA-256 of the certificate in a PEM file, as quiverd prints it.
func fingerprint(t *testing.T, path string) string {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(data)
	if blk == nil {
		t.Fatalf("%s holds no PEM block", path)
	}
	sum := sha256.Sum256(blk.Bytes)
	return hex.EncodeToString(sum[:])
}

// withTopic starts a broker with topic (queues queues) and returns it, a
// way to run the CLI against it, a client, a producer and a context of a
// minute; all are closed when the test ends.
func withTopic(t *testing.T, topic string, queues int) (*testbroker.Broker, func(args ...string) result, *sdk.Client, *sdk.Producer, context.Context) {
	t.Helper()
	b := testbroker.Start(t)
	cli := func(args ...string) result { return runCLI(t, noEnv, "", with(b, args...)...) }
	cl := b.Client()
	t.Cleanup(func() { cl.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	if err := cl.Admin().CreateTopic(ctx, topic, queues); err != nil {
		t.Fatal(err)
	}
	p, err := cl.NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return b, cli, cl, p, ctx
}
