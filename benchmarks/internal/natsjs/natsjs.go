// Package natsjs is quiver-bench's NATS JetStream target: nats-server
// (embedded in quiver-bench, run as a child process by re-executing it)
// and the nats.go jetstream client.
package natsjs

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/signal"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/quivermq/quiver/benchmarks/internal/bench"
	"github.com/quivermq/quiver/benchmarks/internal/proc"
)

// readyRE matches the line Serve prints once the server takes clients.
var readyRE = regexp.MustCompile(`nats-server ready: (\S+) sync_always=(\S+) sync_interval=(\S+) tls=(\S+)`)

// Serve runs a nats-server with JetStream, its file store in dir, on
// 127.0.0.1:port (0: any free port), until SIGTERM or SIGINT. With
// syncAlways every write to the store is synced (sync_interval: always);
// otherwise the store syncs every 2 minutes, nats-server's default. With
// certFile and keyFile (PEM) clients connect with TLS 1.3 (and only so);
// without them, in plaintext. It prints the ready line to out.
func Serve(dir string, port int, syncAlways bool, certFile, keyFile string, out io.Writer) error {
	if port == 0 {
		port = server.RANDOM_PORT
	}
	opts := &server.Options{
		ServerName: "quiver-bench",
		Host:       "127.0.0.1",
		Port:       port,
		JetStream:  true,
		StoreDir:   dir,
		NoSigs:     true,
		// The configuration file's `sync_interval: always` sets exactly
		// these two (server/opts.go).
		SyncAlways:   syncAlways,
		SyncInterval: 2 * time.Minute,
	}
	if certFile != "" || keyFile != "" {
		cfg, err := serverTLS(certFile, keyFile)
		if err != nil {
			return err
		}
		// What the configuration file's `tls {cert_file, key_file}` sets
		// (server/opts.go); the TLS timeout keeps its 2s default.
		opts.TLS, opts.TLSConfig = true, cfg
	}
	s, err := server.NewServer(opts)
	if err != nil {
		return err
	}
	s.ConfigureLogger()
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT)
	go s.Start()
	if !s.ReadyForConnections(30 * time.Second) {
		s.Shutdown()
		return errors.New("nats-server not ready in 30s")
	}
	js := s.JetStreamConfig()
	if js == nil {
		s.Shutdown()
		return errors.New("nats-server started without JetStream")
	}
	fmt.Fprintf(out, "nats-server ready: %s sync_always=%v sync_interval=%s tls=%v\n", s.ClientURL(), js.SyncAlways, js.SyncInterval, opts.TLSConfig != nil)
	<-sigs
	s.Shutdown()
	s.WaitForShutdown()
	return nil
}

// Options say how to start the server and send to it.
type Options struct {
	Self           string   // quiver-bench's own binary, re-executed as the server
	ServerArgs     []string // the subcommand that runs Serve, before --dir etc.
	SyncAlways     bool
	TLS            bool   // clients connect with TLS 1.3, to a self-signed certificate made at Open
	DataDir        string // parent of the server's temporary data directory
	StartupTimeout time.Duration

	Subject     string
	Connections int
	Window      int
	Batch       int
	SendTimeout time.Duration
}

// Target is a running server with the stream created.
type Target struct {
	opts   Options
	server *proc.Process
	url    string
	conns  []*nats.Conn
	stream jetstream.Stream
	notes  []string
	always bool
	intvl  string
	tls    *tls.Config // the client's, with TLS
}

