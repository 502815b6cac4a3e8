package dkim

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"
)

// requireTool fails the test in CI, where every tool must be installed
// (test.sh installs them), and skips it elsewhere.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		// Debian puts some tools in sbin, outside a user's PATH.
		for _, dir := range []string{"/usr/sbin", "/sbin", "/usr/bin"} {
			if _, serr := os.Stat(dir + "/" + name); serr == nil {
				return dir + "/" + name
			}
		}
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not installed (required in CI)", name)
		}
		t.Skipf("%s not installed; skipping", name)
	}
	return p
}

// Keys are generated once per test binary: RSA generation is slow under
// -race.
var (
	keysOnce sync.Once
	rsaKey   *rsa.PrivateKey
	rsaKey2  *rsa.PrivateKey
	edKey    ed25519.PrivateKey
)

func genKeys(t testing.TB) {
	keysOnce.Do(func() {
		var err error
		if rsaKey, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if rsaKey2, err = rsa.GenerateKey(rand.Reader, 2048); err != nil {
			panic(err)
		}
		if _, edKey, err = ed25519.GenerateKey(rand.Reader); err != nil {
			panic(err)
		}
	})
}

func testRSAKey(t testing.TB) *rsa.PrivateKey        { genKeys(t); return rsaKey }
func testEd25519Key(t testing.TB) ed25519.PrivateKey { genKeys(t); return edKey }

// testKeys are the keys of example.com used across the signing tests:
// an RSA and an Ed25519 key (dual signing, RFC 8463 §5 recommends it while
// verifiers catch up) and a second RSA key (rotation: old and new
// selector both sign during the overlap).
func testKeys(t testing.TB) (rsaK, edK, rsa2K Key) {
	genKeys(t)
	return Key{Domain: "example.com", Selector: "rsa2026", Signer: rsaKey},
		Key{Domain: "example.com", Selector: "ed2026", Signer: edKey},
		Key{Domain: "example.com", Selector: "rsa2027", Signer: rsaKey2}
}

// zone maps record names to TXT values for the keys given.
func zone(t testing.TB, keys ...Key) map[string]string {
	z := map[string]string{}
	for _, k := range keys {
		txt, err := TXTRecord(k.Signer.Public())
		if err != nil {
			t.Fatal(err)
		}
		z[RecordName(k.Domain, k.Selector)] = txt
	}
	return z
}

func lookupIn(z map[string]string) func(string) ([]string, error) {
	return func(name string) ([]string, error) {
		if txt, ok := z[strings.TrimSuffix(name, ".")]; ok {
			return []string{txt}, nil
		}
		return nil, fmt.Errorf("NXDOMAIN %s", name)
	}
}

// verifyGo verifies every signature with go-msgauth and returns the
// verification errors, nil meaning pass, in header order.
func verifyGo(t testing.TB, msg []byte, z map[string]string) []error {
	t.Helper()
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(msg), &msgauth.VerifyOptions{LookupTXT: lookupIn(z)})
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	errs := make([]error, len(vs))
	for i, v := range vs {
		errs[i] = v.Err
	}
	return errs
}

func signed(t testing.TB, msg string, keys []Key, o Options) []byte {
	t.Helper()
	sigs, err := Sign(strings.NewReader(msg), keys, o)
	if err != nil {
		t.Fatalf("Sign: %v", err)
	}
	if len(sigs) != len(keys) {
		t.Fatalf("%d signatures for %d keys", len(sigs), len(keys))
	}
	for i, s := range sigs {
		if !strings.HasPrefix(s, "DKIM-Signature: ") || !strings.HasSuffix(s, "\r\n") {
			t.Fatalf("signature %d not a complete field: %q", i, s)
		}
		if !strings.Contains(s, "s="+keys[i].Selector+";") {
			t.Fatalf("signature %d is not key %d's (s=%s): %q", i, i, keys[i].Selector, s)
		}
		for _, l := range strings.Split(strings.TrimSuffix(s, "\r\n"), "\r\n") {
			if len(l) > 78 && !strings.Contains(l, "h=") {
				t.Errorf("signature line of %d octets: %q", len(l), l)
			}
		}
	}
	return []byte(strings.Join(sigs, "") + msg)
}

const simpleMsg = "From: Alice <alice@example.com>\r\n" +
	"To: Bob <bob@example.org>\r\n" +
	"Subject: Hello\r\n" +
	"Date: Mon, 02 Mar 2026 10:00:00 +0100\r\n" +
	"Message-ID: <1@example.com>\r\n" +
	"\r\n" +
	"Hi Bob.\r\n"

