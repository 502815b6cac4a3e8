package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"securerelay/dnsutil/dnstest"
	"securerelay/dsn"
	"securerelay/internal/testutil"
)

// partnerZone sends partner.test's mail to mxIP (port 25).
func partnerZone(mxIP string) string {
	return fmt.Sprintf(`partner.test.    MX 10 mx.partner.test.
mx.partner.test. A  %s
example.org.     A  192.0.2.1
`, mxIP)
}

// submissionConfig is a relay with an outbound listener that trusts only
// 10.0.0.0/8 (so that 127.0.0.1 must authenticate), the user otrs, and
// example.test as a local maildir domain.
func submissionConfig(dir, resolver, sub, mx, hash string) string {
	return configHead(filepath.Join(dir, "state"), resolver) + fmt.Sprintf(`listeners:
  - name: mx
    address: %q
    role: inbound
  - name: submission
    address: %q
    role: outbound
    trusted_networks: [10.0.0.0/8]
    auth: optional
domains:
  example.test:
    deliver_to: "maildir:%s"
outbound:
  users:
    - name: otrs
      password_hash: %q
%s`, mx, sub, filepath.Join(dir, "mail"), hash, outboundTimeouts)
}

func bcryptHash(t *testing.T, pass string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// TestSubmissionAuthToMX: an authenticated client submits over STARTTLS;
// the relay finds the partner's MX in (test) DNS and delivers there on
// port 25 over TLS. Without AUTH, or AUTH in clear, nothing is relayed.
func TestSubmissionAuthToMX(t *testing.T) {
	requireTool(t, "swaks")
	mxDown := startTestServer(t, listenMX(t, "127.0.0.5"), serverOptions{TLS: testutil.ServerTLS(testutil.SelfSigned(t, "mx.partner.test"))})
	dns := dnstest.NewServer(t, partnerZone("127.0.0.5"))

	dir := t.TempDir()
	mx, sub := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, submissionConfig(dir, dns.Addr(), sub, mx, bcryptHash(t, "s3cret pass")))
	r := startRelay(t, cfg, mx, sub)

	var want []string
	for _, mech := range []string{"PLAIN", "LOGIN"} {
		t.Run("auth "+mech, func(t *testing.T) {
			to := "user-" + strings.ToLower(mech) + "@partner.test"
			res := mustSend(t, "--server", sub, "--tls", "--auth", mech, "--auth-user", "otrs", "--auth-password", "s3cret pass",
				"--from", "otrs@example.test", "--to", to, "--header", "Subject: e2e auth "+mech)
			want = append(want, to)
			msgs := mxDown.WaitMessages(t, len(want), 10*time.Second)
			m := msgs[len(msgs)-1]
			if m.From != "otrs@example.test" || len(m.To) != 1 || m.To[0] != to {
				t.Errorf("MX got envelope from %q to %q, want otrs@example.test to [%s]", m.From, m.To, to)
			}
			if !m.TLS {
				t.Errorf("MX received the message without TLS; it offered STARTTLS")
			}
			if m.Helo != "relay.e2e.test" {
				t.Errorf("relay said EHLO %q to the MX, want relay.e2e.test (outbound.helo defaults to hostname)", m.Helo)
			}
			if !strings.Contains(string(m.Data), "Subject: e2e auth "+mech) {
				t.Errorf("MX got the wrong message:\n%s", m.Data)
			}
			// Our Received: records the submission with TLS and AUTH.
			if !strings.Contains(headerSection(m.Data), "with ESMTPSA id "+res.QueueID()) {
				t.Errorf("Received: does not say ESMTPSA id %s:\n%s", res.QueueID(), headerSection(m.Data))
			}
			if !strings.Contains(res.Out, "AUTH "+mech) {
				t.Errorf("swaks did not use AUTH %s:\n%s", mech, res.Out)
			}
			r.WaitLog(0, 5*time.Second, "msg=authenticated", "mechanism="+mech, "sasl_username=otrs")
			line := r.WaitLog(0, 5*time.Second, "msg=sent", "queue_id="+res.QueueID())
			if !strings.Contains(line, "127.0.0.5") || !strings.Contains(line, "TLS1.") {
				t.Errorf("delivery log line does not show the MX address and TLS: %s", line)
			}
		})
	}

	t.Run("no auth", func(t *testing.T) {
		for _, tlsArg := range [][]string{nil, {"--tls"}} {
			args := append([]string{"--server", sub, "--from", "otrs@example.test", "--to", "stranger@partner.test"}, tlsArg...)
			res := swaks(t, args...)
			errs := res.ErrorReplies()
			if res.Code != 23 || len(errs) == 0 || !strings.HasPrefix(errs[0], "530 5.7.0 ") {
				t.Errorf("swaks %v: exit %d, refusals %q; want MAIL refused with 530 5.7.0:\n%s", tlsArg, res.Code, errs, res.Out)
			}
		}
	})

	t.Run("wrong password", func(t *testing.T) {
		res := swaks(t, "--server", sub, "--tls", "--auth", "PLAIN", "--auth-user", "otrs", "--auth-password", "wrong",
			"--from", "otrs@example.test", "--to", "stranger@partner.test")
		errs := res.ErrorReplies()
		if res.Code != 28 || len(errs) == 0 || !strings.HasPrefix(errs[0], "535 5.7.8") {
			t.Errorf("exit %d, refusals %q; want AUTH refused with 535 5.7.8:\n%s", res.Code, errs, res.Out)
		}
	})

	t.Run("auth before STARTTLS", func(t *testing.T) {
		// swaks will not even try: AUTH is not offered in clear.
		res := swaks(t, "--server", sub, "--auth", "PLAIN", "--auth-user", "otrs", "--auth-password", "s3cret pass",
			"--from", "otrs@example.test", "--to", "stranger@partner.test")
		if res.Code == 0 {
			t.Fatalf("swaks --auth without --tls succeeded:\n%s", res.Out)
		}
		// A client that sends AUTH anyway is refused, and stays
		// unauthenticated.
		c := dialSMTP(t, sub)
		ehlo := c.Expect("EHLO client.e2e.test", 250)
		if strings.Contains(ehlo, "AUTH") {
			t.Errorf("AUTH offered before STARTTLS:\n%s", ehlo)
		}
		if !strings.Contains(ehlo, "STARTTLS") {
			t.Errorf("STARTTLS not offered:\n%s", ehlo)
		}
		code, text := c.Cmd("AUTH PLAIN AG90cnMAczNjcmV0IHBhc3M=") // \0otrs\0s3cret pass
		if code < 500 || code > 599 {
			t.Errorf("AUTH PLAIN in clear: %q, want a 5xx refusal", text)
		}
		code, text = c.Cmd("MAIL FROM:<otrs@example.test>")
		if code != 530 || !strings.HasPrefix(text, "530 5.7.0") {
			t.Errorf("MAIL after refused clear-text AUTH: %q, want 530 5.7.0", text)
		}
		c.Cmd("QUIT")
	})

	// Only the two authenticated messages ever reached the MX.
	time.Sleep(200 * time.Millisecond)
	if got := mxDown.Rcpts(); strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("MX saw RCPT TO %q, want %q", got, want)
	}
}

