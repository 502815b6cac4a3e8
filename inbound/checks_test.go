package inbound_test

import (
	"crypto/tls"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/inbound"
	"securerelay/smtpd"
)

// action is an action as the configuration spells it.
func action(t *testing.T, s string) inbound.Action {
	t.Helper()
	a, err := inbound.ParseAction(s)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func dnsMock() dnstest.Mock {
	return dnstest.Mock{
		MX: map[string][]dnsutil.MX{
			"mx.example":     {{Host: "mail.mx.example", Pref: 10}},
			"nullmx.example": {{Host: ".", Pref: 0}},
		},
		Host: map[string][]netip.Addr{
			"mail.mx.example": {netip.MustParseAddr("192.0.2.1")},
			"a-only.example":  {netip.MustParseAddr("192.0.2.2")},
		},
		Fail: map[string]dnsutil.Kind{"broken.example": dnsutil.Temporary},
	}
}

func code(err error) (int, smtp.EnhancedCode) {
	if err == nil {
		return 250, smtp.EnhancedCode{2, 0, 0}
	}
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return -1, smtp.EnhancedCode{}
	}
	return se.Code, se.EnhancedCode
}

// Every envelope check with each of its actions, and the DNS answers that
// decide the sender-domain check: NXDOMAIN and null MX are permanent, a
// DNS failure is always temporary.
func TestSenderChecks(t *testing.T) {
	for _, c := range []struct {
		action, from string
		code         int
		enh          smtp.EnhancedCode
	}{
		{"reject", "a@mx.example", 250, smtp.EnhancedCode{2, 0, 0}},
		{"reject", "a@a-only.example", 250, smtp.EnhancedCode{2, 0, 0}}, // implicit MX
		{"reject", "a@nx.example", 550, smtp.EnhancedCode{5, 1, 8}},
		{"reject", "a@nullmx.example", 550, smtp.EnhancedCode{5, 7, 27}}, // RFC 7505 section 4.2
		{"reject", "a@broken.example", 450, smtp.EnhancedCode{4, 1, 8}},
		{"tempfail", "a@nx.example", 450, smtp.EnhancedCode{4, 1, 8}},
		{"off", "a@nx.example", 250, smtp.EnhancedCode{2, 0, 0}},
		{"reject", "", 250, smtp.EnhancedCode{2, 0, 0}}, // the null sender
		{"reject", "a@localhost", 553, smtp.EnhancedCode{5, 1, 7}},
	} {
		r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Resolver: dnsMock(),
			Checks: inbound.Checks{SenderDomain: action(t, c.action), SenderFQDN: action(t, c.action)}})
		_, err := r.Mail(&smtpd.State{}, c.from, nil)
		if got, enh := code(err); got != c.code || enh != c.enh {
			t.Errorf("%s, MAIL FROM:<%s>: %d %v (%v), want %d %v", c.action, c.from, got, enh, err, c.code, c.enh)
		}
		// Refused by the setting that smtpd logs and counts it under,
		// DNS trouble included.
		want := map[string]string{"a@localhost": "sender_fqdn"}[c.from]
		if want == "" && err != nil {
			want = "sender_domain"
		}
		if got := smtpd.CheckOf(err); got != want {
			t.Errorf("%s, MAIL FROM:<%s>: refused as %q, want %q", c.action, c.from, got, want)
		}
	}
	for name, want := range map[string]int{"tempfail": 450, "off": 250} {
		r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Checks: inbound.Checks{SenderFQDN: action(t, name)}})
		if got, _ := code(func() error { _, err := r.Mail(&smtpd.State{}, "a@localhost", nil); return err }()); got != want {
			t.Errorf("sender_fqdn %s: %d, want %d", name, got, want)
		}
	}
}