// messageVariants are the shapes of mail the relay meets: each must sign
// and verify, with go-msgauth here and with the independent verifiers in
// interop_test.go.
func messageVariants() map[string]string {
	// RFC 5322 §3.6 requires Date (libopendkim refuses messages without
	// it as a syntax error), so every variant has one.
	const date = "Date: Mon, 02 Mar 2026 10:00:00 +0100\r\nMessage-ID: <v@example.com>\r\n"
	var many strings.Builder
	many.WriteString("From: alice@example.com\r\nTo: bob@example.org\r\nSubject: many headers\r\n" + date)
	for i := range 300 {
		fmt.Fprintf(&many, "X-Header-%d: value %d\r\n", i, i)
	}
	many.WriteString("List-Id: <list.example.com>\r\nList-Unsubscribe: <mailto:u@example.com>\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\nbody\r\n")

	long := strings.Repeat("0123456789", 500) // 5000 octets: beyond RFC 5322's 998
	return map[string]string{
		"plain": simpleMsg,
		"8bit": "From: =?UTF-8?Q?J=C3=BCrgen?= <juergen@example.com>\r\nTo: b@example.org\r\n" + date +
			"Subject: Grüße\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n" +
			"Content-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln – ½ € \xff\xfe raw octets\r\n",
		"long-lines":          "From: a@example.com\r\nTo: b@example.org\r\nSubject: long\r\n" + date + "\r\n" + long + "\r\n" + long + "  \r\n",
		"lf-only":             strings.ReplaceAll(simpleMsg, "\r\n", "\n") + "second line\n\n\n",
		"no-trailing-newline": "From: a@example.com\r\nTo: b@example.org\r\nSubject: x\r\n" + date + "\r\nline one\r\nno newline at the end",
		"many-headers":        many.String(),
		// Fields RFC 5322 §3.6 lets repeat: trace fields, Comments, Keywords.
		"duplicates": "Received: from a by b; Mon, 02 Mar 2026 10:00:00 +0100\r\n" +
			"Received: from c by d; Mon, 02 Mar 2026 09:59:00 +0100\r\n" +
			"From: a@example.com\r\nTo: b@example.org\r\nSubject: dup\r\n" + date +
			"Comments: one\r\nComments: two\r\nKeywords: a\r\nKeywords: b\r\n\r\nbody\r\n",
		// Two To fields break RFC 5322 §3.6 (at most one), but such mail
		// exists and is signed; DKIM itself copes (RFC 6376 §5.4.2).
		"duplicate-to": "Received: from a by b; Mon, 02 Mar 2026 10:00:00 +0100\r\n" +
			"Received: from c by d; Mon, 02 Mar 2026 09:59:00 +0100\r\n" +
			"From: a@example.com\r\nTo: b@example.org\r\nTo: c@example.net\r\nSubject: dup\r\n" + date + "\r\nbody\r\n",
		"folded-whitespace": "From: a@example.com\r\nTo: b@example.org,\r\n\tc@example.net\r\n" + date +
			"Subject:   lots   of\r\n   space \t\r\n\r\nbody  with\t trailing space   \r\n\r\n\r\n",
		"empty-body": "From: a@example.com\r\nTo: b@example.org\r\nSubject: empty\r\n" + date + "\r\n",
		// RFC 6532 header fields of an SMTPUTF8 message: UTF-8 addresses
		// and text, unencoded. DKIM signs them as octets (RFC 8616 §4).
		"smtputf8": "From: Jörg Müller <jörg@müller.example>\r\nTo: Anna <anna@bücher.example>\r\n" + date +
			"Subject: Grüße aus Köln\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nHallo Anna, schöne Grüße.\r\n",
	}
}

func TestSignVerifies(t *testing.T) {
	rsaK, edK, _ := testKeys(t)
	z := zone(t, rsaK, edK)
	for _, can := range []string{"relaxed", "simple"} {
		for _, keys := range [][]Key{{rsaK}, {edK}, {rsaK, edK}} {
			for name, msg := range messageVariants() {
				t.Run(fmt.Sprintf("%s/%d-keys-%s/%s", can, len(keys), keys[0].Selector, name), func(t *testing.T) {
					out := signed(t, msg, keys, Options{HeaderCanonicalization: can, BodyCanonicalization: can})
					if !bytes.Contains(out, []byte("c="+can+"/"+can+";")) {
						t.Errorf("c= is not %s/%s", can, can)
					}
					errs := verifyGo(t, out, z)
					if len(errs) != len(keys) {
						t.Fatalf("%d signatures verified, want %d", len(errs), len(keys))
					}
					for i, err := range errs {
						if err != nil {
							t.Errorf("signature %d: %v\n%s", i, err, out)
						}
					}
				})
			}
		}
	}
}

