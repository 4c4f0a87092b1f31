//go:build !windows

package main

import (
	"encoding/json"
	"regexp"
	"strings"
	"testing"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// Wrong command lines exit 2 with an error that says what is wrong,
// before any connection is made.
func TestUsageErrors(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{nil, "a command is required"},
		{[]string{"nosuch"}, `unknown command "nosuch"`},
		{[]string{"--nosuch", "status"}, "unknown flag: --nosuch"},
		{[]string{"produce"}, "--topic is required"},
		{[]string{"produce", "--topic", "t", "--durability", "eventually"}, `--durability "eventually": want sync or async`},
		{[]string{"produce", "--topic", "t", "extra"}, "takes no arguments"},
		{[]string{"consume", "--group", "g"}, "--topic is required"},
		{[]string{"consume", "--topic", "t"}, "--group is required"},
		{[]string{"consume", "--topic", "t", "--group", "g", "--count", "0"}, "--count 0: must be at least 1"},
		{[]string{"consume", "--topic", "t", "--group", "g", "--count", "-3"}, "--count -3: must be at least 1"},
		{[]string{"consume", "--topic", "t", "--group", "g", "--count", "many"}, `invalid argument "many" for "--count"`},
		{[]string{"consume", "--topic", "t", "--group", "g", "--from", "middle"}, `--from "middle": want earliest, latest or a time`},
		{[]string{"consume", "--topic", "t", "--group", strings.Repeat("g", 256)}, "--group of 256 bytes"},
		{[]string{"topic"}, "topic needs a command"},
		{[]string{"admin"}, "admin needs a command: promote or elect"},
		{[]string{"admin", "elect"}, "--group is required"},
		{[]string{"admin", "elect", "--broker-id", "b2"}, "--group is required"},
		{[]string{"topic", "drop", "t"}, `unknown command "drop"`},
		{[]string{"topic", "create"}, "takes the topic name, got 0"},
		{[]string{"topic", "create", "a", "b"}, "takes the topic name, got 2"},
		{[]string{"topic", "create", "t", "--queues", "0"}, "--queues 0: want 1..1024"},
		{[]string{"topic", "status", "a", "b"}, "at most one topic name"},
		{[]string{"--broker", "localhost", "status"}, `--broker "localhost": want host:port`},
		{[]string{"--timeout", "0s", "status"}, "--timeout 0s: must be positive"},
		{[]string{"--ca", "x.pem", "--fingerprint", "ab", "status"}, "--ca and --fingerprint both given"},
	} {
		r := runCLI(t, noEnv, "", tc.args...)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) || r.stdout != "" {
			t.Errorf("quiver %q: want exit 2 and %q, got %v", tc.args, tc.want, r)
		}
	}
}

// Every way to trust a broker works, and a wrong one fails with why.
func TestTrust(t *testing.T) {
	b := testbroker.Start(t)
	env := func(k string) (string, bool) {
		if k == "QUIVER_CA" {
			return b.CAFile, true
		}
		return "", false
	}
	must(t, runCLI(t, env, "", "--broker", b.Addr, "topic", "list"))
	fp := fingerprint(t, b.CAFile)
	must(t, runCLI(t, noEnv, "", "--broker", b.Addr, "--fingerprint", fp, "topic", "list"))
	// A flag wins over QUIVER_CA.
	must(t, runCLI(t, func(string) (string, bool) { return "/nonexistent.pem", true }, "", "--broker", b.Addr, "--fingerprint", fp, "topic", "list"))

	wrong := strings.Repeat("0", 64)
	r := runCLI(t, noEnv, "", "--broker", b.Addr, "--fingerprint", wrong, "topic", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "certificate not trusted") {
		t.Fatalf("wrong fingerprint: %v", r)
	}
	r = runCLI(t, noEnv, "", "--broker", b.Addr, "--fingerprint", "abc", "topic", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "is not a SHA-256 in hex") {
		t.Fatalf("malformed fingerprint: %v", r)
	}
	r = runCLI(t, noEnv, "", "--broker", b.Addr, "--ca", "/nonexistent.pem", "topic", "list")
	if r.code != 1 || !strings.Contains(r.stderr, "CA file") {
		t.Fatalf("missing CA file: %v", r)
	}
	// consume fails at once too instead of retrying in the background.
	r = runCLI(t, noEnv, "", "--broker", b.Addr, "--fingerprint", wrong, "consume", "--topic", "t", "--group", "g")
	if r.code != 1 || !strings.Contains(r.stderr, "certificate not trusted") {
		t.Fatalf("consume with a wrong fingerprint: %v", r)
	}
}

