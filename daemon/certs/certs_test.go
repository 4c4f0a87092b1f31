package certs

import (
	"crypto/tls"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/goleak"

	"github.com/quivermq/quiver/sdk"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestCreatedOnceAndKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "tls")
	_, fp1, err := LoadOrCreate(dir, []string{"broker-1.internal", "10.1.2.3"})
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(filepath.Join(dir, KeyFile))
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file: %v mode %v, want 0600", err, fi.Mode())
	}
	_, fp2, err := LoadOrCreate(dir, nil)
	if err != nil || fp2 != fp1 || len(fp1) != 64 {
		t.Fatalf("second start: fingerprint %s vs %s (%v)", fp2, fp1, err)
	}
	os.Remove(filepath.Join(dir, KeyFile))
	if _, _, err := LoadOrCreate(dir, nil); err == nil || !strings.Contains(err.Error(), "both") {
		t.Fatalf("cert without key: %v", err)
	}
}

// handshake dials a TLS server holding cert with the client config.
func handshake(t *testing.T, cert tls.Certificate, client *tls.Config) error {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert},
		MinVersion: tls.VersionTLS13, NextProtos: []string{sdk.ALPN}})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := ln.Accept()
		if err == nil {
			c.(*tls.Conn).Handshake()
			c.Close()
		}
	}()
	client = client.Clone()
	client.ServerName = "localhost"
	c, err := tls.Dial("tcp", ln.Addr().String(), client)
	if err == nil {
		c.Close()
	}
	ln.Close()
	<-done
	return err
}

func TestClientsTrustTheBrokerOnlyThroughCAOrPin(t *testing.T) {
	dir := t.TempDir()
	cert, fp, err := LoadOrCreate(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := sdk.TLSFromCAFile(filepath.Join(dir, CertFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, cert, ca); err != nil {
		t.Fatalf("client with the broker's cert.pem as CA: %v", err)
	}
	pinned, err := sdk.TLSPinned(fp)
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, cert, pinned); err != nil {
		t.Fatalf("client with the pinned fingerprint: %v", err)
	}
	wrong, _ := sdk.TLSPinned(strings.Repeat("ab", 32))
	if err := handshake(t, cert, wrong); err == nil || !errors.Is(err, sdk.ErrUntrusted) {
		t.Fatalf("wrong pin: %v, want ErrUntrusted", err)
	}
	// Another broker's CA does not vouch for this one.
	other, _, err := LoadOrCreate(filepath.Join(dir, "other"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, other, ca); err == nil {
		t.Fatal("a certificate from another CA was accepted")
	}
	if _, err := sdk.TLSPinned("not-hex"); err == nil {
		t.Fatal("a malformed fingerprint was accepted")
	}
}
