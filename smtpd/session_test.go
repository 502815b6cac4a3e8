package smtpd_test

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/inbound"
	"securerelay/queue"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

func ours() *inbound.Role { return inbound.New([]string{"ours.test"}) }

const msgBody = "From: <sender@example.org>\r\nTo: <user@ours.test>\r\nSubject: hello\r\n\r\nline one\r\n..leading dot\r\nlast line\r\n"

// The 250 names the queue ID, the spool file is complete when the client
// reads it, and the spooled data is our Received: field followed by the
// message exactly as sent (dot-unstuffed).
func TestQueuedAsAfterSpoolWithReceived(t *testing.T) {
	h := start(t, ours(), nil)
	c := simple(t, h.addr, "sender@example.org", "user@ours.test")
	id := h.queueID(c.data(msgBody + ".\r\n"))
	c.expect("QUIT", 221, "2.0.0")

	d := h.next()
	if d.ID != id {
		t.Fatalf("delivered ID %s, reply said %s", d.ID, id)
	}
	if d.Env.From != "sender@example.org" || len(d.Env.To) != 1 || d.Env.To[0] != "user@ours.test" {
		t.Errorf("envelope %+v", d.Env)
	}
	if d.Env.Origin != queue.OriginInbound || d.Env.Listener != "mx" || d.Env.AuthUser != "" {
		t.Errorf("envelope origin/listener/auth: %+v", d.Env)
	}
	if d.Env.Client != "client.example.org[127.0.0.1]" {
		t.Errorf("envelope client = %q", d.Env.Client)
	}
	rcv, rest := splitReceived(t, d.Data)
	want := strings.ReplaceAll(msgBody, "\r\n..leading", "\r\n.leading")
	if string(rest) != want {
		t.Errorf("spooled data after Received:\n%q\nwant\n%q", rest, want)
	}
	for _, s := range []string{"from client.example.org", "[127.0.0.1]", "by mx.ours.test", "with ESMTP id " + id, "listener mx", "for <user@ours.test>;"} {
		if !strings.Contains(rcv, s) {
			t.Errorf("Received: lacks %q:\n%s", s, rcv)
		}
	}
	if strings.Contains(rcv, "ESMTPS") || strings.Contains(rcv, "TLS") {
		t.Errorf("Received: claims TLS on a clear-text session:\n%s", rcv)
	}
}

// Several recipients: no "for" clause (it would disclose Bcc recipients).
func TestReceivedNoForWithSeveralRecipients(t *testing.T) {
	h := start(t, ours(), nil)
	c := simple(t, h.addr, "sender@example.org", "a@ours.test")
	c.expect("RCPT TO:<b@ours.test>", 250, "")
	h.queueID(c.data(msgBody + ".\r\n"))
	d := h.next()
	rcv, _ := splitReceived(t, d.Data)
	if strings.Contains(rcv, " for ") {
		t.Errorf("Received: names a recipient although there are two:\n%s", rcv)
	}
	if len(d.Env.To) != 2 {
		t.Errorf("envelope To = %v", d.Env.To)
	}
}

func TestBareLineEndingsRefused(t *testing.T) {
	h := start(t, ours(), nil)
	for name, body := range map[string]string{
		"bare LF in body":   "Subject: x\r\n\r\nline one\nline two\r\n.\r\n",
		"bare LF in header": "Subject: x\nX-Other: y\r\n\r\nbody\r\n.\r\n",
		"bare CR":           "Subject: x\r\n\r\nline one\rline two\r\n.\r\n",
		"CR at line start":  "Subject: x\r\n\r\n\rline\r\n.\r\n",
		// Upstream go-smtp missed the end marker after a CR and waited
		// for the time-out (third_party/README.md, patch 3).
		"CR before the end":      "Subject: x\r\n\r\nline\r\r\n.\r\n",
		"CR after a leading dot": "Subject: x\r\n\r\n.\rline\r\n.\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			c := simple(t, h.addr, "sender@example.org", "user@ours.test")
			code, msg := c.data(body)
			if code != 550 || !strings.HasPrefix(msg, "5.6.0 ") {
				t.Fatalf("got %d %s, want 550 5.6.0", code, msg)
			}
			h.expectNothingSpooled()
			// The session goes on: the refusal ended the transaction only.
			c.expect("NOOP", 250, "2.0.0")
			c.expect("RCPT TO:<user@ours.test>", 503, "5.5.1")
			c.expect("QUIT", 221, "")
		})
	}
}

