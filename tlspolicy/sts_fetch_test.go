package tlspolicy_test

import (
	"crypto/tls"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"securerelay/internal/testutil"
	"securerelay/tlspolicy"
)

func stsZone(domain, txt string) string {
	z := fmt.Sprintf("$ORIGIN %s.\n@ SOA ns hostmaster 1 3600 600 86400 60\n@ MX 10 mx1\n@ MX 20 mx2\nmx1 A 127.0.0.1\nmx2 A 127.0.0.1\n", domain)
	if txt != "" {
		z += fmt.Sprintf("_mta-sts TXT %q\n", txt)
	}
	return z
}

const stsDomain = "sts.example"

func stsPolicy(mode string, maxAge int, mx ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: STSv1\r\nmode: %s\r\n", mode)
	for _, m := range mx {
		fmt.Fprintf(&b, "mx: %s\r\n", m)
	}
	fmt.Fprintf(&b, "max_age: %d\r\n", maxAge)
	return b.String()
}

func stsEnv(t *testing.T, txt, policy string) (*env, *tlspolicy.Decider) {
	t.Helper()
	e := newEnv(t, stsZone(stsDomain, txt))
	if policy != "" {
		e.sts.policy(stsDomain, policy)
	}
	return e, e.decider(func(o *tlspolicy.Options) { o.MTASTS = true })
}

func explain(lines []string) string { return strings.Join(lines, "\n") }

func TestMTASTSEnforce(t *testing.T) {
	e, d := stsEnv(t, "v=STSv1; id=20260101", stsPolicy("enforce", 86400, "mx1.sts.example"))
	good := issue(t, e.ca, []string{"mx1.sts.example"}, testutil.CertSpec{})
	self := issue(t, nil, []string{"mx1.sts.example"}, testutil.CertSpec{})

	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	if p.Level != tlspolicy.Verify || p.STS == nil || p.STS.Mode != tlspolicy.STSEnforce || p.STS.ID != "20260101" {
		t.Fatalf("policy %+v; want verify from MTA-STS enforce id 20260101\n%s", p, explain(p.Explain))
	}
	h := must[*tlspolicy.HostPolicy](t)(p.ForMX(t.Context(), "mx1.sts.example"))
	if h.Level != tlspolicy.Verify || h.Source != "MTA-STS enforce (id 20260101)" {
		t.Errorf("host policy %s from %q", h.Level, h.Source)
	}
	m := newMX(t, mxOpts{tls: tlsServer(good, nil)})
	if _, err := send(t, h, m.addr); err != nil {
		t.Errorf("listed MX with a valid certificate: %v", err)
	}
	bad := newMX(t, mxOpts{tls: tlsServer(self, nil)})
	_, err := send(t, h, bad.addr)
	if failureCode(t, err) != tlspolicy.CodeUntrusted {
		t.Errorf("self-signed MX under enforce: %v", err)
	}
	if mails, _, _ := bad.received(); mails != 0 {
		t.Errorf("self-signed MX got %d MAIL FROM", mails)
	}
	var f *tlspolicy.Failure
	asFailure(err, &f)
	if got, want := f.UserText(), "the receiving mail server (mx1.sts.example) could not prove that it is the genuine server for sts.example, as the encryption that sts.example requires through its MTA-STS policy demands."; got != want {
		t.Errorf("UserText:\n got %q\nwant %q", got, want)
	}

	// mx2 is a real MX of the domain but not in the policy.
	_, err = p.ForMX(t.Context(), "mx2.sts.example")
	if failureCode(t, err) != tlspolicy.CodeMXNotAllowed {
		t.Errorf("unlisted MX under enforce: %v", err)
	}
	// A policy fetched by this Decide is not fetched again for it.
	if n := e.sts.fetchCount(stsDomain); n != 1 {
		t.Errorf("%d policy fetches, want 1", n)
	}
}

func TestMTASTSWildcard(t *testing.T) {
	_, d := stsEnv(t, "v=STSv1; id=1", stsPolicy("enforce", 86400, "*.sts.example"))
	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	for host, ok := range map[string]bool{"mx1.sts.example": true, "MX2.sts.example.": true, "a.b.sts.example": false, "sts.example": false} {
		_, err := p.ForMX(t.Context(), host)
		if (err == nil) != ok {
			t.Errorf("ForMX(%s) = %v, want allowed %v", host, err, ok)
		}
	}
}

