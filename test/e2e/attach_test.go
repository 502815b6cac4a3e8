package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"securerelay/attach/attachtest"
	"securerelay/dnsutil/dnstest"
	"securerelay/internal/milterpeers"
)

// swaksData sends msg with swaks (--data from a file, as swaks reads
// it) to rcpt and returns the transcript.
func swaksData(t *testing.T, mx, rcpt, msg string) swaksResult {
	t.Helper()
	f := filepath.Join(t.TempDir(), "msg.eml")
	if err := os.WriteFile(f, []byte(msg), 0o600); err != nil {
		t.Fatal(err)
	}
	return swaks(t, "--server", mx, "--from", "alice@sender.example", "--to", rcpt, "--data", "@"+f)
}

// TestAttachmentPolicy: the attachment policy as an admin meets it. With
// no attachments configuration a program is refused in the dialog, also
// inside archives, zip bombs and encrypted archives too, each with 554
// 5.7.1 naming the file and the reason; ordinary attachments arrive; a
// domain's own policy may defer (451) or accept with a header; a
// transaction never mixes two policies (452 4.5.3); and a refused file
// never reaches the milter behind the stage.
func TestAttachmentPolicy(t *testing.T) {
	requireTool(t, "swaks")
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	scanner := startGoMilter(t, nil)
	r, mx, _ := startContentRelay(t, dns.Addr(), fmt.Sprintf(`  content:
    milters:
      - {name: scanner, address: %q}
  attachments:
    policies:
      lenient: {action: accept, encrypted: accept}
      trial: {action: tempfail}
`, scanner.Addr), fmt.Sprintf(`  example.test: {deliver_to: "smtp://%[1]s"}
  lenient.test: {deliver_to: "smtp://%[1]s", attachment_policy: lenient}
  trial.test: {deliver_to: "smtp://%[1]s", attachment_policy: trial}
`, down.Addr))

	pe := attachtest.PE()
	delivered := 0

	t.Run("ordinary attachments pass", func(t *testing.T) {
		dir := t.TempDir()
		files := map[string][]byte{"Angebot.pdf": attachtest.PDF(), "Lebenslauf.docx": attachtest.DOCX(t), "Foto.jpg": attachtest.JPEG(), "invite.ics": []byte(attachtest.ICS)}
		args := []string{"--server", mx, "--from", "alice@sender.example", "--to", "bob@example.test", "--header", "Subject: ordinary"}
		for name, data := range files {
			p := filepath.Join(dir, name)
			if err := os.WriteFile(p, data, 0o600); err != nil {
				t.Fatal(err)
			}
			args = append(args, "--attach", p)
		}
		res := mustSend(t, args...)
		delivered++
		msgs := down.WaitMessages(t, delivered, 10*time.Second)
		if got := msgs[delivered-1].Data; hasHeader(got, "X-Securerelay-Attachment") || !strings.Contains(string(got), `filename="Lebenslauf.docx"`) {
			t.Errorf("delivered message:\n%s", headerSection(got))
		}
		t.Logf("ordinary: %s", res.QueueID())
	})

	cases := []struct {
		name, rcpt string
		msg        string
		want       []string // in the reply to the end of data
		log        []string // in the relay's refusal line
	}{
		{"PE in a ZIP", "bob@example.test",
			attachtest.Message("alice@sender.example", "bob@example.test", "Bewerbung", attachtest.Part{Name: "Bewerbung.zip", Data: attachtest.Zip(t, map[string][]byte{"Bewerbung.exe": pe, "Bewerbung - Kopie.exe": pe})}),
			[]string{"554 5.7.1", `"Bewerbung.zip", file "Bewerbung - Kopie.exe" inside it: it is a program (.exe)`},
			[]string{"check=attachment", "class=executable", "file=Bewerbung.zip", `path="Bewerbung - Kopie.exe"`}},
		{"double extension", "bob@example.test",
			attachtest.Message("alice@sender.example", "bob@example.test", "Rechnung", attachtest.Part{Name: "rechnung.pdf.exe", Data: pe}),
			[]string{"554 5.7.1", `"rechnung.pdf.exe"`, "double extension"},
			[]string{"class=deceptive_name", "file=rechnung.pdf.exe"}},
		{"direction override", "bob@example.test",
			attachtest.Message("alice@sender.example", "bob@example.test", "Invoice", attachtest.Part{Name: "invoice\u202efdp.scr", Data: attachtest.PDF()}),
			[]string{"554 5.7.1", `"invoice\u202efdp.scr"`, "direction control U+202E"},
			[]string{"class=deceptive_name"}},
		{"nested ZIP", "bob@example.test",
			attachtest.Message("alice@sender.example", "bob@example.test", "nested", attachtest.Part{Name: "outer.zip", Data: attachtest.Zip(t, map[string][]byte{"inner.zip": attachtest.Zip(t, map[string][]byte{"tool.exe": pe})})}),
			[]string{"554 5.7.1", `file "inner.zip/tool.exe" inside it`},
			[]string{"class=executable", "path=inner.zip/tool.exe"}},
		{"encrypted ZIP", "bob@example.test",
			attachtest.Message("alice@sender.example", "bob@example.test", "encrypted", attachtest.Part{Name: "secret.zip", Data: attachtest.Zip(t, map[string][]byte{"a.pdf": attachtest.PDF()}, "-P", "secret")}),
			[]string{"554 5.7.1", "password-protected"},
			[]string{"class=encrypted", "file=secret.zip"}},
		{"42-style bomb", "bob@example.test",
			attachtest.Message("alice@sender.example", "bob@example.test", "bomb", attachtest.Part{Name: "42.zip", Data: attachtest.NestedBomb(t, 3, 8<<20)}),
			[]string{"554 5.7.1", `"42.zip"`, "zip bomb"},
			[]string{"class=limit", "file=42.zip"}},
		{"overlapping-entry bomb", "bob@example.test",
			attachtest.Message("alice@sender.example", "bob@example.test", "overlap", attachtest.Part{Name: "overlap.zip", Data: attachtest.OverlapBomb(200, 4<<20)}),
			[]string{"554 5.7.1", "overlap"},
			[]string{"class=limit", "file=overlap.zip"}},
		{"7z", "bob@example.test",
			attachtest.Message("alice@sender.example", "bob@example.test", "7z", attachtest.Part{Name: "docs.7z", Data: attachtest.SevenZip(t, map[string][]byte{"a.exe": pe})}),
			[]string{"554 5.7.1", "7-Zip archive"},
			[]string{"class=unopened"}},
		{"tempfail policy", "bob@trial.test",
			attachtest.Message("alice@sender.example", "bob@trial.test", "trial", attachtest.Part{Name: "run.js", Data: []byte("WScript.Echo(1)")}),
			[]string{"451 4.7.1", `"run.js"`, "try again later"},
			[]string{"class=script", "action=tempfail", "policy=trial"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mark := r.Mark()
			res := swaksData(t, mx, tc.rcpt, tc.msg)
			replies := strings.Join(res.ErrorReplies(), "\n")
			for _, w := range tc.want {
				if !strings.Contains(replies, w) {
					t.Errorf("reply %q lacks %q\n%s", replies, w, res.Out)
				}
			}
			r.WaitLog(mark, 5*time.Second, append([]string{"msg=reject"}, tc.log...)...)
		})
	}

	t.Run("accept with a header", func(t *testing.T) {
		msg := attachtest.Message("alice@sender.example", "bob@lenient.test", "lenient", attachtest.Part{Name: "tool.exe", Data: pe})
		res := swaksData(t, mx, "bob@lenient.test", msg)
		if res.Code != 0 || res.QueueID() == "" {
			t.Fatalf("lenient policy: %s", res.Out)
		}
		delivered++
		got := messageWith(t, down.WaitMessages(t, delivered, 10*time.Second), msg)
		h := headerValue(got.Data, "X-Securerelay-Attachment")
		if !strings.Contains(h, "executable") || !strings.Contains(h, `"tool.exe"`) || !strings.Contains(h, "policy=lenient") {
			t.Errorf("X-Securerelay-Attachment: %q\n%s", h, headerSection(got.Data))
		}
	})

	t.Run("one policy per transaction", func(t *testing.T) {
		msg := attachtest.Message("alice@sender.example", "bob@example.test", "split", attachtest.Part{Name: "a.pdf", Data: attachtest.PDF()})
		res := mustQueue(t, mx, "alice@sender.example", []string{"bob@example.test", "carol@lenient.test"}, msg)
		if !strings.HasPrefix(res.Rcpt[1], "452 4.5.3") || !strings.Contains(res.Rcpt[1], "attachment policy") {
			t.Errorf("second recipient: %q, want 452 4.5.3", res.Rcpt[1])
		}
		delivered++
		waitDeliveredTo(t, down, msg, "bob@example.test")
	})

	// Only what passed the attachment policy reached the milter: the
	// ordinary message, the accepted one and the split one.
	for _, m := range scanner.Messages() {
		for _, tc := range cases {
			if strings.Contains(m.Subject, headerValue([]byte(tc.msg), "Subject")) {
				t.Errorf("the milter saw %q, which the attachment policy refused", m.Subject)
			}
		}
	}
	if n := len(scanner.Messages()); n != delivered {
		t.Errorf("the milter saw %d messages, want the %d delivered", n, delivered)
	}
	noMoreMessages(t, down, delivered)
}

