package smtp_test

import (
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// securerelay patch 8: with Server.Replies set, every reply go-smtp makes
// itself is the server's, and says which situation it answers (kind and
// argument). Each line below is one command and the reply it must get.
func TestServer_Replies(t *testing.T) {
	word := func(_ *smtp.Conn, r smtp.Reply, arg string) *smtp.SMTPError {
		e := smtp.EnhancedCode{2, 0, int(r)}
		if r == smtp.ReplyGreeting || r == smtp.ReplyEhlo {
			e = smtp.NoEnhancedCode
		}
		return &smtp.SMTPError{Code: 299, EnhancedCode: e, Message: fmt.Sprintf("kind=%d arg=%s", r, arg)}
	}
	_, s, c, scanner := testServer(t, func(s *smtp.Server) {
		s.Replies = word
		s.MaxMessageBytes = 1000
		s.MaxRecipients = 1
		s.MaxLineLength = 100
	})
	defer s.Close()
	defer c.Close()
	want := func(r smtp.Reply, arg string) string {
		return "299 " + fmt.Sprintf("2.0.%d kind=%d arg=%s", r, r, arg)
	}
	read := func() string {
		t.Helper()
		if !scanner.Scan() {
			t.Fatalf("connection closed: %v", scanner.Err())
		}
		return scanner.Text()
	}
	if got := read(); got != fmt.Sprintf("299 kind=%d arg=ESMTP", smtp.ReplyGreeting) {
		t.Fatalf("greeting %q", got)
	}
	steps := []struct {
		cmd  string
		r    smtp.Reply
		arg  string
		opts bool // the argument is a parser's error text: any
	}{
		{"MAIL FROM:<a@example.org>", smtp.ReplyNeedHello, "MAIL", false},
		{"AUTH PLAIN", smtp.ReplyNeedHello, "AUTH", false},
		{"EHLO", smtp.ReplySyntax, "EHLO", false},
		{"HELO", smtp.ReplySyntax, "HELO", false},
		{"HELO client.example.org", smtp.ReplyHelo, "client.example.org", false},
		{"LHLO client.example.org", smtp.ReplyWrongHello, "LHLO", false},
		{"RCPT TO:<b@example.org>", smtp.ReplyNeedMail, "RCPT", false},
		{"DATA", smtp.ReplyNeedMail, "DATA", false},
		{"BDAT 5\r\nabc", smtp.ReplyNeedMail, "BDAT", false}, // the chunk is "abc\r\n"
		{"FOO", smtp.ReplyUnknownCommand, "FOO", false},
		{"FOOBAR", smtp.ReplyUnknownCommand, "FOOBAR", false},
		{"XYZW", smtp.ReplyUnknownCommand, "XYZW", false},
		{"", smtp.ReplyUnknownCommand, "", false},
		{"EXPN list", smtp.ReplyNotImplemented, "EXPN", false},
		{"HELP me", smtp.ReplyHelp, "me", false},
		{"VRFY someone", smtp.ReplyVrfy, "someone", false},
		{"NOOP", smtp.ReplyNoop, "", false},
		{"RSET", smtp.ReplyRset, "", false},
		{"STARTTLS", smtp.ReplyTLSNotOffered, "", false},
		{"NOOP " + strings.Repeat("x", 300), smtp.ReplyLineTooLong, "", false},
		{"MAIL TO:<a@example.org>", smtp.ReplySyntax, "MAIL", false},
		{"MAIL FROM:<a b>", smtp.ReplyBadSender, "", true},
		{"MAIL FROM:<a@example.org> SIZE=99999999999999999999999", smtp.ReplyTooBig, "", false},
		{"MAIL FROM:<a@example.org> SIZE=1001", smtp.ReplyTooBig, "", false},
		{"MAIL FROM:<a@example.org> SIZE=12x", smtp.ReplyParamSyntax, "SIZE", false},
		{"MAIL FROM:<a@example.org> XFOO=1", smtp.ReplyParamUnsupported, "XFOO", false},
		{"MAIL FROM:<a@example.org> SMTPUTF8", smtp.ReplyParamUnsupported, "SMTPUTF8", false},
		{"MAIL FROM:<a@example.org> RET=HDRS", smtp.ReplyParamUnsupported, "RET", false},
		{"MAIL FROM:<a@example.org> BODY=BINARYMIME", smtp.ReplyParamUnsupported, "BODY=BINARYMIME", false},
		{"MAIL FROM:<a@example.org> BODY=9BIT", smtp.ReplyParamSyntax, "BODY", false},
		{"MAIL FROM:<a@example.org> SIZE=1000", smtp.ReplyMailOK, "a@example.org", false},
		{"MAIL FROM:<a@example.org>", smtp.ReplyNestedMail, "", false},
		{"DATA", smtp.ReplyNeedRcpt, "DATA", false},
		{"RCPT FROM:<b@example.org>", smtp.ReplySyntax, "RCPT", false},
		{"RCPT TO:<b c>", smtp.ReplyBadRecipient, "", true},
		{"RCPT TO:<b@example.org> NOTIFY=NEVER", smtp.ReplyParamUnsupported, "NOTIFY", false},
		{"RCPT TO:<b@example.org> XFOO", smtp.ReplyParamUnsupported, "XFOO", false},
		{"RCPT TO:<b@example.org>", smtp.ReplyRcptOK, "b@example.org", false},
		{"RCPT TO:<c@example.org>", smtp.ReplyTooManyRcpts, "", false},
		{"DATA now", smtp.ReplySyntax, "DATA", false},
		{"BDAT", smtp.ReplySyntax, "BDAT", false},
		{"BDAT 1 NOW", smtp.ReplySyntax, "BDAT", false},
		{"DATA", smtp.ReplyDataStart, "", false},
	}
	for _, st := range steps {
		io.WriteString(c, st.cmd+"\r\n")
		got := read()
		w := want(st.r, st.arg)
		if st.opts && strings.HasPrefix(got, w) && len(got) > len(w) || got == w {
			continue
		}
		t.Fatalf("%q: got %q, want %q", st.cmd, got, w)
	}
	io.WriteString(c, "Subject: x\r\n\r\nbody\r\n.\r\n")
	if got := read(); got != want(smtp.ReplyDataOK, "") {
		t.Fatalf("after DATA: %q", got)
	}
	io.WriteString(c, "MAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.org>\r\nBDAT 4\r\nabcdBDAT 1000\r\n"+strings.Repeat("x", 1000))
	for _, w := range []string{want(smtp.ReplyMailOK, "a@example.org"), want(smtp.ReplyRcptOK, "b@example.org"),
		want(smtp.ReplyChunkOK, "4"), want(smtp.ReplyTooBig, "")} {
		if got := read(); got != w {
			t.Fatalf("BDAT: got %q, want %q", got, w)
		}
	}
	for _, st := range []struct {
		cmd string
		r   smtp.Reply
	}{
		{"AUTH", smtp.ReplySyntax},
		{"AUTH PLAIN !!!", smtp.ReplyAuthBadBase64},
		{"AUTH PLAIN AGZvbw==", smtp.ReplyAuthBadResponse},
		{"AUTH PLAIN AHVzZXJuYW1lAHBhc3N3b3Jk", smtp.ReplyAuthOK},
		{"AUTH PLAIN AHVzZXJuYW1lAHBhc3N3b3Jk", smtp.ReplyAuthTwice},
	} {
		io.WriteString(c, st.cmd+"\r\n")
		if got := read(); !strings.HasPrefix(got, fmt.Sprintf("299 2.0.%d kind=%d ", st.r, st.r)) {
			t.Fatalf("%q: got %q, want kind %d", st.cmd, got, st.r)
		}
	}
	io.WriteString(c, "QUIT\r\n")
	if got := read(); got != want(smtp.ReplyQuit, "") {
		t.Fatalf("QUIT: %q", got)
	}
}

// With Server.Replies the server counts errors itself: go-smtp does not
// end the session after its own few protocol errors.
func TestServer_RepliesNoErrorThreshold(t *testing.T) {
	_, s, c, scanner := testServerGreeted(t, func(s *smtp.Server) {
		s.Replies = func(*smtp.Conn, smtp.Reply, string) *smtp.SMTPError { return nil }
	})
	defer s.Close()
	defer c.Close()
	for i := 0; i < 10; i++ {
		io.WriteString(c, "XYZW\r\n")
		scanner.Scan()
		if !strings.HasPrefix(scanner.Text(), "500 5.5.2 ") {
			t.Fatalf("unknown command %d: %q", i, scanner.Text())
		}
	}
	io.WriteString(c, "NOOP\r\n")
	scanner.Scan()
	if !strings.HasPrefix(scanner.Text(), "250 ") {
		t.Fatalf("NOOP after ten errors: %q", scanner.Text())
	}
}

// Replies words the time-out, and a multi-line reply carries its enhanced
// code on every line (RFC 2034 section 3).
func TestServer_RepliesTimeoutAndMultiline(t *testing.T) {
	_, s, c, scanner := testServerGreeted(t, func(s *smtp.Server) {
		s.ReadTimeout = 300 * time.Millisecond
		s.Replies = func(_ *smtp.Conn, r smtp.Reply, _ string) *smtp.SMTPError {
			if r == smtp.ReplyTimeout {
				return &smtp.SMTPError{Code: 421, EnhancedCode: smtp.EnhancedCode{4, 4, 2}, Message: "our time-out"}
			}
			return nil
		}
		s.CommandHook = func(_ *smtp.Conn, cmd string) error {
			if cmd == "VRFY" {
				return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "first\nlast"}
			}
			return nil
		}
	})
	defer s.Close()
	defer c.Close()
	io.WriteString(c, "VRFY x\r\n")
	for _, w := range []string{"550-5.7.1 first", "550 5.7.1 last"} {
		scanner.Scan()
		if scanner.Text() != w {
			t.Fatalf("got %q, want %q", scanner.Text(), w)
		}
	}
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	scanner.Scan()
	if scanner.Text() != "421 4.4.2 our time-out" {
		t.Fatalf("idle: %q", scanner.Text())
	}
}
