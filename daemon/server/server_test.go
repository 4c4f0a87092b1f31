package server

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/quic-go/quic-go"
	"go.uber.org/goleak"

	"github.com/quivermq/quiver/daemon/broker"
	"github.com/quivermq/quiver/daemon/certs"
	"github.com/quivermq/quiver/daemon/store"
	qlog "github.com/quivermq/quiver/log"
	"github.com/quivermq/quiver/sdk/wire"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// logBuf collects the server's log lines.
type logBuf struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

type fixture struct {
	s    *Server
	b    *broker.Broker
	tls  *tls.Config
	logs *logBuf
}

func start(t *testing.T, tokens ...string) *fixture {
	t.Helper()
	return startWith(t, func(o *Options) { o.Tokens = tokens })
}

// startWith starts a server whose options mod changes.
func startWith(t *testing.T, mod func(*Options)) *fixture {
	t.Helper()
	dir := t.TempDir()
	logs := &logBuf{}
	logger := slog.New(slog.NewTextHandler(logs, nil))
	b, err := broker.New(broker.Options{Dir: dir, Logger: logger, Store: store.Options{Engine: "portable",
		Log: qlog.Options{SegmentSize: 4 << 20, TailBytes: 1 << 20, MaxBatchBytes: 128 << 10}}})
	if err != nil {
		t.Fatal(err)
	}
	cert, _, err := certs.LoadOrCreate(filepath.Join(dir, "tls"), nil)
	if err != nil {
		t.Fatal(err)
	}
	o := Options{Listen: "127.0.0.1:0", TLS: &tls.Config{Certificates: []tls.Certificate{cert}}, Broker: b,
		Logger: logger, HelloTimeout: 2 * time.Second}
	mod(&o)
	s, err := Listen(o)
	if err != nil {
		t.Fatal(err)
	}
	go s.Serve()
	t.Cleanup(func() {
		s.Shutdown(context.Background())
		b.Close()
		s.Close()
	})
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool := x509.NewCertPool()
	pool.AddCert(leaf)
	return &fixture{s: s, b: b, logs: logs, tls: &tls.Config{RootCAs: pool, ServerName: "localhost", NextProtos: []string{wire.ALPN}}}
}

// rawConn is a hand-driven client: one QUIC connection, one stream.
type rawConn struct {
	qc *quic.Conn
	qs *quic.Stream
	br *bufio.Reader
}

func (f *fixture) dial(t *testing.T) *rawConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	qc, err := quic.DialAddr(ctx, f.s.Addr().String(), f.tls, nil)
	if err != nil {
		t.Fatal(err)
	}
	qs, err := qc.OpenStreamSync(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { qc.CloseWithError(0, "") })
	return &rawConn{qc: qc, qs: qs, br: bufio.NewReader(qs)}
}

func (c *rawConn) send(t *testing.T, typ wire.Type, id uint64, payload []byte) {
	t.Helper()
	if _, err := c.qs.Write(wire.AppendFrame(nil, wire.Header{Type: typ, RequestID: id}, payload)); err != nil {
		t.Fatal(err)
	}
}

func (c *rawConn) recv(t *testing.T) (wire.Header, []byte) {
	t.Helper()
	c.qs.SetReadDeadline(time.Now().Add(5 * time.Second))
	h, p, _, err := wire.ReadFrame(c.br, nil)
	if err != nil {
		t.Fatalf("reading a frame: %v", err)
	}
	return h, p
}

func (c *rawConn) expectError(t *testing.T, code wire.Code) *wire.Error {
	t.Helper()
	h, p := c.recv(t)
	if h.Type != wire.TypeError {
		t.Fatalf("got frame type %d, want an Error", h.Type)
	}
	werr, err := wire.DecodeError(p)
	if err != nil || werr.Code != code {
		t.Fatalf("got %v (%v), want %v", werr, err, code)
	}
	return werr
}

// The connection is closed by the broker after a refusal.
func (c *rawConn) expectClosed(t *testing.T) {
	t.Helper()
	select {
	case <-c.qc.Context().Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the broker did not close the connection")
	}
}

