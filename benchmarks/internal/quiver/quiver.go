// Package quiver is quiver-bench's Quiver target: the SDK's producers and
// consumers against a broker given by address, or against a quiverd it
// starts as a child process.
package quiver

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sync"
	"time"

	"github.com/quivermq/quiver/benchmarks/internal/bench"
	"github.com/quivermq/quiver/benchmarks/internal/proc"
	"github.com/quivermq/quiver/sdk"
)

// Options say which broker to use and how to send to it.
type Options struct {
	// Broker is the address of a running broker; empty: start quiverd.
	Broker          string
	CA, Fingerprint string // trust for Broker (else $QUIVER_CA, else ./quiver-data/tls/cert.pem)
	Token           string // credentials to present (a broker with tokens or an ACL)
	LookupEnv       func(string) (string, bool)

	// For a quiverd started here.
	Quiverd        string // its binary; empty: next to quiver-bench, else $PATH
	Engine         string // --engine
	BrokerDurable  string // --durability: sync or async
	AsyncInterval  time.Duration
	DataDir        string // parent of its temporary data directory
	StartupTimeout time.Duration

	Durability  string // the producers': "" (the broker's), sync or async
	Topic       string
	Queues      int
	Compression string // none, zstd or s2 (batches)
	Connections int    // clients the producers share, round robin
	Window      int
	NoCoalesce  bool          // the producers use sdk.WithoutCoalescing (no natural batching)
	Linger      time.Duration // the producers use sdk.WithLinger
	NoIdem      bool          // the producers use sdk.WithoutIdempotence
	SendTimeout time.Duration
}

// Target is a connected broker with the topic created.
type Target struct {
	opts    Options
	broker  *proc.Process
	caOpt   sdk.Opt
	addr    string
	clients []*sdk.Client
	queues  int
	status  *sdk.Status
	notes   []string
	prodOps []sdk.ProducerOpt
}

var readyRE = regexp.MustCompile(`quiverd ready: quic (\S+), admin (\S+),`)

// defaultCA is the certificate of a quiverd run from this directory.
var defaultCA = filepath.Join("quiver-data", "tls", "cert.pem")

// Open starts the broker if need be, connects, and creates the topic if
// it is missing.
func Open(ctx context.Context, o Options) (_ *Target, err error) {
	t := &Target{opts: o, addr: o.Broker}
	defer func() {
		if err != nil {
			t.Close()
		}
	}()
	if err := t.producerOpts(); err != nil {
		return nil, err
	}
	if o.Broker == "" {
		if err := t.startBroker(); err != nil {
			return nil, err
		}
	} else if t.caOpt, err = trust(o); err != nil {
		return nil, err
	}
	for range max(o.Connections, 1) {
		cl, err := t.newClient()
		if err != nil {
			return nil, err
		}
		t.clients = append(t.clients, cl)
	}
	actx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	adm := t.clients[0].Admin()
	topics, err := adm.Topics(actx, o.Topic)
	if err != nil {
		return nil, fmt.Errorf("quiver broker %s: %w", t.addr, err)
	}
	t.queues = o.Queues
	if len(topics) == 1 && topics[0].Queues > 0 {
		t.queues = int(topics[0].Queues)
		if t.queues != o.Queues {
			t.notes = append(t.notes, fmt.Sprintf("topic %s exists with %d queues (not --queues %d); used as it is", o.Topic, t.queues, o.Queues))
		}
	} else if err := adm.CreateTopic(actx, o.Topic, o.Queues); err != nil {
		return nil, fmt.Errorf("creating topic %s: %w", o.Topic, err)
	}
	if t.status, err = adm.Status(actx); err != nil {
		return nil, fmt.Errorf("quiver broker %s: status: %w", t.addr, err)
	}
	return t, nil
}

var (
	durabilities = map[string]sdk.Durability{"": sdk.DurabilityDefault, "sync": sdk.Sync, "async": sdk.Async}
	compressions = map[string]sdk.Compression{"": sdk.NoCompression, "none": sdk.NoCompression, "zstd": sdk.Zstd, "s2": sdk.S2}
)

