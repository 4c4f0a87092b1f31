// Command quiver-bench is Quiver's load generator: producers sending to a
// broker in closed loop, pipelined or open loop (corrected for
// coordinated omission), in batches or not, with consumers measuring
// publish-to-consume latency; and `compare`, the same workload against
// Quiver and NATS JetStream side by side, each system in a child process.
//
// Scripts rely on: quiver-bench --broker ADDR --producers N --size BYTES
// --duration 8s --json printing one JSON object (msgs_per_sec, p50_us,
// p99_us, p999_us, errors, ...) on stdout. See benchmarks/README.md.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/pprof"
	"runtime/trace"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/quivermq/quiver/benchmarks/internal/bench"
	"github.com/quivermq/quiver/benchmarks/internal/natsjs"
	"github.com/quivermq/quiver/benchmarks/internal/quiver"
	"github.com/quivermq/quiver/internal/buildinfo"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError is a command line that is wrong (exit status 2).
type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

func run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot()
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return 0
	}
	fmt.Fprintln(stderr, "quiver-bench:", err)
	var ue usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

// options are the command line.
type options struct {
	coalesce   bool
	linger     time.Duration
	idem       bool
	cpuProfile string
	traceFile  string
	cfg        bench.Config

	broker, ca, fingerprint string
	token                   string
	durability, engine      string
	quiverd, dataDir        string
	asyncInterval           time.Duration
	topic                   string
	queues                  int
	compression             string
	connections             int
	sendTimeout             time.Duration
	startupTimeout          time.Duration

	json     bool
	plot     string
	progress bool // forced on or off; default: when stderr is a terminal

	systems  []string
	baseline string
}

const longHelp = `quiver-bench sends messages to a Quiver broker and reports throughput and
latency (HdrHistogram, microseconds): msgs/s, MB/s, p50, p90, p99, p99.9, max.

Modes (latency is per send call, acknowledgement included):
  closed loop (default)  each of --producers calls Send and waits for the ack
                         before the next one: latency at the load the broker
                         sustains, throughput = producers / latency.
  pipelined (--window W) each producer keeps W SendAsync in flight.
  open loop (--rate R)   R msgs/s in total, scheduled at fixed intended times
                         whatever the broker does; latency counts from the
                         intended send time, so a stall is charged to every
                         send it delayed (corrected for coordinated omission,
                         as in wrk2). With --window the sends are asynchronous.
  batches (--batch B)    each send is one SendBatch of B messages (--compression
                         none|zstd|s2); msgs/s counts messages, latency is per batch.
  --consumers C          C consumers in one group measure publish-to-consume
                         latency (e2e_*): the send time travels in the first 8
                         bytes of each body.

Without --broker it starts quiverd itself (next to quiver-bench, else in $PATH,
else --quiverd) in a temporary directory on free loopback ports, as a separate
process, and stops it at the end. Bodies are random bytes unless --compressible.
The first --warmup is not measured. --json prints one JSON object on stdout
instead of the table; --plot FILE.png|.svg draws latency by percentile.

Trust for --broker: --ca FILE, $QUIVER_CA, --fingerprint HEX, else
./quiver-data/tls/cert.pem; verification is never skipped.`

