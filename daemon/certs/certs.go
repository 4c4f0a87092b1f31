// Package certs gives the broker its TLS identity: the certificate and key
// it is configured with, or a self-signed certificate generated once and
// kept in the data directory, so that a broker started with no
// configuration still speaks TLS 1.3 (QUIC requires it) and keeps the same
// fingerprint across restarts.
package certs

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"

	"github.com/quivermq/quiver/internal/fsutil"
)

// File names inside the TLS directory (DATA/tls).
const (
	CertFile = "cert.pem"
	KeyFile  = "key.pem"
)

// LoadOrCreate loads dir/cert.pem and dir/key.pem, or, when neither
// exists, creates a self-signed ECDSA P-256 certificate for localhost,
// 127.0.0.1, ::1 and hosts, valid for ten years, and writes it there (key
// mode 0600). It returns the certificate and its fingerprint.
func LoadOrCreate(dir string, hosts []string) (tls.Certificate, string, error) {
	certPath, keyPath := filepath.Join(dir, CertFile), filepath.Join(dir, KeyFile)
	_, cerr := os.Stat(certPath)
	_, kerr := os.Stat(keyPath)
	switch {
	case cerr == nil && kerr == nil:
		return Load(certPath, keyPath)
	case errors.Is(cerr, os.ErrNotExist) && errors.Is(kerr, os.ErrNotExist):
	default:
		return tls.Certificate{}, "", fmt.Errorf("certs: %s and %s must both exist or both be absent", certPath, keyPath)
	}
	certPEM, keyPEM, err := generate(hosts)
	if err != nil {
		return tls.Certificate{}, "", err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return tls.Certificate{}, "", fmt.Errorf("certs: %w", err)
	}
	// The key first: a crash between the two leaves no cert without its key.
	if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
		return tls.Certificate{}, "", err
	}
	if err := writeFileAtomic(certPath, certPEM, 0o644); err != nil {
		return tls.Certificate{}, "", err
	}
	return Load(certPath, keyPath)
}

// Load loads a certificate and key given by the operator.
func Load(certPath, keyPath string) (tls.Certificate, string, error) {
	c, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return tls.Certificate{}, "", fmt.Errorf("certs: load %s and %s: %w", certPath, keyPath, err)
	}
	return c, Fingerprint(c.Certificate[0]), nil
}

// ResetKey derives the broker's QUIC stateless reset key from its private
// key: the same across restarts, secret like the key itself.
func ResetKey(c tls.Certificate) ([32]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		return [32]byte{}, fmt.Errorf("certs: reset key: %w", err)
	}
	return sha256.Sum256(append([]byte("quiver QUIC stateless reset key\x00"), der...)), nil
}

// Fingerprint is the SHA-256 of a DER certificate, as lowercase hex.
func Fingerprint(der []byte) string {
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:])
}

func generate(hosts []string) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, nil, fmt.Errorf("certs: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "quiverd self-signed", Organization: []string{"Quiver"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true, // so that clients can use it as its own CA (--ca cert.pem)
		DNSNames:              []string{"localhost"},
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	for _, h := range hosts {
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else if h != "" {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: %w", err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("certs: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), nil
}

func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	if err := fsutil.WriteAtomic(fsutil.OS, path, data, mode); err != nil {
		return fmt.Errorf("certs: write %s: %w", path, err)
	}
	return nil
}

// VerifyChain checks a certificate chain a peer presented (its leaf
// first, then intermediates) against roots, for usage.
func VerifyChain(chain []*x509.Certificate, roots *x509.CertPool, usage x509.ExtKeyUsage) error {
	if len(chain) == 0 {
		return errors.New("no certificate presented")
	}
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err := chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{usage}})
	return err
}
