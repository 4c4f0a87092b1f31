package sdk

import (
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/quivermq/quiver/sdk/wire"
)

// ALPN is the application protocol Quiver negotiates over QUIC/TLS.
const ALPN = wire.ALPN

// ErrUntrusted is returned when a broker's certificate is not the expected one.
var ErrUntrusted = errors.New("quiver: broker certificate not trusted")

// TLSFromCAFile returns a client TLS configuration that trusts the
// certificates in the PEM file (for a self-signed broker, its cert.pem).
// Host names are verified as usual.
func TLSFromCAFile(path string) (*tls.Config, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("quiver: CA file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("quiver: CA file %s holds no PEM certificate", path)
	}
	return &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13, NextProtos: []string{ALPN}}, nil
}

// TLSPinned returns a client TLS configuration that trusts exactly the
// broker certificate whose SHA-256 fingerprint (hex, as quiverd prints it;
// colons allowed) is given. Verification is not skipped: it is replaced by
// the pin, checked on every handshake.
func TLSPinned(fingerprint string) (*tls.Config, error) {
	want := strings.ToLower(strings.ReplaceAll(fingerprint, ":", ""))
	if b, err := hex.DecodeString(want); err != nil || len(b) != sha256.Size {
		return nil, fmt.Errorf("quiver: fingerprint %q is not a SHA-256 in hex", fingerprint)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		NextProtos: []string{ALPN},
		// The chain is checked by the pin below instead of by a CA.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return fmt.Errorf("%w: no certificate presented", ErrUntrusted)
			}
			sum := sha256.Sum256(raw[0])
			if got := hex.EncodeToString(sum[:]); got != want {
				return fmt.Errorf("%w: fingerprint %s, pinned %s", ErrUntrusted, got, want)
			}
			return nil
		},
	}, nil
}
