package e2e

import (
	"bytes"
	"fmt"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
)

// testMessage has a leading-dot line (dot stuffing both ways) and a long
// line, so that "exactly the bytes" means something.
const testMessage = "From: Alice <alice@example.org>\r\n" +
	"To: Bob <bob@example.test>\r\n" +
	"Subject: e2e byte-exact\r\n" +
	"Message-ID: <e2e-byte-exact@example.org>\r\n" +
	"Date: Mon, 2 Jan 2006 15:04:05 +0000\r\n" +
	"\r\n" +
	"first line\r\n" +
	".a line that starts with a dot\r\n" +
	"..two dots\r\n" +
	"trailing spaces   \r\n" +
	"\ttab\r\n" +
	"last line\r\n"

// checkReceivedOnTop requires got to be exactly one Received: field by
// relay.e2e.test followed by want, byte for byte.
func checkReceivedOnTop(t *testing.T, got []byte, want, rcpt string) {
	t.Helper()
	if !bytes.HasSuffix(got, []byte(want)) {
		t.Fatalf("downstream did not get the original bytes after our header:\ngot:  %q\nwant: …%q", got, want)
	}
	top := string(got[:len(got)-len(want)])
	fieldRe := regexp.MustCompile(`^Received: [^\r\n]*\r\n([ \t][^\r\n]*\r\n)*$`)
	if !fieldRe.MatchString(top) {
		t.Fatalf("what the relay put on top is not exactly one Received: field: %q", top)
	}
	for _, s := range []string{"by relay.e2e.test", "for <" + rcpt + ">"} {
		if !strings.Contains(top, s) {
			t.Errorf("Received: field lacks %q: %q", s, top)
		}
	}
}

