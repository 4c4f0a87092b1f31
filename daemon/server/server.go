// Package server puts the broker on QUIC: it accepts connections, runs the
// Hello handshake that opens a session, and serves the frames of every
// stream of a session (docs/protocol.md), many requests in flight on each.
//
// Produce requests go to the broker straight from the stream's reader and
// are answered from the log's commit callback; other requests run on their
// own goroutines (a fetch may wait for data), bounded per connection.
// Responses to one stream are coalesced by a wire.Writer.
//
// Connections that close before a session is established are counted per
// source and logged at most once a minute per source (incident 004).
package server

import (
	"context"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/quic-go/quic-go"

	"github.com/quivermq/quiver/daemon/acl"
	"github.com/quivermq/quiver/daemon/broker"
	"github.com/quivermq/quiver/daemon/certs"
	"github.com/quivermq/quiver/daemon/peer"
	"github.com/quivermq/quiver/sdk/wire"
)

// Options configure a Server.
type Options struct {
	// Listen is the UDP address (default 127.0.0.1:7420).
	Listen string
	// TLS holds the broker's certificate; the server sets ALPN and TLS 1.3.
	TLS *tls.Config
	// Broker serves the requests.
	Broker *broker.Broker
	// Peer, when set, lets other brokers connect on the peer protocol
	// (wire.PeerALPN, with a certificate of Identity's bundle) and serves
	// their connections with Peers.
	Identity *peer.Identity
	Peers    *peer.Mux
	// Tokens are the accepted credentials of a Hello; empty: no authentication.
	Tokens []string
	// ACL, when set, authenticates a Hello's token as one of its
	// principals (Tokens must then be empty) and checks every request
	// against the rights the principal has in the ACL held now.
	ACL *acl.Holder
	// ClientCAs, when set, verifies the certificates clients present
	// (mutual TLS; a client may present none): with an ACL, a client that
	// sends no token is the principal its certificate names (cert_cn).
	ClientCAs *x509.CertPool
	// Status returns the status document for Status requests.
	Status func(wire.StatusSel) wire.Status
	// HelloTimeout bounds the time from accepting a connection to its Hello
	// (default 10s).
	HelloTimeout time.Duration
	// MaxStreams bounds the streams a client may open on a connection (default 16).
	MaxStreams int64
	// MaxPending bounds a connection's requests other than produces that
	// run at once (fetches, group syncs...; default 256). Past it a request
	// fails with BUSY.
	MaxPending int
	// IdleTimeout closes a connection that has been silent this long
	// (default 30s; the SDK sends keep-alives).
	IdleTimeout time.Duration
	// ResetKey, when set, is the QUIC stateless reset key: the same one
	// across restarts (certs.ResetKey derives it from the broker's key),
	// so that a peer or client still holding a connection to the broker's
	// previous process learns at its first packet that it is gone, instead
	// of waiting out an idle timeout.
	ResetKey *quic.StatelessResetKey
	Logger   *slog.Logger
}

