package authres

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
)

// TestSPFResults runs every SPF result through the wire: the test DNS
// server, dnsutil.Client, the adapter and the library, and checks the
// exact header line each produces.
func TestSPFResults(t *testing.T) {
	c, srv := newTestChecker(t, nil)
	srv.ServFail("servfail.example.org")
	srv.Drop("slow.example.org")
	cases := []struct {
		name, ip, helo, from string
		want                 string // the spf= resinfo
	}{
		{"pass", ipIn, testHelo, "a@pass.example.org", `spf=pass smtp.mailfrom=a@pass.example.org`},
		{"pass ip6", "2001:db8::25", testHelo, "a@pass.example.org", `spf=pass smtp.mailfrom=a@pass.example.org`},
		{"ip4-mapped ip6 is ip4", "::ffff:192.0.2.9", testHelo, "a@pass.example.org", `spf=pass smtp.mailfrom=a@pass.example.org`},
		{"fail", ipOut, testHelo, "a@pass.example.org", `spf=fail smtp.mailfrom=a@pass.example.org`},
		{"softfail", ipOut, testHelo, "a@softfail.example.org", `spf=softfail smtp.mailfrom=a@softfail.example.org`},
		{"neutral", ipOut, testHelo, "a@neutral.example.org", `spf=neutral smtp.mailfrom=a@neutral.example.org`},
		{"none: no SPF record", ipOut, testHelo, "a@nospf.example.org", `spf=none smtp.mailfrom=a@nospf.example.org`},
		{"none: NXDOMAIN", ipOut, testHelo, "a@nx.example.org", `spf=none smtp.mailfrom=a@nx.example.org`},
		{"temperror: SERVFAIL", ipIn, testHelo, "a@servfail.example.org",
			"spf=temperror\r\n reason=\"DNS lookup of servfail.example.org failed: temporary DNS failure\"\r\n smtp.mailfrom=a@servfail.example.org"},
		{"temperror: time-out", ipIn, testHelo, "a@slow.example.org",
			"spf=temperror\r\n reason=\"DNS lookup of slow.example.org failed: temporary DNS failure\"\r\n smtp.mailfrom=a@slow.example.org"},
		{"permerror: more than 10 lookups", ipOut, testHelo, "a@many.example.org",
			"spf=permerror reason=\"lookup limit reached\"\r\n smtp.mailfrom=a@many.example.org"},
		{"permerror: more than 2 void lookups", ipOut, testHelo, "a@void.example.org",
			"spf=permerror reason=\"void lookup limit reached\"\r\n smtp.mailfrom=a@void.example.org"},
		{"permerror: two records", ipOut, testHelo, "a@two.example.org",
			"spf=permerror reason=\"multiple matching DNS records\"\r\n smtp.mailfrom=a@two.example.org"},
		{"permerror: bad ip4", ipIn, testHelo, "a@broken.example.org",
			`spf=permerror reason="invalid ipX value" smtp.mailfrom=a@broken.example.org`},
		{"mx", "198.51.100.10", testHelo, "a@mech.example.org", `spf=pass smtp.mailfrom=a@mech.example.org`},
		{"a (AAAA)", "2001:db8:5::1", testHelo, "a@mech.example.org", `spf=pass smtp.mailfrom=a@mech.example.org`},
		{"include", "203.0.113.5", testHelo, "a@mech.example.org", `spf=pass smtp.mailfrom=a@mech.example.org`},
		{"exists with %{ir}", "203.0.113.77", testHelo, "a@mech.example.org", `spf=pass smtp.mailfrom=a@mech.example.org`},
		{"redirect pass", "203.0.113.99", testHelo, "a@mech.example.org", `spf=pass smtp.mailfrom=a@mech.example.org`},
		{"redirect softfail", "203.0.113.100", testHelo, "a@mech.example.org", `spf=softfail smtp.mailfrom=a@mech.example.org`},
		{"macros l o d2 h v i", "192.0.2.7", "mail.example.net", "j-doe@macro.example.org", `spf=pass smtp.mailfrom=j-doe@macro.example.org`},
		{"macro mismatch", "192.0.2.8", "mail.example.net", "j-doe@macro.example.org", `spf=fail smtp.mailfrom=j-doe@macro.example.org`},
		// No PTR through dnsutil.Resolver: ptr never matches, %{p} is "unknown".
		{"ptr does not match", ipIn, testHelo, "a@ptr.example.org", `spf=fail smtp.mailfrom=a@ptr.example.org`},
		{"%{p} is unknown", ipIn, testHelo, "a@ptrmacro.example.org", `spf=pass smtp.mailfrom=a@ptrmacro.example.org`},
		{"null sender: HELO identity", "192.0.2.7", "mail.example.net", "", `spf=pass smtp.helo=mail.example.net`},
		{"null sender: HELO fails", ipOut, "MAIL.example.net.", "", `spf=fail smtp.helo=mail.example.net`},
		{"null sender: address literal HELO", ipOut, "[198.51.100.1]", "", `spf=none`},
		{"sender domain is an address literal", ipOut, testHelo, "a@[198.51.100.1]", `spf=none smtp.mailfrom="a@[198.51.100.1]"`},
		{"quoted local part", ipIn, testHelo, `"a b"@pass.example.org`, `spf=pass smtp.mailfrom="\"a b\"@pass.example.org"`},
		// SMTPUTF8 senders (RFC 8616 §3): the policy of the A-label
		// domain; the header names a downgradable sender in ASCII, so
		// that our own field does not keep the message from a next hop
		// without SMTPUTF8.
		{"U-label domain", ipIn, testHelo, "a@müller.example.org", `spf=pass smtp.mailfrom=a@xn--mller-kva.example.org`},
		{"U-label domain fails", ipOut, testHelo, "a@müller.example.org", `spf=fail smtp.mailfrom=a@xn--mller-kva.example.org`},
		{"UTF-8 local part", ipIn, testHelo, "jörg@müller.example.org", `spf=pass smtp.mailfrom="jörg@müller.example.org"`},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			spfc := c
			if tc.from == "a@slow.example.org" {
				spfc = impatient(srv)
			}
			r := spfc.SPF(context.Background(), addr(tc.ip), tc.helo, tc.from)
			if r.Reject != nil {
				t.Errorf("Reject = %v without RejectSPFFail", r.Reject)
			}
			// Through Check, with the result passed on (SPF must not be
			// evaluated twice) and the whole header compared.
			v, err := c.Check(context.Background(), addr(tc.ip), tc.helo, tc.from, &r, strings.NewReader(message("x@nodmarc.example.org")))
			if err != nil {
				t.Fatal(err)
			}
			wantHeader(t, v, ar(tc.want, "dkim=none", `dmarc=none reason="no DMARC record" header.from=nodmarc.example.org`))
		})
	}
}

