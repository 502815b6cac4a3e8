package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
)

// TestDiskGuard fills a small file system (TestDiskFull, beside it, fills
// one to the last byte without the guard): the relay's state_dir is an
// 8 MiB tmpfs (mounted in a private mount namespace, so the host sees
// nothing), queue.min_free_space 3MB. With a 6 MiB file beside the spool,
// MAIL FROM gets 452 4.3.1 before any data, logged with
// check=min_free_space; with the file gone, the same client's next
// message is accepted and delivered, without a restart.
func TestDiskGuard(t *testing.T) {
	r, sub, mail, inside := startTmpfsRelay(t, "3MB")

	mustSend(t, "--server", sub, "--from", "alice@example.test", "--to", "bob@example.test")
	waitMaildir(t, mail, "bob@example.test", 1, 30*time.Second)

	filler := filepath.Join(inside, "filler")
	if err := os.WriteFile(filler, make([]byte, 6<<20), 0o600); err != nil {
		t.Fatalf("filling the tmpfs: %v", err)
	}
	c := dialSMTP(t, sub)
	c.Expect("EHLO client.e2e.test", 250)
	code, text := c.Cmd("MAIL FROM:<alice@example.test>")
	if code != 452 || !strings.HasPrefix(text, "452 4.3.1 ") {
		t.Fatalf("MAIL with the spool's file system nearly full: %q, want 452 4.3.1", text)
	}
	r.WaitLog(0, 5*time.Second, "msg=reject", "level=WARN", "check=min_free_space", "code=452")

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	c.Expect("MAIL FROM:<alice@example.test>", 250)
	c.Expect("RCPT TO:<bob@example.test>", 250)
	c.Expect("DATA", 354)
	c.Expect("Subject: room again\r\n\r\nbody\r\n.", 250)
	c.Expect("QUIT", 221)
	waitMaildir(t, mail, "bob@example.test", 2, 30*time.Second)
}

// startTmpfsRelay runs a relay whose state_dir is an 8 MiB tmpfs in a
// private mount namespace, with queue.min_free_space minFree; inside is
// state_dir as the relay sees it (through /proc/PID/root).
func startTmpfsRelay(t *testing.T, minFree string) (r *Relay, sub, mail, inside string) {
	t.Helper()
	if os.Geteuid() != 0 {
		skipOrFail(t, "mounting a tmpfs in a private mount namespace needs root")
	}
	requireTool(t, "unshare")
	requireTool(t, "swaks")
	dns := dnstest.NewServer(t, "example.org. A 192.0.2.1\n")
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	mail = filepath.Join(dir, "mail")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	sub = freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(state, dns.Addr())+fmt.Sprintf(`limits: {max_message_size: 1MB}
queue: {min_free_space: %s}
listeners:
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], auth: "off"}
domains:
  example.test:
    deliver_to: "maildir:%s"
    recipients: {list: [bob]}
`, minFree, sub, mail))
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs -o size=8m,mode=0700 tmpfs "$0" && exec "$1" serve --config "$2"`, state, relayBin, cfg)
	r = startRelayCmd(t, cmd, cfg, sub)
	return r, sub, mail, fmt.Sprintf("/proc/%d/root%s", r.cmd.Process.Pid, state)
}