func newRoot() *cobra.Command {
	o := &options{}
	root := &cobra.Command{
		Use:           "quiver-bench",
		Short:         "Load generator for Quiver, and a comparison with NATS JetStream",
		Long:          longHelp,
		Version:       buildinfo.Get().String(),
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.check(cmd); err != nil {
				return err
			}
			return runSingle(cmd, o)
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return usagef("%v (see %s --help)", err, cmd.CommandPath())
	})
	f := root.Flags()
	addWorkloadFlags(root, o)
	f.StringVar(&o.broker, "broker", "", "address of a running broker (host:port); empty: start quiverd")
	f.StringVar(&o.ca, "ca", "", "with --broker: PEM file with its certificate (default $QUIVER_CA, else ./quiver-data/tls/cert.pem)")
	f.StringVar(&o.fingerprint, "fingerprint", "", "with --broker: trust exactly the certificate with this SHA-256 fingerprint (hex)")
	f.StringVar(&o.token, "token", "", "with --broker: the credentials to present (default $QUIVER_TOKEN)")
	f.StringVar(&o.durability, "durability", "", "sync or async: the producers' durability, and the started quiverd's default (default: the broker's, sync for a started quiverd)")
	f.StringVar(&o.engine, "engine", "auto", "started quiverd's I/O backend: auto, io_uring or portable")
	f.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of quiver-bench itself (the client side) to this file")
	f.StringVar(&o.traceFile, "trace", "", "write an execution trace of quiver-bench itself (go tool trace) to this file")
	root.AddCommand(compareCmd(), plotCmd(), natsServerCmd())
	return root
}

// addWorkloadFlags adds the flags the main command and compare share.
func addWorkloadFlags(cmd *cobra.Command, o *options) {
	f := cmd.Flags()
	f.IntVar(&o.cfg.Producers, "producers", 1, "concurrent producers")
	f.IntVar(&o.cfg.Size, "size", 1024, "body bytes")
	f.DurationVar(&o.cfg.Duration, "duration", 8*time.Second, "measured time, after the warmup")
	f.Int64Var(&o.cfg.Count, "count", 0, "measure this many messages instead of a duration")
	f.DurationVar(&o.cfg.Warmup, "warmup", time.Second, "load before the measurement, not measured")
	f.IntVar(&o.cfg.Window, "window", 0, "pipelined: asynchronous sends each producer keeps in flight (0: synchronous sends)")
	f.Float64Var(&o.cfg.Rate, "rate", 0, "open loop: messages per second in total, latency from the intended send time (0: closed loop)")
	f.IntVar(&o.cfg.Batch, "batch", 0, "messages per send (SendBatch); 0 or 1: single messages")
	f.IntVar(&o.cfg.Consumers, "consumers", 0, "consumers in one group measuring publish-to-consume latency")
	f.BoolVar(&o.cfg.Compressible, "compressible", false, "JSON-like bodies that compress, instead of random bytes")
	f.DurationVar(&o.cfg.Drain, "drain", 10*time.Second, "with --consumers: how long to wait for them after the last send")
	f.StringVar(&o.compression, "compression", "none", "batch compression: none, zstd or s2")
	f.StringVar(&o.topic, "topic", "bench", "topic (Quiver) and subject (NATS)")
	f.IntVar(&o.queues, "queues", 8, "queues of the topic, when it is created")
	f.IntVar(&o.connections, "connections", 1, "client connections the producers share, round robin")
	f.BoolVar(&o.coalesce, "coalesce", true, "Quiver producers use natural batching (--coalesce=false: sdk.WithoutCoalescing)")
	f.BoolVar(&o.idem, "idempotence", true, "Quiver producers send idempotently (--idempotence=false: sdk.WithoutIdempotence)")
	f.DurationVar(&o.linger, "linger", 0, "Quiver producers wait this long to fill a batch (sdk.WithLinger; 0: only behind frames in flight)")
	f.DurationVar(&o.sendTimeout, "send-timeout", 3*time.Second, "a send's deadline, retries included; past it the send counts as an error")
	f.StringVar(&o.quiverd, "quiverd", "", "quiverd binary to start (default: next to quiver-bench, else in $PATH)")
	f.StringVar(&o.dataDir, "data-dir", "", "where started systems get their temporary data directory (default $TMPDIR or /tmp); use a real disk")
	f.DurationVar(&o.asyncInterval, "async-interval", 100*time.Millisecond, "started quiverd: longest time an async-acknowledged message stays unsynced")
	f.DurationVar(&o.startupTimeout, "startup-timeout", 30*time.Second, "how long a started system may take to be ready")
	f.BoolVar(&o.json, "json", false, "print the result as JSON on stdout instead of the table")
	f.StringVar(&o.plot, "plot", "", "draw latency by percentile to this file (.png or .svg)")
	f.BoolVar(&o.progress, "progress", false, "force the progress bar on stderr on (or off with --progress=false); default: only on a terminal")
}