// TestDSN: a permanent failure at the partner's MX becomes a DSN to a
// local sender; never a DSN to the null sender, never one for inbound mail.
func TestDSN(t *testing.T) {
	requireTool(t, "swaks")
	unknown := &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user here (e2e partner)"}
	mxDown := startTestServer(t, listenMX(t, "127.0.0.6"), serverOptions{
		TLS:     testutil.ServerTLS(testutil.SelfSigned(t, "mx.partner.test")),
		RcptErr: func(string) error { return unknown },
	})
	refusing := startTestServer(t, listenLoopback(t), serverOptions{
		DataErr: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "downstream refuses everything (e2e)"},
	})
	dns := dnstest.NewServer(t, partnerZone("127.0.0.6"))

	dir := t.TempDir()
	mail := filepath.Join(dir, "mail")
	mx, sub := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - name: mx
    address: %q
    role: inbound
  - name: submission
    address: %q
    role: outbound
    trusted_networks: [127.0.0.0/8]
domains:
  example.test:
    deliver_to: "maildir:%s"
  refusing.test:
    deliver_to: "smtp://%s"
outbound:
%s`, mx, sub, mail, refusing.Addr, outboundTimeouts))
	r := startRelay(t, cfg, mx, sub)

	t.Run("bounce to sender", func(t *testing.T) {
		res := mustSend(t, "--server", sub, "--from", "sender@example.test", "--to", "user@partner.test",
			"--header", "Subject: e2e will bounce")
		dsns := waitMaildir(t, mail, "sender@example.test", 1, 10*time.Second)
		if len(dsns) != 1 {
			t.Fatalf("%d DSNs, want 1", len(dsns))
		}
		d := string(dsns[0])
		for _, re := range []string{
			`(?im)^Content-Type: multipart/report;(.|\r?\n[ \t])*report-type="?delivery-status`,
			`(?im)^Content-Type: message/delivery-status`,
			`(?im)^Final-Recipient: rfc822; ?user@partner\.test\r?$`,
			`(?im)^Action: failed\r?$`,
			`(?im)^Status: 5\.1\.1\r?$`,
			// The remote reply, quoted (perhaps folded).
			`(?i)550[ -]5\.1\.1\s+no\s+such\s+user\s+here\s+\(e2e\s+partner\)`,
			`Subject: e2e will bounce`,
		} {
			if !regexp.MustCompile(re).MatchString(d) {
				t.Errorf("DSN does not match %s:\n%s", re, d)
			}
		}
		r.WaitLog(0, 5*time.Second, "sender non-delivery notification", "queue_id="+res.QueueID())
	})

	var heldIDs []string
	t.Run("null sender", func(t *testing.T) {
		// A genuine notification (the only thing <> may send) that the
		// partner refuses: it must not cause a DSN of its own.
		res := mustSend(t, "--server", sub, "--from", "<>", "--to", "user@partner.test", "--data", "@"+dsnFile(t))
		r.WaitLog(0, 10*time.Second, "no DSN for the null sender", "queue_id="+res.QueueID())
		heldIDs = append(heldIDs, res.QueueID())
	})

	t.Run("inbound refused downstream", func(t *testing.T) {
		res := mustSend(t, "--server", mx, "--from", "other@example.test", "--to", "someone@refusing.test")
		r.WaitLog(0, 10*time.Second, "no DSN is sent for inbound mail", "queue_id="+res.QueueID())
		heldIDs = append(heldIDs, res.QueueID())
	})

	// Let anything that should not exist arrive, then look everywhere.
	deadline := time.Now().Add(5 * time.Second)
	for {
		out, _, code := runRelayCmd(t, "queue", "count", "--config", cfg)
		if code == 0 && strings.TrimSpace(out) == "0" {
			break
		}
		if time.Now().After(deadline) {
			qlist, _, _ := runRelayCmd(t, "queue", "list", "--config", cfg)
			t.Fatalf("spool not empty 5s after the last attempt:\n%s", qlist)
		}
		time.Sleep(50 * time.Millisecond)
	}
	// Nobody could be told about those two: they are kept, not deleted.
	qlist, _, _ := runRelayCmd(t, "queue", "list", "--config", cfg)
	for _, id := range heldIDs {
		if !regexp.MustCompile(`(?m)^` + id + `\s.*\sheld\s`).MatchString(qlist) {
			t.Errorf("queue list does not show %s as held:\n%s", id, qlist)
		}
	}
	time.Sleep(300 * time.Millisecond)
	if boxes := mailboxes(t, mail); strings.Join(boxes, ",") != "sender@example.test" {
		t.Errorf("mailboxes %q, want only sender@example.test (one DSN)", boxes)
	}
	if n := len(maildirMessages(t, mail, "sender@example.test")); n != 1 {
		t.Errorf("sender@example.test has %d messages, want exactly 1 DSN", n)
	}
	if n := len(r.LogLines("sender non-delivery notification")); n != 1 {
		t.Errorf("%d DSNs logged, want 1", n)
	}
	if got := len(refusing.Messages()); got != 0 {
		t.Errorf("refusing downstream accepted %d messages", got)
	}
	if len(mxDown.Messages()) != 0 {
		t.Errorf("partner MX accepted a message although it refuses every recipient")
	}
}

