package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
)

// maildirRelay starts a relay with one inbound listener and example.test
// delivered to a maildir; it returns the relay, the listener address, the
// maildir root and the config path. extraDomains is YAML added under
// domains:.
func maildirRelay(t *testing.T, extraDomains string) (r *Relay, mx, mail, cfg string) {
	t.Helper()
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	mx = freeAddr(t)
	mail = filepath.Join(dir, "mail")
	cfg = filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, maildirConfig(filepath.Join(dir, "state"), dns.Addr(), mx, mail, extraDomains))
	return startRelay(t, cfg, mx), mx, mail, cfg
}

func maildirConfig(state, resolver, mx, mail, extraDomains string) string {
	return configHead(state, resolver) + fmt.Sprintf(`listeners:
  - name: mx
    address: %q
    role: inbound
domains:
  example.test:
    deliver_to: "maildir:%s"
%s`, mx, mail, extraDomains)
}

// TestBareLineFeed: a bare LF in DATA (SMTP smuggling) is refused with 550
// at the end of data, nothing is delivered, and the session goes on.
func TestBareLineFeed(t *testing.T) {
	r, mx, mail, _ := maildirRelay(t, "")
	c := dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)

	for _, tc := range []struct{ name, data string }{
		{"bare LF", "Subject: bare LF\r\n\r\nline one\nline two\r\n.\r\n"},
		// The classic smuggling attempt: "\n.\r\n" is not the end of data;
		// the "second message" must not become one.
		{"smuggling", "Subject: smuggling\r\n\r\nhello\n.\r\nMAIL FROM:<evil@example.org>\r\n" +
			"RCPT TO:<evil@example.test>\r\nDATA\r\nSubject: smuggled\r\n\r\nsmuggled\r\n.\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.Expect("MAIL FROM:<alice@example.org>", 250)
			c.Expect("RCPT TO:<bob@example.test>", 250)
			c.Expect("DATA", 354)
			c.Write(tc.data)
			code, text := c.Reply()
			if code != 550 {
				t.Fatalf("end of data with a bare LF: %q, want 550", text)
			}
		})
	}
	// Same session, a clean message: accepted, and the only one delivered.
	c.Expect("MAIL FROM:<alice@example.org>", 250)
	c.Expect("RCPT TO:<bob@example.test>", 250)
	c.Expect("DATA", 354)
	c.Write("Subject: clean\r\n\r\nclean body\r\n.\r\n")
	if code, text := c.Reply(); code != 250 {
		t.Fatalf("clean message after the refused ones: %q, want 250", text)
	}
	c.Expect("QUIT", 221)
	waitMaildir(t, mail, "bob@example.test", 1, 5*time.Second)
	time.Sleep(200 * time.Millisecond)
	msgs := maildirMessages(t, mail, "bob@example.test")
	if len(msgs) != 1 || !strings.Contains(string(msgs[0]), "Subject: clean") {
		t.Fatalf("bob@example.test has %d messages, want only the clean one: %q", len(msgs), msgs)
	}
	if boxes := mailboxes(t, mail); len(boxes) != 1 {
		t.Errorf("mailboxes %q, want only bob@example.test", boxes)
	}
	if n := len(r.LogLines("msg=queued")); n != 1 {
		t.Errorf("%d messages queued, want 1", n)
	}
}

// TestStartTLSOpenSSL: openssl s_client negotiates STARTTLS with TLS 1.2
// or 1.3 on an inbound listener (self-signed certificate).
func TestStartTLSOpenSSL(t *testing.T) {
	requireTool(t, "openssl")
	_, mx, _, _ := maildirRelay(t, "")
	for _, v := range []struct{ name, flag, want string }{
		{"default", "", `TLSv1\.[23]`},
		{"TLS 1.2", "-tls1_2", `TLSv1\.2`},
		{"TLS 1.3", "-tls1_3", `TLSv1\.3`},
	} {
		t.Run(v.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
			defer cancel()
			args := []string{"s_client", "-starttls", "smtp", "-connect", mx, "-servername", "relay.e2e.test", "-brief"}
			if v.flag != "" {
				args = append(args, v.flag)
			}
			cmd := exec.CommandContext(ctx, "openssl", args...)
			cmd.Stdin = strings.NewReader("QUIT\r\n")
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("openssl %s: %v\n%s", strings.Join(args, " "), err, out)
			}
			if !regexp.MustCompile(`(?m)^Protocol version: ` + v.want + `\s*$`).Match(out) {
				t.Fatalf("openssl output does not show protocol %s:\n%s", v.want, out)
			}
			if !strings.Contains(string(out), "CONNECTION ESTABLISHED") {
				t.Errorf("no established TLS connection:\n%s", out)
			}
		})
	}
}

