package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	netsmtp "net/smtp"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
	"securerelay/internal/testutil"
)

// The test MX servers, each on its own loopback address and all on one
// port, so that --port reaches every one as port 25 would.
const (
	ipGood      = "127.0.0.2" // good.mx.test: test-CA certificate, REQUIRETLS advertised
	ipPlain     = "127.0.0.3" // plain.mx.test: no STARTTLS
	ipSelf      = "127.0.0.4" // selfsigned.mx.test: self-signed certificate
	ipWrongName = "127.0.0.5" // wrongname.mx.test: certificate for another name
	ipExpired   = "127.0.0.6" // expired.mx.test: expired certificate
	ipOld       = "127.0.0.7" // old.mx.test: TLS 1.0 and 1.1 only
	ipNoReqTLS  = "127.0.0.8" // noreq.mx.test: good certificate, no REQUIRETLS
	ipBadTLS    = "127.0.0.9" // badtls.mx.test: STARTTLS offered, no cipher suite in common
)

const tlsZone = `
good.mx.test.       A 127.0.0.2
relay.test.         A 127.0.0.2
plain.mx.test.      A 127.0.0.3
selfsigned.mx.test. A 127.0.0.4
wrongname.mx.test.  A 127.0.0.5
expired.mx.test.    A 127.0.0.6
old.mx.test.        A 127.0.0.7
noreq.mx.test.      A 127.0.0.8
badtls.mx.test.     A 127.0.0.9

partner.test. MX 10 good.mx.test.
partner.test. MX 20 plain.mx.test.
partner.test. MX 30 selfsigned.mx.test.
partner.test. MX 40 wrongname.mx.test.
partner.test. MX 50 expired.mx.test.
partner.test. MX 60 old.mx.test.
partner.test. MX 70 badtls.mx.test.

may.test. MX 10 plain.mx.test.
may.test. MX 20 selfsigned.mx.test.
may.test. MX 30 old.mx.test.
may.test. MX 40 badtls.mx.test.

good.test.    MX 10 good.mx.test.
a.sub.test.   MX 10 good.mx.test.
bank.test.    MX 10 good.mx.test.
hostrule.test. MX 10 plain.mx.test.
broken.test.  MX 10 good.mx.test.
null.test.    MX 0 .
`

// testMX is the shared recording peer as a probe's target; a probe must
// send it no MAIL, RCPT or DATA.
type testMX struct{ *testutil.Peer }

func (m testMX) sent() int { return len(m.Mails()) + len(m.Rcpts()) + m.Datas() }

func serveTestMX(t *testing.T, ln net.Listener, tc *tls.Config, requireTLS bool) testMX {
	t.Helper()
	return testMX{testutil.StartPeer(t, testutil.PeerOptions{Listener: ln, Domain: "mx.test", TLS: tc,
		RequireTLS: requireTLS, Timeout: 10 * time.Second})}
}

// listenSamePort listens on one port on every ip.
func listenSamePort(t *testing.T, ips []string) ([]net.Listener, string) {
	t.Helper()
	for range 20 {
		first, err := net.Listen("tcp", ips[0]+":0")
		if err != nil {
			t.Fatal(err)
		}
		_, port, _ := net.SplitHostPort(first.Addr().String())
		lns := []net.Listener{first}
		for _, ip := range ips[1:] {
			ln, err := net.Listen("tcp", net.JoinHostPort(ip, port))
			if err != nil {
				break
			}
			lns = append(lns, ln)
		}
		if len(lns) == len(ips) {
			return lns, port
		}
		for _, ln := range lns {
			ln.Close()
		}
	}
	t.Fatalf("no port free on all of %v", ips)
	return nil, ""
}

// leaf issues a server certificate with testutil's maker, valid for 60
// days up to notAfter, without the CA in the chain (what the probe output
// below expects); a nil ca makes it self-signed.
func leaf(t *testing.T, ca *testutil.CA, notAfter time.Time, names ...string) tls.Certificate {
	t.Helper()
	return ca.Issue(t, testutil.CertSpec{Names: names, NotBefore: notAfter.Add(-60 * 24 * time.Hour), NotAfter: notAfter, LeafOnly: true})
}