// The recipient list, inline and from a file that is re-read when it
// changes; case does not matter; domains without a list accept everyone.
func TestRecipientList(t *testing.T) {
	file := filepath.Join(t.TempDir(), "users.txt")
	os.WriteFile(file, []byte("# users\ncarol\ndave@ours.test  # whole address\n"), 0o600)
	set, err := inbound.NewRecipientSet([]string{"bob", "Alice@ours.test"}, file, nil)
	if err != nil {
		t.Fatal(err)
	}
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test", "open.test"},
		Recipients: map[string]*inbound.RecipientSet{"ours.test": set}})
	// refusals counts the refusals by the check they name, which smtpd
	// logs and counts them under.
	refusals := map[string]int{}
	rcpt := func(to string) int {
		_, err := r.Rcpt(&smtpd.State{}, to, nil)
		if err != nil {
			refusals[smtpd.CheckOf(err)]++
		}
		c, _ := code(err)
		return c
	}
	for to, want := range map[string]int{
		"bob@ours.test": 250, "BOB@ours.test": 250, "alice@OURS.test": 250, "carol@ours.test": 250, "dave@ours.test": 250,
		"mallory@ours.test": 550, "anyone@open.test": 250, "bob@other.test": 554,
	} {
		if got := rcpt(to); got != want {
			t.Errorf("RCPT TO:<%s>: %d, want %d", to, got, want)
		}
	}
	// The file changes: mallory exists now (re-read within ~2 s).
	time.Sleep(10 * time.Millisecond)
	os.WriteFile(file, []byte("mallory\n"), 0o600)
	future := time.Now().Add(time.Second)
	os.Chtimes(file, future, future)
	deadline := time.Now().Add(5 * time.Second)
	for rcpt("mallory@ours.test") != 250 {
		if time.Now().After(deadline) {
			t.Fatal("the recipients file was not re-read")
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := rcpt("carol@ours.test"); got != 550 {
		t.Errorf("carol, removed from the file: %d", got)
	}
	if n := refusals["unknown_recipient"]; n < 1 {
		t.Errorf("unknown_recipient refusals: %d (%v)", n, refusals)
	}
	// tempfail lets an admin try the list out without losing mail.
	rt := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"},
		Recipients: map[string]*inbound.RecipientSet{"ours.test": set}, Checks: inbound.Checks{UnknownRecipient: inbound.ActionTempfail}})
	if _, err := rt.Rcpt(&smtpd.State{}, "nobody@ours.test", nil); func() bool { c, _ := code(err); return c != 450 }() {
		t.Errorf("tempfail: %v", err)
	}
	if _, err := inbound.NewRecipientSet(nil, filepath.Join(t.TempDir(), "missing.txt"), nil); err == nil {
		t.Error("a missing recipients file was accepted")
	}
}