// TestReloadSIGHUP: a new domain takes effect on SIGHUP, a session opened
// before the reload keeps working, and an invalid config is refused while
// the old one stays.
func TestReloadSIGHUP(t *testing.T) {
	requireTool(t, "swaks")
	r, mx, mail, cfg := maildirRelay(t, "")
	orig, err := os.ReadFile(cfg)
	if err != nil {
		t.Fatal(err)
	}

	res := swaks(t, "--server", mx, "--from", "alice@example.org", "--to", "carol@new.test")
	if res.Code != 24 {
		t.Fatalf("new.test before reload: exit %d, want refused at RCPT:\n%s", res.Code, res.Out)
	}

	// A session in the middle of a transaction across the reload.
	c := dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	c.Expect("MAIL FROM:<alice@example.org>", 250)
	c.Expect("RCPT TO:<bob@example.test>", 250)

	newDomain := fmt.Sprintf("  new.test:\n    deliver_to: \"maildir:%s\"\n", mail)
	writeFile(t, cfg, string(orig)+newDomain)
	mark := r.Mark()
	r.Signal(syscall.SIGHUP)
	r.WaitLog(mark, 5*time.Second, "configuration reloaded", "domains=2")
	if l := r.LogLines("needs a restart"); len(l) != 0 {
		t.Errorf("adding a domain was reported as needing a restart: %q", l)
	}

	c.Expect("RCPT TO:<carol@new.test>", 250)
	c.Expect("DATA", 354)
	c.Write("Subject: across the reload\r\n\r\nbody\r\n.\r\n")
	if code, text := c.Reply(); code != 250 {
		t.Fatalf("message of the session opened before the reload: %q, want 250", text)
	}
	c.Expect("QUIT", 221)
	for _, rc := range []string{"bob@example.test", "carol@new.test"} {
		m := waitMaildir(t, mail, rc, 1, 5*time.Second)
		if !strings.Contains(string(m[0]), "Subject: across the reload") {
			t.Errorf("%s got the wrong message:\n%s", rc, m[0])
		}
	}
	mustSend(t, "--server", mx, "--from", "alice@example.org", "--to", "dave@new.test")
	waitMaildir(t, mail, "dave@new.test", 1, 5*time.Second)

	// An invalid file (an error, and new.test dropped): refused, the
	// running configuration stays.
	writeFile(t, cfg, string(orig)+"queue:\n  workers: many\n")
	mark = r.Mark()
	r.Signal(syscall.SIGHUP)
	line := r.WaitLog(mark, 5*time.Second, "reload failed")
	if !strings.Contains(line, "queue.workers") {
		t.Errorf("reload failure does not name the bad key: %s", line)
	}
	time.Sleep(100 * time.Millisecond)
	if !r.Running() {
		t.Fatalf("relay exited after a SIGHUP with an invalid config")
	}
	mustSend(t, "--server", mx, "--from", "alice@example.org", "--to", "erin@new.test")
	waitMaildir(t, mail, "erin@new.test", 1, 5*time.Second)

	// The attachment policy is applied on SIGHUP, and not also reported
	// as needing a restart; a new postmaster needs one, and says so.
	changed := strings.Replace(string(orig), "  checks: {sender_domain: off}\n",
		"  checks: {sender_domain: off}\n  attachments:\n    policies:\n      default: {action: tempfail}\n", 1)
	changed = strings.Replace(changed, "postmaster: postmaster@relay.e2e.test", "postmaster: admin@example.test", 1)
	if changed == string(orig) {
		t.Fatal("the test's config edit did not apply")
	}
	writeFile(t, cfg, changed)
	mark = r.Mark()
	r.Signal(syscall.SIGHUP)
	r.WaitLog(mark, 5*time.Second, "configuration reloaded")
	var restart []string
	for _, l := range r.LogLines("needs a restart") {
		restart = append(restart, l[strings.Index(l, "key="):])
	}
	if !slices.Equal(restart, []string{"key=postmaster"}) {
		t.Errorf("reported as needing a restart: %q, want only the postmaster", restart)
	}
	exe := filepath.Join(t.TempDir(), "tool.exe")
	writeFile(t, exe, "MZ\x90\x00 a program")
	res = swaks(t, "--server", mx, "--from", "alice@example.org", "--to", "bob@example.test", "--attach", exe)
	if !strings.Contains(res.Out, "<** 451 ") {
		t.Errorf("a program after the policy became tempfail on SIGHUP: want 451:\n%s", res.Out)
	}
}