type tlsFixture struct {
	t    *testing.T
	dir  string
	dns  *dnstest.Server
	port string
	mx   map[string]testMX // by IP
}

func newTLSFixture(t *testing.T) *tlsFixture {
	t.Helper()
	f := &tlsFixture{t: t, dir: t.TempDir(), dns: dnstest.NewServer(t, tlsZone), mx: map[string]testMX{}}
	f.dns.ServFail("broken.test")
	ca := testutil.NewCA(t, "securerelay test CA")
	if err := os.WriteFile(filepath.Join(f.dir, "ca.pem"), ca.PEM, 0o600); err != nil {
		t.Fatal(err)
	}
	soon := time.Now().Add(20 * 24 * time.Hour)
	srvTLS := func(c tls.Certificate) *tls.Config { return &tls.Config{Certificates: []tls.Certificate{c}} }
	old := srvTLS(leaf(t, ca, soon, "old.mx.test"))
	old.MinVersion, old.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
	// RC4 is offered by no client of ours, so the handshake must fail.
	bad := srvTLS(leaf(t, ca, soon, "badtls.mx.test"))
	bad.MaxVersion, bad.CipherSuites = tls.VersionTLS12, []uint16{tls.TLS_RSA_WITH_RC4_128_SHA}
	servers := []struct {
		ip         string
		tls        *tls.Config
		requireTLS bool
	}{
		{ipGood, srvTLS(leaf(t, ca, soon, "good.mx.test", "relay.test")), true},
		{ipPlain, nil, false},
		{ipSelf, srvTLS(leaf(t, nil, soon, "selfsigned.mx.test")), false},
		{ipWrongName, srvTLS(leaf(t, ca, soon, "someone-else.test")), false},
		{ipExpired, srvTLS(leaf(t, ca, time.Now().Add(-time.Hour), "expired.mx.test")), false},
		{ipOld, old, false},
		{ipNoReqTLS, srvTLS(leaf(t, ca, soon, "noreq.mx.test")), false},
		{ipBadTLS, bad, false},
	}
	ips := make([]string, len(servers))
	for i, s := range servers {
		ips[i] = s.ip
	}
	lns, port := listenSamePort(t, ips)
	f.port = port
	for i, s := range servers {
		f.mx[s.ip] = serveTestMX(t, lns[i], s.tls, s.requireTLS)
	}
	return f
}

// config writes a configuration with the given outbound.tls lines (each
// indented by four spaces already) and returns its path.
func (f *tlsFixture) config(tlsLines string) string {
	f.t.Helper()
	return f.configWith("", tlsLines)
}

// configWith adds dnsLines (indented by two spaces) to the dns: section.
func (f *tlsFixture) configWith(dnsLines, tlsLines string) string {
	f.t.Helper()
	conf := fmt.Sprintf(`hostname: relay.example.test
state_dir: %[1]s
dns:
  resolver: %[2]s
  timeout: 2s
%[5]slisteners:
  - {name: mx, address: "127.0.0.1:0", role: inbound}
domains:
  example.test: {deliver_to: "maildir:%[1]s/mail"}
outbound:
  routes:
    - {match: routed.test, next_hop: "smtp://relay.test:%[3]s"}
    - {match: .noreq.test, next_hop: "smtp://noreq.mx.test:%[3]s"}
  tls:
    ca_file: %[1]s/ca.pem
%[4]s`, f.dir, f.dns.Addr(), f.port, tlsLines, dnsLines)
	path := filepath.Join(f.t.TempDir(), "c.yaml")
	if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
		f.t.Fatal(err)
	}
	return path
}

// noMailSent checks the point of probe: not one server saw MAIL, RCPT or
// DATA.
func (f *tlsFixture) noMailSent() {
	f.t.Helper()
	for ip, m := range f.mx {
		if n := m.sent(); n != 0 {
			f.t.Errorf("test MX %s received %d MAIL/RCPT/DATA commands from the probe", ip, n)
		}
	}
}

