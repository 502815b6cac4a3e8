package smtpd_test

import (
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

func TestInboundRecipients(t *testing.T) {
	h := start(t, ours(), nil)
	// Whatever smtputil decides for relay refusals (a 5xx with X.7.1),
	// the listener must send exactly that.
	denied := smtputil.RelayDenied("other.test")
	trick := smtputil.RoutingTrickReply("x")
	if denied.Code/100 != 5 || denied.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) ||
		trick.Code != denied.Code || trick.EnhancedCode != denied.EnhancedCode {
		t.Fatalf("relay refusals: RelayDenied %d %v, RoutingTrickReply %d %v; want one permanent X.7.1 reply",
			denied.Code, denied.EnhancedCode, trick.Code, trick.EnhancedCode)
	}

	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	for _, rcpt := range []string{
		"<user@other.test>",
		"<user@sub.ours.test>",
		"<user@ours.test.other.test>",
		"<user%other.test@ours.test>",
		"<other.test!user@ours.test>",
		`<"user@other.test"@ours.test>`,
		"<@ours.test:user@other.test>", // source route: the last hop counts
		"<user@[127.0.0.1]>",
		"<user@[IPv6:::1]>",
		`<"user:other"@ours.test>`,
		`<"a,b@other.test"@ours.test>`,
	} {
		c.expect("RCPT TO:"+rcpt, denied.Code, enhOf(denied))
	}
	for _, rcpt := range []string{"<user@ours.test>", "<user@ours.test.>", "<USER@OURS.TEST>", "<Mixed@Ours.Test>"} {
		c.expect("RCPT TO:"+rcpt, 250, "")
	}
	h.queueID(c.data("Subject: x\r\n\r\nx\r\n.\r\n"))
	d := h.next()
	want := []string{"user@ours.test", "user@ours.test", "USER@ours.test", "Mixed@ours.test"}
	if len(d.Env.To) != len(want) {
		t.Fatalf("envelope To = %q", d.Env.To)
	}
	got := map[string]int{}
	for _, r := range d.Env.To {
		got[r]++
	}
	if got["user@ours.test"] != 2 || got["USER@ours.test"] != 1 || got["Mixed@ours.test"] != 1 {
		t.Errorf("envelope To = %q, want canonical forms %q", d.Env.To, want)
	}
}

func TestInboundNoAuth(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.AllowInsecureAuth = true })
	c := dial(t, h.addr)
	if _, ok := hasExt(c.ehlo("client.example.org"), "AUTH"); ok {
		t.Error("AUTH advertised on an inbound listener (clear text)")
	}
	c.starttls()
	if _, ok := hasExt(c.ehlo("client.example.org"), "AUTH"); ok {
		t.Error("AUTH advertised on an inbound listener (TLS)")
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00user\x00secret"))
	if code, msg := c.cmd("AUTH PLAIN " + ir); code/100 != 5 {
		t.Errorf("AUTH on an inbound listener: %d %s, want a 5xx refusal", code, msg)
	}
}

// Inbound senders: syntax checked, null sender allowed.
func TestInboundSenders(t *testing.T) {
	h := start(t, ours(), nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	_, perr := smtputil.ParseAddress("user@localhost")
	unq := smtputil.AddressReply(perr, true)
	if unq.Code/100 != 5 || unq.EnhancedCode != (smtp.EnhancedCode{5, 1, 7}) {
		t.Errorf("unqualified sender reply %d %v", unq.Code, unq.EnhancedCode)
	}
	c.expect("MAIL FROM:<user@localhost>", unq.Code, enhOf(unq))
	c.expect("MAIL FROM:<>", 250, "")
	c.expect("RCPT TO:<user@ours.test>", 250, "")
	h.queueID(c.data("Subject: bounce\r\n\r\nx\r\n.\r\n"))
	if d := h.next(); d.Env.From != "" {
		t.Errorf("null sender spooled as %q", d.Env.From)
	}
}

// Submission listener fixtures: one account "otrs" with a cheap hash.
func submission(t *testing.T, so outbound.SubmissionOptions, mod func(*smtpd.Options)) *harness {
	t.Helper()
	hash, err := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	users := outbound.NewUsers(map[string]string{"otrs": string(hash)})
	return start(t, outbound.NewSubmission(so, users), func(o *smtpd.Options) {
		o.Name = "submission"
		if mod != nil {
			mod(o)
		}
	})
}

var (
	loopback  = netip.MustParsePrefix("127.0.0.0/8")
	elsewhere = netip.MustParsePrefix("10.0.0.0/8")
)

func TestSubmissionUntrustedNeedsAuth(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Trusted: []netip.Prefix{elsewhere}, Auth: outbound.AuthOptional}, nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<app@ours.test>", 530, "5.7.0")
	c.expect("RCPT TO:<someone@remote.test>", 503, "5.5.1")
	h.expectNothingSpooled()
}