func (t *Target) producerOpts() error {
	o := t.opts
	d, ok := durabilities[o.Durability]
	if !ok {
		return fmt.Errorf("--durability %q: sync or async", o.Durability)
	}
	c, ok := compressions[o.Compression]
	if !ok {
		return fmt.Errorf("--compression %q: none, zstd or s2", o.Compression)
	}
	t.prodOps = []sdk.ProducerOpt{sdk.WithMaxInFlight(max(o.Window, 1) + 1), sdk.WithDurability(d), sdk.WithCompression(c)}
	if o.NoIdem {
		t.prodOps = append(t.prodOps, sdk.WithoutIdempotence())
	}
	if o.Linger > 0 {
		t.prodOps = append(t.prodOps, sdk.WithLinger(o.Linger))
	}
	if o.NoCoalesce {
		t.prodOps = append(t.prodOps, sdk.WithoutCoalescing())
	}
	if o.SendTimeout > 0 {
		t.prodOps = append(t.prodOps, sdk.WithSendTimeout(o.SendTimeout))
	}
	return nil
}

func (t *Target) startBroker() error {
	o := t.opts
	bin, err := proc.Find("quiverd", o.Quiverd)
	if err != nil {
		return fmt.Errorf("no quiverd to start (%v): build it (make build puts it in bin/ beside quiver-bench), "+
			"put it in $PATH, pass --quiverd PATH, or use a running broker with --broker ADDR", err)
	}
	dir, note, err := proc.TempDir(o.DataDir, "quiver-bench-quiverd-")
	if err != nil {
		return err
	}
	if note != "" {
		t.notes = append(t.notes, note)
	}
	args := []string{"--data", dir, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0",
		"--engine", o.Engine, "--durability", o.BrokerDurable, "--async-interval", o.AsyncInterval.String()}
	p, m, err := proc.Start("quiverd", bin, args, dir, readyRE, o.StartupTimeout)
	if err != nil {
		return err
	}
	t.broker, t.addr = p, m[1]
	t.caOpt = sdk.WithCAFile(filepath.Join(dir, "tls", "cert.pem"))
	return nil
}

// trust is how to verify a given broker, in the quiver CLI's order:
// --fingerprint, --ca, $QUIVER_CA, ./quiver-data/tls/cert.pem; never none.
func trust(o Options) (sdk.Opt, error) {
	switch {
	case o.CA != "" && o.Fingerprint != "":
		return nil, errors.New("--ca and --fingerprint both given: use one")
	case o.Fingerprint != "":
		return sdk.WithFingerprint(o.Fingerprint), nil
	case o.CA != "":
		return sdk.WithCAFile(o.CA), nil
	}
	if o.LookupEnv != nil {
		if v, ok := o.LookupEnv("QUIVER_CA"); ok && v != "" {
			return sdk.WithCAFile(v), nil
		}
	}
	if _, err := os.Stat(defaultCA); !errors.Is(err, fs.ErrNotExist) {
		return sdk.WithCAFile(defaultCA), nil
	}
	return nil, fmt.Errorf("no way to verify the broker's certificate: pass --ca FILE (the broker's DATA/tls/cert.pem, "+
		"or set QUIVER_CA) or --fingerprint HEX (printed by quiverd at startup); %s does not exist here", defaultCA)
}

func (t *Target) newClient() (*sdk.Client, error) {
	// The SDK's warnings would break the progress bar and the JSON: errors
	// are counted and the first one reported instead.
	quiet := slog.New(slog.DiscardHandler)
	opts := []sdk.Opt{sdk.WithBrokers(t.addr), t.caOpt, sdk.WithClientID("quiver-bench"), sdk.WithLogger(quiet)}
	if t.opts.Token != "" {
		opts = append(opts, sdk.WithCredentials([]byte(t.opts.Token)))
	}
	return sdk.NewClient(opts...)
}