func wantLines(t *testing.T, out string, want ...string) {
	t.Helper()
	for _, w := range want {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

// block is the probe report for one address, from its title line to the
// next empty line.
func block(t *testing.T, out, host, ip string) string {
	t.Helper()
	for b := range strings.SplitSeq(out, "\n\n") {
		if strings.HasPrefix(b, host+" ["+ip+"]:") {
			return b + "\n"
		}
	}
	t.Fatalf("no probe block for %s [%s] in:\n%s", host, ip, out)
	return ""
}

// The test server's counters must be able to fail: a client that does
// send MAIL FROM is counted.
func TestTestMXCountsMail(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := serveTestMX(t, ln, nil, false)
	c, err := netsmtp.Dial(ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Mail("a@example.test"); err != nil {
		t.Fatal(err)
	}
	if err := c.Rcpt("b@example.test"); err != nil {
		t.Fatal(err)
	}
	c.Quit()
	if len(m.Mails()) != 1 || m.sent() != 2 {
		t.Errorf("mails %d, sent %d; want 1, 2", len(m.Mails()), m.sent())
	}
}

func TestTLSPolicyExplainDefaultMay(t *testing.T) {
	f := newTLSFixture(t)
	conf := f.config("")
	code, out, errOut := runCLI("tls-policy", "explain", "--config", conf, "may.test")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, out,
		"destination: may.test\n",
		"next hop:    the MX hosts of may.test, looked up through "+f.dns.Addr(),
		"message:     REQUIRETLS no, TLS-Required: No no\n",
		"policy for may.test:\n  destination may.test\n  rules: none configured\n  DANE: disabled\n  MTA-STS: disabled\n  domain level: may from default\n",
		"MX hosts in the order delivery tries them (equal preferences shuffled): plain.mx.test selfsigned.mx.test old.mx.test badtls.mx.test\n",
		"  MX host plain.mx.test:\n    result: level may from default, min TLS 1.0\n",
		"summary:\n  plain.mx.test: level may (default), min TLS 1.0, clear text when STARTTLS is missing or fails\n"+
			"  selfsigned.mx.test: level may (default), min TLS 1.0, clear text when STARTTLS is missing or fails\n"+
			"  old.mx.test: level may (default), min TLS 1.0, clear text when STARTTLS is missing or fails\n"+
			"  badtls.mx.test: level may (default), min TLS 1.0, clear text when STARTTLS is missing or fails\n",
	)
	// The Decide steps are printed once, not again under each MX host.
	if n := strings.Count(out, "domain level:"); n != 1 {
		t.Errorf("Decide's steps printed %d times:\n%s", n, out)
	}
	// explain looks, it does not connect.
	for ip, m := range f.mx {
		if n := m.Conns(); n != 0 {
			t.Errorf("explain connected to %s %d times", ip, n)
		}
	}
}

func TestTLSPolicyExplainRules(t *testing.T) {
	f := newTLSFixture(t)
	conf := f.config(`    min_version: "1.2"
    policies:
      - {match: partner.test, level: verify, fallback: bounce}
      - {match: .sub.test, level: encrypt, min_version: "1.3"}
      - {match: "[plain.mx.test]", level: encrypt}
      - {match: bank.test, level: secure, names: [mail.bank.test]}
`)
	cases := []struct {
		domain string
		want   []string
	}{
		{"partner.test", []string{
			"  rules: policy rule 1 (match partner.test) matches partner.test: level verify, fallback bounce\n",
			"  domain level: verify from policy rule 1 (match partner.test)\n",
			"  MX host good.mx.test:\n    result: level verify from policy rule 1 (match partner.test), min TLS 1.2, names good.mx.test\n",
			"  good.mx.test: level verify (policy rule 1 (match partner.test)), min TLS 1.2, fallback bounce\n",
			"  old.mx.test: level verify (policy rule 1 (match partner.test)), min TLS 1.2, fallback bounce\n",
		}},
		{"a.sub.test", []string{
			"  rules: policy rule 2 (match .sub.test) matches a.sub.test: level encrypt, min TLS 1.3\n",
			"  good.mx.test: level encrypt (policy rule 2 (match .sub.test)), min TLS 1.3, fallback defer\n",
		}},
		// A host rule decides per MX host, after no domain rule matched.
		{"hostrule.test", []string{
			"  rules: no rule matches hostrule.test\n",
			"  domain level: may from default\n",
			"  MX host plain.mx.test:\n    rules: policy rule 3 (match host:plain.mx.test) matches host plain.mx.test: level encrypt\n",
			"  plain.mx.test: level encrypt (policy rule 3 (match host:plain.mx.test)), min TLS 1.2, fallback defer\n",
		}},
		{"bank.test", []string{
			"    result: level secure from policy rule 4 (match bank.test), min TLS 1.2, names bank.test .bank.test mail.bank.test\n",
		}},
	}
	for _, tc := range cases {
		code, out, errOut := runCLI("tls-policy", "explain", tc.domain, "--config", conf)
		if code != 0 {
			t.Errorf("%s: exit %d, stderr %q\n%s", tc.domain, code, errOut, out)
			continue
		}
		wantLines(t, out, tc.want...)
	}
}

func TestTLSPolicyExplainRequireTLS(t *testing.T) {
	f := newTLSFixture(t)
	conf := f.config("")

	// MX delivery: REQUIRETLS raises may to verify, and without DNSSEC or
	// MTA-STS nothing vouches for the MX names, so every host is refused.
	code, out, errOut := runCLI("tls-policy", "explain", "--config", conf, "--requiretls", "may.test")
	if code != 0 {
		t.Fatalf("exit %d, stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, out,
		"message:     REQUIRETLS yes, TLS-Required: No no\n",
		"  REQUIRETLS: the message requires verified TLS (RFC 8689); no rule can lower that\n",
		"  domain level: verify from REQUIRETLS (RFC 8689), raised from may (default)\n",
		"  MX host plain.mx.test:\n    REQUIRETLS: raised to verify\n    result: plain.mx.test must not be used: REQUIRETLS needs an authenticated MX host",
		"    the sender would be told: the message required verified encryption (REQUIRETLS)",
		"  plain.mx.test: refused (mx-not-authenticated): REQUIRETLS needs an authenticated MX host",
	)

	// A configured next hop: the policy is the next-hop host's, and the
	// relay is named by the configuration, so it only needs verify.
	code, out, errOut = runCLI("tls-policy", "explain", "--config", conf, "--requiretls", "routed.test")
	if code != 0 {
		t.Fatalf("routed: exit %d, stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, out,
		"next hop:    smtp://relay.test:"+f.port+" (outbound.routes[0] (match routed.test)); the policy is decided for the next-hop host relay.test, as delivery does (no rule names routed.test)\n",
		"policy for relay.test:\n  destination relay.test\n",
		"  relay relay.test:\n    DANE and MTA-STS: not applied to a configured relay\n    REQUIRETLS: raised to verify\n    REQUIRETLS: MX host authenticated: a relay named in the configuration\n",
		"  relay.test: level verify (REQUIRETLS (RFC 8689), raised from may (default)), min TLS 1.2, fallback defer, REQUIRETLS passed on\n",
	)
	if strings.Contains(out, "MX hosts in the order") {
		t.Errorf("a routed domain's MX hosts were looked up:\n%s", out)
	}

	// TLS-Required: No: ignored unless the configuration honours it, and
	// never against a rule.
	_, out, _ = runCLI("tls-policy", "explain", "--config", conf, "--tls-required-no", "good.test")
	wantLines(t, out, "  TLS-Required: No: ignored, the configuration does not allow it\n")
	honour := f.config("    tls_required_no: honour\n    policies:\n      - {match: partner.test, level: verify}\n")
	_, out, _ = runCLI("tls-policy", "explain", "--config", honour, "--tls-required-no", "partner.test")
	wantLines(t, out,
		"  TLS-Required: No: honoured; DANE and MTA-STS are set aside (rules and the default still apply)\n",
		"  good.mx.test: level verify (policy rule 1 (match partner.test)), min TLS 1.2, fallback defer\n")

	// A rule for a routed domain travels with it through the relay, as
	// delivery does: decided for the domain, checked against the relay.
	routedRule := f.config("    policies:\n      - {match: routed.test, level: secure}\n")
	_, out, _ = runCLI("tls-policy", "explain", "--config", routedRule, "routed.test")
	wantLines(t, out,
		"next hop:    smtp://relay.test:"+f.port+" (outbound.routes[0] (match routed.test)); a rule names routed.test, so its policy is checked against this next hop, as delivery does\n",
		"policy for routed.test:\n  destination routed.test\n",
		"  relay.test: level secure (policy rule 1 (match routed.test))")
}

func TestTLSPolicyExplainErrors(t *testing.T) {
	f := newTLSFixture(t)
	conf := f.config("")
	cases := []struct {
		name string
		args []string
		code int
		out  string // in stdout
		err  string // in stderr
	}{
		{"servfail", []string{"broken.test"}, exitDNS, "MX lookup of broken.test failed (delivery would retry): ", ""},
		{"nxdomain", []string{"nowhere.test"}, exitDNS, "MX lookup of nowhere.test found no mail server (delivery would bounce): ", ""},
		{"null MX", []string{"null.test"}, exitDNS, "found no mail server (delivery would bounce): null.test: domain accepts no mail (null MX", ""},
		{"maildir", []string{"example.test"}, 0, "next hop:    the local maildir " + f.dir + "/mail (domains.example.test.deliver_to): nothing crosses a network, so no TLS policy applies, not even a rule naming example.test\n", ""},
		{"no domain", nil, 2, "", "want exactly one DOMAIN, got 0"},
		{"two domains", []string{"a.test", "b.test"}, 2, "", "want exactly one DOMAIN, got 2"},
		{"bad domain", []string{"bad domain.test"}, 2, "no policy: tls policy for ", ""},
	}
	for _, tc := range cases {
		code, out, errOut := runCLI(append([]string{"tls-policy", "explain", "--config", conf}, tc.args...)...)
		if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.err) {
			t.Errorf("%s: exit %d (want %d), stdout %q (want %q), stderr %q (want %q)", tc.name, code, tc.code, out, tc.out, errOut, tc.err)
		}
	}

	// DANE: an MX RRset without the AD bit leaves DANE out; a failed
	// DNSSEC lookup leaves the policy unknown, so delivery defers.
	dane := f.configWith("  dnssec_validating: true\n", "    dane: true\n")
	code, out, errOut := runCLI("tls-policy", "explain", "--config", dane, "may.test")
	if code != 0 {
		t.Errorf("dane may.test: exit %d, stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, out, "  DNSSEC: MX RRset of may.test is not validated (no AD bit): DANE does not apply\n", "  domain level: may from default\n")
	code, out, errOut = runCLI("tls-policy", "explain", "--config", dane, "broken.test")
	if code != exitDNS {
		t.Errorf("dane broken.test: exit %d, want %d; stderr %q\n%s", code, exitDNS, errOut, out)
	}
	wantLines(t, out, "  DNSSEC: MX lookup failed: ",
		"no policy for broken.test (dns): DNSSEC lookup of the MX records failed, so whether DANE applies is unknown: ",
		"delivery would be deferred until the lookup succeeds\n")

	bad := f.config("    policies:\n      - {match: partner.test, level: fingerprint}\n")
	code, _, errOut = runCLI("tls-policy", "explain", "--config", bad, "partner.test")
	if code != 1 || !strings.Contains(errOut, "outbound.tls.policies[0]") {
		t.Errorf("contradictory rule: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI("tls-policy", "explain", "partner.test"); code != 2 || !strings.Contains(errOut, "--config FILE is required") {
		t.Errorf("no --config: exit %d, stderr %q", code, errOut)
	}
	if code, _, errOut := runCLI("tls-policy", "frob"); code != 2 || !strings.Contains(errOut, `unknown subcommand "frob"`) {
		t.Errorf("unknown subcommand: exit %d, stderr %q", code, errOut)
	}
}

func TestTLSPolicyProbeVerify(t *testing.T) {
	f := newTLSFixture(t)
	conf := f.config("    policies:\n      - {match: partner.test, level: verify}\n")
	code, out, errOut := runCLI("tls-policy", "probe", "--config", conf, "--port", f.port, "--timeout", "10s", "partner.test")
	if code != 1 {
		t.Fatalf("exit %d, want 1; stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, block(t, out, "good.mx.test", ipGood),
		"  policy         level verify from policy rule 1 (match partner.test), min TLS 1.2, names good.mx.test\n",
		"  STARTTLS       offered\n",
		"  TLS            TLS1.3 TLS_",
		"  subject        CN=good.mx.test\n",
		"  SANs           DNS:good.mx.test DNS:relay.test\n",
		"  issuer         CN=securerelay test CA\n",
		"  chain          verifies against the system's roots and "+f.dir+"/ca.pem\n",
		"  host name      certificate names good.mx.test\n",
		"  REQUIRETLS     advertised\n",
		"  result         policy met (required verify, achieved verify)\n",
	)
	wantLines(t, block(t, out, "plain.mx.test", ipPlain),
		"  STARTTLS    NOT offered\n",
		"  TLS         none: the session stays in clear text\n",
		"  result      policy NOT met: no STARTTLS offered\n")
	wantLines(t, block(t, out, "selfsigned.mx.test", ipSelf),
		"  TLS            handshake ended by the policy's certificate check (see result)\n",
		"  issuer         CN=selfsigned.mx.test\n",
		"  chain          does NOT verify against ",
		"  host name      certificate names selfsigned.mx.test\n",
		"  result         policy NOT met: certificate not trusted: ")
	wantLines(t, block(t, out, "wrongname.mx.test", ipWrongName),
		"  SANs           DNS:someone-else.test\n",
		"  chain          verifies against ",
		"  host name      certificate does NOT name wrongname.mx.test\n",
		"  result         policy NOT met: certificate name mismatch: it names someone-else.test, accepted are wrongname.mx.test\n")
	wantLines(t, block(t, out, "expired.mx.test", ipExpired),
		" (EXPIRED)\n",
		"  result         policy NOT met: certificate expired or not yet valid: ")
	wantLines(t, block(t, out, "old.mx.test", ipOld),
		"  STARTTLS  offered\n",
		"  TLS       handshake failed: ",
		"  result    policy NOT met: no TLS version in common: the minimum is TLS 1.2")
	wantLines(t, block(t, out, "badtls.mx.test", ipBadTLS),
		"  STARTTLS  offered\n",
		"  TLS       handshake failed: ",
		"  result    policy NOT met: handshake failed: ")
	wantLines(t, out, "\n6 of 7 next-hop addresses do NOT meet the policy\n")
	for _, ip := range []string{ipGood, ipPlain, ipSelf, ipWrongName, ipExpired, ipOld, ipBadTLS} {
		if f.mx[ip].Conns() != 1 {
			t.Errorf("test MX %s: %d connections, want 1", ip, f.mx[ip].Conns())
		}
	}
	f.noMailSent()

	// The MX that meets the policy alone: exit 0.
	code, out, errOut = runCLI("tls-policy", "probe", "--config", conf, "--port", f.port, "good.test")
	if code != 0 {
		t.Fatalf("good.test: exit %d, stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, out, "policy met (required may, achieved verify)\n", "\nall 1 next-hop addresses meet the policy\n")
	f.noMailSent()
}

// may is met by clear text, by an untrusted certificate and by TLS 1.1;
// what was achieved is still reported.
func TestTLSPolicyProbeMay(t *testing.T) {
	f := newTLSFixture(t)
	conf := f.config("")
	code, out, errOut := runCLI("tls-policy", "probe", "--config", conf, "--port", f.port, "may.test")
	if code != 0 {
		t.Fatalf("exit %d, want 0; stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, block(t, out, "plain.mx.test", ipPlain), "policy met (required may, achieved none)\n")
	wantLines(t, block(t, out, "selfsigned.mx.test", ipSelf),
		"  TLS            TLS1.3 TLS_",
		"  chain          does NOT verify against ",
		"policy met (required may, achieved encrypt)\n")
	wantLines(t, block(t, out, "old.mx.test", ipOld),
		"  TLS            TLS1.1 TLS_ECDHE_ECDSA_",
		"policy met (required may, achieved verify)\n")
	// A failed handshake: delivery would reconnect in clear text.
	wantLines(t, block(t, out, "badtls.mx.test", ipBadTLS),
		"  TLS       handshake failed: ",
		"  result    policy met (level may): delivery would reconnect and send in clear text\n")
	wantLines(t, out, "\nall 4 next-hop addresses meet the policy\n")
	f.noMailSent()
}

func TestTLSPolicyProbeRequireTLS(t *testing.T) {
	f := newTLSFixture(t)
	conf := f.config("")

	code, out, errOut := runCLI("tls-policy", "probe", "--config", conf, "--requiretls", "routed.test")
	if code != 0 {
		t.Fatalf("routed.test: exit %d, want 0; stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, block(t, out, "relay.test", ipGood),
		"  policy         level verify from REQUIRETLS (RFC 8689), raised from may (default), min TLS 1.2, names relay.test, REQUIRETLS\n",
		"  host name      certificate names relay.test\n",
		"  REQUIRETLS     advertised\n",
		"  result         policy met (required verify, achieved verify)\n")

	// The route's port is the configuration's; --port is for MX hosts.
	code, out, errOut = runCLI("tls-policy", "probe", "--config", conf, "--requiretls", "--port", "1", "x.noreq.test")
	if code != 1 {
		t.Fatalf("x.noreq.test: exit %d, want 1; stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, block(t, out, "noreq.mx.test", ipNoReqTLS),
		"  REQUIRETLS     not advertised\n",
		"  result         policy NOT met: the server does not advertise REQUIRETLS\n")

	// MX hosts that REQUIRETLS refuses are reported, not contacted.
	code, out, errOut = runCLI("tls-policy", "probe", "--config", conf, "--requiretls", "--port", f.port, "good.test")
	if code != 1 {
		t.Fatalf("good.test: exit %d, want 1; stderr %q\n%s", code, errOut, out)
	}
	wantLines(t, out,
		"good.mx.test (not contacted)\n  result  policy NOT met: delivery would not use this host: TLS policy verify for good.test not met by good.mx.test",
		"1 of 1 next-hop addresses do NOT meet the policy\n")
	if n := f.mx[ipGood].Conns(); n != 1 {
		t.Errorf("good.mx.test: %d connections, want 1 (routed.test's only)", n)
	}
	f.noMailSent()
}

// The built binary behaves as run() does: the exit status reaches the
// shell. One run is enough; the rest of the tests call run() directly.
func TestTLSPolicyProbeBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	f := newTLSFixture(t)
	conf := f.config("    policies:\n      - {match: partner.test, level: verify}\n")
	bin := filepath.Join(t.TempDir(), "securerelay")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	out, err := exec.Command(bin, "tls-policy", "probe", "--config", conf, "--port", f.port, "partner.test").Output()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("binary: err %v, want exit 1\n%s", err, out)
	}
	wantLines(t, string(out), "policy met (required verify, achieved verify)", "policy NOT met: no STARTTLS offered")
	f.noMailSent()
}

// check-config warns about route credentials that need a verified next
// hop (auth.tls: verify, the default) where the TLS policy for that host
// does not authenticate the server, and about nothing else; a route that
// accepts less says so and is not warned about. auth.tls contradicting
// allow_insecure_auth is an error.
func TestRouteAuthWarnings(t *testing.T) {
	dir := t.TempDir()
	write := func(routes, policies string) string {
		conf := fmt.Sprintf(`hostname: relay.example.test
state_dir: %[1]s
postmaster: postmaster@example.test
dns: {resolver: "127.0.0.1:53", timeout: 2s}
listeners:
  - {name: mx, address: "127.0.0.1:0", role: inbound}
domains:
  example.test: {deliver_to: "maildir:%[1]s/mail"}
outbound:
  routes:
%[2]s  tls:
    policies:
%[3]s`, dir, routes, policies)
		path := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(path, []byte(conf), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	conf := write(`    - {match: a.test, next_hop: "smtp://smtp.isp.test:587", auth: {username: u, password: p}}
    - {match: b.test, next_hop: "smtp://verified.isp.test:587", auth: {username: u, password: p}}
    - {match: c.test, next_hop: "smtp://cheap.isp.test:587", auth: {username: u, password: p, tls: encrypt}}
    - {match: d.test, next_hop: "smtp://old.isp.test:25", auth: {username: u, password: p, allow_insecure_auth: true}}
    - {match: e.test, next_hop: "smtp://smtp.isp.test:587"}
    - match: f.test
      next_hop: "smtp://pinned-tls-none.isp.test:587"
      auth: {username: u, password: p, tls: verify}
`, `      - {match: "[verified.isp.test]", level: verify}
      - {match: "[pinned-tls-none.isp.test]", level: none}
`)
	code, out, errOut := runCLI("check-config", "--config", conf)
	if code != 0 || !strings.Contains(out, "OK") {
		t.Fatalf("check-config: exit %d\n%s%s", code, out, errOut)
	}
	var warnings []string
	for l := range strings.SplitSeq(strings.TrimSpace(errOut), "\n") {
		if l != "" {
			warnings = append(warnings, l)
		}
	}
	want := []string{
		"warning: " + conf + ":11: outbound.routes[0].auth: the credentials go out only inside TLS verified for smtp.isp.test (auth.tls: verify), but the TLS policy for smtp.isp.test is may (default)",
		"warning: " + conf + ":18: outbound.routes[5].auth: the credentials go out only inside TLS verified for pinned-tls-none.isp.test (auth.tls: verify), but the TLS policy for pinned-tls-none.isp.test is none (policy rule 2 (match host:pinned-tls-none.isp.test))",
	}
	if len(warnings) != len(want) {
		t.Fatalf("%d warnings, want %d:\n%s", len(warnings), len(want), errOut)
	}
	if !strings.Contains(warnings[0], `add {match: "[smtp.isp.test]", level: verify} to outbound.tls.policies`) ||
		!strings.Contains(warnings[1], "raise policy rule 2 (match host:pinned-tls-none.isp.test) to level: verify") {
		t.Errorf("the warnings do not say how to fix it:\n%s", errOut)
	}
	for i, w := range want {
		if !strings.HasPrefix(warnings[i], w) || !strings.Contains(warnings[i], "auth.tls: encrypt (a man in the middle can then read the password)") {
			t.Errorf("warning %d:\n%s\nwant it to start with\n%s", i, warnings[i], w)
		}
	}

	bad := write(`    - {match: a.test, next_hop: "smtp://smtp.isp.test:587", auth: {username: u, password: p, tls: verify, allow_insecure_auth: true}}
    - {match: b.test, next_hop: "smtp://smtp.isp.test:587", auth: {username: u, password: p, tls: none}}
`, "      []\n")
	code, _, errOut = runCLI("check-config", "--config", bad)
	if code != 1 || !strings.Contains(errOut, "outbound.routes[0].auth.tls: \"verify\" contradicts allow_insecure_auth: true") ||
		!strings.Contains(errOut, "outbound.routes[1].auth.tls: \"none\" is not allowed; use verify or encrypt") {
		t.Errorf("contradiction and bad value: exit %d, stderr:\n%s", code, errOut)
	}
}