func TestSignDefaults(t *testing.T) {
	rsaK, edK, _ := testKeys(t)
	out := signed(t, simpleMsg, []Key{rsaK, edK}, Options{})
	s := string(out)
	for _, want := range []string{"a=rsa-sha256;", "a=ed25519-sha256;", "c=relaxed/relaxed;", "d=example.com;"} {
		if !strings.Contains(s, want) {
			t.Errorf("signature lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, " x=") {
		t.Errorf("x= without Expiration:\n%s", s)
	}
}

func TestSignRotation(t *testing.T) {
	rsaK, _, rsa2K := testKeys(t)
	out := signed(t, simpleMsg, []Key{rsa2K, rsaK}, Options{})
	// During rotation receivers may see either selector; each alone must
	// verify, so check with only one record published at a time.
	for _, k := range []Key{rsaK, rsa2K} {
		errs := verifyGo(t, out, zone(t, k))
		ok := 0
		for _, err := range errs {
			if err == nil {
				ok++
			}
		}
		if ok != 1 {
			t.Errorf("with only %s published: %d of %d signatures pass, want 1", k.Selector, ok, len(errs))
		}
	}
}

func hValue(t *testing.T, sig string) string {
	t.Helper()
	unfolded := strings.ReplaceAll(sig, "\r\n", "")
	_, rest, ok := strings.Cut(unfolded, " h=")
	if !ok {
		t.Fatalf("no h= in %q", sig)
	}
	h, _, _ := strings.Cut(rest, ";")
	return strings.ReplaceAll(strings.ReplaceAll(h, " ", ""), "\t", "")
}

func TestHeaderList(t *testing.T) {
	msg := "Received: x\r\nFrom: a@example.com\r\nTo: b@example.org\r\nTo: c@example.org\r\n" +
		"Subject: s\r\nX-Foo: 1\r\nlist-id: <l>\r\nList-Post: <mailto:l@x>\r\nList;Evil: 1\r\n\r\nb\r\n"
	_, edK, _ := testKeys(t)
	for _, tc := range []struct {
		name string
		o    Options
		want string
	}{
		{"defaults", Options{},
			"From:From:Sender:Reply-To:To:To:To:Cc:Subject:Subject:MIME-Version:Content-Type:Content-Transfer-Encoding:list-id:List-Post"},
		{"only From over-signed", Options{Oversign: []string{}},
			"From:From:To:To:Subject:list-id:List-Post"},
		{"custom", Options{Headers: []string{"subject", "X-Foo"}, Oversign: []string{"X-Bar", "List-*"}},
			"From:From:subject:X-Foo:X-Bar:list-id:list-id:List-Post:List-Post"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sigs, err := Sign(strings.NewReader(msg), []Key{edK}, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			if got := hValue(t, sigs[0]); got != tc.want {
				t.Errorf("h=%s\n want %s", got, tc.want)
			}
		})
	}
	if _, err := Sign(strings.NewReader(msg), []Key{edK}, Options{Headers: []string{"Bad;Name"}}); err == nil {
		t.Error("Sign accepted a header name with ';'")
	}
}

// TestOversigning checks RFC 6376 §8.15's attack: a field added above the
// signed ones must break the signature when its name is over-signed, and
// must not when the name is not signed at all.
func TestOversigning(t *testing.T) {
	rsaK, edK, _ := testKeys(t)
	z := zone(t, rsaK, edK)
	for _, tc := range []struct {
		name  string
		o     Options
		add   string
		valid bool
	}{
		{"second From", Options{}, "From: Mallory <mallory@evil.example>\r\n", false},
		{"second From, From not listed", Options{Oversign: []string{}, Headers: []string{"Subject"}}, "From: mallory@evil.example\r\n", false},
		{"second Subject", Options{}, "Subject: Pay now\r\n", false},
		{"new Reply-To", Options{}, "Reply-To: mallory@evil.example\r\n", false},
		{"new Cc", Options{}, "Cc: mallory@evil.example\r\n", false},
		{"Subject not over-signed", Options{Oversign: []string{}}, "Subject: Pay now\r\n", true},
		{"unlisted X-Foo", Options{}, "X-Foo: bar\r\n", true},
		{"Received", Options{}, "Received: from relay by mx; Mon, 02 Mar 2026 10:01:00 +0100\r\n", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			for _, can := range []string{"relaxed", "simple"} {
				tc.o.HeaderCanonicalization, tc.o.BodyCanonicalization = can, can
				sigs, err := Sign(strings.NewReader(simpleMsg), []Key{rsaK, edK}, tc.o)
				if err != nil {
					t.Fatal(err)
				}
				good := []byte(strings.Join(sigs, "") + simpleMsg)
				for i, err := range verifyGo(t, good, z) {
					if err != nil {
						t.Fatalf("%s: untouched message, signature %d: %v", can, i, err)
					}
				}
				// Added between the signatures and the original header,
				// where a later hop or an attacker prepends fields.
				tampered := []byte(strings.Join(sigs, "") + tc.add + simpleMsg)
				for i, err := range verifyGo(t, tampered, z) {
					if (err == nil) != tc.valid {
						t.Errorf("%s: signature %d after adding %q: err = %v, want valid=%v", can, i, tc.add, err, tc.valid)
					}
				}
			}
		})
	}
}

func TestSignExpiration(t *testing.T) {
	rsaK, edK, _ := testKeys(t)
	z := zone(t, rsaK, edK)
	now := time.Now()
	out := signed(t, simpleMsg, []Key{edK}, Options{Expiration: 72 * time.Hour, Now: func() time.Time { return now }})
	want := fmt.Sprintf("x=%d;", now.Add(72*time.Hour+time.Second-1).Truncate(time.Second).Unix())
	if !bytes.Contains(bytes.ReplaceAll(out, []byte("\r\n "), nil), []byte(want)) {
		t.Errorf("want %s in\n%s", want, out)
	}
	if errs := verifyGo(t, out, z); errs[0] != nil {
		t.Errorf("verify: %v", errs[0])
	}
	// An expired signature fails: x= in the past (the fake clock lags).
	past := now.Add(-2 * time.Hour)
	out = signed(t, simpleMsg, []Key{edK}, Options{Expiration: time.Hour, Now: func() time.Time { return past }})
	if errs := verifyGo(t, out, z); errs[0] == nil {
		t.Error("expired signature verified")
	}
	if _, err := Sign(strings.NewReader(simpleMsg), []Key{edK}, Options{Expiration: -time.Second}); err == nil {
		t.Error("negative expiration accepted")
	}
}

func TestSignErrors(t *testing.T) {
	rsaK, edK, _ := testKeys(t)
	for _, tc := range []struct {
		name string
		msg  string
		keys []Key
		o    Options
	}{
		{"no keys", simpleMsg, nil, Options{}},
		{"no From", "To: b@example.org\r\n\r\nx\r\n", []Key{edK}, Options{}},
		{"two From", "From: a@example.com\r\nFrom: c@example.com\r\n\r\nx\r\n", []Key{edK}, Options{}},
		{"bad canonicalization", simpleMsg, []Key{edK}, Options{BodyCanonicalization: "nowsp"}},
		{"no selector", simpleMsg, []Key{{Domain: "example.com", Signer: edKey}}, Options{}},
		{"no signer", simpleMsg, []Key{{Domain: "example.com", Selector: "s"}}, Options{}},
		{"unsupported key", simpleMsg, []Key{{Domain: "example.com", Selector: "s", Signer: fakeSigner{}}}, Options{}},
		{"header too large", "From: a@example.com\r\nX: " + strings.Repeat("x", MaxHeaderBytes) + "\r\n\r\n", []Key{rsaK}, Options{}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if sigs, err := Sign(strings.NewReader(tc.msg), tc.keys, tc.o); err == nil {
				t.Errorf("Sign succeeded: %q", sigs)
			}
		})
	}
}

