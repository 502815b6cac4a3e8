package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"

	"github.com/emersion/go-smtp"
)

// Review of issue 13's merge: what the three branches broke together.

// A client that sends more recipients than max_recipients gets 452 4.5.3
// for the rest and is to send them in another transaction (RFC 5321
// §4.5.3.1.10): that is no error of the client, and Postfix does not count
// it towards smtpd_hard_error_limit (smtpd_recipient_overshoot_limit,
// 1000). Since go-smtp's replies count towards max_errors, the tenth such
// 452 closed the session with 421 and the message never went to the
// recipients that were accepted; a client that sends all recipients in one
// transaction (Python's smtplib, Thunderbird, Exchange) could never
// deliver a message with more than max_recipients + 9 recipients.
func TestTooManyRecipientsIsNoError(t *testing.T) {
	requireTool(t, "python3")
	dns := dnstest.NewServer(t, "example.org. A 192.0.2.1\n")
	dir := t.TempDir()
	mx, sub, mail := freeAddr(t), freeAddr(t), filepath.Join(dir, "mail")
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`limits: {max_recipients: 5}
listeners:
  - {name: mx, address: %q, role: inbound}
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], auth: "off"}
domains:
  example.test:
    deliver_to: "maildir:%s"
`, mx, sub, mail))
	r := startRelay(t, cfg, mx, sub)
	for _, l := range []struct{ name, addr string }{{"inbound", mx}, {"outbound", sub}} {
		t.Run(l.name, func(t *testing.T) {
			var rcpts []pyRcpt
			for i := 0; i < 20; i++ {
				rcpts = append(rcpts, pyRcpt{fmt.Sprintf("%s%02d@example.test", l.name, i), nil})
			}
			replies := pySend(t, l.addr, "sender@example.org", nil, rcpts, []byte("Subject: to twenty\r\n\r\nhi\r\n"))
			if len(replies) != 22 {
				t.Fatalf("%d replies, want MAIL, 20 RCPT and DATA: %q", len(replies), replies)
			}
			for i, rp := range replies[1:21] {
				want := "250 2.1.5 "
				if i >= 5 {
					want = "452 4.5.3 too many recipients in this transaction (limit 5)"
				}
				if !strings.HasPrefix(rp, want) {
					t.Errorf("RCPT %d: %q, want %q", i+1, rp, want)
				}
			}
			if !strings.HasPrefix(replies[21], "250 2.0.0 Ok: queued as ") {
				t.Errorf("DATA: %q", replies[21])
			}
			for i := 0; i < 5; i++ {
				waitMaildir(t, mail, fmt.Sprintf("%s%02d@example.test", l.name, i), 1, 30*time.Second)
			}
		})
	}
	if l := r.LogLines("too many errors"); len(l) != 0 {
		t.Errorf("sessions closed for too many errors: %q", l)
	}
}

