package encrypt_test

import (
	"bytes"
	"crypto/tls"
	"net/http"
	"net/url"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
	"securerelay/encrypt"
)

var wkdOnly = []encrypt.Source{encrypt.SourceWKD}

// wkdZone: partner.example has an openpgpkey subdomain (advanced method),
// direct.example has none (direct method), mailonly.example has no web
// server at all.
const wkdZone = `
partner.example. A 127.0.0.1
openpgpkey.partner.example. A 127.0.0.1
direct.example. A 127.0.0.1
mailonly.example. MX 10 mx.mailonly.example.
mx.mailonly.example. A 127.0.0.1
flaky.example. A 127.0.0.1
`

type wkdEnv struct {
	k   *testKeys
	srv *wkdServer
	dns *dnstest.Server
	clk *clock
	o   encrypt.Options
}

func newWKDEnv(t *testing.T) *wkdEnv {
	t.Helper()
	k := getKeys(t)
	srv := newWKDServer(t)
	dnsSrv, res := newDNS(t, wkdZone)
	clk := newClock()
	return &wkdEnv{k: k, srv: srv, dns: dnsSrv, clk: clk, o: encrypt.Options{
		WKD: true, HTTPClient: srv.client(), Resolver: res, Now: clk.Now,
		CacheFile: filepath.Join(t.TempDir(), "keys.json"),
	}}
}

// publish serves key (binary, as WKD requires) for addr by method
// "advanced" or "direct" and returns the URL.
func (e *wkdEnv) publish(t *testing.T, addr, method string, body []byte) string {
	t.Helper()
	adv, direct, err := encrypt.WKDURLs(addr)
	if err != nil {
		t.Fatal(err)
	}
	raw := adv
	if method == "direct" {
		raw = direct
	}
	u, _ := url.Parse(raw)
	e.srv.serve(u.Host, u.Path, 200, body)
	return raw
}

func (e *wkdEnv) lookup(t *testing.T, d *encrypt.Directory, addr string) encrypt.Result {
	t.Helper()
	return d.Lookup(t.Context(), encrypt.Query{Address: addr, Sources: wkdOnly})
}

// Our URLs are gpg's (gpg-wks-client, the reference implementation), and
// the draft's own example.
func TestWKDURLsMatchGnuPG(t *testing.T) {
	adv, direct, err := encrypt.WKDURLs("Joe.Doe@Example.ORG")
	if err != nil {
		t.Fatal(err)
	}
	if want := "https://openpgpkey.example.org/.well-known/openpgpkey/example.org/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"; adv != want {
		t.Errorf("advanced URL\n got %s\nwant %s (WKD draft section 3.1)", adv, want)
	}
	if want := "https://example.org/.well-known/openpgpkey/hu/iy9q119eutrkn8s1mk4r39qejnbu3n5q?l=Joe.Doe"; direct != want {
		t.Errorf("direct URL\n got %s\nwant %s", direct, want)
	}
	tool := "/usr/lib/gnupg/gpg-wks-client"
	if _, err := exec.LookPath(tool); err != nil {
		requireTool(t, "gpg-wks-client", "gnupg")
	}
	for _, addr := range []string{"Joe.Doe@Example.ORG", "alice@partner.example", "x+tag@a.example", "Mixed.Case@B.example"} {
		out, err := exec.Command(tool, "--print-wkd-url", addr).Output()
		if err != nil {
			t.Fatalf("gpg-wks-client --print-wkd-url %s: %v", addr, err)
		}
		ours, _, err := encrypt.WKDURLs(addr)
		if err != nil {
			t.Fatal(err)
		}
		theirs := strings.TrimSpace(string(out))
		// gpg lower-cases the l parameter; the draft keeps it as given.
		o, _, _ := strings.Cut(ours, "?")
		g, _, _ := strings.Cut(theirs, "?")
		if o != g {
			t.Errorf("%s:\n ours %s\n gpg  %s", addr, ours, theirs)
		}
	}
}

func TestWKDAdvanced(t *testing.T) {
	e := newWKDEnv(t)
	u := e.publish(t, "Alice@partner.example", "advanced", e.k.binary(t, e.k.alice))
	d := newDirectory(t, e.o)
	res := e.lookup(t, d, "Alice@partner.example")
	if res.Key == nil || res.Key.Fingerprint != e.k.alice || res.Key.Source != encrypt.SourceWKD || res.Key.Origin != u {
		t.Fatalf("%s; want alice's key from %s", describe(res), u)
	}
	reqs := e.srv.requestLog()
	if len(reqs) != 1 || !strings.HasPrefix(reqs[0], "openpgpkey.partner.example/.well-known/openpgpkey/partner.example/hu/") || !strings.HasSuffix(reqs[0], "?l=Alice") {
		t.Errorf("requests %q; want one advanced request with l=Alice", reqs)
	}
}

