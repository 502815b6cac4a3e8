package e2e

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
)

// Review of issue 13's merge: what the three branches broke together.

// A client that sends more recipients than max_recipients gets 452 4.5.3
// for the rest and is to send them in another transaction (RFC 5321
// §4.5.3.1.10): that is no error of the client, and Postfix does not count
// it towards smtpd_hard_error_limit (smtpd_recipient_overshoot_limit,
// 1000). Since go-smtp's replies count towards max_errors, the tenth such
// 452 closed the session with 421 and the message never went to the
// recipients that were accepted; a client that sends all recipients in one
// transaction (Python's smtplib, Thunderbird, Exchange) could never
// deliver a message with more than max_recipients + 9 recipients.
func TestTooManyRecipientsIsNoError(t *testing.T) {
	requireTool(t, "python3")
	dns := dnstest.NewServer(t, "example.org. A 192.0.2.1\n")
	dir := t.TempDir()
	mx, sub, mail := freeAddr(t), freeAddr(t), filepath.Join(dir, "mail")
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`limits: {max_recipients: 5}
listeners:
  - {name: mx, address: %q, role: inbound}
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], auth: "off"}
domains:
  example.test:
    deliver_to: "maildir:%s"
`, mx, sub, mail))
	r := startRelay(t, cfg, mx, sub)
	for _, l := range []struct{ name, addr string }{{"inbound", mx}, {"outbound", sub}} {
		t.Run(l.name, func(t *testing.T) {
			var rcpts []pyRcpt
			for i := 0; i < 20; i++ {
				rcpts = append(rcpts, pyRcpt{fmt.Sprintf("%s%02d@example.test", l.name, i), nil})
			}
			replies := pySend(t, l.addr, "sender@example.org", nil, rcpts, []byte("Subject: to twenty\r\n\r\nhi\r\n"))
			if len(replies) != 22 {
				t.Fatalf("%d replies, want MAIL, 20 RCPT and DATA: %q", len(replies), replies)
			}
			for i, rp := range replies[1:21] {
				want := "250 2.1.5 "
				if i >= 5 {
					want = "452 4.5.3 too many recipients in this transaction (limit 5)"
				}
				if !strings.HasPrefix(rp, want) {
					t.Errorf("RCPT %d: %q, want %q", i+1, rp, want)
				}
			}
			if !strings.HasPrefix(replies[21], "250 2.0.0 Ok: queued as ") {
				t.Errorf("DATA: %q", replies[21])
			}
			for i := 0; i < 5; i++ {
				waitMaildir(t, mail, fmt.Sprintf("%s%02d@example.test", l.name, i), 1, 30*time.Second)
			}
		})
	}
	if l := r.LogLines("too many errors"); len(l) != 0 {
		t.Errorf("sessions closed for too many errors: %q", l)
	}
}
