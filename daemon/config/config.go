// Package config is quiverd's configuration: defaults, then a TOML file,
// then QUIVER_* environment variables, then command-line flags, each
// overriding the one before. Every setting has the same name in all three:
// max_queue_wait in the file, QUIVER_MAX_QUEUE_WAIT in the environment,
// --max-queue-wait on the command line.
package config

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"github.com/spf13/pflag"

	"github.com/quivermq/quiver/daemon/controller"
	"github.com/quivermq/quiver/replica"
)

// Duration is a time.Duration written as "200ms", "5s", "24h".
type Duration struct{ time.Duration }

func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err != nil {
		return err
	}
	d.Duration = v
	return nil
}

func (d Duration) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// Config is every setting of quiverd.
type Config struct {
	Data       string `toml:"data" help:"data directory (log, indexes, certificate, state)"`
	Listen     string `toml:"listen" help:"QUIC address for producers and consumers"`
	Admin      string `toml:"admin" help:"admin HTTP address (/healthz, /metrics, /status); empty: off"`
	AdminToken string `toml:"admin_token_sha256" help:"SHA-256 (hex) of the bearer token every admin endpoint but /healthz then requires"`
	AdminPprof bool   `toml:"admin_pprof" help:"serve Go's profiles under /debug/pprof/ on the admin address"`
	BrokerID   string `toml:"broker_id" help:"this broker's id in responses and status"`

	Engine        string   `toml:"engine" help:"I/O backend: auto, io_uring or portable"`
	Durability    string   `toml:"durability" help:"default acknowledgement: sync (after fsync) or async"`
	AsyncInterval Duration `toml:"async_interval" help:"async mode: longest time an acknowledged message stays unsynced"`
	MaxQueueWait  Duration `toml:"max_queue_wait" help:"a send waiting longer than this for the log fails with BUSY (retryable)"`
	QueueDepth    int      `toml:"queue_depth" help:"sends that may wait for the log; more fail with BUSY"`
	SegmentSize   int64    `toml:"segment_size" help:"bytes per log segment (fixed once the log exists)"`
	RetentionAge  Duration `toml:"retention_age" help:"delete log segments older than this (0: keep)"`
	RetentionSize int64    `toml:"retention_bytes" help:"delete the oldest segments while the log is larger (0: no limit)"`
	MaxOpenFiles  int      `toml:"max_open_files" help:"consume-queue files kept open at most (the least recently used are closed, and opened again when needed); quiverd raises its soft file limit to the hard one and keeps this below it"`
	DiskReserve   int64    `toml:"disk_reserve" help:"refuse sends (DISK_FULL, retryable) while the data file system's free bytes plus the unused room of the log's preallocated segments are fewer than this; reads, commits and topic changes go on (0: a segment and an eighth)"`

	AutoCreateTopics bool `toml:"auto_create_topics" help:"create a topic on its first send"`
	DefaultQueues    int  `toml:"default_queues" help:"queues of an auto-created topic"`

	TLSCert  string   `toml:"tls_cert" help:"certificate (PEM); default: a self-signed one kept in DATA/tls"`
	TLSKey   string   `toml:"tls_key" help:"private key (PEM) of tls_cert"`
	Tokens   []string `toml:"tokens" help:"accepted client credentials, each with every right; none: no authentication (see acl)"`
	ClientCA string   `toml:"client_ca" help:"PEM file of the CAs whose client certificates are accepted (mutual TLS); with acl, a client without a token is the principal its certificate names (cert_cn)"`
	ACL      string   `toml:"acl" help:"ACL file (TOML): principals, their token hashes and rights; anything not granted is refused; reloaded on SIGHUP (docs/operations.md)"`

	LogLevel  string `toml:"log_level" help:"debug, info, warn or error"`
	LogFormat string `toml:"log_format" help:"text or json"`
	LogFile   string `toml:"log_file" help:"log to this file (rotated at log_file_max_bytes, 3 kept) instead of stderr"`
	LogMax    int64  `toml:"log_file_max_bytes" help:"size at which log_file is rotated"`

	DebugFaults bool `toml:"debug_faults" help:"expose /debug/faults on the admin address to stall the disk (tests and drills only)"`

	Role             string   `toml:"role" help:"a group run by hand: leader, or follower (of --leader); empty: the controller's choice, or leader without a controller"`
	Leader           string   `toml:"leader" help:"follower: the leader's QUIC address"`
	Advertise        string   `toml:"advertise" help:"the address other brokers and clients reach this one at (default: listen)"`
	Peers            []string `toml:"peers" help:"QUIC addresses of the group's brokers, this one included; three or more (and no role) make them the controller's voters"`
	PeerCA           string   `toml:"peer_ca" help:"PEM file of the certificates (or CA) of the group's brokers (default: DATA/tls/cert.pem)"`
	PeerToken        string   `toml:"peer_token" help:"groups run by hand with cluster: credentials this broker presents when it asks other brokers for their state (peer connections authenticate with peer_ca's certificates)"`
	MinInsync        int      `toml:"min_insync" help:"leader: refuse sends while the in-sync set has fewer followers than this, and acknowledge one only once every follower of the set has it durable (0: do not wait)"`
	ReplicaHeartbeat Duration `toml:"replica_heartbeat" help:"how often a follower acks, and a quiet leader sends a heartbeat"`
	ReplicaTimeout   Duration `toml:"replica_timeout" help:"drop the replication peer after this long without hearing from it"`
	ReplicaLag       Duration `toml:"replica_insync_lag" help:"a follower leaves the in-sync set after this long without having everything the leader had"`
	ReplicaAckWait   Duration `toml:"replica_ack_timeout" help:"min_insync: fail a send (retryable) when the followers did not acknowledge it within this"`
	Group            string   `toml:"group" help:"this broker's group (default: the id of the broker that led the group first)"`
	Cluster          []string `toml:"cluster" help:"groups run by hand: QUIC addresses of brokers of other groups (any of each is enough): the brokers tell each other and clients the rest (under a controller, its state describes the cluster)"`
	ClusterRefresh   Duration `toml:"cluster_refresh" help:"how often this broker asks the brokers it knows for their state"`
	ReplicaCatchup   int64    `toml:"replica_catchup_mib" help:"leader: MiB per second sent, in all, to followers catching up from behind (0: no limit); followers at the tail are never held back"`

	Controllers         []string `toml:"controllers" help:"QUIC addresses of the controller quorum's voters (1, 3 or 5 brokers), which elect every group's leader; default: the peers, when there are three or more and no role"`
	ControllerHeartbeat Duration `toml:"controller_heartbeat" help:"how often a broker reports to the controller"`
	ControllerSession   Duration `toml:"controller_session" help:"the controller replaces a group leader it has not heard from for this long (a leader with min_insync 0 stops taking writes a heartbeat earlier)"`
}

