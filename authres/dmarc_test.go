package authres

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestDMARC covers policy discovery, alignment and the applied policy;
// every case compares the whole header field and the reply.
func TestDMARC(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	type tc struct {
		name       string
		ip, from   string // client and MAIL FROM
		hdrFrom    string
		signer     *signer
		want       []string // resinfo lines; the dkim line is filled in when signed
		wantReject string   // "550 5.7.26", "451 4.7.0" or ""
	}
	rsaSub := rsaSigner(t, "sub.example.com")
	rsaStrictSub := rsaSigner(t, "sub.strict.example.org")
	cases := []tc{
		{name: "pass via aligned SPF", ip: ipIn, from: "alice@example.com", hdrFrom: "alice@example.com",
			want: []string{"spf=pass smtp.mailfrom=alice@example.com", "dkim=none", "dmarc=pass header.from=example.com policy.dmarc=reject"}},
		{name: "pass via relaxed SPF alignment", ip: ipIn, from: "b@mail.example.com", hdrFrom: "alice@example.com",
			want: []string{"spf=pass smtp.mailfrom=b@mail.example.com", "dkim=none", "dmarc=pass header.from=example.com policy.dmarc=reject"}},
		{name: "pass via relaxed DKIM alignment", ip: ipOut, from: "b@esp.example.net", hdrFrom: "alice@example.com", signer: &rsaSub,
			want: []string{"spf=fail smtp.mailfrom=b@esp.example.net", "", "dmarc=pass header.from=example.com policy.dmarc=reject"}},
		{name: "fail, p=reject", ip: ipOut, from: "alice@example.com", hdrFrom: "alice@example.com",
			want:       []string{"spf=fail smtp.mailfrom=alice@example.com", "dkim=none", "dmarc=fail header.from=example.com policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "fail, p=none", ip: ipIn, from: "b@esp.example.net", hdrFrom: "x@none.example.org",
			want: []string{"spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none", "dmarc=fail header.from=none.example.org policy.dmarc=none"}},
		{name: "subdomain gets sp=reject", ip: ipIn, from: "b@mail.example.com", hdrFrom: "x@a.example.net",
			want:       []string{"spf=pass smtp.mailfrom=b@mail.example.com", "dkim=none", "dmarc=fail header.from=a.example.net policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "organizational domain itself gets p=none", ip: ipIn, from: "b@mail.example.com", hdrFrom: "x@example.net",
			want: []string{"spf=pass smtp.mailfrom=b@mail.example.com", "dkim=none", "dmarc=fail header.from=example.net policy.dmarc=none"}},
		{name: "subdomain without sp= inherits p", ip: ipIn, from: "b@esp.example.net", hdrFrom: "x@deep.sub.example.com",
			want:       []string{"spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none", "dmarc=fail header.from=deep.sub.example.com policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "pct=50 reject becomes quarantine", ip: ipIn, from: "b@esp.example.net", hdrFrom: "x@pct.example.org",
			want: []string{"spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none", "dmarc=fail header.from=pct.example.org policy.dmarc=quarantine"}},
		{name: "keywords are case-insensitive", ip: ipIn, from: "b@esp.example.net", hdrFrom: "x@upper.example.org",
			want:       []string{"spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none", "dmarc=fail header.from=upper.example.org policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "invalid p= and no rua=: no DMARC (RFC 7489 6.6.3)", ip: ipIn, from: "b@esp.example.net", hdrFrom: "x@bad.example.org",
			want: []string{"spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none",
				"dmarc=none\r\n reason=\"no valid p= in the DMARC record at _dmarc.bad.example.org\"\r\n header.from=bad.example.org"}},
		{name: "invalid p= with a valid rua= is p=none", ip: ipOut, from: "b@esp.example.net", hdrFrom: "x@typo.example.org",
			want: []string{"spf=fail smtp.mailfrom=b@esp.example.net", "dkim=none", "dmarc=fail header.from=typo.example.org policy.dmarc=none"}},
		{name: "a bad ri= does not switch p=reject off", ip: ipOut, from: "b@esp.example.net", hdrFrom: "x@slip-ri.example.org",
			want:       []string{"spf=fail smtp.mailfrom=b@esp.example.net", "dkim=none", "dmarc=fail header.from=slip-ri.example.org policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "an unknown rf= does not switch p=reject off", ip: ipOut, from: "b@esp.example.net", hdrFrom: "x@slip-rf.example.org",
			want:       []string{"spf=fail smtp.mailfrom=b@esp.example.net", "dkim=none", "dmarc=fail header.from=slip-rf.example.org policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "p= after rua= still counts", ip: ipOut, from: "b@esp.example.net", hdrFrom: "x@order.example.org",
			want:       []string{"spf=fail smtp.mailfrom=b@esp.example.net", "dkim=none", "dmarc=fail header.from=order.example.org policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "bad sp=, pct=, adkim=, aspf= fall back to p, 100, r, r", ip: ipIn, from: "b@mail.badsp.test", hdrFrom: "x@sub.badsp.test",
			want:       []string{"spf=none smtp.mailfrom=b@mail.badsp.test", "dkim=none", "dmarc=fail header.from=sub.badsp.test policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "two records: no DMARC", ip: ipIn, from: "b@esp.example.net", hdrFrom: "x@two.example.org",
			want: []string{"spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none",
				"dmarc=none reason=\"several DMARC records at _dmarc.two.example.org\"\r\n header.from=two.example.org"}},
		{name: "non-DMARC TXT is ignored", ip: ipIn, from: "b@esp.example.net", hdrFrom: "x@other.example.org",
			want:       []string{"spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none", "dmarc=fail header.from=other.example.org policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "strict SPF alignment", ip: ipIn, from: "b@mail.strict.example.org", hdrFrom: "x@strict.example.org",
			want:       []string{"spf=pass smtp.mailfrom=b@mail.strict.example.org", "dkim=none", "dmarc=fail header.from=strict.example.org policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "strict DKIM alignment", ip: ipOut, from: "x@strict.example.org", hdrFrom: "x@strict.example.org", signer: &rsaStrictSub,
			want:       []string{"spf=none smtp.mailfrom=x@strict.example.org", "", "dmarc=fail header.from=strict.example.org policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "public suffix list: co.uk is no organizational domain", ip: ipIn, from: "b@mail.example.co.uk", hdrFrom: "x@news.example.co.uk",
			want: []string{"spf=pass smtp.mailfrom=b@mail.example.co.uk", "dkim=none", "dmarc=pass header.from=news.example.co.uk policy.dmarc=reject"}},
		{name: "unaligned co.uk neighbour", ip: ipIn, from: "b@mail.example.co.uk", hdrFrom: "x@other.co.uk",
			want: []string{"spf=pass smtp.mailfrom=b@mail.example.co.uk", "dkim=none",
				`dmarc=none reason="no DMARC record" header.from=other.co.uk`}},
		{name: "no record", ip: ipIn, from: "b@esp.example.net", hdrFrom: "x@nodmarc.example.org",
			want: []string{"spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none", `dmarc=none reason="no DMARC record" header.from=nodmarc.example.org`}},
		{name: "null sender aligns by HELO", ip: ipIn, from: "", hdrFrom: "MAILER-DAEMON@mail.example.com",
			want: []string{"spf=pass smtp.helo=mail.example.com", "dkim=none", "dmarc=pass header.from=mail.example.com policy.dmarc=reject"}},
		{name: "display name in unknown charset", ip: ipOut, from: "x@esp.example.net", hdrFrom: "=?x-unknown?q?Bank?= <ceo@example.com>",
			want:       []string{"spf=fail smtp.mailfrom=x@esp.example.net", "dkim=none", "dmarc=fail header.from=example.com policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "unparsable From still yields its domain", ip: ipOut, from: "x@esp.example.net", hdrFrom: "ceo@example.com <",
			want:       []string{"spf=fail smtp.mailfrom=x@esp.example.net", "dkim=none", "dmarc=fail header.from=example.com policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "several addresses: strictest failing policy", ip: ipIn, from: "x@esp.example.net", hdrFrom: "x@none.example.org, y@Example.COM",
			want: []string{"spf=pass smtp.mailfrom=x@esp.example.net", "dkim=none",
				"dmarc=fail header.from=none.example.org policy.dmarc=none",
				"dmarc=fail header.from=example.com policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "internationalized domain as A-label", ip: ipIn, from: "x@esp.example.net", hdrFrom: "x@bücher.example.org",
			want: []string{"spf=pass smtp.mailfrom=x@esp.example.net", "dkim=none",
				"dmarc=none reason=\"no DMARC record\" header.from=xn--bcher-kva.example.org"}},
		{name: "ASCII name IDNA refuses is still evaluated", ip: ipOut, from: "x@esp.example.net", hdrFrom: "x@ab--cd.example.com",
			want:       []string{"spf=fail smtp.mailfrom=x@esp.example.net", "dkim=none", "dmarc=fail header.from=ab--cd.example.com policy.dmarc=reject"},
			wantReject: "550 5.7.26"},
		{name: "no address in From", ip: ipIn, from: "x@esp.example.net", hdrFrom: "undisclosed-recipients:;",
			want: []string{"spf=pass smtp.mailfrom=x@esp.example.net", "dkim=none", `dmarc=none reason="no usable address in From"`}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			msg := message(tc.hdrFrom)
			want := append([]string(nil), tc.want...)
			if tc.signer != nil {
				msg = sign(t, msg, *tc.signer)
				want[1] = "dkim=pass header.d=" + tc.signer.domain + " header.s=rsa header.a=rsa-sha256\r\n header.b=" + bProps(t, msg)[0]
			}
			v := check(t, c, tc.ip, "mail.example.com", tc.from, msg)
			wantHeader(t, v, ar(want...))
			got := ""
			if v.Reject != nil {
				got = replyCode(v.Reject.Code, v.Reject.EnhancedCode)
			}
			if got != tc.wantReject {
				t.Errorf("reject %q (%v), want %q", got, v.Reject, tc.wantReject)
			}
		})
	}
}

func replyCode(code int, e [3]int) string {
	return strings.Join([]string{itoa(code), itoa(e[0]) + "." + itoa(e[1]) + "." + itoa(e[2])}, " ")
}

func itoa(i int) string {
	if i < 10 {
		return string(rune('0' + i))
	}
	return itoa(i/10) + string(rune('0'+i%10))
}

// TestDMARCNoFrom: a message without From has no author domain.
func TestDMARCNoFrom(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	msg := "To: a@example.net\r\nSubject: x\r\n\r\nbody\r\n"
	v := check(t, c, ipIn, testHelo, "b@esp.example.net", msg)
	wantHeader(t, v, ar("spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none", `dmarc=none reason="no From field"`))
	if v.Reject != nil {
		t.Errorf("Reject = %v", v.Reject)
	}
}

// TestDMARCSecondFromField: a second From field cannot dodge a reject:
// several From fields are refused (550 5.6.0, check multiple_from)
// before any DMARC lookup, whatever the domains; with IgnoreDMARCReject
// each field's domain is evaluated and nothing refused.
func TestDMARCSecondFromField(t *testing.T) {
	c, srv := newTestChecker(t, nil)
	for _, msg := range []string{
		"From: x@nodmarc.example.org\r\n" + message("ceo@example.com"),
		"From: x@nodmarc.example.org\r\n" + message("y@none.example.org"),
		"fROM : x@nodmarc.example.org\r\n" + message("x@nodmarc.example.org"),
	} {
		v := check(t, c, ipOut, testHelo, "b@esp.example.net", msg)
		if v.Reject == nil || v.Reject.Code != 550 || v.Reject.EnhancedCode != [3]int{5, 6, 0} || v.Check != "multiple_from" ||
			!strings.Contains(v.Reject.Message, "message has 2 From: header fields") {
			t.Errorf("Reject %v, check %q; want 550 5.6.0 multiple_from", v.Reject, v.Check)
		}
		if len(v.DMARC) != 1 || v.DMARC[0].Result != PermError || v.DMARC[0].Reason != "2 From fields" {
			t.Errorf("DMARC %+v", v.DMARC)
		}
	}
	for _, q := range srv.Queries() {
		if strings.HasPrefix(q.Name, "_dmarc.") {
			t.Errorf("looked up %s", q.Name)
		}
	}
	ig, _ := newTestChecker(t, func(o *Options) { o.IgnoreDMARCReject = true })
	v := check(t, ig, ipOut, testHelo, "b@esp.example.net", "From: x@nodmarc.example.org\r\n"+message("ceo@example.com"))
	if len(v.DMARC) != 2 || v.DMARC[1].Result != Fail || v.DMARC[1].Policy != "reject" || v.Reject != nil {
		t.Errorf("IgnoreDMARCReject: DMARC %+v, Reject %v", v.DMARC, v.Reject)
	}
}

// TestDMARCTempError: SERVFAIL and time-out of the record lookup give
// temperror; with nothing aligned passing, the record might have said
// reject, so the message is deferred; with a strictly aligned pass it is
// accepted.
func TestDMARCTempError(t *testing.T) {
	c, srv := newTestChecker(t, nil)
	srv.ServFail("_dmarc.tempfail.example.org")
	srv.Drop("_dmarc.timeout.example.org")
	spf := c.SPF(context.Background(), addr(ipOut), testHelo, "b@esp.example.net")
	for _, d := range []string{"tempfail.example.org", "timeout.example.org"} {
		t.Run(d, func(t *testing.T) {
			// SPF is done: the only lookup left is the one that fails.
			start := time.Now()
			v, err := impatient(srv).Check(context.Background(), addr(ipOut), testHelo, "b@esp.example.net", &spf, strings.NewReader(message("x@"+d)))
			if err != nil {
				t.Fatal(err)
			}
			wantHeader(t, v, ar("spf=fail smtp.mailfrom=b@esp.example.net", "dkim=none",
				"dmarc=temperror\r\n reason=\"DNS lookup of _dmarc."+d+" failed: temporary DNS failure\"\r\n header.from="+d))
			want := "temporary DNS failure while looking up the DMARC policy of " + d + "; please try again later"
			if v.Reject == nil || v.Reject.Code != 451 || v.Reject.EnhancedCode != [3]int{4, 7, 0} || v.Reject.Message != want {
				t.Errorf("Reject = %+v", v.Reject)
			}
			if el := time.Since(start); el > 3*time.Second {
				t.Errorf("took %v", el)
			}
		})
	}
	msg := sign(t, message("x@tempfail.example.org"), edSigner(t, "tempfail.example.org"))
	v := check(t, c, ipOut, testHelo, "b@esp.example.net", msg)
	if v.DMARC[0].Result != TempError || v.Reject != nil {
		t.Errorf("aligned DKIM pass: DMARC %+v, Reject %v", v.DMARC[0], v.Reject)
	}
}

// TestDMARCSPFTempError: SPF temperror for an aligned domain under
// p=reject defers instead of refusing.
func TestDMARCSPFTempError(t *testing.T) {
	c, srv := newTestChecker(t, nil)
	srv.ServFail("example.com")
	v := check(t, c, ipIn, testHelo, "alice@example.com", message("alice@example.com"))
	if v.SPF.Result != TempError || v.DMARC[0].Result != Fail {
		t.Fatalf("SPF %+v DMARC %+v", v.SPF, v.DMARC)
	}
	want := "DMARC check for example.com failed with policy reject, but a DNS lookup failed temporarily " +
		"(SPF gave temperror for example.com, and the message has no DKIM signature); please try again later"
	if v.Reject == nil || v.Reject.Code != 451 || v.Reject.Message != want {
		t.Errorf("Reject = %+v", v.Reject)
	}
}

// TestDMARCIgnoreReject: with IgnoreDMARCReject the result is recorded
// and nothing is refused.
func TestDMARCIgnoreReject(t *testing.T) {
	c, _ := newTestChecker(t, func(o *Options) { o.IgnoreDMARCReject = true })
	v := check(t, c, ipOut, testHelo, "alice@example.com", message("alice@example.com"))
	if v.DMARC[0].Result != Fail || v.DMARC[0].Policy != "reject" || v.Reject != nil {
		t.Errorf("DMARC %+v, Reject %v", v.DMARC[0], v.Reject)
	}
}

// TestDMARCTooManyDomains: a From with more author domains than are
// evaluated is refused (550 5.7.1, check author_domains) without a
// lookup, even when one of them publishes nothing; ten are evaluated,
// and a p=reject failure of any of them refuses. With
// IgnoreDMARCReject it is a permanent error, recorded.
func TestDMARCTooManyDomains(t *testing.T) {
	c, srv := newTestChecker(t, nil)
	var addrs []string
	for i := range maxFromDomains + 1 {
		addrs = append(addrs, "a@d"+itoa(i)+".example.org")
	}
	v := check(t, c, ipIn, testHelo, "b@esp.example.net", message(strings.Join(addrs, ", ")))
	wantHeader(t, v, ar("spf=pass smtp.mailfrom=b@esp.example.net", "dkim=none", `dmarc=permerror reason="too many author domains in From"`))
	if v.Reject == nil || v.Reject.Code != 550 || v.Reject.EnhancedCode != [3]int{5, 7, 1} || v.Check != "author_domains" ||
		!strings.Contains(v.Reject.Message, "addresses in 11 domains; this server checks the DMARC policy of at most 10") {
		t.Errorf("Reject %v, check %q; want 550 5.7.1 author_domains", v.Reject, v.Check)
	}
	for _, q := range srv.Queries() {
		if strings.HasPrefix(q.Name, "_dmarc.") {
			t.Errorf("looked up %s", q.Name)
		}
	}

	// Ten domains, the p=reject one last: evaluated, refused.
	v = check(t, c, ipOut, testHelo, "b@esp.example.net", message(strings.Join(append(addrs[:9], "ceo@example.com"), ", ")))
	if len(v.DMARC) != 10 || v.Reject == nil || v.Reject.EnhancedCode != [3]int{5, 7, 26} || v.Check != "dmarc" {
		t.Errorf("ten domains: %d results, Reject %v, check %q; want 550 5.7.26 dmarc", len(v.DMARC), v.Reject, v.Check)
	}

	ig, _ := newTestChecker(t, func(o *Options) { o.IgnoreDMARCReject = true })
	v = check(t, ig, ipIn, testHelo, "b@esp.example.net", message(strings.Join(addrs, ", ")))
	if v.Reject != nil || v.Check != "" || v.DMARC[0].Result != PermError {
		t.Errorf("IgnoreDMARCReject: Reject %v, check %q, DMARC %+v", v.Reject, v.Check, v.DMARC)
	}
}

// TestParseRecord: RFC 7489 §6.3's lenient reading; only p= (or, failing
// it, a valid rua=) decides whether there is a policy.
func TestParseRecord(t *testing.T) {
	for _, tc := range []struct {
		txt         string
		ok          bool
		p, sp       string
		pct         int // -1: not set
		sSPF, sDKIM bool
	}{
		{"v=DMARC1; p=reject", true, "reject", "", -1, false, false},
		{"v=DMARC1;p=Quarantine;SP=NONE;PCT=20;ADKIM=S;aspf=s", true, "quarantine", "none", 20, true, true},
		{"v=DMARC1; p=reject; ri=86400s; rf=iodef; fo=x; ruf=nonsense; unknown=1", true, "reject", "", -1, false, false},
		{"v=DMARC1; p=reject; sp=rejekt", true, "reject", "", -1, false, false},
		{"v=DMARC1; p=reject; pct=101", true, "reject", "", -1, false, false},
		{"v=DMARC1; p=reject; pct=-1", true, "reject", "", -1, false, false},
		{"v=DMARC1; p=reject; pct=0", true, "reject", "", 0, false, false},
		{"v=DMARC1; p=reject; adkim=x; aspf=relaxed", true, "reject", "", -1, false, false},
		{"v=DMARC1; p=reject; p=none", true, "reject", "", -1, false, false},
		{"v=DMARC1; garbage without equals; p = reject ;", true, "reject", "", -1, false, false},
		{"v=DMARC1; rua=mailto:a@example.com; p=reject", true, "reject", "", -1, false, false},
		{"v=DMARC1; p=rejct; sp=reject; pct=10; rua=mailto:a@example.com!10m", true, "none", "", -1, false, false},
		{"v=DMARC1; rua=bogus, https://example.com/r", true, "none", "", -1, false, false},
		{"v=DMARC1; p=rejct", false, "", "", -1, false, false},
		{"v=DMARC1; p=rejct; rua=not a uri", false, "", "", -1, false, false},
		{"v=DMARC1; p=rejct; rua=mailto:", false, "", "", -1, false, false},
		{"v=DMARC1", false, "", "", -1, false, false},
	} {
		rec, ok := parseRecord(tc.txt)
		if ok != tc.ok {
			t.Errorf("%q: ok %v, want %v", tc.txt, ok, tc.ok)
			continue
		}
		if !ok {
			continue
		}
		pct := -1
		if rec.Percent != nil {
			pct = *rec.Percent
		}
		if string(rec.Policy) != tc.p || string(rec.SubdomainPolicy) != tc.sp || pct != tc.pct ||
			(rec.SPFAlignment == "s") != tc.sSPF || (rec.DKIMAlignment == "s") != tc.sDKIM {
			t.Errorf("%q: %+v pct %d", tc.txt, rec, pct)
		}
	}
}
