package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestDNSBLWithRbldnsd: a real DNSBL server, rbldnsd, lists 127.0.0.1 in
// bl.test; the relay asks it (as its resolver) and refuses the client at
// EHLO with 550 5.7.1 naming the list. With 127.0.0.1 on the allow list the
// same client gets through screening.
func TestDNSBLWithRbldnsd(t *testing.T) {
	requireTool(t, "rbldnsd")
	dir := t.TempDir()
	writeFile(t, filepath.Join(dir, "bl.data"), ":127.0.0.2:listed for testing\n127.0.0.1\n")
	addr := freeAddr(t)
	host, port, _ := strings.Cut(addr, ":")
	// As root, rbldnsd switches to its own user, which cannot read the
	// test's private temporary directory: give it a readable one.
	zdir := filepath.Join(dir, "zones")
	os.Mkdir(zdir, 0o755)
	os.Chmod(dir, 0o755)
	os.Rename(filepath.Join(dir, "bl.data"), filepath.Join(zdir, "bl.data"))
	os.Chmod(filepath.Join(zdir, "bl.data"), 0o644)
	cmd := exec.Command("rbldnsd", "-n", "-b", host+"/"+port, "-w", zdir, "bl.test:ip4set:bl.data")
	out := &logBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })

	for _, allow := range []bool{false, true} {
		mx := freeAddr(t)
		cfg := filepath.Join(dir, fmt.Sprintf("relay-%v.yaml", allow))
		allowList := "[]"
		if allow {
			allowList = "[127.0.0.1]"
		}
		writeFile(t, cfg, configHead(filepath.Join(dir, fmt.Sprintf("state-%v", allow)), addr)+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  example.test: {deliver_to: "maildir:%s"}
outbound:
%s`, mx, filepath.Join(dir, "mail"), outboundTimeouts))
		// configHead ends with the inbound block: add screening to it.
		writeFile(t, cfg, strings.Replace(readFile(t, cfg), "inbound:\n", fmt.Sprintf("inbound:\n  screen: {allow: %s, dnsbl: {threshold: 3, timeout: 2s, lists: [{zone: bl.test, weight: 3, codes: [127.0.0.2]}]}}\n", allowList), 1))
		r := startRelay(t, cfg, mx)
		// rbldnsd may still be loading its data: retry briefly.
		deadline := time.Now().Add(5 * time.Second)
		for {
			c := dialSMTP(t, mx)
			_, text := c.Cmd("EHLO client.example.org")
			if allow {
				if !strings.HasPrefix(text, "250") {
					t.Fatalf("allow-listed client: EHLO got %q", text)
				}
				break
			}
			if strings.HasPrefix(text, "550 5.7.1 ") && strings.Contains(text, "bl.test") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("listed client: EHLO got %q, want 550 5.7.1 naming bl.test; rbldnsd: %s", text, out.String())
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !allow {
			r.WaitLog(0, 5*time.Second, "msg=reject", "check=dnsbl", "lists=bl.test")
		}
	}
}

func readFile(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