// topic create, list and status and status, as tables and as JSON.
func TestTopicAndStatus(t *testing.T) {
	b := testbroker.Start(t)
	cli := func(args ...string) result { return runCLI(t, noEnv, "", with(b, args...)...) }

	if got := decodeJSON[topicJSON](t, cli("topic", "create", "st", "--queues", "3", "--json")); got != (topicJSON{"st", 3}) {
		t.Fatalf("topic create --json: %+v", got)
	}
	// Creating it again with the same queues succeeds; with others fails.
	if r := must(t, cli("topic", "create", "st", "--queues", "3")); r.stdout != "topic st: 3 queues\n" {
		t.Fatalf("topic create: %v", r)
	}
	if r := cli("topic", "create", "st", "--queues", "5"); r.code != 1 {
		t.Fatalf("topic create with other queues: %v", r)
	}
	must(t, cli("topic", "create", "other"))

	list := decodeJSON[[]topicJSON](t, cli("topic", "list", "--json"))
	if len(list) != 2 || list[0] != (topicJSON{"other", 4}) || list[1] != (topicJSON{"st", 3}) {
		t.Fatalf("topic list --json: %+v", list)
	}
	if r := must(t, cli("topic", "list")); r.stdout != "TOPIC  QUEUES\nother  4\nst     3\n" {
		t.Fatalf("topic list:\n%s", r.stdout)
	}
	// A page at a time.
	if r := must(t, cli("topic", "list", "--limit", "1")); r.stdout != "TOPIC  QUEUES\nother  4\n... and 1 more topics (--from st for the next page, --limit 0 for all)\n" {
		t.Fatalf("topic list --limit 1:\n%s", r.stdout)
	}
	if list := decodeJSON[[]topicJSON](t, cli("topic", "list", "--from", "st", "--json")); len(list) != 1 || list[0] != (topicJSON{"st", 3}) {
		t.Fatalf("topic list --from st --json: %+v", list)
	}
	if r := cli("topic", "list", "--limit", "-1"); r.code != 2 || !strings.Contains(r.stderr, "--limit must be") {
		t.Fatalf("topic list --limit -1: %v", r)
	}

	acks := parseAcks(t, must(t, runCLI(t, noEnv, "a\nb\n", with(b, "produce", "--topic", "st", "--acks", "--durability", "async")...)).stdout, 2)
	ts := decodeJSON[wire.TopicStatus](t, cli("topic", "status", "st", "--json"))
	if ts.Name != "st" || len(ts.Queues) != 3 {
		t.Fatalf("topic status st --json: %+v", ts)
	}
	for _, q := range ts.Queues {
		want := uint64(0)
		for _, a := range acks {
			if a.queue == q.Queue {
				want = max(want, a.offset+1)
			}
		}
		if q.Max != want || q.Min != 0 || (want > 0) != (q.LastStore != "") {
			t.Fatalf("queue %+v; acks %v", q, acks)
		}
	}
	all := decodeJSON[[]wire.TopicStatus](t, cli("topic", "status", "--json"))
	if len(all) != 2 || all[0].Name != "other" || all[1].Name != "st" {
		t.Fatalf("topic status --json: %+v", all)
	}
	r := must(t, cli("topic", "status", "st"))
	if !strings.HasPrefix(r.stdout, "TOPIC  QUEUE  MIN  MAX  LAST STORE") || len(lines(t, r.stdout)) != 4 || strings.Contains(r.stdout, "other") {
		t.Fatalf("topic status st:\n%s", r.stdout)
	}
	if r := cli("topic", "status", "nosuch"); r.code != 1 || !strings.Contains(r.stderr, "topic nosuch does not exist") {
		t.Fatalf("topic status of a missing topic: %v", r)
	}

	st := decodeJSON[sdk.Status](t, cli("status", "--json"))
	if st.Broker.ID == "" || st.Broker.Engine == "" || st.Positions.Written == 0 || st.Connections == nil || len(st.Topics) != 2 || st.Topics[1].Name != "st" {
		t.Fatalf("status --json: %+v", st)
	}
	r = must(t, cli("status"))
	for _, want := range []string{"broker ", "engine ", "durability ", "positions ", "send queue ", "disk ", " free of ", "warnings ", "connections ",
		"TOPIC  QUEUE", "\nst ", "no consumer groups"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("status lacks %q:\n%s", want, r.stdout)
		}
	}
}

