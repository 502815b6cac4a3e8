package e2e

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
)

// TestEnvelopeChecksSession walks one SMTP session through every envelope
// check of the inbound listener, in order, and asserts the exact reply and
// enhanced status at each step: unqualified senders (no dot, no domain),
// sender domain that does not exist, null MX, a good sender; an unqualified
// recipient, another domain, an unknown recipient, a known one, and the bare
// <Postmaster> that RFC 5321 requires us to take; DATA.
func TestEnvelopeChecksSession(t *testing.T) {
	dns := dnstest.NewServer(t, `example.org.   MX 10 mail.example.org.
mail.example.org. A 192.0.2.1
nullmx.example. MX 0 .
`)
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dir := t.TempDir()
	mx := freeAddr(t)
	users := filepath.Join(dir, "users.txt")
	writeFile(t, users, "bob\n")
	cfg := filepath.Join(dir, "relay.yaml")
	head := strings.Replace(configHeadChecks(filepath.Join(dir, "state"), dns.Addr(), "reject"),
		"postmaster: postmaster@relay.e2e.test", "postmaster: postmaster@example.test", 1)
	writeFile(t, cfg, head+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  example.test:
    deliver_to: "smtp://%s"
    recipients: {file: %q}
outbound:
%s`, mx, down.Addr, users, outboundTimeouts))
	r := startRelay(t, cfg, mx)

	c := dialSMTP(t, mx)
	c.Expect("EHLO client.example.org", 250)
	for _, step := range []struct {
		cmd, want string
	}{
		{"MAIL FROM:<alice@localhost>", "553 5.1.7 "},
		{"MAIL FROM:<alice>", "553 5.1.7 "},
		{"MAIL FROM:<alice@nx.example>", "550 5.1.8 "},
		{"MAIL FROM:<alice@nullmx.example>", "550 5.1.8 "},
		{"MAIL FROM:<alice@example.org>", "250 "},
		{"RCPT TO:<carol>", "553 5.1.3 "},
		{"RCPT TO:<bob@elsewhere.test>", "554 5.7.1 "},
		{"RCPT TO:<mallory@example.test>", "550 5.1.1 "},
		{"RCPT TO:<bob@example.test>", "250 "},
		{"RCPT TO:<PostMaster>", "250 "},
		{"DATA", "354 "},
	} {
		// Reply's text is the whole reply line, code included.
		if _, text := c.Cmd(step.cmd); !strings.HasPrefix(text, step.want) {
			t.Fatalf("%s: got %q, want %q…", step.cmd, text, step.want)
		}
	}
	c.Write("Subject: through every check\r\n\r\nhello\r\n.\r\n")
	if code, text := c.Reply(); code != 250 || !strings.Contains(text, "queued as") {
		t.Fatalf("end of DATA: %d %s", code, text)
	}
	if m := down.WaitMessages(t, 1, 10*time.Second)[0]; m.From != "alice@example.org" || strings.Join(m.To, ",") != "bob@example.test,postmaster@example.test" {
		t.Errorf("downstream got from %q to %v", m.From, m.To)
	}
	for _, check := range []string{"check=sender_fqdn", "check=recipient_fqdn", "check=sender_domain", "check=unknown_recipient"} {
		r.WaitLog(0, 5*time.Second, "inbound check refused", check)
	}
}

// TestPregreetWithRealClient: with the pregreet test on, a client that
// talks at once is refused with 554 5.5.1, while swaks (which, as a real
// MTA does, waits for the last greeting line) delivers normally.
func TestPregreetWithRealClient(t *testing.T) {
	requireTool(t, "swaks")
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dir := t.TempDir()
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, strings.Replace(configHead(filepath.Join(dir, "state"), dns.Addr()), "inbound:\n", "inbound:\n  screen: {pregreet: 500ms}\n", 1)+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  example.test: {deliver_to: "smtp://%s"}
outbound:
%s`, mx, down.Addr, outboundTimeouts))
	r := startRelay(t, cfg, mx)
	// The early talker first: once a client from 127.0.0.1 has passed,
	// the screening cache would spare it the wait.
	conn := dialRaw(t, mx)
	fmt.Fprintf(conn, "EHLO bot.example\r\n")
	buf := make([]byte, 512)
	var got strings.Builder
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		n, err := conn.Read(buf)
		got.Write(buf[:n])
		if err != nil {
			break
		}
	}
	if !strings.Contains(got.String(), "\r\n554 5.5.1 ") {
		t.Errorf("early talker got %q, want the 220- line then 554 5.5.1 and a closed connection", got.String())
	}
	res := mustSend(t, "--server", mx, "--from", "alice@example.org", "--to", "bob@example.test")
	if !strings.Contains(res.Out, "<-  220-relay.e2e.test") {
		t.Errorf("swaks did not see a multi-line greeting:\n%s", res.Out)
	}
	down.WaitMessages(t, 1, 10*time.Second)

	r.WaitLog(0, 5*time.Second, "stage=pregreet")
}

// dialRaw connects without reading anything.
func dialRaw(t *testing.T, addr string) net.Conn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestDeepProtocolTestSurvivesRestart: with the deep protocol test on, a
// new client's first MAIL gets 450 4.7.1 and its retry is accepted; the
// pass is kept in state_dir, so after a restart the same client is not
// sent back with 450 again (as postscreen's cache map keeps it).
func TestDeepProtocolTestSurvivesRestart(t *testing.T) {
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dir := t.TempDir()
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
  example.test: {deliver_to: "smtp://%s"}
outbound:
%s`, mx, down.Addr, outboundTimeouts))
	writeFile(t, cfg, strings.Replace(readFile(t, cfg), "inbound:\n", "inbound:\n  screen: {deep_protocol_test: true, cache_ttl: 1h}\n", 1))

	mail := func(want string) {
		t.Helper()
		c := dialSMTP(t, mx)
		defer c.conn.Close()
		c.Expect("EHLO client.example.org", 250)
		if _, text := c.Cmd("MAIL FROM:<alice@example.org>"); !strings.HasPrefix(text, want) {
			t.Fatalf("MAIL FROM: got %q, want %q…", text, want)
		}
	}
	r := startRelay(t, cfg, mx)
	mail("450 4.7.1 ")
	mail("250 ")
	r.Stop()
	if b, err := os.ReadFile(filepath.Join(dir, "state", "screen-cache.json")); err != nil || !strings.Contains(string(b), `"127.0.0.1"`) {
		t.Fatalf("screening cache after shutdown: %q, %v; want 127.0.0.1 in it", b, err)
	}
	r = startRelay(t, cfg, mx)
	r.WaitLog(0, 5*time.Second, "securerelay started", "screened_clients=1")
	mail("250 ")
}
