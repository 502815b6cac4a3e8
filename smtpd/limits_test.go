package smtpd_test

import (
	"encoding/base64"
	"net"
	"net/netip"
	"net/textproto"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"securerelay/internal/anvil"
	"securerelay/smtpd"
)

// clock is a settable clock for the per-client limits.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// dialFrom connects from a chosen loopback address and returns the first
// reply (a greeting or a refusal).
func dialFrom(t *testing.T, addr, from string) (*client, int, string) {
	t.Helper()
	d := net.Dialer{Timeout: testTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	nc, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { nc.Close() })
	c := dialConn(t, nc)
	code, msg := c.reply()
	return c, code, msg
}

func dialConn(t *testing.T, nc net.Conn) *client {
	return &client{t: t, c: nc, tp: textproto.NewConn(nc)}
}

func exempt(addrs ...string) func(netip.Addr) bool {
	return func(ip netip.Addr) bool {
		for _, a := range addrs {
			if ip.String() == a {
				return true
			}
		}
		return false
	}
}

// One client holds at most MaxConnectionsPerClient sessions; others, and
// exempt clients, are not affected; a closed session frees its slot.
func TestPerClientConnections(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) {
		o.MaxConnections = 10
		o.MaxConnectionsPerClient = 2
		o.LimitExempt = exempt("127.0.0.3")
	})
	a, _, _ := dialFrom(t, h.addr, "127.0.0.1")
	dialFrom(t, h.addr, "127.0.0.1")
	over, code, msg := dialFrom(t, h.addr, "127.0.0.1")
	if code != 421 || !strings.HasPrefix(msg, "4.7.0 ") || !strings.Contains(msg, "from 127.0.0.1 (limit 2 at a time") {
		t.Fatalf("third session from one client: %d %s, want 421 4.7.0 naming the client and the limit", code, msg)
	}
	over.expectClosed()
	for _, from := range []string{"127.0.0.2", "127.0.0.3", "127.0.0.3", "127.0.0.3"} {
		if c, code, msg := dialFrom(t, h.addr, from); code != 220 {
			t.Fatalf("session from %s: %d %s", from, code, msg)
		} else {
			c.ehlo("other.example.org")
		}
	}
	a.expect("QUIT", 221, "")
	a.expectClosed()
	deadline := time.Now().Add(testTimeout)
	for {
		c, code, msg := dialFrom(t, h.addr, "127.0.0.1")
		if code == 220 {
			c.ehlo("again.example.org")
			break
		}
		if code != 421 || time.Now().After(deadline) {
			t.Fatalf("after a QUIT: %d %s", code, msg)
		}
	}
	if n := h.srv.Refusals()["max_connections_per_client"]; n < 1 {
		t.Errorf("refusals counted: %v", h.srv.Refusals())
	}
}

// New connections per client per window; the window slides on.
func TestConnectionRate(t *testing.T) {
	clk := newClock()
	h := start(t, ours(), func(o *smtpd.Options) {
		o.MaxConnectionRate, o.ClientRateWindow, o.Now = 3, time.Minute, clk.Now
	})
	for i := 0; i < 3; i++ {
		c, code, msg := dialFrom(t, h.addr, "127.0.0.1")
		if code != 220 {
			t.Fatalf("connection %d: %d %s", i, code, msg)
		}
		c.expect("QUIT", 221, "")
	}
	c, code, msg := dialFrom(t, h.addr, "127.0.0.1")
	if code != 421 || !strings.HasPrefix(msg, "4.7.0 ") || !strings.Contains(msg, "limit 3 per 1m") {
		t.Fatalf("fourth connection within a minute: %d %s, want 421 4.7.0 naming the rate", code, msg)
	}
	c.expectClosed()
	if _, code, _ := dialFrom(t, h.addr, "127.0.0.2"); code != 220 {
		t.Errorf("another client refused: %d", code)
	}
	clk.Advance(2 * time.Minute)
	if _, code, msg := dialFrom(t, h.addr, "127.0.0.1"); code != 220 {
		t.Errorf("a window later: %d %s", code, msg)
	}
}

