// Package peer connects brokers to each other. Brokers speak the peer
// protocol (wire.PeerALPN) on the same QUIC listener as clients; a peer
// connection is mutually authenticated: each side presents its
// certificate, and each accepts only certificates of the group's bundle
// (peer_ca). Replication, the controller quorum's raft traffic and the
// brokers' sessions with the controller all run on peer connections.
//
// Every stream of a peer connection starts with one wire frame whose type
// says what the stream carries (ReplStart, Raft, CtlSession, EpochInfo);
// the accepting side's Mux hands the stream to the handler of that type.
//
// The Dialer is the only way a broker reaches another: pooled connections
// (one per address) for short streams, dedicated ones for replication,
// whose closing reason tells the follower why its leader ended it.
package peer

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quivermq/quiver/daemon/certs"
	"github.com/quivermq/quiver/sdk/wire"
)

// Identity is what a broker proves and trusts on peer connections.
type Identity struct {
	Cert  tls.Certificate // this broker's, presented to its peers
	Roots *x509.CertPool  // the group's bundle (peer_ca): the certificates or CA of every broker
}

// ErrNoPeerCert refuses a peer connection that presented no certificate,
// or one outside the bundle.
var ErrNoPeerCert = errors.New("peer: a peer connection needs a certificate of the group's bundle (peer_ca)")

// ClientTLS is the TLS configuration for dialling a peer.
func (id *Identity) ClientTLS() *tls.Config {
	cert := id.Cert
	return &tls.Config{
		RootCAs:    id.Roots,
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{wire.PeerALPN},
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
			return &cert, nil
		},
	}
}

// ServerTLS returns base (the broker's listener configuration) extended
// to offer the peer protocol too: the server asks every client for a
// certificate, and a connection that negotiated the peer protocol must
// present one of the bundle. Client connections need none.
func (id *Identity) ServerTLS(base *tls.Config) *tls.Config {
	c := base.Clone()
	c.MinVersion = tls.VersionTLS13
	c.NextProtos = append(append([]string(nil), c.NextProtos...), wire.PeerALPN)
	c.ClientAuth = tls.RequestClientCert
	c.VerifyConnection = func(cs tls.ConnectionState) error {
		if cs.NegotiatedProtocol != wire.PeerALPN {
			return nil
		}
		return id.Verify(cs.PeerCertificates)
	}
	return c
}

// Verify checks a peer's certificate chain against the bundle. The
// extended key usage is not checked: a broker's certificate is made for
// serving, and here it also identifies the broker as a client.
func (id *Identity) Verify(chain []*x509.Certificate) error {
	if len(chain) == 0 {
		return ErrNoPeerCert
	}
	if err := certs.VerifyChain(chain, id.Roots, x509.ExtKeyUsageAny); err != nil {
		return fmt.Errorf("%w: %v", ErrNoPeerCert, err)
	}
	return nil
}

// quicConfig is every peer connection's (replication's windows: a
// follower catching up reads whole chunks of 256 KiB and more).
func quicConfig() *quic.Config {
	return &quic.Config{
		MaxIdleTimeout:             10 * time.Second,
		KeepAlivePeriod:            time.Second,
		InitialStreamReceiveWindow: 4 << 20, MaxStreamReceiveWindow: 32 << 20,
		InitialConnectionReceiveWindow: 4 << 20, MaxConnectionReceiveWindow: 64 << 20,
	}
}

// Dialer opens peer connections and streams. It is safe for concurrent use.
type Dialer struct {
	tls    *tls.Config
	local  net.IP // the address peer connections come from (nil: the system's choice)
	mu     sync.Mutex
	conns  map[string]*pooled // by address
	closed bool
}

type pooled struct {
	ready chan struct{} // closed once dialled
	qc    *quic.Conn
	err   error
}

// NewDialer returns a Dialer presenting id, whose connections come from
// local (the broker's listen address, so that firewalls and peers see one
// address per broker; nil or unspecified: the system's choice).
func NewDialer(id *Identity, local net.IP) *Dialer {
	if local != nil && local.IsUnspecified() {
		local = nil
	}
	return &Dialer{tls: id.ClientTLS(), local: local, conns: map[string]*pooled{}}
}

// dial opens one connection to addr, from d.local when it is set.
func (d *Dialer) dial(ctx context.Context, addr string) (*quic.Conn, error) {
	tc := d.tls.Clone()
	if d.local == nil {
		return quic.DialAddr(ctx, addr, tc, quicConfig())
	}
	ra, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		return nil, err
	}
	if host, _, err := net.SplitHostPort(addr); err == nil && tc.ServerName == "" {
		tc.ServerName = host
	}
	udp, err := net.ListenUDP("udp", &net.UDPAddr{IP: d.local})
	if err != nil {
		return nil, err
	}
	tr := &quic.Transport{Conn: udp}
	qc, err := tr.Dial(ctx, ra, tc, quicConfig())
	if err != nil {
		tr.Close()
		udp.Close()
		return nil, err
	}
	go func() {
		<-qc.Context().Done()
		tr.Close()
		udp.Close()
	}()
	return qc, nil
}

