package authres

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-msgauth/dkim"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
)

const testID = "mx.test"

// Keys are made once per test binary: RSA generation is slow under -race.
var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	edKey    ed25519.PrivateKey
)

func testKeys(t testing.TB) (*rsa.PrivateKey, ed25519.PrivateKey) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if _, edKey, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
	return rsaKey, edKey
}

// keyRecord is the DKIM key TXT record for pub (RFC 6376 §3.6.1, RFC
// 8463 §4), in zone-file syntax: split into quoted character-strings of
// at most 255 octets, as a DNS TXT record must be.
func keyRecord(t testing.TB, pub crypto.PublicKey) string {
	t.Helper()
	var v string
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, err := x509.MarshalPKIXPublicKey(k)
		if err != nil {
			t.Fatal(err)
		}
		v = "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	case ed25519.PublicKey:
		v = "v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(k)
	default:
		t.Fatalf("key type %T", pub)
	}
	var parts []string
	for len(v) > 200 {
		parts = append(parts, `"`+v[:200]+`"`)
		v = v[200:]
	}
	parts = append(parts, `"`+v+`"`)
	return strings.Join(parts, " ")
}

// baseZone serves everything the tests share; the key records are added
// by testZone.
const baseZone = `
; SPF
pass.example.org.          TXT "v=spf1 ip4:192.0.2.0/24 ip6:2001:db8::/32 -all"
xn--mller-kva.example.org. TXT "v=spf1 ip4:192.0.2.0/24 -all"
softfail.example.org.      TXT "v=spf1 ip4:192.0.2.0/24 ~all"
neutral.example.org.       TXT "v=spf1 ?all"
nospf.example.org.         A   192.0.2.80
nospf.example.org.         TXT "some other TXT record"
servfail.example.org.      TXT "v=spf1 -all"
slow.example.org.          TXT "v=spf1 -all"
two.example.org.           TXT "v=spf1 -all"
two.example.org.           TXT "v=spf1 +all"
void.example.org.          TXT "v=spf1 a:nx1.example.org a:nx2.example.org a:nx3.example.org +all"
many.example.org.          TXT "v=spf1 include:i1.example.org include:i2.example.org include:i3.example.org include:i4.example.org include:i5.example.org include:i6.example.org include:i7.example.org include:i8.example.org include:i9.example.org include:i10.example.org include:i11.example.org +all"
i1.example.org.            TXT "v=spf1 ?ip4:198.18.0.1"
i2.example.org.            TXT "v=spf1 ?ip4:198.18.0.1"
i3.example.org.            TXT "v=spf1 ?ip4:198.18.0.1"
i4.example.org.            TXT "v=spf1 ?ip4:198.18.0.1"
i5.example.org.            TXT "v=spf1 ?ip4:198.18.0.1"
i6.example.org.            TXT "v=spf1 ?ip4:198.18.0.1"
i7.example.org.            TXT "v=spf1 ?ip4:198.18.0.1"
i8.example.org.            TXT "v=spf1 ?ip4:198.18.0.1"
i9.example.org.            TXT "v=spf1 ?ip4:198.18.0.1"
i10.example.org.           TXT "v=spf1 ?ip4:198.18.0.1"
i11.example.org.           TXT "v=spf1 ?ip4:198.18.0.1"
mech.example.org.          TXT "v=spf1 mx a:host.example.org include:inc.example.org exists:%{ir}.allow.example.org redirect=redir.example.org"
mech.example.org.          MX  10 mx1.example.org.
mx1.example.org.           A   198.51.100.10
host.example.org.          AAAA 2001:db8:5::1
inc.example.org.           TXT "v=spf1 ip4:203.0.113.0/28 -all"
77.113.0.203.allow.example.org. A 127.0.0.2
redir.example.org.         TXT "v=spf1 ip4:203.0.113.99 ~all"
ptr.example.org.           TXT "v=spf1 ptr -all"
ptrmacro.example.org.      TXT "v=spf1 exists:%{p}.p.example.org -all"
unknown.p.example.org.     A   127.0.0.2
macro.example.org.         TXT "v=spf1 exists:%{l}.%{o}.%{d2}.%{h}.%{v}.%{i}.m.example.org -all"
j-doe.macro.example.org.example.org.mail.example.net.in-addr.192.0.2.7.m.example.org. A 127.0.0.2
mail.example.net.          TXT "v=spf1 ip4:192.0.2.7 -all"
broken.example.org.        TXT "v=spf1 ip4:192.0.2.300 -all"

; DMARC, DKIM-aligned and SPF-aligned cases
example.com.               TXT "v=spf1 ip4:192.0.2.0/24 -all"
mail.example.com.          TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.example.com.        TXT "v=DMARC1; p=reject; rua=mailto:d@example.com"
esp.example.net.           TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.none.example.org.   TXT "v=DMARC1; p=none"
_dmarc.example.net.        TXT "v=DMARC1; p=none; sp=reject"
_dmarc.pct.example.org.    TXT "v=DMARC1; p=reject; pct=50"
_dmarc.upper.example.org.  TXT "v=DMARC1; P=Reject"
_dmarc.bad.example.org.    TXT "v=DMARC1; p=bogus"
_dmarc.slip-ri.example.org. TXT "v=DMARC1; p=reject; ri=86400s"
_dmarc.slip-rf.example.org. TXT "v=DMARC1; p=reject; rf=iodef"
_dmarc.order.example.org.  TXT "v=DMARC1; rua=mailto:d@order.example.org; p=reject"
_dmarc.typo.example.org.   TXT "v=DMARC1; p=rejct; rua=mailto:d@typo.example.org"
_dmarc.badsp.test.         TXT "v=DMARC1; p=reject; sp=bogus; pct=abc; adkim=q; aspf=strict"
_dmarc.two.example.org.    TXT "v=DMARC1; p=reject"
_dmarc.two.example.org.    TXT "v=DMARC1; p=none"
_dmarc.other.example.org.  TXT "v=spf1 -all"
_dmarc.other.example.org.  TXT "v=DMARC1; p=reject"
_dmarc.strict.example.org. TXT "v=DMARC1; p=reject; adkim=s; aspf=s"
mail.strict.example.org.   TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.tempfail.example.org. TXT "v=DMARC1; p=reject"
_dmarc.timeout.example.org.  TXT "v=DMARC1; p=reject"
_dmarc.example.co.uk.      TXT "v=DMARC1; p=reject"
mail.example.co.uk.        TXT "v=spf1 ip4:192.0.2.0/24 -all"
_dmarc.co.uk.              TXT "v=DMARC1; p=none"
`

