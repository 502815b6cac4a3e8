package e2e

// The outbound TLS policy (issue 7) end to end: the real relay delivers
// to test MX hosts on 127.0.0.x:25 that offer less than the destination
// requires, and must send them nothing; the inbound partner rule; and what
// our own listeners offer.
//
// Every deferral is observed as the queue's first "deferred" log line:
// retries are an hour apart, so an MX that failed the level is contacted
// once and can then be inspected.

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
	"securerelay/internal/testutil"
)

// policyCase is one destination of TestTLSPolicyEnforced.
type policyCase struct {
	name   string
	domain string
	mxHost string // default mx.<domain>
	ip     string // where mxHost points, port 25
	rule   string // the rest of the policy rule after match:
	tls    *tls.Config
	strip  bool // a STARTTLS-stripping proxy listens on ip, in front of the server

	want    string   // sent, deferred or bounced
	wantTLS bool     // for sent: the MX received it over TLS
	log     []string // in the queue's log line (tls_policy, dsn=, tls=)
	dsn     string   // for bounced: the sentence in the DSN
}

// TestTLSPolicyEnforced: per-partner rules against MX hosts that fall
// short in every way issue 7 lists. A host that fails the level gets no
// MAIL FROM and no byte of the message; the queue's log line, `queue list`
// and the DSN say why.
func TestTLSPolicyEnforced(t *testing.T) {
	requireTool(t, "swaks")
	ca := newTestCA(t)
	past := time.Now().Add(-48 * time.Hour)

	tls11 := func() *tls.Config {
		c := testutil.ServerTLS(testutil.SelfSigned(t, "mx.tls11.test", "mx.tls11-may.test"))
		c.MinVersion, c.MaxVersion = tls.VersionTLS10, tls.VersionTLS11
		return c
	}
	cases := []policyCase{
		{name: "no STARTTLS, encrypt", domain: "notls.test", ip: "127.0.0.31", rule: "level: encrypt",
			want: "deferred", log: []string{"required=encrypt", "achieved=none", "failure=no-starttls", "dsn=4.7.10"}},
		{name: "no STARTTLS, encrypt, fallback bounce", domain: "notls-bounce.test", ip: "127.0.0.30", rule: "level: encrypt, fallback: bounce",
			want: "bounced", log: []string{"failure=no-starttls", "dsn=5.7.10"},
			dsn: "the partner's mail server (mx.notls-bounce.test) did not offer the encryption that your organisation requires for notls-bounce.test."},
		{name: "handshake fails, encrypt", domain: "hs-fail.test", ip: "127.0.0.32", rule: "level: encrypt",
			tls:  &tls.Config{}, // STARTTLS offered, no certificate to hand out
			want: "deferred", log: []string{"required=encrypt", "failure=handshake", "dsn=4.7.10"}},
		{name: "handshake fails, may falls back to clear text", domain: "hs-may.test", ip: "127.0.0.33", rule: "level: may",
			tls:  &tls.Config{},
			want: "sent", wantTLS: false, log: []string{"required=may", "achieved=none"}},
		{name: "self-signed, verify", domain: "selfsigned.test", ip: "127.0.0.34", rule: "level: verify",
			tls:  testutil.ServerTLS(testutil.SelfSigned(t, "mx.selfsigned.test")),
			want: "deferred", log: []string{"required=verify", "failure=untrusted", "dsn=4.7.5"}},
		{name: "CA-issued with the MX name, verify", domain: "verified.test", ip: "127.0.0.35", rule: "level: verify",
			tls:  testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx.verified.test"}})),
			want: "sent", wantTLS: true, log: []string{"required=verify", "achieved=verify", "tls=\"TLS1.3"}},
		{name: "expired, verify", domain: "expired.test", ip: "127.0.0.36", rule: "level: verify",
			tls:  testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx.expired.test"}, NotBefore: past.Add(-time.Hour), NotAfter: past})),
			want: "deferred", log: []string{"required=verify", "failure=expired"}},
		{name: "wrong name, verify", domain: "wrongname.test", ip: "127.0.0.37", rule: "level: verify",
			tls:  testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx.someone-else.test"}})),
			want: "deferred", log: []string{"required=verify", "failure=name-mismatch"}},
		{name: "secure, certificate names only the MX host", domain: "secure-mx.test", mxHost: "mx.hoster-a.test", ip: "127.0.0.38",
			rule: "level: secure", tls: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx.hoster-a.test"}})),
			want: "deferred", log: []string{"required=secure", "failure=name-mismatch"}},
		{name: "secure, certificate names the domain", domain: "secure-dom.test", mxHost: "mx.hoster-b.test", ip: "127.0.0.39",
			rule: "level: secure", tls: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx.hoster-b.test", "secure-dom.test"}})),
			want: "sent", wantTLS: true, log: []string{"required=secure", "achieved=secure"}},
		{name: "TLS 1.0/1.1 only, encrypt", domain: "tls11.test", ip: "127.0.0.40", rule: "level: encrypt",
			tls: tls11(), want: "deferred", log: []string{"required=encrypt", "failure=tls-version", "dsn=4.7.10"}},
		// The same kind of server does work, at a level that allows it:
		// the deferral above is about the version, nothing else.
		{name: "TLS 1.0/1.1 only, may", domain: "tls11-may.test", ip: "127.0.0.41", rule: "level: may",
			tls: tls11(), want: "sent", wantTLS: true, log: []string{"required=may", "tls=\"TLS1.1"}},
		{name: "STARTTLS stripped, encrypt", domain: "stripped.test", ip: "127.0.0.42", rule: "level: encrypt", strip: true,
			tls:  testutil.ServerTLS(testutil.SelfSigned(t, "mx.stripped.test")),
			want: "deferred", log: []string{"required=encrypt", "failure=no-starttls"}},
		// What the attack achieves against opportunistic TLS.
		{name: "STARTTLS stripped, may", domain: "stripped-may.test", ip: "127.0.0.43", rule: "level: may", strip: true,
			tls:  testutil.ServerTLS(testutil.SelfSigned(t, "mx.stripped-may.test")),
			want: "sent", wantTLS: false, log: []string{"required=may", "achieved=none"}},
	}

	var zone, rules strings.Builder
	mxs := map[string]*policyMX{}
	proxies := map[string]*stripProxy{}
	for i, c := range cases {
		if c.mxHost == "" {
			cases[i].mxHost = "mx." + c.domain
			c.mxHost = cases[i].mxHost
		}
		fmt.Fprintf(&zone, "%s. MX 10 %s.\n%s. A %s\n", c.domain, c.mxHost, c.mxHost, c.ip)
		fmt.Fprintf(&rules, "      - {match: %s, %s}\n", c.domain, c.rule)
		cases[i].log = append(cases[i].log, fmt.Sprintf("(policy rule %d (match %s))", i+1, c.domain))
		if c.strip {
			mxs[c.domain] = startPolicyMX(t, listenLoopback(t), mxOptions{TLS: c.tls})
			proxies[c.domain] = startStripProxy(t, listenMX(t, c.ip), mxs[c.domain].Addr)
		} else {
			mxs[c.domain] = startPolicyMX(t, listenMX(t, c.ip), mxOptions{TLS: c.tls})
		}
	}
	dns := dnstest.NewServer(t, zone.String())
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(),
		TLS: fmt.Sprintf("    ca_file: %q\n    policies:\n%s", ca.pemFile, rules.String())})

	start := time.Now()
	ids := map[string]string{}
	for _, c := range cases {
		ids[c.domain] = r.send(t, "s-"+c.domain+"@example.test", "user@"+c.domain, "marker-"+c.domain)
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			id, mx, marker := ids[c.domain], mxs[c.domain], "marker-"+c.domain
			a := r.waitAttempt(t, id, 20*time.Second)
			if a.Status != c.want {
				t.Fatalf("%s, want %s:\n%s", a.Status, c.want, a.Line)
			}
			for _, s := range c.log {
				if !strings.Contains(a.Line, s) {
					t.Errorf("log line lacks %q:\n%s", s, a.Line)
				}
			}
			switch c.want {
			case "sent":
				m := mx.waitMessage(t, 5*time.Second)
				if m.TLS != c.wantTLS {
					t.Errorf("MX received the message with TLS %v, want %v", m.TLS, c.wantTLS)
				}
				if !strings.Contains(string(m.Data), "Subject: "+marker) || len(m.To) != 1 || m.To[0] != "user@"+c.domain {
					t.Errorf("MX got the wrong message: to %q\n%s", m.To, m.Data)
				}
			default:
				mx.checkUntouched(t, marker, true)
			}
			if p := proxies[c.domain]; p != nil {
				if p.Stripped() == 0 {
					t.Errorf("the proxy removed no STARTTLS; the test proves nothing")
				}
				if up := strings.ToUpper(p.FromPeer()); !strings.Contains(up, "EHLO") || strings.Contains(up, "STARTTLS") {
					t.Errorf("the relay sent through the proxy: %q; want EHLO and no STARTTLS", p.FromPeer())
				}
			}
			switch c.name {
			case "no STARTTLS, encrypt":
				// The admin's first question about a deferred partner.
				l := r.queueTLSLine(t, id, 10*time.Second)
				for _, s := range []string{"tls required=encrypt (policy rule 1 (match notls.test))", "achieved=none", "failure=no-starttls"} {
					if !strings.Contains(l, s) {
						t.Errorf("queue list tls line lacks %q: %s", s, l)
					}
				}
			case "handshake fails, may falls back to clear text":
				r.waitLine(t, 5*time.Second, "STARTTLS failed, retrying in clear", "mx.hs-may.test")
				if n := mx.Conns(); n != 2 {
					t.Errorf("MX saw %d connections, want 2 (STARTTLS, then clear text)", n)
				}
			case "handshake fails, encrypt":
				if n := mx.Conns(); n != 1 {
					t.Errorf("MX saw %d connections, want 1: no second try in clear text under encrypt", n)
				}
			}
			if c.dsn != "" {
				dsns := waitMaildir(t, r.Mail, "s-"+c.domain+"@example.test", 1, 10*time.Second)
				text, status := dsnParts(t, dsns[0])
				if !strings.Contains(text, c.dsn) {
					t.Errorf("DSN text lacks %q:\n%s", c.dsn, text)
				}
				if !regexp.MustCompile(`(?mi)^Status: 5\.7\.10\r?$`).MatchString(status) || !strings.Contains(status, "user@"+c.domain) {
					t.Errorf("DSN status part, want Status: 5.7.10 for user@%s:\n%s", c.domain, status)
				}
			}
		})
	}
	// Whatever was deferred is still in the queue, waiting for its retry.
	for _, c := range cases {
		if c.want == "deferred" {
			if out, _, _ := runRelayCmd(t, "queue", "list", "--config", r.Cfg); !strings.Contains(out, ids[c.domain]) {
				t.Errorf("deferred message %s (%s) is not in the queue:\n%s", ids[c.domain], c.domain, out)
			}
		}
	}
	t.Logf("%d destinations decided in %v", len(cases), time.Since(start).Round(time.Millisecond))

	// The admin's tools walk the same path, against the same servers;
	// probe sends EHLO, STARTTLS, EHLO and QUIT, never MAIL.
	t.Run("tls-policy explain and probe", func(t *testing.T) {
		out, errOut, code := runRelayCmd(t, "tls-policy", "explain", "--config", r.Cfg, "notls.test")
		if code != 0 || !strings.Contains(out, "policy rule 1 (match notls.test)") || !strings.Contains(out, "encrypt") {
			t.Errorf("tls-policy explain notls.test: exit %d, want 0 and rule 1 with encrypt:\n%s%s", code, out, errOut)
		}
		for _, p := range []struct {
			domain string
			code   int
			says   string
		}{
			{"verified.test", 0, "all 1 next-hop addresses meet the policy"},
			{"notls.test", 1, "policy NOT met: no STARTTLS offered"},
			{"stripped.test", 1, "policy NOT met: no STARTTLS offered"},
			{"expired.test", 1, "policy NOT met: certificate expired"},
		} {
			out, errOut, code := runRelayCmd(t, "tls-policy", "probe", "--config", r.Cfg, "--timeout", "10s", p.domain)
			if code != p.code || !strings.Contains(out, p.says) {
				t.Errorf("tls-policy probe %s: exit %d, want %d and %q:\n%s%s", p.domain, code, p.code, p.says, out, errOut)
			}
		}
		for _, d := range []string{"notls.test", "stripped.test", "expired.test"} {
			if n := len(mxs[d].Mails()); n != 0 {
				t.Errorf("probe sent %d MAIL commands to %s's MX", n, d)
			}
		}
	})
}

