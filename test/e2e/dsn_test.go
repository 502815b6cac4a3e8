package e2e

import (
	"bytes"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil/dnstest"
	"securerelay/downgrade"
)

// paramUnsupported is the reply to a parameter of an extension a listener
// does not offer (RFC 5321 §4.1.1.11: 555), from the catalogue through
// go-smtp's Replies hook.
const paramUnsupported = "555 5.5.4"

// dsnRelay is a relay with an outbound listener for 127.0.0.0/8, an
// inbound one, example.test delivered to a maildir (where DSNs to
// alice@example.test arrive), partner.test routed to next, and extra
// config: extra under example.test (dkim keys), tail at the end (queue).
type dsnRelay struct {
	*Relay
	Sub, MX string
	Mail    string // maildir root of example.test
}

func startDSNRelay(t *testing.T, next, extra string, tail ...string) *dsnRelay {
	t.Helper()
	dir := t.TempDir()
	dns := dnstest.NewServer(t, "example.org. A 192.0.2.1\n")
	r := &dsnRelay{Sub: freeAddr(t), MX: freeAddr(t), Mail: filepath.Join(dir, "mail")}
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], auth: "off"}
domains:
  example.test:
    deliver_to: "maildir:%s"
%s
outbound:
  routes:
    - {match: partner.test, next_hop: "smtp://%s"}
