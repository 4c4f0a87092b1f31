//go:build !windows

package main

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/quivermq/quiver/internal/testbroker"
)

// The real binary against a real broker: produce --acks, then consume
// --count reads exactly what was produced, in queue order, and commits it.
func TestProduceConsumeBinary(t *testing.T) {
	b := testbroker.Start(t)
	must(t, runBin(t, "", "", with(b, "topic", "create", "rt", "--queues", "4")...))

	bodies := numbered("first", 20)
	bodies[3] = ""                                      // an empty line is an empty message
	bodies[5] = "carriage\r"                            // only the newline is stripped
	bodies[7] = "big-" + strings.Repeat("x", 1<<20+100) // past bufio.Scanner's default 64 KiB
	bodies[9] = "  spaces and\ttabs, unicode ✓  "
	r := must(t, runBin(t, "", strings.Join(bodies, "\n")+"\n", with(b, "produce", "--topic", "rt", "--acks")...))
	acks := parseAcks(t, r.stdout, len(bodies))
	where := map[string]pos{}
	last := map[uint32]uint64{}
	for i, p := range acks {
		if o, ok := last[p.queue]; ok && p.offset <= o {
			t.Fatalf("line %d stored at queue %d offset %d, after offset %d of an earlier line", i+1, p.queue, p.offset, o)
		}
		last[p.queue] = p.offset
		where[bodies[i]] = p
	}

	r = must(t, runBin(t, "", "", with(b, "consume", "--topic", "rt", "--group", "g", "--count", "20")...))
	got := lines(t, r.stdout)
	sameMultiset(t, "consume --count 20", got, bodies)
	seen := map[uint32]uint64{}
	for _, body := range got {
		p := where[body]
		if o, ok := seen[p.queue]; ok && p.offset <= o {
			t.Fatalf("queue %d printed offset %d after offset %d", p.queue, p.offset, o)
		}
		seen[p.queue] = p.offset
	}
	// Everything printed was committed: each queue's offset is one past
	// its last message.
	committed := groupOffsets(t, b, "g", "rt")
	for q, o := range last {
		if committed[q] != o+1 {
			t.Fatalf("group g committed %v in rt; queue %d ends at offset %d", committed, q, o)
		}
	}

	// The group resumes after its commit, and --count stops at exactly N:
	// the messages fetched past it stay uncommitted for the next run.
	second := numbered("second", 9)
	must(t, runBin(t, "", strings.Join(second, "\n")+"\n", with(b, "produce", "--topic", "rt")...))
	r1 := must(t, runBin(t, "", "", with(b, "consume", "--topic", "rt", "--group", "g", "--count", "3")...))
	r2 := must(t, runBin(t, "", "", with(b, "consume", "--topic", "rt", "--group", "g", "--count", "6")...))
	l1, l2 := lines(t, r1.stdout), lines(t, r2.stdout)
	if len(l1) != 3 {
		t.Fatalf("consume --count 3 printed %d lines: %q", len(l1), l1)
	}
	sameMultiset(t, "two consumes of the second batch", append(l1, l2...), second)

	// A new group reads from the earliest message by default.
	r = must(t, runBin(t, "", "", with(b, "consume", "--topic", "rt", "--group", "fresh", "--count", "29")...))
	sameMultiset(t, "a new group", lines(t, r.stdout), append(bodies, second...))
}

// SIGINT and SIGTERM stop consume cleanly: exit 0, everything it printed
// flushed and committed, nothing it did not print committed.
func TestConsumeSignal(t *testing.T) {
	b := testbroker.Start(t)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		t.Run(sig.String(), func(t *testing.T) {
			topic, group := "sig-"+strconv.Itoa(int(sig)), "g"
			bodies := numbered("m", 300)
			produceSDK(t, b, topic, bodies...)

			ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
			defer cancel()
			cmd := quiverCmd(t, ctx, "", with(b, "consume", "--topic", topic, "--group", group)...)
			stdout, err := cmd.StdoutPipe()
			if err != nil {
				t.Fatal(err)
			}
			var stderr strings.Builder
			cmd.Stderr = &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			// Signal as soon as the first line is out, most likely with
			// messages still to print.
			rd := bufio.NewReader(stdout)
			first, err := rd.ReadString('\n')
			if err != nil {
				t.Fatalf("reading the first line: %v; stderr:\n%s", err, stderr.String())
			}
			if err := cmd.Process.Signal(sig); err != nil {
				t.Fatal(err)
			}
			rest, err := io.ReadAll(rd)
			if err != nil {
				t.Fatal(err)
			}
			if err := cmd.Wait(); err != nil {
				t.Fatalf("consume after %v: %v (context: %v); stderr:\n%s", sig, err, ctx.Err(), stderr.String())
			}
			printed := lines(t, first+string(rest))
			t.Logf("printed %d of %d messages before %v", len(printed), len(bodies), sig)

			// The group's commits cover exactly what was printed: the
			// next run of the group prints exactly the rest.
			committed := uint64(0)
			for _, o := range groupOffsets(t, b, group, topic) {
				committed += o
			}
			if committed != uint64(len(printed)) {
				t.Fatalf("printed %d messages, the group committed %d", len(printed), committed)
			}
			var after []string
			if n := len(bodies) - len(printed); n > 0 {
				r := must(t, runBin(t, "", "", with(b, "consume", "--topic", topic, "--group", group, "--count", strconv.Itoa(n))...))
				after = lines(t, r.stdout)
			}
			sameMultiset(t, "printed before the signal and after", append(printed, after...), bodies)
		})
	}
}

