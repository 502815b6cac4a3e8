package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
)

// TestEnvelopeChecksSession walks one SMTP session through every envelope
// check of the inbound listener, in order, and asserts the exact reply and
// enhanced status at each step: unqualified senders (no dot, no domain),
// sender domain that does not exist, null MX, a good sender; an unqualified
// recipient, another domain, an unknown recipient, a known one, and the bare
// <Postmaster> that RFC 5321 requires us to take; DATA.
func TestEnvelopeChecksSession(t *testing.T) {
	dns := dnstest.NewServer(t, `example.org.   MX 10 mail.example.org.
mail.example.org. A 192.0.2.1
nullmx.example. MX 0 .
`)
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dir := t.TempDir()
	mx := freeAddr(t)
	users := filepath.Join(dir, "users.txt")
	writeFile(t, users, "bob\n")
	cfg := filepath.Join(dir, "relay.yaml")
	head := strings.Replace(configHeadChecks(filepath.Join(dir, "state"), dns.Addr(), "reject"),
		"postmaster: postmaster@relay.e2e.test", "postmaster: postmaster@example.test", 1)
	writeFile(t, cfg, head+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  example.test:
    deliver_to: "smtp://%s"
    recipients: {file: %q}
outbound:
%s`, mx, down.Addr, users, outboundTimeouts))
	r := startRelay(t, cfg, mx)

	c := dialSMTP(t, mx)
	c.Expect("EHLO client.example.org", 250)
	for _, step := range []struct {
		cmd, want string
	}{
		{"MAIL FROM:<alice@localhost>", "553 5.1.7 "},
		{"MAIL FROM:<alice>", "553 5.1.7 "},
		{"MAIL FROM:<alice@nx.example>", "550 5.1.8 "},
		{"MAIL FROM:<alice@nullmx.example>", "550 5.7.27 "}, // RFC 7505 section 4.2
		{"MAIL FROM:<alice@example.org>", "250 "},
		{"RCPT TO:<carol>", "553 5.1.3 "},
		{"RCPT TO:<bob@elsewhere.test>", "554 5.7.1 "},
		{"RCPT TO:<mallory@example.test>", "550 5.1.1 "},
		{"RCPT TO:<bob@example.test>", "250 "},
		{"RCPT TO:<PostMaster>", "250 "},
		{"DATA", "354 "},
	} {
		// Reply's text is the whole reply line, code included.
		if _, text := c.Cmd(step.cmd); !strings.HasPrefix(text, step.want) {
			t.Fatalf("%s: got %q, want %q…", step.cmd, text, step.want)
		}
	}
	c.Write("Subject: through every check\r\n\r\nhello\r\n.\r\n")
	if code, text := c.Reply(); code != 250 || !strings.Contains(text, "queued as") {
		t.Fatalf("end of DATA: %d %s", code, text)
	}
	if m := down.WaitMessages(t, 1, 10*time.Second)[0]; m.From != "alice@example.org" || strings.Join(m.To, ",") != "bob@example.test,postmaster@example.test" {
		t.Errorf("downstream got from %q to %v", m.From, m.To)
	}
	for _, check := range []string{"check=sender_fqdn", "check=recipient_fqdn", "check=sender_domain", "check=unknown_recipient"} {
		r.WaitLog(0, 5*time.Second, "msg=reject", check)
	}
}

// TestPregreetWithRealClient: with the pregreet test on, a client that
// talks at once is refused with 554 5.5.1, while swaks (which, as a real
// MTA does, waits for the last greeting line) delivers normally.
func TestPregreetWithRealClient(t *testing.T) {
	requireTool(t, "swaks")
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dir := t.TempDir()
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, strings.Replace(configHead(filepath.Join(dir, "state"), dns.Addr()), "inbound:\n", "inbound:\n  screen: {pregreet: 500ms}\n", 1)+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  example.test: {deliver_to: "smtp://%s"}
outbound:
%s`, mx, down.Addr, outboundTimeouts))
	r := startRelay(t, cfg, mx)
	// The early talker first: once a client from 127.0.0.1 has passed,
	// the screening cache would spare it the wait.
	conn := dialRaw(t, mx)
	fmt.Fprintf(conn, "EHLO bot.example\r\n")
	buf := make([]byte, 512)
	var got strings.Builder
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, err := conn.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(got.String(), "\r\n554 5.5.1 ") {
		t.Errorf("early talker got %q, want the 220- line then 554 5.5.1 and a closed connection", got.String())
	}
	res := mustSend(t, "--server", mx, "--from", "alice@example.org", "--to", "bob@example.test")
	if !strings.Contains(res.Out, "<-  220-relay.e2e.test") {
		t.Errorf("swaks did not see a multi-line greeting:\n%s", res.Out)
	}
	down.WaitMessages(t, 1, 10*time.Second)

	r.WaitLog(0, 5*time.Second, "stage=pregreet")
}