// TestTLSPolicyDane: DANE (RFC 7672) through a resolver the configuration
// marks as validating. A DANE-EE(3 1 1) record matching the MX's
// self-signed certificate makes it deliverable; a mismatching one defers,
// with nothing sent; the same records without the AD bit are ignored; and
// a partner rule (level may) overrides a mismatching TLSA record.
func TestTLSPolicyDane(t *testing.T) {
	requireTool(t, "swaks")
	good := testutil.SelfSigned(t, "mx.dane-ok.test")
	other := testutil.SelfSigned(t, "mx.dane-bad.test")
	cases := []struct {
		name, domain, ip string
		cert             tls.Certificate
		want             string
		log              []string
	}{
		{"TLSA 3 1 1 matches", "dane-ok.test", "127.0.0.45", good, "sent",
			[]string{"required=dane (DANE (TLSA at _25._tcp.mx.dane-ok.test))", "achieved=dane"}},
		{"TLSA 3 1 1 does not match", "dane-bad.test", "127.0.0.46", other, "deferred",
			[]string{"required=dane", "failure=tlsa-mismatch", "dsn=4.7.5"}},
		{"TLSA without the AD bit is ignored", "dane-noad.test", "127.0.0.47", other, "sent",
			[]string{"required=may (default)"}},
		{"rule may overrides a mismatching TLSA", "dane-override.test", "127.0.0.48", other, "sent",
			[]string{"required=may (policy rule 1 (match dane-override.test))"}},
	}
	var zone strings.Builder
	mxs := map[string]*policyMX{}
	for _, c := range cases {
		// Every TLSA record names the good key: only dane-ok.test's MX has it.
		fmt.Fprintf(&zone, "%[1]s. MX 10 mx.%[1]s.\nmx.%[1]s. A %[2]s\n_25._tcp.mx.%[1]s. TLSA 3 1 1 %[3]s\n",
			c.domain, c.ip, testutil.SPKISHA256(good))
		mxs[c.domain] = startPolicyMX(t, listenMX(t, c.ip), mxOptions{TLS: testutil.ServerTLS(c.cert)})
	}
	dns := newADDNS(t, zone.String(), "dane-noad.test")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), DNSSEC: true,
		TLS: "    dane: true\n    policies:\n      - {match: dane-override.test, level: may}\n"})

	ids := map[string]string{}
	for _, c := range cases {
		ids[c.domain] = r.send(t, "sender@example.test", "user@"+c.domain, "marker-"+c.domain)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := r.waitAttempt(t, ids[c.domain], 20*time.Second)
			if a.Status != c.want {
				t.Fatalf("%s, want %s:\n%s", a.Status, c.want, a.Line)
			}
			for _, s := range c.log {
				if !strings.Contains(a.Line, s) {
					t.Errorf("log line lacks %q:\n%s", s, a.Line)
				}
			}
			if c.want == "deferred" {
				mxs[c.domain].checkUntouched(t, "marker-"+c.domain, true)
				return
			}
			if m := mxs[c.domain].waitMessage(t, 5*time.Second); !m.TLS {
				t.Errorf("delivered without TLS")
			}
		})
	}
}