// TestNullSenderPolicy: on an outbound listener, <> is for notifications
// only. A ticket system's plain notification from <> is refused with
// 550 5.7.1 by default; with null_sender: rewrite it leaves from the
// configured address, with a header saying so; a real DSN passes as is.
func TestNullSenderPolicy(t *testing.T) {
	requireTool(t, "swaks")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	strict, rewrite := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: strict, address: %q, role: outbound, trusted_networks: [127.0.0.0/8]}
  - {name: rewrite, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], null_sender: rewrite, null_sender_address: noreply@example.test}
domains:
  example.test: {deliver_to: "maildir:%s"}
outbound:
  routes: [{match: "*", next_hop: "smtp://%s"}]
%s`, strict, rewrite, filepath.Join(dir, "mail"), down.Addr, outboundTimeouts))
	startRelay(t, cfg, strict, rewrite)

	res := swaks(t, "--server", strict, "--from", "<>", "--to", "agent@partner.test", "--header", "Subject: Ticket 4711 updated")
	errs := res.ErrorReplies()
	if len(errs) == 0 || !strings.HasPrefix(errs[0], "550 5.7.1 ") || !strings.Contains(errs[0], "set a sender address") {
		t.Errorf("plain notification from <>: refusals %q, want 550 5.7.1 telling to set a sender address:\n%s", errs, res.Out)
	}

	mustSend(t, "--server", rewrite, "--from", "<>", "--to", "agent@partner.test", "--header", "Subject: Ticket 4712 updated")
	m := down.WaitMessages(t, 1, 10*time.Second)[0]
	if m.From != "noreply@example.test" {
		t.Errorf("rewritten envelope sender %q, want noreply@example.test", m.From)
	}
	if !strings.Contains(headerSection(m.Data), "X-Securerelay-Null-Sender: envelope sender <> rewritten to <noreply@example.test>") ||
		!strings.Contains(string(m.Data), "Subject: Ticket 4712 updated") {
		t.Errorf("rewritten message lacks the header or its content:\n%s", m.Data)
	}

	mustSend(t, "--server", strict, "--from", "<>", "--to", "agent@partner.test", "--data", "@"+dsnFile(t))
	m = down.WaitMessages(t, 2, 10*time.Second)[1]
	if m.From != "" || strings.Contains(string(m.Data), "X-Securerelay-Null-Sender") {
		t.Errorf("a DSN from <> was changed: envelope from %q", m.From)
	}
}

// dsnFile writes a minimal delivery status notification, the kind of
// message the null sender exists for.
func dsnFile(t *testing.T) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "dsn.eml")
	writeFile(t, f, "From: MAILER-DAEMON@kopano.example.test\r\nTo: someone@example.test\r\n"+
		"Subject: Undelivered Mail\r\nDate: Sat, 28 Nov 2026 12:00:00 +0000\r\nMIME-Version: 1.0\r\n"+
		"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n"+
		"--b\r\nContent-Type: text/plain\r\n\r\nundeliverable\r\n"+
		"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; kopano.example.test\r\n\r\n"+
		"Final-Recipient: rfc822; x@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n\r\n--b--\r\n")
	return f
}

// TestMXListNamingUs: RFC 5321 §5.1, with the relay's inbound listener on
// 127.0.0.90:25 (self.e2e.test). backup.test lists self.e2e.test as its
// backup MX behind a primary that is down: the relay must defer, not
// hand the message to itself (its inbound listener would refuse it as
// not ours, and the outage would become a bounce). loop.test lists only
// us: the message is returned at once with 5.4.6, not retried against
// ourselves. named.test's MX carries the relay's host name but another
// machine's address: names do not make an MX ours, and the mail goes there.
func TestMXListNamingUs(t *testing.T) {
	requireTool(t, "swaks")
	listenMX(t, "127.0.0.90").Close() // skips (or fails under CI) without root
	other := startTestServer(t, listenMX(t, "127.0.0.92"), serverOptions{})
	dns := dnstest.NewServer(t, `backup.test.    MX 10 mx.backup.test.