// Voters are the controller's voters this configuration asks for: the
// controllers, or the peers when there are three or more and no role is
// set; none: the groups are run by hand.
func (c *Config) Voters() []string {
	if len(c.Controllers) > 0 {
		return c.Controllers
	}
	if len(c.Peers) >= 3 && c.Role == "" {
		return c.Peers
	}
	return nil
}

// Default is the configuration of a broker started with nothing.
func Default() Config {
	return Config{
		Data: "./quiver-data", Listen: "127.0.0.1:7420", Admin: "127.0.0.1:7421", BrokerID: "quiverd",
		Engine: "auto", Durability: "sync", AsyncInterval: Duration{100 * time.Millisecond},
		MaxQueueWait: Duration{200 * time.Millisecond}, QueueDepth: 8192, SegmentSize: 1 << 30,
		AutoCreateTopics: true, DefaultQueues: 4, MaxOpenFiles: 4096,
		LogLevel: "info", LogFormat: "text", LogMax: 64 << 20,
		ReplicaHeartbeat: Duration{replica.DefaultHeartbeat}, ReplicaTimeout: Duration{replica.DefaultTimeout},
		ReplicaLag: Duration{replica.DefaultInsyncLag}, ReplicaAckWait: Duration{replica.DefaultAckTimeout}, ReplicaCatchup: replica.DefaultCatchupMiB,
		ClusterRefresh:      Duration{time.Second},
		ControllerHeartbeat: Duration{controller.DefaultHeartbeat}, ControllerSession: Duration{controller.DefaultSession},
	}
}

