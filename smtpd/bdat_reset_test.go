package smtpd_test

import (
	"testing"

	"github.com/emersion/go-smtp"

	"securerelay/smtpd"
)

// RSET in the middle of a BDAT transfer aborts the message: it is not a
// refusal, so it must not count towards max_errors (found in review: it
// was counted, from the Data goroutine, racing the command loop).
//
// Only one abort per session here: a second BDAT after an aborted one hits
// a data race inside go-smtp v0.25.1 itself (the aborted Data goroutine
// sends its result on the next transaction's channel), which -race would
// report against this test.
func TestBDATResetIsNotAnError(t *testing.T) {
	role := &fakeRole{rcpt: func(_ *smtpd.State, to string) (string, error) {
		if to == "nobody@ours.test" {
			return "", &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return to, nil
	}}
	h := start(t, role, func(o *smtpd.Options) { o.MaxErrors = 2 })
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<s@example.org>", 250, "")
	c.expect("RCPT TO:<u@ours.test>", 250, "")
	c.raw("BDAT 5\r\nabcde")
	if code, msg := c.reply(); code != 250 {
		t.Fatalf("BDAT chunk: %d %s", code, msg)
	}
	c.expect("RSET", 250, "")
	// One real refusal now is the first error, not the second: no 421.
	c.expect("MAIL FROM:<s@example.org>", 250, "")
	if code, msg := c.cmd("RCPT TO:<nobody@ours.test>"); code != 550 {
		t.Fatalf("refused RCPT after an aborted BDAT: %d %s (want the refusal itself, not 421)", code, msg)
	}
	c.expect("NOOP", 250, "")
	h.expectNothingSpooled()
}