backup.test.    MX 20 self.e2e.test.
mx.backup.test. A  127.0.0.91
self.e2e.test.  A  127.0.0.90
loop.test.      MX 10 self.e2e.test.
named.test.     MX 10 relay.e2e.test.
relay.e2e.test. A  127.0.0.92
example.org.    A  192.0.2.1
`)
	dir := t.TempDir()
	sub := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: "127.0.0.90:25", role: inbound}
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8]}
domains:
  example.test: {deliver_to: "maildir:%s"}
outbound:
%s`, sub, filepath.Join(dir, "mail"), outboundTimeouts))
	r := startRelay(t, cfg, "127.0.0.90:25", sub)
	p := &policyRelay{Relay: r}

	res := mustSend(t, "--server", sub, "--from", "otrs@example.test", "--to", "user@backup.test")
	a := p.waitAttempt(t, res.QueueID(), 30*time.Second)
	if a.Status != "deferred" || !strings.Contains(a.Line, "127.0.0.91") {
		t.Errorf("backup.test with its primary down: %s, want deferred after trying only mx.backup.test:\n%s", a.Status, a.Line)
	}

	res = mustSend(t, "--server", sub, "--from", "otrs@example.test", "--to", "user@loop.test")
	a = p.waitAttempt(t, res.QueueID(), 30*time.Second)
	if a.Status != "bounced" || !strings.Contains(a.Line, "dsn=5.4.6") || !strings.Contains(a.Line, "loops back to this relay") {
		t.Errorf("loop.test: %s, want bounced with 5.4.6:\n%s", a.Status, a.Line)
	}
	if l := r.LogLines("listener=mx", "client="); len(l) > 0 {
		t.Errorf("the relay connected to its own MX listener:\n%s", strings.Join(l, "\n"))
	}

	res = mustSend(t, "--server", sub, "--from", "otrs@example.test", "--to", "user@named.test")
	if a = p.waitAttempt(t, res.QueueID(), 30*time.Second); a.Status != "sent" {
		t.Errorf("named.test (MX named like the relay, another address): %s, want sent:\n%s", a.Status, a.Line)
	}
	if m := other.WaitMessages(t, 1, 10*time.Second); m[0].To[0] != "user@named.test" {
		t.Errorf("the other machine got a message to %v", m[0].To)
	}
}