// TestTLSPolicyMTASTS: MTA-STS (RFC 8461) with the policy host on
// 127.0.0.50:443 and a certificate from the test CA. enforce delivers to a
// listed MX with a valid certificate and refuses an unlisted MX before
// connecting; testing delivers and logs what enforce would have refused;
// a partner rule overrides the policy (which is then not even fetched).
// The relay finds mta-sts.<domain> through dns.resolver (the test zone)
// and trusts the policy host's certificate through outbound.tls.ca_file.
func TestTLSPolicyMTASTS(t *testing.T) {
	requireTool(t, "swaks")
	ca := newTestCA(t)
	const stsIP = "127.0.0.50"
	policy := func(mode, mx string) string {
		return "version: STSv1\r\nmode: " + mode + "\r\nmx: " + mx + "\r\nmax_age: 86400\r\n"
	}
	cases := []struct {
		name, domain, ip, policy string
		cert                     tls.Certificate
		want                     string
		log                      []string
		connected                bool // for deferred: the relay must have connected
	}{
		{"enforce, listed MX, valid certificate", "sts-enforce.test", "127.0.0.51", policy("enforce", "mx.sts-enforce.test"),
			ca.issue(t, testutil.CertSpec{Names: []string{"mx.sts-enforce.test"}}), "sent",
			[]string{"required=verify (MTA-STS enforce", "achieved=verify"}, false},
		{"enforce, MX not listed", "sts-badmx.test", "127.0.0.52", policy("enforce", "mx.elsewhere.test"),
			ca.issue(t, testutil.CertSpec{Names: []string{"mx.sts-badmx.test"}}), "deferred",
			[]string{"relay=mx.sts-badmx.test ", "failure=mx-not-allowed", "matches none of the MTA-STS mx patterns (mx.elsewhere.test)"}, false},
		{"enforce, self-signed certificate", "sts-untrusted.test", "127.0.0.55", policy("enforce", "*.sts-untrusted.test"),
			testutil.SelfSigned(t, "mx.sts-untrusted.test"), "deferred",
			[]string{"required=verify (MTA-STS enforce", "failure=untrusted"}, true},
		{"testing, self-signed certificate", "sts-testing.test", "127.0.0.53", policy("testing", "mx.sts-testing.test"),
			testutil.SelfSigned(t, "mx.sts-testing.test"), "sent",
			[]string{"mta-sts-testing-report=untrusted"}, false},
		{"testing, MX not listed", "sts-testing-mx.test", "127.0.0.56", policy("testing", "mx.elsewhere.test"),
			ca.issue(t, testutil.CertSpec{Names: []string{"mx.sts-testing-mx.test"}}), "sent",
			[]string{"required=may (default (MTA-STS testing))", "mta-sts-testing-report=mx-not-allowed"}, false},
		{"rule overrides enforce", "sts-override.test", "127.0.0.54", policy("enforce", "mx.elsewhere.test"),
			testutil.SelfSigned(t, "mx.sts-override.test"), "sent",
			[]string{"required=encrypt (policy rule 1 (match sts-override.test))", "achieved=encrypt"}, false},
	}
	var zone strings.Builder
	policies := map[string]string{}
	mxs := map[string]*policyMX{}
	for _, c := range cases {
		fmt.Fprintf(&zone, "%[1]s. MX 10 mx.%[1]s.\nmx.%[1]s. A %[2]s\n_mta-sts.%[1]s. TXT \"v=STSv1; id=20261201T000000;\"\nmta-sts.%[1]s. A %[3]s\n",
			c.domain, c.ip, stsIP)
		policies[c.domain] = c.policy
		mxs[c.domain] = startPolicyMX(t, listenMX(t, c.ip), mxOptions{TLS: testutil.ServerTLS(c.cert)})
	}
	host := startSTSHost(t, listenOn(t, stsIP, "443"), ca, policies)
	dns := dnstest.NewServer(t, zone.String())
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(),
		TLS: fmt.Sprintf("    mta_sts: true\n    ca_file: %q\n    policies:\n      - {match: sts-override.test, level: encrypt}\n", ca.pemFile)})

	ids := map[string]string{}
	for _, c := range cases {
		ids[c.domain] = r.send(t, "sender@example.test", "user@"+c.domain, "marker-"+c.domain)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := r.waitAttempt(t, ids[c.domain], 30*time.Second)
			if a.Status != c.want {
				t.Fatalf("%s, want %s:\n%s", a.Status, c.want, a.Line)
			}
			for _, s := range c.log {
				if !strings.Contains(a.Line, s) {
					t.Errorf("log line lacks %q:\n%s", s, a.Line)
				}
			}
			if c.want == "deferred" {
				mxs[c.domain].checkUntouched(t, "marker-"+c.domain, c.connected)
			} else if m := mxs[c.domain].waitMessage(t, 5*time.Second); !m.TLS {
				t.Errorf("delivered without TLS")
			}
			fetched := host.Fetches(c.domain)
			if c.domain == "sts-override.test" {
				if fetched != 0 {
					t.Errorf("the policy of %s was fetched %d times although a rule decides", c.domain, fetched)
				}
			} else if fetched == 0 {
				t.Errorf("the policy of %s was never fetched", c.domain)
			}
		})
	}
}

