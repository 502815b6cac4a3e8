package tlspolicy_test

import (
	"crypto/tls"
	"slices"
	"strings"
	"testing"

	"securerelay/internal/testutil"
	"securerelay/tlspolicy"
)

// TestRuleBeatsDANEAndMTASTS: an admin's rule decides alone, in both
// directions: it can demand more than the domain publishes, or accept less.
func TestRuleBeatsDANEAndMTASTS(t *testing.T) {
	other := issue(t, nil, []string{"x.invalid"}, testutil.CertSpec{})
	zone := daneZone("dane.example", "3 1 1 "+sum256(other.Leaf.RawSubjectPublicKeyInfo)) + stsZone(stsDomain, "v=STSv1; id=1")
	e := newEnv(t, zone, "dane.example")
	e.sts.policy(stsDomain, stsPolicy("enforce", 86400, "mx1.sts.example"))
	self := issue(t, nil, []string{"mx"}, testutil.CertSpec{})
	d := e.decider(func(o *tlspolicy.Options) {
		o.DANE, o.MTASTS = true, true
		o.Rules = []tlspolicy.Rule{
			{Match: "dane.example", Level: tlspolicy.Encrypt},
			{Match: stsDomain, Level: tlspolicy.Encrypt},
		}
	})
	for _, host := range []string{"mx1.dane.example", "mx2.sts.example"} {
		domain := host[strings.Index(host, ".")+1:]
		h, err := e.forMX(d, domain, host, false)
		if err != nil {
			t.Fatalf("%s: %v", host, err)
		}
		if h.Level != tlspolicy.Encrypt || h.Source != "policy rule "+map[string]string{"dane.example": "1", stsDomain: "2"}[domain]+" (match "+domain+")" {
			t.Errorf("%s: level %s from %s, want encrypt from the rule", host, h.Level, h.Source)
		}
		// The TLSA record does not match and the MX is not in the
		// MTA-STS policy, yet the rule says encrypt is enough.
		m := newMX(t, mxOpts{tls: tlsServer(self, nil)})
		if _, err := send(t, h, m.addr); err != nil {
			t.Errorf("%s: %v", host, err)
		}
	}
	if n := e.sts.fetchCount(stsDomain); n != 0 {
		t.Errorf("MTA-STS policy fetched %d times for a domain with a rule", n)
	}

	// And upwards: a rule demanding verify where the domain offers nothing.
	d = e.decider(func(o *tlspolicy.Options) {
		o.Rules = []tlspolicy.Rule{{Match: "plain.example", Level: tlspolicy.Verify}}
	})
	h, _ := e.forMX(d, "plain.example", "mx.plain.example", false)
	if h.Level != tlspolicy.Verify {
		t.Errorf("rule verify: got %s", h.Level)
	}
}