// A partner whose mail must arrive over TLS: refused at MAIL FROM in a
// plaintext session (450 4.7.0 or 530 5.7.0 as configured, naming the
// policy), accepted over TLS; subdomain rules and other domains.
func TestPlaintextPartner(t *testing.T) {
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, TLSFrom: []inbound.TLSFrom{
		{Match: "bank.example", Action: inbound.ActionTempfail, Rule: "outbound.tls.policies[0]"},
		{Match: ".insurer.example", Action: inbound.ActionReject, Rule: "outbound.tls.policies[1]"},
	}})
	plain, withTLS := &smtpd.State{}, &smtpd.State{TLS: &tls.ConnectionState{Version: tls.VersionTLS13}}
	for _, c := range []struct {
		st   *smtpd.State
		from string
		code int
		enh  smtp.EnhancedCode
	}{
		{plain, "a@bank.example", 450, smtp.EnhancedCode{4, 7, 0}},
		{withTLS, "a@bank.example", 250, smtp.EnhancedCode{2, 0, 0}},
		{plain, "a@mail.insurer.example", 530, smtp.EnhancedCode{5, 7, 0}},
		{plain, "a@insurer.example", 250, smtp.EnhancedCode{2, 0, 0}}, // ".x" is subdomains only
		{plain, "a@sub.bank.example", 250, smtp.EnhancedCode{2, 0, 0}},
		{plain, "a@other.example", 250, smtp.EnhancedCode{2, 0, 0}},
	} {
		_, err := r.Mail(c.st, c.from, nil)
		if got, enh := code(err); got != c.code || enh != c.enh {
			t.Errorf("MAIL FROM:<%s> (tls %v): %d %v (%v), want %d %v", c.from, c.st.TLS != nil, got, enh, err, c.code, c.enh)
		}
		if err != nil && !strings.Contains(err.Error(), "must arrive over TLS") {
			t.Errorf("reply %q does not say why", err)
		}
	}
	// The partner's servers, by EHLO name, whatever the sender: the null
	// sender of its DSNs and MDNs names nobody.
	for _, c := range []struct {
		helo, from string
		tls        bool
		code       int
	}{
		{"mx1.bank.example", "", false, 450},
		{"BANK.example.", "", false, 450},
		{"mx1.bank.example", "bounce@esp.example", false, 450},
		{"mx1.bank.example", "", true, 250},
		{"a.mail.insurer.example", "", false, 530},
		{"insurer.example", "", false, 250},
		{"notbank.example", "", false, 250},
		{"[192.0.2.1]", "", false, 250},
		{"", "", false, 250},
	} {
		st := &smtpd.State{Helo: c.helo}
		if c.tls {
			st.TLS = withTLS.TLS
		}
		_, err := r.Mail(st, c.from, nil)
		if got, _ := code(err); got != c.code {
			t.Errorf("EHLO %s, MAIL FROM:<%s> (tls %v): %d (%v), want %d", c.helo, c.from, c.tls, got, err, c.code)
		}
		if err != nil && !strings.Contains(err.Error(), "(EHLO "+strings.ToLower(strings.TrimSuffix(c.helo, "."))+") must arrive over TLS") {
			t.Errorf("reply %q does not say why", err)
		}
	}
	r.SetTLSFrom(nil)
	if _, err := r.Mail(plain, "a@bank.example", nil); err != nil {
		t.Errorf("after the rule was removed: %v", err)
	}
	if _, err := r.Mail(&smtpd.State{Helo: "mx1.bank.example"}, "", nil); err != nil {
		t.Errorf("after the rule was removed, EHLO: %v", err)
	}
}

// MaxMailPerSession: the MAIL over the limit in one session gets 421
// 4.7.0 (smtpd then closes), refused or not; a new session starts over.
func TestMaxMailPerSession(t *testing.T) {
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, MaxMailPerSession: 3})
	st := &smtpd.State{}
	refusals := map[string]int{}
	for i, from := range []string{"a@example.org", "bad@", "", "a@example.org"} {
		_, err := r.Mail(st, from, nil)
		if err != nil {
			refusals[smtpd.CheckOf(err)]++
		}
		if got, enh := code(err); i < 3 && got == 421 || i == 3 && (got != 421 || enh != smtp.EnhancedCode{4, 7, 0}) {
			t.Errorf("MAIL %d: %d %v (%v)", i+1, got, enh, err)
		}
	}
	if _, err := r.Mail(&smtpd.State{}, "a@example.org", nil); err != nil {
		t.Errorf("a new session: %v", err)
	}
	if n := refusals["max_mail_per_session"]; n != 1 {
		t.Errorf("refused %d times as max_mail_per_session, want 1 (%v)", n, refusals)
	}
}

// A sender without any domain, or with control characters, is refused
// whatever sender_fqdn says: downstream MTAs would qualify "ceo" with
// their own domain.
func TestBareSenderAlwaysRefused(t *testing.T) {
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Checks: inbound.Checks{SenderFQDN: inbound.ActionOff}})
	for _, from := range []string{"ceo", "post\x00master", "a@local\rhost"} {
		_, err := r.Mail(&smtpd.State{}, from, nil)
		if got, enh := code(err); got != 553 || enh != (smtp.EnhancedCode{5, 1, 7}) {
			t.Errorf("sender_fqdn off, MAIL FROM:<%q>: %d %v, want 553 5.1.7", from, got, enh)
		}
	}
	if _, err := r.Mail(&smtpd.State{}, "a@localhost", nil); err != nil {
		t.Errorf("sender_fqdn off must still let user@host through: %v", err)
	}
}