// TestTLSPolicyRequireTLS: a message submitted with MAIL FROM … REQUIRETLS
// (RFC 8689) to a destination whose level is may. The MX hosts come from
// a DNSSEC-validated MX RRset and have certificates from the test CA, so
// the only difference is REQUIRETLS support: an MX that does not
// advertise it gets nothing and the sender gets a DSN (5.7.30); one that
// does gets the message with REQUIRETLS in its MAIL FROM.
func TestTLSPolicyRequireTLS(t *testing.T) {
	requireTool(t, "swaks")
	ca := newTestCA(t)
	noMX := startPolicyMX(t, listenMX(t, "127.0.0.61"),
		mxOptions{TLS: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx.rtls-no.test"}}))})
	yesMX := startPolicyMX(t, listenMX(t, "127.0.0.62"),
		mxOptions{TLS: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx.rtls-yes.test"}})), RequireTLS: true})
	dns := newADDNS(t, `rtls-no.test. MX 10 mx.rtls-no.test.
mx.rtls-no.test. A 127.0.0.61
rtls-yes.test. MX 10 mx.rtls-yes.test.
mx.rtls-yes.test. A 127.0.0.62
`)
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), DNSSEC: true,
		TLS: fmt.Sprintf("    default: may\n    ca_file: %q\n", ca.pemFile)})

	submit := func(t *testing.T, from, to, subject string) string {
		c := dialSMTP(t, r.Sub)
		c.Expect("EHLO client.e2e.test", 250)
		c.startTLS()
		if ehlo := c.Expect("EHLO client.e2e.test", 250); !strings.Contains(ehlo, "REQUIRETLS") {
			t.Fatalf("REQUIRETLS not advertised after STARTTLS:\n%s", ehlo)
		}
		c.Expect("MAIL FROM:<"+from+"> REQUIRETLS", 250)
		c.Expect("RCPT TO:<"+to+">", 250)
		c.Expect("DATA", 354)
		c.Write("From: <" + from + ">\r\nTo: <" + to + ">\r\nSubject: " + subject + "\r\n\r\nconfidential\r\n.\r\n")
		code, text := c.Reply()
		m := regexp.MustCompile(`queued as ([A-Za-z0-9]+)`).FindStringSubmatch(text)
		if code != 250 || m == nil {
			t.Fatalf("end of DATA: %q", text)
		}
		c.Cmd("QUIT")
		return m[1]
	}

	t.Run("MX without REQUIRETLS", func(t *testing.T) {
		id := submit(t, "rtls-sender@example.test", "user@rtls-no.test", "marker-rtls-no")
		a := r.waitAttempt(t, id, 20*time.Second)
		if !strings.Contains(a.Line, "does not advertise REQUIRETLS") {
			t.Errorf("log line does not say that the MX lacks REQUIRETLS:\n%s", a.Line)
		}
		noMX.checkUntouched(t, "marker-rtls-no", true)
		if a.Status != "bounced" || !strings.Contains(a.Line, "dsn=5.7.30") {
			t.Fatalf("%s, want bounced with 5.7.30 (RFC 8689 §4.2.1: returned to the sender):\n%s", a.Status, a.Line)
		}
		dsns := waitMaildir(t, r.Mail, "rtls-sender@example.test", 1, 10*time.Second)
		text, status := dsnParts(t, dsns[0])
		if !regexp.MustCompile(`(?mi)^Status: 5\.7\.30\r?$`).MatchString(status) {
			t.Errorf("DSN status part, want Status: 5.7.30:\n%s", status)
		}
		if !strings.Contains(text, "REQUIRETLS") || !strings.Contains(text, "user@rtls-no.test") {
			t.Errorf("DSN text does not explain REQUIRETLS for user@rtls-no.test:\n%s", text)
		}
	})

	t.Run("MX with REQUIRETLS", func(t *testing.T) {
		id := submit(t, "rtls-sender2@example.test", "user@rtls-yes.test", "marker-rtls-yes")
		a := r.waitAttempt(t, id, 20*time.Second)
		if a.Status != "sent" {
			t.Fatalf("%s, want sent:\n%s", a.Status, a.Line)
		}
		if !strings.Contains(a.Line, "REQUIRETLS") || !strings.Contains(a.Line, "achieved=verify") {
			t.Errorf("log line does not show the REQUIRETLS level achieved:\n%s", a.Line)
		}
		yesMX.waitMessage(t, 5*time.Second)
		mails := yesMX.Mails()
		if len(mails) != 1 || !mails[0].RequireTLS || !mails[0].TLS || mails[0].From != "rtls-sender2@example.test" {
			t.Errorf("MX saw MAIL %+v, want one MAIL FROM:<rtls-sender2@example.test> REQUIRETLS over TLS", mails)
		}
	})
}

// TestTLSPolicyInbound: a partner rule with inbound: tempfail (or reject)
// refuses the partner's mail over a plaintext session on the inbound
// listener at MAIL FROM, naming the policy, and takes it over STARTTLS.
func TestTLSPolicyInbound(t *testing.T) {
	dns := dnstest.NewServer(t, "")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Inbound: true,
		TLS: "    policies:\n" +
			"      - {match: partner.example, level: encrypt, inbound: tempfail}\n" +
			"      - {match: .strict.example, level: encrypt, inbound: reject}\n"})

	mailFrom := func(t *testing.T, tlsOn bool, from string) (int, string) {
		c := dialSMTP(t, r.MX)
		c.Expect("EHLO client.e2e.test", 250)
		if tlsOn {
			c.startTLS()
			c.Expect("EHLO client.e2e.test", 250)
		}
		code, text := c.Cmd("MAIL FROM:<" + from + ">")
		if code == 250 {
			c.Expect("RCPT TO:<bob@example.test>", 250)
			c.Expect("DATA", 354)
			c.Write("Subject: from " + from + "\r\n\r\nhello\r\n.\r\n")
			if code, text := c.Reply(); code != 250 {
				t.Fatalf("end of DATA: %q", text)
			}
		}
		c.Cmd("QUIT")
		return code, text
	}

	t.Run("partner in clear text", func(t *testing.T) {
		code, text := mailFrom(t, false, "a@partner.example")
		if code != 450 || !strings.HasPrefix(text, "450 4.7.0 ") || !strings.Contains(text, "TLS policy for partner.example") {
			t.Errorf("MAIL FROM:<a@partner.example> in clear: %q, want 450 4.7.0 naming the TLS policy for partner.example", text)
		}
		r.waitLine(t, 5*time.Second, "check=plaintext_partner", "domain=partner.example", "rule=outbound.tls.policies[0]")
	})
	t.Run("partner over STARTTLS", func(t *testing.T) {
		if code, text := mailFrom(t, true, "a@partner.example"); code != 250 {
			t.Errorf("MAIL FROM:<a@partner.example> over TLS: %q, want 250", text)
		}
		if m := waitMaildir(t, r.Mail, "bob@example.test", 1, 10*time.Second); !bytes.Contains(m[0], []byte("Subject: from a@partner.example")) {
			t.Errorf("delivered the wrong message:\n%s", m[0])
		}
	})
	t.Run("subdomain rule with reject", func(t *testing.T) {
		code, text := mailFrom(t, false, "c@mail.strict.example")
		if code != 530 || !strings.HasPrefix(text, "530 5.7.0 ") || !strings.Contains(text, "strict.example") {
			t.Errorf("MAIL FROM:<c@mail.strict.example> in clear: %q, want 530 5.7.0 naming the policy", text)
		}
	})
	t.Run("other sender in clear text", func(t *testing.T) {
		if code, text := mailFrom(t, false, "d@other.example"); code != 250 {
			t.Errorf("MAIL FROM:<d@other.example> in clear: %q, want 250 (no rule)", text)
		}
	})
}