// dialRaw connects without reading anything.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDeepProtocolTestSurvivesRestart: with the deep protocol test on, a
// new client's first MAIL gets 450 4.7.1 and its retry is accepted; the
// pass is kept in state_dir, so after a restart the same client is not
// sent back with 450 again (as postscreen's cache map keeps it).
func TestDeepProtocolTestSurvivesRestart(t *testing.T) {
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dir := t.TempDir()
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  example.test: {deliver_to: "smtp://%s"}
outbound:
%s`, mx, down.Addr, outboundTimeouts))
	writeFile(t, cfg, strings.Replace(readFile(t, cfg), "inbound:\n", "inbound:\n  screen: {deep_protocol_test: true, cache_ttl: 1h}\n", 1))

	mail := func(want string) {
		t.Helper()
		c := dialSMTP(t, mx)
		defer c.conn.Close()
		c.Expect("EHLO client.example.org", 250)
		if _, text := c.Cmd("MAIL FROM:<alice@example.org>"); !strings.HasPrefix(text, want) {
			t.Fatalf("MAIL FROM: got %q, want %q…", text, want)
		}
	}
	r := startRelay(t, cfg, mx)
	mail("450 4.7.1 ")
	mail("250 ")
	r.Stop()
	if b, err := os.ReadFile(filepath.Join(dir, "state", "screen-cache.json")); err != nil || !strings.Contains(string(b), `"127.0.0.1"`) {
		t.Fatalf("screening cache after shutdown: %q, %v; want 127.0.0.1 in it", b, err)
	}
	r = startRelay(t, cfg, mx)
	r.WaitLog(0, 5*time.Second, "securerelay started", "screened_clients=1")
	mail("250 ")
}

// ampZone is an SPF record of ten mx: terms with ten hosts each, none of
// them the client: RFC 7208 §4.6.4's worst case short of permerror.
func ampZone() string {
	var b strings.Builder
	b.WriteString(`amp.test. TXT "v=spf1`)
	for i := range 10 {
		fmt.Fprintf(&b, " mx:m%d.amp.test", i)
	}
	b.WriteString(" -all\"\n")
	for i := range 10 {
		for j := range 10 {
			fmt.Fprintf(&b, "m%d.amp.test. MX 10 h%d.m%d.amp.test.\n", i, j, i)
			fmt.Fprintf(&b, "h%d.m%d.amp.test. A 192.0.2.%d\n", j, i, 10*i+j+1)
			fmt.Fprintf(&b, "h%d.m%d.amp.test. AAAA 2001:db8::%d\n", j, i, 10*i+j+1)
		}
	}
	return b.String()
}

// ampQueries counts the DNS questions about amp.test by type.
func ampQueries(dns *dnstest.Server) map[string]int {
	n := map[string]int{}
	for _, q := range dns.Queries() {
		if q.Name == "amp.test" || strings.HasSuffix(q.Name, ".amp.test") {
			n[q.Type]++
		}
	}
	return n
}