func TestBareLineEndingsNormalized(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.NormalizeLineEndings = true })
	c := simple(t, h.addr, "sender@example.org", "user@ours.test")
	h.queueID(c.data("Subject: x\nX-A: y\r\n\r\none\ntwo\rthree\r\nfour\r\n.\r\n"))
	d := h.next()
	_, rest := splitReceived(t, d.Data)
	want := "Subject: x\r\nX-A: y\r\n\r\none\r\ntwo\r\nthree\r\nfour\r\n"
	if string(rest) != want {
		t.Errorf("normalised data %q, want %q", rest, want)
	}
	if bytes.Count(d.Data, []byte("\n")) != bytes.Count(d.Data, []byte("\r\n")) ||
		bytes.Count(d.Data, []byte("\r")) != bytes.Count(d.Data, []byte("\r\n")) {
		t.Errorf("spooled data has bare CR or LF: %q", d.Data)
	}
}

// SMTP smuggling (CVE-2023-51764 class): "\n.\n" must not end DATA, and
// what follows it must never run as commands.
const smuggle = "Subject: one\r\n\r\nbody\n.\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@ours.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nevil\r\n.\r\n"

func TestSmugglingRefused(t *testing.T) {
	role := &recordingRole{Role: ours()}
	h := start(t, role, nil)
	c := simple(t, h.addr, "sender@example.org", "user@ours.test")
	code, msg := c.data(smuggle)
	if code != 550 || !strings.HasPrefix(msg, "5.6.0 ") {
		t.Fatalf("got %d %s, want 550 5.6.0", code, msg)
	}
	// The next reply belongs to our NOOP: no reply to a smuggled command
	// is waiting in between.
	if msg := c.expect("NOOP", 250, "2.0.0"); msg != "2.0.0 "+smtputil.NoopOK().Message {
		t.Fatalf("reply to NOOP is %q: replies to smuggled commands were sent", msg)
	}
	h.expectNothingSpooled()
	for _, s := range role.senders() {
		if strings.Contains(s, "evil") {
			t.Errorf("smuggled MAIL FROM reached the role: %v", role.senders())
		}
	}
}

func TestSmugglingNormalizedIsOneMessage(t *testing.T) {
	role := &recordingRole{Role: ours()}
	h := start(t, role, func(o *smtpd.Options) { o.NormalizeLineEndings = true })
	c := simple(t, h.addr, "sender@example.org", "user@ours.test")
	id := h.queueID(c.data(smuggle))
	if msg := c.expect("NOOP", 250, "2.0.0"); msg != "2.0.0 "+smtputil.NoopOK().Message {
		t.Fatalf("reply to NOOP is %q: replies to smuggled commands were sent", msg)
	}
	if ids := h.spooled(); len(ids) != 1 || ids[0] != id {
		t.Fatalf("spool holds %v, want only %s", ids, id)
	}
	d := h.next()
	if !bytes.Contains(d.Data, []byte("\r\n.\r\nMAIL FROM:<evil@attacker.test>\r\n")) {
		t.Errorf("the smuggling attempt is not kept as message content: %q", d.Data)
	}
	if len(role.senders()) != 1 {
		t.Errorf("role saw MAIL FROM %v, want only the real one", role.senders())
	}
}

func TestSizeLimit(t *testing.T) {
	const limit = 2048
	h := start(t, ours(), func(o *smtpd.Options) { o.MaxMessageSize = limit })
	c := dial(t, h.addr)
	exts := c.ehlo("client.example.org")
	if v, ok := hasExt(exts, "SIZE"); !ok || v != fmt.Sprint(limit) {
		t.Errorf("EHLO: SIZE %q (advertised %v), want SIZE %d", v, ok, limit)
	}
	c.expect(fmt.Sprintf("MAIL FROM:<sender@example.org> SIZE=%d", limit*2), 552, "5.3.4")

	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<user@ours.test>", 250, "")
	big := "Subject: big\r\n\r\n" + strings.Repeat(strings.Repeat("x", 70)+"\r\n", 2*limit/72) + ".\r\n"
	code, msg := c.data(big)
	if code != 552 || !strings.HasPrefix(msg, "5.3.4 ") {
		t.Fatalf("oversized message: %d %s, want 552 5.3.4", code, msg)
	}
	h.expectNothingSpooled()

	// The session is still in order and a small message goes through.
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<user@ours.test>", 250, "")
	h.queueID(c.data("Subject: small\r\n\r\nok\r\n.\r\n"))
}