// TestTLSListenerProtocols: what our own STARTTLS listener offers, seen by
// openssl s_client (an independent TLS stack) and by Go clients limited to
// one weak suite: TLS 1.2 and 1.3 only, and none of the RC4 or 3DES
// suites. Each refusal has a control: the same client against a test
// server that allows it succeeds, so a refusal is the listener's doing.
// (This machine's openssl has no NULL, EXPORT, RC4 or 3DES suites at all;
// TestTLSListenerTestssl covers those with testssl's own sockets.)
func TestTLSListenerProtocols(t *testing.T) {
	requireTool(t, "openssl")
	ca := newTestCA(t)
	// An RSA certificate, so that the RSA-authenticated weak suites are
	// possible at all and their refusal means something.
	cert := ca.issue(t, testutil.CertSpec{Names: []string{"relay.e2e.test"}, RSA: true})
	certFile, keyFile := testutil.WriteKeyPair(t, cert)
	dns := dnstest.NewServer(t, "")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Inbound: true, CertFile: certFile, KeyFile: keyFile})

	// Controls: a server that allows TLS 1.0/1.1 and the weak suites.
	weakCfg := testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"weak.e2e.test"}, RSA: true}))
	weakCfg.MinVersion = tls.VersionTLS10
	weakCfg.MaxVersion = tls.VersionTLS12
	var weakSuites []uint16
	for _, s := range tls.InsecureCipherSuites() {
		if slices.Contains(s.SupportedVersions, tls.VersionTLS12) && !strings.Contains(s.Name, "ECDSA") {
			weakSuites = append(weakSuites, s.ID)
		}
	}
	weakCfg.CipherSuites = weakSuites
	weak := startPolicyMX(t, listenLoopback(t), mxOptions{TLS: weakCfg})

	sClient := func(addr string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		all := append([]string{"s_client", "-starttls", "smtp", "-connect", addr, "-brief"}, args...)
		cmd := exec.CommandContext(ctx, "openssl", all...)
		cmd.Stdin = strings.NewReader("")
		out, err := cmd.CombinedOutput()
		if ctx.Err() != nil {
			t.Fatalf("openssl %v timed out:\n%s", all, out)
		}
		return string(out), err
	}
	// SECLEVEL=0: OpenSSL 3 itself refuses TLS 1.0/1.1 at its default
	// level; the refusal must come from the server.
	for _, v := range []struct{ flag, name string }{{"-tls1", "TLSv1"}, {"-tls1_1", "TLSv1.1"}} {
		t.Run("openssl "+v.flag, func(t *testing.T) {
			out, err := sClient(weak.Addr, v.flag, "-cipher", "DEFAULT@SECLEVEL=0")
			if err != nil || !strings.Contains(out, "Protocol version: "+v.name) {
				t.Fatalf("control: openssl %s against a server that allows it: %v\n%s", v.flag, err, out)
			}
			out, err = sClient(r.MX, v.flag, "-cipher", "DEFAULT@SECLEVEL=0")
			if err == nil || strings.Contains(out, "Protocol version:") {
				t.Errorf("openssl %s: our listener negotiated it:\n%s", v.flag, out)
			}
			if !strings.Contains(strings.ToLower(out), "protocol version") && !strings.Contains(strings.ToLower(out), "unsupported protocol") {
				t.Errorf("openssl %s failed, but not for the protocol version:\n%s", v.flag, out)
			}
		})
	}
	for _, v := range []struct{ flag, name string }{{"-tls1_2", "TLSv1.2"}, {"-tls1_3", "TLSv1.3"}} {
		t.Run("openssl "+v.flag, func(t *testing.T) {
			out, err := sClient(r.MX, v.flag)
			if err != nil || !strings.Contains(out, "Protocol version: "+v.name) {
				t.Errorf("openssl %s against our listener: %v\n%s", v.flag, err, out)
			}
		})
	}

	// Go's client still implements RC4 and 3DES when asked for them.
	handshake := func(addr string, suite uint16) error {
		c := dialSMTP(t, addr)
		c.Expect("EHLO client.e2e.test", 250)
		c.Expect("STARTTLS", 220)
		tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true, CipherSuites: []uint16{suite},
			MinVersion: tls.VersionTLS10, MaxVersion: tls.VersionTLS12})
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return tc.HandshakeContext(ctx)
	}
	if len(weakSuites) == 0 {
		t.Fatal("crypto/tls offers no insecure RSA suites to test with")
	}
	for _, id := range weakSuites {
		name := tls.CipherSuiteName(id)
		t.Run(name, func(t *testing.T) {
			if err := handshake(weak.Addr, id); err != nil {
				t.Fatalf("control: %s against a server that allows it: %v", name, err)
			}
			if err := handshake(r.MX, id); err == nil {
				t.Errorf("our listener accepted %s", name)
			}
		})
	}
}

// TestTLSListenerTestssl runs testssl against our STARTTLS listener: no
// SSLv2/SSLv3/TLS 1.0/1.1 and no NULL, EXPORT, LOW, RC4 or 3DES suites,
// tested with testssl's own sockets rather than this machine's openssl
// (which has none of those suites). It takes about a minute, so it runs
// only with E2E_TESTSSL=1 (or CI=true).
func TestTLSListenerTestssl(t *testing.T) {
	if os.Getenv("E2E_TESTSSL") != "1" && !inCI() {
		t.Skip("slow (about a minute): set E2E_TESTSSL=1 to run it")
	}
	requireTool(t, "testssl")
	dns := dnstest.NewServer(t, "")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Inbound: true})

	jsonFile := tempFile(t, "testssl.json", "")
	os.Remove(jsonFile)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	// --nodns none and an IP address: no lookups; no --phone-out: no
	// CRL/OCSP fetches.
	cmd := exec.CommandContext(ctx, "testssl", "--quiet", "--color", "0", "--nodns", "none", "--warnings", "off",
		"-t", "smtp", "--protocols", "--std", "--rc4", "--jsonfile", jsonFile, r.MX)
	start := time.Now()
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("testssl timed out:\n%s", out)
	}
	t.Logf("testssl took %v", time.Since(start).Round(time.Second))
	raw, rerr := os.ReadFile(jsonFile)
	if rerr != nil {
		t.Fatalf("testssl wrote no JSON (%v, exit %v):\n%s", rerr, err, out)
	}
	var findings []struct{ ID, Finding string }
	if err := json.Unmarshal(raw, &findings); err != nil {
		t.Fatalf("testssl JSON: %v\n%s", err, raw)
	}
	got := map[string][]string{}
	for _, f := range findings {
		got[f.ID] = append(got[f.ID], f.Finding)
	}
	want := map[string]string{
		"SSLv2": "not offered", "SSLv3": "not offered", "TLS1": "not offered", "TLS1_1": "not offered",
		"TLS1_2": "offered", "TLS1_3": "offered",
		"cipherlist_NULL": "not offered", "cipherlist_aNULL": "not offered", "cipherlist_EXPORT": "not offered",
		"cipherlist_LOW": "not offered", "cipherlist_3DES_IDEA": "not offered", "RC4": "not vulnerable",
	}
	for id, w := range want {
		fs := got[id]
		if len(fs) == 0 || !strings.HasPrefix(fs[0], w) && !strings.Contains(fs[0], " "+w) {
			t.Errorf("testssl %s: %q, want %q", id, fs, w)
		}
		if strings.HasPrefix(w, "offered") && len(fs) > 0 && strings.Contains(fs[0], "not offered") {
			t.Errorf("testssl %s: %q, want offered", id, fs)
		}
	}
}