func TestRuleMatching(t *testing.T) {
	e := newEnv(t, partnerZone)
	d := e.decider(func(o *tlspolicy.Options) {
		o.Rules = []tlspolicy.Rule{
			{Match: "partner.example", Level: tlspolicy.Secure},
			{Match: ".example", Level: tlspolicy.Encrypt},
			{Match: ".corp.example", Level: tlspolicy.Verify},
			{Match: "host:mx.provider.net", Level: tlspolicy.Verify, Names: []string{"provider.net"}},
			{Match: "host:.hoster.net", Level: tlspolicy.Encrypt},
			{Match: "example", Level: tlspolicy.None},
		}
	})
	for _, tc := range []struct {
		domain, host string
		level        tlspolicy.Level
		source       string
	}{
		{"partner.example", "mx1.partner.example", tlspolicy.Secure, "policy rule 1 (match partner.example)"},
		{"PARTNER.example.", "mx.provider.net", tlspolicy.Secure, "policy rule 1 (match partner.example)"}, // domain beats host
		{"sub.partner.example", "mx", tlspolicy.Encrypt, "policy rule 2 (match .example)"},
		{"a.corp.example", "mx", tlspolicy.Verify, "policy rule 3 (match .corp.example)"}, // closest parent
		{"corp.example", "mx", tlspolicy.Encrypt, "policy rule 2 (match .example)"},       // .corp.example is subdomains only
		{"example", "mx", tlspolicy.None, "policy rule 6 (match example)"},
		{"elsewhere.org", "mx.provider.net", tlspolicy.Verify, "policy rule 4 (match host:mx.provider.net)"},
		{"elsewhere.org", "in1.hoster.net", tlspolicy.Encrypt, "policy rule 5 (match host:.hoster.net)"},
		{"elsewhere.org", "hoster.net", tlspolicy.May, "default"},
		{"elsewhere.org", "mx.elsewhere.org", tlspolicy.May, "default"},
	} {
		h, err := e.forMX(d, tc.domain, tc.host, false)
		if err != nil {
			t.Errorf("%s via %s: %v", tc.domain, tc.host, err)
			continue
		}
		if h.Level != tc.level || h.Source != tc.source {
			t.Errorf("%s via %s: %s from %q, want %s from %q", tc.domain, tc.host, h.Level, h.Source, tc.level, tc.source)
		}
	}
	h, _ := e.forMX(d, "elsewhere.org", "mx.provider.net", false)
	if want := []string{"mx.provider.net", "provider.net"}; !slices.Equal(h.Names, want) {
		t.Errorf("host rule names %v, want %v", h.Names, want)
	}
	h, _ = e.forMX(d, "partner.example", "mx1.partner.example", false)
	if want := []string{"partner.example", ".partner.example"}; !slices.Equal(h.Names, want) {
		t.Errorf("secure names %v, want %v", h.Names, want)
	}
}

