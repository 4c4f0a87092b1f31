package sdk

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// Opt configures a Client.
type Opt func(*clientConfig)

type clientConfig struct {
	brokers     []string
	tls         *tls.Config
	trustErr    error
	clientID    string
	credentials []byte
	clientCert  *tls.Certificate
	certErr     error
	logger      *slog.Logger
	dialTimeout time.Duration
	idleTimeout time.Duration
	onError     func(error)
	backoff     backoffPolicy
	// routeRefresh: how often routes are refreshed (besides after errors).
	routeRefresh time.Duration
	avoidance    FaultAvoidance
}

// WithBrokers sets the broker addresses (host:port) the client starts from.
func WithBrokers(addrs ...string) Opt {
	return func(c *clientConfig) { c.brokers = append(c.brokers, addrs...) }
}

// WithTLS sets the TLS configuration used to verify brokers.
func WithTLS(conf *tls.Config) Opt { return func(c *clientConfig) { c.tls = conf } }

// WithCAFile trusts the certificates in a PEM file (for a self-signed
// broker, its DATA/tls/cert.pem).
func WithCAFile(path string) Opt {
	return func(c *clientConfig) { c.tls, c.trustErr = TLSFromCAFile(path) }
}

// WithFingerprint trusts exactly the broker certificate with this SHA-256
// fingerprint (as quiverd prints it).
func WithFingerprint(fp string) Opt {
	return func(c *clientConfig) { c.tls, c.trustErr = TLSPinned(fp) }
}

// WithClientID names the client in the broker's logs and status (default:
// the host name and a random suffix).
func WithClientID(id string) Opt { return func(c *clientConfig) { c.clientID = id } }

// WithCredentials sets the token sent in the Hello.
func WithCredentials(token []byte) Opt { return func(c *clientConfig) { c.credentials = token } }

// WithClientCertificate presents cert to the brokers (mutual TLS): a broker
// with client_ca verifies it and, with an ACL, takes the principal whose
// cert_cn is the certificate's common name or one of its DNS names, when
// the client sends no token.
func WithClientCertificate(cert tls.Certificate) Opt {
	return func(c *clientConfig) { c.clientCert = &cert }
}

// WithClientCertificateFiles is WithClientCertificate with the certificate
// and its private key read from PEM files.
func WithClientCertificateFiles(certFile, keyFile string) Opt {
	return func(c *clientConfig) {
		cert, err := tls.LoadX509KeyPair(certFile, keyFile)
		if err != nil {
			c.certErr = fmt.Errorf("quiver: client certificate: %w", err)
			return
		}
		c.clientCert = &cert
	}
}

// WithLogger sets where the client logs (default slog.Default()).
func WithLogger(l *slog.Logger) Opt { return func(c *clientConfig) { c.logger = l } }

// WithDialTimeout bounds one connection attempt, handshake included (default 5s).
func WithDialTimeout(d time.Duration) Opt { return func(c *clientConfig) { c.dialTimeout = d } }

// WithIdleTimeout sets how long a broker may stay silent before the client
// treats its connection as gone and fails its calls over to other brokers
// (default 5s). The client sends keep-alives every fifth of it, so a live
// broker is never silent that long; a killed or cut-off one is noticed
// within the timeout rather than when each call's deadline passes.
func WithIdleTimeout(d time.Duration) Opt { return func(c *clientConfig) { c.idleTimeout = d } }

// WithRouteRefresh sets how often the client refreshes its routes (the
// broker groups, their leaders, the topics' queues) from the brokers;
// routing errors refresh them at once as well (default 2s, at most 5s).
func WithRouteRefresh(d time.Duration) Opt { return func(c *clientConfig) { c.routeRefresh = d } }

// WithFaultAvoidance sets how brokers whose requests fail or are slow are
// set aside (default AvoidAdaptive; see FaultAvoidance).
func WithFaultAvoidance(m FaultAvoidance) Opt { return func(c *clientConfig) { c.avoidance = m } }