func TestMTASTSTesting(t *testing.T) {
	e, d := stsEnv(t, "v=STSv1; id=1", stsPolicy("testing", 86400, "mx1.sts.example"))
	self := issue(t, nil, []string{"mx1.sts.example"}, testutil.CertSpec{})
	good := issue(t, e.ca, []string{"mx1.sts.example", "mx2.sts.example"}, testutil.CertSpec{})
	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	if p.Level != tlspolicy.May {
		t.Errorf("testing mode: domain level %s, want may", p.Level)
	}

	for _, tc := range []struct {
		host   string
		cert   tlsCert
		report tlspolicy.Code
	}{
		{"mx1.sts.example", self, tlspolicy.CodeUntrusted},
		{"mx1.sts.example", good, ""},
		{"mx2.sts.example", good, tlspolicy.CodeMXNotAllowed},
	} {
		h, err := p.ForMX(t.Context(), tc.host)
		if err != nil || h.Level != tlspolicy.May || !h.STSTesting {
			t.Fatalf("ForMX(%s) = %+v, %v; want may in testing mode", tc.host, h, err)
		}
		m := newMX(t, mxOpts{tls: tlsServer(tc.cert, nil)})
		o, err := send(t, h, m.addr)
		if err != nil {
			t.Errorf("%s: testing mode must deliver: %v", tc.host, err)
		}
		var got tlspolicy.Code
		if o.Report != nil {
			got = o.Report.Code
		}
		if got != tc.report {
			t.Errorf("%s: report %v, want %q", tc.host, o.Report, tc.report)
		}
		if _, msgs, _ := m.received(); len(msgs) != 1 {
			t.Errorf("%s: %d messages delivered, want 1", tc.host, len(msgs))
		}
	}
}

type tlsCert = tls.Certificate

func TestMTASTSCache(t *testing.T) {
	e, d := stsEnv(t, "v=STSv1; id=1", stsPolicy("enforce", 3600, "mx1.sts.example"))
	decide := func() *tlspolicy.Policy {
		return must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	}
	wantFetches := func(n int, why string) {
		t.Helper()
		if got := e.sts.fetchCount(stsDomain); got != n {
			t.Errorf("%s: %d fetches, want %d", why, got, n)
		}
	}

	decide()
	wantFetches(1, "first delivery")
	p := decide()
	wantFetches(1, "same id, within max_age")
	if p.STS == nil || p.STS.Mode != tlspolicy.STSEnforce {
		t.Fatalf("cached policy not applied: %+v", p.STS)
	}
	if e.cache.Len() != 1 {
		t.Errorf("cache holds %d entries", e.cache.Len())
	}

	e.sts.policy(stsDomain, stsPolicy("testing", 3600, "mx1.sts.example"))
	e.dns.SetZone(stsZone(stsDomain, "v=STSv1; id=2"))
	p = decide()
	wantFetches(2, "new id")
	if p.STS.Mode != tlspolicy.STSTesting || p.STS.ID != "2" {
		t.Errorf("after id change: %+v", p.STS)
	}

	e.clock.advance(3601 * time.Second)
	decide()
	wantFetches(3, "max_age passed")

	// The TXT record vanishes (or is blocked): the cached policy stays
	// until it expires.
	e.dns.SetZone(stsZone(stsDomain, ""))
	e.clock.advance(1800 * time.Second)
	p = decide()
	wantFetches(3, "no TXT record")
	if p.STS == nil || p.STS.ID != "2" || !strings.Contains(explain(p.Explain), "using the cached policy") {
		t.Errorf("no TXT, cached policy valid: %+v\n%s", p.STS, explain(p.Explain))
	}
	e.clock.advance(1801 * time.Second)
	p = decide()
	if p.STS != nil {
		t.Errorf("no TXT, cached policy expired: still %+v", p.STS)
	}
	wantFetches(3, "no TXT, expired")
}

