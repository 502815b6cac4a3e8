package tlspolicy_test

import (
	"crypto/tls"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"securerelay/tlspolicy"
)

func TestParseLevel(t *testing.T) {
	for _, s := range []string{"none", "may", "encrypt", "dane", "verify", "secure", "dane-only", "fingerprint"} {
		l, err := tlspolicy.ParseLevel(strings.ToUpper(s))
		if err != nil || l.String() != s {
			t.Errorf("ParseLevel(%q) = %v, %v", s, l, err)
		}
		var u tlspolicy.Level
		if err := u.UnmarshalText([]byte(s)); err != nil || u != l {
			t.Errorf("UnmarshalText(%q) = %v, %v", s, u, err)
		}
	}
	for _, s := range []string{"", "opportunistic", "dane_only", "maybe"} {
		if _, err := tlspolicy.ParseLevel(s); err == nil {
			t.Errorf("ParseLevel(%q) accepted", s)
		}
	}
	if s := tlspolicy.Level(0).String(); s != "unset" {
		t.Errorf("zero Level is %q", s)
	}
}

func TestParseVersion(t *testing.T) {
	for in, want := range map[string]uint16{"1.2": tls.VersionTLS12, "TLSv1.3": tls.VersionTLS13, "tls 1.0": tls.VersionTLS10, "TLS1.1": tls.VersionTLS11} {
		if v, err := tlspolicy.ParseVersion(in); err != nil || v != want {
			t.Errorf("ParseVersion(%q) = %x, %v", in, v, err)
		}
	}
	for _, in := range []string{"", "SSLv3", "1.4", "2"} {
		if _, err := tlspolicy.ParseVersion(in); err == nil {
			t.Errorf("ParseVersion(%q) accepted", in)
		}
	}
}

func TestParseCipherSuites(t *testing.T) {
	ids, err := tlspolicy.ParseCipherSuites([]string{"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384", "tls_ecdhe_ecdsa_with_chacha20_poly1305_sha256"})
	if err != nil || !slices.Equal(ids, []uint16{tls.TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, tls.TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256}) {
		t.Errorf("= %v, %v", ids, err)
	}
	for _, bad := range []string{"TLS_RSA_WITH_RC4_128_SHA", "TLS_AES_128_GCM_SHA256", "TLS_NOPE"} {
		if _, err := tlspolicy.ParseCipherSuites([]string{bad}); err == nil {
			t.Errorf("%s accepted", bad)
		}
	}
}

func TestParseFingerprint(t *testing.T) {
	const hexFP = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	colons := "01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF"
	want, _ := tlspolicy.ParseFingerprint(hexFP)
	for _, in := range []string{hexFP, strings.ToUpper(hexFP), colons, "sha256:" + colons, "SHA256:" + hexFP, " sha-256:" + hexFP + " "} {
		got, err := tlspolicy.ParseFingerprint(in)
		if err != nil || got != want {
			t.Errorf("ParseFingerprint(%q) = %x, %v", in, got, err)
		}
	}
	for _, in := range []string{"", hexFP[:62], hexFP + "00", "sha1:" + hexFP[:40], "md5:" + hexFP[:32], "zz" + hexFP[2:],
		"0:123" + colons[5:], colons + ":", "sha384:" + hexFP} {
		if _, err := tlspolicy.ParseFingerprint(in); err == nil {
			t.Errorf("ParseFingerprint(%q) accepted", in)
		}
	}
}

