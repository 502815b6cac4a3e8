package outbound_test

import (
	"errors"
	"io"
	"net/netip"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/smtpd"
)

// parse reads a setting as the configuration spells it.
func parse[T any](t *testing.T, f func(string) (T, error), s string) T {
	t.Helper()
	v, err := f(s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

// code is the reply of a refusal: a bare *smtp.SMTPError, or the one
// inside the *smtpd.Refusal that names the check (smtpd sends the reply,
// logs and counts the check).
func code(err error) (int, smtp.EnhancedCode, bool) {
	var se *smtp.SMTPError
	if !errors.As(err, &se) {
		return 0, smtp.EnhancedCode{}, false
	}
	return se.Code, se.EnhancedCode, true
}

func TestSubmissionAuthenticate(t *testing.T) {
	users := outbound.NewUsers(map[string]string{"otrs": hash(t, "s3cret")})
	s := outbound.NewSubmission(outbound.SubmissionOptions{Auth: outbound.AuthRequired}, users)
	st := &smtpd.State{}
	if s.Origin() != queue.OriginOutbound || !s.AuthEnabled() {
		t.Fatalf("Origin %q AuthEnabled %v", s.Origin(), s.AuthEnabled())
	}
	if err := s.Authenticate(st, "otrs", "s3cret"); err != nil {
		t.Errorf("right password: %v", err)
	}
	// Unknown users cost a bcrypt compare at DefaultCost (timing
	// equalisation), so only one of them here.
	for _, c := range [][2]string{{"otrs", "wrong"}, {"otrs", ""}, {"nobody", "s3cret"}} {
		err := s.Authenticate(st, c[0], c[1])
		if n, enh, ok := code(err); !ok || n != 535 || enh != (smtp.EnhancedCode{5, 7, 8}) {
			t.Errorf("Authenticate(%q, %q) = %v, want a bare 535 5.7.8", c[0], c[1], err)
		}
	}
	// Reload: the old password stops working, the new one works.
	users.Set(map[string]string{"otrs": hash(t, "new")})
	if s.Authenticate(st, "otrs", "s3cret") == nil || s.Authenticate(st, "otrs", "new") != nil {
		t.Error("Users.Set did not replace the accounts")
	}
	if err := outbound.NewSubmission(outbound.SubmissionOptions{}, nil).Authenticate(st, "otrs", "new"); err == nil {
		t.Error("authenticated without any user table")
	}
	if outbound.NewSubmission(outbound.SubmissionOptions{Auth: outbound.AuthOff}, users).AuthEnabled() {
		t.Error("AUTH enabled with auth: off")
	}
	if !outbound.NewSubmission(outbound.SubmissionOptions{}, users).AuthEnabled() {
		t.Error("AUTH disabled by default")
	}
}

func TestSubmissionMailPolicy(t *testing.T) {
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("2001:db8::/32")}
	in := netip.MustParseAddr("10.0.0.7")
	in6 := netip.MustParseAddr("2001:db8::7")
	out := netip.MustParseAddr("192.0.2.1")
	type want struct {
		code int
		enh  smtp.EnhancedCode
	}
	ok := want{}
	authReq := want{530, smtp.EnhancedCode{5, 7, 0}}
	denied := want{554, smtp.EnhancedCode{5, 7, 1}}
	for _, c := range []struct {
		auth string
		ip   netip.Addr
		user string
		want want
	}{
		{"optional", in, "", ok},
		{"optional", in6, "", ok},
		{"optional", out, "", authReq},
		{"optional", out, "otrs", ok},
		{"", out, "", authReq},
		{"required", in, "", authReq},
		{"required", out, "otrs", ok},
		{"off", in, "", ok},
		{"off", out, "", denied},
	} {
		s := outbound.NewSubmission(outbound.SubmissionOptions{Trusted: trusted, Auth: parse(t, outbound.ParseAuthMode, c.auth), Ours: outbound.NewDomainSet([]string{"ours.test"})},
			outbound.NewUsers(map[string]string{"otrs": "x"}))
		st := &smtpd.State{RemoteIP: c.ip, AuthUser: c.user}
		got, err := s.Mail(st, "App@Ours.Test", &smtp.MailOptions{})
		if c.want == ok {
			if err != nil || got != "App@ours.test" {
				t.Errorf("auth=%q ip=%s user=%q: %q, %v; want accepted", c.auth, c.ip, c.user, got, err)
			}
			continue
		}
		if n, enh, isBare := code(err); !isBare || n != c.want.code || enh != c.want.enh {
			t.Errorf("auth=%q ip=%s user=%q: %v, want %d %v", c.auth, c.ip, c.user, err, c.want.code, c.want.enh)
		}
	}
}

func TestSubmissionAddresses(t *testing.T) {
	s := outbound.NewSubmission(outbound.SubmissionOptions{Trusted: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}}, nil)
	st := &smtpd.State{RemoteIP: netip.MustParseAddr("127.0.0.1")}
	if got, err := s.Mail(st, "", &smtp.MailOptions{}); err != nil || got != "" {
		t.Errorf("null sender: %q, %v", got, err)
	}
	if _, err := s.Mail(st, "app@localhost", &smtp.MailOptions{}); err == nil {
		t.Error("unqualified sender accepted")
	} else if n, enh, ok := code(err); !ok || n/100 != 5 || enh != (smtp.EnhancedCode{5, 1, 7}) {
		t.Errorf("unqualified sender: %v", err)
	}
	// Any domain, canonicalised.
	for in, want := range map[string]string{
		"someone@remote.test":  "someone@remote.test",
		"Someone@REMOTE.test.": "Someone@remote.test",
		"a b@remote.test":      `"a b"@remote.test`,
	} {
		if got, err := s.Rcpt(st, in, &smtp.RcptOptions{}); err != nil || got != want {
			t.Errorf("Rcpt(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, in := range []string{"nobody", "x@localhost", "x@[300.0.0.1]"} {
		_, err := s.Rcpt(st, in, &smtp.RcptOptions{})
		if n, _, ok := code(err); !ok || n/100 != 5 {
			t.Errorf("Rcpt(%q) = %v, want a bare 5xx", in, err)
		}
	}
}

// The From: check of authenticated mail: our domains pass, others and a
// missing From are refused with 553 5.7.1 under "reject", pass under
// "unsigned"; trusted-network clients (no AUTH user) are not checked.
func TestSubmissionForeignFrom(t *testing.T) {
	ours := outbound.NewDomainSet([]string{"example.test"})
	msg := func(header string) *smtpd.Message {
		data := header + "\r\nbody\r\n"
		return &smtpd.Message{Size: int64(len(data)), Open: func() (io.Reader, error) { return strings.NewReader(data), nil }}
	}
	for _, c := range []struct {
		policy, user, header string
		refused              bool
	}{
		{"reject", "otrs", "From: a@example.test\r\n", false},
		{"reject", "otrs", "From: \"X\" <a@EXAMPLE.TEST>\r\n", false},
		{"reject", "otrs", "From: a@elsewhere.test\r\n", true},
		{"reject", "otrs", "Subject: no from\r\n", true},
		{"unsigned", "otrs", "From: a@elsewhere.test\r\n", false},
		{"reject", "", "From: a@elsewhere.test\r\n", false},
	} {
		s := outbound.NewSubmission(outbound.SubmissionOptions{ForeignFrom: parse(t, outbound.ParseForeignFrom, c.policy), Ours: ours}, outbound.NewUsers(map[string]string{"otrs": "x"}))
		err := s.Data(&smtpd.State{AuthUser: c.user}, msg(c.header))
		n, enh, isSMTP := code(err)
		switch {
		case c.refused && (!isSMTP || n != 553 || enh != (smtp.EnhancedCode{5, 7, 1}) || smtpd.CheckOf(err) == ""):
			t.Errorf("%s/%q/%q: %v, want a bare 553 5.7.1", c.policy, c.user, c.header, err)
		case !c.refused && err != nil:
			t.Errorf("%s/%q/%q: refused: %v", c.policy, c.user, c.header, err)
		}
	}
}

// Mail from <> on an outbound listener: a DSN or MDN passes untouched;
// anything else is refused (550 5.7.1) or, under "rewrite", gets the
// configured sender and a header saying so.
func TestSubmissionNullSender(t *testing.T) {
	msg := func(header string) *smtpd.Message {
		data := header + "\r\nbody\r\n"
		return &smtpd.Message{Size: int64(len(data)), Open: func() (io.Reader, error) { return strings.NewReader(data), nil }}
	}
	msgWith := func(data string) *smtpd.Message {
		return &smtpd.Message{Size: int64(len(data)), Open: func() (io.Reader, error) { return strings.NewReader(data), nil }}
	}
	reports := []string{
		"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n\r\n" +
			"--x\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; a.example.test\r\n\r\n" +
			"Final-Recipient: rfc822; b@example.test\r\nAction: failed\r\nStatus: 5.1.1\r\n--x--\r\n",
		"Content-Type: Multipart/Report;\r\n\treport-type=\"disposition-notification\"; boundary=x\r\n\r\n" +
			"--x\r\nContent-Type: message/disposition-notification\r\n\r\nFinal-Recipient: rfc822; b@example.test\r\n" +
			"Disposition: manual-action/MDN-sent-manually; displayed\r\n--x--\r\n",
	}
	others := []string{
		"Subject: Ticket updated\r\n",
		"Content-Type: multipart/report; report-type=other; boundary=x\r\n",
		"Content-Type: multipart/mixed; boundary=x\r\n",
		"Content-Type: text/plain\r\n X-Fake: multipart/report; report-type=delivery-status\r\n",
		// Issue 11, finding 7: the header alone is not a report.
		"Content-Type: multipart/report; report-type=delivery-status; boundary=x\r\n",
		"Content-Type: Multipart/Report;\r\n\treport-type=\"disposition-notification\"; boundary=x\r\n",
	}
	reject := outbound.NewSubmission(outbound.SubmissionOptions{NullSender: outbound.NullSenderReject}, nil)
	rewrite := outbound.NewSubmission(outbound.SubmissionOptions{NullSender: outbound.NullSenderRewrite, NullSenderAddress: "noreply@example.test"}, nil)
	for _, h := range reports {
		for _, s := range []*outbound.Submission{reject, rewrite} {
			m := msgWith(h)
			if err := s.Data(&smtpd.State{}, m); err != nil || m.NewFrom != "" {
				t.Errorf("report %q: %v, new from %q; want it to pass untouched", h, err, m.NewFrom)
			}
		}
	}
	for _, h := range others {
		err := reject.Data(&smtpd.State{}, msg(h))
		if n, enh, ok := code(err); !ok || n != 550 || enh != (smtp.EnhancedCode{5, 7, 1}) || smtpd.CheckOf(err) != "null_sender" {
			t.Errorf("%q under reject: %v, want a bare 550 5.7.1", h, err)
		}
		m := msg(h)
		if err := rewrite.Data(&smtpd.State{}, m); err != nil || m.NewFrom != "noreply@example.test" || !strings.HasPrefix(m.AddHeader, "X-Securerelay-Null-Sender: ") {
			t.Errorf("%q under rewrite: %v, from %q, header %q", h, err, m.NewFrom, m.AddHeader)
		}
	}
	// Not from <>: no policy at all.
	if err := reject.Data(&smtpd.State{From: "a@example.test"}, msg(others[0])); err != nil {
		t.Errorf("a real sender was refused: %v", err)
	}
}

// Sender binding (issue 11, finding 8): each authenticated user may use,
// as envelope sender and in From:/Sender:/Resent-From:/Resent-Sender:,
// its senders list, else our domains, else (login) its own address.
// Trusted clients without AUTH are not bound; <> is always allowed.
func TestSubmissionSenderBinding(t *testing.T) {
	ours := outbound.NewDomainSet([]string{"example.test", "example.net"})
	users := outbound.NewAccounts([]outbound.Account{
		{Name: "otrs", PasswordHash: "x", Senders: []string{"otrs@example.test", "@Support.Example.ORG", "@xn--bcher-kva.example"}},
		{Name: "kopano", PasswordHash: "x"},
		{Name: "Bob@Example.TEST", PasswordHash: "x", LoginOnly: true},
		{Name: "noaddress", PasswordHash: "x", LoginOnly: true},
	})
	trusted := []netip.Prefix{netip.MustParsePrefix("10.0.0.0/8")}
	in, out := netip.MustParseAddr("10.0.0.7"), netip.MustParseAddr("192.0.2.1")
	sub := func(foreign string) *outbound.Submission {
		return outbound.NewSubmission(outbound.SubmissionOptions{Trusted: trusted, Auth: outbound.AuthOptional, Ours: ours,
			ForeignFrom: parse(t, outbound.ParseForeignFrom, foreign), NullSender: outbound.NullSenderReject}, users)
	}
	for _, c := range []struct {
		user, from string
		ip         netip.Addr
		ok         bool
	}{
		{"otrs", "otrs@example.test", out, true},
		{"otrs", "OTRS@EXAMPLE.TEST", out, true},
		{"otrs", "agent@support.example.org", out, true},
		{"otrs", "agent@bücher.example", out, false}, // not ASCII in an envelope: a syntax error
		{"otrs", "agent@xn--bcher-kva.example", out, true},
		{"otrs", "other@example.test", out, false}, // listed: the list is all
		{"otrs", "agent@sub.support.example.org", out, false},
		{"otrs", "", out, true}, // <>
		{"kopano", "anyone@example.net", out, true},
		{"kopano", "anyone@example.net.", out, true},
		{"kopano", "someone@outsider.test", out, false},
		{"kopano", "someone@outsider.test", in, false},       // logged in: bound, trusted or not
		{"", "someone@outsider.test", in, true},              // trusted, no AUTH: no user to bind
		{"bob@example.test", "bob@example.test", out, false}, // the name is matched exactly, as logged in
		{"Bob@Example.TEST", "bob@example.test", out, true},
		{"Bob@Example.TEST", "alice@example.test", out, false},
		{"noaddress", "noaddress@example.test", out, false},
		{"gone", "gone@example.test", out, false}, // removed by a reload
	} {
		got, err := sub("reject").Mail(&smtpd.State{RemoteIP: c.ip, AuthUser: c.user}, c.from, &smtp.MailOptions{})
		n, enh, _ := code(err)
		switch {
		case c.ok && err != nil:
			t.Errorf("%s MAIL FROM:<%s>: %v, want accepted", c.user, c.from, err)
		case !c.ok && c.from == "agent@bücher.example" && n == 553:
		case !c.ok && (n != 553 || enh != (smtp.EnhancedCode{5, 7, 1}) || !strings.Contains(err.Error(), "<"+c.from+">") ||
			!strings.Contains(err.Error(), c.user)):
			t.Errorf("%s MAIL FROM:<%s>: %q, %v; want 553 5.7.1 naming the address and the user", c.user, c.from, got, err)
		}
	}

	msg := func(header string) *smtpd.Message {
		data := header + "\r\nbody\r\n"
		return &smtpd.Message{Size: int64(len(data)), Open: func() (io.Reader, error) { return strings.NewReader(data), nil }}
	}
	for _, c := range []struct {
		user, foreign, header string
		bad                   string // the address the refusal must name; "" accepted
	}{
		{"otrs", "reject", "From: OTRS <otrs@example.test>\r\n", ""},
		{"otrs", "reject", "From: ceo@example.test\r\n", "ceo@example.test"},
		{"otrs", "reject", "From: otrs@example.test\r\nSender: ceo@example.test\r\n", "ceo@example.test"},
		{"otrs", "reject", "From: otrs@example.test\r\nResent-From: ceo@example.test\r\n", "ceo@example.test"},
		{"otrs", "reject", "From: otrs@example.test\r\nResent-Sender: ceo@example.test\r\n", "ceo@example.test"},
		{"otrs", "reject", "From: otrs@example.test\r\nRESENT-FROM :\r\n ceo@example.test\r\n", "ceo@example.test"},
		{"otrs", "reject", "From: otrs@example.test, ceo@example.test\r\nSender: otrs@example.test\r\n", "ceo@example.test"},
		{"otrs", "reject", "From: otrs@example.test\r\nFrom: ceo@example.test\r\n", "ceo@example.test"},
		{"otrs", "reject", "From: Team: otrs@example.test, ceo@example.test;\r\n", "ceo@example.test"},
		{"otrs", "reject", "From: \"ceo@example.test\" <otrs@example.test>\r\n", ""},
		{"otrs", "reject", "From: =?utf-8?q?M=C3=BCller?= <otrs@example.test>\r\n", ""},
		{"otrs", "reject", "From: a@bücher.example\r\n", "cannot be signed"}, // listed, but not ours: foreign_from refuses
		{"otrs", "unsigned", "From: a@bücher.example\r\n", ""},
		{"otrs", "unsigned", "From: agent@support.example.org\r\n", ""},
		{"otrs", "unsigned", "From: someone@outsider.test\r\n", "someone@outsider.test"}, // listed: foreign_from does not widen a list
		{"otrs", "reject", "From: Müller, Hans <otrs@example.test>\r\n", "From:"},        // does not parse: cannot be checked
		{"otrs", "reject", "From: otrs@example.test\r\nSender: \r\n", ""},                // names nobody
		{"kopano", "reject", "From: Jane <jane@example.net>\r\nSender: kopano@example.test\r\n", ""},
		{"kopano", "reject", "From: jane@example.net\r\nSender: someone@outsider.test\r\n", "someone@outsider.test"},
		{"kopano", "unsigned", "From: someone@outsider.test\r\nSender: kopano@example.test\r\n", ""}, // default binding, foreign_from: unsigned
		{"kopano", "unsigned", "From: someone@outsider.test\r\nSender: x@example.org\r\n", ""},
		{"Bob@Example.TEST", "reject", "From: Bob <bob@example.test>\r\n", ""},
		{"Bob@Example.TEST", "reject", "From: alice@example.test\r\n", "alice@example.test"},
		{"Bob@Example.TEST", "unsigned", "From: someone@outsider.test\r\n", ""},
		{"", "reject", "From: ceo@example.test\r\nSender: someone@outsider.test\r\n", ""}, // trusted, no AUTH
	} {
		st := &smtpd.State{RemoteIP: in, AuthUser: c.user, From: "x@example.test"}
		err := sub(c.foreign).Data(st, msg(c.header))
		n, enh, _ := code(err)
		switch {
		case c.bad == "" && err != nil:
			t.Errorf("%s/%s %q: %v, want accepted", c.user, c.foreign, c.header, err)
		case c.bad != "" && (n != 553 || enh != (smtp.EnhancedCode{5, 7, 1}) || !strings.Contains(err.Error(), c.bad)):
			t.Errorf("%s/%s %q: %v, want 553 5.7.1 naming %s", c.user, c.foreign, c.header, err, c.bad)
		}
	}
	// Each refusal names its check, which smtpd logs and counts.
	s := sub("reject")
	got := map[string]int{}
	_, err := s.Mail(&smtpd.State{RemoteIP: out, AuthUser: "kopano"}, "x@outsider.test", &smtp.MailOptions{})
	got[smtpd.CheckOf(err)]++
	got[smtpd.CheckOf(s.Data(&smtpd.State{RemoteIP: out, AuthUser: "kopano", From: "kopano@example.test"}, msg("From: x@outsider.test\r\n")))]++
	got[smtpd.CheckOf(s.Data(&smtpd.State{RemoteIP: out}, msg("Subject: from <>\r\n")))]++
	if got["sender_binding"] != 2 || got["null_sender"] != 1 {
		t.Errorf("refusals %v, want sender_binding 2, null_sender 1", got)
	}

	// A reload replaces the lists at once.
	users.SetAccounts([]outbound.Account{{Name: "otrs", PasswordHash: "x", Senders: []string{"other@example.test"}}})
	if _, err := s.Mail(&smtpd.State{RemoteIP: out, AuthUser: "otrs"}, "other@example.test", &smtp.MailOptions{}); err != nil {
		t.Errorf("after reload: %v", err)
	}
	if _, err := s.Mail(&smtpd.State{RemoteIP: out, AuthUser: "otrs"}, "otrs@example.test", &smtp.MailOptions{}); err == nil {
		t.Error("after reload: the old list still applies")
	}
}