// TestMTASTSCacheSurvivesRestart: an enforce policy fetched before a
// restart still applies after it, when the _mta-sts record can no longer
// be looked up (RFC 8461 §5: an attacker who blocks the lookup must not
// turn enforce into nothing). Without the cache in state_dir the message
// would go to the unlisted MX.
func TestMTASTSCacheSurvivesRestart(t *testing.T) {
	requireTool(t, "swaks")
	ca := newTestCA(t)
	const domain, mxIP, stsIP = "sts-persist.test", "127.0.0.57", "127.0.0.58"
	mx := startPolicyMX(t, listenMX(t, mxIP), mxOptions{TLS: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx." + domain}}))})
	host := startSTSHost(t, listenOn(t, stsIP, "443"), ca, map[string]string{
		domain: "version: STSv1\r\nmode: enforce\r\nmx: mx.elsewhere.test\r\nmax_age: 86400\r\n"})
	dns := dnstest.NewServer(t, fmt.Sprintf("%[1]s. MX 10 mx.%[1]s.\nmx.%[1]s. A %[2]s\n_mta-sts.%[1]s. TXT \"v=STSv1; id=1;\"\nmta-sts.%[1]s. A %[3]s\n",
		domain, mxIP, stsIP))
	p := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), TLS: fmt.Sprintf("    mta_sts: true\n    ca_file: %q\n", ca.pemFile)})

	a := p.waitAttempt(t, p.send(t, "sender@example.test", "user@"+domain, "marker-before"), 30*time.Second)
	if a.Status != "deferred" || !strings.Contains(a.Line, "failure=mx-not-allowed") {
		t.Fatalf("before the restart: %s, want deferred with mx-not-allowed:\n%s", a.Status, a.Line)
	}
	if host.Fetches(domain) != 1 {
		t.Fatalf("policy fetched %d times, want 1", host.Fetches(domain))
	}

	p.Relay.Stop()
	dns.ServFail("_mta-sts." + domain)
	p.Relay = startRelay(t, p.Cfg, p.Sub)
	a = p.waitAttempt(t, p.send(t, "sender@example.test", "user@"+domain, "marker-after"), 30*time.Second)
	if a.Status != "deferred" || !strings.Contains(a.Line, "failure=mx-not-allowed") {
		t.Errorf("after the restart, _mta-sts unresolvable: %s, want deferred with mx-not-allowed (cached enforce policy):\n%s", a.Status, a.Line)
	}
	mx.checkUntouched(t, "marker-after", false)
}

// TestTLSPolicyPooledSession (issue 11, finding 1): one gateway for
// .corp.test, whose valid certificate names only a.corp.test, under a
// secure rule for .corp.test. Mail for b.corp.test must never reach it:
// not in the same message as mail for a.corp.test, and not in the next
// message on the session pooled for a.corp.test. b is deferred with 4.7.5
// each time and never appears in an envelope command (or, alone, with a
// byte of its message) in the gateway's transcript; a is delivered, and
// a's pooled session still serves a.
func TestTLSPolicyPooledSession(t *testing.T) {
	requireTool(t, "swaks")
	ca := newTestCA(t)
	gw := startPolicyMX(t, listenLoopback(t), mxOptions{TLS: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"a.corp.test"}}))})
	dns := dnstest.NewServer(t, "")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), IdleTimeout: "5m",
		Routes: fmt.Sprintf("    - {match: .corp.test, next_hop: \"smtp://%s\"}\n", gw.Addr),
		TLS:    fmt.Sprintf("    ca_file: %q\n    policies:\n      - {match: .corp.test, level: secure}\n", ca.pemFile)})

	sentSecure := func(t *testing.T, id, rcpt string) {
		t.Helper()
		a := r.waitRcpt(t, id, rcpt, 20*time.Second)
		if a.Status != "sent" || !strings.Contains(a.Line, "achieved=secure") {
			t.Errorf("%s: %s, want sent with achieved=secure:\n%s", rcpt, a.Status, a.Line)
		}
	}
	deferredB := func(t *testing.T, id, rcpt string) {
		t.Helper()
		a := r.waitRcpt(t, id, rcpt, 20*time.Second)
		if a.Status != "deferred" || !strings.Contains(a.Line, "dsn=4.7.5") || !strings.Contains(a.Line, "failure=name-mismatch") ||
			!strings.Contains(a.Line, "(policy rule 1 (match .corp.test))") {
			t.Errorf("%s: %s, want deferred with 4.7.5, name-mismatch under rule 1:\n%s", rcpt, a.Status, a.Line)
		}
		// The message's To: field names b when a's copy carries it; the
		// envelope must not.
		if strings.Contains(strings.ToUpper(gw.Transcript()), strings.ToUpper("RCPT TO:<"+rcpt+">")) {
			t.Errorf("the gateway was asked to take %s:\n%s", rcpt, gw.Transcript())
		}
	}

	t.Run("one message, both subdomains", func(t *testing.T) {
		id := r.send(t, "s1@example.test", "x@a.corp.test,z@b.corp.test", "marker-both")
		sentSecure(t, id, "x@a.corp.test")
		deferredB(t, id, "z@b.corp.test")
		if rc := gw.Rcpts(); strings.Join(rc, ",") != "x@a.corp.test" {
			t.Errorf("the gateway saw RCPT %v, want only x@a.corp.test", rc)
		}
	})
	t.Run("two messages on the pooled session", func(t *testing.T) {
		before := gw.Conns()
		id := r.send(t, "s2@example.test", "y@a.corp.test", "marker-a-again")
		sentSecure(t, id, "y@a.corp.test")
		if n := gw.Conns(); n != before {
			t.Fatalf("the gateway saw %d new connections for a.corp.test, want 0: the pooled session was not reused, so this test proves nothing", n-before)
		}
		id = r.send(t, "s3@example.test", "w@b.corp.test", "marker-b-alone")
		deferredB(t, id, "w@b.corp.test")
		if strings.Contains(gw.Transcript(), "marker-b-alone") {
			t.Errorf("b.corp.test's message reached the gateway:\n%s", gw.Transcript())
		}
		if rc := gw.Rcpts(); strings.Join(rc, ",") != "x@a.corp.test,y@a.corp.test" {
			t.Errorf("the gateway saw RCPT %v, want x@a.corp.test and y@a.corp.test only", rc)
		}
	})
}