// TestSPFComputedInCheck: with spf nil, Check evaluates SPF itself.
func TestSPFComputedInCheck(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	v := check(t, c, ipOut, testHelo, "a@softfail.example.org", message("x@nodmarc.example.org"))
	wantHeader(t, v, ar("spf=softfail smtp.mailfrom=a@softfail.example.org", "dkim=none",
		`dmarc=none reason="no DMARC record" header.from=nodmarc.example.org`))
}

// TestSPFReject: RejectSPFFail refuses fail (550 5.7.23) and defers
// temperror (451 4.7.24); softfail and the rest pass.
func TestSPFReject(t *testing.T) {
	c, srv := newTestChecker(t, func(o *Options) { o.RejectSPFFail = true })
	srv.ServFail("servfail.example.org")
	r := c.SPF(context.Background(), addr(ipOut), testHelo, "a@pass.example.org")
	if r.Reject == nil || r.Reject.Code != 550 || r.Reject.EnhancedCode != [3]int{5, 7, 23} ||
		r.Reject.Message != "SPF of pass.example.org does not allow sending from 198.51.100.1; the sender's domain must list this server in its SPF record" {
		t.Errorf("fail: Reject = %+v", r.Reject)
	}
	r = c.SPF(context.Background(), addr(ipIn), testHelo, "a@servfail.example.org")
	if r.Reject == nil || r.Reject.Code != 451 || r.Reject.EnhancedCode != [3]int{4, 7, 24} {
		t.Errorf("temperror: Reject = %+v", r.Reject)
	}
	for _, from := range []string{"a@softfail.example.org", "a@neutral.example.org", "a@nospf.example.org", "a@many.example.org"} {
		if r := c.SPF(context.Background(), addr(ipOut), testHelo, from); r.Reject != nil {
			t.Errorf("%s (%s): Reject = %v", from, r.Result, r.Reject)
		}
	}
	if r := c.SPF(context.Background(), addr(ipIn), testHelo, "a@pass.example.org"); r.Reject != nil || r.Result != Pass {
		t.Errorf("pass: %+v", r)
	}
}

