package tlspolicy_test

import (
	"crypto/sha256"
	"crypto/sha512"
	"crypto/tls"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"securerelay/internal/testutil"
	"securerelay/tlspolicy"
)

func sum256(b []byte) string { s := sha256.Sum256(b); return hex.EncodeToString(s[:]) }
func sum512(b []byte) string { s := sha512.Sum512(b); return hex.EncodeToString(s[:]) }

// daneZone gives domain an MX mx1.<domain> at 127.0.0.1 and the TLSA
// records (rdata like "3 1 1 <hex>") at _25._tcp.mx1.<domain>.
func daneZone(domain string, tlsa ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "$ORIGIN %s.\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ MX 10 mx1\nmx1 A 127.0.0.1\n", domain)
	for _, r := range tlsa {
		fmt.Fprintf(&b, "_25._tcp.mx1 TLSA %s\n", r)
	}
	return b.String()
}

// TestDANE checks RFC 7672 over SMTP: which TLSA records count, when DNSSEC
// is trusted, and what a match proves.
func TestDANE(t *testing.T) {
	daneCA := testutil.NewCA(t, "DANE private CA") // not among the PKIX roots
	// DANE-EE proves the key, not names or dates: an expired certificate
	// for another name must pass.
	eeCert := issue(t, nil, []string{"unrelated.invalid"}, testutil.CertSpec{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-24 * time.Hour)})
	other := issue(t, nil, []string{"x.invalid"}, testutil.CertSpec{})
	spkiEE := "3 1 1 " + sum256(eeCert.Leaf.RawSubjectPublicKeyInfo)

	for _, tc := range []struct {
		name   string
		tlsa   []string
		signed []string // zones signed; default: the whole domain
		cert   func(domain string) tls.Certificate
		rule   *tlspolicy.Rule
		noTLS  bool
		want   tlspolicy.Code // "" = delivered
		level  tlspolicy.Level
	}{
		{name: "DANE-EE SPKI SHA-256 match", tlsa: []string{spkiEE}, level: tlspolicy.Dane},
		{name: "DANE-EE full certificate SHA-512 match", tlsa: []string{"3 0 2 " + sum512(eeCert.Leaf.Raw)}, level: tlspolicy.Dane},
		{name: "DANE-EE exact SPKI match", tlsa: []string{"3 1 0 " + hex.EncodeToString(eeCert.Leaf.RawSubjectPublicKeyInfo)}, level: tlspolicy.Dane},
		{name: "DANE-EE mismatch", tlsa: []string{"3 1 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo)}, want: tlspolicy.CodeTLSAMismatch, level: tlspolicy.Dane},
		{name: "one of several records matches", tlsa: []string{"3 1 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo), spkiEE}, level: tlspolicy.Dane},
		{name: "DANE-TA with a private CA", tlsa: []string{"2 0 1 " + sum256(daneCA.Cert.Raw)},
			cert: func(d string) tls.Certificate { return issue(t, daneCA, []string{"mx1." + d}, testutil.CertSpec{}) }, level: tlspolicy.Dane},
		{name: "DANE-TA SPKI", tlsa: []string{"2 1 1 " + sum256(daneCA.Cert.RawSubjectPublicKeyInfo)},
			cert: func(d string) tls.Certificate { return issue(t, daneCA, []string{"mx1." + d}, testutil.CertSpec{}) }, level: tlspolicy.Dane},
		{name: "DANE-TA accepts the domain name", tlsa: []string{"2 0 1 " + sum256(daneCA.Cert.Raw)},
			cert: func(d string) tls.Certificate { return issue(t, daneCA, []string{d}, testutil.CertSpec{}) }, level: tlspolicy.Dane},
		{name: "DANE-TA wrong name", tlsa: []string{"2 0 1 " + sum256(daneCA.Cert.Raw)},
			cert: func(string) tls.Certificate {
				return issue(t, daneCA, []string{"mx.elsewhere.invalid"}, testutil.CertSpec{})
			},
			want: tlspolicy.CodeNameMismatch, level: tlspolicy.Dane},
		{name: "DANE-TA expired leaf", tlsa: []string{"2 0 1 " + sum256(daneCA.Cert.Raw)},
			cert: func(d string) tls.Certificate {
				return issue(t, daneCA, []string{"mx1." + d}, testutil.CertSpec{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)})
			},
			want: tlspolicy.CodeExpired, level: tlspolicy.Dane},
		{name: "DANE-TA of another CA", tlsa: []string{"2 0 1 " + sum256(testutil.NewCA(t, "other").Cert.Raw)},
			cert: func(d string) tls.Certificate { return issue(t, daneCA, []string{"mx1." + d}, testutil.CertSpec{}) },
			want: tlspolicy.CodeTLSAMismatch, level: tlspolicy.Dane},
		{name: "TLSA without AD bit is not used", tlsa: []string{"3 1 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo)},
			signed: []string{"=%s", "=mx1.%s"}, level: tlspolicy.May},
		{name: "insecure MX RRset: no DANE", tlsa: []string{"3 1 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo)},
			signed: []string{"mx1.%s"}, level: tlspolicy.May},
		{name: "insecure address records: no DANE", tlsa: []string{"3 1 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo)},
			signed: []string{"=%s", "_25._tcp.mx1.%s"}, level: tlspolicy.May},
		{name: "unsigned zone: no DANE", tlsa: []string{"3 1 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo)},
			signed: []string{}, level: tlspolicy.May},
		{name: "only unusable records: encrypt", tlsa: []string{"1 1 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo), "3 1 1 abcd"}, level: tlspolicy.Encrypt},
		{name: "only unusable records, no STARTTLS", tlsa: []string{"0 0 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo)}, noTLS: true,
			want: tlspolicy.CodeNoSTARTTLS, level: tlspolicy.Encrypt},
		{name: "TLSA match, no STARTTLS", tlsa: []string{spkiEE}, noTLS: true, want: tlspolicy.CodeNoSTARTTLS, level: tlspolicy.Dane},
		{name: "no TLSA records: may", level: tlspolicy.May},
		{name: "rule dane, no TLSA: may", rule: &tlspolicy.Rule{Level: tlspolicy.Dane}, level: tlspolicy.May},
		{name: "rule dane-only with match", rule: &tlspolicy.Rule{Level: tlspolicy.DaneOnly}, tlsa: []string{spkiEE}, level: tlspolicy.DaneOnly},
		{name: "rule dane-only, mismatch", rule: &tlspolicy.Rule{Level: tlspolicy.DaneOnly},
			tlsa: []string{"3 1 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo)}, want: tlspolicy.CodeTLSAMismatch, level: tlspolicy.DaneOnly},
		{name: "rule may overrides DANE", rule: &tlspolicy.Rule{Level: tlspolicy.May},
			tlsa: []string{"3 1 1 " + sum256(other.Leaf.RawSubjectPublicKeyInfo)}, level: tlspolicy.May},
	} {
		t.Run(tc.name, func(t *testing.T) {
			const domain = "dane.example"
			signed := []string{domain}
			if tc.signed != nil {
				signed = nil
				for _, s := range tc.signed {
					signed = append(signed, strings.ReplaceAll(s, "%s", domain))
				}
			}
			e := newEnv(t, daneZone(domain, tc.tlsa...), signed...)
			cert := eeCert
			if tc.cert != nil {
				cert = tc.cert(domain)
			}
			var srv *tls.Config
			if !tc.noTLS {
				srv = tlsServer(cert, nil)
			}
			m := newMX(t, mxOpts{tls: srv})
			d := e.decider(func(o *tlspolicy.Options) {
				o.DANE = true
				if tc.rule != nil {
					r := *tc.rule
					r.Match = domain
					o.Rules = []tlspolicy.Rule{r}
				}
			})
			h, err := e.forMX(d, domain, "mx1."+domain, false)
			if err != nil {
				t.Fatalf("ForMX: %v", err)
			}
			if h.Level != tc.level {
				t.Errorf("level %s from %s, want %s\n%s", h.Level, h.Source, tc.level, strings.Join(h.Explain, "\n"))
			}
			_, err = send(t, h, m.addr)
			if got := failureCode(t, err); got != tc.want {
				t.Fatalf("send: %v; want code %q\n%s", err, tc.want, strings.Join(h.Explain, "\n"))
			}
			mails, msgs, _ := m.received()
			if delivered := len(msgs) == 1; delivered != (tc.want == "") || tc.want != "" && mails != 0 {
				t.Errorf("server saw %d MAIL FROM, %d messages; want delivery %v", mails, len(msgs), tc.want == "")
			}
		})
	}
}

func TestDANEFailuresDefer(t *testing.T) {
	other := issue(t, nil, []string{"x.invalid"}, testutil.CertSpec{})
	const domain = "dane.example"
	e := newEnv(t, daneZone(domain, "3 1 1 "+sum256(other.Leaf.RawSubjectPublicKeyInfo)), domain)
	d := e.decider(func(o *tlspolicy.Options) { o.DANE = true })

	// A failing TLSA lookup for a host of a signed MX RRset must not turn
	// into "no DANE": the host is unusable for now.
	e.dns.ServFail("_25._tcp.mx1." + domain)
	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), domain, false, false))
	_, err := p.ForMX(t.Context(), "mx1."+domain)
	var f *tlspolicy.Failure
	if code := failureCode(t, err); code != tlspolicy.CodeDNS || !asFailure(err, &f) || !f.Temporary {
		t.Errorf("TLSA SERVFAIL: %v; want a temporary dns failure", err)
	}

	// A failing MX lookup leaves it unknown whether DANE applies: defer.
	e.dns.ServFail(domain)
	_, err = d.Decide(t.Context(), domain, false, false)
	if code := failureCode(t, err); code != tlspolicy.CodeDNS || !asFailure(err, &f) || !f.Temporary {
		t.Errorf("MX SERVFAIL: %v; want a temporary dns failure", err)
	}
	if !strings.Contains(f.UserText(), "retried") {
		t.Errorf("UserText %q should say it will be retried", f.UserText())
	}

	// A configured relay does not depend on it either: DecideRelay looks
	// up neither DANE nor MTA-STS, so route deliveries are not held up.
	rp, err := d.DecideRelay(t.Context(), domain, false, false)
	if err != nil {
		t.Errorf("DecideRelay, MX SERVFAIL: %v; want no error", err)
	} else if h, err := rp.ForRelay(t.Context(), "relay.example"); err != nil || h.Level != tlspolicy.May {
		t.Errorf("DecideRelay + ForRelay: %v, %v; want may", h, err)
	}

	// Without DANE nothing depends on the lookup.
	d = e.decider(nil)
	if _, err := d.Decide(t.Context(), domain, false, false); err != nil {
		t.Errorf("DANE off, MX SERVFAIL: %v; want no error", err)
	}
}

func TestDANEOnlyWithoutTLSA(t *testing.T) {
	const domain = "dane.example"
	e := newEnv(t, daneZone(domain), domain)
	d := e.decider(func(o *tlspolicy.Options) {
		o.Rules = []tlspolicy.Rule{{Match: domain, Level: tlspolicy.DaneOnly, Fallback: tlspolicy.FallbackEncrypt}}
	})
	_, err := e.forMX(d, domain, "mx1."+domain, false)
	var f *tlspolicy.Failure
	if failureCode(t, err) != tlspolicy.CodeNoTLSA || !asFailure(err, &f) || f.Temporary || f.Fallback != tlspolicy.FallbackEncrypt {
		t.Fatalf("dane-only without TLSA: %v (%+v); want no-tlsa, permanent, fallback encrypt", err, f)
	}
}

func TestDANEImplicitMX(t *testing.T) {
	// No MX records, validated: the domain is its own mail host and its
	// TLSA records count.
	key := issue(t, nil, []string{"solo.example"}, testutil.CertSpec{})
	zone := "$ORIGIN solo.example.\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ A 127.0.0.1\n_25._tcp TLSA 3 1 1 " + sum256(key.Leaf.RawSubjectPublicKeyInfo) + "\n"
	e := newEnv(t, zone, "solo.example")
	d := e.decider(func(o *tlspolicy.Options) { o.DANE = true })
	h, err := e.forMX(d, "solo.example", "solo.example", false)
	if err != nil || h.Level != tlspolicy.Dane {
		t.Fatalf("implicit MX: %v, %v; want dane", h, err)
	}
	m := newMX(t, mxOpts{tls: tlsServer(key, nil)})
	if _, err := send(t, h, m.addr); err != nil {
		t.Errorf("send: %v", err)
	}
}

func asFailure(err error, f **tlspolicy.Failure) bool {
	var x *tlspolicy.Failure
	ok := errorsAs(err, &x)
	*f = x
	return ok
}

// TestDANEUnlistedMX: with a validated MX RRset, a host it does not name
// (from an unvalidated lookup, say) must not be used at all, rather than
// be treated as a host without TLSA records.
func TestDANEUnlistedMX(t *testing.T) {
	const domain = "dane.example"
	e := newEnv(t, daneZone(domain), domain)
	d := e.decider(func(o *tlspolicy.Options) { o.DANE = true })
	_, err := e.forMX(d, domain, "evil.attacker.example", false)
	var f *tlspolicy.Failure
	if failureCode(t, err) != tlspolicy.CodeMXNotAllowed || !asFailure(err, &f) || !strings.Contains(f.UserText(), "DNSSEC") {
		t.Fatalf("unlisted MX: %v", err)
	}
	if h, err := e.forMX(d, domain, "mx1."+domain, false); err != nil || h.Level != tlspolicy.May {
		t.Errorf("listed MX without TLSA: %v, %v; want may", h, err)
	}
}