// TestTLSPolicyLMTPRoute (issue 11, finding 2): a rule naming a domain
// routed to an LMTP server applies as it would over SMTP: an LMTP server
// without STARTTLS gets nothing under secure (4.7.10), one with STARTTLS
// and a certificate for the domain gets the message inside TLS, and
// tls-policy explain and probe show that rule.
func TestTLSPolicyLMTPRoute(t *testing.T) {
	requireTool(t, "swaks")
	ca := newTestCA(t)
	plain := startPolicyMX(t, listenLoopback(t), mxOptions{LMTP: true})
	secure := startPolicyMX(t, listenLoopback(t), mxOptions{LMTP: true,
		TLS: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"lmtps.test"}}))})
	dns := dnstest.NewServer(t, "")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(),
		Routes: fmt.Sprintf("    - {match: lmtpp.test, next_hop: \"lmtp://%s\"}\n    - {match: lmtps.test, next_hop: \"lmtp://%s\"}\n", plain.Addr, secure.Addr),
		TLS: fmt.Sprintf("    ca_file: %q\n    policies:\n      - {match: lmtpp.test, level: secure}\n      - {match: lmtps.test, level: secure}\n",
			ca.pemFile)})

	t.Run("no STARTTLS", func(t *testing.T) {
		id := r.send(t, "l1@example.test", "u@lmtpp.test", "marker-lmtp-plain")
		a := r.waitAttempt(t, id, 20*time.Second)
		for _, s := range []string{"dsn=4.7.10", "tls required=secure (policy rule 1 (match lmtpp.test))", "failure=no-starttls"} {
			if !strings.Contains(a.Line, s) {
				t.Errorf("log line lacks %q:\n%s", s, a.Line)
			}
		}
		if a.Status != "deferred" {
			t.Errorf("%s, want deferred", a.Status)
		}
		plain.checkUntouched(t, "marker-lmtp-plain", true)
	})
	t.Run("STARTTLS, certificate for the domain", func(t *testing.T) {
		id := r.send(t, "l2@example.test", "u@lmtps.test", "marker-lmtp-tls")
		a := r.waitAttempt(t, id, 20*time.Second)
		if a.Status != "sent" || !strings.Contains(a.Line, "achieved=secure") || !strings.Contains(a.Line, "(policy rule 2 (match lmtps.test))") {
			t.Errorf("%s, want sent with achieved=secure under rule 2:\n%s", a.Status, a.Line)
		}
		m := secure.waitMessage(t, 5*time.Second)
		if !m.TLS || m.Helo != "relay.e2e.test" {
			t.Errorf("LMTP server got the message with TLS %v after LHLO %q", m.TLS, m.Helo)
		}
	})
	t.Run("tls-policy explain and probe", func(t *testing.T) {
		out, errOut, code := runRelayCmd(t, "tls-policy", "explain", "--config", r.Cfg, "lmtpp.test")
		for _, s := range []string{"lmtp://" + plain.Addr, "a rule names lmtpp.test", "policy rule 1 (match lmtpp.test) matches lmtpp.test: level secure", "LMTP uses STARTTLS when offered"} {
			if code != 0 || !strings.Contains(out, s) {
				t.Errorf("explain lmtpp.test: exit %d, output lacks %q:\n%s%s", code, s, out, errErr(errOut))
			}
		}
		out, errOut, code = runRelayCmd(t, "tls-policy", "probe", "--config", r.Cfg, "--timeout", "10s", "lmtpp.test")
		if code != 1 || !strings.Contains(out, "(LMTP)") || !strings.Contains(out, "policy NOT met: no STARTTLS offered") {
			t.Errorf("probe lmtpp.test: exit %d, want 1 and no STARTTLS:\n%s%s", code, out, errErr(errOut))
		}
		out, errOut, code = runRelayCmd(t, "tls-policy", "probe", "--config", r.Cfg, "--timeout", "10s", "lmtps.test")
		if code != 0 || !strings.Contains(out, "all 1 next-hop addresses meet the policy") {
			t.Errorf("probe lmtps.test: exit %d, want 0:\n%s%s", code, out, errErr(errOut))
		}
		if n := len(plain.Mails()) + len(secure.Mails()); n != 1 {
			t.Errorf("the LMTP servers saw %d MAIL commands, want 1 (the delivery; probe sends none)", n)
		}
	})
}

func errErr(s string) string {
	if s == "" {
		return ""
	}
	return "stderr: " + s
}

// TestRouteCredentials (issue 11, finding 3): route credentials go only to
// a next hop that offers AUTH inside TLS verified for the route's host
// (the CA in ca_file counts), or over the weaker session a route
// explicitly accepts. The password never appears in the transcript of a
// next hop that did not prove itself, and the mail waits with 4.7.x and a
// log line that says why; check-config warns about routes whose
// credentials the TLS policy does not back.
func TestRouteCredentials(t *testing.T) {
	requireTool(t, "swaks")
	const user, pass = "relay-user", "e2e-S3cret-pw"
	users := map[string]string{user: pass}
	ca := newTestCA(t)
	type hopCase struct {
		name   string
		host   string
		mx     mxOptions
		auth   string // the auth: flow mapping
		want   string // sent or deferred
		dsn    string
		reason string // in the log line
	}
	cases := []hopCase{
		{name: "self-signed, no AUTH offered", host: "selfsigned.smarthost.test",
			mx:   mxOptions{TLS: testutil.ServerTLS(testutil.SelfSigned(t, "selfsigned.smarthost.test"))},
			want: "deferred", dsn: "4.7.5", reason: "not verified as selfsigned.smarthost.test (certificate not trusted"},
		{name: "self-signed, AUTH offered", host: "selfsigned-auth.smarthost.test",
			mx:   mxOptions{TLS: testutil.ServerTLS(testutil.SelfSigned(t, "selfsigned-auth.smarthost.test")), Users: users},
			want: "deferred", dsn: "4.7.5", reason: "not verified as selfsigned-auth.smarthost.test"},
		{name: "valid certificate for another name", host: "wrongname.smarthost.test",
			mx:   mxOptions{TLS: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx.elsewhere.test"}})), Users: users},
			want: "deferred", dsn: "4.7.5", reason: "certificate name mismatch"},
		{name: "verified, no AUTH offered", host: "noauth.smarthost.test",
			mx:   mxOptions{TLS: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"noauth.smarthost.test"}}))},
			want: "deferred", dsn: "4.7.0", reason: "does not advertise AUTH"},
		{name: "no TLS", host: "plain.smarthost.test", mx: mxOptions{Users: users},
			want: "deferred", dsn: "4.7.10", reason: "not verified as plain.smarthost.test (the session is not encrypted)"},
		{name: "verified, AUTH offered", host: "good.smarthost.test",
			mx:   mxOptions{TLS: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"good.smarthost.test"}})), Users: users},
			want: "sent"},
		{name: "self-signed, auth.tls encrypt", host: "encrypt.smarthost.test",
			mx:   mxOptions{TLS: testutil.ServerTLS(testutil.SelfSigned(t, "encrypt.smarthost.test")), Users: users},
			auth: ", tls: encrypt", want: "sent"},
	}
	var zone, routes strings.Builder
	mxs := make([]*policyMX, len(cases))
	for i, c := range cases {
		mxs[i] = startPolicyMX(t, listenLoopback(t), c.mx)
		_, port, _ := strings.Cut(mxs[i].Addr, ":")
		fmt.Fprintf(&zone, "%s. A 127.0.0.1\n", c.host)
		fmt.Fprintf(&routes, "    - {match: dest%d.test, next_hop: \"smtp://%s:%s\", auth: {username: %s, password: %q%s}}\n", i, c.host, port, user, pass, c.auth)
	}
	dns := dnstest.NewServer(t, zone.String())
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Routes: routes.String(),
		TLS: fmt.Sprintf("    ca_file: %q\n", ca.pemFile)})

	ids := make([]string, len(cases))
	for i := range cases {
		ids[i] = r.send(t, fmt.Sprintf("c%d@example.test", i), fmt.Sprintf("user@dest%d.test", i), fmt.Sprintf("marker-cred-%d", i))
	}
	plainBlob := base64.StdEncoding.EncodeToString([]byte("\x00" + user + "\x00" + pass))
	for i, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := r.waitAttempt(t, ids[i], 20*time.Second)
			if a.Status != c.want {
				t.Fatalf("%s, want %s:\n%s", a.Status, c.want, a.Line)
			}
			tr := mxs[i].Transcript()
			if c.want == "sent" {
				if !strings.Contains(tr, "AUTH PLAIN "+plainBlob) || !slices.Equal(mxs[i].Logins(), []string{user}) {
					t.Errorf("the next hop saw logins %v; transcript:\n%s", mxs[i].Logins(), tr)
				}
				mxs[i].waitMessage(t, 5*time.Second)
				return
			}
			for _, secret := range []string{pass, plainBlob, base64.StdEncoding.EncodeToString([]byte(pass))} {
				if strings.Contains(tr, secret) {
					t.Errorf("the next hop's transcript contains %q:\n%s", secret, tr)
				}
			}
			if regexp.MustCompile(`(?mi)^AUTH`).MatchString(tr) {
				t.Errorf("the relay sent AUTH:\n%s", tr)
			}
			if len(mxs[i].Logins()) != 0 || mxs[i].Conns() == 0 {
				t.Errorf("logins %v, %d connections; want none and at least one", mxs[i].Logins(), mxs[i].Conns())
			}
			mxs[i].checkUntouched(t, fmt.Sprintf("marker-cred-%d", i), true)
			if !strings.Contains(a.Line, "dsn="+c.dsn) || !strings.Contains(a.Line, "route credentials not sent") || !strings.Contains(a.Line, c.reason) {
				t.Errorf("log line, want dsn=%s and %q:\n%s", c.dsn, c.reason, a.Line)
			}
			r.waitLine(t, 5*time.Second, "route credentials not sent, trying the next address", "user="+user, "relay="+c.host)
		})
	}

	t.Run("check-config warns", func(t *testing.T) {
		_, errOut, code := runRelayCmd(t, "check-config", "--config", r.Cfg)
		if code != 0 {
			t.Fatalf("check-config: exit %d\n%s", code, errOut)
		}
		for i, c := range cases {
			w := fmt.Sprintf("outbound.routes[%d].auth: the credentials go out only inside TLS verified for %s (auth.tls: verify), but the TLS policy for %s is may (default)", i, c.host, c.host)
			if got := strings.Contains(errOut, w); got != (c.auth == "") {
				t.Errorf("route %d (%s): warning %v, want %v:\n%s", i, c.host, got, c.auth == "", errOut)
			}
		}
	})
}

