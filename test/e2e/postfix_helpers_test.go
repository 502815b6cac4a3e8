package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// A private Postfix instance on loopback, as a real peer: the next hop
// the relay delivers to, or the previous hop that relays to it. It is
// run the way /work/shared/bench/setup-postfix.sh runs one (its own
// config directory, queue and log under a temporary directory, listeners
// on 127.0.0.1 only, everything relayed to relayhost), and stopped when
// the test ends.

// postfixOptions shape one instance.
type postfixOptions struct {
	// Relayhost is host:port where Postfix sends everything it accepts.
	Relayhost string
	// Main adds main.cf lines (e.g. "smtputf8_enable = no").
	Main []string
}

type postfixInstance struct {
	Addr string // its smtpd, 127.0.0.1:port
	conf string
	log  string
}

// startPostfix runs a Postfix instance; it needs root (the master starts
// as root and its daemons run as the postfix user), as Postfix itself.
func startPostfix(t *testing.T, o postfixOptions) *postfixInstance {
	t.Helper()
	requireTool(t, "postfix")
	if os.Geteuid() != 0 {
		skipOrFail(t, "a private Postfix instance needs root")
	}
	// Not t.TempDir(): Postfix's daemons run as the postfix user and must
	// reach the queue through every parent directory.
	base, err := os.MkdirTemp("", "securerelay-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	p := &postfixInstance{Addr: freeAddr(t), conf: filepath.Join(base, "etc"), log: filepath.Join(base, "log", "maillog")}
	for _, d := range []string{"etc", "log", "queue"} {
		if err := os.MkdirAll(filepath.Join(base, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	main := []string{
		"compatibility_level = 3.6",
		"queue_directory = " + filepath.Join(base, "queue"),
		"data_directory = " + filepath.Join(base, "data"),
		"myhostname = postfix.e2e.test",
		"mydomain = e2e.test",
		"myorigin = $myhostname",
		"mydestination =",
		"inet_interfaces = 127.0.0.1",
		"inet_protocols = ipv4",
		"mynetworks = 127.0.0.0/8",
		"relay_domains =",
		"relayhost = [" + strings.Replace(o.Relayhost, ":", "]:", 1),
		"smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination",
		"local_recipient_maps =",
		"local_transport = error:5.1.1 local delivery disabled",
		"alias_maps =",
		"alias_database =",
		"biff = no",
		"smtpd_tls_security_level = none",
		"smtp_tls_security_level = none",
		"maillog_file_prefixes = " + base,
		"maillog_file = " + p.log,
		// Deliver at once, and give up on the recorder quickly if it is
		// gone: the test waits for what arrives, not for retries.
		"minimal_backoff_time = 1s",
		"maximal_backoff_time = 2s",
		"queue_run_delay = 1s",
	}
	main = append(main, o.Main...)
	master := fmt.Sprintf(`%s inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
`, p.Addr)
	writeFile(t, filepath.Join(p.conf, "main.cf"), strings.Join(main, "\n")+"\n")
	writeFile(t, filepath.Join(p.conf, "master.cf"), master)
	t.Cleanup(func() {
		p.stop(t)
		if t.Failed() {
			if b, err := os.ReadFile(p.log); err == nil {
				t.Logf("postfix log:\n%s", b)
			}
		}
		os.RemoveAll(base)
	})
	if out, err := p.run("start"); err != nil {
		t.Fatalf("postfix start: %v\n%s", err, out)
	}
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", p.Addr, time.Second)
		if err == nil {
			c.Close()
			return p
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(p.log)
			t.Fatalf("postfix does not listen on %s after 15s: %v\n%s", p.Addr, err, b)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func (p *postfixInstance) run(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "postfix", append([]string{"-c", p.conf}, args...)...).CombinedOutput()
	return string(out), err
}

// stop stops the master and waits (bounded) until its pid file's process
// is gone, so that the next test may reuse nothing of it.
func (p *postfixInstance) stop(t *testing.T) {
	out, err := p.run("stop")
	if err != nil && !strings.Contains(out, "not running") {
		t.Logf("postfix stop: %v\n%s", err, out)
	}
	pidFile := filepath.Join(filepath.Dir(p.conf), "queue", "pid", "master.pid")
	for range 100 {
		b, err := os.ReadFile(pidFile)
		if err != nil {
			return
		}
		var pid int
		if _, err := fmt.Sscan(strings.TrimSpace(string(b)), &pid); err != nil || pid <= 0 {
			return
		}
		if err := syscall.Kill(pid, 0); err != nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Errorf("postfix master did not exit")
}

// Log is what the instance logged so far.
func (p *postfixInstance) Log() string {
	b, _ := os.ReadFile(p.log)
	return string(b)
}

// WaitLog waits until the log has a line with every one of subs.
func (p *postfixInstance) WaitLog(t *testing.T, timeout time.Duration, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, l := range strings.Split(p.Log(), "\n") {
			if containsAll(l, subs) {
				return l
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no postfix log line with %q within %v:\n%s", subs, timeout, p.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}