// MAIL and RCPT commands per client per window: 450 4.7.1, and the session
// goes on.
func TestMessageAndRecipientRate(t *testing.T) {
	clk := newClock()
	h := start(t, ours(), func(o *smtpd.Options) {
		o.MaxMessageRate, o.MaxRecipientRate, o.ClientRateWindow, o.Now = 2, 3, time.Minute, clk.Now
	})
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<a@example.org>", 250, "")
	c.expect("RCPT TO:<u1@ours.test>", 250, "")
	c.expect("RCPT TO:<u2@ours.test>", 250, "")
	c.expect("RSET", 250, "")
	c.expect("MAIL FROM:<a@example.org>", 250, "")
	c.expect("RCPT TO:<u3@ours.test>", 250, "")
	msg := c.expect("RCPT TO:<u4@ours.test>", 450, "4.7.1")
	if !strings.Contains(msg, "limit 3 per 1m") {
		t.Errorf("recipient rate reply does not name the limit: %s", msg)
	}
	c.expect("RSET", 250, "")
	msg = c.expect("MAIL FROM:<a@example.org>", 450, "4.7.1")
	if !strings.Contains(msg, "127.0.0.1") || !strings.Contains(msg, "limit 2 messages per 1m") {
		t.Errorf("message rate reply: %s", msg)
	}
	clk.Advance(2 * time.Minute)
	c.expect("MAIL FROM:<a@example.org>", 250, "")
	c.expect("RCPT TO:<u5@ours.test>", 250, "")
	r := h.srv.Refusals()
	if r["max_message_rate_per_client"] != 1 || r["max_recipient_rate_per_client"] != 1 {
		t.Errorf("refusals counted: %v", r)
	}
}

// countingRole counts the password checks (each a bcrypt in the real
// role) and takes as long as one, so that parallel logins overlap.
type countingRole struct {
	fakeRole
	checks atomic.Int64
}

func (r *countingRole) Authenticate(st *smtpd.State, user, pass string) error {
	r.checks.Add(1)
	time.Sleep(50 * time.Millisecond)
	return r.fakeRole.Authenticate(st, user, pass)
}

func authPlain(user, pass string) string {
	return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))
}

// guess makes n parallel connections from one address, each with one
// wrong password, and returns the reply codes.
func guess(t *testing.T, addr, from, user string, n int) map[int]int {
	t.Helper()
	var mu sync.Mutex
	codes := map[int]int{}
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			d := net.Dialer{Timeout: testTimeout, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
			nc, err := d.Dial("tcp", addr)
			if err != nil {
				t.Error(err)
				return
			}
			defer nc.Close()
			nc.SetDeadline(time.Now().Add(2 * testTimeout))
			c := dialConn(t, nc)
			if code, _, err := c.tp.ReadResponse(220); err != nil {
				t.Errorf("greeting %d: %v", code, err)
				return
			}
			c.tp.PrintfLine("EHLO guesser.example.org")
			c.tp.ReadResponse(250)
			c.tp.PrintfLine("%s", authPlain(user, "wrong"))
			code, _, _ := c.tp.ReadResponse(0)
			mu.Lock()
			codes[code]++
			mu.Unlock()
		}()
	}
	wg.Wait()
	return codes
}

// Failed logins count per client across connections: past the limit no
// password is checked and even the right one is refused (454 4.7.0),
// until the window has passed. Parallel guesses are checked one at a
// time, so they cannot all pass the count before any is recorded.
func TestAuthFailuresPerClient(t *testing.T) {
	clk := newClock()
	role := &countingRole{fakeRole: fakeRole{authEnabled: true}}
	h := start(t, role, func(o *smtpd.Options) {
		o.AllowInsecureAuth = true
		o.MaxAuthFailuresPerClient, o.AuthFailureWindow, o.Now = 3, 15*time.Minute, clk.Now
		o.LimitExempt = exempt("127.0.0.3")
	})
	codes := guess(t, h.addr, "127.0.0.1", "user", 10)
	if codes[535] != 3 || codes[454] != 7 {
		t.Errorf("10 parallel wrong passwords: replies %v, want 3×535 and 7×454", codes)
	}
	if n := role.checks.Load(); n != 3 {
		t.Errorf("%d passwords checked, want 3 (the limit)", n)
	}
	c, _, _ := dialFrom(t, h.addr, "127.0.0.1")
	c.ehlo("client.example.org")
	msg := c.expect(authPlain("user", "secret"), 454, "4.7.0")
	if !strings.Contains(msg, "from 127.0.0.1 (limit 3 per 15m)") {
		t.Errorf("lockout reply: %s", msg)
	}
	if n := role.checks.Load(); n != 3 {
		t.Errorf("the right password was checked during the lockout (%d checks)", n)
	}
	// Another client, and an exempt one, are not locked out.
	for _, from := range []string{"127.0.0.2", "127.0.0.3"} {
		c, _, _ := dialFrom(t, h.addr, from)
		c.ehlo("client.example.org")
		c.expect(authPlain("user", "secret"), 235, "2.7.0")
	}
	clk.Advance(16*time.Minute + 2*time.Minute)
	c.expect(authPlain("user", "secret"), 235, "2.7.0")
	if n := h.srv.Refusals()["max_auth_failures_per_client"]; n != 8 {
		t.Errorf("lockout refusals counted: %d, want 8", n)
	}
}

