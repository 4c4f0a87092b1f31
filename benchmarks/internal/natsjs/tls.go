package natsjs

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"path/filepath"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/quivermq/quiver/daemon/certs"
)

// writeSelfSigned makes the certificate of the run's TLS row the way a
// broker with no configured certificate makes its own (daemon/certs: ECDSA
// P-256 for 127.0.0.1, ::1 and localhost, key readable by the owner only),
// in dir. It returns the certificate, for the client to trust, and the two
// files' paths.
func writeSelfSigned(dir string) (cert *x509.Certificate, certFile, keyFile string, err error) {
	pair, _, err := certs.LoadOrCreate(dir, nil)
	if err != nil {
		return nil, "", "", fmt.Errorf("making the TLS certificate: %w", err)
	}
	if cert, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
		return nil, "", "", fmt.Errorf("parsing the TLS certificate just made: %w", err)
	}
	return cert, filepath.Join(dir, certs.CertFile), filepath.Join(dir, certs.KeyFile), nil
}

// serverTLS is the server's TLS configuration: the certificate and key
// in the two files, TLS 1.3 only, no client certificates.
func serverTLS(certFile, keyFile string) (*tls.Config, error) {
	if certFile == "" || keyFile == "" {
		return nil, errors.New("TLS needs both a certificate and a key file")
	}
	cfg, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: certFile, KeyFile: keyFile, MinVersion: tls.VersionTLS13})
	if err != nil {
		return nil, fmt.Errorf("nats-server TLS configuration: %w", err)
	}
	return cfg, nil
}

// clientTLS is the client's TLS configuration: TLS 1.3, trusting exactly
// cert, for the server name serverName. Verification is not skipped.
func clientTLS(cert *x509.Certificate, serverName string) *tls.Config {
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13}
}