func TestRequireTLS(t *testing.T) {
	zone := partnerZone + daneZone("signed.example") + stsZone(stsDomain, "v=STSv1; id=1")
	e := newEnv(t, zone, "signed.example")
	e.sts.policy(stsDomain, stsPolicy("testing", 86400, "mx1.sts.example"))
	certFor := func(host string) tls.Certificate { return issue(t, e.ca, []string{host}, testutil.CertSpec{}) }
	d := e.decider(func(o *tlspolicy.Options) {
		o.MTASTS = true
		o.Rules = []tlspolicy.Rule{
			{Match: "signed.example", Level: tlspolicy.May},
			{Match: "partner.example", Level: tlspolicy.Secure},
			{Match: "none.example", Level: tlspolicy.None},
		}
	})

	t.Run("may rule, DNSSEC-validated MX: verify", func(t *testing.T) {
		h, err := e.forMX(d, "signed.example", "mx1.signed.example", true)
		if err != nil {
			t.Fatal(err)
		}
		if h.Level != tlspolicy.Verify || !h.RequireTLS || !strings.HasPrefix(h.Source, "REQUIRETLS (RFC 8689), raised from may (policy rule 1") {
			t.Fatalf("level %s from %q, RequireTLS %v; want verify raised by REQUIRETLS", h.Level, h.Source, h.RequireTLS)
		}
		good := newMX(t, mxOpts{tls: tlsServer(certFor("mx1.signed.example"), nil), requireTLS: true})
		if _, err := send(t, h, good.addr); err != nil {
			t.Errorf("verified server with REQUIRETLS: %v", err)
		}
		noExt := newMX(t, mxOpts{tls: tlsServer(certFor("mx1.signed.example"), nil)})
		_, err = send(t, h, noExt.addr)
		if failureCode(t, err) != tlspolicy.CodeNoRequireTLS {
			t.Errorf("server without REQUIRETLS: %v", err)
		}
		var f *tlspolicy.Failure
		if asFailure(err, &f); f.Status(true) != "5.7.30" {
			t.Errorf("status %s, want 5.7.30", f.Status(true))
		}
		self := newMX(t, mxOpts{tls: tlsServer(issue(t, nil, []string{"mx1.signed.example"}, testutil.CertSpec{}), nil), requireTLS: true})
		if _, err := send(t, h, self.addr); failureCode(t, err) != tlspolicy.CodeUntrusted {
			t.Errorf("self-signed server: %v", err)
		}
		for _, m := range []*mx{noExt, self} {
			if mails, _, _ := m.received(); mails != 0 {
				t.Errorf("a failing server saw %d MAIL FROM", mails)
			}
		}
	})
	t.Run("default may, MX listed by MTA-STS testing: verify", func(t *testing.T) {
		h, err := e.forMX(d, stsDomain, "mx1.sts.example", true)
		if err != nil || h.Level != tlspolicy.Verify {
			t.Fatalf("%v, %v; want verify", h, err)
		}
		if _, err := e.forMX(d, stsDomain, "mx2.sts.example", true); failureCode(t, err) != tlspolicy.CodeMXNotAuthenticated {
			t.Errorf("MX not in the policy: %v", err)
		}
	})
	t.Run("no DNSSEC, no MTA-STS: MX not authenticated", func(t *testing.T) {
		p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), "plain.example", true, false))
		if p.Level != tlspolicy.Verify {
			t.Errorf("domain level %s, want verify", p.Level)
		}
		_, err := p.ForMX(t.Context(), "mx.plain.example")
		var f *tlspolicy.Failure
		if failureCode(t, err) != tlspolicy.CodeMXNotAuthenticated || !asFailure(err, &f) || f.Temporary {
			t.Fatalf("%v; want a permanent mx-not-authenticated", err)
		}
		if !strings.Contains(f.UserText(), "REQUIRETLS") {
			t.Errorf("UserText %q", f.UserText())
		}
		// A configured relay is not an MX answer.
		h, err := p.ForRelay(t.Context(), "smarthost.plain.example")
		if err != nil || h.Level != tlspolicy.Verify {
			t.Errorf("relay: %v, %v; want verify", h, err)
		}
	})
	t.Run("secure rule needs no MX authentication", func(t *testing.T) {
		h, err := e.forMX(d, "partner.example", "mx1.partner.example", true)
		if err != nil || h.Level != tlspolicy.Secure {
			t.Errorf("%v, %v; want secure", h, err)
		}
	})
	t.Run("none rule cannot lower it", func(t *testing.T) {
		p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), "none.example", true, true))
		if p.Level != tlspolicy.Verify || p.TLSRequiredNo {
			t.Errorf("level %s, TLSRequiredNo %v; want verify, header ignored", p.Level, p.TLSRequiredNo)
		}
	})
	t.Run("without REQUIRETLS nothing is required", func(t *testing.T) {
		h := must[*tlspolicy.HostPolicy](t)(e.forMX(d, "signed.example", "mx1.signed.example", false))
		if h.Level != tlspolicy.May || h.RequireTLS || h.CheckRequireTLS(false) != nil {
			t.Errorf("%+v", h)
		}
	})
}

func TestTLSRequiredNo(t *testing.T) {
	e := newEnv(t, stsZone(stsDomain, "v=STSv1; id=1")+partnerZone)
	e.sts.policy(stsDomain, stsPolicy("enforce", 86400, "mx1.sts.example"))
	opts := func(allow bool) func(*tlspolicy.Options) {
		return func(o *tlspolicy.Options) {
			o.MTASTS, o.AllowTLSRequiredNo, o.Default = true, allow, tlspolicy.Encrypt
			o.Rules = []tlspolicy.Rule{{Match: "partner.example", Level: tlspolicy.Verify}}
		}
	}
	// Allowed: MTA-STS is set aside (an unlisted MX may be used), but the
	// site's own default (encrypt) still applies: a header any internal
	// sender can write lowers what the destination publishes, not what
	// the organisation requires.
	d := e.decider(opts(true))
	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, true))
	if p.Level != tlspolicy.Encrypt || !p.TLSRequiredNo {
		t.Errorf("allowed: level %s, want encrypt (the default)", p.Level)
	}
	if h, err := p.ForMX(t.Context(), "unlisted.example"); err != nil || h.Level != tlspolicy.Encrypt {
		t.Errorf("allowed: ForMX = %v, %v; want encrypt", h, err)
	}
	dMay := e.decider(func(o *tlspolicy.Options) { opts(true)(o); o.Default = tlspolicy.May })
	if h, err := must[*tlspolicy.Policy](t)(dMay.Decide(t.Context(), stsDomain, false, true)).ForMX(t.Context(), "unlisted.example"); err != nil || h.Level != tlspolicy.May {
		t.Errorf("allowed, default may: ForMX = %v, %v; want may", h, err)
	}
	if p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), "partner.example", false, true)); p.Level != tlspolicy.Verify {
		t.Errorf("a rule must not give way to the header: %s", p.Level)
	}
	d = e.decider(opts(false))
	if p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, true)); p.Level != tlspolicy.Verify || p.TLSRequiredNo {
		t.Errorf("not allowed: level %s, TLSRequiredNo %v; want verify", p.Level, p.TLSRequiredNo)
	}
}