// WithErrorHandler receives errors the application would otherwise not
// see: a broker refusing the session (credentials, version, certificate).
// It is called on a client goroutine and must not block.
func WithErrorHandler(f func(error)) Opt { return func(c *clientConfig) { c.onError = f } }

// WithReconnectBackoff sets the reconnect backoff to a broker: full jitter
// over min(max, base·2^failures). Failures that are not the network's back
// off from nonNetworkBase instead (defaults 100ms, 10s and 5s; the cap for
// those is 5 minutes).
func WithReconnectBackoff(base, max, nonNetworkBase time.Duration) Opt {
	return func(c *clientConfig) {
		c.backoff = backoffPolicy{base: base, max: max, hardBase: nonNetworkBase, hardMax: 5 * time.Minute}
	}
}

// Client holds one QUIC connection per broker, shared by the producers,
// consumers and admin calls made from it. It learns the cluster (broker
// groups, leaders, topics) from its brokers and keeps it fresh. It is safe
// for concurrent use.
type Client struct {
	cfg    clientConfig
	logger *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc
	bg     sync.WaitGroup // the client's own goroutines

	connMu sync.RWMutex
	conns  map[string]*brokerConn // by address: bootstrap and learned
	boot   []*brokerConn
	rr     atomic.Uint32
	router router
	faults *faultTracker
	aside  asideReporter // router goroutine only
	coal   sync.Map      // coalesceKey -> *coalescer (natural batching, coalesce.go)
	// pid and seq number the client's idempotent sends (idempotence.go).
	pid uint64
	seq atomic.Uint64

	mu     sync.Mutex
	users  map[closer]struct{} // producers and consumers, closed with the client
	closed atomic.Bool

	// moved is closed (and replaced) when the routes name a new leader of
	// some group: consumers then report to its coordinator at once.
	moved struct {
		sync.Mutex
		ch chan struct{}
	}
}

// leaderMoved returns a channel closed at the next change of some group's
// leader in the routes.
func (cl *Client) leaderMoved() <-chan struct{} {
	cl.moved.Lock()
	defer cl.moved.Unlock()
	if cl.moved.ch == nil {
		cl.moved.ch = make(chan struct{})
	}
	return cl.moved.ch
}

type closer interface{ Close() error }

// NewClient returns a client for the given brokers. It does not connect
// until the first request. A way to verify the brokers' certificates is
// required: verification is never skipped silently.
func NewClient(opts ...Opt) (*Client, error) {
	cfg := clientConfig{dialTimeout: 5 * time.Second, idleTimeout: 5 * time.Second, routeRefresh: 2 * time.Second,
		backoff: backoffPolicy{base: 100 * time.Millisecond, max: 10 * time.Second, hardBase: 5 * time.Second, hardMax: 5 * time.Minute}}
	for _, o := range opts {
		o(&cfg)
	}
	switch {
	case cfg.trustErr != nil:
		return nil, cfg.trustErr
	case cfg.certErr != nil:
		return nil, cfg.certErr
	case cfg.tls == nil:
		return nil, ErrNoTrust
	case len(cfg.brokers) == 0:
		return nil, errors.New("quiver: no broker addresses (WithBrokers)")
	case cfg.idleTimeout < 500*time.Millisecond:
		return nil, fmt.Errorf("quiver: idle timeout %v is too short: at least 500ms, or live brokers would be dropped", cfg.idleTimeout)
	case cfg.routeRefresh < 100*time.Millisecond || cfg.routeRefresh > 5*time.Second:
		return nil, fmt.Errorf("quiver: route refresh %v (100ms..5s)", cfg.routeRefresh)
	case cfg.avoidance > AvoidOff:
		return nil, fmt.Errorf("quiver: fault avoidance %d", cfg.avoidance)
	}
	if cfg.logger == nil {
		cfg.logger = slog.Default()
	}
	if cfg.clientID == "" {
		host, _ := os.Hostname()
		var r [4]byte
		rand.Read(r[:])
		cfg.clientID = fmt.Sprintf("%s-%s", host, hex.EncodeToString(r[:]))
	}
	tc := cfg.tls.Clone()
	tc.NextProtos = []string{ALPN}
	tc.MinVersion = tls.VersionTLS13
	if cert := cfg.clientCert; cert != nil {
		// Presented whenever a broker asks, whatever CAs it names.
		tc.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return cert, nil }
	}
	cfg.tls = tc
	ctx, cancel := context.WithCancel(context.Background())
	c := &Client{cfg: cfg, logger: cfg.logger.With("component", "quiver-client"), ctx: ctx, cancel: cancel,
		users: map[closer]struct{}{}, conns: map[string]*brokerConn{}, faults: newFaultTracker(cfg.avoidance)}
	c.pid = newProducerID()
	c.router = router{cl: c, kick: make(chan struct{}, 1), changed: make(chan struct{}), boot: map[string]bool{},
		leaders: map[string]knownLeader{}}
	for _, a := range cfg.brokers {
		if !c.router.boot[a] {
			c.router.boot[a] = true
			bc := newBrokerConn(c, a)
			c.conns[a] = bc
			c.boot = append(c.boot, bc)
		}
	}
	c.cfg.brokers = c.cfg.brokers[:0]
	for _, bc := range c.boot {
		c.cfg.brokers = append(c.cfg.brokers, bc.addr)
	}
	return c, nil
}