// TestNullSenderNeedsRealReport (issue 11, finding 7): a header that says
// multipart/report is not a report. MAIL FROM:<> with that header and an
// ordinary body, or with a report part that does not parse, is refused
// (550 5.7.1) or rewritten like any other mail from <>; real reports (the
// relay's own DSNs, Postfix, Exim and Exchange bounces, Dovecot and
// Thunderbird MDNs) pass untouched.
func TestNullSenderNeedsRealReport(t *testing.T) {
	requireTool(t, "swaks")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	strict, rewrite := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: strict, address: %q, role: outbound, trusted_networks: [127.0.0.0/8]}
  - {name: rewrite, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], null_sender: rewrite, null_sender_address: noreply@example.test}
domains:
  example.test: {deliver_to: "maildir:%s"}
outbound:
  routes: [{match: "*", next_hop: "smtp://%s"}]
%s`, strict, rewrite, filepath.Join(dir, "mail"), down.Addr, outboundTimeouts))
	r := startRelay(t, cfg, strict, rewrite)

	fakes := map[string]string{
		// The finding: the header alone, an ordinary body.
		"header only": "From: helpdesk@example.test\r\nTo: agent@partner.test\r\nSubject: Ticket 4711 updated\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n" +
			"Your ticket 4711 was updated. Click here to see it.\r\n",
		// A report part that is there but is not a delivery status.
		"no status fields": "From: helpdesk@example.test\r\nTo: agent@partner.test\r\nSubject: Ticket 4712 updated\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n" +
			"--b\r\nContent-Type: text/plain\r\n\r\nYour ticket 4712 was updated.\r\n" +
			"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; helpdesk.example.test\r\n\r\n" +
			"Final-Recipient: rfc822; agent@partner.test\r\nAction: failed\r\n\r\n--b--\r\n",
	}
	for name, data := range fakes {
		t.Run(name, func(t *testing.T) {
			// One recipient per message: more than 5 from <> to one
			// address within the hour would be refused as a loop.
			f := tempFile(t, "fake.eml", data)
			res := swaks(t, "--server", strict, "--from", "<>", "--to", "fake1@partner.test", "--data", "@"+f)
			errs := res.ErrorReplies()
			if len(errs) == 0 || !strings.HasPrefix(errs[0], "550 5.7.1 ") || !strings.Contains(errs[0], "set a sender address") {
				t.Errorf("fake report from <>: refusals %q, want 550 5.7.1 telling to set a sender address:\n%s", errs, res.Out)
			}
			n := len(down.Messages())
			mustSend(t, "--server", rewrite, "--from", "<>", "--to", "fake2@partner.test", "--data", "@"+f)
			m := down.WaitMessages(t, n+1, 10*time.Second)[n]
			if m.From != "noreply@example.test" || !strings.Contains(headerSection(m.Data), "X-Securerelay-Null-Sender:") {
				t.Errorf("fake report under rewrite: envelope from %q, want noreply@example.test and the header:\n%s", m.From, m.Data)
			}
		})
	}
	r.WaitLog(0, 5*time.Second, "msg=reject", "check=null_sender")

	reports := map[string][]byte{"relay-dsn": ownDSN(t)}
	for _, name := range []string{"postfix-dsn", "exim-dsn", "exchange2007-ndr", "dovecot-mdn", "thunderbird-mdn"} {
		b, err := os.ReadFile(filepath.Join("..", "..", "outbound", "testdata", "reports", name+".eml"))
		if err != nil {
			t.Fatal(err)
		}
		reports[name] = b
	}
	for name, data := range reports {
		t.Run(name, func(t *testing.T) {
			crlf := strings.ReplaceAll(strings.ReplaceAll(string(data), "\r\n", "\n"), "\n", "\r\n")
			f := tempFile(t, name+".eml", crlf)
			n := len(down.Messages())
			mustSend(t, "--server", strict, "--from", "<>", "--to", name+"@partner.test", "--data", "@"+f)
			m := down.WaitMessages(t, n+1, 10*time.Second)[n]
			if m.From != "" || strings.Contains(string(m.Data), "X-Securerelay-Null-Sender") {
				t.Errorf("%s from <> was changed: envelope from %q", name, m.From)
			}
		})
	}
}

// ownDSN is a bounce as this relay's dsn package builds it.
func ownDSN(t *testing.T) []byte {
	t.Helper()
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	b, err := dsn.Build(dsn.Report{
		ReportingMTA: "relay.e2e.test", Sender: "someone@example.test", QueueID: "ABC123",
		Arrival: now.Add(-time.Hour), Now: now,
		Recipients: []dsn.Recipient{{Address: "x@partner.test", Action: "failed", Status: "5.1.1",
			RemoteMTA: "mx.partner.test", Diagnostic: "550 5.1.1 no such user", LastAttempt: now}},
		Original: []byte("From: someone@example.test\r\nTo: x@partner.test\r\nSubject: hello\r\n\r\nhi\r\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// authSend submits one message as user over STARTTLS + AUTH PLAIN; extra
// are more swaks arguments (--header, --add-header, --data).
func authSend(t *testing.T, addr, user, from, to string, extra ...string) swaksResult {
	t.Helper()
	args := append([]string{"--server", addr, "--tls", "--auth", "PLAIN", "--auth-user", user, "--auth-password", "s3cret",
		"--from", from, "--to", to}, extra...)
	return swaks(t, args...)
}

// wantRefused requires the first refusal of res to start with prefix and
// to name every one of subs.
func wantRefused(t *testing.T, what string, res swaksResult, prefix string, subs ...string) {
	t.Helper()
	errs := res.ErrorReplies()
	if len(errs) == 0 || !strings.HasPrefix(errs[0], prefix) || !containsAll(errs[0], subs) {
		t.Errorf("%s: refusals %q, want %q naming %q:\n%s", what, errs, prefix, subs, res.Out)
	}
}

// TestSenderBindingDefault (issue 11, finding 8): a logged-in user without
// a senders list may use the domains under domains: and nothing else, as
// envelope sender and in From:, Sender: and Resent-From:. An outsider's
// envelope sender (whose bounces would be backscatter) is refused at MAIL
// FROM, a foreign header address at DATA, both with 553 5.7.1 naming the
// address. MAIL FROM:<> with a real report stays allowed.
func TestSenderBindingDefault(t *testing.T) {
	requireTool(t, "swaks")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	sub := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: submission, address: %q, role: outbound, auth: required}
domains:
  example.test: {deliver_to: "maildir:%s"}
  example.net: {deliver_to: "maildir:%s"}
outbound:
  users:
    - {name: kopano, password_hash: %q}
  routes: [{match: "*", next_hop: "smtp://%s"}]
%s`, sub, filepath.Join(dir, "mail"), filepath.Join(dir, "mail"), bcryptHash(t, "s3cret"), down.Addr, outboundTimeouts))
	r := startRelay(t, cfg, sub)

	// From: is ours; only the envelope sender is an outsider's.
	res := authSend(t, sub, "kopano", "someone@outsider.test", "agent@partner.test", "--header", "From: kopano@example.test")
	wantRefused(t, "outsider as envelope sender", res, "553 5.7.1 ", "<someone@outsider.test>", "kopano")
	r.WaitLog(0, 5*time.Second, "msg=reject", "check=sender_binding", "address=someone@outsider.test")

	for field, hdr := range map[string][]string{
		"Sender":      {"--add-header", "Sender: someone@outsider.test"},
		"Resent-From": {"--add-header", "Resent-From: Someone <someone@outsider.test>"},
		"From group":  {"--header", "From: kopano@example.test, someone@outsider.test", "--add-header", "Sender: kopano@example.test"},
	} {
		res := authSend(t, sub, "kopano", "kopano@example.test", "agent@partner.test", hdr...)
		wantRefused(t, field, res, "553 5.7.1 ", "someone@outsider.test", strings.Fields(field)[0]+":")
	}

	// Our domains, in every field, and a real report from <>.
	mustSend(t, "--server", sub, "--tls", "--auth", "PLAIN", "--auth-user", "kopano", "--auth-password", "s3cret",
		"--from", "Kopano@Example.NET", "--to", "agent@partner.test",
		"--header", "From: Jane <jane@example.test>", "--add-header", "Sender: kopano@example.net")
	// A DSN from <>: its From: is bound like any other.
	ourDSN := strings.Replace(readFile(t, dsnFile(t)), "MAILER-DAEMON@kopano.example.test", "MAILER-DAEMON@example.test", 1)
	mustSend(t, "--server", sub, "--tls", "--auth", "PLAIN", "--auth-user", "kopano", "--auth-password", "s3cret",
		"--from", "<>", "--to", "agent@partner.test", "--data", "@"+tempFile(t, "dsn.eml", ourDSN))
	down.WaitMessages(t, 2, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if n := len(down.Messages()); n != 2 {
		t.Errorf("the partner got %d messages, want only the 2 allowed ones", n)
	}
}