// Open starts the server, connects and creates the stream.
func Open(ctx context.Context, o Options) (_ *Target, err error) {
	t := &Target{opts: o}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	dir, note, err := proc.TempDir(o.DataDir, "quiver-bench-nats-")
	if err != nil {
		return nil, err
	}
	if note != "" {
		t.notes = append(t.notes, note)
	}
	args := append(append([]string(nil), o.ServerArgs...), "--dir", dir, "--port", "0")
	if o.SyncAlways {
		args = append(args, "--sync-always")
	}
	var cert *x509.Certificate
	if o.TLS {
		var certFile, keyFile string
		cert, certFile, keyFile, err = writeSelfSigned(dir)
		if err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		args = append(args, "--tls-cert", certFile, "--tls-key", keyFile)
	}
	p, m, err := proc.Start("nats-server", o.Self, args, dir, readyRE, o.StartupTimeout)
	if err != nil {
		return nil, err
	}
	t.server, t.url, t.always, t.intvl = p, m[1], m[2] == "true", m[3]
	if t.always != o.SyncAlways {
		return nil, fmt.Errorf("nats-server runs with sync_always=%v, asked for %v", t.always, o.SyncAlways)
	}
	if tlsOn := m[4] == "true"; tlsOn != o.TLS {
		return nil, fmt.Errorf("nats-server runs with tls=%v, asked for %v", tlsOn, o.TLS)
	}
	if o.TLS {
		u, err := url.Parse(t.url)
		if err != nil {
			return nil, fmt.Errorf("nats-server's client URL %q: %w", t.url, err)
		}
		t.tls = clientTLS(cert, u.Hostname())
	}
	for range max(o.Connections, 1) {
		nc, err := t.connect()
		if err != nil {
			return nil, err
		}
		t.conns = append(t.conns, nc)
	}
	js, err := jetstream.New(t.conns[0])
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	t.stream, err = js.CreateOrUpdateStream(sctx, jetstream.StreamConfig{
		Name: streamName(o.Subject), Subjects: []string{o.Subject}, Storage: jetstream.FileStorage, Replicas: 1,
	})
	if err != nil {
		return nil, fmt.Errorf("creating stream: %w", err)
	}
	return t, nil
}

// connect opens a client connection: with TLS, verified against the
// server's certificate and checked to be TLS 1.3.
func (t *Target) connect() (*nats.Conn, error) {
	opts := []nats.Option{nats.Name("quiver-bench"), nats.MaxReconnects(0)}
	if t.tls != nil {
		opts = append(opts, nats.Secure(t.tls))
	}
	nc, err := nats.Connect(t.url, opts...)
	if err != nil {
		return nil, fmt.Errorf("connecting to nats-server at %s: %w", t.url, err)
	}
	if t.tls != nil {
		cs, err := nc.TLSConnectionState()
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("connection to nats-server at %s: %w", t.url, err)
		}
		if cs.Version != tls.VersionTLS13 {
			nc.Close()
			return nil, fmt.Errorf("connection to nats-server at %s: %s, want TLS 1.3", t.url, tls.VersionName(cs.Version))
		}
	}
	return nc, nil
}

// streamName is a stream name for a subject: no dots, wildcards or spaces.
func streamName(subject string) string {
	r := strings.NewReplacer(".", "_", "*", "_", ">", "_", " ", "_")
	return "BENCH_" + strings.ToUpper(r.Replace(subject))
}

// Describe fills in what a result says of the system.
func (t *Target) Describe(r *bench.Result) {
	r.System = "nats"
	config := "default"
	if t.always {
		config = "sync always"
		r.Durability = "fsync per write (sync_interval: always)"
	} else {
		r.Durability = "fsync every " + humanInterval(t.intvl) + " (default sync_interval)"
	}
	if t.tls != nil {
		config += ", TLS"
	}
	if r.Label == "" {
		r.Label = "NATS JetStream (" + config + ")"
	}
	r.Engine = "file store"
	r.Topic, r.Queues, r.Connections = t.opts.Subject, 1, len(t.conns)
	if r.Batch > 1 {
		r.Notes = append(r.Notes, "NATS has no batch send here: a batch is its messages published asynchronously, then all their acks awaited")
	}
	if r.Compression != "" && r.Compression != "none" {
		r.Notes = append(r.Notes, "--compression is Quiver's batch compression: NATS rows send uncompressed")
	}
	r.Notes = append(r.Notes, t.notes...)
}

func humanInterval(s string) string {
	if d, err := time.ParseDuration(s); err == nil && d%time.Minute == 0 {
		return fmt.Sprintf("%d min", d/time.Minute)
	}
	return s
}

// Close disconnects and stops the server.
func (t *Target) Close() error {
	for _, nc := range t.conns {
		nc.Close()
	}
	t.conns = nil
	if t.server != nil {
		err := t.server.Stop(30 * time.Second)
		t.server = nil
		return err
	}
	return nil
}

