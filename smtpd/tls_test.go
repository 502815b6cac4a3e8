package smtpd_test

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"securerelay/smtpd"
)

// A missing certificate is generated once and kept across starts; Reload
// swaps in a new certificate for new handshakes (SIGHUP), and a broken
// file leaves the old one in use.
func TestCertsSelfSignedAndReload(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	state := t.TempDir()
	c1, err := smtpd.LoadCerts("", "", state, "relay.example.test", log)
	if err != nil {
		t.Fatal(err)
	}
	leaf := func(c *smtpd.Certs) *x509.Certificate {
		t.Helper()
		cert, err := c.Config().GetCertificate(&tls.ClientHelloInfo{})
		if err != nil {
			t.Fatal(err)
		}
		x, err := x509.ParseCertificate(cert.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		return x
	}
	first := leaf(c1)
	if first.Subject.CommonName != "relay.example.test" || len(first.DNSNames) != 1 || first.DNSNames[0] != "relay.example.test" {
		t.Fatalf("self-signed certificate names %q %v", first.Subject.CommonName, first.DNSNames)
	}
	c2, err := smtpd.LoadCerts("", "", state, "relay.example.test", log)
	if err != nil {
		t.Fatal(err)
	}
	if leaf(c2).SerialNumber.Cmp(first.SerialNumber) != 0 {
		t.Fatalf("a second start generated a new certificate instead of reusing the one in state_dir")
	}

	// An admin's own certificate (here: another self-signed one, made in a
	// second state dir) replaces it on reload.
	other := t.TempDir()
	if _, err := smtpd.LoadCerts("", "", other, "mx.example.test", log); err != nil {
		t.Fatal(err)
	}
	crt, key := filepath.Join(other, "tls", "selfsigned.crt"), filepath.Join(other, "tls", "selfsigned.key")
	if err := c1.Reload(crt, key, state, "relay.example.test", log); err != nil {
		t.Fatal(err)
	}
	if got := leaf(c1).Subject.CommonName; got != "mx.example.test" {
		t.Fatalf("after reload the certificate is for %q", got)
	}
	// A broken file: error, and the running certificate stays.
	os.WriteFile(crt, []byte("not a certificate"), 0o600)
	if err := c1.Reload(crt, key, state, "relay.example.test", log); err == nil {
		t.Fatalf("reload of a broken certificate succeeded")
	}
	if got := leaf(c1).Subject.CommonName; got != "mx.example.test" {
		t.Fatalf("a failed reload changed the certificate to %q", got)
	}
}