// TestSenderBinding: per-user senders lists, the login-only binding, the
// interplay with foreign_from: unsigned, trusted-network clients without
// AUTH (not bound), and a SIGHUP that changes a list.
func TestSenderBinding(t *testing.T) {
	requireTool(t, "swaks")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	sub, uns, trustedSub := freeAddr(t), freeAddr(t), freeAddr(t)
	hash := bcryptHash(t, "s3cret")
	cfg := filepath.Join(dir, "relay.yaml")
	config := func(otrsSenders string) string {
		return configHead(filepath.Join(dir, "state"), dns.Addr()) + fmt.Sprintf(`listeners:
  - {name: submission, address: %q, role: outbound, auth: required}
  - {name: unsigned, address: %q, role: outbound, auth: required, foreign_from: unsigned}
  - {name: trusted, address: %q, role: outbound, trusted_networks: [127.0.0.0/8]}
domains:
  example.test: {deliver_to: "maildir:%s"}
  support.example.test: {deliver_to: "maildir:%s"}
outbound:
  users:
    - {name: otrs, password_hash: %q, senders: %s}
    - {name: kopano, password_hash: %q}
    - {name: bob@example.test, password_hash: %q, sender_binding: login}
  routes: [{match: "*", next_hop: "smtp://%s"}]
%s`, sub, uns, trustedSub, filepath.Join(dir, "mail"), filepath.Join(dir, "mail"), hash, otrsSenders, hash, hash, down.Addr, outboundTimeouts)
	}
	writeFile(t, cfg, config(`[otrs@example.test, "@support.example.test"]`))
	r := startRelay(t, cfg, sub, uns, trustedSub)

	sent := 0
	accept := func(what, addr, user, from string, extra ...string) {
		t.Helper()
		res := authSend(t, addr, user, from, fmt.Sprintf("agent%d@partner.test", sent), extra...)
		if res.Code != 0 || res.QueueID() == "" {
			t.Errorf("%s: refused, want accepted:\n%s", what, res.Out)
			return
		}
		sent++
	}
	refuse := func(what, addr, user, from, bad, field string, extra ...string) {
		t.Helper()
		res := authSend(t, addr, user, from, "agent@partner.test", extra...)
		wantRefused(t, what, res, "553 5.7.1 ", bad, field, user)
	}

	// otrs: its list, nothing else; envelope and headers alike.
	accept("otrs as itself", sub, "otrs", "otrs@example.test")
	accept("otrs in its domain", sub, "otrs", "ticket-4711@support.example.test", "--header", "From: Support <support@support.example.test>")
	refuse("otrs as another mailbox of ours", sub, "otrs", "ceo@example.test", "<ceo@example.test>", "not owned by user")
	refuse("otrs with another From:", sub, "otrs", "otrs@example.test", "ceo@example.test", "From:", "--header", "From: CEO <ceo@example.test>")
	refuse("otrs with another Sender:", sub, "otrs", "otrs@example.test", "ceo@example.test", "Sender:", "--add-header", "Sender: ceo@example.test")
	// foreign_from: unsigned does not widen a list.
	refuse("otrs, foreign From: on the unsigned listener", uns, "otrs", "otrs@example.test", "someone@outsider.test", "From:",
		"--header", "From: someone@outsider.test")

	// kopano (no list): our domains; with foreign_from: unsigned also
	// foreign header addresses, never a foreign envelope sender.
	accept("kopano as any mailbox of ours", sub, "kopano", "jane@support.example.test", "--header", "From: Jane <jane@example.test>")
	refuse("kopano, foreign From: on the signing listener", sub, "kopano", "kopano@example.test", "someone@outsider.test", "From:",
		"--header", "From: someone@outsider.test")
	accept("kopano, foreign From: on the unsigned listener", uns, "kopano", "kopano@example.test", "--header", "From: someone@outsider.test")
	refuse("kopano, foreign envelope sender on the unsigned listener", uns, "kopano", "someone@outsider.test", "<someone@outsider.test>", "not owned by user",
		"--header", "From: kopano@example.test")

	// bob@example.test (login): itself only.
	accept("bob as himself", sub, "bob@example.test", "Bob@example.test")
	refuse("bob as alice", sub, "bob@example.test", "alice@example.test", "<alice@example.test>", "may only send as itself")

	// Trusted network without AUTH: no user, no binding.
	res := swaks(t, "--server", trustedSub, "--from", "someone@outsider.test", "--to", fmt.Sprintf("agent%d@partner.test", sent),
		"--header", "From: ceo@example.test")
	if res.Code != 0 {
		t.Errorf("trusted client without AUTH was bound:\n%s", res.Out)
	} else {
		sent++
	}

	down.WaitMessages(t, sent, 10*time.Second)
	time.Sleep(200 * time.Millisecond)
	if n := len(down.Messages()); n != sent {
		t.Errorf("the partner got %d messages, want only the %d allowed ones", n, sent)
	}
	if n := len(r.LogLines("msg=reject", "check=sender_binding")); n != 7 {
		t.Errorf("%d sender_binding refusals logged, want 7 (one line each)", n)
	}

	// SIGHUP: the new list applies at once, the old one no longer.
	writeFile(t, cfg, config(`[ceo@example.test]`))
	mark := r.Mark()
	r.Signal(syscall.SIGHUP)
	r.WaitLog(mark, 5*time.Second, "configuration reloaded")
	if l := r.LogLines("needs a restart"); len(l) != 0 {
		t.Errorf("changing senders was reported as needing a restart: %q", l)
	}
	accept("otrs after the reload, as the newly listed address", sub, "otrs", "ceo@example.test")
	refuse("otrs after the reload, as its old address", sub, "otrs", "otrs@example.test", "<otrs@example.test>", "not owned by user")
}
