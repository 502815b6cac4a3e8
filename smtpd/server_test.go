package smtpd_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"securerelay/smtpd"
)

func TestMaxConnections(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.MaxConnections = 2 })
	a := dial(t, h.addr)
	b := dial(t, h.addr)

	over := dialNoGreeting(t, h.addr)
	code, msg := over.reply()
	if code != 421 || !strings.HasPrefix(msg, "4.7.0 ") {
		t.Fatalf("connection over the limit: %d %s, want 421 4.7.0", code, msg)
	}
	over.expectClosed()

	// The sessions within the limit are unaffected.
	a.ehlo("a.example.org")
	b.ehlo("b.example.org")

	// A closed session frees its slot.
	a.expect("QUIT", 221, "")
	a.expectClosed()
	// The server may see the close of a a moment after we do; the slot is
	// free once a new connection gets a greeting.
	deadline := time.Now().Add(testTimeout)
	for {
		c := dialNoGreeting(t, h.addr)
		code, msg := c.reply()
		if code == 220 {
			c.ehlo("c.example.org")
			break
		}
		if code != 421 || time.Now().After(deadline) {
			t.Fatalf("after a QUIT: %d %s", code, msg)
		}
		c.expectClosed()
	}
}

// Shutdown closes idle sessions at once and lets a transaction in DATA
// finish and get its 250.
func TestShutdownIdleAndDATA(t *testing.T) {
	h := start(t, ours(), nil)
	idle := dial(t, h.addr)
	idle.ehlo("idle.example.org")
	fresh := dial(t, h.addr) // not even EHLO yet

	busy := simple(t, h.addr, "sender@example.org", "user@ours.test")
	busy.expect("DATA", 354, "")
	busy.raw("Subject: slow\r\n\r\nfirst half\r\n")

	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	done := make(chan struct{})
	go func() {
		h.srv.Shutdown(ctx)
		close(done)
	}()

	// The idle sessions are told and closed while DATA is still open.
	for _, c := range []*client{idle, fresh} {
		if code, msg := c.reply(); code != 421 {
			t.Fatalf("idle session at shutdown: %d %s, want 421", code, msg)
		}
		c.expectClosed()
	}
	select {
	case <-done:
		t.Fatal("Shutdown returned while a transaction was in DATA")
	default:
	}

	busy.raw("second half\r\n.\r\n")
	id := h.queueID(busy.reply())
	// Then the session ends too: with a 421, or closed outright.
	if line, err := busy.tp.ReadLine(); err == nil && !strings.HasPrefix(line, "421") {
		t.Fatalf("after the 250 during shutdown the server sent %q", line)
	}
	busy.expectClosed()

	select {
	case <-done:
	case <-time.After(testTimeout):
		t.Fatal("Shutdown did not return")
	}
	if ctx.Err() != nil {
		t.Error("Shutdown waited for its deadline instead of returning when the sessions were done")
	}
	d := h.next()
	if d.ID != id {
		t.Errorf("spooled %s, reply said %s", d.ID, id)
	}
	if _, rest := splitReceived(t, d.Data); string(rest) != "Subject: slow\r\n\r\nfirst half\r\nsecond half\r\n" {
		t.Errorf("message %q", rest)
	}
}

// A MAIL FROM before STARTTLS opens a transaction that the handshake
// discards; the session is idle afterwards and must not hold up shutdown.
func TestShutdownAfterMailBeforeSTARTTLS(t *testing.T) {
	h := start(t, ours(), nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<sender@example.org>", 250, "")
	c.starttls()
	c.ehlo("client.example.org")

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	done := make(chan struct{})
	go func() {
		h.srv.Shutdown(ctx)
		close(done)
	}()
	if code, msg := c.reply(); code != 421 {
		t.Fatalf("idle TLS session at shutdown: %d %s, want 421", code, msg)
	}
	c.expectClosed()
	<-done
	if ctx.Err() != nil {
		t.Error("Shutdown waited for its deadline: the session was still counted as in a transaction")
	}
}

// A transaction that does not finish by the deadline is cut off: its
// connection is closed (it never got a 250, so nothing is lost).
func TestShutdownDeadlineClosesTransactions(t *testing.T) {
	h := start(t, ours(), nil)
	c := simple(t, h.addr, "sender@example.org", "user@ours.test")

	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	h.srv.Shutdown(ctx)
	c.expectClosed()
	h.expectNothingSpooled()
}

// The pregreet test: the greeting starts with "220-" and waits; a client
// that talks before the final "220 " line is refused and disconnected,
// one that waits gets the full greeting and a normal session; allow-listed
// clients are not made to wait.
func TestPregreet(t *testing.T) {
	h := start(t, &fakeRole{}, func(o *smtpd.Options) { o.Pregreet = 300 * time.Millisecond })

	early := dialNoGreeting(t, h.addr)
	early.raw("EHLO bot.example\r\n")
	// The first greeting line, then the refusal (not a continuation of
	// the 220, so read line by line).
	if l, err := early.tp.ReadLine(); err != nil || !strings.HasPrefix(l, "220-") {
		t.Fatalf("first greeting line: %q %v", l, err)
	}
	if l, err := early.tp.ReadLine(); err != nil || !strings.HasPrefix(l, "554 5.5.1 ") || !strings.Contains(l, "before the greeting") {
		t.Fatalf("client that talked first: %q %v", l, err)
	}
	early.expectClosed()

	patient := dial(t, h.addr) // reads the whole multi-line greeting
	if exts := patient.ehlo("mx.example.org"); len(exts) == 0 {
		t.Fatal("no EHLO reply after waiting")
	}

	h2 := start(t, &fakeRole{}, func(o *smtpd.Options) {
		o.Pregreet = 5 * time.Second
		o.PregreetSkip = func(netip.Addr) bool { return true }
	})
	begin := time.Now()
	dial(t, h2.addr)
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("allow-listed client waited %v for the greeting", d)
	}
}

