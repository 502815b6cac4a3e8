package e2e

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// A private Dovecot instance on loopback speaking LMTP only, as the real
// downstream an inbound relay delivers to (the setup issue 14's finding
// came from). It has its own base_dir, state, log and maildirs under a
// temporary directory, users from a passwd-file the test can extend while
// it runs, and is stopped when the test ends. Dovecot answers an unknown
// recipient "550 5.1.1 <addr> User doesn't exist".

type dovecotInstance struct {
	Addr string // its LMTP listener, 127.0.0.1:port

	base  string
	users string // the passwd-file (passdb and userdb)
	log   string
	conf  string
	uid   string // mail owner of every user: nobody
	gid   string

	mu    sync.Mutex
	names []string
}

// startDovecot runs a Dovecot LMTP server whose users are the given
// addresses. It needs root, as Dovecot's master does (it starts its
// auth and lmtp processes as other users).
func startDovecot(t *testing.T, users ...string) *dovecotInstance {
	t.Helper()
	for _, tool := range []string{"dovecot", "doveadm"} {
		if _, err := exec.LookPath(tool); err != nil {
			skipOrFail(t, "%s not found on PATH (it is in /usr/sbin on Debian); install Debian package dovecot-lmtpd, see test.sh", tool)
		}
	}
	if os.Geteuid() != 0 {
		skipOrFail(t, "a private Dovecot instance needs root")
	}
	// Dovecot's own system users (made by the package) run its auth and
	// login processes; nobody owns the mail.
	for _, u := range []string{"dovecot", "dovenull"} {
		if _, err := user.Lookup(u); err != nil {
			skipOrFail(t, "system user %s missing (Debian package dovecot-core makes it): %v", u, err)
		}
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatalf("user nobody: %v", err)
	}
	// Not t.TempDir(): the auth process (user dovecot) reads the
	// passwd-file and lmtp (as nobody) writes the maildirs, through every
	// parent directory.
	base, err := os.MkdirTemp("", "securerelay-dovecot-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(base) })
	if err := os.Chmod(base, 0o755); err != nil {
		t.Fatal(err)
	}
	d := &dovecotInstance{
		Addr:  freeAddr(t),
		base:  base,
		users: filepath.Join(base, "users"),
		log:   filepath.Join(base, "dovecot.log"),
		uid:   nobody.Uid,
		gid:   nobody.Gid,
	}
	for _, dir := range []string{"run", "state", "mail"} {
		if err := os.Mkdir(filepath.Join(base, dir), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	uid, _ := strconv.Atoi(nobody.Uid)
	gid, _ := strconv.Atoi(nobody.Gid)
	if err := os.Chown(filepath.Join(base, "mail"), uid, gid); err != nil {
		t.Fatal(err)
	}
	d.names = users
	d.writeUsers(t)
	_, port, _ := net.SplitHostPort(d.Addr)
	conf := filepath.Join(base, "dovecot.conf")
	d.conf = conf
	// The instance name keeps its processes apart from a system Dovecot's
	// in ps; first/last_valid_uid allow nobody and no one else.
	writeFile(t, conf, fmt.Sprintf(`instance_name = securerelay-e2e-%[2]s
base_dir = %[1]s/run
state_dir = %[1]s/state
log_path = %[1]s/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
default_internal_user = dovecot
default_login_user = dovenull
first_valid_uid = %[3]s
last_valid_uid = %[3]s
mail_location = maildir:~/Maildir
passdb {
  driver = passwd-file
  args = %[4]s
}
userdb {
  driver = passwd-file
  args = %[4]s
}
service lmtp {
  inet_listener lmtp {
    address = 127.0.0.1
    port = %[2]s
  }
}
`, base, port, nobody.Uid, d.users))

	cmd := exec.Command("dovecot", "-F", "-c", conf)
	var out logBuffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("dovecot: %v", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		// SIGTERM makes the master stop its children; the whole process
		// group is killed if it does not within the bound.
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(15 * time.Second):
			t.Errorf("dovecot did not exit within 15s of SIGTERM; killing it")
			syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-exited
		}
		if t.Failed() {
			t.Logf("dovecot output:\n%s\ndovecot log:\n%s", out.String(), d.Log())
		}
	})
	deadline := time.Now().Add(15 * time.Second)
	for {
		c, err := net.DialTimeout("tcp", d.Addr, time.Second)
		if err == nil {
			c.Close()
			return d
		}
		select {
		case <-exited:
			t.Fatalf("dovecot exited before listening on %s:\n%s\n%s", d.Addr, out.String(), d.Log())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("dovecot does not listen on %s after 15s: %v\n%s\n%s", d.Addr, err, out.String(), d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// writeUsers replaces the passwd-file (atomically; Dovecot reads it again
// when it changes). Readable by all: Dovecot's auth process runs as the
// dovecot user.
func (d *dovecotInstance) writeUsers(t *testing.T) {
	t.Helper()
	var b strings.Builder
	for _, n := range d.names {
		// user:password:uid:gid:gecos:home:shell; nobody logs in.
		fmt.Fprintf(&b, "%s:{PLAIN}unused:%s:%s::%s::\n", n, d.uid, d.gid, d.home(n))
	}
	tmp := d.users + ".tmp"
	if err := os.WriteFile(tmp, []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, d.users); err != nil {
		t.Fatal(err)
	}
}

// AddUser makes addr a user Dovecot accepts mail for, and returns once
// Dovecot's auth process knows it: it checks the passwd-file for changes
// at most once a second, so a change within the second of the last
// lookup goes unseen until the next.
func (d *dovecotInstance) AddUser(t *testing.T, addr string) {
	t.Helper()
	d.mu.Lock()
	d.names = append(d.names, addr)
	d.writeUsers(t)
	d.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		out, err := exec.CommandContext(ctx, "doveadm", "-c", d.conf, "user", addr).CombinedOutput()
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("dovecot does not know %s 10s after it was added to the passwd-file: doveadm user: %v\n%s", addr, err, out)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func (d *dovecotInstance) home(addr string) string {
	return filepath.Join(d.base, "mail", addr)
}

// Mailbox returns the messages in addr's INBOX (maildir new/ and cur/).
func (d *dovecotInstance) Mailbox(t *testing.T, addr string) []string {
	t.Helper()
	var msgs []string
	for _, sub := range []string{"new", "cur"} {
		dir := filepath.Join(d.home(addr), "Maildir", sub)
		ents, err := os.ReadDir(dir)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ents {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			if err != nil {
				t.Fatal(err)
			}
			msgs = append(msgs, string(b))
		}
	}
	return msgs
}

// Log is what the instance logged so far.
func (d *dovecotInstance) Log() string {
	b, _ := os.ReadFile(d.log)
	return string(b)
}
