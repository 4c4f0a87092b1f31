package natsjs

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"testing"
	"time"
)

func TestSelfSignedCertificate(t *testing.T) {
	dir := t.TempDir()
	cert, certFile, keyFile, err := writeSelfSigned(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(keyFile); err != nil {
		t.Error(err)
	} else if st.Mode().Perm() != 0o600 {
		t.Errorf("key file %s: mode %v, want 0600", keyFile, st.Mode().Perm())
	}
	if _, err := tls.LoadX509KeyPair(certFile, keyFile); err != nil {
		t.Fatalf("the files are not a certificate and its key: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(cert)
	for name, ok := range map[string]bool{"127.0.0.1": true, "localhost": true, "127.0.0.2": false, "example.com": false} {
		_, err := cert.Verify(x509.VerifyOptions{Roots: roots, DNSName: name})
		if (err == nil) != ok {
			t.Errorf("verifying for %s: %v; want valid %v", name, err, ok)
		}
	}
}

// The client's and the server's configurations agree on TLS 1.3, and the
// client refuses a certificate other than the one it trusts.
func TestHandshake(t *testing.T) {
	cert, certFile, keyFile, err := writeSelfSigned(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	other, _, _, err := writeSelfSigned(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	srv, err := serverTLS(certFile, keyFile)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := serverTLS(certFile, ""); err == nil {
		t.Error("a server configuration without a key")
	}
	// Loopback TCP, not net.Pipe: a client that refuses the certificate
	// writes its alert while the server may still be writing.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srv)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	for _, c := range []struct {
		trust *x509.Certificate
		name  string
		ok    bool
	}{
		{cert, "127.0.0.1", true},
		{cert, "localhost", true},
		{other, "127.0.0.1", false},
		{cert, "example.com", false},
	} {
		d := &net.Dialer{Timeout: 10 * time.Second}
		cc, err := tls.DialWithDialer(d, "tcp", ln.Addr().String(), clientTLS(c.trust, c.name))
		if (err == nil) != c.ok {
			t.Errorf("trusting certificate %s, for %s: %v; want success %v", c.trust.SerialNumber, c.name, err, c.ok)
		}
		if err == nil {
			if v := cc.ConnectionState().Version; v != tls.VersionTLS13 {
				t.Errorf("%s, want TLS 1.3", tls.VersionName(v))
			}
			cc.Close()
		}
	}
}