// An encrypted message is ASCII armour, so transact skipped the 7-bit
// conversion for it; but its outer header keeps From:, To:, Cc: as they
// were, and a display name in raw UTF-8 (written by a program without
// SMTPUTF8) went as 8-bit octets to a next hop that offers neither
// 8BITMIME nor SMTPUTF8 (Postfix with smtpd_discard_ehlo_keywords), where
// the same message unencrypted is returned with 5.6.3. Now the encrypted
// copy is held to the same rule: not sent, returned with 5.6.3.
func TestEncrypted8BitHeaderToSevenBitHop(t *testing.T) {
	requireTool(t, "swaks")
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "rsa3072")
	end := startPolicyMX(t, listenLoopback(t), mxOptions{})
	pf := startPostfix(t, postfixOptions{Relayhost: end.Addr, Main: []string{
		"smtpd_discard_ehlo_keywords = 8bitmime, dsn", "smtputf8_enable = no", "local_header_rewrite_clients ="}})
	dns := dnstest.NewServer(t, "example.org. A 192.0.2.1\n")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Outbound: encryptionConfig(g.keyring(bob), false),
		Routes: fmt.Sprintf("    - {match: partner.test, next_hop: \"smtp://%s\"}\n", pf.Addr),
		TLS:    "    policies:\n      - {match: partner.test, level: encrypt, fallback: encrypt}\n"})
	f := filepath.Join(t.TempDir(), "m.eml")
	writeFile(t, f, "From: Jörg Müller <sender@example.test>\r\nTo: Bob <bob@partner.test>\r\nSubject: secret\r\n"+
		"Message-ID: <enc8@example.test>\r\n\r\nplain ascii body")
	id := mustSend(t, "--server", r.Sub, "--from", "sender@example.test", "--to", "bob@partner.test", "--data", "@"+f).QueueID()
	a := r.waitAttempt(t, id, 30*time.Second)
	if a.Status != "bounced" || !strings.Contains(a.Line, "dsn=5.6.3") || !strings.Contains(a.Line, `the header field \"From\" contains non-ASCII characters`) {
		t.Errorf("attempt %s, want bounced with 5.6.3 for the From: field:\n%s", a.Status, a.Line)
	}
	if !strings.Contains(a.Line, "fallback=encrypt") {
		t.Errorf("not the encrypted attempt:\n%s", a.Line)
	}
	d := readDSN(t, waitMaildir(t, r.Mail, "sender@example.test", 1, 30*time.Second)[0])
	if rc := d.Recipients[0]; rc["Action"] != "failed" || rc["Status"] != "5.6.3" {
		t.Errorf("DSN %+v", d)
	}
	for _, m := range end.Messages() {
		t.Errorf("the next hop passed on a message:\n%s", m.Data)
	}
	if strings.Contains(pf.Log(), "from=<sender@example.test>") {
		t.Errorf("postfix took the message:\n%s", pf.Log())
	}
}

// A failure report with RET=FULL returns the original whole, as a
// message/rfc822 part, which may not be encoded as a whole: an 8-bit
// original made the report itself 8-bit, and when the way back to the
// sender led through a hop without 8BITMIME (Postfix with
// smtpd_discard_ehlo_keywords), the report was refused with 5.6.3 and,
// sent from <>, ended in spool/hold. Now the original's text parts are
// converted to quoted-printable inside the report: 7 bit, and Python's
// email package decodes the returned body to the original text.
func TestReturnFull8BitThroughSevenBitHop(t *testing.T) {
	requireTool(t, "python3")
	senderEnd := startPolicyMX(t, listenLoopback(t), mxOptions{})
	pf := startPostfix(t, postfixOptions{Relayhost: senderEnd.Addr, Main: []string{"smtpd_discard_ehlo_keywords = 8bitmime, dsn", "local_header_rewrite_clients ="}})
	refuse := startTestServer(t, listenLoopback(t), serverOptions{RcptErr: func(string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user (e2e)"}
	}})
	r := startDSNRelay(t, refuse.Addr, fmt.Sprintf("  other.test:\n    deliver_to: \"smtp://%s\"", pf.Addr))
	msg := "From: alice@other.test\r\nTo: bob@partner.test\r\nSubject: full\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln\r\n"
	pySend(t, r.Sub, "alice@other.test", []string{"RET=FULL", "BODY=8BITMIME"}, []pyRcpt{{"bob@partner.test", nil}}, []byte(msg))
	m := senderEnd.waitMessage(t, 30*time.Second)
	if m.From != "" {
		t.Errorf("report sent from <%s>, want <>", m.From)
	}
	for i, c := range m.Data {
		if c >= 0x80 {
			t.Fatalf("report is not 7 bit (octet %#x at %d):\n%s", c, i, m.Data)
		}
	}
	d := readDSN(t, m.Data)
	if d.ThirdPart != "message/rfc822" || d.ReturnedSubj != "full" || !strings.Contains(d.ReturnedBody, "Grüße aus Köln") {
		t.Errorf("want the whole original back, decoding to its text: %+v\n%s", d, m.Data)
	}
	if rc := d.Recipients[0]; rc["Action"] != "failed" || rc["Status"] != "5.1.1" {
		t.Errorf("DSN %+v", d)
	}
	for _, l := range r.LogLines(`msg="held`) {
		t.Errorf("held: %s", l)
	}
}