// TestTLSPolicyPooledSessionAcrossReload (issue 11 review: finding 1 with
// a reload in between): a session to the gateway, verified through the
// CA in ca_file and pooled, carries the next message; after a SIGHUP that
// drops that CA (compromised, replaced) it must carry nothing more. The
// next message gets a new session, which fails verify (4.7.5), and the
// gateway sees no envelope command for it.
func TestTLSPolicyPooledSessionAcrossReload(t *testing.T) {
	requireTool(t, "swaks")
	oldCA, newCA := newTestCA(t), newTestCA(t)
	gw := startPolicyMX(t, listenLoopback(t), mxOptions{TLS: testutil.ServerTLS(oldCA.issue(t, testutil.CertSpec{Names: []string{"gw.corp.test"}}))})
	_, port, _ := strings.Cut(gw.Addr, ":")
	dns := dnstest.NewServer(t, "gw.corp.test. A 127.0.0.1\n")
	tlsConf := func(ca *testCA) string {
		return fmt.Sprintf("    ca_file: %q\n    policies:\n      - {match: gw.corp.test, level: verify}\n", ca.pemFile)
	}
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), IdleTimeout: "5m",
		Routes: fmt.Sprintf("    - {match: .corp.test, next_hop: \"smtp://gw.corp.test:%s\"}\n", port), TLS: tlsConf(oldCA)})

	for i, rcpt := range []string{"x@a.corp.test", "y@b.corp.test"} {
		id := r.send(t, "s@example.test", rcpt, fmt.Sprintf("marker-before-%d", i))
		if a := r.waitAttempt(t, id, 20*time.Second); a.Status != "sent" || !strings.Contains(a.Line, "achieved=verify") {
			t.Fatalf("%s before the reload: %s, want sent with achieved=verify:\n%s", rcpt, a.Status, a.Line)
		}
	}
	if n := gw.Conns(); n != 1 {
		t.Fatalf("the gateway saw %d connections for two messages, want 1: nothing was pooled, so this test proves nothing", n)
	}

	cfg := readFile(t, r.Cfg)
	writeFile(t, r.Cfg, strings.Replace(cfg, tlsConf(oldCA), tlsConf(newCA), 1))
	mark := r.Mark()
	r.Signal(syscall.SIGHUP)
	r.WaitLog(mark, 10*time.Second, "configuration reloaded")

	id := r.send(t, "s@example.test", "z@a.corp.test", "marker-after-reload")
	a := r.waitAttempt(t, id, 20*time.Second)
	if a.Status != "deferred" || !strings.Contains(a.Line, "dsn=4.7.5") || !strings.Contains(a.Line, "certificate not trusted") {
		t.Errorf("after the CA was dropped: %s, want deferred with 4.7.5 (certificate not trusted):\n%s", a.Status, a.Line)
	}
	if n := len(gw.Mails()); n != 2 {
		t.Errorf("the gateway saw %d MAIL commands, want the 2 from before the reload", n)
	}
	if strings.Contains(gw.Transcript(), "marker-after-reload") || slices.Contains(gw.Rcpts(), "z@a.corp.test") {
		t.Errorf("the message sent after the reload reached the gateway:\n%s", gw.Transcript())
	}
}

// TestTLSPolicyLMTPHandshakeFails (issue 11 review: finding 2, a server
// that offers STARTTLS and then fails the handshake): at may the delivery
// retries in clear text, as over SMTP; under a rule that requires TLS
// (encrypt) it is deferred with 4.7.10 and the LMTP server gets no
// envelope command.
func TestTLSPolicyLMTPHandshakeFails(t *testing.T) {
	requireTool(t, "swaks")
	broken := &tls.Config{GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
		return nil, errors.New("no certificate today")
	}}
	mayLMTP := startPolicyMX(t, listenLoopback(t), mxOptions{LMTP: true, TLS: broken})
	encLMTP := startPolicyMX(t, listenLoopback(t), mxOptions{LMTP: true, TLS: broken})
	dns := dnstest.NewServer(t, "")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(),
		Routes: fmt.Sprintf("    - {match: lmtp-may.test, next_hop: \"lmtp://%s\"}\n    - {match: lmtp-enc.test, next_hop: \"lmtp://%s\"}\n",
			mayLMTP.Addr, encLMTP.Addr),
		TLS: "    policies:\n      - {match: lmtp-enc.test, level: encrypt}\n"})

	id := r.send(t, "s@example.test", "u@lmtp-may.test", "marker-lmtp-may")
	if a := r.waitAttempt(t, id, 20*time.Second); a.Status != "sent" || !strings.Contains(a.Line, "achieved=none") {
		t.Errorf("may, failed handshake: %s, want sent in clear text:\n%s", a.Status, a.Line)
	}
	r.waitLine(t, 5*time.Second, "STARTTLS failed, retrying in clear", "relay=127.0.0.1")
	if m := mayLMTP.waitMessage(t, 5*time.Second); m.TLS {
		t.Errorf("the LMTP server got the message inside TLS, after a failed handshake?")
	}

	id = r.send(t, "s@example.test", "u@lmtp-enc.test", "marker-lmtp-enc")
	a := r.waitAttempt(t, id, 20*time.Second)
	if a.Status != "deferred" || !strings.Contains(a.Line, "dsn=4.7.10") || !strings.Contains(a.Line, "tls required=encrypt (policy rule 1 (match lmtp-enc.test))") {
		t.Errorf("encrypt, failed handshake: %s, want deferred with 4.7.10 under rule 1:\n%s", a.Status, a.Line)
	}
	encLMTP.checkUntouched(t, "marker-lmtp-enc", true)
}
