package smtpd_test

import (
	"strings"
	"testing"
	"time"

	"securerelay/smtpd"
)

// A message carrying this relay's own Received: for the same recipient is
// a loop (554 5.4.6); an automatic message to an automatic sender address
// is half of an auto-reply loop (550 5.7.1). Neither is spooled; the same
// messages without the marker, or from a person, are accepted.
func TestLoopChecks(t *testing.T) {
	h := start(t, &fakeRole{}, nil)
	send := func(from, to, header string) (int, string) {
		c := dial(t, h.addr)
		c.ehlo("client.example.org")
		c.expect("MAIL FROM:<"+from+">", 250, "")
		c.expect("RCPT TO:<"+to+">", 250, "")
		return c.data(header + "Subject: x\r\n\r\nbody\r\n.\r\n")
	}
	ours := "Received: from a ([192.0.2.1])\r\n\tby mx.ours.test (securerelay) with ESMTP id ABC\r\n\tfor <u@ours.test>; Mon, 2 Jan 2006 15:04:05 +0000\r\n"
	if code, msg := send("s@example.org", "u@ours.test", ours); code != 554 || !strings.HasPrefix(msg, "5.4.6 ") {
		t.Errorf("own marker, same recipient: %d %s", code, msg)
	}
	if code, msg := send("s@example.org", "noreply@ours.test", "Auto-Submitted: auto-replied\r\n"); code != 550 || !strings.HasPrefix(msg, "5.7.1 ") {
		t.Errorf("auto-reply to noreply: %d %s", code, msg)
	}
	if code, msg := send("", "MAILER-DAEMON@ours.test", ""); code != 550 {
		t.Errorf("<> to MAILER-DAEMON: %d %s", code, msg)
	}
	h.expectNothingSpooled()
	for _, c := range []struct{ from, to, header string }{
		{"s@example.org", "other@ours.test", ours},                        // marker for another recipient
		{"s@example.org", "noreply@ours.test", ""},                        // a person writing to noreply
		{"s@example.org", "u@ours.test", "Auto-Submitted: no\r\n"},        // explicitly not automatic
		{"s@example.org", "postmaster@ours.test", "Precedence: bulk\r\n"}, // postmaster is a person
	} {
		if code, msg := send(c.from, c.to, c.header); code != 250 {
			t.Errorf("%s → %s with %q: %d %s, want 250", c.from, c.to, c.header, code, msg)
		}
		h.next()
	}
}

type memCounter struct{ n map[string]int }

func (m *memCounter) Add(key string, _ time.Time, _ time.Duration) (int, error) {
	m.n[key]++
	return m.n[key], nil
}

// Two auto-responders answering each other through the relay: the first
// MaxAutoReplies automatic messages of a sender/recipient pair pass, the
// rest are refused; other pairs and messages from people are not counted.
func TestAutoReplyLimit(t *testing.T) {
	cnt := &memCounter{n: map[string]int{}}
	h := start(t, &fakeRole{}, func(o *smtpd.Options) {
		o.AutoReplies, o.MaxAutoReplies, o.AutoReplyWindow = cnt, 3, time.Hour
	})
	send := func(from, to, header string) int {
		c := dial(t, h.addr)
		c.ehlo("client.example.org")
		c.expect("MAIL FROM:<"+from+">", 250, "")
		c.expect("RCPT TO:<"+to+">", 250, "")
		code, _ := c.data(header + "Subject: Re: x\r\n\r\nbody\r\n.\r\n")
		return code
	}
	passed := 0
	for i := 0; i < 6; i++ {
		if send("helpdesk@ours.test", "support@partner.example", "Auto-Submitted: auto-replied\r\n") == 250 {
			passed++
			h.next()
		}
	}
	if passed != 3 {
		t.Errorf("%d of 6 auto-replies passed, want 3", passed)
	}
	if send("helpdesk@ours.test", "other@partner.example", "Auto-Submitted: auto-replied\r\n") != 250 {
		t.Errorf("another recipient was refused")
	}
	h.next()
	for i := 0; i < 5; i++ {
		if send("helpdesk@ours.test", "support@partner.example", "") != 250 {
			t.Fatalf("a message from a person was refused")
		}
		h.next()
	}
}

// The configured automatic senders join the built-in ones.
func TestConfiguredAutomaticSenders(t *testing.T) {
	h := start(t, &fakeRole{}, func(o *smtpd.Options) { o.AutomaticSenders = []string{"ticket-bot", "alerts@ours.test"} })
	for _, to := range []string{"ticket-bot@ours.test", "Alerts@ours.test"} {
		c := dial(t, h.addr)
		c.ehlo("client.example.org")
		c.expect("MAIL FROM:<s@example.org>", 250, "")
		c.expect("RCPT TO:<"+to+">", 250, "")
		if code, msg := c.data("Precedence: bulk\r\nSubject: x\r\n\r\nbody\r\n.\r\n"); code != 550 {
			t.Errorf("automatic mail to %s: %d %s, want 550", to, code, msg)
		}
	}
	h.expectNothingSpooled()
}