// TestMilterEnvelopeInDialog: the milters hear the envelope during the
// dialog, from the first accepted recipient on (as Postfix's smtpd talks
// to its milters), so that their round trips do not add to the wait
// after the final dot; a transaction that ends without DATA ends their
// conversations with ABORT; and a message the attachment policy refuses
// still never reaches a scanner.
func TestMilterEnvelopeInDialog(t *testing.T) {
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	scanner := startGoMilter(t, nil)
	_, mx, _ := startContentRelay(t, dns.Addr(), fmt.Sprintf(`  content:
    milters:
      - {name: scanner, address: %q}
`, scanner.Addr), fmt.Sprintf("  example.test: {deliver_to: \"smtp://%s\"}\n", down.Addr))

	// wait waits up to 5 s until counter reaches n.
	wait := func(counter *atomic.Int32, n int32) bool {
		for i := 0; i < 100; i++ {
			if counter.Load() >= n {
				return true
			}
			time.Sleep(50 * time.Millisecond)
		}
		return false
	}
	envelope := func(c *rawSMTP, rcpts ...string) {
		c.Expect("MAIL FROM:<alice@sender.example>", 250)
		for _, rc := range rcpts {
			c.Expect("RCPT TO:<"+rc+">", 250)
		}
	}
	data := func(c *rawSMTP, msg string) (int, string) {
		c.Expect("DATA", 354)
		c.Write(strings.ReplaceAll(msg, "\r\n.", "\r\n..") + ".\r\n")
		return c.Reply()
	}

	c := dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	envelope(c, "bob@example.test")
	if !wait(&scanner.rcpts, 1) {
		t.Fatal("RCPT accepted, no DATA yet: the milter has not heard the recipient within 5 s")
	}
	c.Expect("RCPT TO:<carol@example.test>", 250)
	code, text := data(c, milterpeers.Message("alice@sender.example", "bob@example.test", "early", []string{"Content-Type: text/plain"}, "hello\r\n"))
	if code != 250 {
		t.Fatalf("end of data: %d %s", code, text)
	}
	msgs := scanner.Messages()
	if len(msgs) != 1 || msgs[0].Subject != "early" || !strings.Contains(text, "queued as "+msgs[0].QueueID) ||
		!slices.Equal(msgs[0].Rcpts, []string{"bob@example.test", "carol@example.test"}) {
		t.Fatalf("reply %q; the milter saw %+v, want one message to both recipients under the queued ID", text, msgs)
	}
	down.WaitMessages(t, 1, 10*time.Second)

	// RSET after RCPT, and a session that quits after RCPT: ABORT, and
	// nothing reaches the end of a message.
	envelope(c, "dave@example.test")
	if !wait(&scanner.rcpts, 3) {
		t.Error("the milter has not heard the recipient of the transaction RSET ends")
	}
	c.Expect("RSET", 250)
	if !wait(&scanner.aborts, 1) {
		t.Error("RSET after RCPT: the milter's conversation was not aborted within 5 s")
	}
	c.Expect("QUIT", 221)
	c = dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	envelope(c, "erin@example.test")
	if !wait(&scanner.rcpts, 4) {
		t.Error("the milter has not heard the recipient of the session QUIT ends")
	}
	c.Expect("QUIT", 221)
	if !wait(&scanner.aborts, 2) {
		t.Error("QUIT after RCPT: the milter's conversation was not aborted within 5 s")
	}

	// A banned attachment: the envelope was heard, the message never.
	c = dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	envelope(c, "carol@example.test")
	if !wait(&scanner.rcpts, 5) {
		t.Fatal("the milter has not heard the last envelope within 5 s")
	}
	msg := attachtest.Message("alice@sender.example", "carol@example.test", "banned", attachtest.Part{Name: "tool.exe", Data: attachtest.PE()})
	if code, text := data(c, msg); code != 554 {
		t.Fatalf("banned attachment: %d %s, want 554", code, text)
	}
	c.Expect("QUIT", 221)
	if n := len(scanner.Messages()); n != 1 {
		t.Errorf("the milter reached the end of %d messages, want 1: the banned one must not reach it", n)
	}
	if !wait(&scanner.aborts, 3) {
		t.Error("refused at the attachment stage: the milter's conversation was not aborted within 5 s")
	}
}

