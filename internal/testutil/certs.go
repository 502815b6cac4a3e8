// Package testutil holds the test peers several packages' tests share: one
// certificate maker (a CA, leaf and self-signed certificates) and one
// recording SMTP/LMTP server. It is a test helper: the relay binary must not
// link it (docs/map_test.go checks). The DNS fixture is dnsutil/dnstest.
//
// It imports only the standard library and go-smtp (with go-sasl), so that
// the internal tests of any package (package x, not x_test) can use it
// without an import cycle.
package testutil

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// CA is a certificate authority for tests: its certificate, its key, a
// pool that trusts it, and the certificate in PEM (for a ca_file).
type CA struct {
	Cert *x509.Certificate
	Key  crypto.Signer
	Pool *x509.CertPool
	PEM  []byte
}

// NewCA makes a CA called name, valid from an hour ago for a day.
func NewCA(tb testing.TB, name string) *CA {
	tb.Helper()
	key := ecKey(tb)
	tmpl := &x509.Certificate{
		SerialNumber:          serial(tb),
		Subject:               pkix.Name{CommonName: name},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		tb.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &CA{Cert: cert, Key: key, Pool: pool, PEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// WritePEM writes the CA certificate to a file in a temporary directory
// and returns its path.
func (ca *CA) WritePEM(tb testing.TB) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "ca.pem")
	if err := os.WriteFile(path, ca.PEM, 0o600); err != nil {
		tb.Fatal(err)
	}
	return path
}

// CertSpec describes a server certificate.
type CertSpec struct {
	// Names are the DNS names, and IP addresses, it is for; the first is
	// also the subject's common name.
	Names []string
	// Zero NotBefore is an hour ago; zero NotAfter a day from now. An
	// expired certificate sets NotAfter in the past (and NotBefore before
	// it).
	NotBefore, NotAfter time.Time
	// RSA makes a 2048-bit RSA key instead of ECDSA P-256.
	RSA bool
	// LeafOnly sends the leaf alone; by default the chain includes the CA
	// certificate, as servers usually send it.
	LeafOnly bool
}

// Issue makes a server certificate signed by ca, or self-signed when ca is
// nil, with its key and parsed Leaf.
func (ca *CA) Issue(tb testing.TB, s CertSpec) tls.Certificate {
	tb.Helper()
	if len(s.Names) == 0 {
		tb.Fatal("testutil: a certificate needs a name")
	}
	if s.NotBefore.IsZero() {
		s.NotBefore = time.Now().Add(-time.Hour)
	}
	if s.NotAfter.IsZero() {
		s.NotAfter = time.Now().Add(24 * time.Hour)
	}
	var key crypto.Signer = ecKey(tb)
	if s.RSA {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			tb.Fatal(err)
		}
		key = k
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(tb),
		Subject:      pkix.Name{CommonName: s.Names[0]},
		NotBefore:    s.NotBefore,
		NotAfter:     s.NotAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, n := range s.Names {
		if ip := net.ParseIP(n); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, n)
		}
	}
	parent, signer := tmpl, key
	if ca != nil {
		parent, signer = ca.Cert, ca.Key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		tb.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		tb.Fatal(err)
	}
	chain := [][]byte{der}
	if ca != nil && !s.LeafOnly {
		chain = append(chain, ca.Cert.Raw)
	}
	return tls.Certificate{Certificate: chain, PrivateKey: key, Leaf: leaf}
}

// SelfSigned is a self-signed certificate for names, valid from an hour
// ago for a day.
func SelfSigned(tb testing.TB, names ...string) tls.Certificate {
	tb.Helper()
	var none *CA
	return none.Issue(tb, CertSpec{Names: names})
}

// ServerTLS is a server configuration with one certificate.
func ServerTLS(c tls.Certificate) *tls.Config {
	return &tls.Config{Certificates: []tls.Certificate{c}}
}

// SPKISHA256 is the association data of a TLSA 3 1 1 record for c.
func SPKISHA256(c tls.Certificate) string {
	sum := sha256.Sum256(c.Leaf.RawSubjectPublicKeyInfo)
	return hex.EncodeToString(sum[:])
}

// WriteKeyPair writes c (its whole chain) and its key as PEM files in a
// temporary directory, for a tls.cert/tls.key setting.
func WriteKeyPair(tb testing.TB, c tls.Certificate) (certFile, keyFile string) {
	tb.Helper()
	dir := tb.TempDir()
	var certPEM []byte
	for _, der := range c.Certificate {
		certPEM = append(certPEM, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(c.PrivateKey)
	if err != nil {
		tb.Fatal(err)
	}
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certFile, certPEM, 0o600); err != nil {
		tb.Fatal(err)
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		tb.Fatal(err)
	}
	return certFile, keyFile
}

func ecKey(tb testing.TB) *ecdsa.PrivateKey {
	tb.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		tb.Fatal(err)
	}
	return k
}

// serial is random, so that no two certificates of one CA share one
// (clients that cache sessions or compare issuer and serial notice).
func serial(tb testing.TB) *big.Int {
	tb.Helper()
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		tb.Fatal(err)
	}
	return n
}