// Without the openpgpkey subdomain (NXDOMAIN) the direct method is used;
// an armoured answer (against the draft, but seen) is read too.
func TestWKDDirect(t *testing.T) {
	e := newWKDEnv(t)
	u := e.publish(t, "bob@direct.example", "direct", e.k.armored(t, e.k.bob))
	// Bob's key says bob@partner.example: refused for bob@direct.example.
	d := newDirectory(t, e.o)
	res := e.lookup(t, d, "bob@direct.example")
	if res.Key != nil {
		t.Fatalf("key with another user ID used: %s", describe(res))
	}
	if why := refusedFor(res, e.k.bob); len(why) != 1 || !strings.Contains(why[0], "no user ID with bob@direct.example") {
		t.Errorf("refused %q, want the user ID reason\n%s", why, describe(res))
	}
	if reqs := e.srv.requestLog(); len(reqs) != 1 || !strings.HasPrefix(reqs[0], "direct.example/.well-known/openpgpkey/hu/") {
		t.Errorf("requests %q; want one direct request", reqs)
	}
	if u == "" {
		t.Fatal("no URL")
	}
	var sawNX bool
	for _, q := range e.dns.Queries() {
		sawNX = sawNX || q.Name == "openpgpkey.direct.example"
	}
	if !sawNX {
		t.Error("the openpgpkey subdomain was not looked up before choosing the direct method")
	}
}

// The subdomain exists: its 404 is the answer, the direct method is not
// tried (WKD draft: only a missing subdomain allows it).
func TestWKDAdvancedNotFoundIsFinal(t *testing.T) {
	e := newWKDEnv(t)
	e.publish(t, addrAlice, "direct", e.k.binary(t, e.k.alice))
	d := newDirectory(t, e.o)
	res := e.lookup(t, d, addrAlice)
	if res.Key != nil || res.Temporary != nil || !slices.Equal(res.Searched, wkdOnly) {
		t.Errorf("%s; want no key and no temporary error", describe(res))
	}
	for _, r := range e.srv.requestLog() {
		if strings.HasPrefix(r, "partner.example/") {
			t.Errorf("direct method tried although the subdomain exists: %s", r)
		}
	}
}

func TestWKDNoWebServer(t *testing.T) {
	e := newWKDEnv(t)
	d := newDirectory(t, e.o)
	res := e.lookup(t, d, "x@mailonly.example")
	if res.Key != nil || res.Temporary != nil {
		t.Errorf("%s; want no key, definitively", describe(res))
	}
	if reqs := e.srv.requestLog(); len(reqs) != 0 {
		t.Errorf("HTTP requests %q for a domain without addresses", reqs)
	}
}

// Refused keys from WKD: revoked, expired, signing-only.
func TestWKDRefusesUnusableKeys(t *testing.T) {
	e := newWKDEnv(t)
	d := newDirectory(t, e.o)
	for addr, tc := range map[string]struct{ fpr, reason string }{
		addrCarol: {e.k.carol, "key revoked"},
		addrDave:  {e.k.dave, "key expired"},
		addrErin:  {e.k.erin, "no encryption subkey"},
	} {
		e.publish(t, addr, "advanced", e.k.binary(t, tc.fpr))
		res := e.lookup(t, d, addr)
		if why := refusedFor(res, tc.fpr); res.Key != nil || len(why) != 1 || !strings.HasPrefix(why[0], tc.reason) {
			t.Errorf("%s: %s; want refused: %s", addr, describe(res), tc.reason)
		}
	}
}