func TestForRelay(t *testing.T) {
	e := newEnv(t, stsZone(stsDomain, "v=STSv1; id=1"))
	e.sts.policy(stsDomain, stsPolicy("enforce", 86400, "mx1.sts.example"))
	d := e.decider(func(o *tlspolicy.Options) {
		o.MTASTS = true
		o.Rules = []tlspolicy.Rule{{Match: "host:smarthost.isp.example", Level: tlspolicy.Verify}}
	})
	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	h, err := p.ForRelay(t.Context(), "[192.0.2.1]")
	if err != nil || h.Level != tlspolicy.May || h.Host != "192.0.2.1" {
		t.Errorf("relay by address: %+v, %v; want may (MTA-STS is about the MX hosts)", h, err)
	}
	h, err = p.ForRelay(t.Context(), "smarthost.isp.example")
	if err != nil || h.Level != tlspolicy.Verify {
		t.Errorf("relay with a host rule: %+v, %v; want verify", h, err)
	}
	if _, err := p.ForMX(t.Context(), "smarthost.isp.example"); err != nil {
		t.Errorf("host rule for an MX: %v", err)
	}
	if _, err := p.ForMX(t.Context(), "bad host"); err == nil {
		t.Error("invalid host accepted")
	}
}

func TestExplain(t *testing.T) {
	key := issue(t, nil, []string{"mx1.both.example"}, testutil.CertSpec{})
	zone := `
$ORIGIN both.example.
@            SOA  ns hostmaster 1 3600 600 86400 60
@            MX   10 mx1
@            MX   20 mx2
mx1          A    127.0.0.1
mx2          A    127.0.0.2
_25._tcp.mx1 TLSA 3 1 1 ` + sum256(key.Leaf.RawSubjectPublicKeyInfo) + `
_mta-sts     TXT  "v=STSv1; id=7"
` + partnerZone
	e := newEnv(t, zone, "both.example")
	e.sts.policy("both.example", stsPolicy("enforce", 86400, "mx1.both.example", "mx2.both.example"))
	d := e.decider(func(o *tlspolicy.Options) {
		o.DANE, o.MTASTS = true, true
		o.Rules = []tlspolicy.Rule{{Match: "partner.example", Level: tlspolicy.May, MinVersion: tls.VersionTLS12}}
	})
	host := func(domain, mx string, requireTLS bool) []string {
		t.Helper()
		h, err := e.forMX(d, domain, mx, requireTLS)
		var f *tlspolicy.Failure
		if asFailure(err, &f) {
			return f.Explain
		}
		if err != nil {
			t.Fatalf("%s: %v", mx, err)
		}
		return h.Explain
	}
	for _, tc := range []struct {
		name string
		got  []string
		want string
	}{
		{"DANE host", host("both.example", "mx1.both.example", false), `destination both.example
rules: no rule matches both.example
DNSSEC: MX RRset of both.example is validated (AD bit): mx1.both.example mx2.both.example
MTA-STS: TXT _mta-sts.both.example id 7; fetched policy: mode enforce, mx mx1.both.example mx2.both.example, max_age 86400, id 7
domain level: dane from DANE (DNSSEC-validated MX; TLSA decided per MX host)
MX host mx1.both.example:
  DANE: 1 usable validated TLSA records at _25._tcp.mx1.both.example (3 1 1)
  result: level dane from DANE (TLSA at _25._tcp.mx1.both.example), min TLS 1.2, names mx1.both.example both.example`},
		{"MTA-STS host", host("both.example", "mx2.both.example", false), `destination both.example
rules: no rule matches both.example
DNSSEC: MX RRset of both.example is validated (AD bit): mx1.both.example mx2.both.example
MTA-STS: TXT _mta-sts.both.example id 7 unchanged; cached policy (mode enforce, mx mx1.both.example mx2.both.example, max_age 86400, id 7, valid until ` + e.clock.Now().Add(86400e9).UTC().Format("2006-01-02T15:04:05Z07:00") + `)
domain level: dane from DANE (DNSSEC-validated MX; TLSA decided per MX host)
MX host mx2.both.example:
  DANE: no TLSA records at _25._tcp.mx2.both.example (NXDOMAIN, validated denial)
  MTA-STS enforce: mx2.both.example is listed; verify with TLS 1.2 or later (RFC 8461 §4)
  result: level verify from MTA-STS enforce (id 7), min TLS 1.2, names mx2.both.example`},
		{"rule raised by REQUIRETLS", host("partner.example", "mx1.partner.example", true), `destination partner.example
REQUIRETLS: the message requires verified TLS (RFC 8689); no rule can lower that
rules: policy rule 1 (match partner.example) matches partner.example: level may, min TLS 1.2
DNSSEC: MX RRset of partner.example is not validated (no AD bit): DANE does not apply
MTA-STS: TXT _mta-sts.partner.example: NXDOMAIN; no cached policy, so no MTA-STS policy applies
domain level: verify from REQUIRETLS (RFC 8689), raised from may (policy rule 1 (match partner.example))
MX host mx1.partner.example:
  REQUIRETLS: raised to verify
  result: mx1.partner.example must not be used: REQUIRETLS needs an authenticated MX host, and mx1.partner.example is neither from a DNSSEC-validated MX RRset nor listed in an MTA-STS policy`},
	} {
		if got := strings.Join(tc.got, "\n"); got != tc.want {
			t.Errorf("%s: Explain\n%s\n\nwant\n%s", tc.name, got, tc.want)
		}
	}
}