// TestDiskFull: when the spool cannot take a message, the client gets
// 451 4.3.0 (never 250), and the relay recovers once there is room.
func TestDiskFull(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a small tmpfs as the state directory")
	}
	requireTool(t, "swaks")
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", state).CombinedOutput(); err != nil {
		skipOrFail(t, "mount tmpfs (as root): %v: %s", err, out)
	}
	t.Cleanup(func() {
		if out, err := exec.Command("umount", state).CombinedOutput(); err != nil {
			t.Errorf("umount %s: %v: %s", state, err, out)
		}
	})
	mx := freeAddr(t)
	mail := filepath.Join(dir, "mail") // not on the tmpfs
	cfg := filepath.Join(dir, "relay.yaml")
	// Without the disk guard (TestDiskGuard has it), which would refuse at
	// MAIL what this test wants to see fail at the spool write.
	writeFile(t, cfg, maildirConfig(state, dns.Addr(), mx, mail, "")+"limits:\n  max_message_size: 10MB\nqueue:\n  min_free_space: 0\n")
	r := startRelay(t, cfg, mx)

	// 3 MB of body: more than the tmpfs holds, less than max_message_size.
	big := filepath.Join(dir, "big.eml")
	var b strings.Builder
	b.WriteString("Subject: too big for the disk\r\n\r\n")
	line := strings.Repeat("0123456789", 7) + "\r\n"
	for b.Len() < 3<<20 {
		b.WriteString(line)
	}
	writeFile(t, big, strings.TrimSuffix(b.String(), "\r\n"))

	res := swaks(t, "--server", mx, "--from", "alice@example.org", "--to", "bob@example.test", "--data", "@"+big)
	errs := res.ErrorReplies()
	if strings.Contains(res.Out, "queued as") || res.Code != 26 || len(errs) == 0 || !strings.HasPrefix(errs[0], "451 4.3.0") {
		t.Fatalf("message larger than the free space: exit %d, refusals %q; want 451 4.3.0 after DATA and never 250", res.Code, errs)
	}
	r.WaitLog(0, 5*time.Second, "cannot spool message")

	mustSend(t, "--server", mx, "--from", "alice@example.org", "--to", "bob@example.test", "--header", "Subject: small after disk full")
	msgs := waitMaildir(t, mail, "bob@example.test", 1, 5*time.Second)
	if len(msgs) != 1 || !strings.Contains(string(msgs[0]), "Subject: small after disk full") {
		t.Fatalf("bob@example.test: %d messages, want only the small one", len(msgs))
	}
}

// dialSMTPFrom is dialSMTP from a chosen loopback address (127.0.0.0/8 is
// all ours), for tests of per-client limits; it returns the first reply
// instead of insisting on 220.
func dialSMTPFrom(t *testing.T, addr, from string) (*rawSMTP, int, string) {
	t.Helper()
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	conn, err := d.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawSMTP{t: t, conn: conn, br: bufio.NewReader(conn)}
	code, text := c.Reply()
	return c, code, text
}