// conn returns the connection to addr, making it if the client did not
// know the broker (a broker learned from the routes).
func (c *Client) conn(addr string) *brokerConn {
	c.connMu.RLock()
	bc := c.conns[addr]
	c.connMu.RUnlock()
	if bc != nil {
		return bc
	}
	c.connMu.Lock()
	defer c.connMu.Unlock()
	bc = c.conns[addr]
	if bc == nil {
		bc = newBrokerConn(c, addr)
		if !c.closed.Load() {
			c.conns[addr] = bc
		}
	}
	return bc
}

// goBg runs f on a goroutine that Close waits for, unless the client is
// closed. (Close sets closed before it takes mu, so an Add made under mu
// with closed unset comes before Close's Wait.)
func (c *Client) goBg(f func()) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return false
	}
	c.bg.Add(1)
	go func() {
		defer c.bg.Done()
		f()
	}()
	return true
}

// BrokerHealth reports, per broker the client sent to, whether fault
// avoidance sets it aside now and how often it did (for metrics).
func (c *Client) BrokerHealth() []BrokerHealth { return c.faults.health() }

// ClientID is the id the client presents to brokers.
func (c *Client) ClientID() string { return c.cfg.clientID }

// Close closes the producers and consumers made from the client, then
// every connection. No goroutine of the client outlives it.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return ErrClosed
	}
	c.mu.Lock()
	users := make([]closer, 0, len(c.users))
	for u := range c.users {
		users = append(users, u)
	}
	c.mu.Unlock()
	var err error
	for _, u := range users {
		if uerr := u.Close(); uerr != nil && !errors.Is(uerr, ErrClosed) && err == nil {
			err = uerr
		}
	}
	c.cancel()
	c.bg.Wait()
	c.connMu.Lock()
	conns := make([]*brokerConn, 0, len(c.conns))
	for _, bc := range c.conns {
		conns = append(conns, bc)
	}
	c.connMu.Unlock()
	for _, bc := range conns {
		bc.close()
	}
	return err
}

func (c *Client) track(u closer) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed.Load() {
		return ErrClosed
	}
	c.users[u] = struct{}{}
	return nil
}

func (c *Client) untrack(u closer) {
	c.mu.Lock()
	delete(c.users, u)
	c.mu.Unlock()
}

func (c *Client) reportError(err error) {
	if c.cfg.onError != nil {
		c.cfg.onError(err)
	}
}
