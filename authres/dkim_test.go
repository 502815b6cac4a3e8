package authres

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"securerelay/dkim"
)

// The From domain of these messages has p=reject (example.com); SPF is
// for a domain that passes but is not aligned, so DMARC shows whether
// DKIM passed aligned.
const (
	dkimFrom    = "Alice <alice@example.com>"
	dkimBounce  = "bounce@esp.example.net"
	spfESP      = "spf=pass smtp.mailfrom=bounce@esp.example.net"
	dmarcPass   = "dmarc=pass header.from=example.com policy.dmarc=reject"
	dmarcFailed = "dmarc=fail header.from=example.com policy.dmarc=reject"
)

func TestDKIMPassRSA(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	msg := sign(t, message(dkimFrom), rsaSigner(t, "example.com"))
	v := check(t, c, ipIn, testHelo, dkimBounce, msg)
	b := bProps(t, msg)
	wantHeader(t, v, ar(spfESP,
		"dkim=pass header.d=example.com header.s=rsa header.a=rsa-sha256\r\n header.b="+b[0],
		dmarcPass))
	if v.Reject != nil {
		t.Errorf("Reject = %v", v.Reject)
	}
	if len(v.DMARC) != 1 || !v.DMARC[0].DKIMAligned || v.DMARC[0].SPFAligned {
		t.Errorf("DMARC = %+v", v.DMARC)
	}
}

// TestDKIMPassEd25519: RFC 8463 signatures.
func TestDKIMPassEd25519(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	msg := sign(t, message(dkimFrom), edSigner(t, "example.com"))
	v := check(t, c, ipIn, testHelo, dkimBounce, msg)
	wantHeader(t, v, ar(spfESP,
		"dkim=pass header.d=example.com header.s=ed header.a=ed25519-sha256\r\n header.b="+bProps(t, msg)[0],
		dmarcPass))
}

// TestDKIMBodyChanged: a changed body fails the body hash, so the
// signature fails and DMARC (p=reject, nothing else aligned) refuses.
func TestDKIMBodyChanged(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	msg := sign(t, message(dkimFrom), rsaSigner(t, "example.com"))
	msg = strings.Replace(msg, "this is the body", "this is the b0dy", 1)
	v := check(t, c, ipIn, testHelo, dkimBounce, msg)
	wantHeader(t, v, ar(spfESP,
		"dkim=fail reason=\"body hash did not verify\" header.d=example.com\r\n header.s=rsa header.a=rsa-sha256 header.b="+bProps(t, msg)[0],
		dmarcFailed))
	want := "message rejected: the DMARC policy of example.com says reject, and SPF passed only for esp.example.net, " +
		"which is not aligned with it, and no DKIM signature verified; the sender's domain must sign with DKIM or publish SPF for this server"
	if v.Reject == nil || v.Reject.Code != 550 || v.Reject.EnhancedCode != [3]int{5, 7, 26} || v.Reject.Message != want {
		t.Errorf("Reject = %+v\nwant 550 5.7.26 %q", v.Reject, want)
	}
}

// TestDKIMHeaderChanged: a changed signed header field breaks the
// signature itself.
func TestDKIMHeaderChanged(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	msg := sign(t, message(dkimFrom), edSigner(t, "example.com"))
	msg = strings.Replace(msg, "Subject: authentication test", "Subject: authentication test!", 1)
	v := check(t, c, ipIn, testHelo, dkimBounce, msg)
	if len(v.DKIM) != 1 || v.DKIM[0].Result != Fail || !strings.HasPrefix(v.DKIM[0].Reason, "signature did not verify") {
		t.Errorf("DKIM = %+v", v.DKIM)
	}
}

func TestDKIMNone(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	v := check(t, c, ipIn, testHelo, dkimBounce, message(dkimFrom))
	wantHeader(t, v, ar(spfESP, "dkim=none", dmarcFailed))
	if v.Reject == nil || !strings.Contains(v.Reject.Message, "the message has no DKIM signature") {
		t.Errorf("Reject = %v", v.Reject)
	}
}

// TestDKIMTwoSignatures: one result per signature, top first; one
// aligned pass is enough for DMARC.
func TestDKIMTwoSignatures(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	msg := sign(t, message(dkimFrom), rsaSigner(t, "esp.example.net"))
	msg = sign(t, msg, edSigner(t, "example.com"))
	v := check(t, c, ipOut, testHelo, dkimBounce, msg)
	b := bProps(t, msg)
	wantHeader(t, v, ar("spf=fail smtp.mailfrom=bounce@esp.example.net",
		"dkim=pass header.d=example.com header.s=ed header.a=ed25519-sha256\r\n header.b="+b[0],
		"dkim=pass header.d=esp.example.net header.s=rsa header.a=rsa-sha256\r\n header.b="+b[1],
		dmarcPass))
}