type fakeSigner struct{}

func (fakeSigner) Public() crypto.PublicKey { return "fake" }
func (fakeSigner) Sign(_ io.Reader, _ []byte, _ crypto.SignerOpts) ([]byte, error) {
	return nil, fmt.Errorf("fake")
}

func TestSignHeaderOnly(t *testing.T) {
	_, edK, _ := testKeys(t)
	z := zone(t, edK)
	for _, msg := range []string{
		"From: a@example.com\r\nSubject: no body\r\n",
		"From: a@example.com\r\nSubject: no body, no newline",
	} {
		out := signed(t, msg, []Key{edK}, Options{})
		// go-msgauth needs the empty line to find the end of the header;
		// it is not part of what is signed, so adding it for the check is
		// what any receiver does.
		if strings.HasSuffix(msg, "\n") {
			out = append(out, "\r\n"...)
		} else {
			out = append(out, "\r\n\r\n"...)
		}
		if errs := verifyGo(t, out, z); errs[0] != nil {
			t.Errorf("%q: %v", msg, errs[0])
		}
	}
}

// TestSignIdentityIDN: a From: domain in U-labels is the signing domain
// of a key configured in A-labels; i= then uses A-labels (RFC 8616 §4),
// and a UTF-8 local part, which a tag value cannot hold unencoded, gets
// no i= (the domain alone is the identity).
func TestSignIdentityIDN(t *testing.T) {
	signer, _, err := GenerateKey("ed25519", 0)
	if err != nil {
		t.Fatal(err)
	}
	txt, _ := TXTRecord(signer.Public())
	key := Key{Domain: "xn--bcher-kva.example", Selector: "id", Signer: signer}
	for _, c := range []struct{ from, wantI string }{
		{"Jorg <jorg@Bücher.example>", "jorg@xn--bcher-kva.example"},
		{"jorg@xn--bcher-kva.example", "jorg@xn--bcher-kva.example"},
		{"Jörg <jörg@bücher.example>", ""},
	} {
		msg := "From: " + c.from + "\r\nTo: a@b.test\r\nSubject: Grüße\r\nDate: Mon, 2 Jan 2006 15:04:05 +0000\r\n\r\nbody\r\n"
		if dom, err := FromDomain([]byte(msg)); err != nil || dom != key.Domain {
			t.Errorf("FromDomain = %q, %v", dom, err)
		}
		sigs, err := Sign(strings.NewReader(msg), []Key{key}, Options{IdentityFromHeader: true})
		if err != nil {
			t.Fatal(err)
		}
		unfolded := strings.NewReplacer("\r\n\t", "", "\r\n ", "").Replace(sigs[0])
		if !strings.Contains(unfolded, "d=xn--bcher-kva.example;") {
			t.Errorf("%s: d= is not the A-label form: %s", c.from, unfolded)
		}
		if c.wantI != "" && !strings.Contains(unfolded, "i="+c.wantI) || c.wantI == "" && strings.Contains(unfolded, "i=") {
			t.Errorf("%s: want i=%q in %s", c.from, c.wantI, unfolded)
		}
		vs, err := msgauth.VerifyWithOptions(strings.NewReader(sigs[0]+msg), &msgauth.VerifyOptions{
			LookupTXT: func(string) ([]string, error) { return []string{txt}, nil },
		})
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			t.Errorf("%s: does not verify: %v %+v", c.from, err, vs)
		}
	}
}