func (o *Options) ensureDefaults() {
	if o.Listen == "" {
		o.Listen = "127.0.0.1:7420"
	}
	if o.HelloTimeout == 0 {
		o.HelloTimeout = 10 * time.Second
	}
	if o.MaxStreams == 0 {
		o.MaxStreams = 16
	}
	if o.MaxPending == 0 {
		o.MaxPending = 256
	}
	if o.IdleTimeout == 0 {
		o.IdleTimeout = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
}

// QUIC application error codes the server closes connections with.
const (
	closeNormal   quic.ApplicationErrorCode = 0 // broker stopping
	closeProtocol quic.ApplicationErrorCode = 1 // a frame the protocol does not allow
	closeRefused  quic.ApplicationErrorCode = 2 // the Hello was refused (version, credentials)
	closeTimeout  quic.ApplicationErrorCode = 3 // no Hello in time
)

// Server is a QUIC listener serving one broker.
type Server struct {
	opts   Options
	logger *slog.Logger
	ln     *quic.Listener
	tr     *quic.Transport
	udp    *net.UDPConn
	b      *broker.Broker

	stopping atomic.Bool
	inflight sync.WaitGroup // produces handed to the broker and not answered
	conns    struct {
		sync.Mutex
		m map[*conn]struct{}
	}
	connWG    sync.WaitGroup
	sessions  atomic.Int64
	seq       atomic.Uint64
	hs        handshakes
	builds    builds
	forbidden forbidden
	asides    asides
	served    chan struct{}
}

// Listen starts listening; Serve accepts.
func Listen(o Options) (*Server, error) {
	o.ensureDefaults()
	if o.TLS == nil || len(o.TLS.Certificates) == 0 {
		return nil, errors.New("server: Options.TLS needs the broker's certificate")
	}
	if o.Broker == nil {
		return nil, errors.New("server: Options.Broker is nil")
	}
	if o.ACL != nil && len(o.Tokens) > 0 {
		return nil, errors.New("server: tokens and an ACL: the ACL names every token (token_sha256)")
	}
	tlsConf := o.TLS.Clone()
	tlsConf.MinVersion = tls.VersionTLS13
	tlsConf.NextProtos = []string{wire.ALPN}
	if o.Identity != nil && o.Peers != nil {
		tlsConf = o.Identity.ServerTLS(tlsConf)
	}
	if o.ClientCAs != nil {
		tlsConf.ClientAuth = tls.RequestClientCert
		peers := tlsConf.VerifyConnection
		tlsConf.VerifyConnection = func(cs tls.ConnectionState) error {
			if cs.NegotiatedProtocol == wire.ALPN {
				return verifyClientCert(cs.PeerCertificates, o.ClientCAs)
			}
			if peers != nil {
				return peers(cs)
			}
			return nil
		}
	}
	qconf := &quic.Config{
		MaxIdleTimeout:                 o.IdleTimeout,
		HandshakeIdleTimeout:           o.HelloTimeout,
		MaxIncomingStreams:             o.MaxStreams,
		MaxIncomingUniStreams:          -1,
		InitialStreamReceiveWindow:     1 << 20,
		MaxStreamReceiveWindow:         16 << 20,
		InitialConnectionReceiveWindow: 2 << 20,
		MaxConnectionReceiveWindow:     64 << 20,
	}
	ua, err := net.ResolveUDPAddr("udp", o.Listen)
	if err != nil {
		return nil, fmt.Errorf("server: listen on %s: %w", o.Listen, err)
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		return nil, fmt.Errorf("server: listen on %s: %w", o.Listen, err)
	}
	s := &Server{opts: o, logger: o.Logger.With("component", "server"), udp: udp, b: o.Broker, served: make(chan struct{})}
	s.conns.m = map[*conn]struct{}{}
	s.hs.init(s.logger)
	s.builds.logger = s.logger
	s.asides.now = time.Now
	if tlsConf.VerifyConnection != nil {
		tlsConf = s.countRefusedCerts(tlsConf)
	}
	s.tr = &quic.Transport{Conn: udp, StatelessResetKey: o.ResetKey}
	if s.ln, err = s.tr.Listen(tlsConf, qconf); err != nil {
		udp.Close()
		return nil, fmt.Errorf("server: listen on %s: %w", o.Listen, err)
	}
	s.forbidden.init(s.logger, o.Broker.Registry())
	if reg := o.Broker.Registry(); reg != nil {
		// Incident 004: clients that reconnect in a loop show as a rate of
		// accepted connections with sessions flat, or of failed handshakes.
		s.hs.failed = prometheus.NewCounter(prometheus.CounterOpts{Name: "quiver_handshakes_failed_total",
			Help: "Connections closed before a session was established (refused credentials, certificates, version)."})
		reg.MustRegister(s.hs.failed,
			prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "quiver_connections_accepted_total", Help: "QUIC connections accepted."},
				func() float64 { return float64(s.hs.accepted.Load()) }),
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "quiver_sessions", Help: "Client sessions open now."},
				func() float64 { return float64(s.sessions.Load()) }))
	}
	return s, nil
}

// countRefusedCerts returns base made to record every handshake whose
// certificate check failed (a client certificate client_ca did not sign,
// a peer certificate outside peer_ca) with the handshake failures, per
// source, logged at most once a minute: the client only sees "bad
// certificate", the operator should see why.
func (s *Server) countRefusedCerts(base *tls.Config) *tls.Config {
	c := base.Clone()
	c.GetConfigForClient = func(info *tls.ClientHelloInfo) (*tls.Config, error) {
		conf := base.Clone()
		verify := base.VerifyConnection
		source := "unknown"
		if info.Conn != nil {
			source = info.Conn.RemoteAddr().String()
			if ua, ok := info.Conn.RemoteAddr().(*net.UDPAddr); ok {
				source = ua.IP.String()
			}
		}
		conf.VerifyConnection = func(cs tls.ConnectionState) error {
			err := verify(cs)
			if err != nil {
				s.hs.record(source, "", "TLS: "+err.Error())
			}
			return err
		}
		return conf, nil
	}
	return c
}

