package server

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/quic-go/quic-go"

	"github.com/quivermq/quiver/daemon/acl"
	"github.com/quivermq/quiver/internal/quicerr"
	"github.com/quivermq/quiver/sdk/wire"
)

// conn is one client connection.
type conn struct {
	s         *Server
	qc        *quic.Conn
	source    string // remote IP (reconnects come from new ports)
	clientID  string
	build     string // the client's build (Hello), set before established
	session   uint64
	principal string // with an ACL: whom the Hello's token named

	established atomic.Bool
	pending     chan struct{} // semaphore of non-produce requests
	wg          sync.WaitGroup
	mu          sync.Mutex
	streams     []*stream
}

func newConn(s *Server, qc *quic.Conn) *conn {
	src := qc.RemoteAddr().String()
	if ua, ok := qc.RemoteAddr().(*net.UDPAddr); ok {
		src = ua.IP.String()
	}
	return &conn{s: s, qc: qc, source: src, pending: make(chan struct{}, s.opts.MaxPending)}
}

// run performs the Hello handshake on the first stream, then serves every
// stream of the session until the connection closes.
func (c *conn) run() {
	defer c.s.removeConn(c)
	first, reason := c.hello()
	if first == nil {
		c.s.hs.record(c.source, c.clientID, reason)
		c.wg.Wait()
		return
	}
	c.s.sessions.Add(1)
	defer c.s.sessions.Add(-1)
	c.wg.Add(1)
	go first.serve()
	for {
		qs, err := c.qc.AcceptStream(context.Background())
		if err != nil {
			break
		}
		st := c.newStream(qs, bufio.NewReaderSize(qs, 64<<10))
		c.wg.Add(1)
		go st.serve()
	}
	c.wg.Wait()
}

// hello reads and answers the session's first frame. It returns the first
// stream, ready to serve, or nil with the reason the session failed.
func (c *conn) hello() (*stream, string) {
	ctx, cancel := context.WithTimeout(c.qc.Context(), c.s.opts.HelloTimeout)
	defer cancel()
	qs, err := c.qc.AcceptStream(ctx)
	if err != nil {
		if ctx.Err() != nil && c.qc.Context().Err() == nil {
			c.qc.CloseWithError(closeTimeout, "no Hello within "+c.s.opts.HelloTimeout.String())
			return nil, "no stream opened within the hello timeout"
		}
		return nil, "closed by the client before Hello: " + quicerr.CloseReason(err)
	}
	qs.SetReadDeadline(time.Now().Add(c.s.opts.HelloTimeout))
	br := bufio.NewReaderSize(qs, 64<<10)
	h, payload, _, err := wire.ReadFrame(br, make([]byte, 0, 512))
	qs.SetReadDeadline(time.Time{})
	st := c.newStream(qs, br)
	if err != nil {
		if errors.Is(err, wire.ErrMalformed) || errors.Is(err, wire.ErrFrameTooLarge) {
			return nil, c.refuse(st, 0, closeProtocol, &wire.Error{Code: wire.CodeInvalid, Message: "bad first frame: " + err.Error()})
		}
		if isTimeout(err) {
			c.qc.CloseWithError(closeTimeout, "no Hello within "+c.s.opts.HelloTimeout.String())
			return nil, "no Hello within the hello timeout"
		}
		return nil, "closed by the client before Hello: " + quicerr.CloseReason(err)
	}
	if h.Type != wire.TypeHello {
		return nil, c.refuse(st, h.RequestID, closeProtocol, &wire.Error{Code: wire.CodeInvalid,
			Message: fmt.Sprintf("the first frame of a connection must be Hello, not type %d", h.Type)})
	}
	var m wire.Hello
	if err := wire.DecodeHello(payload, &m); err != nil {
		return nil, c.refuse(st, h.RequestID, closeProtocol, &wire.Error{Code: wire.CodeInvalid, Message: err.Error()})
	}
	c.clientID = m.ClientID
	if m.Version < wire.MinProtocolVersion || m.Version > wire.ProtocolVersion {
		return nil, c.refuse(st, h.RequestID, closeRefused, &wire.Error{Code: wire.CodeUnsupportedVersion,
			Message: fmt.Sprintf("protocol version %d; this broker speaks %d to %d", m.Version, wire.MinProtocolVersion, wire.ProtocolVersion)})
	}
	c.build = m.Build
	if c.build == "" {
		c.build = fmt.Sprintf("unknown (protocol %d)", m.Version)
	}
	if holder := c.s.opts.ACL; holder != nil {
		a := holder.Load()
		var p *acl.Principal
		if len(m.Credentials) > 0 {
			p = a.ByToken(m.Credentials)
		} else if certs := c.qc.ConnectionState().TLS.PeerCertificates; c.s.opts.ClientCAs != nil && len(certs) > 0 {
			p = a.ByCert(certs[0]) // verified against client_ca in the handshake
		}
		if p == nil {
			return nil, c.refuse(st, h.RequestID, closeRefused, &wire.Error{Code: wire.CodeUnauthorized, Message: "credentials refused"})
		}
		c.principal = p.Name
	} else if !c.s.authorized(m.Credentials) {
		return nil, c.refuse(st, h.RequestID, closeRefused, &wire.Error{Code: wire.CodeUnauthorized, Message: "credentials refused"})
	}
	if c.s.stopping.Load() {
		return nil, c.refuse(st, h.RequestID, closeNormal, &wire.Error{Code: wire.CodeStopping, Message: "broker stopping"})
	}
	c.session = c.s.seq.Add(1)
	c.s.builds.seen(c.build, c.clientID, c.source)
	c.established.Store(true)
	ok := wire.HelloOK{Version: wire.ProtocolVersion, BrokerID: c.s.b.ID(), Session: c.session}
	b, start := st.w.Begin(wire.Header{Type: wire.TypeHelloOK, RequestID: h.RequestID})
	st.w.End(ok.Append(b), start)
	return st, ""
}