// --from latest skips what was stored before the group joined.
func TestConsumeFromLatest(t *testing.T) {
	b := testbroker.Start(t)
	produceSDK(t, b, "lt", numbered("old", 8)...)

	ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
	defer cancel()
	cmd := quiverCmd(t, ctx, "", with(b, "consume", "--topic", "lt", "--group", "late", "--from", "latest", "--count", "1")...)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	// The consumer cannot say when it has joined, so keep sending new
	// messages until it prints one.
	p, err := b.Client().NewProducer()
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	var werr error
	for i := 0; ; i++ {
		select {
		case werr = <-done:
		default:
			if _, err := p.Send(ctx, sdkMessage("lt", fmt.Sprintf("new-%d", i))); err != nil {
				t.Fatalf("send: %v; consume stderr:\n%s", err, stderr.String())
			}
			continue
		}
		break
	}
	if werr != nil {
		t.Fatalf("consume: %v; stderr:\n%s", werr, stderr.String())
	}
	got := lines(t, stdout.String())
	if len(got) != 1 || !strings.HasPrefix(got[0], "new-") {
		t.Fatalf("consume --from latest --count 1 printed %q, want one new-N message", got)
	}
}

// A send that fails stops produce with the SDK's error, naming the line
// and the attempts; lines before it were acknowledged.
func TestProduceFailure(t *testing.T) {
	b := testbroker.Start(t, "--auto-create-topics=false")
	must(t, runBin(t, "", "", with(b, "topic", "create", "exists", "--queues", "1")...))

	r := runBin(t, "", "one\ntwo\n", with(b, "produce", "--topic", "missing", "--acks")...)
	if r.code != 1 || r.stdout != "" || !strings.Contains(r.stderr, "line 1: send to missing failed after 1 attempt(s): #1 "+b.Addr) ||
		!strings.Contains(r.stderr, "does not exist") {
		t.Fatalf("produce to a missing topic: %v", r)
	}

	// A line longer than a message body may be fails after the lines before it.
	long := strings.Repeat("y", maxLine+1)
	r = runBin(t, "", "ok\n"+long+"\n", with(b, "produce", "--topic", "exists", "--acks")...)
	if r.code != 1 || r.stdout != "1 0 0\n" || !strings.Contains(r.stderr, "line 2: longer than") {
		t.Fatalf("produce of a too long line: %v", r)
	}

	// A broker that is gone: retried until --timeout, every attempt named.
	b.Kill()
	r = runBin(t, "", "lost\n", with(b, "--timeout", "300ms", "produce", "--topic", "exists")...)
	if r.code != 1 || !strings.Contains(r.stderr, "line 1: send to exists failed (deadline spent)") || !strings.Contains(r.stderr, "#1 "+b.Addr) {
		t.Fatalf("produce to a stopped broker: %v", r)
	}
}

// Without --ca, --fingerprint or QUIVER_CA, quiver trusts
// ./quiver-data/tls/cert.pem, and fails clearly when there is none.
func TestDefaultTrust(t *testing.T) {
	b := testbroker.Start(t)
	r := runBin(t, "", "", "--broker", b.Addr, "topic", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "--ca FILE") || !strings.Contains(r.stderr, "--fingerprint HEX") {
		t.Fatalf("no trust source: %v", r)
	}

	dir := t.TempDir()
	pemData, err := os.ReadFile(b.CAFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "quiver-data", "tls"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "quiver-data", "tls", "cert.pem"), pemData, 0o644); err != nil {
		t.Fatal(err)
	}
	must(t, runBin(t, "", "", with(b, "topic", "create", "dt")...))
	r = must(t, runBin(t, dir, "", "--broker", b.Addr, "topic", "list"))
	if !strings.Contains(r.stdout, "dt") {
		t.Fatalf("topic list with ./quiver-data trusted: %v", r)
	}
}
