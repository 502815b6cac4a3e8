package inbound_test

import (
	"errors"
	"testing"

	"github.com/emersion/go-smtp"

	"securerelay/inbound"
	"securerelay/queue"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// bare asserts that err is a role's refusal: a *smtpd.Refusal naming the
// check that refused (smtpd logs and counts it under that name) around
// the catalogue's bare *smtp.SMTPError with the given codes, which smtpd
// hands to go-smtp as it is (go-smtp uses a type assertion, so anything
// else would turn into a 451/554 with internal text; smtpd's
// TestRefusalLoggedOnce sends one through).
func bare(t *testing.T, what string, err error, code int, enh smtp.EnhancedCode) {
	t.Helper()
	var ref *smtpd.Refusal
	if !errors.As(err, &ref) || ref.Check == "" || ref.Reply == nil {
		t.Errorf("%s: error %T %v, want a *smtpd.Refusal naming its check", what, err, err)
		return
	}
	se := ref.Reply
	if se.Code != code || se.EnhancedCode != enh {
		t.Errorf("%s: %d %v %q, want %d %v", what, se.Code, se.EnhancedCode, se.Message, code, enh)
	}
}

func TestRoleBasics(t *testing.T) {
	r := inbound.New([]string{"ours.test"})
	if r.Origin() != queue.OriginInbound {
		t.Errorf("Origin = %q", r.Origin())
	}
	if r.AuthEnabled() {
		t.Error("AUTH enabled on the MX role")
	}
	if err := r.Authenticate(&smtpd.State{}, "u", "p"); err == nil {
		t.Error("Authenticate succeeded on the MX role")
	}
	if err := r.Connect(&smtpd.State{}); err != nil {
		t.Errorf("Connect: %v", err)
	}
	if err := r.Data(&smtpd.State{}, &smtpd.Message{}); err != nil {
		t.Errorf("Data: %v", err)
	}
}

func TestMail(t *testing.T) {
	r := inbound.New([]string{"ours.test"})
	st := &smtpd.State{}
	for in, want := range map[string]string{
		"":                       "",
		"sender@example.org":     "sender@example.org",
		"Sender@EXAMPLE.org.":    "Sender@example.org",
		"a b@example.org":        `"a b"@example.org`,
		"sender@[192.0.2.1]":     "sender@[192.0.2.1]",
		"user%x@example.org":     "user%x@example.org", // only recipients are checked for routing tricks
		"first.last@example.org": "first.last@example.org",
	} {
		got, err := r.Mail(st, in, &smtp.MailOptions{})
		if err != nil || got != want {
			t.Errorf("Mail(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"user@localhost", "no-at-sign", "user@exa mple.org", "user@-bad.example"} {
		_, err := r.Mail(st, in, &smtp.MailOptions{})
		want := addressReply(t, in, true)
		if want.Code/100 != 5 || want.EnhancedCode != (smtp.EnhancedCode{5, 1, 7}) {
			t.Errorf("smtputil picks %d %v for sender %q", want.Code, want.EnhancedCode, in)
		}
		bare(t, "Mail("+in+")", err, want.Code, want.EnhancedCode)
	}
}

func TestRcpt(t *testing.T) {
	r := inbound.New([]string{"ours.test", "second.test"})
	st := &smtpd.State{}
	accept := map[string]string{
		"user@ours.test":       "user@ours.test",
		"user@ours.test.":      "user@ours.test",
		"USER@OURS.TEST":       "USER@ours.test",
		"user@Second.Test":     "user@second.test",
		"first.last@ours.test": "first.last@ours.test",
		"user+tag@ours.test":   "user+tag@ours.test",
	}
	for in, want := range accept {
		got, err := r.Rcpt(st, in, &smtp.RcptOptions{})
		if err != nil || got != want {
			t.Errorf("Rcpt(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	// What go-smtp hands over: quotes and source routes already removed.
	relay := []string{
		"user@other.test",
		"user@sub.ours.test",
		"user@ours.test.other.test",
		"user@[127.0.0.1]",
		"user@[ipv6:::1]",
		"user%other.test@ours.test",
		"other.test!user@ours.test",
		"user@other.test@ours.test", // "user@other.test"@ours.test
		"@hop:user@ours.test",
		"a,b@ours.test",
	}
	// Relay refusals are whatever smtputil.RelayDenied says: a permanent
	// X.7.1 (RFC 5321 allows 550 at RCPT; Postfix sends 554).
	denied := smtputil.RelayDenied("other.test")
	if denied.Code/100 != 5 || denied.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
		t.Fatalf("RelayDenied is %d %v, want a 5xx 5.7.1", denied.Code, denied.EnhancedCode)
	}
	for _, in := range relay {
		_, err := r.Rcpt(st, in, &smtp.RcptOptions{})
		bare(t, "Rcpt("+in+")", err, denied.Code, denied.EnhancedCode)
		if c := smtpd.CheckOf(err); c != "relay" && c != "routing_trick" {
			t.Errorf("Rcpt(%s) refused as %q, want relay or routing_trick", in, c)
		}
	}
	for _, in := range []string{"no-at-sign", "user@", "@ours.test", "user@ours..test", "user@localhost"} {
		_, err := r.Rcpt(st, in, &smtp.RcptOptions{})
		want := addressReply(t, in, false)
		if want.Code/100 != 5 || want.EnhancedCode != (smtp.EnhancedCode{5, 1, 3}) {
			t.Errorf("smtputil picks %d %v for recipient %q", want.Code, want.EnhancedCode, in)
		}
		bare(t, "Rcpt("+in+")", err, want.Code, want.EnhancedCode)
	}
}

func TestSetDomains(t *testing.T) {
	r := inbound.New([]string{"old.test"})
	st := &smtpd.State{}
	if _, err := r.Rcpt(st, "user@old.test", &smtp.RcptOptions{}); err != nil {
		t.Fatal(err)
	}
	r.SetDomains([]string{"new.test"})
	if _, err := r.Rcpt(st, "user@old.test", &smtp.RcptOptions{}); err == nil {
		t.Error("old domain still accepted after SetDomains")
	}
	if _, err := r.Rcpt(st, "user@new.test", &smtp.RcptOptions{}); err != nil {
		t.Errorf("new domain refused after SetDomains: %v", err)
	}
	r.SetDomains(nil)
	if _, err := r.Rcpt(st, "user@new.test", &smtp.RcptOptions{}); err == nil {
		t.Error("accepted with no domains configured")
	}
}

// addressReply is the reply smtputil picks for an address that does not
// parse; the roles must pass it on unchanged.
func addressReply(t *testing.T, in string, sender bool) *smtp.SMTPError {
	t.Helper()
	_, err := smtputil.ParseAddress(in)
	if err == nil {
		t.Fatalf("%q parses", in)
	}
	return smtputil.AddressReply(err, sender)
}