// check reports flag combinations that cannot run.
func (o *options) check(cmd *cobra.Command) error {
	if cmd.Flags().Changed("duration") && o.cfg.Count > 0 {
		return usagef("--duration and --count both given: use one")
	}
	if o.cfg.Count > 0 {
		o.cfg.Duration = 0
	}
	if err := o.cfg.Validate(); err != nil {
		return usageError{err}
	}
	switch o.compression {
	case "none", "zstd", "s2":
	default:
		return usagef("--compression %q: none, zstd or s2", o.compression)
	}
	if o.compression != "none" && o.cfg.Batch <= 1 {
		return usagef("--compression applies to batches: give --batch too")
	}
	switch o.durability {
	case "", "sync", "async":
	default:
		return usagef("--durability %q: sync or async", o.durability)
	}
	if o.queues < 1 || o.connections < 1 {
		return usagef("--queues and --connections must be at least 1")
	}
	if o.plot != "" && !strings.HasSuffix(o.plot, ".png") && !strings.HasSuffix(o.plot, ".svg") {
		return usagef("--plot %s: the file must end in .png or .svg", o.plot)
	}
	return nil
}

// quiverOptions are the options of a Quiver target.
func (o *options) quiverOptions(engine, durability string) quiver.Options {
	brokerDurable := durability
	if brokerDurable == "" {
		brokerDurable = "sync"
	}
	return quiver.Options{
		Broker: o.broker, CA: o.ca, Fingerprint: o.fingerprint, Token: tokenOr(o.token), LookupEnv: os.LookupEnv,
		Quiverd: o.quiverd, Engine: engine, BrokerDurable: brokerDurable, AsyncInterval: o.asyncInterval,
		DataDir: o.dataDir, StartupTimeout: o.startupTimeout,
		Durability: durability, Topic: o.topic, Queues: o.queues, Compression: o.compression,
		Connections: o.connections, Window: o.cfg.Window, SendTimeout: o.sendTimeout, NoCoalesce: !o.coalesce, Linger: o.linger, NoIdem: !o.idem,
	}
}

// natsOptions are the options of a NATS target; with tls its clients
// connect with TLS.
func (o *options) natsOptions(syncAlways, tls bool) (natsjs.Options, error) {
	self, err := os.Executable()
	if err != nil {
		return natsjs.Options{}, fmt.Errorf("finding quiver-bench itself to run nats-server: %w", err)
	}
	return natsjs.Options{
		Self: self, ServerArgs: []string{"nats-server"}, SyncAlways: syncAlways, TLS: tls, DataDir: o.dataDir,
		StartupTimeout: o.startupTimeout, Subject: o.topic, Connections: o.connections,
		Window: o.cfg.Window, Batch: o.cfg.Batch, SendTimeout: o.sendTimeout,
	}, nil
}