func hello(version uint16, id string, cred string) []byte {
	return (&wire.Hello{Version: version, ClientID: id, Credentials: []byte(cred)}).Append(nil)
}

// Every way a session can fail to open is answered with a clear error,
// closes the connection, and is counted per source and client id.
func TestSessionRefusals(t *testing.T) {
	f := start(t, "token")
	cases := []struct {
		name   string
		frames func(c *rawConn)
		code   wire.Code
		reason string
	}{
		{"new version", func(c *rawConn) { c.send(t, wire.TypeHello, 1, hello(99, "v99", "token")) }, wire.CodeUnsupportedVersion, "UNSUPPORTED_VERSION"},
		{"old version", func(c *rawConn) { c.send(t, wire.TypeHello, 1, hello(2, "v2", "token")) }, wire.CodeUnsupportedVersion, "UNSUPPORTED_VERSION"},
		{"bad credentials", func(c *rawConn) { c.send(t, wire.TypeHello, 1, hello(wire.ProtocolVersion, "badcred", "nope")) }, wire.CodeUnauthorized, "UNAUTHORIZED"},
		{"produce before hello", func(c *rawConn) {
			c.send(t, wire.TypeProduce, 1, (&wire.Produce{Topic: "t", Body: []byte("x")}).Append(nil))
		}, wire.CodeInvalid, "must be Hello"},
		{"garbage", func(c *rawConn) { c.qs.Write([]byte("GET / HTTP/1.1\r\n\r\n")) }, wire.CodeInvalid, "bad first frame"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			rc := f.dial(t)
			c.frames(rc)
			rc.expectError(t, c.code)
			rc.expectClosed(t)
			found := false
			waitFor(t, "the failure to be counted", func() bool {
				for _, h := range f.s.Connections().FailedHandshakes {
					if strings.Contains(h.LastReason, c.reason) {
						found = true
					}
				}
				return found
			})
		})
	}
	// Counted per source and client id: the two without a Hello share one entry.
	byID := map[string]int64{}
	for _, h := range f.s.Connections().FailedHandshakes {
		if h.Source != "127.0.0.1" {
			t.Fatalf("failed handshake entry: %+v", h)
		}
		byID[h.ClientID] = h.Count
	}
	if byID["v99"] != 1 || byID["v2"] != 1 || byID["badcred"] != 1 || byID[""] != 2 {
		t.Fatalf("failures per client id: %v", byID)
	}
}

// The status counts open sessions by the client's build (Hello); a client
// of protocol 3, which sent none, is served and counted as such.
func TestClientBuildsInStatus(t *testing.T) {
	f := start(t)
	for _, h := range []wire.Hello{
		{Version: wire.ProtocolVersion, ClientID: "a1", Build: "quiver-go/v9 (abc; go1.26.8; linux/amd64)"},
		{Version: wire.ProtocolVersion, ClientID: "a2", Build: "quiver-go/v9 (abc; go1.26.8; linux/amd64)"},
		{Version: 3, ClientID: "old"},
	} {
		c := f.dial(t)
		c.send(t, wire.TypeHello, 1, h.Append(nil))
		if rh, _ := c.recv(t); rh.Type != wire.TypeHelloOK {
			t.Fatalf("hello %+v answered with %+v", h, rh)
		}
	}
	want := []wire.ClientBuild{{Build: "quiver-go/v9 (abc; go1.26.8; linux/amd64)", Sessions: 2}, {Build: "unknown (protocol 3)", Sessions: 1}}
	waitFor(t, "the sessions by build", func() bool { return reflect.DeepEqual(f.s.Connections().Clients, want) })
}