func TestMTASTSFetchFailures(t *testing.T) {
	valid := stsPolicy("enforce", 86400, "mx1.sts.example")
	for _, tc := range []struct {
		name  string
		setup func(e *env)
		why   string // in Explain
	}{
		{"self-signed certificate", func(e *env) {
			e.sts.cert(stsDomain, issue(t, nil, []string{"mta-sts." + stsDomain}, testutil.CertSpec{}))
		}, "certificate"},
		{"certificate for another name", func(e *env) {
			e.sts.cert(stsDomain, issue(t, e.ca, []string{"www." + stsDomain}, testutil.CertSpec{}))
		}, "certificate"},
		{"expired certificate", func(e *env) {
			e.sts.cert(stsDomain, issue(t, e.ca, []string{"mta-sts." + stsDomain}, testutil.CertSpec{NotBefore: time.Now().Add(-48 * time.Hour), NotAfter: time.Now().Add(-time.Hour)}))
		}, "certificate"},
		{"not found", func(e *env) { e.sts.answer(stsDomain, stsResponse{status: 404, ctype: "text/plain", body: valid}) }, "404"},
		{"HTML", func(e *env) { e.sts.answer(stsDomain, stsResponse{status: 200, ctype: "text/html", body: valid}) }, "not text/plain"},
		{"redirect", func(e *env) {
			e.sts.answer(stsDomain, stsResponse{redirect: "https://mta-sts.other.example/.well-known/mta-sts.txt"})
			e.sts.policy("other.example", valid)
		}, "redirects are not followed"},
		{"too large", func(e *env) {
			e.sts.policy(stsDomain, valid+strings.Repeat("x-pad: yyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyyy\n", 2000))
		}, "larger than"},
		{"invalid policy", func(e *env) { e.sts.policy(stsDomain, "version: STSv1\nmode: enforce\nmax_age: 60\n") }, "no mx field"},
		{"invalid TXT record", func(e *env) { e.dns.SetZone(stsZone(stsDomain, "v=STSv1; id=a_b")) }, "letters and digits"},
		{"two TXT records", func(e *env) {
			e.dns.SetZone(stsZone(stsDomain, "v=STSv1; id=1") + "_mta-sts TXT \"v=STSv1; id=2\"\n")
		}, "exactly one"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, d := stsEnv(t, "v=STSv1; id=1", valid)
			tc.setup(e)
			p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
			if p.STS != nil {
				t.Errorf("policy used: %+v", p.STS)
			}
			if p.Level != tlspolicy.May {
				t.Errorf("level %s, want the default", p.Level)
			}
			if !strings.Contains(explain(p.Explain), tc.why) {
				t.Errorf("Explain does not say %q:\n%s", tc.why, explain(p.Explain))
			}
			if n := e.sts.fetchCount("other.example"); n != 0 {
				t.Errorf("redirect target fetched %d times", n)
			}
		})
	}
}

// TestMTASTSKeepsCachedPolicy: RFC 8461 §5.1 — a policy that cannot be
// refreshed stays in force until it expires, or an attacker who blocks the
// fetch or the TXT lookup would switch enforcement off.
func TestMTASTSKeepsCachedPolicy(t *testing.T) {
	e, d := stsEnv(t, "v=STSv1; id=1", stsPolicy("enforce", 86400, "mx1.sts.example"))
	must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))

	e.dns.SetZone(stsZone(stsDomain, "v=STSv1; id=2"))
	e.sts.cert(stsDomain, issue(t, nil, []string{"mta-sts." + stsDomain}, testutil.CertSpec{}))
	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	if p.STS == nil || p.STS.ID != "1" || p.Level != tlspolicy.Verify {
		t.Fatalf("bad certificate on refresh: %+v, level %s; want the cached enforce policy\n%s", p.STS, p.Level, explain(p.Explain))
	}
	if _, err := p.ForMX(t.Context(), "evil.attacker.example"); failureCode(t, err) != tlspolicy.CodeMXNotAllowed {
		t.Errorf("unlisted MX with cached enforce policy: %v", err)
	}

	e.dns.ServFail("_mta-sts." + stsDomain)
	p = must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	if p.STS == nil || p.STS.Mode != tlspolicy.STSEnforce {
		t.Errorf("TXT SERVFAIL: %+v; want the cached policy", p.STS)
	}
}