// With IdentityFromHeader, i= names the From: address when it is in the
// signing domain (or below), and the signature still verifies; an address
// outside the domain gets no i= at all (it would invalidate the signature).
func TestSignIdentityFromHeader(t *testing.T) {
	signer, _, err := GenerateKey("ed25519", 0)
	if err != nil {
		t.Fatal(err)
	}
	txt, _ := TXTRecord(signer.Public())
	key := Key{Domain: "example.com", Selector: "id", Signer: signer}
	for _, c := range []struct{ from, wantI string }{
		{"otrs@example.com", "otrs@example.com"},
		{"Otrs.Team@Mail.Example.COM", "Otrs.Team@mail.example.com"},
		{"someone@elsewhere.test", ""},
	} {
		msg := "From: " + c.from + "\r\nTo: a@b.test\r\nSubject: id\r\nDate: Mon, 2 Jan 2006 15:04:05 +0000\r\n\r\nbody\r\n"
		sigs, err := Sign(strings.NewReader(msg), []Key{key}, Options{IdentityFromHeader: true})
		if err != nil {
			t.Fatal(err)
		}
		unfolded := strings.NewReplacer("\r\n\t", "", "\r\n ", "").Replace(sigs[0])
		if c.wantI != "" && !strings.Contains(unfolded, "i="+c.wantI) {
			t.Errorf("%s: signature lacks i=%s: %s", c.from, c.wantI, unfolded)
		}
		if c.wantI == "" && strings.Contains(unfolded, "i=") {
			t.Errorf("%s: unexpected i= in %s", c.from, unfolded)
		}
		vs, err := msgauth.VerifyWithOptions(strings.NewReader(sigs[0]+msg), &msgauth.VerifyOptions{
			LookupTXT: func(string) ([]string, error) { return []string{txt}, nil },
		})
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			t.Errorf("%s: does not verify: %v %+v", c.from, err, vs)
		}
	}
}