// Failed logins count per user across clients: a botnet guessing one
// account from many addresses is stopped too, but an exempt client (the
// office network) still gets in.
func TestAuthFailuresPerUser(t *testing.T) {
	role := &countingRole{fakeRole: fakeRole{authEnabled: true}}
	h := start(t, role, func(o *smtpd.Options) {
		o.AllowInsecureAuth = true
		o.MaxAuthFailuresPerUser, o.AuthFailureWindow = 4, 15*time.Minute
		o.LimitExempt = exempt("127.0.0.9")
	})
	for _, from := range []string{"127.0.0.1", "127.0.0.2", "127.0.0.4"} {
		guess(t, h.addr, from, "USER", 2)
	}
	if n := role.checks.Load(); n != 4 {
		t.Errorf("%d passwords checked, want 4 (the per-user limit; names compare case-insensitively)", n)
	}
	c, _, _ := dialFrom(t, h.addr, "127.0.0.5")
	c.ehlo("client.example.org")
	msg := c.expect(authPlain("user", "secret"), 454, "4.7.0")
	if !strings.Contains(msg, "for this user") {
		t.Errorf("lockout reply: %s", msg)
	}
	c, _, _ = dialFrom(t, h.addr, "127.0.0.9")
	c.ehlo("office.example.org")
	c.expect(authPlain("user", "secret"), 235, "2.7.0")
	// Other users are not affected.
	if role.checks.Load() != 5 {
		t.Errorf("checks: %d", role.checks.Load())
	}
}

// NOOP, RSET, VRFY, HELP: at most MaxJunkCommands between two messages.
func TestJunkCommands(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) { o.MaxJunkCommands = 3 })
	c := dial(t, h.addr)
	c.ehlo("client.example.org")
	c.expect("NOOP", 250, "")
	c.expect("RSET", 250, "")
	c.expect("VRFY x", 252, "")
	c.expect("MAIL FROM:<a@example.org>", 250, "")
	c.expect("RCPT TO:<u@ours.test>", 250, "")
	h.queueID(c.data("Subject: x\r\n\r\nx\r\n.\r\n"))
	// A message resets the count.
	c.expect("NOOP", 250, "")
	c.expect("NOOP", 250, "")
	c.expect("NOOP", 250, "")
	msg := c.expect("HELP", 421, "4.7.0")
	if !strings.Contains(msg, "limit 3") {
		t.Errorf("reply: %s", msg)
	}
	c.expectClosed()
	if n := h.srv.Refusals()["max_junk_commands"]; n != 1 {
		t.Errorf("refusals: %v", h.srv.Refusals())
	}
}

// At 80% of max_connections idle sessions get the stress time-out, those
// already waiting included; a session in DATA does not; below 60% the
// normal time-out is back.
func TestStressTimeout(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) {
		o.MaxConnections = 5
		o.StressCommandTimeout = 300 * time.Millisecond
	})
	idle := dial(t, h.addr)
	idle.ehlo("idle.example.org")
	inData := simple(t, h.addr, "a@example.org", "u@ours.test")
	inData.expect("DATA", 354, "")
	inData.raw("Subject: slow\r\n\r\n")
	third := dial(t, h.addr)
	start := time.Now()
	last := dial(t, h.addr) // the 4th: 80%
	code, msg := idle.reply()
	if code != 421 || !strings.HasPrefix(msg, "4.4.2 ") {
		t.Fatalf("idle session under stress: %d %s, want the 421 4.4.2 of the time-out", code, msg)
	}
	if waited := time.Since(start); waited > 5*time.Second {
		t.Errorf("idle session ended after %v under a 300ms stress time-out", waited)
	}
	// DATA is not cut short, even when slow.
	time.Sleep(500 * time.Millisecond)
	inData.raw("still here\r\n.\r\n")
	h.queueID(inData.reply())
	for _, c := range []*client{third, last} {
		if code, msg := c.reply(); code != 421 {
			t.Fatalf("idle session under stress: %d %s", code, msg)
		}
		c.expectClosed()
	}
	// Below 60% the normal time-out is back (the server may see the last
	// close a moment after the client does).
	for i := 0; ; i++ {
		calm := dial(t, h.addr)
		calm.ehlo("calm.example.org")
		time.Sleep(600 * time.Millisecond)
		if code, _ := calm.cmd("NOOP"); code == 250 {
			break
		}
		if i == 5 {
			t.Fatal("the stress time-out still applies with no other session")
		}
	}
}