// Validate reports the first setting out of range.
func (c *Config) Validate() error {
	switch {
	case c.Data == "":
		return errors.New("config: data is empty")
	case c.Listen == "":
		return errors.New("config: listen is empty")
	case c.AdminToken != "" && !isSHA256Hex(c.AdminToken):
		return errors.New("config: admin_token_sha256 must be 64 hex digits (sha256sum of the token)")
	case c.ACL != "" && len(c.Tokens) > 0:
		return errors.New("config: tokens and acl: with an ACL every token is a principal's token_sha256 there")
	case c.Durability != "sync" && c.Durability != "async":
		return fmt.Errorf("config: durability %q (sync or async)", c.Durability)
	case c.Engine != "auto" && c.Engine != "io_uring" && c.Engine != "portable":
		return fmt.Errorf("config: engine %q (auto, io_uring or portable)", c.Engine)
	case c.MaxQueueWait.Duration <= 0:
		return fmt.Errorf("config: max_queue_wait %v must be positive", c.MaxQueueWait)
	case c.AsyncInterval.Duration <= 0:
		return fmt.Errorf("config: async_interval %v must be positive", c.AsyncInterval)
	case c.QueueDepth < 1:
		return fmt.Errorf("config: queue_depth %d", c.QueueDepth)
	case c.SegmentSize < 16<<20 || c.SegmentSize&(c.SegmentSize-1) != 0:
		return fmt.Errorf("config: segment_size %d must be a power of two of at least 16 MiB", c.SegmentSize)
	case c.DefaultQueues < 1 || c.DefaultQueues > 1024:
		return fmt.Errorf("config: default_queues %d (1..1024)", c.DefaultQueues)
	case (c.TLSCert == "") != (c.TLSKey == ""):
		return errors.New("config: tls_cert and tls_key go together")
	case c.LogFormat != "text" && c.LogFormat != "json":
		return fmt.Errorf("config: log_format %q (text or json)", c.LogFormat)
	case c.LogMax < 1<<20:
		return fmt.Errorf("config: log_file_max_bytes %d is below 1 MiB", c.LogMax)
	case c.RetentionAge.Duration < 0 || c.RetentionSize < 0:
		return errors.New("config: negative retention")
	}
	switch n := len(c.Voters()); {
	case c.Role != "" && c.Role != "leader" && c.Role != "follower":
		return fmt.Errorf("config: role %q (leader, follower, or empty for the controller's choice)", c.Role)
	case len(c.Controllers) > 0 && c.Role != "":
		return fmt.Errorf("config: role %q and controllers: the controller gives every broker its role", c.Role)
	case n > 0 && n != 1 && n != 3 && n != 5:
		return fmt.Errorf("config: %d controller voters (%v): 1, 3 or 5", n, c.Voters())
	case n > 0 && (c.ControllerHeartbeat.Duration <= 0 || c.ControllerSession.Duration < 3*c.ControllerHeartbeat.Duration):
		return fmt.Errorf("config: controller_session %v must be at least three times controller_heartbeat %v", c.ControllerSession, c.ControllerHeartbeat)
	case c.ClusterRefresh.Duration < 100*time.Millisecond:
		return fmt.Errorf("config: cluster_refresh %v (at least 100ms)", c.ClusterRefresh)
	case c.ReplicaCatchup < 0:
		return fmt.Errorf("config: replica_catchup_mib %d is negative", c.ReplicaCatchup)
	case c.Role == "follower" && c.Leader == "":
		return errors.New("config: a follower needs leader (the leader's address)")
	case c.DiskReserve < 0:
		return fmt.Errorf("config: disk_reserve %d must not be negative", c.DiskReserve)
	case c.MaxOpenFiles < 64:
		return fmt.Errorf("config: max_open_files %d (at least 64)", c.MaxOpenFiles)
	case c.MinInsync < 0:
		return fmt.Errorf("config: min_insync %d", c.MinInsync)
	case c.ReplicaHeartbeat.Duration <= 0 || c.ReplicaTimeout.Duration <= 0 || c.ReplicaLag.Duration <= 0 || c.ReplicaAckWait.Duration <= 0:
		return errors.New("config: replica durations must be positive")
	case c.ReplicaTimeout.Duration < 2*c.ReplicaHeartbeat.Duration:
		return fmt.Errorf("config: replica_timeout %v must be at least twice replica_heartbeat %v", c.ReplicaTimeout, c.ReplicaHeartbeat)
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		return fmt.Errorf("config: log_level %q", c.LogLevel)
	}
	return nil
}

