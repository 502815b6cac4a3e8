package smtpd_test

import (
	"crypto/tls"
	"fmt"
	"net/netip"
	"net/textproto"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/outbound"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// replyStep is one command and the reply it must get: want is the reply
// code and enhanced code as RFC 5321 and RFC 3463 call for them ("503
// 5.5.1"; just "250" for a reply without an enhanced code), se the
// catalogue reply whose text must go out exactly (prefix: the text only
// starts with se's, as the 250 after DATA, which adds the queue ID).
type replyStep struct {
	send   string
	want   string
	se     *smtp.SMTPError
	prefix bool
}

// check sends st.send (as a raw write when it holds CRLF already) and
// compares the reply; a multi-line reply is compared by its first line.
func (c *client) check(st replyStep) {
	c.t.Helper()
	if strings.Contains(st.send, "\r\n") {
		c.raw(st.send)
	} else {
		c.send(st.send)
	}
	code, msg := c.reply()
	msg, _, _ = strings.Cut(msg, "\n")
	got := fmt.Sprintf("%d %s", code, msg)
	want := st.want + " " + st.se.Message
	if st.se.EnhancedCode != smtp.NoEnhancedCode && !strings.HasPrefix(st.want, fmt.Sprintf("%d %s", st.se.Code, enhOf(st.se))) {
		c.t.Fatalf("%.60q: the catalogue's reply is %d %s, the test wants %s", st.send, st.se.Code, enhOf(st.se), st.want)
	}
	if got != want && !(st.prefix && strings.HasPrefix(got, want)) {
		c.t.Fatalf("%.60q:\n got %q\nwant %q", st.send, got, want)
	}
}

// Every reply of the SMTP dialog, success or refusal, is the catalogue's
// with the code the RFCs call for, on both roles: the sequence errors
// (503 5.5.1), unknown commands (500 5.5.2), parameter syntax (501 5.5.4)
// and unsupported parameters (555 5.5.4), a message too big at MAIL and at
// DATA (552 5.3.4), 250 2.1.0 after MAIL and 250 2.1.5 after RCPT, and the
// greeting, EHLO, RSET, NOOP, VRFY, HELP, BDAT, STARTTLS, AUTH and QUIT
// replies. None of go-smtp's own texts reaches the wire.
func TestEveryReplyFromTheCatalogue(t *testing.T) {
	const host = "mx.ours.test"
	limits := func(o *smtpd.Options) {
		o.MaxMessageSize = 1000
		o.MaxRecipients = 2
		o.MaxLineLength = 1000
		o.MaxErrors = 0 // this test makes more errors than a session may
	}
	for _, role := range []struct {
		name  string
		start func(t *testing.T) *harness
		auth  []replyStep // inside TLS, after EHLO
	}{
		{"inbound", func(t *testing.T) *harness { return start(t, ours(), limits) }, []replyStep{
			{"AUTH PLAIN AG90cnMAczNjcmV0", "502 5.5.1", smtputil.AuthNotOffered(), false},
		}},
		{"outbound", func(t *testing.T) *harness {
			return submission(t, outbound.SubmissionOptions{Trusted: []netip.Prefix{loopback}, Auth: outbound.AuthOptional}, limits)
		}, []replyStep{
			{"AUTH", "501 5.5.4", smtputil.CommandSyntax("AUTH"), false},
			{"AUTH CRAM-MD5", "504 5.5.4", smtputil.AuthUnknownMechanism("CRAM-MD5"), false},
			{"AUTH PLAIN !!!", "501 5.5.2", smtputil.AuthBadBase64(), false},
			{"AUTH PLAIN AGZvbw==", "501 5.5.2", smtputil.AuthBadResponse(), false},
			{"AUTH PLAIN", "334", &smtp.SMTPError{Code: 334, EnhancedCode: smtp.NoEnhancedCode}, false},
			{"*", "501 5.7.0", smtputil.AuthCancelled(), false},
			{"AUTH PLAIN AG90cnMAd3Jvbmc=", "535 5.7.8", smtputil.AuthFailed(), false},
			{"AUTH PLAIN AG90cnMAczNjcmV0", "235 2.7.0", smtputil.AuthOK(), false},
			{"AUTH PLAIN AG90cnMAczNjcmV0", "503 5.5.1", smtputil.AuthTwice(), false},
		}},
	} {
		t.Run(role.name, func(t *testing.T) {
			h := role.start(t)
			c := dialNoGreeting(t, h.addr)
			if code, msg := c.reply(); code != 220 || msg != smtputil.Greeting(host).Message || msg != host+" ESMTP ready" {
				t.Fatalf("greeting: %d %q", code, msg)
			}
			long := strings.Repeat("x", 1200)
			steps := []replyStep{
				// Before EHLO.
				{"MAIL FROM:<sender@example.org>", "503 5.5.1", smtputil.NeedHelo("MAIL"), false},
				{"HELP", "214 2.0.0", smtputil.HelpReply(), false},
				{"NOOP", "250 2.0.0", smtputil.NoopOK(), false},
				{"FOO", "500 5.5.2", smtputil.UnknownCommand("FOO"), false},
				{"XYZW", "500 5.5.2", smtputil.UnknownCommand("XYZW"), false},
				{"HELLO client.example.org", "500 5.5.2", smtputil.UnknownCommand("HELLO"), false},
				{"LHLO client.example.org", "500 5.5.2", smtputil.WrongHello("LHLO"), false},
				{"EHLO", "501 5.5.4", smtputil.CommandSyntax("EHLO"), false},
				{"HELO client.example.org", "250", smtputil.HeloReply(host), false},
				{"EHLO client.example.org", "250", smtputil.EhloReply(host), false},
				// Sequence.
				{"RCPT TO:<user@ours.test>", "503 5.5.1", smtputil.NeedMail("RCPT"), false},
				{"DATA", "503 5.5.1", smtputil.NeedMail("DATA"), false},
				{"BDAT 5 LAST\r\nabc\r\n", "503 5.5.1", smtputil.NeedMail("BDAT"), false},
				{"VRFY user@ours.test", "252 2.0.0", smtputil.VrfyReply(), false},
				{"EXPN staff", "502 5.5.1", smtputil.NotImplemented("EXPN"), false},
				// MAIL and its parameters.
				{"MAIL FROM:<sender@example.org> SIZE=999999999999", "552 5.3.4", smtputil.MessageTooBig(1000), false},
				{"MAIL FROM:<sender@example.org> SIZE=99999999999999999999999999", "552 5.3.4", smtputil.MessageTooBig(1000), false},
				{"MAIL FROM:<sender@example.org> SIZE=1001", "552 5.3.4", smtputil.MessageTooBig(1000), false},
				{"MAIL FROM:<sender@example.org> SIZE=big", "501 5.5.4", smtputil.ParamSyntax("SIZE"), false},
				{"MAIL FROM:<sender@example.org> BODY=9BIT", "501 5.5.4", smtputil.ParamSyntax("BODY"), false},
				{"MAIL FROM:<sender@example.org> XFOO=1", "555 5.5.4", smtputil.ParamUnsupported("XFOO"), false},
				{"MAIL FROM:<sender@example.org> MT-PRIORITY=3", "555 5.5.4", smtputil.ParamUnsupported("MT-PRIORITY"), false},
				{"MAIL FROM:<sender@example.org> BODY=BINARYMIME", "555 5.5.4", smtputil.ParamUnsupported("BODY=BINARYMIME"), false},
				{"MAIL FROM sender@example.org", "501 5.5.4", smtputil.CommandSyntax("MAIL"), false},
				{"MAIL FROM:<send er@example.org>", "501 5.1.7", smtputil.BadSenderSyntax("in mailbox: in local-part: malformed dot-string"), false},
				{"MAIL FROM:<sender@example.org> SIZE=1000", "250 2.1.0", smtputil.MailOK(), false},
				{"MAIL FROM:<sender@example.org>", "503 5.5.1", smtputil.NestedMail(), false},
				{"DATA", "503 5.5.1", smtputil.NeedRcpt("DATA"), false},
				// RCPT and its parameters.
				{"RCPT TO:<user@ours.test> XFOO", "555 5.5.4", smtputil.ParamUnsupported("XFOO"), false},
				{"RCPT TO user@ours.test", "501 5.5.4", smtputil.CommandSyntax("RCPT"), false},
				{"RCPT TO:<us er@ours.test>", "501 5.1.3", smtputil.BadAddressSyntax("in mailbox: in local-part: malformed dot-string"), false},
				{"RCPT TO:<user@ours.test>", "250 2.1.5", smtputil.RcptOK(), false},
				{"RCPT TO:<user2@ours.test>", "250 2.1.5", smtputil.RcptOK(), false},
				{"RCPT TO:<user3@ours.test>", "452 4.5.3", smtputil.TooManyRecipients(2), false},
				{"NOOP " + long, "500 5.5.2", smtputil.CommandTooLong(1000), false},
				{"NOOP", "250 2.0.0", smtputil.NoopOK(), false},
				{"DATA now", "501 5.5.4", smtputil.CommandSyntax("DATA"), false},
				{"BDAT", "501 5.5.4", smtputil.CommandSyntax("BDAT"), false},
				// DATA over the size.
				{"DATA", "354", smtputil.DataStart(), false},
				{"Subject: big\r\n\r\n" + strings.Repeat(long+"\r\n", 1) + ".\r\n", "552 5.3.4", smtputil.MessageTooBig(1000), false},
				{"RSET", "250 2.0.0", smtputil.ResetOK(), false},
				// BDAT.
				{"MAIL FROM:<sender@example.org>", "250 2.1.0", smtputil.MailOK(), false},
				{"RCPT TO:<user@ours.test>", "250 2.1.5", smtputil.RcptOK(), false},
				{"BDAT 4\r\nabcd", "250 2.0.0", smtputil.ChunkOK("4"), false},
				{"MAIL FROM:<sender@example.org>", "503 5.5.1", smtputil.InTransfer("MAIL"), false},
				{"RCPT TO:<user@ours.test>", "503 5.5.1", smtputil.InTransfer("RCPT"), false},
				{"DATA", "503 5.5.1", smtputil.InTransfer("DATA"), false},
				{"BDAT 1000 LAST\r\n" + strings.Repeat("y", 1000), "552 5.3.4", smtputil.MessageTooBig(1000), false},
				// A message that is accepted.
				{"MAIL FROM:<sender@example.org>", "250 2.1.0", smtputil.MailOK(), false},
				{"RCPT TO:<user@ours.test>", "250 2.1.5", smtputil.RcptOK(), false},
				{"DATA", "354", smtputil.DataStart(), false},
				{"Subject: ok\r\n\r\nbody\r\n.\r\n", "250 2.0.0", smtputil.Queued(""), true},
				{"STARTTLS", "220 2.0.0", smtputil.StartTLSReady(), false},
			}
			for _, st := range steps {
				c.check(st)
			}
			c.handshakeAfterReply()
			c.check(replyStep{"STARTTLS", "503 5.5.1", smtputil.TLSActive(), false})
			c.check(replyStep{"EHLO client.example.org", "250", smtputil.EhloReply(host), false})
			for _, st := range role.auth {
				c.check(st)
			}
			c.check(replyStep{"QUIT", "221 2.0.0", smtputil.Closing(host), false})
			if smtputil.Closing(host).Message != host+" closing connection" {
				t.Errorf("QUIT reply %q", smtputil.Closing(host).Message)
			}
			c.expectClosed()
		})
	}
}

// handshakeAfterReply runs the TLS handshake after a 220 to STARTTLS that
// check has read already.
func (c *client) handshakeAfterReply() {
	c.t.Helper()
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true, ServerName: "mx.ours.test"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.c = tc
	c.tp = textproto.NewConn(tc)
}

// Without a certificate STARTTLS is not offered, and AUTH in clear text
// (where it is allowed only over TLS) gets RFC 4954's 538.
func TestRepliesWithoutTLS(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Trusted: []netip.Prefix{loopback}, Auth: outbound.AuthOptional}, func(o *smtpd.Options) { o.TLS = nil })
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.check(replyStep{"STARTTLS", "502 5.5.1", smtputil.TLSNotOffered(), false})
	h2 := submission(t, outbound.SubmissionOptions{Trusted: []netip.Prefix{loopback}, Auth: outbound.AuthOptional}, nil)
	c = dial(t, h2.addr)
	c.ehlo("client.example.org")
	c.check(replyStep{"AUTH PLAIN AG90cnMAczNjcmV0", "538 5.7.11", smtputil.EncryptionRequiredForAuth(), false})
}

