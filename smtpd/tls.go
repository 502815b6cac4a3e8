package smtpd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"sync/atomic"
	"time"
)

// Certs holds the listeners' certificate and swaps it on reload (SIGHUP)
// without touching established sessions: new handshakes pick up the new one
// through GetCertificate.
type Certs struct {
	cert atomic.Pointer[tls.Certificate]
}

// LoadCerts loads certFile/keyFile, or, when both are empty, a self-signed
// certificate kept in stateDir (created on first start, with a warning:
// peers that verify will refuse it, so it is only for the quick start and
// opportunistic TLS).
func LoadCerts(certFile, keyFile, stateDir, hostname string, log *slog.Logger) (*Certs, error) {
	c := &Certs{}
	if err := c.Reload(certFile, keyFile, stateDir, hostname, log); err != nil {
		return nil, err
	}
	return c, nil
}

// Reload replaces the certificate; on error the old one stays in use.
func (c *Certs) Reload(certFile, keyFile, stateDir, hostname string, log *slog.Logger) error {
	if certFile == "" && keyFile == "" {
		certFile = filepath.Join(stateDir, "tls", "selfsigned.crt")
		keyFile = filepath.Join(stateDir, "tls", "selfsigned.key")
		if _, err := os.Stat(certFile); errors.Is(err, os.ErrNotExist) {
			if err := writeSelfSigned(certFile, keyFile, hostname); err != nil {
				return fmt.Errorf("creating self-signed certificate: %w", err)
			}
			log.Warn("no tls.cert configured: created a self-signed certificate; peers that verify certificates will refuse it",
				"cert", certFile)
		} else {
			log.Warn("no tls.cert configured: using the self-signed certificate", "cert", certFile)
		}
	}
	kp, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return fmt.Errorf("tls: %w", err)
	}
	c.cert.Store(&kp)
	return nil
}

// Config returns a server TLS configuration using the current certificate.
func (c *Certs) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return c.cert.Load(), nil
		},
	}
}

func writeSelfSigned(certFile, keyFile, hostname string) error {
	if err := os.MkdirAll(filepath.Dir(certFile), 0o700); err != nil {
		return err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: hostname, Organization: []string{"securerelay self-signed"}},
		DNSNames:     []string{hostname},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(5, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return err
	}
	return os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
}