// TestSPFTimeoutBoundsAll: Options.Timeout bounds the whole evaluation,
// not each lookup: a record whose lookups all time out ends at the
// deadline with temperror.
func TestSPFTimeoutBoundsAll(t *testing.T) {
	c, srv := newTestChecker(t, func(o *Options) { o.Timeout = 300 * time.Millisecond })
	srv.Drop("slow.example.org")
	start := time.Now()
	r := c.SPF(context.Background(), addr(ipIn), testHelo, "a@slow.example.org")
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("took %v", el)
	}
	if r.Result != TempError {
		t.Errorf("result %s, want temperror", r.Result)
	}
}

// TestSPFNoIP: without a client address there is nothing to authorize.
func TestSPFNoIP(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	r := c.SPF(context.Background(), netip.Addr{}, testHelo, "a@pass.example.org")
	if r.Result != PermError {
		t.Errorf("result %s", r.Result)
	}
}

// nibbles is the %{ir} macro of an IPv6 address: its 32 nibbles,
// reversed, dot-separated (RFC 7208 §7.3).
func nibbles(ip string) string {
	b := netip.MustParseAddr(ip).As16()
	var out []string
	for i := 15; i >= 0; i-- {
		out = append(out, fmt.Sprintf("%x", b[i]&0xf), fmt.Sprintf("%x", b[i]>>4))
	}
	return strings.Join(out, ".")
}

// spfQueries runs one SPF check against srv and returns its result and
// the DNS questions it asked, counted by type.
func spfQueries(t *testing.T, c *Checker, srv *dnstest.Server, ip, from string) (SPFResult, map[string]int) {
	t.Helper()
	before := len(srv.Queries())
	r := c.SPF(context.Background(), addr(ip), testHelo, from)
	n := map[string]int{}
	for _, q := range srv.Queries()[before:] {
		n[q.Type]++
	}
	return r, n
}

func newSPFChecker(t *testing.T, zone string) (*Checker, *dnstest.Server) {
	t.Helper()
	srv := dnstest.NewServer(t, zone)
	return New(Options{AuthServID: testID, Resolver: dnsutil.New(srv.Addr(), 3*time.Second), Timeout: 10 * time.Second}), srv
}

// TestSPFFamily (issue 11, finding 11): the a and mx mechanisms ask only
// for the client's address family (RFC 7208 §5.3, §5.4), counted at the
// test DNS server; exists asks for A even for an IPv6 client (§5.7), so
// it still matches. Before, every name was asked for A and AAAA.
func TestSPFFamily(t *testing.T) {
	c, srv := newSPFChecker(t, `
fam.example.   TXT "v=spf1 a:a4.fam.example a:a6.fam.example mx:m.fam.example -all"
a4.fam.example. A 192.0.2.10
a6.fam.example. AAAA 2001:db8::10
m.fam.example. MX 10 h1.fam.example.
m.fam.example. MX 20 h2.fam.example.
h1.fam.example. A 192.0.2.20
h1.fam.example. AAAA 2001:db8::20
h2.fam.example. A 192.0.2.21
h2.fam.example. AAAA 2001:db8::21
ex.example.    TXT "v=spf1 exists:%{ir}.x.ex.example -all"
99.2.0.192.x.ex.example. A 127.0.0.2
`+nibbles("2001:db8::99")+`.x.ex.example. A 127.0.0.2
`)
	for _, tc := range []struct {
		name, ip, from string
		want           Result
		queries        map[string]int
	}{
		{"IPv4, no match: A only", "192.0.2.99", "a@fam.example", Fail, map[string]int{"TXT": 1, "A": 4, "MX": 1}},
		{"IPv6, no match: AAAA only", "2001:db8::99", "a@fam.example", Fail, map[string]int{"TXT": 1, "AAAA": 4, "MX": 1}},
		{"IPv4 a", "192.0.2.10", "a@fam.example", Pass, map[string]int{"TXT": 1, "A": 1}},
		{"IPv6 a", "2001:db8::10", "a@fam.example", Pass, map[string]int{"TXT": 1, "AAAA": 2}},
		{"IPv4 mx, second host", "192.0.2.21", "a@fam.example", Pass, map[string]int{"TXT": 1, "A": 4, "MX": 1}},
		{"IPv6 mx, second host", "2001:db8::21", "a@fam.example", Pass, map[string]int{"TXT": 1, "AAAA": 4, "MX": 1}},
		{"IPv4 exists", "192.0.2.99", "a@ex.example", Pass, map[string]int{"TXT": 1, "A": 1}},
		{"IPv6 exists asks A", "2001:db8::99", "a@ex.example", Pass, map[string]int{"TXT": 1, "A": 1, "AAAA": 1}},
		{"IPv6 exists, no match", "2001:db8::98", "a@ex.example", Fail, map[string]int{"TXT": 1, "A": 1, "AAAA": 1}},
	} {
		r, n := spfQueries(t, c, srv, tc.ip, tc.from)
		if r.Result != tc.want || fmt.Sprint(n) != fmt.Sprint(tc.queries) {
			t.Errorf("%s: %s (%s) after %v; want %s after %v", tc.name, r.Result, r.Reason, n, tc.want, tc.queries)
		}
	}
}

