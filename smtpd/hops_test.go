package smtpd_test

import (
	"strings"
	"testing"

	"securerelay/smtpd"
)

// A message that already went through 51 hops is refused with 554 5.4.6 and
// not spooled (a mail loop); 50 are fine.
func TestHopLimit(t *testing.T) {
	h := start(t, &fakeRole{}, nil)
	send := func(n int) (int, string) {
		c := dial(t, h.addr)
		c.ehlo("client.example.org")
		c.expect("MAIL FROM:<s@example.org>", 250, "")
		c.expect("RCPT TO:<u@ours.test>", 250, "")
		return c.data(strings.Repeat("Received: from x by y; Mon, 2 Jan 2006 15:04:05 +0000\r\n", n) + "Subject: loop\r\n\r\nbody\r\n.\r\n")
	}
	if code, msg := send(51); code != 554 || !strings.HasPrefix(msg, "5.4.6 ") {
		t.Fatalf("51 hops: %d %s, want 554 5.4.6", code, msg)
	}
	h.expectNothingSpooled()
	if code, msg := send(50); code != 250 {
		t.Fatalf("50 hops: %d %s", code, msg)
	}
	h.next()
}

// The limit is configurable (limits.max_hops).
func TestHopLimitConfigured(t *testing.T) {
	h := start(t, &fakeRole{}, func(o *smtpd.Options) { o.MaxHops = 3 })
	send := func(n int) int {
		c := dial(t, h.addr)
		c.ehlo("client.example.org")
		c.expect("MAIL FROM:<s@example.org>", 250, "")
		c.expect("RCPT TO:<u@ours.test>", 250, "")
		code, _ := c.data(strings.Repeat("Received: from x by y; Mon, 2 Jan 2006 15:04:05 +0000\r\n", n) + "Subject: loop\r\n\r\nbody\r\n.\r\n")
		return code
	}
	if code := send(4); code != 554 {
		t.Fatalf("4 hops with max_hops 3: %d", code)
	}
	if code := send(3); code != 250 {
		t.Fatalf("3 hops with max_hops 3: %d", code)
	}
	h.next()
}