// TestSPFAtFirstRecipient (issue 11, finding 11): with inbound.auth on, an
// unauthenticated client used to make the relay send 211 DNS questions
// (every MX host asked for A and AAAA) per MAIL FROM of a sender with a
// ten-mx SPF record, repeatable with RSET, before naming any valid
// recipient. Now SPF is evaluated once per transaction, at the first
// accepted RCPT: a MAIL whose recipients are all refused costs nothing,
// and an evaluation asks only for the client's address family (IPv4
// here): 1 TXT + 10 MX + 100 A. With reject_spf_fail the SPF refusal
// therefore comes at RCPT (550 5.7.23).
func TestSPFAtFirstRecipient(t *testing.T) {
	dns := dnstest.NewServer(t, ampZone()+`
reject.test. TXT "v=spf1 ip4:192.0.2.1 -all"
`)
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	const authInbound = "  auth:\n    enabled: true\n"
	domains := fmt.Sprintf("  example.test: {deliver_to: \"smtp://%s\"}\n", down.Addr)
	_, mx, _ := startContentRelay(t, dns.Addr(), authInbound, domains)

	c := dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	for range 3 {
		c.Expect("MAIL FROM:<x@amp.test>", 250)
		c.Expect("RCPT TO:<victim@elsewhere.test>", 554)
		c.Expect("RSET", 250)
	}
	if n := ampQueries(dns); len(n) != 0 {
		t.Errorf("three MAIL FROM without an accepted recipient asked DNS %v; want nothing", n)
	}
	c.Expect("MAIL FROM:<x@amp.test>", 250)
	c.Expect("RCPT TO:<victim@elsewhere.test>", 554)
	c.Expect("RCPT TO:<bob@example.test>", 250)
	c.Expect("RCPT TO:<postmaster@example.test>", 250)
	c.Expect("RSET", 250)
	c.Expect("QUIT", 221)
	want := map[string]int{"TXT": 1, "MX": 10, "A": 100}
	if got := ampQueries(dns); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("one transaction with two accepted recipients asked DNS %v; want %v (once, IPv4 only)", got, want)
	}

	_, mx2, _ := startContentRelay(t, dns.Addr(), authInbound+"    reject_spf_fail: true\n", domains)
	c = dialSMTP(t, mx2)
	c.Expect("EHLO client.e2e.test", 250)
	c.Expect("MAIL FROM:<boss@reject.test>", 250)
	c.Expect("RCPT TO:<victim@elsewhere.test>", 554)
	for _, rcpt := range []string{"bob@example.test", "postmaster@example.test"} {
		if code, text := c.Cmd("RCPT TO:<" + rcpt + ">"); code != 550 || !strings.HasPrefix(text, "550 5.7.23 ") {
			t.Errorf("RCPT TO:<%s> from a sender whose SPF fails us: %q, want 550 5.7.23", rcpt, text)
		}
	}
	c.Expect("RSET", 250)
	c.Expect("QUIT", 221)
}

// TestMailPerSessionCap (issue 11, finding 11): MAIL/RSET could be
// repeated without limit in one session, each MAIL costing DNS work.
// inbound.max_mail_per_session (default 100) ends the session with
// 421 4.7.0 at the MAIL over the cap, logged and counted once; the
// client reconnects and goes on.
func TestMailPerSessionCap(t *testing.T) {
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	domains := fmt.Sprintf("  example.test: {deliver_to: \"smtp://%s\"}\n", down.Addr)
	r, mx, _ := startContentRelay(t, dns.Addr(), "  auth:\n    enabled: true\n", domains)
	c := dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	for i := range 100 {
		if code, text := c.Cmd("MAIL FROM:<a@example.org>"); code != 250 {
			t.Fatalf("MAIL number %d: %q, want 250", i+1, text)
		}
		c.Expect("RSET", 250)
	}
	code, text := c.Cmd("MAIL FROM:<a@example.org>")
	if code != 421 || !strings.HasPrefix(text, "421 4.7.0 ") {
		t.Fatalf("MAIL number 101: %q, want 421 4.7.0", text)
	}
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.br.ReadByte(); err == nil {
		t.Errorf("the connection stays open after 421 (read %q)", n)
	}
	r.WaitLog(0, 5*time.Second, "msg=reject", "check=max_mail_per_session")
	if n := len(r.LogLines("msg=reject")); n != 1 {
		t.Errorf("%d refusal lines, want 1", n)
	}
	c = dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	c.Expect("MAIL FROM:<a@example.org>", 250)
	c.Expect("QUIT", 221)
}