// The failure counts are shared by the listeners (one store, as the relay
// wires it), and each listener may have its own auth_failure_window. A
// guess on a listener with another window must not wipe the count the
// first one keeps: alternating between two submission ports used to
// reset both counts, so the lockout never came (issue 11 review).
func TestAuthFailuresAcrossListenersWithOtherWindows(t *testing.T) {
	shared := anvil.New(0)
	role := &countingRole{fakeRole: fakeRole{authEnabled: true}}
	listener := func(name string, window time.Duration) *harness {
		return start(t, role, func(o *smtpd.Options) {
			o.Name, o.AllowInsecureAuth, o.ClientCounts = name, true, shared
			o.MaxAuthFailuresPerUser, o.AuthFailureWindow = 2, window
		})
	}
	a, b := listener("submission", 15*time.Minute), listener("smarthost", time.Hour)
	guess(t, a.addr, "127.0.0.1", "user", 2)
	guess(t, b.addr, "127.0.0.2", "user", 1)
	c, _, _ := dialFrom(t, a.addr, "127.0.0.3")
	c.ehlo("client.example.org")
	if msg := c.expect(authPlain("user", "secret"), 454, "4.7.0"); !strings.Contains(msg, "for this user") {
		t.Errorf("lockout reply: %s", msg)
	}
	if n := role.checks.Load(); n != 3 {
		t.Errorf("%d passwords checked, want 3 (2 on the first listener, 1 on the second)", n)
	}
}

// The junk command limit is a per-client limit like the others: a client
// in trusted_networks or client_limit_exceptions (LimitExempt), such as
// a groupware that checks its pooled sessions with NOOP, is not cut off.
func TestJunkCommandsExempt(t *testing.T) {
	h := start(t, ours(), func(o *smtpd.Options) {
		o.MaxJunkCommands = 3
		o.LimitExempt = exempt("127.0.0.3")
	})
	c, _, _ := dialFrom(t, h.addr, "127.0.0.3")
	c.ehlo("groupware.example.org")
	for i := 0; i < 10; i++ {
		c.expect([]string{"NOOP", "RSET"}[i%2], 250, "")
	}
	c.expect("MAIL FROM:<a@example.org>", 250, "")
	c, _, _ = dialFrom(t, h.addr, "127.0.0.4")
	c.ehlo("client.example.org")
	for i := 0; i < 3; i++ {
		c.expect("NOOP", 250, "")
	}
	c.expect("NOOP", 421, "4.7.0")
}

// The per-user lockout is what an outsider can aim at a real account:
// ten wrong guesses from anywhere, and the groupware that logs in as that
// user from its own address would get 454 until the window passed,
// again and again. A client that has logged in as the user before (a
// familiar client) is therefore not held to the user's count, only to
// its own per-client one; a client that never has, is.
func TestAuthUserLockoutSparesFamiliarClient(t *testing.T) {
	role := &countingRole{fakeRole: fakeRole{authEnabled: true}}
	h := start(t, role, func(o *smtpd.Options) {
		o.AllowInsecureAuth = true
		o.MaxAuthFailuresPerUser, o.MaxAuthFailuresPerClient, o.AuthFailureWindow = 4, 20, 15*time.Minute
	})
	groupware, _, _ := dialFrom(t, h.addr, "127.0.0.5")
	groupware.ehlo("groupware.example.org")
	groupware.expect(authPlain("user", "secret"), 235, "2.7.0")

	if codes := guess(t, h.addr, "127.0.0.1", "user", 6); codes[535] != 4 || codes[454] != 2 {
		t.Fatalf("an outsider's 6 guesses: %v, want 4×535 and 2×454 (the user is locked out)", codes)
	}
	c, _, _ := dialFrom(t, h.addr, "127.0.0.6")
	c.ehlo("new.example.org")
	c.expect(authPlain("user", "secret"), 454, "4.7.0")
	c, _, _ = dialFrom(t, h.addr, "127.0.0.5")
	c.ehlo("groupware.example.org")
	c.expect(authPlain("user", "secret"), 235, "2.7.0")
}
