package smtpd_test

import (
	"net/netip"
	"strings"
	"testing"

	"securerelay/inbound"
	"securerelay/outbound"
)

// TestSMTPUTF8Inbound: an inbound listener offers SMTPUTF8 (RFC 6531)
// and, in a transaction that declares it, takes a UTF-8 local part and a
// U-label domain, matching our domain (configured in A-labels) however
// the client writes it. Without the parameter the same addresses get 553
// 5.6.7, as before SMTPUTF8. The queue entry records that the message
// needs SMTPUTF8, and our Received: field says "with UTF8SMTP" and names
// a downgradable recipient in ASCII.
func TestSMTPUTF8Inbound(t *testing.T) {
	h := start(t, inbound.New([]string{"xn--mller-kva.example"}), nil)
	c := dial(t, h.addr)
	if _, ok := hasExt(c.ehlo("client.example.org"), "SMTPUTF8"); !ok {
		t.Fatal("SMTPUTF8 not offered on an inbound listener")
	}
	c.expect("MAIL FROM:<jörg@bücher.example>", 553, "5.6.7")
	c.expect("MAIL FROM:<sender@bücher.example>", 553, "5.6.7")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<jörg@müller.example>", 553, "5.6.7")
	c.expect("RCPT TO:<user@müller.example>", 553, "5.6.7")
	c.expect("RCPT TO:<user@xn--mller-kva.example>", 250, "")
	c.expect("RSET", 250, "")

	c.expect("MAIL FROM:<jörg@bücher.example> SMTPUTF8", 250, "")
	c.expect("RCPT TO:<jörg@MÜLLER.example>", 250, "")
	c.expect("RCPT TO:<anna@xn--mller-kva.example>", 250, "")
	c.expect("RCPT TO:<jörg@other.example>", 554, "5.7.1")
	c.expect("RCPT TO:<a@bü_cher.example>", 501, "5.1.3")
	h.queueID(c.data("From: Jörg <jörg@bücher.example>\r\nSubject: Grüße\r\n\r\nHallo\r\n.\r\n"))
	d := h.next()
	if !d.Env.SMTPUTF8 {
		t.Error("queue envelope does not record SMTPUTF8")
	}
	if d.Env.From != "jörg@bücher.example" || strings.Join(d.Env.To, " ") != "jörg@müller.example anna@xn--mller-kva.example" {
		t.Errorf("envelope %q -> %q, want the addresses as written (domain lower-cased)", d.Env.From, d.Env.To)
	}
	recv, _ := splitReceived(t, d.Data)
	if !strings.Contains(recv, " with UTF8SMTP id ") {
		t.Errorf("Received: %s\nwant \"with UTF8SMTP\" (RFC 6531 section 4.3)", recv)
	}

	// One recipient whose domain alone is non-ASCII: the for clause is
	// ASCII, so that the trace field keeps the message downgradable.
	c.expect("MAIL FROM:<sender@example.org> SMTPUTF8", 250, "")
	c.expect("RCPT TO:<user@müller.example>", 250, "")
	h.queueID(c.data("Subject: x\r\n\r\nx\r\n.\r\n"))
	d = h.next()
	recv, _ = splitReceived(t, d.Data)
	if !strings.Contains(recv, "for <user@xn--mller-kva.example>;") {
		t.Errorf("Received: %s\nwant the recipient in A-labels", recv)
	}
	// SMTPUTF8 ends with its transaction.
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<user@müller.example>", 553, "5.6.7")
}

// TestSMTPUTF8Submission: the same on an outbound listener, for any
// recipient domain; an ASCII message that declared SMTPUTF8 is recorded
// as such (delivery passes the parameter on where it is offered).
func TestSMTPUTF8Submission(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Trusted: []netip.Prefix{loopback}, Auth: outbound.AuthOff}, nil)
	c := dial(t, h.addr)
	if _, ok := hasExt(c.ehlo("client.example.org"), "SMTPUTF8"); !ok {
		t.Fatal("SMTPUTF8 not offered on an outbound listener")
	}
	c.expect("MAIL FROM:<app@example.org>", 250, "")
	c.expect("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>", 553, "5.6.7")
	c.expect("RSET", 250, "")
	c.expect("MAIL FROM:<app@example.org> SMTPUTF8", 250, "")
	c.expect("RCPT TO:<δοκιμή@παράδειγμα.δοκιμή>", 250, "")
	c.expect("RCPT TO:<a\x85b@example.org>", 501, "5.1.3")
	h.queueID(c.data("Subject: x\r\n\r\nx\r\n.\r\n"))
	d := h.next()
	if !d.Env.SMTPUTF8 || strings.Join(d.Env.To, " ") != "δοκιμή@παράδειγμα.δοκιμή" {
		t.Errorf("envelope %+v", d.Env)
	}
	c.expect("MAIL FROM:<app@example.org> SMTPUTF8", 250, "")
	c.expect("RCPT TO:<b@example.org>", 250, "")
	h.queueID(c.data("Subject: x\r\n\r\nx\r\n.\r\n"))
	if d := h.next(); !d.Env.SMTPUTF8 {
		t.Error("declared SMTPUTF8 not recorded")
	}
	c.expect("MAIL FROM:<app@example.org>", 250, "")
	c.expect("RCPT TO:<b@example.org>", 250, "")
	h.queueID(c.data("Subject: x\r\n\r\nx\r\n.\r\n"))
	if d := h.next(); d.Env.SMTPUTF8 {
		t.Error("SMTPUTF8 recorded for a message that neither declared nor needs it")
	}
}
