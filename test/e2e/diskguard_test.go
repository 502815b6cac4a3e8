package e2e

import (
	"fmt"
	"io"
	"net/http"
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
//
// /healthz and /readyz (metrics.address) follow: ready, then 503 naming
// the free space while the file system is nearly full, then ready again.
func TestDiskGuard(t *testing.T) {
	r, sub, mail, inside := startTmpfsRelay(t, "3MB")
	ready := func(want int, body string) {
		t.Helper()
		for _, p := range []struct {
			path string
			code int
			body string
		}{{"/healthz", 200, "ok"}, {"/readyz", want, body}} {
			resp, err := http.Get("http://" + r.metrics + p.path)
			if err != nil {
				t.Fatalf("GET %s: %v", p.path, err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != p.code || !strings.Contains(string(b), p.body) {
				t.Errorf("GET %s: %d %q, want %d with %q", p.path, resp.StatusCode, b, p.code, p.body)
			}
		}
	}
	ready(200, "ready")

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
	ready(503, "below queue.min_free_space")

	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	ready(200, "ready")
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
func startTmpfsRelay(t *testing.T, minFree string) (r *tmpfsRelay, sub, mail, inside string) {
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
	metrics := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(state, dns.Addr())+fmt.Sprintf(`limits: {max_message_size: 1MB}
queue: {min_free_space: %s}
metrics: {address: %q}
listeners:
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], auth: "off"}
domains:
  example.test:
    deliver_to: "maildir:%s"
    recipients: {list: [bob]}
`, minFree, metrics, sub, mail))
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "sh", "-c",
		`mount -t tmpfs -o size=8m,mode=0700 tmpfs "$0" && exec "$1" serve --config "$2"`, state, relayBin, cfg)
	rel := startRelayCmd(t, cmd, cfg, sub, metrics)
	return &tmpfsRelay{rel, metrics}, sub, mail, fmt.Sprintf("/proc/%d/root%s", rel.cmd.Process.Pid, state)
}

// tmpfsRelay is a relay with its metrics listener's address.
type tmpfsRelay struct {
	*Relay
	metrics string
}
