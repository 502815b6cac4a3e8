package tlspolicy_test

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"net"
	"net/smtp"
	"testing"
	"time"

	"securerelay/internal/testutil"
	"securerelay/tlspolicy"
)

// sessionState runs EHLO and STARTTLS against m with h's configuration
// and returns the finished handshake.
func sessionState(t *testing.T, h *tlspolicy.HostPolicy, m *mx) *tls.ConnectionState {
	t.Helper()
	conn, err := net.DialTimeout("tcp", m.addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	c, err := smtp.NewClient(conn, h.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.StartTLS(h.TLSConfig(nil)); err != nil {
		t.Fatalf("STARTTLS: %v", err)
	}
	st, _ := c.TLSConnectionState()
	return &st
}

// VerifyHost is what a next hop must prove before it gets credentials:
// a trusted chain naming the host (or a pin for it), whatever level the
// host policy enforces; a secure rule met with the recipient domain's
// name does not prove the host.
func TestVerifyHost(t *testing.T) {
	ca := testutil.NewCA(t, "test CA")
	self := issue(t, nil, []string{"relay.test"}, testutil.CertSpec{})
	pin := sha256.Sum256(self.Leaf.Raw)
	d, err := tlspolicy.New(tlspolicy.Options{RootCAs: ca.Pool, Rules: []tlspolicy.Rule{
		{Match: "partner.test", Level: tlspolicy.Secure},
		{Match: "host:pinned.test", Level: tlspolicy.Fingerprint, Fingerprints: []string{hex.EncodeToString(pin[:])}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	hostPolicy := func(domain, host string) *tlspolicy.HostPolicy {
		p, err := d.DecideRelay(t.Context(), domain, false, false)
		if err != nil {
			t.Fatal(err)
		}
		h, err := p.ForRelay(t.Context(), host)
		if err != nil {
			t.Fatal(err)
		}
		return h
	}
	for _, tc := range []struct {
		name         string
		domain, host string
		cert         tls.Certificate
		want         tlspolicy.Code // "" when proved
	}{
		{"trusted, names the host", "relay.test", "relay.test", issue(t, ca, []string{"relay.test"}, testutil.CertSpec{}), ""},
		{"trusted, another name", "relay.test", "relay.test", issue(t, ca, []string{"other.test"}, testutil.CertSpec{}), tlspolicy.CodeNameMismatch},
		{"self-signed", "relay.test", "relay.test", self, tlspolicy.CodeUntrusted},
		{"expired", "relay.test", "relay.test", issue(t, ca, []string{"relay.test"}, testutil.CertSpec{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)}), tlspolicy.CodeExpired},
		{"pinned host", "pinned.test", "pinned.test", self, ""},
		{"secure met by the domain's name only", "partner.test", "relay.test", issue(t, ca, []string{"partner.test"}, testutil.CertSpec{}), tlspolicy.CodeNameMismatch},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := hostPolicy(tc.domain, tc.host)
			cs := sessionState(t, h, newMX(t, mxOpts{tls: tlsServer(tc.cert, nil)}))
			f := h.VerifyHost(cs)
			switch {
			case tc.want == "" && f != nil:
				t.Errorf("not proved: %v", f)
			case tc.want != "" && (f == nil || f.Code != tc.want):
				t.Errorf("got %v, want code %s", f, tc.want)
			case f != nil && (f.Level != tlspolicy.Verify || f.Host != tc.host || f.Status(false) != "4.7.5"):
				t.Errorf("failure %+v: want level verify, host %s, status 4.7.5", f, tc.host)
			}
		})
	}
	if f := hostPolicy("relay.test", "relay.test").VerifyHost(nil); f == nil || f.Code != tlspolicy.CodeNoSTARTTLS || f.Status(false) != "4.7.10" {
		t.Errorf("clear text: %v, want no-starttls (4.7.10)", f)
	}
}
