//go:build !windows

package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/quivermq/quiver/internal/testbroker"
	"github.com/quivermq/quiver/sdk"
	"github.com/quivermq/quiver/sdk/wire"
)

// The tokens of the contract's principals: long enough that finding one
// in a file cannot be chance.
const (
	producerTok = "tok-producer-6f1c9a8e2b7d"
	consumerTok = "tok-consumer-93b0d4e7a215"
	adminTok    = "tok-admin-51e8c2f0d9a3"
)

func aclFile(producePatterns string) string {
	return `
[[principal]]
name = "orders-app"
token_sha256 = "` + testbroker.TokenSHA256(producerTok) + `"
produce = [` + producePatterns + `]

[[principal]]
name = "billing"
token_sha256 = "` + testbroker.TokenSHA256(consumerTok) + `"
consume = ["orders*"]
groups = ["billing*"]

[[principal]]
name = "ops"
token_sha256 = "` + testbroker.TokenSHA256(adminTok) + `"
admin = true
`
}

// refused checks that r failed (exit 1) with an error naming code, on one
// line of stderr that ends in a newline.
func refused(t *testing.T, r result, code string, what string) {
	t.Helper()
	if r.code != 1 || !strings.Contains(r.stderr, code) || !strings.HasSuffix(r.stderr, "\n") {
		t.Fatalf("%s: want exit 1 naming %s on stderr; %v", what, code, r)
	}
}

// The contract of issue 14, through the quiver command against a real
// broker with an ACL: who may send, read, create and promote.
func TestACLContract(t *testing.T) {
	dir := t.TempDir()
	acl := filepath.Join(dir, "acl.toml")
	if err := os.WriteFile(acl, []byte(aclFile(`"orders*"`)), 0o600); err != nil {
		t.Fatal(err)
	}
	b := testbroker.Start(t, "--acl", acl)
	withTok := func(tok string, args ...string) []string {
		return with(b, append([]string{"--token", tok}, args...)...)
	}

	refused(t, runBin(t, "", "", with(b, "topic", "create", "orders")...), "UNAUTHORIZED", "no token")
	refused(t, runBin(t, "", "", withTok("not-a-token", "topic", "list")...), "UNAUTHORIZED", "a wrong token")

	must(t, runBin(t, "", "", withTok(adminTok, "topic", "create", "orders", "--queues", "2")...))
	must(t, runBin(t, "", "", withTok(adminTok, "topic", "create", "payments", "--queues", "1")...))

	must(t, runBin(t, "", "o1\no2\n", withTok(producerTok, "produce", "--topic", "orders", "--acks")...))
	r := runBin(t, "", "p1\n", withTok(producerTok, "produce", "--topic", "payments", "--acks")...)
	refused(t, r, "FORBIDDEN", "the producer sending to payments")
	if !strings.Contains(r.stderr, "orders-app") || !strings.Contains(r.stderr, "produce") {
		t.Fatalf("the refusal does not name the principal and the right: %v", r)
	}
	refused(t, runBin(t, "", "", withTok(producerTok, "consume", "--topic", "orders", "--group", "billing-1", "--count", "1")...),
		"FORBIDDEN", "the producer consuming")
	refused(t, runBin(t, "", "", withTok(producerTok, "topic", "create", "orders-new")...), "FORBIDDEN", "the producer creating a topic")
	refused(t, runBin(t, "", "", withTok(producerTok, "admin", "promote")...), "FORBIDDEN", "the producer promoting")
	// Reading the broker's state needs only a valid credential.
	must(t, runBin(t, "", "", withTok(producerTok, "status")...))
	must(t, runBin(t, "", "", withTok(producerTok, "topic", "list")...))
	// Deleting a topic: the admin right, and --yes.
	refused(t, runBin(t, "", "", withTok(producerTok, "topic", "delete", "payments", "--yes")...), "FORBIDDEN", "the producer deleting a topic")
	if r := runBin(t, "", "", withTok(adminTok, "topic", "delete", "payments")...); r.code != 2 || !strings.Contains(r.stderr, "--yes") {
		t.Fatalf("topic delete without --yes: %v", r)
	}
	if r := must(t, runBin(t, "", "", withTok(adminTok, "topic", "delete", "payments", "--yes")...)); !strings.Contains(r.stdout, "topic payments deleted") {
		t.Fatalf("topic delete: %v", r)
	}
	if r := must(t, runBin(t, "", "", withTok(adminTok, "topic", "list")...)); strings.Contains(r.stdout, "payments") || !strings.Contains(r.stdout, "orders") {
		t.Fatalf("topic list after deleting payments: %v", r)
	}

	// The consumer's token comes from QUIVER_TOKEN.
	asConsumer := func(stdin string, args ...string) result {
		ctx, cancel := context.WithTimeout(context.Background(), cmdTimeout)
		defer cancel()
		cmd := quiverCmd(t, ctx, "", with(b, args...)...)
		cmd.Env = append(cmd.Env, "QUIVER_TOKEN="+consumerTok)
		var out, errb strings.Builder
		cmd.Stdin, cmd.Stdout, cmd.Stderr = strings.NewReader(stdin), &out, &errb
		err := cmd.Run()
		res := result{stdout: out.String(), stderr: errb.String()}
		var ee interface{ ExitCode() int }
		if errors.As(err, &ee) {
			res.code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		return res
	}
	r = must(t, asConsumer("", "consume", "--topic", "orders", "--group", "billing-1", "--count", "2"))
	if got := strings.Fields(r.stdout); len(got) != 2 || !strings.Contains(r.stdout, "o1") || !strings.Contains(r.stdout, "o2") {
		t.Fatalf("the consumer read %q, want o1 and o2", r.stdout)
	}
	refused(t, asConsumer("", "consume", "--topic", "orders", "--group", "audit", "--count", "1"), "FORBIDDEN", "the consumer in another group")
	// Its group's redelivery and dead-letter topics are its own: a failing
	// handler's message is set aside, redelivered, then dead-lettered, and
	// shown, with the groups right alone.
	dead(t, b, consumerTok, "billing-2", "o1")
	if r := must(t, asConsumer("", "dlq", "show", "--group", "billing-2", "--count", "1")); !strings.Contains(r.stdout, "from orders/") {
		t.Fatalf("dlq show as the group's principal:\n%s", r.stdout)
	}
	refused(t, asConsumer("c1\n", "produce", "--topic", "orders", "--acks"), "FORBIDDEN", "the consumer sending")

	// Refusals are counted per principal and right.
	metrics := string(b.Get("/metrics"))
	for _, want := range []string{`quiver_forbidden_total{principal="orders-app",right="produce"}`,
		`quiver_forbidden_total{principal="orders-app",right="admin"}`, `quiver_forbidden_total{principal="billing",right="groups"}`} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics has no %s", want)
		}
	}
	if st := b.Status(); st.Connections == nil || len(st.Connections.Forbidden) == 0 {
		t.Errorf("/status counts no refusals: %+v", st.Connections)
	}
	if r := must(t, runBin(t, "", "", withTok(adminTok, "status")...)); !strings.Contains(r.stdout, "REFUSED (FORBIDDEN)") ||
		!strings.Contains(r.stdout, "orders-app") {
		t.Errorf("quiver status shows no refusals:\n%s", r.stdout)
	}
	b.Stop()
	// No token is written anywhere: not in the data directory, not in the log.
	filepath.Walk(b.Dir, func(path string, info os.FileInfo, err error) error {
		if err != nil || info.IsDir() {
			return err
		}
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		for _, tok := range []string{producerTok, consumerTok, adminTok, "not-a-token"} {
			if strings.Contains(string(data), tok) {
				t.Errorf("%s holds a token in clear", path)
			}
		}
		return nil
	})
}

