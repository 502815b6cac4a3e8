package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
)

// TestDebianPackage builds the .deb with the README's one command
// (dist/build-deb.sh), installs it with dpkg -i, checks what it put where,
// installs it again over an admin's change to the conffile (kept), runs
// the relay as the unit does (its ExecStart as its User, READY=1 on
// NOTIFY_SOCKET), sends a message through it, removes the package (spool
// and configuration kept) and purges it (gone).
//
// There is no systemd as PID 1 here, so the unit's sandbox itself is not
// exercised (systemd-analyze verify checks the unit file); the relay runs
// as the unprivileged user on the packaged state_dir. The packaged
// configuration is used with loopback addresses instead of :25 and
// 127.0.0.1:587, a host name (the system's need not be fully qualified),
// the test's DNS server and a route to the test's next hop.
//
// It needs root and dpkg (CI runs as root); it refuses to touch a
// securerelay package it did not install, and removes what it installed,
// the user included, also when it fails.
func TestDebianPackage(t *testing.T) {
	if os.Geteuid() != 0 {
		skipOrFail(t, "installing a .deb needs root")
	}
	for _, tool := range []string{"dpkg", "dpkg-query", "dpkg-deb", "setpriv", "swaks", "go"} {
		requireTool(t, tool)
	}
	if out, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "securerelay").Output(); strings.Contains(string(out), "installed") {
		skipOrFail(t, "a securerelay package is installed on this machine already (%s); not replacing it", out)
	}
	// Two worktrees running this test at once would fight over dpkg's lock
	// and over the one package name.
	lockMachine(t, "/run/lock/securerelay-e2e-deb.lock", 10*time.Minute)

	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	build := runCmd(t, 8*time.Minute, root, filepath.Join(root, "dist/build-deb.sh"), out)
	deb := strings.TrimSpace(lastLine(build))
	if !strings.HasSuffix(deb, ".deb") {
		t.Fatalf("dist/build-deb.sh printed %q, want the path of the .deb", build)
	}

	_, userErr := user.Lookup("securerelay")
	hadUser := userErr == nil
	_, stateErr := os.Stat("/var/lib/securerelay")
	hadState := stateErr == nil
	t.Cleanup(func() {
		// Leave the machine as it was, whatever failed.
		exec.Command("dpkg", "--purge", "securerelay").Run()
		if !hadUser {
			exec.Command("userdel", "securerelay").Run()
			exec.Command("groupdel", "securerelay").Run()
		}
		if !hadState {
			os.RemoveAll("/var/lib/securerelay")
		}
	})
	install := runCmd(t, 2*time.Minute, "", "dpkg", "-i", deb)

	// What dpkg -i left.
	if fi, err := os.Stat("/usr/bin/securerelay"); err != nil || fi.Mode().Perm() != 0o755 {
		t.Errorf("/usr/bin/securerelay: %v %v, want mode 0755", fi, err)
	}
	if v := runCmd(t, 10*time.Second, "", "/usr/bin/securerelay", "version"); !strings.Contains(v, "0~git") && !strings.Contains(v, "securerelay ") {
		t.Errorf("securerelay version: %q", v)
	}
	unitPath := "/usr/lib/systemd/system/securerelay.service"
	unit, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	if conf := runCmd(t, 10*time.Second, "", "dpkg-query", "-W", "-f=${Conffiles}", "securerelay"); !strings.Contains(conf, "/etc/securerelay/config.yaml") {
		t.Errorf("conffiles %q: /etc/securerelay/config.yaml is not a conffile", conf)
	}
	u, err := user.Lookup("securerelay")
	if err != nil {
		t.Fatalf("postinst made no user securerelay: %v", err)
	}
	uid, _ := strconv.Atoi(u.Uid)
	gid, _ := strconv.Atoi(u.Gid)
	if uid == 0 || uid >= 1000 {
		t.Errorf("user securerelay has UID %d, want a system user (1..999)", uid)
	}
	if sh := passwdShell(t, "securerelay"); !strings.HasSuffix(sh, "nologin") && !strings.HasSuffix(sh, "false") {
		t.Errorf("user securerelay has the shell %q, want none", sh)
	}
	checkOwner(t, "/var/lib/securerelay", uid, gid, fs.ModeDir|0o700)
	checkOwner(t, "/etc/securerelay/config.yaml", 0, gid, 0o640)
	if _, err := os.Lstat("/etc/systemd/system/multi-user.target.wants/securerelay.service"); err != nil {
		t.Errorf("the unit is not enabled: %v", err)
	}
	// The packaged configuration loads as it is but for the host name.
	cc, code, _ := runCmdCode(t, 10*time.Second, "", "/usr/bin/securerelay", "check-config", "--config", "/etc/securerelay/config.yaml")
	if code != 0 && !strings.Contains(cc, "hostname:") {
		t.Errorf("check-config of the packaged configuration: exit %d:\n%s", code, cc)
	}
	if _, err := exec.LookPath("systemd-analyze"); err == nil {
		// Unit-file syntax, directives this systemd knows, ExecStart exists.
		runCmd(t, time.Minute, "", "systemd-analyze", "verify", unitPath)
		// The sandbox stays tight: systemd's exposure score, 0 to 10, at
		// most 2 (it is 1.6; "OK" ends at 4.9).
		runCmd(t, time.Minute, "", "systemd-analyze", "security", "--offline=yes", "--threshold=20", unitPath)
	} else if inCI() {
		t.Error("systemd-analyze not found (CI=true)")
	}
	t.Logf("dpkg -i:\n%s", install)

	// An upgrade (here: the same package again) keeps the admin's
	// changes to the conffile, and its owner and mode.
	const note = "# changed by the admin\n"
	if err := os.WriteFile("/etc/securerelay/config.yaml", append(mustRead(t, "/etc/securerelay/config.yaml"), note...), 0o640); err != nil {
		t.Fatal(err)
	}
	runCmd(t, 2*time.Minute, "", "dpkg", "-i", deb)
	if !bytes.HasSuffix(mustRead(t, "/etc/securerelay/config.yaml"), []byte(note)) {
		t.Error("reinstalling the package replaced the admin's config.yaml")
	}
	checkOwner(t, "/etc/securerelay/config.yaml", 0, gid, 0o640)

	// The relay as the unit runs it.
	execStart, runAs := unitValue(t, unit, "ExecStart"), unitValue(t, unit, "User")
	const packaged = "--config /etc/securerelay/config.yaml"
	if !strings.Contains(execStart, packaged) || runAs != "securerelay" {
		t.Fatalf("ExecStart=%s User=%s: want %q as securerelay", execStart, runAs, packaged)
	}
	peer := startTestServer(t, listenLoopback(t), serverOptions{})
	dns := dnstest.NewServer(t, "")
	mx, sub := freeAddr(t), freeAddr(t)
	pkgCfg, err := os.ReadFile("/etc/securerelay/config.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cfg := string(pkgCfg)
	for _, r := range [][2]string{
		{`address: ":25"`, fmt.Sprintf("address: %q", mx)},
		{`address: "127.0.0.1:587"`, fmt.Sprintf("address: %q", sub)},
		{"  routes: []\n", fmt.Sprintf("  routes: [{match: \"*\", next_hop: \"smtp://%s\"}]\n  connect_timeout: 5s\n  command_timeout: 10s\n", peer.Addr)},
	} {
		if strings.Count(cfg, r[0]) != 1 {
			t.Fatalf("the packaged config.yaml no longer has exactly one %q; adapt this test", r[0])
		}
		cfg = strings.Replace(cfg, r[0], r[1], 1)
	}
	cfg = fmt.Sprintf("hostname: relay.e2e.test\ndns: {resolver: %q, timeout: 2s}\n", dns.Addr()) + cfg
	// Readable by the relay's user, as /etc/securerelay is (t.TempDir's
	// parent is private too).
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfgPath := filepath.Join(dir, "config.yaml")
	writeFile(t, cfgPath, cfg)
	if err := os.Chown(cfgPath, 0, gid); err != nil {
		t.Fatal(err)
	}
	os.Chmod(cfgPath, 0o640)
	notify := listenNotifyAs(t, filepath.Join(dir, "notify"))

	args := append([]string{"--reuid=securerelay", "--regid=securerelay", "--init-groups", "--no-new-privs", "--"},
		strings.Fields(strings.Replace(execStart, packaged, "--config "+cfgPath, 1))...)
	cmd := exec.Command("setpriv", args...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+filepath.Join(dir, "notify"))
	r := startRelayCmd(t, cmd, cfgPath)
	if got := readDatagram(t, notify, 20*time.Second); !strings.HasPrefix(got, "READY=1") {
		t.Fatalf("NOTIFY_SOCKET: %q, want READY=1", got)
	}

	res := mustSend(t, "--server", sub, "--from", "app@example.org", "--to", "someone@partner.test", "--header", "Subject: through the package")
	m := peer.Next(t, 30*time.Second)
	if len(m.To) != 1 || m.To[0] != "someone@partner.test" || !bytes.Contains(m.Data, []byte("Subject: through the package")) {
		t.Errorf("the next hop got %v, want the message for someone@partner.test", m.To)
	}
	r.WaitLog(0, 10*time.Second, "msg=sent", "queue_id="+res.QueueID())
	// Port 25 relays for no one.
	if open := swaks(t, "--server", mx, "--from", "spammer@example.org", "--to", "victim@partner.test"); open.Code == 0 || len(open.ErrorReplies()) == 0 {
		t.Errorf("the MX listener of the packaged configuration relayed:\n%s", open.Out)
	}
	// The spool and the control socket are the relay user's, in state_dir.
	for _, p := range []string{"/var/lib/securerelay/spool", "/var/lib/securerelay/control.sock"} {
		var st syscall.Stat_t
		if err := syscall.Stat(p, &st); err != nil || int(st.Uid) != uid {
			t.Errorf("%s: %v, owner %d, want the user securerelay (%d)", p, err, st.Uid, uid)
		}
	}
	r.Stop()

	// dpkg -r keeps the spool and the configuration; only --purge
	// deletes them.
	runCmd(t, 2*time.Minute, "", "dpkg", "-r", "securerelay")
	for _, p := range []string{"/usr/bin/securerelay", unitPath} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there after dpkg -r (%v)", p, err)
		}
	}
	for _, p := range []string{"/var/lib/securerelay/spool", "/etc/securerelay/config.yaml"} {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("dpkg -r removed %s: %v", p, err)
		}
	}
	runCmd(t, 2*time.Minute, "", "dpkg", "--purge", "securerelay")
	for _, p := range []string{"/usr/bin/securerelay", unitPath, "/etc/securerelay",
		"/var/lib/securerelay", "/etc/systemd/system/multi-user.target.wants/securerelay.service"} {
		if _, err := os.Lstat(p); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s is still there after dpkg --purge (%v)", p, err)
		}
	}
	if st, _ := exec.Command("dpkg-query", "-W", "-f=${Status}", "securerelay").Output(); strings.Contains(string(st), "installed") {
		t.Errorf("dpkg-query after purge: %s", st)
	}
}