// TestDKIMKeyErrors: a missing key is permerror; a key lookup that fails
// temporarily is temperror, and since that signature is aligned with a
// p=reject domain, the verdict is a deferral, not a refusal.
func TestDKIMKeyErrors(t *testing.T) {
	c, srv := newTestChecker(t, nil)
	srv.ServFail("rsa._domainkey.example.com")
	srv.ServFail("rsa._domainkey.tempfail.example.org")

	msg := sign(t, message(dkimFrom), rsaSigner(t, "example.com"))
	v := check(t, c, ipIn, testHelo, dkimBounce, msg)
	wantHeader(t, v, ar(spfESP,
		"dkim=temperror\r\n reason=\"key unavailable: lookup rsa._domainkey.example.com: temporary DNS failure\"\r\n header.d=example.com header.s=rsa header.a=rsa-sha256 header.b="+bProps(t, msg)[0],
		dmarcFailed))
	if v.Reject == nil || v.Reject.Code != 451 || v.Reject.EnhancedCode != [3]int{4, 7, 0} {
		t.Errorf("Reject = %+v, want 451 4.7.0", v.Reject)
	}

	s := rsaSigner(t, "example.com")
	s.selector = "gone"
	msg = sign(t, message(dkimFrom), s)
	v = check(t, c, ipIn, testHelo, dkimBounce, msg)
	wantHeader(t, v, ar(spfESP,
		"dkim=permerror\r\n reason=\"no key for signature: lookup gone._domainkey.example.com: NXDOMAIN\"\r\n header.d=example.com header.s=gone header.a=rsa-sha256 header.b="+bProps(t, msg)[0],
		dmarcFailed))
	if v.Reject == nil || v.Reject.Code != 550 {
		t.Errorf("Reject = %+v, want 550", v.Reject)
	}

	// A temporary failure of a signature that is not aligned does not
	// hold up the refusal.
	msg = sign(t, message(dkimFrom), rsaSigner(t, "tempfail.example.org"))
	v = check(t, c, ipIn, testHelo, dkimBounce, msg)
	if len(v.DKIM) != 1 || v.DKIM[0].Result != TempError || v.Reject == nil || v.Reject.Code != 550 {
		t.Errorf("DKIM %+v, Reject %+v; want temperror and 550", v.DKIM, v.Reject)
	}
}

// TestDKIMExpiry: x= in the past fails by go-msgauth's own clock;
// Options.Now makes a signature expired that the wall clock still
// accepts.
func TestDKIMExpiry(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	s := edSigner(t, "example.com")
	s.expires = time.Now().Add(-time.Minute)
	v := check(t, c, ipIn, testHelo, dkimBounce, sign(t, message(dkimFrom), s))
	if len(v.DKIM) != 1 || v.DKIM[0].Result != PermError || v.DKIM[0].Reason != "signature has expired" {
		t.Errorf("past x=: %+v", v.DKIM)
	}

	s.expires = time.Now().Add(time.Hour)
	msg := sign(t, message(dkimFrom), s)
	v = check(t, c, ipIn, testHelo, dkimBounce, msg)
	if len(v.DKIM) != 1 || v.DKIM[0].Result != Pass {
		t.Errorf("future x=: %+v", v.DKIM)
	}
	later, _ := newTestChecker(t, func(o *Options) { o.Now = func() time.Time { return time.Now().Add(2 * time.Hour) } })
	v = check(t, later, ipIn, testHelo, dkimBounce, msg)
	if len(v.DKIM) != 1 || v.DKIM[0].Result != PermError || v.DKIM[0].Reason != "signature has expired" {
		t.Errorf("x= before Options.Now: %+v", v.DKIM)
	}
}