// testZone is baseZone plus DKIM keys: selectors rsa and ed at
// example.com, sub.example.com, strict.example.org and esp.example.net,
// and keys that fail to resolve at broken.example.com.
func testZone(t testing.TB) string {
	t.Helper()
	rk, ek := testKeys(t)
	var b strings.Builder
	b.WriteString(baseZone)
	for _, d := range []string{"example.com", "sub.example.com", "strict.example.org", "sub.strict.example.org", "esp.example.net", "tempfail.example.org"} {
		fmt.Fprintf(&b, "rsa._domainkey.%s. TXT %s\n", d, keyRecord(t, &rk.PublicKey))
		fmt.Fprintf(&b, "ed._domainkey.%s. TXT %s\n", d, keyRecord(t, ek.Public()))
	}
	return b.String()
}

// newTestChecker starts a DNS server for testZone and returns a Checker
// using it; opts adjusts the options before New.
func newTestChecker(t testing.TB, opts func(*Options)) (*Checker, *dnstest.Server) {
	t.Helper()
	srv := dnstest.NewServer(t, testZone(t))
	o := Options{
		AuthServID: testID,
		Resolver:   dnsutil.New(srv.Addr(), 3*time.Second),
		Timeout:    10 * time.Second,
	}
	if opts != nil {
		opts(&o)
	}
	return New(o), srv
}

// impatient returns a Checker on srv whose lookups time out after
// 300 ms, for the tests of unanswered questions (dnstest.Server.Drop).
// The other tests allow seconds, as -race on a busy machine needs.
func impatient(srv *dnstest.Server) *Checker {
	return New(Options{AuthServID: testID, Resolver: dnsutil.New(srv.Addr(), 300*time.Millisecond)})
}