// With several brokers, a command gets through while one does not answer.
func TestSeveralBrokers(t *testing.T) {
	b := testbroker.Start(t)
	dead := testbroker.HoleAddr(t)
	for _, brokers := range []string{dead + "," + b.Addr, b.Addr + "," + dead} {
		must(t, runCLI(t, noEnv, "", "--broker", brokers, "--ca", b.CAFile, "--timeout", "1s", "topic", "create", "several"))
	}
	r := must(t, runCLI(t, noEnv, "x\ny\n", "--broker", dead, "--broker", b.Addr, "--ca", b.CAFile, "--timeout", "1s",
		"produce", "--topic", "several", "--acks"))
	parseAcks(t, r.stdout, 2)

	dead2 := testbroker.HoleAddr(t)
	r = runCLI(t, noEnv, "", "--broker", dead+","+dead2, "--ca", b.CAFile, "--timeout", "500ms", "status")
	if r.code != 1 || !strings.Contains(r.stderr, "no broker answered") ||
		!strings.Contains(r.stderr, dead) || !strings.Contains(r.stderr, dead2) {
		t.Fatalf("status with no broker answering: %v", r)
	}
}

// quiver cluster shows the groups a broker knows of, from one broker; topic
// create makes the topic's queues on every group; status lists the other
// brokers this one hears from.
func TestClusterCommand(t *testing.T) {
	c := testbroker.StartCluster(t, 2, 1, nil, nil)
	b := c.Groups[0].Leader
	var out struct {
		Groups []sdk.GroupInfo `json:"groups"`
	}
	testbroker.WaitFor(t, "both groups and their followers", func() bool {
		r := runCLI(t, noEnv, "", with(b, "cluster", "--json")...)
		return r.code == 0 && json.Unmarshal([]byte(r.stdout), &out) == nil && len(out.Groups) == 2 &&
			out.Groups[1].Leader == c.Groups[1].Leader.Addr && len(out.Groups[1].Followers) == 1
	})
	must(t, runCLI(t, noEnv, "", with(b, "topic", "create", "spread", "--queues", "3")...))
	r := must(t, runCLI(t, noEnv, "", with(b, "cluster")...))
	for _, want := range []string{"GROUP", "g0 ", "g1 ", "spread(3)", c.Groups[1].Followers[0].Addr, "BROKER", "g1b1", "follower"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("cluster lacks %q:\n%s", want, r.stdout)
		}
	}
	if strings.Count(r.stdout, "spread(3)") != 2 {
		t.Fatalf("the topic is not on both groups:\n%s", r.stdout)
	}
	r = must(t, runCLI(t, noEnv, "", with(b, "status")...))
	if !strings.Contains(r.stdout, "CLUSTER") || !strings.Contains(r.stdout, "g1b0") {
		t.Fatalf("status lacks the cluster:\n%s", r.stdout)
	}
}

// status shows the replication of a group, and admin promote makes the
// follower the leader of a new epoch.
func TestReplicationStatusAndPromote(t *testing.T) {
	g := testbroker.StartGroup(t, 1, nil, nil)
	l, f := g.Leader, g.Followers[0]
	testbroker.WaitFor(t, "the follower to connect", func() bool {
		r := l.Status().Replication
		return r != nil && len(r.Followers) == 1 && r.Followers[0].Connected
	})
	r := must(t, runCLI(t, noEnv, "", "--broker", l.Addr, "--ca", g.Bundle, "status"))
	for _, want := range []string{"replication  leader, epoch 1 led by b0", "FOLLOWER", "b1", "RECONNECTS"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("leader's status lacks %q:\n%s", want, r.stdout)
		}
	}
	r = must(t, runCLI(t, noEnv, "", "--broker", f.Addr, "--ca", g.Bundle, "status"))
	if !strings.Contains(r.stdout, "replication  follower, epoch 1 led by b0") || !strings.Contains(r.stdout, "following") {
		t.Fatalf("follower's status:\n%s", r.stdout)
	}
	if r := runCLI(t, noEnv, "", "--broker", l.Addr+","+f.Addr, "--ca", g.Bundle, "admin", "promote"); r.code != 2 {
		t.Fatalf("promote with two brokers: %v", r)
	}
	if r := runCLI(t, noEnv, "", "--ca", g.Bundle, "admin", "promote"); r.code != 2 || !strings.Contains(r.stderr, "--broker") {
		t.Fatalf("promote with no --broker (the default address): %v", r)
	}
	r = must(t, runCLI(t, noEnv, "", "--broker", f.Addr, "--ca", g.Bundle, "admin", "promote"))
	if !strings.Contains(r.stdout, "b1 leads epoch 2") {
		t.Fatalf("promote: %s", r.stdout)
	}
	// The old leader was told: it no longer takes writes.
	testbroker.WaitFor(t, "the old leader to follow", func() bool {
		rr := l.Status().Replication
		return rr != nil && rr.Role == "follower"
	})
}