// A client that sends HTTP or proxy commands is disconnected at once with
// 554 5.5.1, not answered with 500 line after line. Only commands before
// the first MAIL are watched, so a message body line starting "GET " is
// data, as it must be: this test sends one.
func TestNonSMTPCommands(t *testing.T) {
	h := start(t, &fakeRole{}, func(o *smtpd.Options) { o.RefuseNonSMTP = true })
	for _, cmd := range []string{"GET / HTTP/1.1", "CONNECT example.org:25 HTTP/1.0", "Host: example.org"} {
		c := dial(t, h.addr)
		code, msg := c.cmd(cmd)
		if code != 554 || !strings.Contains(msg, "not HTTP") {
			t.Errorf("%q: %d %s, want 554 5.5.1", cmd, code, msg)
		}
		c.expectClosed()
	}
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<s@example.org>", 250, "")
	c.expect("RCPT TO:<u@ours.test>", 250, "")
	if code, msg := c.data("Subject: x\r\n\r\nGET this line is body text\r\n.\r\n"); code != 250 {
		t.Errorf("message with a body line starting GET: %d %s", code, msg)
	}
	h.next()
}

// A message body pipelined with MAIL/RCPT/BDAT in one write (RFC 3030
// allows it) is data, not commands, even where a line starts with "GET ".
func TestNonSMTPPipelinedBDAT(t *testing.T) {
	h := start(t, &fakeRole{}, func(o *smtpd.Options) { o.RefuseNonSMTP = true })
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	body := "Subject: x\r\n\r\nGET this\r\n"
	c.raw(fmt.Sprintf("MAIL FROM:<s@example.org>\r\nRCPT TO:<u@ours.test>\r\nBDAT %d LAST\r\n%s", len(body), body))
	for i, want := range []int{250, 250, 250} {
		if code, msg := c.reply(); code != want {
			t.Fatalf("reply %d: %d %s", i, code, msg)
		}
	}
	h.next()
}

// A tarpitted client waits before every reply.
func TestTarpitDelaysReplies(t *testing.T) {
	h := start(t, &fakeRole{connect: func(st *smtpd.State) error { st.Tarpit = 150 * time.Millisecond; return nil }}, nil)
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	begin := time.Now()
	c.expect("NOOP", 250, "")
	if d := time.Since(begin); d < 150*time.Millisecond {
		t.Errorf("reply after %v, want at least the 150ms tarpit", d)
	}
}

// The other two protocol tests, before MAIL on an inbound-style listener:
// a command pipelined with EHLO before its reply (PIPELINING is only known
// from that reply, RFC 2920) and a bare newline end the session with
// 554 5.5.1; pipelining after the EHLO reply is fine.
func TestProtocolTests(t *testing.T) {
	h := start(t, &fakeRole{}, func(o *smtpd.Options) { o.RefuseNonSMTP = true })
	for name, input := range map[string]string{
		"pipelined before the EHLO reply": "EHLO bot.example\r\nMAIL FROM:<a@example.org>\r\n",
		"bare newline":                    "EHLO bot.example\n",
	} {
		c := dial(t, h.addr)
		c.raw(input)
		code, msg := c.reply()
		if code != 554 || !strings.HasPrefix(msg, "5.5.1 ") {
			t.Errorf("%s: %d %s, want 554 5.5.1", name, code, msg)
		}
		c.expectClosed()
	}
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.raw("MAIL FROM:<s@example.org>\r\nRCPT TO:<u@ours.test>\r\nDATA\r\n")
	for i, want := range []int{250, 250, 354} {
		if code, msg := c.reply(); code != want {
			t.Fatalf("pipelined after EHLO, reply %d: %d %s", i, code, msg)
		}
	}
	c.raw("Subject: x\r\n\r\nbody\r\n.\r\n")
	if code, msg := c.reply(); code != 250 {
		t.Fatalf("end of data: %d %s", code, msg)
	}
	h.next()
}
