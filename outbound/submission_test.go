package outbound_test

import (
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

func hash(t *testing.T, pw string) string {
	t.Helper()
	h, err := bcrypt.GenerateFromPassword([]byte(pw), bcrypt.MinCost)
	if err != nil {
		t.Fatal(err)
	}
	return string(h)
}

func code(err error) (int, smtp.EnhancedCode, bool) {
	se, ok := err.(*smtp.SMTPError)
	if !ok {
		return 0, smtp.EnhancedCode{}, false
	}
	return se.Code, se.EnhancedCode, true
}

func TestSubmissionAuthenticate(t *testing.T) {
	users := outbound.NewUsers(map[string]string{"otrs": hash(t, "s3cret")})
	s := outbound.NewSubmission(outbound.SubmissionOptions{Auth: "required"}, users)
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
	if outbound.NewSubmission(outbound.SubmissionOptions{Auth: "off"}, users).AuthEnabled() {
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
		s := outbound.NewSubmission(outbound.SubmissionOptions{Trusted: trusted, Auth: c.auth}, nil)
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
		s := outbound.NewSubmission(outbound.SubmissionOptions{ForeignFrom: c.policy, Ours: ours}, nil)
		err := s.Data(&smtpd.State{AuthUser: c.user}, msg(c.header))
		se, isSMTP := err.(*smtp.SMTPError)
		switch {
		case c.refused && (!isSMTP || se.Code != 553 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1})):
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
	reject := outbound.NewSubmission(outbound.SubmissionOptions{NullSender: "reject"}, nil)
	rewrite := outbound.NewSubmission(outbound.SubmissionOptions{NullSender: "rewrite", NullSenderAddress: "noreply@example.test"}, nil)
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
		if se, ok := err.(*smtp.SMTPError); !ok || se.Code != 550 || se.EnhancedCode != (smtp.EnhancedCode{5, 7, 1}) {
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