// Options.Observe gets each Evaluate's Outcome, which names what decided
// the level and, for a rule, its match (the metrics' labels).
func TestObserveOutcome(t *testing.T) {
	e := newEnv(t, "")
	var got []tlspolicy.Outcome
	d := e.decider(func(o *tlspolicy.Options) {
		o.Rules = []tlspolicy.Rule{{Match: "partner.example", Level: tlspolicy.Encrypt}}
		o.Observe = func(out tlspolicy.Outcome) { got = append(got, out) }
	})
	for _, dom := range []string{"partner.example", "other.example"} {
		p := must[*tlspolicy.Policy](t)(d.DecideRelay(t.Context(), dom, false, false))
		h := must[*tlspolicy.HostPolicy](t)(p.ForRelay(t.Context(), "relay.example"))
		h.Evaluate(false, nil, nil) // a server without STARTTLS
	}
	if len(got) != 2 {
		t.Fatalf("observed %d outcomes, want 2: %+v", len(got), got)
	}
	if o := got[0]; o.Origin != "rule" || o.Rule != "partner.example" || o.Required != tlspolicy.Encrypt ||
		o.Achieved != tlspolicy.None || o.Failure == nil {
		t.Errorf("rule: %+v", o)
	}
	if o := got[1]; o.Origin != "default" || o.Rule != "" || o.Required != tlspolicy.May || o.Failure != nil {
		t.Errorf("default: %+v", o)
	}
}
