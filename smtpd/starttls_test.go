package smtpd_test

import (
	"crypto/tls"
	"net/textproto"
	"strings"
	"testing"

	"securerelay/smtpd"
)

// CVE-2011-0411 class: commands sent in the same packet as STARTTLS were
// read before the handshake and must not be executed after it.
func TestSTARTTLSPipelinedCommandsDiscarded(t *testing.T) {
	role := &recordingRole{Role: ours()}
	h := start(t, role, nil)

	t.Run("MAIL", func(t *testing.T) {
		c := dial(t, h.addr)
		if _, ok := hasExt(c.ehlo("client.example.org"), "STARTTLS"); !ok {
			t.Fatal("STARTTLS not advertised")
		}
		c.raw("STARTTLS\r\nMAIL FROM:<evil@attacker.test>\r\n")
		c.handshakeAfter220()
		c.ehlo("client.example.org")
		if code, msg := c.cmd("RCPT TO:<user@ours.test>"); code < 500 {
			t.Fatalf("RCPT after TLS without a MAIL of our own: %d %s; the injected MAIL FROM was executed", code, msg)
		}
		if code, msg := c.cmd("DATA"); code < 500 {
			t.Fatalf("DATA: %d %s", code, msg)
		}
	})

	t.Run("EHLO MAIL RCPT", func(t *testing.T) {
		c := dial(t, h.addr)
		c.ehlo("client.example.org")
		c.raw("STARTTLS\r\nEHLO evil.test\r\nMAIL FROM:<evil@attacker.test>\r\nRCPT TO:<victim@ours.test>\r\n")
		c.handshakeAfter220()
		// Not even the EHLO survived: the session starts from scratch.
		c.expect("MAIL FROM:<sender@example.org>", 503, "5.5.1")
		if code, msg := c.cmd("DATA"); code < 500 {
			t.Fatalf("DATA right after the handshake: %d %s", code, msg)
		}
		c.ehlo("client.example.org")
		c.expect("MAIL FROM:<sender@example.org>", 250, "")
		c.expect("RCPT TO:<user@ours.test>", 250, "")
		d := h.queueID(c.data(msgBody + ".\r\n"))
		got := h.next()
		if got.ID != d || len(got.Env.To) != 1 || got.Env.To[0] != "user@ours.test" {
			t.Errorf("envelope after TLS: %+v", got.Env)
		}
	})

	for _, s := range role.senders() {
		if strings.Contains(s, "evil") {
			t.Errorf("an injected MAIL FROM reached the role: %v", role.senders())
		}
	}
}

// handshakeAfter220 reads the 220 to a STARTTLS sent with raw and runs
// the client side of the handshake.
func (c *client) handshakeAfter220() {
	c.t.Helper()
	if code, msg := c.reply(); code != 220 {
		c.t.Fatalf("STARTTLS: %d %s", code, msg)
	}
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true, ServerName: "mx.ours.test"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.c = tc
	c.tp = textproto.NewConn(tc)
}

func TestReceivedESMTPS(t *testing.T) {
	h := start(t, ours(), nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	cs := c.starttls()
	exts := c.ehlo("client.example.org")
	if _, ok := hasExt(exts, "STARTTLS"); ok {
		t.Error("STARTTLS advertised again inside TLS")
	}
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.expect("RCPT TO:<user@ours.test>", 250, "")
	id := h.queueID(c.data(msgBody + ".\r\n"))
	d := h.next()
	rcv, rest := splitReceived(t, d.Data)
	ver := strings.ReplaceAll(tls.VersionName(cs.Version), " ", "")
	for _, s := range []string{"with ESMTPS id " + id, "[127.0.0.1]", "(" + ver + " " + tls.CipherSuiteName(cs.CipherSuite) + "; listener mx)"} {
		if !strings.Contains(rcv, s) {
			t.Errorf("Received: lacks %q:\n%s", s, rcv)
		}
	}
	if string(rest) != strings.ReplaceAll(msgBody, "\r\n..", "\r\n.") {
		t.Errorf("data after Received: %q", rest)
	}
}

func TestRequireTLS(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.RequireTLS = true })
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<sender@example.org>", 530, "5.7.0")
	c.starttls()
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
}

// REQUIRETLS (RFC 8689) is offered only inside TLS and refused in clear
// text; over TLS it is taken and travels in the queue envelope.
func TestREQUIRETLSParameter(t *testing.T) {
	h := start(t, ours(), nil)
	c := dial(t, h.addr)
	if _, ok := hasExt(c.ehlo("client.example.org"), "REQUIRETLS"); ok {
		t.Errorf("REQUIRETLS advertised before STARTTLS")
	}
	c.expect("MAIL FROM:<sender@example.org> REQUIRETLS", 530, "5.7.10")
	c.starttls()
	if _, ok := hasExt(c.ehlo("client.example.org"), "REQUIRETLS"); !ok {
		t.Errorf("REQUIRETLS not advertised after STARTTLS")
	}
	c.expect("MAIL FROM:<sender@example.org> REQUIRETLS", 250, "")
	c.expect("RCPT TO:<user@ours.test>", 250, "")
	h.queueID(c.data("Subject: x\r\n\r\nbody\r\n.\r\n"))
	if d := h.next(); !d.Env.RequireTLS {
		t.Errorf("queued envelope %+v lacks RequireTLS", d.Env)
	}
}