%s%s`, r.MX, r.Sub, r.Mail, extra, next, outboundTimeouts, strings.Join(tail, "")))
	r.Relay = startRelay(t, cfg, r.MX, r.Sub)
	return r
}

// dsnFor waits for the DSN in alice@example.test's maildir and reads it
// with Python's email package.
func (r *dsnRelay) dsnFor(t *testing.T, n int) pyDSN {
	t.Helper()
	msgs := waitMaildir(t, r.Mail, "alice@example.test", n, 30*time.Second)
	return readDSN(t, msgs[n-1])
}

// eightBitMessage is a MIME message with 8-bit UTF-8 text, as Thunderbird
// writes it ("8-bit body" is the marker the DKIM tools' negative control
// changes).
func eightBitMessage(subject string) []byte {
	return []byte("From: Alice <alice@example.test>\r\nTo: Bob <bob@partner.test>\r\n" +
		"Subject: " + subject + "\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", ".") + "@example.test>\r\n" +
		"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=\"=-b1\"\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		"--=-b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		"Grüße aus Köln – 8-bit body, 100 € = 100 EUR\r\n.leading dot\r\n" +
		"--=-b1\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" +
		"<p>Grüße aus Köln</p>\r\n--=-b1--\r\n")
}

// textParts decodes the leaf parts of a multipart message (quoted-printable
// and 8bit alike), for comparing what arrived with what was sent.
func textParts(t *testing.T, msg []byte) []string {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("%v\n%s", err, msg)
	}
	_, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil {
		t.Fatal(err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var out []string
	for {
		p, err := mr.NextPart() // decodes quoted-printable
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		out = append(out, string(b))
	}
}

// Postfix as the next hop, with and without 8BITMIME and DSN
// (smtpd_discard_ehlo_keywords). Python's smtplib submits with DSN
// parameters; what Postfix received is seen behind it, at the MX it
// relays to (which offers DSN, so Postfix passes the parameters on).
//
// With both extensions: the message arrives unchanged and 8-bit, and RET,
// ENVID, NOTIFY and ORCPT reach the end; Postfix took the request, so the
// relay sends no notice. Without them: the message arrives 7-bit clean,
// decoding to the original, DKIM-signed after the conversion (verified by
// dkimverify and opendkim-testmsg), no DSN parameter is sent, and the
// sender gets the relay's own "relayed" notice, as Python reads it.
func TestPostfixNextHopDSNAnd8BitMIME(t *testing.T) {
	requireTool(t, "python3")
	dir := t.TempDir()
	rsaKey, rsaZone := keygen(t, dir, "s2026", "rsa")
	edKey, edZone := keygen(t, dir, "e2026", "ed25519")
	dkimConf := fmt.Sprintf("    dkim:\n      - {selector: s2026, key: %q}\n      - {selector: e2026, key: %q}", rsaKey, edKey)
	for _, tc := range []struct {
		name, discard string
	}{
		{"postfix offers 8BITMIME and DSN", ""},
		{"postfix without 8BITMIME and DSN", "8bitmime, dsn"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			end := startPolicyMX(t, listenLoopback(t), mxOptions{DSN: true})
			pf := startPostfix(t, postfixOptions{Relayhost: end.Addr, Main: []string{
				"smtpd_discard_ehlo_keywords = " + tc.discard,
				// The relay connects from an inet_interfaces address: as a
				// local client Postfix would rewrite its header addresses.
				"local_header_rewrite_clients ="}})
			r := startDSNRelay(t, pf.Addr, dkimConf)
			msg := eightBitMessage("postfix " + strings.Fields(tc.name)[1])
			replies := pySend(t, r.Sub, "alice@example.test", []string{"RET=HDRS", "ENVID=QQ+2B314"},
				[]pyRcpt{{"bob@partner.test", []string{"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+2Bx@Partner.test"}}}, msg)
			if len(replies) != 3 || !strings.HasPrefix(replies[0], "250 2.") || !strings.HasPrefix(replies[1], "250 2.") || !strings.HasPrefix(replies[2], "250 2.0.0 Ok: queued as ") {
				t.Fatalf("smtplib replies %q", replies)
			}
			got := end.waitMessage(t, 60*time.Second)
			mails, rcpts := end.Mails(), end.RcptCmds()
			want := textParts(t, msg)
			if tc.discard == "" {
				if !bytes.HasSuffix(got.Data, msg) {
					t.Errorf("message changed on the way:\n%s", got.Data)
				}
				if mails[0].Ret != "HDRS" || mails[0].EnvID != "QQ+314" || rcpts[0].Notify != "SUCCESS,FAILURE" || !strings.EqualFold(rcpts[0].ORCPT, "rfc822;Bob+x@Partner.test") {
					t.Errorf("DSN parameters at the end: MAIL %+v RCPT %+v", mails[0], rcpts[0])
				}
				// Notices are spooled before the message leaves the queue.
				r.WaitLog(0, 10*time.Second, "msg=removed")
				if lines := r.LogLines("notification"); len(lines) != 0 {
					t.Errorf("notice sent: %q", lines)
				}
				return
			}
			if !strings.Contains(pf.Log(), "discarding EHLO keywords: 8BITMIME DSN") {
				t.Fatalf("postfix did not discard the keywords:\n%s", pf.Log())
			}
			if downgrade.Has8Bit(got.Data) {
				t.Fatalf("8-bit octets reached a next hop without 8BITMIME:\n%s", got.Data)
			}
			if parts := textParts(t, got.Data); len(parts) != len(want) || parts[0] != want[0] || parts[1] != want[1] {
				t.Errorf("arrived parts decode to %q, want %q", parts, want)
			}
			if mails[0].EnvID != "" || mails[0].Ret != "" || rcpts[0].Notify != "" {
				// Postfix got none from us, so it can pass none on.
				t.Errorf("DSN parameters reached the end through a hop without DSN: %+v %+v", mails[0], rcpts[0])
			}
			verifyDKIMTools(t, dir, got.Data, rsaZone+edZone, "8-bit body", "8-bit b0dy")
			d := r.dsnFor(t, 1)
			if d.Type != "multipart/report" || d.ReportType != "delivery-status" || d.Subject != "Successful Mail Delivery Report" {
				t.Errorf("DSN %+v", d)
			}
			rc := d.Recipients[0]
			if d.PerMessage["Original-Envelope-Id"] != "QQ+314" || rc["Action"] != "relayed" || rc["Status"] != "2.0.0" ||
				rc["Original-Recipient"] != "rfc822; Bob+x@partner.test" || rc["Final-Recipient"] != "rfc822; bob@partner.test" ||
				d.ThirdPart != "text/rfc822-headers" {
				t.Errorf("DSN as Python reads it: %+v", d)
			}
			if !strings.Contains(d.Text, "does not send delivery confirmations") {
				t.Errorf("DSN text:\n%s", d.Text)
			}
		})
	}
}

// Postfix as the previous hop: a program hands mail to Postfix's sendmail
// with DSN options (-N, -V, -R), Postfix relays it to the relay's
// outbound listener with NOTIFY, ORCPT, RET and ENVID, and the relay
// keeps them. To a next hop without DSN the sender gets the relay's
// "relayed" notice with Postfix's ENVID and ORCPT; a recipient with
// NOTIFY=NEVER that fails gets no notice at all; to a next hop with DSN
// the parameters go on, and the relay sends nothing.
func TestPostfixPreviousHopDSN(t *testing.T) {
	requireTool(t, "sendmail")
	for _, withDSN := range []bool{false, true} {
		t.Run(fmt.Sprintf("next hop DSN %v", withDSN), func(t *testing.T) {
			end := startTestServer(t, listenLoopback(t), serverOptions{RcptErr: func(to string) error {
				if strings.HasPrefix(to, "gone@") {
					return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user (e2e)"}
				}
				return nil
			}})
			next := end.Addr
			var endMX *policyMX
			if withDSN {
				endMX = startPolicyMX(t, listenLoopback(t), mxOptions{DSN: true})
				next = endMX.Addr
			}
			r := startDSNRelay(t, next, "")
			pf := startPostfix(t, postfixOptions{Relayhost: r.Sub})
			msg := []byte("From: alice@example.test\r\nTo: bob@partner.test\r\nSubject: via postfix\r\nMessage-ID: <pf1@example.test>\r\n\r\nhello\r\n")
			pf.Sendmail(t, msg, "-f", "alice@example.test", "-N", "success,failure", "-V", "ENV-42", "-R", "hdrs", "bob@partner.test")
			never := []byte("From: alice@example.test\r\nTo: gone@partner.test\r\nSubject: never\r\n\r\nx\r\n")
			if !withDSN {
				pf.Sendmail(t, never, "-f", "alice@example.test", "-N", "never", "gone@partner.test")
			}
			if withDSN {
				m := endMX.waitMessage(t, 60*time.Second)
				mails, rcpts := endMX.Mails(), endMX.RcptCmds()
				if m.From != "alice@example.test" || mails[0].Ret != "HDRS" || mails[0].EnvID != "ENV-42" || rcpts[0].Notify != "SUCCESS,FAILURE" ||
					!strings.EqualFold(rcpts[0].ORCPT, "rfc822;bob@partner.test") {
					t.Errorf("at the next hop: MAIL %+v RCPT %+v", mails[0], rcpts[0])
				}
				r.WaitLog(0, 10*time.Second, "msg=removed")
				if lines := r.LogLines("notification"); len(lines) != 0 {
					t.Errorf("notice sent although the next hop took the request: %q", lines)
				}
				return
			}
			d := r.dsnFor(t, 1)
			rc := d.Recipients[0]
			if d.PerMessage["Original-Envelope-Id"] != "ENV-42" || rc["Action"] != "relayed" || rc["Status"] != "2.0.0" ||
				!strings.EqualFold(rc["Original-Recipient"], "rfc822; bob@partner.test") || d.ThirdPart != "text/rfc822-headers" {
				t.Errorf("DSN as Python reads it: %+v", d)
			}
			r.WaitLog(0, 60*time.Second, "no DSN: the sender asked for none", "to=gone@partner.test", "notify=NEVER")
			r.WaitLog(0, 10*time.Second, "msg=removed")
			if n := len(maildirMessages(t, r.Mail, "alice@example.test")); n != 1 {
				t.Errorf("%d notices for alice, want only the one for bob (NOTIFY=NEVER for gone@)", n)
			}
			if l := r.LogLines("held"); len(l) != 0 {
				t.Errorf("a NOTIFY=NEVER failure was held: %q", l)
			}
		})
	}
}

// Failures: a message that cannot be converted for a next hop without
// 8BITMIME (raw UTF-8 in Subject) comes back with 5.6.3 and an
// explanation, nothing having been sent; with RET=FULL a returnable
// message comes back whole (message/rfc822), which Python reads.
func TestDowngradeRefusedAndReturnFull(t *testing.T) {
	pf := startPostfix(t, postfixOptions{Relayhost: "127.0.0.1:9", Main: []string{"smtpd_discard_ehlo_keywords = 8bitmime, dsn"}})
	end := startTestServer(t, listenLoopback(t), serverOptions{RcptErr: func(string) error {
		return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "mailbox unavailable (e2e)"}
	}})
	for _, tc := range []struct {
		name, next string
		msg        []byte
		check      func(t *testing.T, d pyDSN)
	}{
		{"unconvertible", pf.Addr, []byte("From: alice@example.test\r\nTo: bob@partner.test\r\nSubject: Grüße\r\nMessage-ID: <u1@example.test>\r\n\r\nGrüße\r\n"),
			func(t *testing.T, d pyDSN) {
				rc := d.Recipients[0]
				if rc["Action"] != "failed" || rc["Status"] != "5.6.3" || d.ThirdPart != "text/rfc822-headers" ||
					!strings.Contains(d.Text, "accepts only messages in plain 7-bit form") || !strings.Contains(d.Text, `the header field "Subject" contains non-ASCII characters`) {
					t.Errorf("DSN %+v", d)
				}
				if strings.Contains(pf.Log(), "from=<alice@example.test>") {
					t.Errorf("postfix got the message:\n%s", pf.Log())
				}
			}},
		{"RET=FULL", end.Addr, []byte("From: alice@example.test\r\nTo: bob@partner.test\r\nSubject: return me whole\r\nMessage-ID: <f1@example.test>\r\n\r\nbody text\r\n"),
			func(t *testing.T, d pyDSN) {
				if d.Recipients[0]["Action"] != "failed" || d.Recipients[0]["Status"] != "5.1.1" || d.ThirdPart != "message/rfc822" || d.ReturnedSubj != "return me whole" {
					t.Errorf("DSN %+v", d)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startDSNRelay(t, tc.next, "")
			replies := pySend(t, r.Sub, "alice@example.test", []string{"RET=FULL"}, []pyRcpt{{"bob@partner.test", nil}}, tc.msg)
			if len(replies) != 3 || !strings.HasPrefix(replies[2], "250 2.0.0 Ok: queued as ") {
				t.Fatalf("smtplib replies %q", replies)
			}
			tc.check(t, r.dsnFor(t, 1))
		})
	}
}

// NOTIFY=SUCCESS for a recipient the relay delivers itself (maildir):
// "delivered"; on an inbound listener DSN is not offered unless the
// listener says so, and then the parameters reach the downstream system
// while the relay itself sends nothing, not even for NOTIFY=SUCCESS.
func TestDeliveredNoticeAndInboundDSN(t *testing.T) {
	end := startPolicyMX(t, listenLoopback(t), mxOptions{DSN: true})
	r := startDSNRelay(t, end.Addr, "")
	replies := pySend(t, r.Sub, "alice@example.test", []string{"ENVID=local-1"},
		[]pyRcpt{{"carol@example.test", []string{"NOTIFY=SUCCESS"}}}, []byte("From: alice@example.test\r\nTo: carol@example.test\r\nSubject: to a colleague\r\n\r\nhi\r\n"))
	if len(replies) != 3 || !strings.HasPrefix(replies[2], "250 ") {
		t.Fatalf("smtplib replies %q", replies)
	}
	d := r.dsnFor(t, 1)
	if rc := d.Recipients[0]; rc["Action"] != "delivered" || rc["Status"] != "2.0.0" || d.PerMessage["Original-Envelope-Id"] != "local-1" ||
		!strings.Contains(d.Text, "Delivered to the mailbox of:") {
		t.Errorf("delivered notice: %+v", d)
	}

	// The inbound listener of this relay has no dsn option: not offered.
	c := dialSMTP(t, r.MX)
	if strings.Contains(c.Expect("EHLO client.e2e.test", 250), "DSN") {
		t.Error("DSN offered on an inbound listener without dsn: true")
	}
	c.Expect("MAIL FROM:<sender@example.org>", 250)
	if _, msg := c.Cmd("RCPT TO:<carol@example.test> NOTIFY=SUCCESS"); !strings.HasPrefix(msg, paramUnsupported+" ") {
		t.Errorf("NOTIFY on an inbound listener without DSN: %q, want %s", msg, paramUnsupported)
	}
}

// queue.delay_warning_time: one delay notice, after the time, for the
// recipients that asked (NOTIFY=DELAY) and not for those that did not;
// BODY=BINARYMIME is refused, as BINARYMIME is not offered.
func TestDelayWarningAndBinaryMIME(t *testing.T) {
	end := startTestServer(t, listenLoopback(t), serverOptions{RcptErr: func(string) error {
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "try again later (e2e)"}
	}})
	r := startDSNRelay(t, end.Addr, "", "queue:\n  retry: [1s]\n  delay_warning_time: 2s\n")
	replies := pySend(t, r.Sub, "alice@example.test", nil, []pyRcpt{
		{"bob@partner.test", []string{"NOTIFY=DELAY,FAILURE"}}, {"carol@partner.test", []string{"NOTIFY=FAILURE"}}},
		[]byte("From: alice@example.test\r\nTo: bob@partner.test\r\nSubject: slow\r\n\r\nx\r\n"))
	if len(replies) != 4 || !strings.HasPrefix(replies[3], "250 2.0.0 Ok: queued as ") {
		t.Fatalf("smtplib replies %q", replies)
	}
	d := r.dsnFor(t, 1)
	if len(d.Recipients) != 1 || d.Recipients[0]["Action"] != "delayed" || d.Recipients[0]["Status"] != "4.2.0" ||
		d.Recipients[0]["Final-Recipient"] != "rfc822; bob@partner.test" || d.Subject != "Delayed Mail (still being retried)" {
		t.Errorf("delay notice: %+v", d)
	}
	// Two more attempts, and still one notice.
	mark := r.Mark()
	r.WaitLog(mark, 30*time.Second, "status=deferred", "to=bob@partner.test")
	mark = r.Mark()
	r.WaitLog(mark, 30*time.Second, "status=deferred", "to=bob@partner.test")
	if n := len(maildirMessages(t, r.Mail, "alice@example.test")); n != 1 {
		t.Errorf("%d notices, want one delay warning", n)
	}

	c := dialSMTP(t, r.Sub)
	if ehlo := c.Expect("EHLO client.e2e.test", 250); strings.Contains(ehlo, "BINARYMIME") || !strings.Contains(ehlo, "250-DSN") || !strings.Contains(ehlo, "250-8BITMIME") {
		t.Errorf("EHLO on the outbound listener:\n%s", ehlo)
	}
	if _, msg := c.Cmd("MAIL FROM:<alice@example.test> BODY=BINARYMIME"); !strings.HasPrefix(msg, paramUnsupported+" ") {
		t.Errorf("BODY=BINARYMIME: %q, want %s", msg, paramUnsupported)
	}
	if _, msg := c.Cmd("MAIL FROM:<alice@example.test> ENVID=" + strings.Repeat("x", 101)); !strings.HasPrefix(msg, "501 5.5.4 ENVID parameter is longer than the 100 characters") {
		t.Errorf("long ENVID: %q", msg)
	}
}

// An inbound listener with dsn: true takes the parameters and passes them
// to a downstream system that offers DSN; the relay itself sends nothing
// about inbound mail, even where the downstream has no DSN and a sender
// asked for NOTIFY=SUCCESS.
func TestInboundDSNPassedDownstream(t *testing.T) {
	withDSN := startPolicyMX(t, listenLoopback(t), mxOptions{DSN: true})
	without := startPolicyMX(t, listenLoopback(t), mxOptions{})
	dir := t.TempDir()
	dns := dnstest.NewServer(t, "example.org. A 192.0.2.1\n")
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound, dsn: true}
domains:
  example.test: {deliver_to: "smtp://%s"}
  other.test: {deliver_to: "smtp://%s"}
outbound:
%s`, mx, withDSN.Addr, without.Addr, outboundTimeouts))
	r := startRelay(t, cfg, mx)
	for _, to := range []string{"carol@example.test", "dave@other.test"} {
		replies := pySend(t, mx, "sender@example.org", []string{"RET=HDRS", "ENVID=in-1"},
			[]pyRcpt{{to, []string{"NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;" + to}}},
			[]byte("From: sender@example.org\r\nTo: "+to+"\r\nSubject: inbound\r\n\r\nhi\r\n"))
		if len(replies) != 3 || !strings.HasPrefix(replies[0], "250 2.") || !strings.HasPrefix(replies[1], "250 2.") || !strings.HasPrefix(replies[2], "250 2.0.0 Ok: queued as ") {
			t.Fatalf("smtplib replies %q", replies)
		}
	}
	withDSN.waitMessage(t, 30*time.Second)
	without.waitMessage(t, 30*time.Second)
	mails, rcpts := withDSN.Mails(), withDSN.RcptCmds()
	if mails[0].Ret != "HDRS" || mails[0].EnvID != "in-1" || rcpts[0].Notify != "SUCCESS,FAILURE" || !strings.EqualFold(rcpts[0].ORCPT, "rfc822;carol@example.test") {
		t.Errorf("downstream with DSN got MAIL %+v RCPT %+v", mails[0], rcpts[0])
	}
	if m := without.Mails(); m[0].Ret != "" || m[0].EnvID != "" {
		t.Errorf("downstream without DSN got %+v", m[0])
	}
	// Notices would be spooled before a message leaves the queue.
	for deadline := time.Now().Add(10 * time.Second); len(r.LogLines("msg=removed")) < 2; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("messages not removed from the queue: %q", r.LogLines("msg=removed"))
		}
	}
	if lines := r.LogLines("notification"); len(lines) != 0 {
		t.Errorf("the relay sent a notice about inbound mail: %q", lines)
	}
}