// Finding 4 of issue 11: idle connections from one address filled
// max_connections and everyone else got 421. With the default per-client
// limit (50 at a time) that client is refused beyond it, with a 421 that
// names the limit, and another address still gets in.
func TestOneClientCannotTakeEverySession(t *testing.T) {
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, maildirConfig(filepath.Join(dir, "state"), dns.Addr(), mx, filepath.Join(dir, "mail"), "")+
		"limits: {max_connections: 100}\n")
	r := startRelay(t, cfg, mx)

	held, refused := 0, 0
	for i := 0; i < 100; i++ {
		_, code, text := dialSMTPFrom(t, mx, "127.0.0.1")
		switch {
		case code == 220:
			held++
		case code == 421 && strings.HasPrefix(text, "421 4.7.0 ") && strings.Contains(text, "limit 50"):
			refused++
		default:
			t.Fatalf("connection %d from 127.0.0.1: %q, want 220 or 421 4.7.0 naming the limit of 50", i, text)
		}
	}
	c, code, text := dialSMTPFrom(t, mx, "127.0.0.2")
	if code != 220 {
		t.Fatalf("another client, while 127.0.0.1 holds %d sessions: %q, want 220", held, text)
	}
	c.Expect("EHLO other.e2e.test", 250)
	c.Expect("MAIL FROM:<alice@example.org>", 250)
	c.Expect("RCPT TO:<bob@example.test>", 250)
	if held > 50 || held < 45 || refused != 100-held {
		t.Errorf("127.0.0.1 holds %d sessions, %d refused; want at most the 50 of max_connections_per_client", held, refused)
	}
	if n := len(r.LogLines("msg=reject", "stage=connect", "check=max_connections_per_client", "client=127.0.0.1")); n != refused {
		t.Errorf("%d refusals logged with check=max_connections_per_client, want %d (one each)", n, refused)
	}
}

// Finding 4: a session kept alive with NOOPs. After max_junk_commands
// (default 100) commands that send no mail, the session ends with 421.
func TestJunkCommandsEndTheSession(t *testing.T) {
	r, mx, _, _ := maildirRelay(t, "")
	c := dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	for i := 0; i < 100; i++ {
		c.Expect([]string{"NOOP", "RSET", "VRFY bob", "HELP"}[i%4], map[int]int{0: 250, 1: 250, 2: 252, 3: 214}[i%4])
	}
	code, text := c.Cmd("NOOP")
	if code != 421 || !strings.HasPrefix(text, "421 4.7.0 ") || !strings.Contains(text, "100") {
		t.Fatalf("NOOP after 100 commands that send no mail: %q, want 421 4.7.0 naming the limit", text)
	}
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.br.ReadByte(); err == nil {
		t.Errorf("connection still open after the 421")
	}
	r.WaitLog(0, 5*time.Second, "msg=reject", "check=max_junk_commands")
}