// refuse answers the request with werr, lets the client read it, and
// closes the connection. It returns the reason to record.
func (c *conn) refuse(st *stream, reqID uint64, code quic.ApplicationErrorCode, werr *wire.Error) string {
	st.sendError(reqID, werr)
	c.wg.Add(1)
	go func() { defer c.wg.Done(); st.w.Run() }()
	c.flushAndClose(code, werr.Message)
	return werr.Code.String() + ": " + werr.Message
}

// flushAndClose closes the connection after the buffered responses of its
// streams are written, giving the client a moment to read them.
func (c *conn) flushAndClose(code quic.ApplicationErrorCode, msg string) {
	c.closeWriters()
	// The client closes the connection itself once it has read the answer;
	// past a second, close it from here.
	go c.whenClosedOr(time.Second, func() { c.qc.CloseWithError(code, msg) })
}

// whenClosedOr runs f once the client closed the connection or d has
// passed.
func (c *conn) whenClosedOr(d time.Duration, f func()) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-c.qc.Context().Done():
	case <-t.C:
	}
	f()
}

// stopAndClose closes the connection of a stopping broker: its streams
// keep answering (every new request with STOPPING, at once, so that the
// client goes elsewhere instead of waiting for the close), until the
// client closes the connection or a second has passed.
func (c *conn) stopAndClose(code quic.ApplicationErrorCode, msg string) {
	go c.whenClosedOr(time.Second, func() {
		c.closeWriters()
		c.whenClosedOr(100*time.Millisecond, func() { c.qc.CloseWithError(code, msg) })
	})
}

// closeWriters stops the streams' writers once they wrote what they hold.
func (c *conn) closeWriters() {
	c.mu.Lock()
	streams := c.streams
	c.mu.Unlock()
	for _, st := range streams {
		st.w.Close()
	}
}

func (c *conn) newStream(qs *quic.Stream, br *bufio.Reader) *stream {
	st := &stream{c: c, qs: qs, br: br, w: wire.NewWriter(qs, 8<<20)}
	c.mu.Lock()
	c.streams = append(c.streams, st)
	c.mu.Unlock()
	return st
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
