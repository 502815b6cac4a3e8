package load

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// startRelay builds the binary, writes a config with one inbound listener
// on addr (limits is the YAML of the limits: block) and runs it until the
// benchmark ends.
func startRelay(b *testing.B, addr, limits string) *exec.Cmd {
	b.Helper()
	dir := b.TempDir()
	bin := filepath.Join(dir, "securerelay")
	if out, err := exec.Command("go", "build", "-o", bin, "securerelay/cmd/securerelay").CombinedOutput(); err != nil {
		b.Fatalf("build: %v\n%s", err, out)
	}
	cfg := filepath.Join(dir, "c.yaml")
	os.WriteFile(cfg, []byte(fmt.Sprintf(`hostname: relay.load.test
state_dir: %s
dns: {resolver: "127.0.0.1:1"}
log: {level: warn}
limits: %s
listeners: [{name: mx, address: %q, role: inbound}]
domains: {example.test: {deliver_to: "maildir:%s/mail"}}
inbound: {checks: {sender_domain: "off"}}
`, filepath.Join(dir, "state"), limits, addr, dir)), 0o600)
	cmd := exec.Command(bin, "serve", "--config", cfg)
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	for i := 0; i < 100; i++ {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return cmd
}

// connectFrom opens a connection from a loopback address and returns it
// with the first reply line.
func connectFrom(addr, from string) (net.Conn, string, error) {
	d := net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
	c, err := d.Dial("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	c.SetReadDeadline(time.Now().Add(15 * time.Second))
	l, err := bufio.NewReader(c).ReadString('\n')
	c.SetReadDeadline(time.Time{})
	return c, strings.TrimRight(l, "\r\n"), err
}