// Describe fills in what a result says of the system.
func (t *Target) Describe(r *bench.Result) {
	r.System = "quiver"
	r.Engine = t.status.Broker.Engine
	d := t.opts.Durability
	if d == "" {
		d = t.status.Broker.Durability
	}
	switch d {
	case "sync":
		r.Durability = "fsync before ack (group commit)"
	case "async":
		r.Durability = "async: sync within the broker's async interval"
		if t.broker != nil {
			r.Durability = fmt.Sprintf("async: sync within %s", t.opts.AsyncInterval)
		}
	default:
		r.Durability = d
	}
	if r.Label == "" {
		r.Label = fmt.Sprintf("Quiver %s (%s)", d, r.Engine)
	}
	r.Topic, r.Queues, r.Connections = t.opts.Topic, t.queues, len(t.clients)
	r.Compression = t.opts.Compression
	r.Notes = append(r.Notes, t.notes...)
}

// Close disconnects and stops a broker started here.
func (t *Target) Close() error {
	for _, cl := range t.clients {
		cl.Close()
	}
	t.clients = nil
	if t.broker != nil {
		err := t.broker.Stop(30 * time.Second)
		t.broker = nil
		return err
	}
	return nil
}

// NewProducer implements bench.Target.
func (t *Target) NewProducer(_ context.Context, i int) (bench.Producer, error) {
	p, err := t.clients[i%len(t.clients)].NewProducer(t.prodOps...)
	if err != nil {
		return nil, err
	}
	return &producer{p: p, msg: sdk.Message{Topic: t.opts.Topic}}, nil
}

type producer struct {
	p     *sdk.Producer
	msg   sdk.Message    // synchronous sends
	batch []*sdk.Message // SendBatch
}

func (p *producer) Send(ctx context.Context, body []byte) error {
	p.msg.Body = body
	_, err := p.p.Send(ctx, &p.msg)
	return err
}

func (p *producer) SendBatch(ctx context.Context, bodies [][]byte) error {
	for len(p.batch) < len(bodies) {
		p.batch = append(p.batch, &sdk.Message{Topic: p.msg.Topic})
	}
	for i, b := range bodies {
		p.batch[i].Body = b
	}
	_, err := p.p.SendBatch(ctx, p.batch[:len(bodies)])
	return err
}

func (p *producer) SendAsync(ctx context.Context, body []byte, done func(error)) error {
	return p.p.SendAsync(ctx, &sdk.Message{Topic: p.msg.Topic, Body: body}, func(_ sdk.SendResult, err error) { done(err) })
}

func (p *producer) Close() error { return p.p.Close() }

// StartConsumers implements bench.Target: n members of a new group,
// reading from the latest offsets, on a client of their own.
func (t *Target) StartConsumers(ctx context.Context, n int, deliver func(int, []byte)) (func() error, error) {
	cl, err := t.newClient()
	if err != nil {
		return nil, err
	}
	var r [4]byte
	rand.Read(r[:])
	group := "quiver-bench-" + hex.EncodeToString(r[:])
	runCtx, cancel := context.WithCancel(context.Background())
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
		cs   []*sdk.Consumer
	)
	stop := func() error {
		cancel()
		wg.Wait()
		cl.Close()
		mu.Lock()
		defer mu.Unlock()
		return errors.Join(errs...)
	}
	for i := range n {
		c, err := cl.NewConsumer(group, []string{t.opts.Topic}, sdk.WithStartFrom(sdk.Latest))
		if err != nil {
			stop()
			return nil, err
		}
		cs = append(cs, c)
		wg.Go(func() {
			err := c.Run(runCtx, func(_ context.Context, m *sdk.Message) error {
				deliver(i, m.Body)
				return nil
			})
			if err != nil && !errors.Is(err, context.Canceled) {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	// Ready once the group's queues are all assigned, and (when there are
	// enough queues) every member holds some.
	deadline := time.Now().Add(30 * time.Second)
	for {
		total, idle := 0, 0
		for _, c := range cs {
			a := len(c.Assigned())
			total += a
			if a == 0 {
				idle++
			}
		}
		if total == t.queues && (idle == 0 || n > t.queues) {
			return stop, nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			stop()
			return nil, fmt.Errorf("group %s: %d of %d queues assigned to %d consumers after 30s", group, total, t.queues, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
