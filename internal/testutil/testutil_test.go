package testutil_test

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/internal/testutil"
)

// The certificates verify as the tests rely on: a leaf of the CA for its
// names and IPs, a self-signed one only against itself, an expired one not.
func TestCertificates(t *testing.T) {
	ca := testutil.NewCA(t, "testutil CA")
	leaf := ca.Issue(t, testutil.CertSpec{Names: []string{"mx.test", "127.0.0.2"}})
	if len(leaf.Certificate) != 2 {
		t.Errorf("chain of %d certificates, want leaf and CA", len(leaf.Certificate))
	}
	for _, name := range []string{"mx.test", "127.0.0.2"} {
		if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: ca.Pool}); err != nil {
			t.Errorf("leaf for %s: %v", name, err)
		}
	}
	if _, err := leaf.Leaf.Verify(x509.VerifyOptions{DNSName: "other.test", Roots: ca.Pool}); err == nil {
		t.Error("leaf verified for a name it does not carry")
	}
	self := testutil.SelfSigned(t, "self.test")
	if _, err := self.Leaf.Verify(x509.VerifyOptions{DNSName: "self.test", Roots: ca.Pool}); err == nil {
		t.Error("self-signed certificate verified against the CA")
	}
	old := ca.Issue(t, testutil.CertSpec{Names: []string{"old.test"}, NotBefore: time.Now().Add(-48 * time.Hour),
		NotAfter: time.Now().Add(-time.Hour), RSA: true, LeafOnly: true})
	var inv x509.CertificateInvalidError
	if _, err := old.Leaf.Verify(x509.VerifyOptions{DNSName: "old.test", Roots: ca.Pool}); !errors.As(err, &inv) || inv.Reason != x509.Expired {
		t.Errorf("expired certificate: %v, want Expired", err)
	}
	if len(old.Certificate) != 1 {
		t.Errorf("LeafOnly: chain of %d", len(old.Certificate))
	}
}

// The peer records a message sent over STARTTLS, refuses what its hooks
// refuse, and answers per recipient under LMTP.
func TestPeer(t *testing.T) {
	ca := testutil.NewCA(t, "testutil CA")
	p := testutil.StartPeer(t, testutil.PeerOptions{
		TLS: testutil.ServerTLS(ca.Issue(t, testutil.CertSpec{Names: []string{"peer.test"}})),
		Rcpt: func(to string) error {
			if to == "nobody@x.test" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no"}
			}
			return nil
		},
		Wire: true,
	})
	c, err := smtp.Dial(p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartTLS(&tls.Config{ServerName: "peer.test", RootCAs: ca.Pool}); err != nil {
		t.Fatal(err)
	}
	if err := c.Mail("a@x.test", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("nobody@x.test", nil); err == nil {
		t.Error("refused recipient accepted")
	}
	if err := c.Rcpt("b@x.test", nil); err != nil {
		t.Fatal(err)
	}
	w, err := c.Data()
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: secret marker\r\n\r\nbody\r\n"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	m := p.Next(t, 5*time.Second)
	if m.From != "a@x.test" || len(m.To) != 1 || m.To[0] != "b@x.test" || !m.TLS || m.Helo != "client.test" ||
		!strings.Contains(string(m.Data), "secret marker") {
		t.Errorf("recorded %+v", m)
	}
	p.None(t)
	if got := p.Rcpts(); len(got) != 2 || p.Conns() != 1 || len(p.Mails()) != 1 || !p.Mails()[0].TLS {
		t.Errorf("rcpts %v, conns %d, mails %v", got, p.Conns(), p.Mails())
	}
	if strings.Contains(p.Raw(), "secret marker") || !strings.Contains(p.Transcript(), "secret marker") {
		t.Error("raw bytes hold the message in clear, or the transcript lacks it")
	}

	l := testutil.StartPeer(t, testutil.PeerOptions{LMTP: true, Status: func(to string) error {
		if to == "full@x.test" {
			return &smtp.SMTPError{Code: 452, EnhancedCode: smtp.EnhancedCode{4, 2, 2}, Message: "full"}
		}
		return nil
	}})
	conn, err := net.Dial("tcp", l.Addr)
	if err != nil {
		t.Fatal(err)
	}
	lc := smtp.NewClientLMTP(conn)
	defer lc.Close()
	if err := lc.Hello("client.test"); err != nil {
		t.Fatal(err)
	}
	if err := lc.Mail("a@x.test", nil); err != nil {
		t.Fatal(err)
	}
	for _, to := range []string{"full@x.test", "b@x.test"} {
		if err := lc.Rcpt(to, nil); err != nil {
			t.Fatal(err)
		}
	}
	lw, err := lc.Data()
	if err != nil {
		t.Fatal(err)
	}
	lw.Write([]byte("Subject: x\r\n\r\nx\r\n"))
	resp, err := lw.CloseWithLMTPResponse()
	var lerr smtp.LMTPDataError
	if !errors.As(err, &lerr) || len(lerr) != 1 || lerr["full@x.test"] == nil || lerr["full@x.test"].Code != 452 || resp["b@x.test"] == nil {
		t.Errorf("LMTP replies %v %v, want 452 for full@ and 250 for b@", resp, err)
	}
	if m := l.Next(t, 5*time.Second); len(m.To) != 1 || m.To[0] != "b@x.test" {
		t.Errorf("LMTP message recorded for %v, want [b@x.test]", m.To)
	}
}
