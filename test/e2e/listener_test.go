package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
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
	writeFile(t, cfg, maildirConfig(state, dns.Addr(), mx, mail, "")+"limits:\n  max_message_size: 10MB\n")
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
