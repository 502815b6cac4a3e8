package smtpd_test

import (
	"reflect"
	"strings"
	"testing"

	"securerelay/queue"
	"securerelay/smtpd"
)

// paramUnsupported is the catalogue's reply (through go-smtp's Replies
// hook) to a parameter of an extension this listener does not offer (a
// DSN parameter without DSN, BODY=BINARYMIME): RFC 5321 §4.1.1.11, 555.
const paramUnsupported, paramUnsupportedEnh = 555, "5.5.4"

func withDSN(o *smtpd.Options) { o.DSN = true }

// Without the listener option DSN is not offered (an inbound listener's
// default: success notices to unverified senders are backscatter), and
// its parameters are refused.
func TestDSNNotOfferedByDefault(t *testing.T) {
	h := start(t, &fakeRole{}, nil)
	c := dial(t, h.addr)
	if _, ok := hasExt(c.ehlo("client.example.org"), "DSN"); ok {
		t.Fatal("DSN advertised without the listener option")
	}
	c.expect("MAIL FROM:<a@example.org> RET=HDRS", paramUnsupported, paramUnsupportedEnh)
	c.expect("MAIL FROM:<a@example.org>", 250, "")
	c.expect("RCPT TO:<b@example.com> NOTIFY=SUCCESS", paramUnsupported, paramUnsupportedEnh)
	c.expect("RCPT TO:<b@example.com> ORCPT=rfc822;b@example.com", paramUnsupported, paramUnsupportedEnh)
}

// With DSN on, the parameters are accepted and kept in the queue entry:
// RET, ENVID and BODY per message, NOTIFY and ORCPT per recipient (by
// index, empty where a recipient had none), all decoded.
func TestDSNParametersSpooled(t *testing.T) {
	h := start(t, &fakeRole{origin: queue.OriginOutbound}, withDSN)
	c := dial(t, h.addr)
	if _, ok := hasExt(c.ehlo("client.example.org"), "DSN"); !ok {
		t.Fatal("DSN not advertised")
	}
	c.expect("MAIL FROM:<a@example.org> RET=hdrs ENVID=QQ+2B314+20159 BODY=8BITMIME", 250, "")
	c.expect("RCPT TO:<b@example.com> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;Bob+2Btag@Example.com", 250, "")
	c.expect("RCPT TO:<c@example.com>", 250, "")
	c.expect(`RCPT TO:<d@example.com> NOTIFY=never ORCPT=utf-8;j\x{F6}rg@example.com`, 250, "")
	id := h.queueID(c.data("Subject: x\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n.\r\n"))
	d := h.next()
	if d.ID != id {
		t.Fatalf("delivered %s, want %s", d.ID, id)
	}
	e := d.Env
	if e.Ret != "HDRS" || e.EnvID != "QQ+314 159" || e.Body != "8BITMIME" {
		t.Errorf("RET %q ENVID %q BODY %q", e.Ret, e.EnvID, e.Body)
	}
	want := []queue.RcptDSN{{Notify: "SUCCESS,FAILURE", ORCPT: "rfc822;Bob+tag@Example.com"}, {}, {Notify: "NEVER", ORCPT: "utf-8;jörg@example.com"}}
	if !reflect.DeepEqual(e.RcptDSN, want) {
		t.Errorf("RcptDSN %+v, want %+v", e.RcptDSN, want)
	}
	if d.Content != queue.Content8Bit {
		t.Errorf("content %v, want 8-bit (seen while spooling)", d.Content)
	}

	// The next transaction on the session starts clean.
	c.expect("MAIL FROM:<a@example.org>", 250, "")
	c.expect("RCPT TO:<b@example.com>", 250, "")
	h.queueID(c.data("Subject: y\r\n\r\nascii\r\n.\r\n"))
	d = h.next()
	if d.Env.Ret != "" || d.Env.EnvID != "" || d.Env.Body != "" || d.Env.RcptDSN != nil || d.Content != queue.Content7Bit {
		t.Errorf("second message carries %+v, content %v", d.Env, d.Content)
	}
}

// Bad DSN syntax is refused 501 5.5.4 (RFC 3461 §4), and so is a value
// longer than RFC 3461 allows; nothing of it reaches the role.
func TestDSNParameterSyntax(t *testing.T) {
	role := &fakeRole{origin: queue.OriginOutbound}
	h := start(t, role, func(o *smtpd.Options) { o.DSN = true; o.MaxErrors = 100 })
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	for _, line := range []string{
		"MAIL FROM:<a@example.org> RET=ALL",
		"MAIL FROM:<a@example.org> RET=",
		"MAIL FROM:<a@example.org> ENVID=a+2",
		"MAIL FROM:<a@example.org> ENVID=a+0Ab",    // decodes to a line break
		"MAIL FROM:<a@example.org> ENVID=a+c3+a4b", // lower-case hex
		"MAIL FROM:<a@example.org> ENVID=" + strings.Repeat("x", 101),
		"MAIL FROM:<a@example.org> ENVID=" + strings.Repeat("+20", 34), // 34 characters, 102 as sent
		"MAIL FROM:<a@example.org> RET=FULL RET=HDRS",
		"MAIL FROM:<a@example.org> BODY=9BIT",
	} {
		c.expect(line, 501, "5.5.4")
	}
	if n := len(role.senders()); n != 0 {
		t.Fatalf("the role saw %d MAIL commands with bad parameters", n)
	}
	c.expect("MAIL FROM:<a@example.org> ENVID="+strings.Repeat("x", 100), 250, "")
	for _, line := range []string{
		"RCPT TO:<b@example.com> NOTIFY=NEVER,SUCCESS",
		"RCPT TO:<b@example.com> NOTIFY=SUCCESS,SUCCESS",
		"RCPT TO:<b@example.com> NOTIFY=",
		"RCPT TO:<b@example.com> NOTIFY=SOMETIMES",
		"RCPT TO:<b@example.com> NOTIFY=NEVER NOTIFY=SUCCESS",
		"RCPT TO:<b@example.com> ORCPT=x400;/G=b/",
		"RCPT TO:<b@example.com> ORCPT=rfc822",
		"RCPT TO:<b@example.com> ORCPT=rfc822;",
		"RCPT TO:<b@example.com> ORCPT=rfc822;b+E4@example.com",
		"RCPT TO:<b@example.com> ORCPT=utf-8;b\xff@example.com",
		"RCPT TO:<b@example.com> ORCPT=rfc822;" + strings.Repeat("b", 490) + "@example.com",
	} {
		c.expect(line, 501, "5.5.4")
	}
	c.expect("RCPT TO:<b@example.com> ORCPT=rfc822;"+strings.Repeat("b", 480)+"@example.com", 250, "")
}

// BINARYMIME is not offered (net/smtp, which delivers to SMTP next hops,
// cannot send BDAT, and a 7-bit hop would need the message converted),
// so BODY=BINARYMIME is refused; CHUNKING itself is still offered.
func TestBinaryMIMERefused(t *testing.T) {
	h := start(t, &fakeRole{}, withDSN)
	c := dial(t, h.addr)
	exts := c.ehlo("client.example.org")
	if _, ok := hasExt(exts, "BINARYMIME"); ok {
		t.Fatal("BINARYMIME advertised")
	}
	if _, ok := hasExt(exts, "8BITMIME"); !ok {
		t.Fatal("8BITMIME not advertised")
	}
	c.expect("MAIL FROM:<a@example.org> BODY=BINARYMIME", paramUnsupported, paramUnsupportedEnh)
	c.expect("MAIL FROM:<a@example.org> BODY=7BIT", 250, "")
}