// lockMachine holds an exclusive flock on path until the test ends,
// waiting at most wait for it.
func lockMachine(t *testing.T, path string, wait time.Duration) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(wait)
	for syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) != nil {
		if time.Now().After(deadline) {
			f.Close()
			t.Fatalf("%s held by another test for %v", path, wait)
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Cleanup(func() { f.Close() })
}

// runCmd runs a command with a time-out and fails the test unless it exits
// 0; it returns stdout and stderr together.
func runCmd(t *testing.T, timeout time.Duration, dir, name string, args ...string) string {
	t.Helper()
	out, code, err := runCmdCode(t, timeout, dir, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d %v\n%s", name, strings.Join(args, " "), code, err, out)
	}
	return out
}

func runCmdCode(t *testing.T, timeout time.Duration, dir, name string, args ...string) (string, int, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("%s %s: no exit within %v\n%s", name, strings.Join(args, " "), timeout, out)
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		code = -1
	}
	return string(out), code, err
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// unitValue is the value of key= in the [Service] section of a unit file.
func unitValue(t *testing.T, unit []byte, key string) string {
	t.Helper()
	for _, l := range strings.Split(string(unit), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(l), key+"="); ok {
			return v
		}
	}
	t.Fatalf("the unit has no %s=", key)
	return ""
}

func passwdShell(t *testing.T, name string) string {
	t.Helper()
	out := runCmd(t, 10*time.Second, "", "getent", "passwd", name)
	f := strings.Split(strings.TrimSpace(out), ":")
	return f[len(f)-1]
}

func checkOwner(t *testing.T, path string, uid, gid int, mode fs.FileMode) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Errorf("%s: %v", path, err)
		return
	}
	st := fi.Sys().(*syscall.Stat_t)
	if int(st.Uid) != uid || int(st.Gid) != gid || fi.Mode() != mode {
		t.Errorf("%s: owner %d:%d mode %v, want %d:%d %v", path, st.Uid, st.Gid, fi.Mode(), uid, gid, mode)
	}
}

// listenNotifyAs is systemd's notification socket, writable by the
// relay's user.
func listenNotifyAs(t *testing.T, path string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	return c
}

func readDatagram(t *testing.T, c *net.UnixConn, timeout time.Duration) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(timeout))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("NOTIFY_SOCKET: %v", err)
	}
	return string(buf[:n])
}