func TestSubmissionAuthOffUntrustedRefused(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Trusted: []netip.Prefix{elsewhere}, Auth: outbound.AuthOff}, nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.starttls()
	if _, ok := hasExt(c.ehlo("client.example.org"), "AUTH"); ok {
		t.Error("AUTH advertised with auth: off")
	}
	c.expect("MAIL FROM:<app@ours.test>", 554, "5.7.1")
}

func TestSubmissionTrustedNetwork(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Trusted: []netip.Prefix{loopback}, Auth: outbound.AuthOptional}, nil)
	c := dial(t, h.addr)
	c.ehlo("otrs.ours.test")
	c.expect("MAIL FROM:<app@ours.test>", 250, "")
	c.expect("RCPT TO:<someone@remote.test>", 250, "")
	id := h.queueID(c.data("Subject: ticket\r\n\r\nx\r\n.\r\n"))
	d := h.next()
	if d.ID != id || d.Env.Origin != queue.OriginOutbound || d.Env.AuthUser != "" || d.Env.Listener != "submission" {
		t.Errorf("envelope %+v", d.Env)
	}
	rcv, _ := splitReceived(t, d.Data)
	if !strings.Contains(rcv, "with ESMTP id "+id) {
		t.Errorf("Received: %s", rcv)
	}
}

// auth: required wins over trusted_networks.
func TestSubmissionAuthRequiredEvenWhenTrusted(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Trusted: []netip.Prefix{loopback}, Auth: outbound.AuthRequired}, nil)
	c := dial(t, h.addr)
	c.ehlo("otrs.ours.test")
	c.expect("MAIL FROM:<app@ours.test>", 530, "5.7.0")
}

// AUTH PLAIN and LOGIN after STARTTLS, with go-smtp's client.
func TestSubmissionAuthAfterSTARTTLS(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Auth: outbound.AuthRequired}, nil)
	for name, mech := range map[string]sasl.Client{
		"PLAIN": sasl.NewPlainClient("", "otrs", "s3cret"),
		"LOGIN": sasl.NewLoginClient("otrs", "s3cret"),
	} {
		t.Run(name, func(t *testing.T) {
			conn, err := net.DialTimeout("tcp", h.addr, testTimeout)
			if err != nil {
				t.Fatal(err)
			}
			conn.SetDeadline(time.Now().Add(testTimeout))
			c, err := smtp.NewClientStartTLS(conn, &tls.Config{InsecureSkipVerify: true})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if ok, mechs := c.Extension("AUTH"); !ok || !strings.Contains(mechs, "PLAIN") || !strings.Contains(mechs, "LOGIN") {
				t.Fatalf("after STARTTLS: AUTH %v %q", ok, mechs)
			}
			if err := c.Auth(mech); err != nil {
				t.Fatalf("AUTH %s: %v", name, err)
			}
			if err := c.SendMail("app@ours.test", []string{"someone@remote.test"}, strings.NewReader("Subject: hi\r\n\r\nx\r\n")); err != nil {
				t.Fatalf("sending after AUTH: %v", err)
			}
			d := h.next()
			if d.Env.AuthUser != "otrs" || d.Env.From != "app@ours.test" {
				t.Errorf("envelope %+v", d.Env)
			}
			rcv, _ := splitReceived(t, d.Data)
			if !strings.Contains(rcv, "with ESMTPSA id "+d.ID) || !strings.Contains(rcv, "TLS") {
				t.Errorf("Received: after STARTTLS and AUTH: %s", rcv)
			}
			c.Quit()
		})
	}
}