func TestRuleValidate(t *testing.T) {
	fp := "sha256:" + strings.Repeat("ab", 32)
	for _, tc := range []struct {
		rule tlspolicy.Rule
		err  string // "" = valid
	}{
		{tlspolicy.Rule{Match: "partner.example", Level: tlspolicy.Verify, Fallback: "defer"}, ""},
		{tlspolicy.Rule{Match: ".partner.example", Level: tlspolicy.Secure, Names: []string{"mx.hoster.net", ".hoster.net"}}, ""},
		{tlspolicy.Rule{Match: "host:mx.partner.example", Level: tlspolicy.Fingerprint, Fingerprints: []string{fp}}, ""},
		{tlspolicy.Rule{Match: "partner.example", Level: tlspolicy.May, MinVersion: tls.VersionTLS12}, ""},
		{tlspolicy.Rule{Match: "partner.example", Level: tlspolicy.Verify, Ciphers: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}, ""},
		{tlspolicy.Rule{Match: "partner.example"}, "level: missing"},
		{tlspolicy.Rule{Match: "", Level: tlspolicy.May}, "empty name"},
		{tlspolicy.Rule{Match: "*.partner.example", Level: tlspolicy.May}, "write a domain"},
		{tlspolicy.Rule{Match: "[mx.partner.example]", Level: tlspolicy.May}, "write a domain"},
		{tlspolicy.Rule{Match: "bücher.example", Level: tlspolicy.May}, "A-labels"},
		{tlspolicy.Rule{Match: "a..b", Level: tlspolicy.May}, "not a valid"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.Fingerprint}, "needs at least one fingerprint"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.Verify, Fingerprints: []string{fp}}, "only level fingerprint"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.Fingerprint, Fingerprints: []string{"sha1:00"}}, "only SHA-256"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.May, Names: []string{"mx.p.example"}}, "names need verify"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.Verify, Names: []string{"bad name"}}, "names"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.Verify, MinVersion: 0x0300}, "not TLS 1.0 to 1.3"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.None, MinVersion: tls.VersionTLS12}, "never uses TLS"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.None, Ciphers: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}, "never uses TLS"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.Verify, MinVersion: tls.VersionTLS13, Ciphers: []uint16{tls.TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256}}, "TLS 1.2 only"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.Verify, Ciphers: []uint16{tls.TLS_RSA_WITH_RC4_128_SHA}}, "insecure"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.May, Fallback: "bounce"}, "never fails"},
		{tlspolicy.Rule{Match: "p.example", Level: tlspolicy.Verify, Fallback: "pgp"}, "not defer, bounce or encrypt"},
	} {
		err := tc.rule.Validate()
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%+v: %v", tc.rule, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%+v: error %v, want one containing %q", tc.rule, err, tc.err)
		}
	}
}

func TestNewRejects(t *testing.T) {
	for _, tc := range []struct {
		o     tlspolicy.Options
		err   string
		index int // -1: not a RuleError
	}{
		{tlspolicy.Options{Rules: []tlspolicy.Rule{{Match: "a.example", Level: tlspolicy.May}, {Match: "A.example.", Level: tlspolicy.Verify}}}, "same match as rule 1", 1},
		{tlspolicy.Options{Rules: []tlspolicy.Rule{{Match: "a.example", Level: tlspolicy.May}, {Match: "b.example", Level: tlspolicy.Fingerprint}}}, "fingerprint", 1},
		{tlspolicy.Options{Rules: []tlspolicy.Rule{{Match: "a.example", Level: tlspolicy.Dane}}}, "DNSSEC", 0},
		{tlspolicy.Options{DANE: true}, "DNSSEC", -1},
		{tlspolicy.Options{Default: tlspolicy.DaneOnly}, "DNSSEC", -1},
		{tlspolicy.Options{MTASTS: true}, "resolver", -1},
		{tlspolicy.Options{Default: tlspolicy.Fingerprint}, "fingerprint", -1},
		{tlspolicy.Options{Default: 42}, "invalid level", -1},
	} {
		_, err := tlspolicy.New(tc.o)
		if err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("New(%+v) = %v, want an error containing %q", tc.o, err, tc.err)
			continue
		}
		var re *tlspolicy.RuleError
		if isRule := errors.As(err, &re); isRule != (tc.index >= 0) || isRule && re.Index != tc.index {
			t.Errorf("New: %v: RuleError %v index %v, want index %d", err, isRule, re, tc.index)
		}
	}
	d, err := tlspolicy.New(tlspolicy.Options{})
	if err != nil {
		t.Fatal(err)
	}
	p, err := d.Decide(t.Context(), "Example.ORG.", false, false)
	if err != nil || p.Level != tlspolicy.May || p.Domain != "example.org" {
		t.Errorf("zero Options: %+v, %v; want may for example.org", p, err)
	}
	if _, err := d.Decide(t.Context(), "not a domain", false, false); err == nil {
		t.Error("Decide accepted an invalid domain")
	}
}

