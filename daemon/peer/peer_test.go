package peer

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/quivermq/quiver/daemon/certs"
	"github.com/quivermq/quiver/sdk/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// identity makes a broker certificate in a directory of the test's.
func identity(t *testing.T) (tls.Certificate, []byte) {
	t.Helper()
	dir := t.TempDir()
	cert, _, err := certs.LoadOrCreate(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(filepath.Join(dir, certs.CertFile))
	if err != nil {
		t.Fatal(err)
	}
	return cert, pem
}

func pool(pems ...[]byte) *x509.CertPool {
	p := x509.NewCertPool()
	for _, b := range pems {
		p.AppendCertsFromPEM(b)
	}
	return p
}

// server listens on addr with id and echoes the first frame's payload
// back on streams of type TypeCtlSession.
func server(t *testing.T, id *Identity, addr string) (*quic.Listener, func()) {
	t.Helper()
	base := &tls.Config{Certificates: []tls.Certificate{id.Cert}, NextProtos: []string{wire.ALPN}}
	ua, err := net.ResolveUDPAddr("udp", addr)
	if err != nil {
		t.Fatal(err)
	}
	udp, err := net.ListenUDP("udp", ua)
	if err != nil {
		t.Fatal(err)
	}
	tr := &quic.Transport{Conn: udp}
	ln, err := tr.Listen(id.ServerTLS(base), nil)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMux(nil)
	m.Handle(wire.TypeCtlSession, func(s *Stream, h wire.Header, p []byte) {
		s.QS.Write(p)
		s.QS.Close()
	})
	go func() {
		for {
			qc, err := ln.Accept(context.Background())
			if err != nil {
				return
			}
			if qc.ConnectionState().TLS.NegotiatedProtocol == wire.PeerALPN {
				go m.Serve(qc)
			} else {
				qc.CloseWithError(0, "client")
			}
		}
	}()
	stop := func() { m.Close(); ln.Close(); tr.Close(); udp.Close() }
	t.Cleanup(stop)
	return ln, stop
}

// Brokers of the bundle reach each other; a certificate outside it is
// refused on the peer protocol, and a client without a certificate still
// connects on the client protocol.
func TestPeerConnectionsAreMutuallyAuthenticated(t *testing.T) {
	ca, apem := identity(t)
	cb, bpem := identity(t)
	cx, _ := identity(t) // not in the bundle
	bundle := pool(apem, bpem)
	ln, _ := server(t, &Identity{Cert: ca, Roots: bundle}, "127.0.0.1:0")
	addr := ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	d := NewDialer(&Identity{Cert: cb, Roots: bundle}, net.ParseIP("127.0.0.1"))
	defer d.Close()
	for i := 0; i < 3; i++ { // pooled: one connection, a stream each
		qs, err := d.Open(ctx, addr, wire.TypeCtlSession, []byte("hello"))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(qs)
		if err != nil || string(got) != "hello" {
			t.Fatalf("echo: %q %v", got, err)
		}
		qs.CancelRead(0)
	}
	if n := len(d.conns); n != 1 {
		t.Fatalf("%d pooled connections, want 1", n)
	}

	outsider := NewDialer(&Identity{Cert: cx, Roots: bundle}, nil)
	defer outsider.Close()
	// TLS 1.3: the client's handshake is done before the server has
	// checked its certificate, so the refusal comes as the connection's
	// close.
	qs, err := outsider.Open(ctx, addr, wire.TypeCtlSession, []byte("x"))
	if err == nil {
		_, err = io.ReadAll(qs)
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("a certificate outside the bundle: %v", err)
	}

	// A client without a certificate, on the client protocol.
	qc, err := quic.DialAddr(ctx, addr, &tls.Config{RootCAs: bundle, NextProtos: []string{wire.ALPN}, MinVersion: tls.VersionTLS13}, nil)
	if err != nil {
		t.Fatalf("client without a certificate: %v", err)
	}
	qc.CloseWithError(0, "")
	// ... but not on the peer protocol.
	qc, err = quic.DialAddr(ctx, addr, &tls.Config{RootCAs: bundle, NextProtos: []string{wire.PeerALPN}, MinVersion: tls.VersionTLS13}, nil)
	if err == nil {
		qs, err = qc.OpenStreamSync(ctx)
		if err == nil {
			qs.Write(wire.AppendFrame(nil, wire.Header{Type: wire.TypeCtlSession}, []byte("x")))
			_, err = io.ReadAll(qs)
		}
	}
	if err == nil || !strings.Contains(err.Error(), "bad certificate") {
		t.Fatalf("a peer connection without a certificate: %v", err)
	}
}

// A pooled connection whose peer restarted is dialled again.
func TestOpenRedialsADeadConnection(t *testing.T) {
	ca, apem := identity(t)
	id := &Identity{Cert: ca, Roots: pool(apem)}
	ln, stop := server(t, id, "127.0.0.1:0")
	addr := ln.Addr().String()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	d := NewDialer(id, nil)
	defer d.Close()
	echo := func(what string) {
		t.Helper()
		qs, err := d.Open(ctx, addr, wire.TypeCtlSession, []byte(what))
		if err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(qs)
		if err != nil || string(got) != what {
			t.Fatalf("echo: %q %v", got, err)
		}
	}
	echo("before")
	stop() // the peer goes away...
	testutilWaitClosed(t, d, addr)
	server(t, id, addr) // ... and comes back on the same address
	echo("after")
}

// testutilWaitClosed waits until the pooled connection to addr has seen
// its peer go.
func testutilWaitClosed(t *testing.T, d *Dialer, addr string) {
	t.Helper()
	d.mu.Lock()
	p := d.conns[addr]
	d.mu.Unlock()
	if p == nil {
		return
	}
	<-p.ready
	select {
	case <-p.qc.Context().Done():
	case <-time.After(10 * time.Second):
		t.Fatal("the pooled connection did not see its peer close")
	}
}