// TestMTASTSRefetchForUnlistedMX: a domain that moved its MX but forgot to
// change the id is fetched again once before an MX is refused.
func TestMTASTSRefetchForUnlistedMX(t *testing.T) {
	e, d := stsEnv(t, "v=STSv1; id=1", stsPolicy("enforce", 86400, "mx1.sts.example"))
	must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	e.sts.policy(stsDomain, stsPolicy("enforce", 86400, "mx1.sts.example", "mx2.sts.example"))

	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	if n := e.sts.fetchCount(stsDomain); n != 1 {
		t.Fatalf("%d fetches before ForMX, want 1 (cached)", n)
	}
	if _, err := p.ForMX(t.Context(), "mx2.sts.example"); err != nil {
		t.Errorf("mx2 after the policy was fetched again: %v", err)
	}
	if _, err := p.ForMX(t.Context(), "mx3.sts.example"); failureCode(t, err) != tlspolicy.CodeMXNotAllowed {
		t.Errorf("mx3: %v", err)
	}
	if n := e.sts.fetchCount(stsDomain); n != 2 {
		t.Errorf("%d fetches, want 2 (one refresh per Policy)", n)
	}
	// The refreshed policy went to the cache for the next delivery.
	p = must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	if len(p.STS.MX) != 2 {
		t.Errorf("next Decide sees mx %v, want both", p.STS.MX)
	}
}

func TestMTASTSSharedFetch(t *testing.T) {
	e, d := stsEnv(t, "v=STSv1; id=1", "")
	e.sts.answer(stsDomain, stsResponse{status: 200, ctype: "text/plain", body: stsPolicy("enforce", 86400, "mx1.sts.example"), delay: 200 * time.Millisecond})
	var wg sync.WaitGroup
	levels := make([]tlspolicy.Level, 10)
	for i := range levels {
		wg.Go(func() {
			p, err := d.Decide(t.Context(), stsDomain, false, false)
			if err != nil {
				t.Error(err)
				return
			}
			levels[i] = p.Level
		})
	}
	wg.Wait()
	if n := e.sts.fetchCount(stsDomain); n != 1 {
		t.Errorf("%d concurrent deliveries made %d fetches, want 1", len(levels), n)
	}
	for i, l := range levels {
		if l != tlspolicy.Verify {
			t.Errorf("delivery %d: level %s, want verify", i, l)
		}
	}
}

func TestMTASTSModeNone(t *testing.T) {
	_, d := stsEnv(t, "v=STSv1; id=1", "version: STSv1\nmode: none\nmax_age: 86400\n")
	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	if p.STS == nil || p.STS.Mode != tlspolicy.STSNone {
		t.Fatalf("STS = %+v; want the mode none policy (it supersedes a cached one)", p.STS)
	}
	h, err := p.ForMX(t.Context(), "anything.example")
	if err != nil || h.Level != tlspolicy.May || h.STSTesting {
		t.Errorf("mode none: %+v, %v; want the default may", h, err)
	}
}

// TestMTASTSConcurrentForMX: deliveries to several MX hosts of one Policy
// at once share the one refresh a Policy may make.
func TestMTASTSConcurrentForMX(t *testing.T) {
	e, d := stsEnv(t, "v=STSv1; id=1", stsPolicy("enforce", 86400, "mx1.sts.example"))
	must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	e.sts.policy(stsDomain, stsPolicy("enforce", 86400, "mx1.sts.example", "mx2.sts.example"))
	p := must[*tlspolicy.Policy](t)(d.Decide(t.Context(), stsDomain, false, false))
	var wg sync.WaitGroup
	errs := make([]error, 8)
	for i := range errs {
		wg.Go(func() {
			_, errs[i] = p.ForMX(t.Context(), fmt.Sprintf("mx%d.sts.example", 1+i%2))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("ForMX %d: %v", i, err)
		}
	}
	if n := e.sts.fetchCount(stsDomain); n != 2 {
		t.Errorf("%d fetches, want 2 (the first, and one refresh)", n)
	}
}