func TestParseSTSRecord(t *testing.T) {
	for in, id := range map[string]string{
		"v=STSv1; id=20160831085700Z;":      "20160831085700Z",
		"v=STSv1;id=abc":                    "abc",
		"v=STSv1 ;  id=x1 ; ext_1.a-b=v!:~": "x1",
		"v=STSv1; ext=1; id=Z":              "Z",
	} {
		if got, err := tlspolicy.ParseSTSRecord(in); err != nil || got != id {
			t.Errorf("ParseSTSRecord(%q) = %q, %v; want %q", in, got, err, id)
		}
	}
	for _, in := range []string{
		"", "v=STSv1", "v=STSv1;", "v=STSv1; id=", "v=STSv2; id=1", "v=stsv1; id=1", " v=STSv1; id=1",
		"v=STSv1; id=" + strings.Repeat("a", 33), "v=STSv1; id=a-b", "v=STSv1; id=1; id=2", "v=STSv1;; id=1",
		"v=STSv1; id=1; bad", "v=STSv1; id=1; x=a b", "v=STSv1; id=1; _x=1",
	} {
		if id, err := tlspolicy.ParseSTSRecord(in); err == nil {
			t.Errorf("ParseSTSRecord(%q) = %q, want an error", in, id)
		}
	}
}

func TestParseSTSPolicy(t *testing.T) {
	p, err := tlspolicy.ParseSTSPolicy("version: STSv1\r\nmode: enforce\r\nmx: mail.example.com\r\nmx: *.Example.NET.\r\nmax_age: 604800\r\nx-ext: anything goes\r\n")
	if err != nil {
		t.Fatal(err)
	}
	if p.Mode != tlspolicy.STSEnforce || p.MaxAge != 7*24*time.Hour || !slices.Equal(p.MX, []string{"mail.example.com", "*.example.net"}) {
		t.Errorf("parsed %+v", p)
	}
	// Lenient where leniency keeps protection: LF endings, case, spaces.
	p, err = tlspolicy.ParseSTSPolicy("Version: STSv1\nMode:Enforce\nmx:   mx.example \n\nmax_age: 9999999999\nmax_age: 1\n")
	if err != nil || p.Mode != tlspolicy.STSEnforce || p.MaxAge != 31557600*time.Second {
		t.Errorf("lenient parse = %+v, %v; want enforce with max_age capped at one year", p, err)
	}
	if p, err := tlspolicy.ParseSTSPolicy("version: STSv1\nmode: none\nmax_age: 0\n"); err != nil || p.Mode != tlspolicy.STSNone {
		t.Errorf("mode none without mx: %+v, %v", p, err)
	}
	for _, in := range []string{
		"", "mode: enforce\nmx: a.example\nmax_age: 1\n", "version: STSv2\nmode: enforce\nmx: a.example\nmax_age: 1\n",
		"version: STSv1\nmode: strict\nmx: a.example\nmax_age: 1\n", "version: STSv1\nmode: enforce\nmax_age: 1\n",
		"version: STSv1\nmode: enforce\nmx: a.example\n", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: -1\n",
		"version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 12345678901\n", "version: STSv1\nmode: enforce\nmx: *.*.example\nmax_age: 1\n",
		"version: STSv1\nmode: enforce\nmx: a.*.example\nmax_age: 1\n", "version: STSv1\nmode: enforce\nmx: a.example\nmax_age: 1\ngarbage\n",
		"version: STSv1\nmode: enforce\nmx: a example\nmax_age: 1\n",
	} {
		if p, err := tlspolicy.ParseSTSPolicy(in); err == nil {
			t.Errorf("ParseSTSPolicy(%q) = %+v, want an error", in, p)
		}
	}
}