func TestMaxRecipients(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.MaxRecipients = 2 })
	c := simple(t, h.addr, "sender@example.org", "a@ours.test")
	c.expect("RCPT TO:<b@ours.test>", 250, "")
	c.expect("RCPT TO:<c@ours.test>", 452, "4.5.3")
	h.queueID(c.data("Subject: x\r\n\r\nx\r\n.\r\n"))
	if d := h.next(); len(d.Env.To) != 2 {
		t.Errorf("envelope To = %v, want the two accepted", d.Env.To)
	}
}

func TestMaxErrorsClosesSession(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.MaxErrors = 3 })
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	denied := smtputil.RelayDenied("other.test")
	c.expect("RCPT TO:<a@other.test>", denied.Code, enhOf(denied))
	c.expect("RCPT TO:<b@other.test>", denied.Code, enhOf(denied))
	c.expect("RCPT TO:<c@other.test>", 421, "4.7.0")
	c.expectClosed()
}

func TestCommandTimeoutClosesSession(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.CommandTimeout = 500 * time.Millisecond })
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	// Say nothing; the server gives up on us.
	code, msg := c.reply()
	if code != 421 {
		t.Fatalf("after idling: %d %s, want 421", code, msg)
	}
	c.expectClosed()
}

// A client that stops sending in the middle of DATA gets a 421 when the
// data time-out expires, and nothing is spooled.
func TestDataTimeout(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.DataTimeout = 300 * time.Millisecond })
	c := simple(t, h.addr, "sender@example.org", "user@ours.test")
	c.expect("DATA", 354, "")
	c.raw("Subject: stuck\r\n\r\nhalf a mess")
	code, msg := c.reply()
	if code != 421 || !strings.HasPrefix(msg, "4.4.2 ") {
		t.Fatalf("stalled DATA: %d %s, want 421 4.4.2", code, msg)
	}
	c.expectClosed()
	h.expectNothingSpooled()
}