// dead runs a consumer of group on orders, with tok, whose handler always
// fails on body, until body is in the group's dead-letter topic.
func dead(t *testing.T, b *testbroker.Broker, tok, group, body string) {
	t.Helper()
	cl := b.Client(sdk.WithCredentials([]byte(tok)))
	defer cl.Close()
	c, err := cl.NewConsumer(group, []string{"orders"}, sdk.WithRedelivery(1, 10*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go c.Run(ctx, func(_ context.Context, m *sdk.Message) error {
		if string(m.Body) == body {
			return errors.New("always fails")
		}
		return nil
	})
	testbroker.WaitFor(t, body+" dead-lettered", func() bool { return b.Metric(`quiver_dead_letters_total{group="`+group+`"}`) == 1 })
	if r := b.Metric(`quiver_redeliveries_total{group="` + group + `"}`); r != 1 {
		t.Fatalf("%v redeliveries, want 1", r)
	}
}

// SIGHUP reloads the ACL without dropping connections: a producer refused
// a topic is allowed it, on the same session, once the file grants it; a
// file with an error changes nothing.
func TestACLReload(t *testing.T) {
	dir := t.TempDir()
	acl := filepath.Join(dir, "acl.toml")
	if err := os.WriteFile(acl, []byte(aclFile(`"orders*"`)), 0o600); err != nil {
		t.Fatal(err)
	}
	b := testbroker.Start(t, "--acl", acl, "--auto-create-topics")
	cl := b.Client(sdk.WithCredentials([]byte(producerTok)))
	p, err := cl.NewProducer(sdk.WithSendTimeout(2 * time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	ctx := context.Background()
	if _, err := p.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	forbidden := func(err error) bool {
		var we *wire.Error
		return errors.As(err, &we) && we.Code == wire.CodeForbidden
	}
	if _, err := p.Send(ctx, &sdk.Message{Topic: "payments", Body: []byte("x")}); !forbidden(err) {
		t.Fatalf("send to payments before the reload: %v, want FORBIDDEN", err)
	}
	accepted := b.Status().Connections.AcceptedTotal

	os.WriteFile(acl, []byte("this is not toml ["), 0o600)
	b.Reload()
	testbroker.WaitFor(t, "the broken file to be refused", func() bool { return strings.Contains(b.Log(), "previous ACL stays in force") })
	if _, err := p.Send(ctx, &sdk.Message{Topic: "orders", Body: []byte("x")}); err != nil {
		t.Fatalf("a broken ACL file changed the rights in force: %v", err)
	}

	os.WriteFile(acl, []byte(aclFile(`"orders*", "payments"`)), 0o600)
	b.Reload()
	testbroker.WaitFor(t, "the ACL to be reloaded", func() bool { return strings.Count(b.Log(), "ACL reloaded") == 1 })
	if _, err := p.Send(ctx, &sdk.Message{Topic: "payments", Body: []byte("x")}); err != nil {
		t.Fatalf("send to payments after the reload: %v", err)
	}
	if now := b.Status().Connections.AcceptedTotal; now != accepted {
		t.Fatalf("the client connected again (%d connections, %d before the reload)", now, accepted)
	}
}

// testCA is a certificate authority for client certificates.
type testCA struct {
	t    *testing.T
	dir  string
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	File string // its certificate, PEM
}

func newTestCA(t *testing.T, dir, name string) *testCA {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	ca := &testCA{t: t, dir: dir, cert: cert, key: key, File: filepath.Join(dir, name+".pem")}
	os.WriteFile(ca.File, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	return ca
}

// issue makes a client certificate for cn; it returns its files.
func (ca *testCA) issue(cn string) (certFile, keyFile string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		ca.t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		ca.t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(ca.dir, cn+".crt"), filepath.Join(ca.dir, cn+".key")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	return certFile, keyFile
}

// Mutual TLS: a client certificate signed by client_ca names its principal
// (cert_cn), through the CLI and the SDK; one from another CA is refused in
// the handshake; without a certificate or a token a client is refused.
func TestACLClientCertificates(t *testing.T) {
	dir := t.TempDir()
	ca, other := newTestCA(t, dir, "clients-ca"), newTestCA(t, dir, "other-ca")
	acl := filepath.Join(dir, "acl.toml")
	os.WriteFile(acl, []byte(`
[[principal]]
name = "orders-app"
cert_cn = "orders-app.clients"
produce = ["orders*"]

[[principal]]
name = "ops"
token_sha256 = "`+testbroker.TokenSHA256(adminTok)+`"
admin = true
`), 0o600)
	b := testbroker.Start(t, "--acl", acl, "--client-ca", ca.File)
	must(t, runBin(t, "", "", with(b, "--token", adminTok, "topic", "create", "orders")...))

	crt, key := ca.issue("orders-app.clients")
	must(t, runBin(t, "", "m1\n", with(b, "--cert", crt, "--cert-key", key, "produce", "--topic", "orders", "--acks")...))
	r := runBin(t, "", "m2\n", with(b, "--cert", crt, "--cert-key", key, "produce", "--topic", "payments", "--acks")...)
	refused(t, r, "FORBIDDEN", "the certificate's principal sending to payments")
	if !strings.Contains(r.stderr, "orders-app") {
		t.Fatalf("the refusal does not name the certificate's principal: %v", r)
	}
	if r := runBin(t, "", "", with(b, "--cert", crt, "topic", "list")...); r.code != 2 || !strings.Contains(r.stderr, "--cert and --cert-key") {
		t.Fatalf("a certificate without its key: want a usage error; %v", r)
	}

	// The SDK, with the same certificate.
	pair, err := tls.LoadX509KeyPair(crt, key)
	if err != nil {
		t.Fatal(err)
	}
	cl := b.Client(sdk.WithClientCertificate(pair))
	p, _ := cl.NewProducer()
	defer p.Close()
	if _, err := p.Send(context.Background(), &sdk.Message{Topic: "orders", Body: []byte("m3")}); err != nil {
		t.Fatalf("send with a client certificate: %v", err)
	}

	// A certificate of another CA is refused in the handshake, one of the
	// right CA naming no principal at the Hello, and so is no credential.
	octr, okey := other.issue("orders-app.clients")
	refused(t, runBin(t, "", "", with(b, "--cert", octr, "--cert-key", okey, "topic", "list")...), "bad certificate", "a certificate of another CA")
	// The broker says why, per source, where the client only sees "bad certificate".
	seen := false
	for _, f := range b.Status().Connections.FailedHandshakes {
		seen = seen || strings.Contains(f.LastReason, "client certificate not accepted")
	}
	if !seen || !strings.Contains(b.Log(), "client certificate not accepted") {
		t.Errorf("the refused certificate is not in /status (%+v) or the log", b.Status().Connections.FailedHandshakes)
	}
	scrt, skey := ca.issue("stranger")
	refused(t, runBin(t, "", "", with(b, "--cert", scrt, "--cert-key", skey, "topic", "list")...), "UNAUTHORIZED", "a certificate naming no principal")
	refused(t, runBin(t, "", "", with(b, "topic", "list")...), "UNAUTHORIZED", "no credential")
}