// Finding 5: password guessing from many parallel connections. Failures
// count per user (default 10 in 15m) and per client address across
// connections; beyond that even the right password gets 454 4.7.0, and
// no password is checked (no bcrypt) at all.
func TestAuthGuessingAcrossConnections(t *testing.T) {
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	sub := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - name: submission
    address: %q
    role: outbound
    auth: required
    allow_insecure_auth: true
    client_limit_exceptions: [127.0.0.3]
outbound:
  users: [{name: otrs, password_hash: %q}]
`, sub, bcryptHash(t, "right")))
	r := startRelay(t, cfg, sub)
	plain := func(user, pass string) string {
		return "AUTH PLAIN " + base64.StdEncoding.EncodeToString([]byte("\x00"+user+"\x00"+pass))
	}

	const guesses = 30
	replies := make(chan string, guesses)
	var wg sync.WaitGroup
	for i := 0; i < guesses; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			d := net.Dialer{Timeout: 5 * time.Second}
			conn, err := d.Dial("tcp", sub)
			if err != nil {
				replies <- err.Error()
				return
			}
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(30 * time.Second))
			br := bufio.NewReader(conn)
			read := func() string {
				var last string
				for {
					l, err := br.ReadString('\n')
					if err != nil {
						return err.Error()
					}
					if last = strings.TrimRight(l, "\r\n"); len(last) < 4 || last[3] == ' ' {
						return last
					}
				}
			}
			read()
			fmt.Fprintf(conn, "EHLO guesser.e2e.test\r\n")
			read()
			fmt.Fprintf(conn, "%s\r\n", plain("otrs", fmt.Sprintf("guess%d", i)))
			replies <- read()
		}(i)
	}
	wg.Wait()
	close(replies)
	checked := 0
	for rep := range replies {
		switch {
		case strings.HasPrefix(rep, "535 5.7.8 "):
			checked++
		case strings.HasPrefix(rep, "454 4.7.0 "):
		default:
			t.Errorf("a wrong guess got %q, want 535 5.7.8 or 454 4.7.0", rep)
		}
	}
	if checked > 10 {
		t.Errorf("%d of %d parallel guesses had their password checked, want at most max_auth_failures_per_user (10)", checked, guesses)
	}
	for _, from := range []string{"127.0.0.1", "127.0.0.2"} {
		c, _, _ := dialSMTPFrom(t, sub, from)
		c.Expect("EHLO client.e2e.test", 250)
		if code, text := c.Cmd(plain("otrs", "right")); code != 454 || !strings.HasPrefix(text, "454 4.7.0 ") {
			t.Errorf("right password from %s while otrs is locked out: %q, want 454 4.7.0", from, text)
		}
	}
	// The office network (client_limit_exceptions) is never locked out.
	c, _, _ := dialSMTPFrom(t, sub, "127.0.0.3")
	c.Expect("EHLO office.e2e.test", 250)
	c.Expect(plain("otrs", "right"), 235)
	r.WaitLog(0, 5*time.Second, "msg=reject", "check=max_auth_failures_per_user")
}

// The groupware on an outbound listener's trusted_networks (one address,
// many sessions) is never throttled into losing mail: it may hold more
// sessions than max_connections_per_client and send past the rates, while
// another address on the same listener is limited.
func TestTrustedNetworksNotThrottled(t *testing.T) {
	dns := dnstest.NewServer(t, "")
	dir := t.TempDir()
	relay := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`limits: {max_connections: 100, max_message_rate_per_client: 2}
listeners:
  - name: smarthost
    address: %q
    role: outbound
    trusted_networks: [127.0.0.3/32]
domains:
  example.test: {deliver_to: "maildir:%s"}
`, relay, filepath.Join(dir, "mail")))
	startRelay(t, cfg, relay)
	var sessions []*rawSMTP
	for i := 0; i < 60; i++ {
		c, code, text := dialSMTPFrom(t, relay, "127.0.0.3")
		if code != 220 {
			t.Fatalf("session %d from the trusted groupware: %q", i, text)
		}
		sessions = append(sessions, c)
	}
	c := sessions[0]
	c.Expect("EHLO groupware.e2e.test", 250)
	for i := 0; i < 5; i++ {
		c.Expect("MAIL FROM:<app@example.test>", 250)
		c.Expect("RCPT TO:<user@example.test>", 250)
		c.Expect("DATA", 354)
		c.Write(fmt.Sprintf("Subject: %d\r\n\r\nbody\r\n.\r\n", i))
		if code, text := c.Reply(); code != 250 {
			t.Fatalf("message %d from the groupware: %q", i, text)
		}
	}
	// Another address is limited on the same listener (it is refused
	// relaying anyway, but the rate comes first).
	o, _, _ := dialSMTPFrom(t, relay, "127.0.0.1")
	o.Expect("EHLO other.e2e.test", 250)
	o.Cmd("MAIL FROM:<x@example.org>")
	o.Cmd("RSET")
	o.Cmd("MAIL FROM:<x@example.org>")
	o.Cmd("RSET")
	if code, text := o.Cmd("MAIL FROM:<x@example.org>"); code != 450 || !strings.HasPrefix(text, "450 4.7.1 ") {
		t.Errorf("third MAIL from an untrusted client with max_message_rate_per_client 2: %q, want 450 4.7.1", text)
	}
}