// ErrClosed is returned once the Dialer is closed.
var ErrClosed = errors.New("peer: dialer closed")

// Dial opens a connection of its own to addr (replication: the leader
// closes it with the reason it ended the session).
func (d *Dialer) Dial(ctx context.Context, addr string) (*quic.Conn, error) {
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		return nil, ErrClosed
	}
	return d.dial(ctx, addr)
}

// Open opens a stream to addr on the pooled connection, dialling it when
// there is none (or it died), and writes the stream's first frame.
func (d *Dialer) Open(ctx context.Context, addr string, first wire.Type, payload []byte) (*quic.Stream, error) {
	qs, _, _, err := d.open(ctx, addr, first, payload)
	return qs, err
}

func (d *Dialer) open(ctx context.Context, addr string, first wire.Type, payload []byte) (*quic.Stream, net.Addr, net.Addr, error) {
	for try := 0; ; try++ {
		qc, err := d.conn(ctx, addr)
		if err != nil {
			return nil, nil, nil, err
		}
		qs, err := qc.OpenStreamSync(ctx)
		if err == nil {
			if _, err = qs.Write(wire.AppendFrame(nil, wire.Header{Type: first}, payload)); err == nil {
				return qs, qc.LocalAddr(), qc.RemoteAddr(), nil
			}
			qs.CancelRead(0)
			qs.CancelWrite(0)
		}
		d.drop(addr, qc)
		if try > 0 || ctx.Err() != nil {
			return nil, nil, nil, err
		}
		// The pooled connection had died (the peer restarted): dial again.
	}
}

func (d *Dialer) conn(ctx context.Context, addr string) (*quic.Conn, error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, ErrClosed
	}
	p := d.conns[addr]
	if p != nil {
		select {
		case <-p.ready:
			if p.err == nil && p.qc.Context().Err() == nil {
				d.mu.Unlock()
				return p.qc, nil
			}
			p = nil // failed or dead: dial again
		default:
		}
	}
	if p == nil {
		p = &pooled{ready: make(chan struct{})}
		d.conns[addr] = p
		go func() {
			// Not the caller's context: a caller giving up must not fail
			// the dial others wait for.
			dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			p.qc, p.err = d.dial(dctx, addr)
			close(p.ready)
			d.mu.Lock()
			closed := d.closed
			if p.err != nil && d.conns[addr] == p {
				delete(d.conns, addr)
			}
			d.mu.Unlock()
			if closed && p.err == nil {
				p.qc.CloseWithError(0, "broker stopping")
			}
		}()
	}
	d.mu.Unlock()
	select {
	case <-p.ready:
		return p.qc, p.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Forget closes the pooled connection to addr, if any: its peer stopped
// answering, and the connection may be dead without knowing it yet (the
// next Open dials afresh).
func (d *Dialer) Forget(addr string) {
	d.mu.Lock()
	p := d.conns[addr]
	delete(d.conns, addr)
	d.mu.Unlock()
	if p != nil {
		go func() {
			<-p.ready
			if p.err == nil {
				p.qc.CloseWithError(0, "peer silent")
			}
		}()
	}
}

func (d *Dialer) drop(addr string, qc *quic.Conn) {
	d.mu.Lock()
	if p := d.conns[addr]; p != nil && p.qc == qc {
		delete(d.conns, addr)
	}
	d.mu.Unlock()
	qc.CloseWithError(0, "stream failed")
}

// Close closes the pooled connections; later calls fail with ErrClosed.
func (d *Dialer) Close() {
	d.mu.Lock()
	d.closed = true
	conns := d.conns
	d.conns = map[string]*pooled{}
	d.mu.Unlock()
	for _, p := range conns {
		select {
		case <-p.ready:
			if p.err == nil {
				p.qc.CloseWithError(0, "broker stopping")
			}
		default: // the dialling goroutine closes it
		}
	}
}

// Stream is an accepted peer stream, after its first frame.
type Stream struct {
	Conn *quic.Conn
	QS   *quic.Stream
	R    *bufio.Reader // reads the rest of the stream (it may hold bytes past the first frame)
}

// Remote is the peer's address as seen on the connection.
func (s *Stream) Remote() string { return s.Conn.RemoteAddr().String() }

// Handler serves one accepted stream whose first frame was (h, payload);
// it owns the stream and closes it.
type Handler func(s *Stream, h wire.Header, payload []byte)

// Mux serves accepted peer connections: it reads each stream's first frame
// and hands the stream to the handler of its type.
type Mux struct {
	logger   *slog.Logger
	mu       sync.Mutex
	handlers map[wire.Type]Handler
	conns    map[*quic.Conn]struct{}
	closed   bool
	wg       sync.WaitGroup
}

// NewMux returns a Mux with no handlers.
func NewMux(logger *slog.Logger) *Mux {
	if logger == nil {
		logger = slog.Default()
	}
	return &Mux{logger: logger.With("component", "peer"), handlers: map[wire.Type]Handler{}, conns: map[*quic.Conn]struct{}{}}
}

// Handle serves streams whose first frame has type t with h.
func (m *Mux) Handle(t wire.Type, h Handler) {
	m.mu.Lock()
	m.handlers[t] = h
	m.mu.Unlock()
}

// Serve accepts the streams of a peer connection until it closes.
func (m *Mux) Serve(qc *quic.Conn) {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		qc.CloseWithError(0, "broker stopping")
		return
	}
	m.conns[qc] = struct{}{}
	m.wg.Add(1)
	m.mu.Unlock()
	defer func() {
		m.mu.Lock()
		delete(m.conns, qc)
		m.mu.Unlock()
		m.wg.Done()
	}()
	for {
		qs, err := qc.AcceptStream(context.Background())
		if err != nil {
			return
		}
		m.wg.Add(1)
		go func() {
			defer m.wg.Done()
			m.stream(qc, qs)
		}()
	}
}