// TestSPFLimits: RFC 7208 §4.6.4 as the library enforces it, counted at
// the test DNS server: ten mx terms of ten hosts cost 111 questions and
// no more; an eleventh DNS term is permerror without being asked; an MX
// set of more than ten hosts is permerror before any address question;
// a third void lookup is permerror.
func TestSPFLimits(t *testing.T) {
	var z strings.Builder
	z.WriteString(`ten.example. TXT "v=spf1`)
	for i := range 10 {
		fmt.Fprintf(&z, " mx:m%d.ten.example", i)
	}
	z.WriteString(" -all\"\n")
	z.WriteString(`eleven.example. TXT "v=spf1`)
	for i := range 11 {
		fmt.Fprintf(&z, " mx:m%d.ten.example", i)
	}
	z.WriteString(" -all\"\n")
	for i := range 11 {
		for j := range 10 {
			fmt.Fprintf(&z, "m%d.ten.example. MX 10 h%d.m%d.ten.example.\n", i, j, i)
			fmt.Fprintf(&z, "h%d.m%d.ten.example. A 192.0.2.%d\n", j, i, 10*i+j+1)
			fmt.Fprintf(&z, "h%d.m%d.ten.example. AAAA 2001:db8::%d\n", j, i, 10*i+j+1)
		}
	}
	z.WriteString(`big.example. TXT "v=spf1 mx -all"` + "\n")
	for j := range 11 {
		fmt.Fprintf(&z, "big.example. MX 10 h%d.big.example.\nh%d.big.example. A 192.0.2.%d\n", j, j, j+1)
	}
	z.WriteString(`void.example. TXT "v=spf1 a:nx1.void.example a:nx2.void.example a:nx3.void.example a:nx4.void.example +all"` + "\n")
	c, srv := newSPFChecker(t, z.String())
	for _, tc := range []struct {
		name, ip, from string
		want           Result
		reason         string
		queries        map[string]int
	}{
		{"ten mx of ten hosts, IPv4", "198.51.100.1", "a@ten.example", Fail, "", map[string]int{"TXT": 1, "MX": 10, "A": 100}},
		{"ten mx of ten hosts, IPv6", "2001:db8:1::1", "a@ten.example", Fail, "", map[string]int{"TXT": 1, "MX": 10, "AAAA": 100}},
		{"eleven DNS terms", "198.51.100.1", "a@eleven.example", PermError, "lookup limit reached", map[string]int{"TXT": 1, "MX": 10, "A": 100}},
		{"eleven MX hosts", "198.51.100.1", "a@big.example", PermError, "too many MX records", map[string]int{"TXT": 1, "MX": 1}},
		{"three void lookups", "198.51.100.1", "a@void.example", PermError, "void lookup limit reached", map[string]int{"TXT": 1, "A": 3}},
	} {
		r, n := spfQueries(t, c, srv, tc.ip, tc.from)
		if r.Result != tc.want || r.Reason != tc.reason || fmt.Sprint(n) != fmt.Sprint(tc.queries) {
			t.Errorf("%s: %s (%q) after %v; want %s (%q) after %v", tc.name, r.Result, r.Reason, n, tc.want, tc.reason, tc.queries)
		}
	}
}