// TestDKIMMaxSignatures: only the top maxSignatures are verified, and
// results still pair with the right fields.
func TestDKIMMaxSignatures(t *testing.T) {
	c, srv := newTestChecker(t, nil)
	msg := sign(t, message(dkimFrom), edSigner(t, "example.com"))
	for range maxSignatures {
		msg = sign(t, msg, rsaSigner(t, "esp.example.net"))
	}
	v := check(t, c, ipIn, testHelo, dkimBounce, msg)
	if len(v.DKIM) != maxSignatures {
		t.Fatalf("%d results, want %d", len(v.DKIM), maxSignatures)
	}
	for _, d := range v.DKIM {
		if d.Domain != "esp.example.net" || d.Result != Pass {
			t.Errorf("result %+v", d)
		}
	}
	for _, q := range srv.Queries() {
		if q.Name == "ed._domainkey.example.com" {
			t.Errorf("the sixth signature was verified")
		}
	}
	// Not verified, so DMARC does not see the aligned one.
	if v.DMARC[0].Result != Fail {
		t.Errorf("DMARC %+v", v.DMARC[0])
	}
}

// TestDKIMLineEndings: a message with LF line ends, and one that is all
// header (no empty line), are read without error.
func TestDKIMLineEndings(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	msg := sign(t, message(dkimFrom), edSigner(t, "example.com"))
	v := check(t, c, ipIn, testHelo, dkimBounce, strings.ReplaceAll(msg, "\r\n", "\n"))
	if len(v.DKIM) != 1 || v.DKIM[0].Result != Pass {
		t.Errorf("LF message: %+v", v.DKIM)
	}
	hdrOnly := "From: alice@example.com\r\nSubject: x\r\n"
	msg = sign(t, hdrOnly+"\r\n", edSigner(t, "example.com"))
	for _, m := range []string{strings.TrimSuffix(msg, "\r\n"), strings.TrimSuffix(msg, "\r\n\r\n")} {
		v = check(t, c, ipIn, testHelo, dkimBounce, m)
		if len(v.DKIM) != 1 || v.DKIM[0].Result != Pass {
			t.Errorf("header-only message %q: %+v", m[len(m)-20:], v.DKIM)
		}
	}
}

// TestCheckReadError: a message that cannot be read is an error, not a
// verdict.
func TestCheckReadError(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	msg := sign(t, message(dkimFrom), edSigner(t, "example.com"))
	_, err := c.Check(context.Background(), addr(ipIn), testHelo, dkimBounce, nil, &failingReader{data: msg, n: 400})
	if err == nil {
		t.Fatal("no error")
	}
	_, err = c.Check(context.Background(), addr(ipIn), testHelo, dkimBounce, nil, &failingReader{data: msg, n: 20})
	if err == nil {
		t.Fatal("no error while reading the header")
	}
}

// TestCheckHeaderBound: the header is held in memory, so more than
// dkim.MaxHeaderBytes of it (in many fields, or in one long line) is an
// error the caller can tell apart; a header just within the bound is
// checked as usual.
func TestCheckHeaderBound(t *testing.T) {
	c, _ := newTestChecker(t, nil)
	body := "\r\nbody\r\n"
	fill := func(n int, oneLine bool) string {
		if oneLine {
			return "X-Fill: " + strings.Repeat("a", n) + "\r\n"
		}
		line := "X-Fill: " + strings.Repeat("a", 90) + "\r\n"
		return strings.Repeat(line, n/len(line)+1)
	}
	for _, oneLine := range []bool{false, true} {
		msg := "From: " + dkimFrom + "\r\n" + fill(dkim.MaxHeaderBytes, oneLine) + body
		_, err := c.Check(context.Background(), addr(ipIn), testHelo, dkimBounce, nil, strings.NewReader(msg))
		if !errors.Is(err, dkim.ErrHeaderTooLarge) {
			t.Errorf("header over the bound (one line %v): err %v, want dkim.ErrHeaderTooLarge", oneLine, err)
		}
	}
	msg := "From: " + dkimFrom + "\r\n" + fill(dkim.MaxHeaderBytes-200_000, false) + body
	if v, err := c.Check(context.Background(), addr(ipIn), testHelo, dkimBounce, nil, strings.NewReader(msg)); err != nil || len(v.DMARC) != 1 || v.Header == "" {
		t.Errorf("header within the bound: %+v, %v", v, err)
	}
}

type failingReader struct {
	data string
	n    int
}

func (f *failingReader) Read(p []byte) (int, error) {
	if f.n == 0 {
		return 0, errBroken
	}
	n := copy(p, f.data[:min(f.n, len(f.data))])
	f.data, f.n = f.data[n:], f.n-n
	return n, nil
}

var errBroken = &brokenErr{}

type brokenErr struct{}

func (*brokenErr) Error() string { return "disk on fire" }