// The milters are told the client's forward-confirmed reverse name, as
// Postfix's smtpd tells them; "unknown" makes a scanner score every
// message as from a client without reverse DNS (rspamd's hfilter:
// HFILTER_HOSTNAME_UNKNOWN, 2.5 by default). A PTR name whose addresses
// lead elsewhere is {client_ptr} only, never the client name.
func TestMilterClientName(t *testing.T) {
	dns := dnstest.NewServer(t, `
1.0.0.127.in-addr.arpa. PTR Client.E2E.test.
client.e2e.test.        A   127.0.0.1
2.0.0.127.in-addr.arpa. PTR forged.e2e.test.
forged.e2e.test.        A   192.0.2.7
`)
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	scanner := startGoMilter(t, nil)
	_, mx, _ := startContentRelay(t, dns.Addr(), fmt.Sprintf(`  content:
    milters:
      - {name: scanner, address: %q}
`, scanner.Addr), fmt.Sprintf("  example.test: {deliver_to: \"smtp://%s\"}\n", down.Addr))

	for i, tc := range []struct{ from, client, ptr string }{
		{"127.0.0.1", "client.e2e.test", "client.e2e.test"},
		{"127.0.0.2", "unknown", "forged.e2e.test"},
		{"127.0.0.3", "unknown", "unknown"}, // no PTR
	} {
		c, code, text := dialSMTPFrom(t, mx, tc.from)
		if code != 220 {
			t.Fatalf("%s: greeting %d %s", tc.from, code, text)
		}
		c.Expect("EHLO client.e2e.test", 250)
		res := transaction(t, c, "alice@sender.example", []string{"bob@example.test"},
			milterpeers.Message("alice@sender.example", "bob@example.test", tc.from, []string{"Content-Type: text/plain"}, "hello\r\n"), 15*time.Second)
		if res.Code() != 250 {
			t.Fatalf("%s: %+v", tc.from, res)
		}
		c.Expect("QUIT", 221)
		msgs := scanner.Messages()
		if len(msgs) != i+1 {
			t.Fatalf("%s: the milter saw %d messages, want %d", tc.from, len(msgs), i+1)
		}
		if m := msgs[i]; m.Client != tc.client || m.ClientName != tc.client || m.ClientPTR != tc.ptr {
			t.Errorf("%s: milter told connect %q, {client_name} %q, {client_ptr} %q; want %q, %q, %q",
				tc.from, m.Client, m.ClientName, m.ClientPTR, tc.client, tc.client, tc.ptr)
		}
	}
}