// TestPartnerNullSender (issue 11, finding 12): the partner rule
// (inbound: reject on an outbound.tls.policies entry) refused the
// partner's envelope sender in clear text, but not MAIL FROM:<>, so the
// partner's DSNs and MDNs, which quote the original, came in clear. A
// null sender names nobody; what names the partner's server before any
// content is sent is its EHLO name: a plaintext session whose EHLO name
// is the partner domain or a host under it is refused at MAIL, whatever
// the sender. Over STARTTLS, and from other servers, <> is accepted.
func TestPartnerNullSender(t *testing.T) {
	dns := dnstest.NewServer(t, "")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Inbound: true,
		TLS: "    policies:\n" +
			"      - {match: partner.test, level: encrypt, inbound: reject}\n" +
			"      - {match: .insurer.test, level: encrypt, inbound: tempfail}\n"})
	var delivered []string
	for i, tc := range []struct {
		helo, from string
		tls        bool
		want       string
	}{
		{"mx1.partner.test", "", false, "530 5.7.0 "},
		{"PARTNER.test.", "", false, "530 5.7.0 "},
		{"mx1.partner.test", "bounces+x@esp.example", false, "530 5.7.0 "},
		{"mail.eu.insurer.test", "", false, "450 4.7.0 "},
		{"mx1.partner.test", "", true, "250 "},
		{"mx.other.test", "", false, "250 "},
		{"notpartner.test", "", false, "250 "},
		{"insurer.test", "", false, "250 "}, // ".x" names subdomains only
	} {
		c := dialSMTP(t, r.MX)
		c.Expect("EHLO "+tc.helo, 250)
		if tc.tls {
			c.startTLS()
			c.Expect("EHLO "+tc.helo, 250)
		}
		_, text := c.Cmd("MAIL FROM:<" + tc.from + ">")
		if !strings.HasPrefix(text, tc.want) {
			t.Errorf("EHLO %s, TLS %v, MAIL FROM:<%s>: %q, want %q…", tc.helo, tc.tls, tc.from, text, tc.want)
		}
		if strings.HasPrefix(text, "250 ") {
			// One recipient each: the auto-reply loop limit counts
			// messages from <> per recipient.
			rcpt := fmt.Sprintf("r%d@example.test", i)
			c.Expect("RCPT TO:<"+rcpt+">", 250)
			c.Expect("DATA", 354)
			c.Write("From: MAILER-DAEMON@" + tc.helo + "\r\nSubject: report via " + tc.helo + "\r\n\r\nthe original, quoted\r\n.\r\n")
			if code, text := c.Reply(); code != 250 {
				t.Fatalf("end of DATA: %q", text)
			}
			delivered = append(delivered, rcpt)
		} else if !strings.Contains(text, "must arrive over TLS") {
			t.Errorf("reply %q does not say why", text)
		}
		c.Cmd("QUIT")
	}
	for _, rcpt := range delivered {
		waitMaildir(t, r.Mail, rcpt, 1, 10*time.Second)
	}
	if got := mailboxes(t, r.Mail); len(got) != len(delivered) {
		t.Errorf("mailboxes %v, want %v", got, delivered)
	}
	r.waitLine(t, 5*time.Second, "msg=reject", "check=plaintext_partner", "helo=mx1.partner.test", "rule=outbound.tls.policies[0]")
}

// TestDNSAnswersCached: the relay keeps DNS answers for their TTL
// (dns.cache_size, on by default), so three messages from one sender
// domain ask for its SPF and DMARC records once, not three times.
func TestDNSAnswersCached(t *testing.T) {
	dns := dnstest.NewServer(t, `
cache.test. 300 MX 10 mail.cache.test.
mail.cache.test. 300 A 127.0.0.1
cache.test. 300 TXT "v=spf1 ip4:127.0.0.0/8 -all"
_dmarc.cache.test. 300 TXT "v=DMARC1; p=none"
`)
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	domains := fmt.Sprintf("  example.test: {deliver_to: \"smtp://%s\"}\n", down.Addr)
	_, mx, _ := startContentRelay(t, dns.Addr(), "  auth:\n    enabled: true\n", domains)
	for i := range 3 {
		mustSend(t, "--server", mx, "--from", "alice@cache.test", "--to", "bob@example.test",
			"--header", "From: alice@cache.test", "--header", fmt.Sprintf("Subject: cached %d", i))
	}
	down.WaitMessages(t, 3, 30*time.Second)
	n := map[string]int{}
	for _, q := range dns.Queries() {
		if strings.HasSuffix(q.Name, "cache.test") {
			n[q.Name+" "+q.Type]++
		}
	}
	for _, k := range []string{"cache.test TXT", "_dmarc.cache.test TXT"} {
		if n[k] != 1 {
			t.Errorf("%s asked %d times for three messages, want 1 (questions: %v)", k, n[k], n)
		}
	}
}