// The spool cannot take the message: 451 4.3.0 (the client keeps it and
// retries), never a 250 and never a permanent 554.
func TestQueueFailureIs451(t *testing.T) {
	h := start(t, ours(), nil)
	// Replace every shard directory with a plain file; this stops root too.
	for i := 0; i < 16; i++ {
		p := filepath.Join(h.dir, fmt.Sprintf("%X", i))
		if err := os.RemoveAll(p); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("not a directory\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	c := simple(t, h.addr, "sender@example.org", "user@ours.test")
	c.send("DATA")
	code, msg := c.reply()
	if code == 354 {
		c.raw(msgBody + ".\r\n")
		code, msg = c.reply()
	}
	if code != 451 || !strings.HasPrefix(msg, "4.3.0 ") {
		t.Fatalf("with a broken spool: %d %s, want 451 4.3.0", code, msg)
	}
	if n := h.q.Len(); n != 0 {
		t.Errorf("queue.Len() = %d", n)
	}
	c.expect("NOOP", 250, "")
}

// A role must return bare *smtp.SMTPError values; anything else becomes
// 451 4.3.0 (go-smtp itself would make a 554 of it at DATA).
func TestRoleInternalErrorsAre451(t *testing.T) {
	role := &fakeRole{
		mail: func(_ *smtpd.State, from string) (string, error) {
			if from == "broken@example.org" {
				return "", errors.New("database is down")
			}
			return from, nil
		},
		data: func(*smtpd.State, *smtpd.Message) error { return fmt.Errorf("scanner crashed") },
	}
	h := start(t, role, nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<broken@example.org>", 451, "4.3.0")
	c.expect("MAIL FROM:<fine@example.org>", 250, "")
	c.expect("RCPT TO:<user@ours.test>", 250, "")
	code, msg := c.data(msgBody + ".\r\n")
	if code != 451 || !strings.HasPrefix(msg, "4.3.0 ") {
		t.Fatalf("Data hook with internal error: %d %s, want 451 4.3.0", code, msg)
	}
	h.expectNothingSpooled()
	if got := role.senders(); len(got) != 2 || got[0] != "broken@example.org" || got[1] != "fine@example.org" {
		t.Errorf("role saw senders %q", got)
	}
}

// The Data hook sees the spooled message (Received: included) before the
// commit, and its refusal discards it.
func TestDataHook(t *testing.T) {
	type seen struct {
		id   string
		size int64
		data []byte
	}
	seenc := make(chan seen, 2)
	role := &fakeRole{data: func(st *smtpd.State, m *smtpd.Message) error {
		r, err := m.Open()
		if err != nil {
			return err
		}
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		seenc <- seen{m.QueueID, m.Size, b}
		if bytes.Contains(b, []byte("EICAR")) {
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "virus found"}
		}
		return nil
	}}
	h := start(t, role, nil)
	c := simple(t, h.addr, "sender@example.org", "user@ours.test")
	code, msg := c.data("Subject: v\r\n\r\nEICAR\r\n.\r\n")
	if code != 550 || !strings.HasPrefix(msg, "5.7.1 virus") {
		t.Fatalf("refused by the Data hook: %d %s", code, msg)
	}
	<-seenc
	h.expectNothingSpooled()

	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<user@ours.test>", 250, "")
	id := h.queueID(c.data(msgBody + ".\r\n"))
	s := <-seenc
	d := h.next()
	if s.id != id || !bytes.Equal(s.data, d.Data) || s.size != int64(len(d.Data)) {
		t.Errorf("Data hook saw ID %s size %d %q\nspooled ID %s %q", s.id, s.size, s.data, id, d.Data)
	}
}

func TestConnectRefusalClosesSession(t *testing.T) {
	role := &fakeRole{connect: func(st *smtpd.State) error {
		if st.Helo == "bad.example" {
			return &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "you are listed"}
		}
		return nil
	}}
	h := start(t, role, nil)
	c := dial(t, h.addr)
	c.expect("EHLO bad.example", 554, "5.7.1")
	c.expectClosed()

	c = dial(t, h.addr)
	c.ehlo("good.example")
}

// CHUNKING is advertised by go-smtp, so BDAT must get the same checks.
func TestBDAT(t *testing.T) {
	h := start(t, ours(), nil)
	c := simple(t, h.addr, "sender@example.org", "user@ours.test")
	body := "Subject: chunks\r\n\r\nfirst\r\n"
	c.raw(fmt.Sprintf("BDAT %d\r\n%s", len(body), body))
	if code, msg := c.reply(); code != 250 {
		t.Fatalf("BDAT chunk: %d %s", code, msg)
	}
	last := "second\r\n"
	c.raw(fmt.Sprintf("BDAT %d LAST\r\n%s", len(last), last))
	id := h.queueID(c.reply())
	d := h.next()
	if _, rest := splitReceived(t, d.Data); string(rest) != body+last || d.ID != id {
		t.Errorf("BDAT message %q", rest)
	}

	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<user@ours.test>", 250, "")
	bad := "Subject: x\r\n\r\nbare\nLF\r\n"
	c.raw(fmt.Sprintf("BDAT %d LAST\r\n%s", len(bad), bad))
	if code, msg := c.reply(); code != 550 || !strings.HasPrefix(msg, "5.6.0 ") {
		t.Fatalf("BDAT with bare LF: %d %s, want 550 5.6.0", code, msg)
	}
	if ids := h.spooled(); len(ids) != 1 {
		t.Errorf("spool holds %v, want only the first message", ids)
	}
}

// txnRole keeps per-transaction state in State.Txn, as the inbound role's
// content stage does, and refuses MAIL from "refuse@…".
type txnRole struct {
	smtpd.Role
	seen []any // State.Txn as each MAIL found it
}

func (r *txnRole) Mail(st *smtpd.State, from string, o *smtp.MailOptions) (string, error) {
	r.seen = append(r.seen, st.Txn)
	st.Txn = "verdict for " + from
	if strings.HasPrefix(from, "refuse@") {
		return "", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "refused"}
	}
	return r.Role.Mail(st, from, o)
}

// A refused MAIL FROM ends its transaction too: the role's state for it
// (an SPF verdict, say) must not carry over into the next MAIL.
func TestRefusedMailDoesNotLeakTxnState(t *testing.T) {
	role := &txnRole{Role: ours()}
	h := start(t, role, nil)
	c := dial(t, h.addr)
	c.expect("EHLO client.example.org", 250, "")
	c.expect("MAIL FROM:<refuse@example.org>", 550, "5.7.1")
	c.expect("MAIL FROM:<next@example.org>", 250, "2.1.0")
	c.expect("QUIT", 221, "")
	if len(role.seen) != 2 || role.seen[1] != nil {
		t.Errorf("State.Txn at the second MAIL: %v, want nil (fresh transaction)", role.seen)
	}
}