func runSingle(cmd *cobra.Command, o *options) error {
	ctx := cmd.Context()
	if o.cpuProfile != "" {
		f, err := os.Create(o.cpuProfile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	if o.traceFile != "" {
		f, err := os.Create(o.traceFile)
		if err != nil {
			return err
		}
		defer f.Close()
		if err := trace.Start(f); err != nil {
			return err
		}
		defer trace.Stop()
	}
	t, err := quiver.Open(ctx, o.quiverOptions(o.engine, o.durability))
	if err != nil {
		return err
	}
	defer t.Close()
	res, err := measure(ctx, cmd, o, t, "", "")
	if err != nil {
		return err
	}
	if err := t.Close(); err != nil {
		res.Notes = append(res.Notes, "stopping the broker: "+err.Error())
	}
	if o.json {
		if err := writeJSON(cmd.OutOrStdout(), res); err != nil {
			return err
		}
	} else {
		bench.WriteTable(cmd.OutOrStdout(), res)
	}
	if o.plot != "" {
		if err := bench.Plot(o.plot, res.Describe(), bench.SeriesOf([]*bench.Result{res})); err != nil {
			return err
		}
	}
	if res.Interrupted {
		return errors.New("interrupted")
	}
	return nil
}

// target is a system under test that can say what it is.
type target interface {
	bench.Target
	// Describe fills in the system, label (if empty), durability, engine...
	Describe(*bench.Result)
	// Close disconnects, and stops the system if it was started here.
	Close() error
}

// measure runs the workload against t, with a progress bar when wanted.
// name and label, when given, name the result.
func measure(ctx context.Context, cmd *cobra.Command, o *options, t target, name, label string) (*bench.Result, error) {
	pre := bench.Result{Label: label}
	t.Describe(&pre)
	bar := newProgressBar(cmd, o, pre.Label)
	res, err := bench.Run(ctx, o.cfg, t, bar.update)
	bar.finish()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", pre.Label, err)
	}
	res.Name, res.Label, res.Compression = name, label, o.compression
	t.Describe(res)
	return res, nil
}

// writeJSON writes v as one line of JSON.
func writeJSON(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s\n", b)
	return err
}

// progressBar draws on stderr when it is a terminal (or --progress).
type progressBar struct {
	w     io.Writer
	label string
	on    bool
}

func newProgressBar(cmd *cobra.Command, o *options, label string) *progressBar {
	w := cmd.ErrOrStderr()
	on := false
	if cmd.Flags().Changed("progress") {
		on = o.progress
	} else if f, ok := w.(*os.File); ok {
		on = term.IsTerminal(int(f.Fd()))
	}
	return &progressBar{w: w, label: label, on: on}
}

func (b *progressBar) update(p bench.Progress) {
	if !b.on {
		return
	}
	const width = 30
	n := int(p.Fraction * width)
	rate := 0.0
	if s := p.Elapsed.Seconds(); s > 0 {
		rate = float64(p.Msgs) / s
	}
	fmt.Fprintf(b.w, "\r\033[K%s [%s%s] %3.0f%% %-7s %6.1fs %12.0f msgs/s  errors %d",
		b.label, strings.Repeat("#", n), strings.Repeat("-", width-n), p.Fraction*100, p.Phase, p.Elapsed.Seconds(), rate, p.Errors)
}

func (b *progressBar) finish() {
	if b.on {
		fmt.Fprint(b.w, "\r\033[K")
	}
}

// natsServerCmd is the hidden subcommand compare re-executes quiver-bench
// with, so that nats-server runs in a process of its own.
func natsServerCmd() *cobra.Command {
	var (
		dir             string
		port            int
		syncAlways      bool
		tlsCert, tlsKey string
	)
	cmd := &cobra.Command{
		Use:    "nats-server",
		Short:  "Run the embedded nats-server with JetStream (used by compare)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if dir == "" {
				return usagef("--dir is required")
			}
			if (tlsCert == "") != (tlsKey == "") {
				return usagef("--tls-cert and --tls-key go together")
			}
			return natsjs.Serve(dir, port, syncAlways, tlsCert, tlsKey, cmd.OutOrStdout())
		},
	}
	cmd.Flags().StringVar(&dir, "dir", "", "JetStream store directory")
	cmd.Flags().IntVar(&port, "port", 0, "client port on 127.0.0.1 (0: any free one)")
	cmd.Flags().BoolVar(&syncAlways, "sync-always", false, "sync every write (sync_interval: always); default: every 2 minutes")
	cmd.Flags().StringVar(&tlsCert, "tls-cert", "", "PEM certificate: clients connect with TLS 1.3 (with --tls-key); default: plaintext")
	cmd.Flags().StringVar(&tlsKey, "tls-key", "", "PEM private key of --tls-cert")
	return cmd
}

// tokenOr is the token given, else $QUIVER_TOKEN.
func tokenOr(tok string) string {
	if tok == "" {
		tok = os.Getenv("QUIVER_TOKEN")
	}
	return tok
}
