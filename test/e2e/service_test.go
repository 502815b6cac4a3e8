package e2e

import (
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
)

// TestServeNotifiesSystemd: run as systemd runs a Type=notify unit (the
// packaged one, dist/securerelay.service), the relay sends READY=1 only
// when its listeners accept connections, RELOADING=1 and READY=1 around a
// SIGHUP reload (systemctl reload), and STOPPING=1 on SIGTERM.
func TestServeNotifiesSystemd(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "notify")
	n := listenNotifyAs(t, sock)
	next := func(want string) {
		t.Helper()
		if got := readDatagram(t, n, 15*time.Second); !strings.HasPrefix(got, want) {
			t.Fatalf("NOTIFY_SOCKET got %q, want %q first", got, want)
		}
	}

	dns := dnstest.NewServer(t, "")
	mx, sub := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+`listeners:
  - {name: mx, address: "`+mx+`", role: inbound}
  - {name: submission, address: "`+sub+`", role: outbound, trusted_networks: [127.0.0.0/8], auth: off}
domains:
  example.test: {deliver_to: "maildir:`+filepath.Join(dir, "mail")+`"}
`)
	cmd := exec.Command(relayBin, "serve", "--config", cfg)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+sock)
	r := startRelayCmd(t, cmd, cfg) // no addresses: READY=1 is the signal

	next("READY=1")
	// READY=1 promises bound listeners: one dial each, no retry.
	for _, a := range []string{mx, sub} {
		c, err := net.DialTimeout("tcp", a, 2*time.Second)
		if err != nil {
			t.Fatalf("READY=1 was sent but %s does not accept: %v", a, err)
		}
		c.Close()
	}

	mark := r.Mark()
	r.Signal(syscall.SIGHUP)
	next("RELOADING=1")
	next("READY=1")
	r.WaitLog(mark, 5*time.Second, "configuration reloaded")

	r.Stop()
	next("STOPPING=1")
}