// NewProducer implements bench.Target: a JetStream context of its own
// (its own async-publish window) on a shared connection.
func (t *Target) NewProducer(_ context.Context, i int) (bench.Producer, error) {
	window := max(t.opts.Window, t.opts.Batch, 1)
	opts := []jetstream.JetStreamOpt{jetstream.WithPublishAsyncMaxPending(window)}
	timeout := t.opts.SendTimeout
	if timeout <= 0 {
		timeout = 3 * time.Second
	}
	opts = append(opts, jetstream.WithPublishAsyncTimeout(timeout))
	js, err := jetstream.New(t.conns[i%len(t.conns)], opts...)
	if err != nil {
		return nil, err
	}
	p := &producer{js: js, subject: t.opts.Subject, timeout: timeout, acks: make(chan pending, window)}
	p.wg.Go(p.collect)
	return p, nil
}

type pending struct {
	f    jetstream.PubAckFuture
	done func(error)
}

type producer struct {
	js      jetstream.JetStream
	subject string
	timeout time.Duration
	acks    chan pending // async sends, in publish order
	wg      sync.WaitGroup
	futs    []jetstream.PubAckFuture
}

// Send publishes and waits for the stream's ack.
func (p *producer) Send(ctx context.Context, body []byte) error {
	ctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	_, err := p.js.Publish(ctx, p.subject, body)
	return err
}

// SendBatch publishes the bodies asynchronously and waits for every ack.
func (p *producer) SendBatch(ctx context.Context, bodies [][]byte) error {
	p.futs = p.futs[:0]
	var first error
	for _, b := range bodies {
		f, err := p.js.PublishAsync(p.subject, b)
		if err != nil {
			first = err
			break
		}
		p.futs = append(p.futs, f)
	}
	for _, f := range p.futs {
		if err := wait(ctx, f); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// SendAsync publishes; the collector calls done when the ack comes.
func (p *producer) SendAsync(ctx context.Context, body []byte, done func(error)) error {
	f, err := p.js.PublishAsync(p.subject, body)
	if err != nil {
		return err
	}
	p.acks <- pending{f, done}
	return nil
}

// collect waits for the acks in publish order: a stream acks in order,
// so none is seen late for waiting behind another.
func (p *producer) collect() {
	for a := range p.acks {
		a.done(wait(context.Background(), a.f))
	}
}

func wait(ctx context.Context, f jetstream.PubAckFuture) error {
	select {
	case <-f.Ok():
		return nil
	case err := <-f.Err():
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (p *producer) Close() error {
	close(p.acks)
	p.wg.Wait()
	return nil
}

// StartConsumers implements bench.Target: n subscribers of one durable
// pull consumer (the JetStream form of a consumer group), delivering new
// messages only, each acknowledged explicitly, on a connection of their
// own.
func (t *Target) StartConsumers(ctx context.Context, n int, deliver func(int, []byte)) (func() error, error) {
	nc, err := t.connect()
	if err != nil {
		return nil, err
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	var r [4]byte
	rand.Read(r[:])
	name := "quiver-bench-" + hex.EncodeToString(r[:])
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cons, err := js.CreateOrUpdateConsumer(cctx, streamName(t.opts.Subject), jetstream.ConsumerConfig{
		Durable: name, DeliverPolicy: jetstream.DeliverNewPolicy, AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 65536,
	})
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("creating consumer: %w", err)
	}
	var ccs []jetstream.ConsumeContext
	stop := func() error {
		for _, cc := range ccs {
			cc.Stop()
		}
		for _, cc := range ccs {
			<-cc.Closed()
		}
		dctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		err := js.DeleteConsumer(dctx, streamName(t.opts.Subject), name)
		nc.Close()
		return err
	}
	for i := range n {
		cc, err := cons.Consume(func(m jetstream.Msg) {
			deliver(i, m.Data())
			m.Ack()
		})
		if err != nil {
			stop()
			return nil, err
		}
		ccs = append(ccs, cc)
	}
	return stop, nil
}