func (m *Mux) stream(qc *quic.Conn, qs *quic.Stream) {
	br := bufio.NewReaderSize(qs, 64<<10)
	qs.SetReadDeadline(time.Now().Add(10 * time.Second))
	h, payload, _, err := wire.ReadFrame(br, nil)
	qs.SetReadDeadline(time.Time{})
	if err != nil {
		qs.CancelRead(0)
		qs.Close()
		return
	}
	m.mu.Lock()
	hd := m.handlers[h.Type]
	m.mu.Unlock()
	if hd == nil {
		w := wire.AppendFrame(nil, wire.Header{Type: wire.TypeError, RequestID: h.RequestID},
			wire.AppendError(nil, &wire.Error{Code: wire.CodeInvalid, Message: fmt.Sprintf("this broker serves no peer stream of type %d", h.Type)}))
		qs.Write(w)
		qs.CancelRead(0)
		qs.Close()
		return
	}
	hd(&Stream{Conn: qc, QS: qs, R: br}, h, payload)
}

// Close closes every peer connection and waits for their handlers.
func (m *Mux) Close() {
	m.mu.Lock()
	m.closed = true
	for qc := range m.conns {
		qc.CloseWithError(0, "broker stopping")
	}
	m.mu.Unlock()
	m.wg.Wait()
}

// OpenConn is Open, as a net.Conn.
func (d *Dialer) OpenConn(ctx context.Context, addr string, first wire.Type, payload []byte) (*Conn, error) {
	qs, local, remote, err := d.open(ctx, addr, first, payload)
	if err != nil {
		return nil, err
	}
	return NewConn(local, remote, qs, nil), nil
}

// Conn is a peer stream as a net.Conn (for hashicorp/raft's transport).
type Conn struct {
	r             io.Reader
	qs            *quic.Stream
	local, remote net.Addr
}

// NewConn wraps a stream; r reads it (a bufio.Reader over it, or nil for
// the stream itself).
func NewConn(local, remote net.Addr, qs *quic.Stream, r io.Reader) *Conn {
	if r == nil {
		r = qs
	}
	return &Conn{r: r, qs: qs, local: local, remote: remote}
}

func (c *Conn) Read(p []byte) (int, error)  { return c.r.Read(p) }
func (c *Conn) Write(p []byte) (int, error) { return c.qs.Write(p) }

// Close ends both directions of the stream (the connection stays).
func (c *Conn) Close() error {
	c.qs.CancelRead(0)
	return c.qs.Close()
}

func (c *Conn) LocalAddr() net.Addr                { return c.local }
func (c *Conn) RemoteAddr() net.Addr               { return c.remote }
func (c *Conn) SetDeadline(t time.Time) error      { return c.qs.SetDeadline(t) }
func (c *Conn) SetReadDeadline(t time.Time) error  { return c.qs.SetReadDeadline(t) }
func (c *Conn) SetWriteDeadline(t time.Time) error { return c.qs.SetWriteDeadline(t) }
