package smtpd_test

import (
	"fmt"
	"strings"
	"testing"

	"securerelay/dkim"
	"securerelay/queue"
	"securerelay/smtpd"
)

// "Received :" (WSP before the colon, RFC 5322 section 4.5.? obs-received)
// is a Received field for every real parser, so it counts as a hop: a
// looping message cannot slip past max_hops by a space.
func TestHopLimitObsSyntax(t *testing.T) {
	h := start(t, &fakeRole{}, func(o *smtpd.Options) { o.MaxHops = 3 })
	for _, name := range []string{"Received :", "Received\t:", "RECEIVED  :", "received:"} {
		c := simple(t, h.addr, "s@example.org", "u@ours.test")
		code, msg := c.data(strings.Repeat(name+" from x by y; Mon, 2 Jan 2006 15:04:05 +0000\r\n", 4) + "Subject: loop\r\n\r\nbody\r\n.\r\n")
		if code != 554 || !strings.HasPrefix(msg, "5.4.6 ") {
			t.Errorf("4 fields %q with max_hops 3: %d %s, want 554 5.4.6", name, code, msg)
		}
	}
	// Not Received fields: another name, or text that only starts alike.
	c := simple(t, h.addr, "s@example.org", "u@ours.test")
	h.queueID(c.data(strings.Repeat("Received-SPF: pass\r\nX-Received : x\r\n", 4) + "Subject: no loop\r\n\r\nReceived: in the body\r\nReceived: 2\r\nReceived: 3\r\nReceived: 4\r\n.\r\n"))
}

// A data line over max_line_length is refused permanently (no retry can
// shorten it), after the end of the data, and the session goes on.
func TestDataLineTooLong(t *testing.T) {
	for _, bdat := range []bool{false, true} {
		t.Run(fmt.Sprintf("bdat=%v", bdat), func(t *testing.T) {
			h := start(t, ours(), func(o *smtpd.Options) { o.MaxLineLength = 1000 })
			c := simple(t, h.addr, "sender@example.org", "user@ours.test")
			body := "Subject: long\r\n\r\nshort\r\n" + strings.Repeat("x", 1200) + "\r\nmore\r\n" + strings.Repeat("y\r\n", 2000)
			var code int
			var msg string
			if bdat {
				c.raw(fmt.Sprintf("BDAT %d LAST\r\n%s", len(body), body))
				code, msg = c.reply()
			} else {
				code, msg = c.data(body + ".\r\n")
			}
			if code != 500 || !strings.HasPrefix(msg, "5.5.2 ") || !strings.Contains(msg, "1000") {
				t.Fatalf("line of 1202 bytes: %d %s, want 500 5.5.2 naming the limit", code, msg)
			}
			h.expectNothingSpooled()
			if n := h.srv.Refusals()["max_line_length"]; n != 1 {
				t.Errorf("refusals counted: %v", h.srv.Refusals())
			}
			// Exactly at the limit (CRLF included) is fine, and the
			// session is in order.
			c.expect("MAIL FROM:<sender@example.org>", 250, "")
			c.expect("RCPT TO:<user@ours.test>", 250, "")
			h.queueID(c.data("Subject: ok\r\n\r\n" + strings.Repeat("z", 998) + "\r\n.\r\n"))
		})
	}
}

// A header the signer could never read (over dkim.MaxHeaderBytes with what
// we add) is refused at DATA with 552 5.3.4 on every listener, instead of
// a 250 and a message deferred until it expires.
func TestHeaderTooLarge(t *testing.T) {
	for _, origin := range []string{queue.OriginOutbound, queue.OriginInbound} {
		t.Run(origin, func(t *testing.T) {
			h := start(t, &fakeRole{origin: origin}, nil)
			c := simple(t, h.addr, "app@ours.test", "user@example.org")
			field := "X-Filler: " + strings.Repeat("f", 900) + "\r\n"
			big := strings.Repeat(field, dkim.MaxHeaderBytes/len(field)+1)
			code, msg := c.data("Subject: huge header\r\n" + big + "\r\nbody\r\n.\r\n")
			if code != 552 || !strings.HasPrefix(msg, "5.3.4 ") {
				t.Fatalf("header of %d bytes: %d %s, want 552 5.3.4", len(big), code, msg)
			}
			h.expectNothingSpooled()
			if n := h.srv.Refusals()["header_too_large"]; n != 1 {
				t.Errorf("refusals counted: %v", h.srv.Refusals())
			}
			// A header of 900 KiB is fine, and the session goes on.
			c.expect("MAIL FROM:<app@ours.test>", 250, "")
			c.expect("RCPT TO:<user@example.org>", 250, "")
			h.queueID(c.data("Subject: big header\r\n" + strings.Repeat(field, 900<<10/len(field)) + "\r\nbody\r\n.\r\n"))
		})
	}
}
