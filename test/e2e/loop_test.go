package e2e

import (
	"fmt"
	"net/smtp"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
)

// TestAutoResponderPingPong wires two auto-responders to each other through
// the relay: a.test is ours (delivered to responder A), b.test is a partner
// reached by a route (responder B); each answers every message with an
// auto-reply. One human message starts the ping-pong; the relay's limit
// (3 automatic messages per sender and recipient here) must stop it, and
// the test counts what went through.
func TestAutoResponderPingPong(t *testing.T) {
	a := startTestServer(t, listenLoopback(t), serverOptions{})
	b := startTestServer(t, listenLoopback(t), serverOptions{})
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	mx, sub := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`limits: {max_auto_replies: 3, auto_reply_window: 1h}
listeners:
  - {name: mx, address: %q, role: inbound}
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8]}
domains:
  a.test: {deliver_to: "smtp://%s"}
outbound:
  routes: [{match: b.test, next_hop: "smtp://%s"}]
%s`, mx, sub, a.Addr, b.Addr, outboundTimeouts))
	r := startRelay(t, cfg, mx, sub)

	send := func(from, to, extra string) error {
		msg := fmt.Sprintf("From: %s\r\nTo: %s\r\nSubject: Re: your ticket\r\nDate: %s\r\n%s\r\nThank you for your message.\r\n",
			from, to, time.Now().Format(time.RFC1123Z), extra)
		// net/smtp's SendMail would insist on verifying the relay's
		// self-signed certificate; a plain session is what the responders
		// of a trusted network use.
		c, err := smtp.Dial(sub)
		if err != nil {
			return err
		}
		defer c.Close()
		if err := c.Hello("responder.test"); err != nil {
			return err
		}
		if err := c.Mail(from); err != nil {
			return err
		}
		if err := c.Rcpt(to); err != nil {
			return err
		}
		w, err := c.Data()
		if err != nil {
			return err
		}
		if _, err := w.Write([]byte(msg)); err != nil {
			return err
		}
		if err := w.Close(); err != nil {
			return err
		}
		return c.Quit()
	}
	// Each responder answers every message it has not answered yet, until
	// the relay refuses (its loop limit) or the test is over.
	refused := make(chan string, 2)
	respond := func(srv *testServer, me, peer string) {
		answered := 0
		deadline := time.Now().Add(20 * time.Second)
		for time.Now().Before(deadline) {
			if n := len(srv.Messages()); n > answered {
				answered++
				if err := send(me, peer, "Auto-Submitted: auto-replied\r\n"); err != nil {
					refused <- me + ": " + err.Error()
					return
				}
				continue
			}
			time.Sleep(20 * time.Millisecond)
		}
		refused <- me + ": never refused"
	}
	go respond(a, "bot@a.test", "bot@b.test")
	go respond(b, "bot@b.test", "bot@a.test")
	if err := send("bot@b.test", "bot@a.test", ""); err != nil { // a person writes first
		t.Fatal(err)
	}
	select {
	case why := <-refused:
		if !strings.Contains(why, "550") || !strings.Contains(why, "auto-reply loop") {
			t.Fatalf("the ping-pong ended otherwise than by the loop limit: %s", why)
		}
		t.Logf("stopped: %s", why)
	case <-time.After(30 * time.Second):
		t.Fatal("the auto-responders were not stopped")
	}
	time.Sleep(500 * time.Millisecond)
	na, nb := len(a.Messages()), len(b.Messages())
	t.Logf("messages through the relay: A received %d, B received %d", na, nb)
	// A: the human message + 3 auto-replies from B; B: 3 from A. A's 4th
	// reply is the one refused.
	if na != 4 || nb != 3 {
		t.Errorf("A received %d, B %d; want 4 and 3 with a limit of 3 per pair", na, nb)
	}
	r.WaitLog(0, 5*time.Second, "msg=reject", "check=max_auto_replies", "from=bot@a.test", "to=bot@b.test")
}
