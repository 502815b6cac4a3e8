package tlspolicy_test

import (
	"crypto/sha256"
	"crypto/tls"
	"encoding/hex"
	"strings"
	"testing"
	"time"

	"securerelay/internal/testutil"
	"securerelay/tlspolicy"
)

const partnerZone = `
$ORIGIN partner.example.
@    SOA  ns hostmaster 1 3600 600 86400 60
@    MX   10 mx1
mx1  A    127.0.0.1
`

func colonHex(b []byte) string {
	h := strings.ToUpper(hex.EncodeToString(b))
	var parts []string
	for i := 0; i < len(h); i += 2 {
		parts = append(parts, h[i:i+2])
	}
	return strings.Join(parts, ":")
}

// TestLevelsOverSMTP runs each level against SMTP servers that offer
// what the case needs, through a real STARTTLS session: the message must
// reach the server exactly when the level is met, and otherwise not even
// MAIL FROM may be sent.
func TestLevelsOverSMTP(t *testing.T) {
	e := newEnv(t, partnerZone)
	const host = "mx1.partner.example"
	good := issue(t, e.ca, []string{host}, testutil.CertSpec{})
	self := issue(t, nil, []string{host}, testutil.CertSpec{})
	expired := issue(t, e.ca, []string{host}, testutil.CertSpec{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	wrong := issue(t, e.ca, []string{"www.other.example"}, testutil.CertSpec{})
	domainCert := issue(t, e.ca, []string{"partner.example"}, testutil.CertSpec{})
	rsaCert := issue(t, e.ca, []string{host}, testutil.CertSpec{RSA: true})

	certPin := sha256.Sum256(self.Leaf.Raw)
	spkiPin := sha256.Sum256(self.Leaf.RawSubjectPublicKeyInfo)
	otherPin := sha256.Sum256(good.Leaf.Raw)

	tls11 := func(c *tls.Config) { c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11 }
	tls12 := func(c *tls.Config) { c.MaxVersion = tls.VersionTLS12 }
	rsaKexOnly := func(c *tls.Config) {
		c.MaxVersion = tls.VersionTLS12
		c.CipherSuites = []uint16{tls.TLS_RSA_WITH_AES_128_GCM_SHA256}
	}
	aes128 := func(c *tls.Config) {
		c.MaxVersion = tls.VersionTLS12
		c.CipherSuites = []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}
	}

	for _, tc := range []struct {
		name     string
		server   *tls.Config // nil: no STARTTLS
		strip    bool        // a man in the middle hides STARTTLS
		rule     tlspolicy.Rule
		want     tlspolicy.Code // "" = delivered
		wantTLS  bool           // delivered over TLS
		achieved tlspolicy.Level
		version  string // prefix of Outcome.TLS, when set
	}{
		{name: "no STARTTLS, may", rule: rule(tlspolicy.May), achieved: tlspolicy.None},
		{name: "no STARTTLS, encrypt", rule: rule(tlspolicy.Encrypt), want: tlspolicy.CodeNoSTARTTLS},
		{name: "no STARTTLS, verify", rule: rule(tlspolicy.Verify), want: tlspolicy.CodeNoSTARTTLS},
		{name: "stripped, may", server: tlsServer(good, nil), strip: true, rule: rule(tlspolicy.May), achieved: tlspolicy.None},
		{name: "stripped, verify", server: tlsServer(good, nil), strip: true, rule: rule(tlspolicy.Verify), want: tlspolicy.CodeNoSTARTTLS},
		{name: "handshake fails, encrypt", server: tlsServer(rsaCert, rsaKexOnly), rule: rule(tlspolicy.Encrypt), want: tlspolicy.CodeHandshake},
		{name: "handshake fails, may falls back to clear", server: tlsServer(rsaCert, rsaKexOnly), rule: rule(tlspolicy.May), achieved: tlspolicy.None},
		{name: "self-signed, encrypt", server: tlsServer(self, nil), rule: rule(tlspolicy.Encrypt), wantTLS: true, achieved: tlspolicy.Encrypt},
		{name: "self-signed, verify", server: tlsServer(self, nil), rule: rule(tlspolicy.Verify), want: tlspolicy.CodeUntrusted},
		{name: "self-signed, secure", server: tlsServer(self, nil), rule: rule(tlspolicy.Secure), want: tlspolicy.CodeUntrusted},
		{name: "self-signed, pinned certificate", server: tlsServer(self, nil),
			rule: tlspolicy.Rule{Level: tlspolicy.Fingerprint, Fingerprints: []string{hex.EncodeToString(certPin[:])}}, wantTLS: true, achieved: tlspolicy.Fingerprint},
		{name: "self-signed, pinned public key", server: tlsServer(self, nil),
			rule: tlspolicy.Rule{Level: tlspolicy.Fingerprint, Fingerprints: []string{"sha256:" + colonHex(spkiPin[:])}}, wantTLS: true, achieved: tlspolicy.Fingerprint},
		{name: "self-signed, other pin", server: tlsServer(self, nil),
			rule: tlspolicy.Rule{Level: tlspolicy.Fingerprint, Fingerprints: []string{hex.EncodeToString(otherPin[:])}}, want: tlspolicy.CodeFingerprint},
		{name: "expired, verify", server: tlsServer(expired, nil), rule: rule(tlspolicy.Verify), want: tlspolicy.CodeExpired},
		{name: "expired, encrypt", server: tlsServer(expired, nil), rule: rule(tlspolicy.Encrypt), wantTLS: true, achieved: tlspolicy.Encrypt},
		{name: "wrong name, verify", server: tlsServer(wrong, nil), rule: rule(tlspolicy.Verify), want: tlspolicy.CodeNameMismatch},
		{name: "wrong name, verify with listed name", server: tlsServer(wrong, nil),
			rule: tlspolicy.Rule{Level: tlspolicy.Verify, Names: []string{"www.other.example"}}, wantTLS: true, achieved: tlspolicy.Verify},
		{name: "wrong name, secure", server: tlsServer(wrong, nil), rule: rule(tlspolicy.Secure), want: tlspolicy.CodeNameMismatch},
		{name: "wrong name, secure with listed suffix", server: tlsServer(wrong, nil),
			rule: tlspolicy.Rule{Level: tlspolicy.Secure, Names: []string{".other.example"}}, wantTLS: true, achieved: tlspolicy.Secure},
		{name: "good, verify", server: tlsServer(good, nil), rule: rule(tlspolicy.Verify), wantTLS: true, achieved: tlspolicy.Verify},
		{name: "good, secure (MX under the domain)", server: tlsServer(good, nil), rule: rule(tlspolicy.Secure), wantTLS: true, achieved: tlspolicy.Secure},
		{name: "domain name, secure", server: tlsServer(domainCert, nil), rule: rule(tlspolicy.Secure), wantTLS: true, achieved: tlspolicy.Secure},
		{name: "domain name, verify", server: tlsServer(domainCert, nil), rule: rule(tlspolicy.Verify), want: tlspolicy.CodeNameMismatch},
		{name: "good, may reports verified", server: tlsServer(good, nil), rule: rule(tlspolicy.May), wantTLS: true, achieved: tlspolicy.Verify},
		{name: "TLS 1.1 only, encrypt", server: tlsServer(good, tls11), rule: rule(tlspolicy.Encrypt), want: tlspolicy.CodeVersion},
		{name: "TLS 1.1 only, verify", server: tlsServer(good, tls11), rule: rule(tlspolicy.Verify), want: tlspolicy.CodeVersion},
		{name: "TLS 1.1 only, may uses it", server: tlsServer(good, tls11), rule: rule(tlspolicy.May), wantTLS: true, achieved: tlspolicy.Verify, version: "TLS1.1 "},
		{name: "TLS 1.1 only, may with min 1.2 goes clear", server: tlsServer(good, tls11),
			rule: tlspolicy.Rule{Level: tlspolicy.May, MinVersion: tls.VersionTLS12}, achieved: tlspolicy.None},
		{name: "TLS 1.2 only, min 1.3", server: tlsServer(good, tls12),
			rule: tlspolicy.Rule{Level: tlspolicy.Verify, MinVersion: tls.VersionTLS13}, want: tlspolicy.CodeVersion},
		{name: "cipher allowed", server: tlsServer(good, aes128),
			rule: tlspolicy.Rule{Level: tlspolicy.Verify, Ciphers: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256}}, wantTLS: true, achieved: tlspolicy.Verify},
		{name: "no allowed cipher in common", server: tlsServer(good, aes128),
			rule: tlspolicy.Rule{Level: tlspolicy.Verify, Ciphers: []uint16{tls.TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384}}, want: tlspolicy.CodeHandshake},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMX(t, mxOpts{tls: tc.server})
			addr := m.addr
			if tc.strip {
				addr = stripProxy(t, m.addr)
			}
			r := tc.rule
			r.Match = "partner.example"
			d := e.decider(func(o *tlspolicy.Options) { o.Rules = []tlspolicy.Rule{r} })
			h, err := e.forMX(d, "partner.example", host, false)
			if err != nil {
				t.Fatalf("ForMX: %v", err)
			}
			o, err := send(t, h, addr)
			mails, msgs, encrypted := m.received()
			if got := failureCode(t, err); got != tc.want {
				t.Fatalf("outcome %v, error %v; want code %q", o, err, tc.want)
			}
			if tc.want != "" {
				if mails != 0 || len(msgs) != 0 {
					t.Errorf("server failing the level saw %d MAIL FROM and %d messages; want none", mails, len(msgs))
				}
				return
			}
			if len(msgs) != 1 || msgs[0] != testMessage {
				t.Fatalf("server got %q, want the message once", msgs)
			}
			if encrypted[0] != tc.wantTLS {
				t.Errorf("message went encrypted=%v, want %v", encrypted[0], tc.wantTLS)
			}
			if o.Achieved != tc.achieved {
				t.Errorf("Achieved = %s, want %s (%v)", o.Achieved, tc.achieved, o)
			}
			if !strings.HasPrefix(o.TLS, tc.version) {
				t.Errorf("Outcome.TLS = %q, want %q…", o.TLS, tc.version)
			}
			if (o.TLS != "") != tc.wantTLS {
				t.Errorf("Outcome.TLS = %q with wantTLS %v", o.TLS, tc.wantTLS)
			}
		})
	}
}

func rule(l tlspolicy.Level) tlspolicy.Rule { return tlspolicy.Rule{Level: l} }
