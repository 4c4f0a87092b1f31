package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/pflag"
)

// Flags override the environment, which overrides the file, which
// overrides the defaults; each setting has the same name in all three.
func TestPrecedence(t *testing.T) {
	path := filepath.Join(t.TempDir(), "quiverd.toml")
	os.WriteFile(path, []byte(`
data = "/from/file"
listen = "127.0.0.1:9000"
max_queue_wait = "300ms"
default_queues = 8
tokens = ["a", "b"]
`), 0o644)
	env := map[string]string{"QUIVER_LISTEN": "127.0.0.1:9001", "QUIVER_DEFAULT_QUEUES": "16", "QUIVER_AUTO_CREATE_TOPICS": "false"}
	fs := pflag.NewFlagSet("t", pflag.ContinueOnError)
	apply := Flags(fs)
	if err := fs.Parse([]string{"--default-queues", "32"}); err != nil {
		t.Fatal(err)
	}
	c, err := Load(path, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, apply)
	if err != nil {
		t.Fatal(err)
	}
	if c.Data != "/from/file" || c.Listen != "127.0.0.1:9001" || c.DefaultQueues != 32 ||
		c.MaxQueueWait.Duration != 300*time.Millisecond || c.AutoCreateTopics || strings.Join(c.Tokens, ",") != "a,b" {
		t.Fatalf("merged config: %+v", c)
	}
	// Untouched settings keep their defaults.
	if d := Default(); c.Admin != d.Admin || c.Durability != "sync" {
		t.Fatalf("defaults lost: %+v", c)
	}
}

func TestBadInputIsRefused(t *testing.T) {
	dir := t.TempDir()
	cases := map[string]string{
		"unknown key":    `max_queue_wiat = "1s"`,
		"bad durability": `durability = "sometimes"`,
		"bad duration":   `max_queue_wait = "fast"`,
		"lone cert":      `tls_cert = "c.pem"`,
		"tiny segments":  `segment_size = 4096`,
		"negative rate":  `replica_catchup_mib = -1`,
		"two voters":     `controllers = ["a:1", "b:1"]`,
		"four peers":     `peers = ["a:1", "b:1", "c:1", "d:1"]`,
		"role and controllers": `role = "leader"
controllers = ["a:1"]`,
		"short session": `peers = ["a:1", "b:1", "c:1"]
controller_session = "1s"`,
		"unknown role": `role = "boss"`,
	}
	for name, body := range cases {
		path := filepath.Join(dir, strings.ReplaceAll(name, " ", "_")+".toml")
		os.WriteFile(path, []byte(body), 0o644)
		if _, err := Load(path, func(string) (string, bool) { return "", false }, nil); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Load("", func(k string) (string, bool) { return "x", k == "QUIVER_DEFAULT_QUEUES" }, nil); err == nil {
		t.Error("a non-numeric QUIVER_DEFAULT_QUEUES was accepted")
	}
}

// Who elects the leaders: the controllers when given; else the peers when
// there are three or more and no role (brokers started alike); else
// nobody (a group run by hand).
func TestVoters(t *testing.T) {
	for _, tc := range []struct {
		peers, controllers []string
		role               string
		want               string
	}{
		{peers: []string{"a:1", "b:1", "c:1"}, want: "a:1,b:1,c:1"},
		{peers: []string{"a:1", "b:1", "c:1"}, role: "leader", want: ""},
		{peers: []string{"a:1", "b:1"}, want: ""},
		{peers: []string{"a:1", "b:1"}, controllers: []string{"x:1", "y:1", "z:1"}, want: "x:1,y:1,z:1"},
		{want: ""},
	} {
		c := Default()
		c.Peers, c.Controllers, c.Role = tc.peers, tc.controllers, tc.role
		if got := strings.Join(c.Voters(), ","); got != tc.want {
			t.Errorf("peers %v, controllers %v, role %q: voters %q, want %q", tc.peers, tc.controllers, tc.role, got, tc.want)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("peers %v, controllers %v, role %q: %v", tc.peers, tc.controllers, tc.role, err)
		}
	}
}