func TestSTSMatch(t *testing.T) {
	p := &tlspolicy.STSPolicy{MX: []string{"mail.example.com", "*.example.net"}}
	for host, want := range map[string]bool{
		"mail.example.com": true, "MAIL.example.com.": true, "x.mail.example.com": false, "example.com": false,
		"a.example.net": true, "example.net": false, "a.b.example.net": false, ".example.net": false,
	} {
		if got := p.Match(host); got != want {
			t.Errorf("Match(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestMemoryCache(t *testing.T) {
	c := tlspolicy.NewMemoryCache(2)
	now := time.Now()
	ctx := t.Context()
	put := func(d string, exp time.Duration) {
		if err := c.Put(ctx, d, &tlspolicy.STSPolicy{Mode: tlspolicy.STSEnforce, MX: []string{"mx." + d}, ID: d, Expires: now.Add(exp)}); err != nil {
			t.Fatal(err)
		}
	}
	put("a.example", time.Hour)
	put("b.example", time.Minute)
	put("c.example", 2*time.Hour) // evicts b, which expires first
	if got, _ := c.Get(ctx, "b.example"); got != nil {
		t.Errorf("b not evicted: %+v", got)
	}
	got, err := c.Get(ctx, "a.example")
	if err != nil || got == nil || got.ID != "a.example" {
		t.Fatalf("Get(a) = %+v, %v", got, err)
	}
	got.MX[0] = "changed"
	if again, _ := c.Get(ctx, "a.example"); again.MX[0] != "mx.a.example" {
		t.Error("Get returned shared state")
	}
	put("a.example", time.Hour) // replacing does not evict
	if c.Len() != 2 {
		t.Errorf("Len = %d, want 2", c.Len())
	}
}

func TestFailureText(t *testing.T) {
	// The sentence of the issue, for a partner rule without STARTTLS.
	e := newEnv(t, partnerZone)
	d := e.decider(func(o *tlspolicy.Options) {
		o.Rules = []tlspolicy.Rule{{Match: "partner.example", Level: tlspolicy.Verify, Fallback: "bounce"}}
	})
	h := must[*tlspolicy.HostPolicy](t)(e.forMX(d, "partner.example", "mx1.partner.example", false))
	err := h.Check(false, nil, nil)
	var f *tlspolicy.Failure
	if !asFailure(err, &f) {
		t.Fatalf("Check = %v", err)
	}
	if got, want := f.UserText(), "the partner's mail server (mx1.partner.example) did not offer the encryption that your organisation requires for partner.example."; got != want {
		t.Errorf("UserText\n got %q\nwant %q", got, want)
	}
	if got, want := f.Error(), "TLS policy verify for partner.example not met by mx1.partner.example (from policy rule 1 (match partner.example)): no STARTTLS offered"; got != want {
		t.Errorf("Error\n got %q\nwant %q", got, want)
	}
	if f.Status(false) != "4.7.10" || f.Fallback != "bounce" || f.Temporary {
		t.Errorf("Status %s, Fallback %q, Temporary %v", f.Status(false), f.Fallback, f.Temporary)
	}
	// STARTTLS offered but the caller did not use it still fails.
	if err := h.Check(true, nil, nil); failureCode(t, err) != tlspolicy.CodeNoSTARTTLS {
		t.Errorf("offered, not used: %v", err)
	}
	if tlspolicy.Level(0).String() == tlspolicy.None.String() {
		t.Error("unset level prints as none")
	}
}