// The command time-out is the catalogue's 421 4.4.2, and the connection
// closes.
func TestCommandTimeoutReply(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.CommandTimeout = 300 * time.Millisecond })
	c := dial(t, h.addr)
	code, msg := c.reply()
	if se := smtputil.CommandTimeout(); code != 421 || msg != "4.4.2 "+se.Message {
		t.Fatalf("idle client: %d %q, want 421 4.4.2 %q", code, msg, se.Message)
	}
	c.expectClosed()
}

// go-smtp's own error replies count towards max_errors like the roles'
// refusals: the max_errors-th error of any kind ends the session with
// 421 4.7.0 (before, go-smtp's own errors were not counted, and go-smtp
// ended the session after its fourth with an extra 500 line).
func TestMaxErrorsCountsProtocolErrors(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.MaxErrors = 3 })
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.check(replyStep{"FOO", "500 5.5.2", smtputil.UnknownCommand("FOO"), false})
	c.check(replyStep{"RCPT TO:<user@ours.test>", "503 5.5.1", smtputil.NeedMail("RCPT"), false})
	c.check(replyStep{"MAIL FROM:<sender@example.org>", "250 2.1.0", smtputil.MailOK(), false})
	c.check(replyStep{"RCPT TO:<user@other.test>", "421 4.7.0", smtputil.TooManyErrors(), false})
	c.expectClosed()

	c = dial(t, h.addr)
	c.ehlo("client.example.org")
	for i := 0; i < 2; i++ {
		c.check(replyStep{"BAR", "500 5.5.2", smtputil.UnknownCommand("BAR"), false})
	}
	c.check(replyStep{"BAR", "421 4.7.0", smtputil.TooManyErrors(), false})
	c.expectClosed()
}