// LOGIN without initial response: the server prompts for both.
func TestSubmissionAuthLoginPrompts(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Auth: outbound.AuthRequired}, nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.starttls()
	c.ehlo("client.example.org")
	b64 := base64.StdEncoding.EncodeToString
	if code, msg := c.cmd("AUTH LOGIN"); code != 334 || msg != b64([]byte("Username:")) {
		t.Fatalf("AUTH LOGIN: %d %s", code, msg)
	}
	if code, msg := c.cmd(b64([]byte("otrs"))); code != 334 || msg != b64([]byte("Password:")) {
		t.Fatalf("after user name: %d %s", code, msg)
	}
	c.expect(b64([]byte("s3cret")), 235, "2.7.0")
	c.expect("MAIL FROM:<app@ours.test>", 250, "")
}

func TestSubmissionAuthBeforeSTARTTLSRefused(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Auth: outbound.AuthRequired}, nil)
	c := dial(t, h.addr)
	if _, ok := hasExt(c.ehlo("client.example.org"), "AUTH"); ok {
		t.Error("AUTH advertised before STARTTLS")
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00otrs\x00s3cret"))
	// RFC 4954 section 6 (go-smtp patch 4).
	c.expect("AUTH PLAIN "+ir, 538, "5.7.11")
	c.expect("MAIL FROM:<app@ours.test>", 530, "5.7.0")
}

func TestSubmissionAllowInsecureAuth(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Auth: outbound.AuthRequired}, func(o *smtpd.Options) { o.AllowInsecureAuth = true })
	c := dial(t, h.addr)
	if v, ok := hasExt(c.ehlo("client.example.org"), "AUTH"); !ok || !strings.Contains(v, "PLAIN") {
		t.Errorf("AUTH not advertised with allow_insecure_auth: %q", v)
	}
	ir := base64.StdEncoding.EncodeToString([]byte("\x00otrs\x00s3cret"))
	c.expect("AUTH PLAIN "+ir, 235, "2.7.0")
	c.expect("MAIL FROM:<app@ours.test>", 250, "")
	c.expect("RCPT TO:<someone@remote.test>", 250, "")
	h.queueID(c.data("Subject: x\r\n\r\nx\r\n.\r\n"))
	rcv, _ := splitReceived(t, h.next().Data)
	if !strings.Contains(rcv, "with ESMTPA id ") {
		t.Errorf("Received: %s", rcv)
	}
}

// One failed attempt only: each failure costs the client a growing delay.
func TestSubmissionWrongPassword(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Auth: outbound.AuthRequired}, nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.starttls()
	c.ehlo("client.example.org")
	ir := base64.StdEncoding.EncodeToString([]byte("\x00otrs\x00wrong"))
	c.expect("AUTH PLAIN "+ir, 535, "5.7.8")
	c.expect("MAIL FROM:<app@ours.test>", 530, "5.7.0")
	// The right password still works in the same session.
	ir = base64.StdEncoding.EncodeToString([]byte("\x00otrs\x00s3cret"))
	c.expect("AUTH PLAIN "+ir, 235, "2.7.0")
}

// PLAIN with an authorisation identity other than the user is refused
// (no proxy authorisation), without the failure delay.
func TestSubmissionPlainForeignIdentity(t *testing.T) {
	h := submission(t, outbound.SubmissionOptions{Auth: outbound.AuthRequired}, nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.starttls()
	c.ehlo("client.example.org")
	ir := base64.StdEncoding.EncodeToString([]byte("admin\x00otrs\x00s3cret"))
	c.expect("AUTH PLAIN "+ir, 535, "5.7.8")
}

func enhOf(e *smtp.SMTPError) string {
	return fmt.Sprintf("%d.%d.%d", e.EnhancedCode[0], e.EnhancedCode[1], e.EnhancedCode[2])
}