// Addr is the address the server listens on.
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until Shutdown.
func (s *Server) Serve() error {
	defer close(s.served)
	for {
		qc, err := s.ln.Accept(context.Background())
		if err != nil {
			if s.stopping.Load() || errors.Is(err, quic.ErrServerClosed) {
				return nil
			}
			return fmt.Errorf("server: accept: %w", err)
		}
		if qc.ConnectionState().TLS.NegotiatedProtocol == wire.PeerALPN {
			if s.stopping.Load() || s.opts.Peers == nil {
				qc.CloseWithError(closeNormal, "broker stopping")
				continue
			}
			if reason := s.peerRefused(qc); reason != "" {
				qc.CloseWithError(closeRefused, reason)
				continue
			}
			go s.opts.Peers.Serve(qc)
			continue
		}
		c := newConn(s, qc)
		s.conns.Lock()
		if s.stopping.Load() {
			s.conns.Unlock()
			qc.CloseWithError(closeNormal, "broker stopping")
			continue
		}
		s.conns.m[c] = struct{}{}
		s.connWG.Add(1)
		s.conns.Unlock()
		s.hs.accepted.Add(1)
		go c.run()
	}
}

// Shutdown stops accepting, answers new requests with STOPPING, waits
// (until ctx is done) for every produce already handed to the broker to be
// answered, then closes the connections. The caller closes the broker
// after it, which syncs the log.
func (s *Server) Shutdown(ctx context.Context) error {
	s.stopping.Store(true)
	s.ln.Close()
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("server: produces still in flight at shutdown: %w", ctx.Err())
	}
	s.conns.Lock()
	for c := range s.conns.m {
		c.stopAndClose(closeNormal, "broker stopping")
	}
	s.conns.Unlock()
	s.connWG.Wait()
	<-s.served
	return err
}

// Close closes the server's socket, and with it every connection left
// (peer connections included): call it last, after Shutdown and after
// the broker and its peers' streams are done.
func (s *Server) Close() error {
	s.ln.Close()
	s.tr.Close()
	return s.udp.Close()
}

// Connections is the connection part of the status document.
func (s *Server) Connections() *wire.Connections {
	s.conns.Lock()
	open, gso := len(s.conns.m), 0
	byBuild := map[string]int{}
	for c := range s.conns.m {
		if c.qc.ConnectionState().GSO {
			gso++
		}
		if c.established.Load() {
			byBuild[c.build]++
		}
	}
	s.conns.Unlock()
	clients := make([]wire.ClientBuild, 0, len(byBuild))
	for b, n := range byBuild {
		clients = append(clients, wire.ClientBuild{Build: b, Sessions: n})
	}
	sort.Slice(clients, func(i, j int) bool {
		if clients[i].Sessions != clients[j].Sessions {
			return clients[i].Sessions > clients[j].Sessions
		}
		return clients[i].Build < clients[j].Build
	})
	doc := &wire.Connections{Open: open, GSO: gso, Sessions: int(s.sessions.Load()), AcceptedTotal: s.hs.accepted.Load(),
		FailedHandshakes: s.hs.report(), Clients: clients}
	if s.opts.ACL != nil {
		doc.Forbidden = s.forbidden.report()
	}
	return doc
}

// ClientsSetAside are the brokers this broker's clients report they set
// aside now (wire.ClientReport).
func (s *Server) ClientsSetAside() []wire.SetAside { return s.asides.report() }

func (s *Server) removeConn(c *conn) {
	s.conns.Lock()
	delete(s.conns.m, c)
	s.conns.Unlock()
	s.connWG.Done()
}

// peerRefused returns why a peer connection (its certificate verified
// against peer_ca in the handshake) may not replicate or vote, or "". With
// an ACL, the certificate must name a principal with the peer right.
func (s *Server) peerRefused(qc *quic.Conn) string {
	h := s.opts.ACL
	if h == nil {
		return ""
	}
	certs := qc.ConnectionState().TLS.PeerCertificates
	if len(certs) == 0 {
		return "a peer connection needs a certificate"
	}
	p := h.Load().ByCert(certs[0])
	name := "(none)"
	if p != nil {
		if p.Allowed(acl.Peer, "") {
			return ""
		}
		name = p.Name
	}
	reason := fmt.Sprintf("the peer certificate (CN %q) names no principal with the peer right (principal %s)", certs[0].Subject.CommonName, name)
	s.forbidden.record(name, acl.Peer, reason)
	return reason
}

// verifyClientCert checks a client's certificate chain, if it presented
// one, against client_ca.
func verifyClientCert(chain []*x509.Certificate, roots *x509.CertPool) error {
	if len(chain) == 0 {
		return nil
	}
	if err := certs.VerifyChain(chain, roots, x509.ExtKeyUsageClientAuth); err != nil {
		return fmt.Errorf("client certificate not accepted (client_ca): %w", err)
	}
	return nil
}

// authorized checks a Hello's credentials in constant time.
func (s *Server) authorized(cred []byte) bool {
	if len(s.opts.Tokens) == 0 {
		return true
	}
	ok := false
	for _, t := range s.opts.Tokens {
		if subtle.ConstantTimeCompare([]byte(t), cred) == 1 {
			ok = true
		}
	}
	return ok
}