// setting is one field of Config with its three names.
type setting struct {
	key  string // toml
	flag string
	env  string
	help string
	v    reflect.Value
}

func settings(c *Config) []setting {
	rv := reflect.ValueOf(c).Elem()
	rt := rv.Type()
	out := make([]setting, 0, rt.NumField())
	for i := 0; i < rt.NumField(); i++ {
		f := rt.Field(i)
		key := f.Tag.Get("toml")
		out = append(out, setting{key: key, flag: strings.ReplaceAll(key, "_", "-"), env: "QUIVER_" + strings.ToUpper(key),
			help: f.Tag.Get("help"), v: rv.Field(i)})
	}
	return out
}

// LoadFile applies a TOML file over c. Unknown keys are an error, so that
// a misspelt setting is not silently ignored.
func (c *Config) LoadFile(path string) error {
	md, err := toml.DecodeFile(path, c)
	if err != nil {
		return fmt.Errorf("config: %s: %w", path, err)
	}
	if un := md.Undecoded(); len(un) > 0 {
		return fmt.Errorf("config: %s: unknown setting %q", path, un[0].String())
	}
	return nil
}

// ApplyEnv applies QUIVER_* variables over c (lookup is os.LookupEnv).
func (c *Config) ApplyEnv(lookup func(string) (string, bool)) error {
	for _, s := range settings(c) {
		val, ok := lookup(s.env)
		if !ok {
			continue
		}
		if err := set(s.v, val); err != nil {
			return fmt.Errorf("config: %s=%q: %w", s.env, val, err)
		}
	}
	return nil
}

func set(v reflect.Value, s string) error {
	switch p := v.Addr().Interface().(type) {
	case *string:
		*p = s
	case *int:
		n, err := strconv.Atoi(s)
		if err != nil {
			return err
		}
		*p = n
	case *int64:
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return err
		}
		*p = n
	case *bool:
		b, err := strconv.ParseBool(s)
		if err != nil {
			return err
		}
		*p = b
	case *Duration:
		return p.UnmarshalText([]byte(s))
	case *[]string:
		*p = nil
		for _, f := range strings.Split(s, ",") {
			if f = strings.TrimSpace(f); f != "" {
				*p = append(*p, f)
			}
		}
	default:
		return fmt.Errorf("unsupported setting type %s", v.Type())
	}
	return nil
}

// Flags defines one flag per setting on fs, bound to a shadow Config; call
// the returned function after parsing to apply the flags that were given
// over c.
func Flags(fs *pflag.FlagSet) func(c *Config) {
	shadow := Default()
	for _, s := range settings(&shadow) {
		switch p := s.v.Addr().Interface().(type) {
		case *string:
			fs.StringVar(p, s.flag, *p, s.help)
		case *int:
			fs.IntVar(p, s.flag, *p, s.help)
		case *int64:
			fs.Int64Var(p, s.flag, *p, s.help)
		case *bool:
			fs.BoolVar(p, s.flag, *p, s.help)
		case *Duration:
			fs.DurationVar(&p.Duration, s.flag, p.Duration, s.help)
		case *[]string:
			fs.StringSliceVar(p, s.flag, *p, s.help)
		}
	}
	return func(c *Config) {
		src := settings(&shadow)
		for i, dst := range settings(c) {
			if fs.Changed(dst.flag) {
				dst.v.Set(src[i].v)
			}
		}
	}
}

// Load builds the configuration: defaults, the file (if path is set), the
// environment, then the flags applied by applyFlags.
func Load(path string, lookup func(string) (string, bool), applyFlags func(*Config)) (Config, error) {
	c := Default()
	if path != "" {
		if err := c.LoadFile(path); err != nil {
			return c, err
		}
	}
	if lookup == nil {
		lookup = os.LookupEnv
	}
	if err := c.ApplyEnv(lookup); err != nil {
		return c, err
	}
	if applyFlags != nil {
		applyFlags(&c)
	}
	return c, c.Validate()
}

func isSHA256Hex(s string) bool {
	b, err := hex.DecodeString(s)
	return err == nil && len(b) == sha256.Size
}