// TestInboundToDownstream: mail for our domains goes to the deliver_to
// SMTP or LMTP server, unchanged except for our Received: field.
func TestInboundToDownstream(t *testing.T) {
	requireTool(t, "swaks")
	dns := dnstest.NewServer(t, "")
	smtpDown := startTestServer(t, listenLoopback(t), serverOptions{})
	lmtpDown := startTestServer(t, listenLoopback(t), serverOptions{LMTP: true})

	dir := t.TempDir()
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - name: mx
    address: %q
    role: inbound
domains:
  example.test:
    deliver_to: "smtp://%s"
  lmtp.example.test:
    deliver_to: "lmtp://%s"
outbound:
%s`, mx, smtpDown.Addr, lmtpDown.Addr, outboundTimeouts))
	startRelay(t, cfg, mx)

	// swaks ends DATA with CRLF "." CRLF after the file's content, so the
	// file leaves out the final CRLF of the message.
	data := filepath.Join(dir, "message.eml")
	writeFile(t, data, strings.TrimSuffix(testMessage, "\r\n"))

	for _, tc := range []struct {
		name string
		rcpt string
		down *testServer
	}{
		{"smtp", "bob@example.test", smtpDown},
		{"lmtp", "carol@lmtp.example.test", lmtpDown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			mustSend(t, "--server", mx, "--from", "alice@example.org", "--to", tc.rcpt, "--data", "@"+data)
			tc.down.WaitMessages(t, 1, 5*time.Second)
			// A duplicate would come right after the first; give it a moment.
			time.Sleep(200 * time.Millisecond)
			msgs := tc.down.Messages()
			if len(msgs) != 1 {
				t.Fatalf("downstream got %d messages, want exactly 1", len(msgs))
			}
			m := msgs[0]
			if m.From != "alice@example.org" || len(m.To) != 1 || m.To[0] != tc.rcpt {
				t.Errorf("downstream envelope: from %q to %q, want alice@example.org to [%s]", m.From, m.To, tc.rcpt)
			}
			checkReceivedOnTop(t, m.Data, testMessage, tc.rcpt)
		})
	}

	// BDAT (CHUNKING, advertised) carries lines that are a lone "." or
	// start with dots literally; relayed with DATA, they must arrive
	// unchanged, not end the message early.
	const bdatMessage = "Subject: e2e BDAT\r\n\r\nbefore\r\n.\r\n..two dots\r\n.\r\nafter\r\n"
	for _, tc := range []struct {
		name string
		rcpt string
		down *testServer
	}{
		{"smtp BDAT", "dora@example.test", smtpDown},
		{"lmtp BDAT", "erik@lmtp.example.test", lmtpDown},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := len(tc.down.Messages())
			c := dialSMTP(t, mx)
			if ehlo := c.Expect("EHLO client.e2e.test", 250); !strings.Contains(ehlo, "CHUNKING") {
				t.Skipf("CHUNKING not advertised:\n%s", ehlo)
			}
			c.Expect("MAIL FROM:<alice@example.org>", 250)
			c.Expect("RCPT TO:<"+tc.rcpt+">", 250)
			half := len(bdatMessage) / 2
			for _, chunk := range []string{
				fmt.Sprintf("BDAT %d\r\n%s", half, bdatMessage[:half]),
				fmt.Sprintf("BDAT %d LAST\r\n%s", len(bdatMessage)-half, bdatMessage[half:]),
			} {
				c.Write(chunk)
				if code, text := c.Reply(); code != 250 {
					t.Fatalf("%q: %q, want 250", chunk, text)
				}
			}
			c.Expect("QUIT", 221)
			msgs := tc.down.WaitMessages(t, before+1, 5*time.Second)
			checkReceivedOnTop(t, msgs[len(msgs)-1].Data, bdatMessage, tc.rcpt)
		})
	}
}

// TestNoOpenRelay: the inbound listener refuses every recipient outside our
// domains, however it is disguised, at RCPT, and delivers nothing for it.
func TestNoOpenRelay(t *testing.T) {
	requireTool(t, "swaks")
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	dir := t.TempDir()
	mx := freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - name: mx
    address: %q
    role: inbound
domains:
  example.test:
    deliver_to: "smtp://%s"
outbound:
%s`, mx, down.Addr, outboundTimeouts))
	r := startRelay(t, cfg, mx)

	// 554 5.7.1 is what Postfix answers for relay attempts; admins match on it.
	refusedRe := regexp.MustCompile(`^554 5\.7\.1 `)
	for _, rcpt := range []string{
		"someone@other.test",
		"user%other.test@example.test",
		"other.test!user@example.test",
		`"user@other.test"@example.test`,
		"user@[127.0.0.1]",
	} {
		t.Run(rcpt, func(t *testing.T) {
			res := swaks(t, "--server", mx, "--from", "alice@example.org", "--to", rcpt)
			if res.Code != 24 { // swaks: no RCPT accepted
				t.Fatalf("swaks exit %d, want 24 (no RCPT accepted):\n%s", res.Code, res.Out)
			}
			errs := res.ErrorReplies()
			if len(errs) == 0 || !refusedRe.MatchString(errs[0]) {
				t.Fatalf("first refusal %q, want 554 5.7.1 at RCPT:\n%s", errs, res.Out)
			}
			if !strings.Contains(res.Out, "RCPT TO:<"+rcpt+">") {
				t.Errorf("swaks transcript does not show RCPT TO:<%s>:\n%s", rcpt, res.Out)
			}
		})
	}
	if len(r.LogLines("msg=queued")) != 0 {
		t.Errorf("the relay queued a message for a refused recipient")
	}
	// A message for us goes through; it must be the only one the
	// downstream ever sees.
	mustSend(t, "--server", mx, "--from", "alice@example.org", "--to", "bob@example.test")
	down.WaitMessages(t, 1, 5*time.Second)
	time.Sleep(200 * time.Millisecond)
	if got := down.Rcpts(); len(got) != 1 || got[0] != "bob@example.test" {
		t.Errorf("downstream saw RCPT TO %q, want only bob@example.test", got)
	}
}