// An established session refuses a second Hello and a frame that is not a
// request, and serves requests on several streams.
func TestSessionRules(t *testing.T) {
	f := start(t)
	c := f.dial(t)
	c.send(t, wire.TypeHello, 1, hello(wire.ProtocolVersion, "ok", ""))
	if h, _ := c.recv(t); h.Type != wire.TypeHelloOK || h.RequestID != 1 {
		t.Fatalf("hello answered with %+v", h)
	}
	// A second stream of the session serves requests.
	qs2, err := c.qc.OpenStreamSync(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	c2 := &rawConn{qc: c.qc, qs: qs2, br: bufio.NewReader(qs2)}
	c2.send(t, wire.TypeCreate, 7, (&wire.Create{Topic: "t", Queues: 2}).Append(nil))
	if h, _ := c2.recv(t); h.Type != wire.TypeOK || h.RequestID != 7 {
		t.Fatalf("create answered with %+v", h)
	}
	// Many requests in flight on one stream, answered by request id.
	for id := uint64(100); id < 110; id++ {
		c2.send(t, wire.TypeProduce, id, (&wire.Produce{Topic: "t", Queue: int32(id % 2), Body: []byte("x")}).Append(nil))
	}
	for n := 0; n < 10; n++ {
		h, p := c2.recv(t)
		var ack wire.ProduceAck
		if h.Type != wire.TypeProduceAck || wire.DecodeProduceAck(p, &ack) != nil || uint64(ack.Queue) != h.RequestID%2 {
			t.Fatalf("produce %d answered with %+v %+v", h.RequestID, h, ack)
		}
	}
	// A malformed payload is answered INVALID; the session goes on.
	c2.send(t, wire.TypeProduce, 9, []byte{1, 2, 3})
	c2.expectError(t, wire.CodeInvalid)
	c2.send(t, wire.TypeMetadata, 10, (&wire.Metadata{}).Append(nil))
	if h, _ := c2.recv(t); h.Type != wire.TypeMetaResp {
		t.Fatalf("metadata after a malformed request: %+v", h)
	}
	// A second Hello is a protocol violation: the session ends.
	c.send(t, wire.TypeHello, 11, hello(wire.ProtocolVersion, "ok", ""))
	c.expectError(t, wire.CodeInvalid)
	c.expectClosed(t)
	if n := len(f.s.Connections().FailedHandshakes); n != 0 {
		t.Fatalf("an established session was counted as a failed handshake (%d)", n)
	}
}

// A connection that never says Hello is closed after the hello timeout and
// counted.
func TestNoHelloTimesOut(t *testing.T) {
	f := start(t)
	c := f.dial(t) // opens a stream but sends nothing
	_ = c
	c.expectClosed(t)
	waitFor(t, "the silent connection to be counted", func() bool {
		hs := f.s.Connections().FailedHandshakes
		return len(hs) == 1 && strings.Contains(hs[0].LastReason, "hello timeout")
	})
}

// Many refused connections from one source produce one log line a minute.
func TestRefusalLogIsRateLimited(t *testing.T) {
	var h handshakes
	logs := &logBuf{}
	h.init(slog.New(slog.NewTextHandler(logs, nil)))
	now := time.Unix(0, 0)
	h.now = func() time.Time { return now }
	for i := 0; i < 1000; i++ {
		h.record("10.0.0.1", "app", "UNAUTHORIZED: credentials refused")
		now = now.Add(50 * time.Millisecond) // 20 a second, 50 s in all
	}
	if n := strings.Count(logs.String(), "connections closed before a session was established"); n != 1 {
		t.Fatalf("%d log lines for 1000 refusals in 50s, want 1", n)
	}
	now = now.Add(15 * time.Second)
	h.record("10.0.0.1", "app", "again")
	if !strings.Contains(logs.String(), "since_last_line=1000") {
		t.Fatalf("the next line does not count what it summarised:\n%s", logs.String())
	}
	r := h.report()
	if len(r) != 1 || r[0].Count != 1001 {
		t.Fatalf("report: %+v", r)
	}
	// The table of sources is bounded.
	for i := 0; i < 2*maxSources; i++ {
		h.record("10.0.0.2", string(rune('a'+i%26))+strings.Repeat("x", i), "r")
	}
	if n := len(h.report()); n > maxSources {
		t.Fatalf("%d sources tracked, limit %d", n, maxSources)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