const (
	ipIn     = "192.0.2.1"    // inside the SPF ranges of the zone
	ipOut    = "198.51.100.1" // outside all of them
	testHelo = "client.example.net"
)

func addr(s string) netip.Addr { return netip.MustParseAddr(s) }

// message builds a CRLF message with the given From value.
func message(from string) string {
	return "From: " + from + "\r\n" +
		"To: bob@example.net\r\n" +
		"Subject: authentication test\r\n" +
		"Date: Mon, 2 Jan 2006 15:04:05 +0000\r\n" +
		"Message-ID: <1@example.com>\r\n" +
		"\r\n" +
		"Hello,\r\n\r\nthis is the body.\r\n"
}

type signer struct {
	key      crypto.Signer
	domain   string
	selector string
	expires  time.Time
}

// sign prepends a go-msgauth DKIM signature (relaxed/relaxed) to msg.
func sign(t testing.TB, msg string, s signer) string {
	t.Helper()
	var out bytes.Buffer
	err := dkim.Sign(&out, strings.NewReader(msg), &dkim.SignOptions{
		Domain: s.domain, Selector: s.selector, Signer: s.key,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed,
		BodyCanonicalization:   dkim.CanonicalizationRelaxed,
		HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-ID"},
		Expiration:             s.expires,
	})
	if err != nil {
		t.Fatalf("signing: %v", err)
	}
	return out.String()
}

func rsaSigner(t testing.TB, domain string) signer {
	rk, _ := testKeys(t)
	return signer{key: rk, domain: domain, selector: "rsa"}
}

func edSigner(t testing.TB, domain string) signer {
	_, ek := testKeys(t)
	return signer{key: ek, domain: domain, selector: "ed"}
}

var bTag = regexp.MustCompile(`(?:^|;)[ \t\r\n]*b[ \t\r\n]*=([^;]*)`)

// bProps returns the header.b property of every DKIM-Signature field of
// msg, top first, as the header shows it: eight characters, quoted when
// they contain '/' or '=' (not allowed in an RFC 2045 token).
func bProps(t testing.TB, msg string) []string {
	t.Helper()
	var out []string
	hdr, _, _ := strings.Cut(msg, "\r\n\r\n")
	hdr = strings.NewReplacer("\r\n ", " ", "\r\n\t", "\t").Replace(hdr)
	for _, l := range strings.Split(hdr, "\r\n") {
		name, v, _ := strings.Cut(l, ":")
		if !strings.EqualFold(name, "DKIM-Signature") {
			continue
		}
		m := bTag.FindStringSubmatch(v)
		if m == nil {
			t.Fatalf("no b= in %q", v)
		}
		b := strings.Join(strings.Fields(m[1]), "")[:8]
		if strings.ContainsAny(b, "/=") {
			b = `"` + b + `"`
		}
		out = append(out, b)
	}
	return out
}

// ar joins result lines into the header field as it must be written.
func ar(results ...string) string {
	return "Authentication-Results: " + testID + ";\r\n\t" + strings.Join(results, ";\r\n\t") + "\r\n"
}

func check(t testing.TB, c *Checker, ip, helo, mailFrom, msg string) *Verdict {
	t.Helper()
	v, err := c.Check(context.Background(), addr(ip), helo, mailFrom, nil, strings.NewReader(msg))
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return v
}

func wantHeader(t testing.TB, v *Verdict, want string) {
	t.Helper()
	if v.Header != want {
		t.Errorf("header:\n got %q\nwant %q", v.Header, want)
	}
}

// requireTool finds an external program. Under CI=true a missing one
// fails the test; locally the test is skipped.
func requireTool(t testing.TB, name string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	for _, dir := range []string{"/usr/bin", "/usr/sbin", "/sbin"} {
		if _, err := os.Stat(dir + "/" + name); err == nil {
			return dir + "/" + name
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s not installed (required in CI)", name)
	}
	t.Skipf("%s not installed; skipping", name)
	return ""
}