// Under a controller, status and cluster show the groups it runs with
// their in-sync sets, and admin elect moves the leadership to the broker
// it names; a group run by hand refuses elect and points to promote.
func TestControllerStatusAndElect(t *testing.T) {
	c := testbroker.StartControlled(t, 3, []string{"--min-insync", "1"}, nil)
	l := c.Leader(t)
	cli := func(addrs []string, args ...string) result {
		return runCLI(t, noEnv, "", append([]string{"--broker", strings.Join(addrs, ","), "--ca", c.Bundle}, args...)...)
	}

	// The controller adds the followers to the in-sync set once they
	// caught up with the leader.
	var gc wire.GroupControl
	testbroker.WaitFor(t, "both followers in the controller's in-sync set", func() bool {
		r := l.Status().Replication
		if r == nil || r.Controller == nil || len(r.Controller.Groups) != 1 {
			return false
		}
		gc = r.Controller.Groups[0]
		return len(gc.ISR) == 3 && len(r.ISR) == 2
	})
	isr := strings.Join(gc.ISR, ",")
	r := must(t, cli([]string{l.Addr}, "status"))
	for _, want := range []string{"replication  leader", "in-sync set", "CONTROLLER", "voters", "quorum", "session  connected",
		"GROUP", "IN SYNC", "MEMBERS", gc.Name + " ", isr + " (version", c.ID(l) + " live"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("leader's status lacks %q:\n%s", want, r.stdout)
		}
	}

	r = must(t, cli(c.Addrs, "cluster"))
	for _, want := range []string{"BROKER", "IN SYNC", gc.Name + " ", isr + " (version"} {
		if !strings.Contains(r.stdout, want) {
			t.Fatalf("cluster lacks %q:\n%s", want, r.stdout)
		}
	}
	var out struct {
		Controller *wire.ControllerStatus `json:"controller"`
	}
	if err := json.Unmarshal([]byte(must(t, cli(c.Addrs, "cluster", "--json")).stdout), &out); err != nil ||
		out.Controller == nil || len(out.Controller.Groups) != 1 || out.Controller.Groups[0].Name != gc.Name {
		t.Fatalf("cluster --json: %v, controller %+v", err, out.Controller)
	}

	var f *testbroker.Broker
	for _, b := range c.Brokers {
		if b != l {
			f = b
			break
		}
	}
	r = must(t, cli(c.Addrs, "admin", "elect", "--group", gc.Name, "--broker-id", c.ID(f)))
	// It answers with the election's outcome: the broker asked for, in a
	// newer epoch.
	if !regexp.MustCompile(`^` + c.ID(f) + ` leads group ` + regexp.QuoteMeta(gc.Name) + ` in epoch \d+ at ` + regexp.QuoteMeta(f.Addr) + `\n$`).MatchString(r.stdout) {
		t.Fatalf("admin elect: %v", r)
	}
	testbroker.WaitFor(t, c.ID(f)+" to lead", func() bool {
		role, epoch := f.Role()
		return role == "leader" && epoch > gc.Epoch
	})
	if nl := c.Leader(t); nl != f {
		t.Fatalf("%s leads after electing %s", c.ID(nl), c.ID(f))
	}
	r = must(t, cli([]string{f.Addr}, "status"))
	if want := c.ID(l) + " -> " + c.ID(f); !strings.Contains(r.stdout, want) {
		t.Fatalf("status lacks the election %q:\n%s", want, r.stdout)
	}

	// --unclean warns before it asks, whatever the controller elects.
	r = must(t, cli(c.Addrs, "admin", "elect", "--group", gc.Name, "--unclean", "--json"))
	var info struct {
		Epoch      uint64 `json:"epoch"`
		Leader     string `json:"leader"`
		LeaderAddr string `json:"leader_addr"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || info.Epoch == 0 || info.Leader == "" || info.LeaderAddr == "" ||
		!strings.Contains(r.stderr, "WARNING") || !strings.Contains(r.stderr, "last resort") {
		t.Fatalf("admin elect --unclean --json: %v (%v)", r, err)
	}

	g := testbroker.StartGroup(t, 1, nil, nil)
	r = runCLI(t, noEnv, "", "--broker", g.Leader.Addr, "--ca", g.Bundle, "admin", "elect", "--group", "g0")
	if r.code != 1 || !strings.Contains(r.stderr, "promote") {
		t.Fatalf("admin elect on a group run by hand: %v", r)
	}
}