func TestWKDTemporaryFailures(t *testing.T) {
	e := newWKDEnv(t)
	e.srv.selfSigned["openpgpkey.partner.example"] = true
	e.o.RemoteTimeout = 300 * time.Millisecond
	d := newDirectory(t, e.o)

	// A certificate the CA did not issue: nothing is believed.
	e.publish(t, addrAlice, "advanced", e.k.binary(t, e.k.alice))
	res := e.lookup(t, d, addrAlice)
	if res.Key != nil || res.Temporary == nil || !strings.Contains(res.Temporary.Error(), "certificate") {
		t.Errorf("self-signed WKD server: %s; want a temporary certificate error", describe(res))
	}

	// HTTP 503 (flaky.example has no openpgpkey subdomain).
	_, direct, _ := encrypt.WKDURLs("bob@flaky.example")
	du, _ := url.Parse(direct)
	e.srv.serve(du.Host, du.Path, 503, []byte("busy"))
	res = e.lookup(t, d, "bob@flaky.example")
	if res.Key != nil || res.Temporary == nil || !strings.Contains(res.Temporary.Error(), "503") {
		t.Errorf("HTTP 503: %s; want a temporary error", describe(res))
	}
	// The failure is remembered for a minute: no new request.
	n := len(e.srv.requestLog())
	if res := e.lookup(t, d, "bob@flaky.example"); res.Temporary == nil || len(e.srv.requestLog()) != n {
		t.Errorf("second lookup within a minute: %s, %d requests; want the remembered failure, no request", describe(res), len(e.srv.requestLog())-n)
	}
	// Then the server recovers (with a key that is not bob's at flaky).
	e.srv.serve(du.Host, du.Path, 200, e.k.binary(t, e.k.bob))
	e.clk.advance(2 * time.Minute)
	if res := e.lookup(t, d, "bob@flaky.example"); res.Temporary != nil || len(refusedFor(res, e.k.bob)) != 1 {
		t.Errorf("after recovery: %s; want bob's key refused for its user ID", describe(res))
	}

	// A server that does not answer in time.
	e.srv.serveSlow(du.Host, du.Path, 10*time.Second)
	e.clk.advance(24 * time.Hour)
	start := time.Now()
	res = e.lookup(t, d, "bob@flaky.example")
	if res.Temporary == nil || time.Since(start) > 5*time.Second {
		t.Errorf("slow server: %s after %v; want a temporary error within the time-out", describe(res), time.Since(start))
	}

	// DNS trouble for the subdomain: no guessing the direct method.
	e.dns.ServFail("openpgpkey.direct.example")
	n = len(e.srv.requestLog())
	res = e.lookup(t, d, "x@direct.example")
	if res.Temporary == nil || len(e.srv.requestLog()) != n {
		t.Errorf("SERVFAIL for the subdomain: %s; want a temporary error and no request", describe(res))
	}
}

func TestWKDOversizedAnswer(t *testing.T) {
	e := newWKDEnv(t)
	d := newDirectory(t, e.o)
	e.publish(t, addrAlice, "advanced", bytes.Repeat(e.k.binary(t, e.k.alice), 2<<20/500))
	res := e.lookup(t, d, addrAlice)
	if res.Key != nil || len(res.Refused) != 1 || !strings.Contains(res.Refused[0].Reason, "answer larger than") {
		t.Errorf("%s; want the answer refused for its size", describe(res))
	}
}

// Answers are cached, positive ones longer than negative ones, and the
// cache survives a restart.
func TestWKDCache(t *testing.T) {
	e := newWKDEnv(t)
	e.o.PositiveTTL, e.o.NegativeTTL = 6*time.Hour, 30*time.Minute
	d := newDirectory(t, e.o)
	e.publish(t, addrAlice, "advanced", e.k.binary(t, e.k.alice))

	requests := func() int { return len(e.srv.requestLog()) }
	want := func(d *encrypt.Directory, addr, fpr string, reqs int, why string) {
		t.Helper()
		res := e.lookup(t, d, addr)
		got := ""
		if res.Key != nil {
			got = res.Key.Fingerprint
		}
		if got != fpr || requests() != reqs {
			t.Errorf("%s: %s, %d requests; want key %q after %d requests", why, describe(res), requests(), fpr, reqs)
		}
	}
	want(d, addrAlice, e.k.alice, 1, "first lookup")
	want(d, addrAlice, e.k.alice, 1, "cached")
	want(d, addrBob, "", 2, "bob not published")
	e.publish(t, addrBob, "advanced", e.k.binary(t, e.k.bob))
	want(d, addrBob, "", 2, "negative answer cached")

	// Restart: the answers come from the file.
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	d2 := newDirectory(t, e.o)
	want(d2, addrAlice, e.k.alice, 2, "after restart")
	want(d2, addrBob, "", 2, "negative answer after restart")

	e.clk.advance(31 * time.Minute)
	want(d2, addrBob, e.k.bob, 3, "negative answer expired")
	want(d2, addrAlice, e.k.alice, 3, "positive answer still cached")
	e.clk.advance(6 * time.Hour)
	want(d2, addrAlice, e.k.alice, 4, "positive answer expired")
}

// WKD's only authentication is the certificate: a client that does not
// check it is refused at start.
func TestWKDNeedsVerifyingClient(t *testing.T) {
	_, res := newDNS(t, wkdZone)
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if _, err := encrypt.New(encrypt.Options{WKD: true, HTTPClient: c, Resolver: res}); err == nil || !strings.Contains(err.Error(), "does not verify certificates") {
		t.Errorf("New with InsecureSkipVerify: %v", err)
	}
	if _, err := encrypt.New(encrypt.Options{WKD: true, Resolver: res}); err == nil {
		t.Error("New with WKD and no HTTP client: no error")
	}
}
