package e2e

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	msgauth "github.com/emersion/go-msgauth/dkim"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/internal/milterpeers"
)

// TestContentScanners: real rspamd and clamav-milter behind the relay,
// each picked by a domain's content_policy, and both in a chain. Spam and
// a virus are refused in the dialog with the scanner's own reply and never
// reach the downstream; clean mail arrives with the scanners' headers and
// its body untouched.
func TestContentScanners(t *testing.T) {
	rs := milterpeers.StartRspamd(t)
	clam := milterpeers.StartClamav(t)
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	r, mx, _ := startContentRelay(t, dns.Addr(), fmt.Sprintf(`  content:
    milters:
      - {name: rspamd, address: %q, read_timeout: 60s}
      - {name: clamav, address: %q, read_timeout: 60s}
    policies:
      spam: [rspamd]
      virus: [clamav]
      both: [rspamd, clamav]
  # EICARMessage attaches the test file as invoice.com, which the
  # attachment policy refuses before any milter (TestAttachmentPolicy);
  # here the scanners' own verdicts are under test.
  attachments: {enabled: false}
`, rs.Addr, clam.Addr), fmt.Sprintf(`  spam.test: {deliver_to: "smtp://%[1]s", content_policy: spam}
  virus.test: {deliver_to: "smtp://%[1]s", content_policy: virus}
  both.test: {deliver_to: "smtp://%[1]s", content_policy: both}
`, down.Addr))

	const from = "alice@sender.example"
	const gtubeReply = "554 5.7.1 Gtube pattern"
	eicarReply := "550 5.7.1 Virus found: " + milterpeers.EICARSignature + ".UNOFFICIAL"
	var delivered int

	// cleanThrough sends a clean message to rcpt and returns the copy the
	// downstream got, after checking that only headers were added.
	cleanThrough := func(t *testing.T, rcpt string) (received, string) {
		t.Helper()
		msg := milterpeers.CleanMessage(from, rcpt)
		res := mustQueue(t, mx, from, []string{rcpt}, msg)
		t.Logf("clean message: %s after %v", res.Data, res.DataTime)
		delivered++
		got := messageWith(t, down.WaitMessages(t, delivered, 10*time.Second), msg)
		if bodyOf(got.Data) != bodyOf([]byte(msg)) {
			t.Errorf("body changed:\n%q\nwant\n%q", bodyOf(got.Data), bodyOf([]byte(msg)))
		}
		if !slices.Equal(got.To, []string{rcpt}) {
			t.Errorf("delivered to %q, want [%s]", got.To, rcpt)
		}
		return got, res.QueueID()
	}

	t.Run("rspamd", func(t *testing.T) {
		res := send(t, mx, from, []string{"bob@spam.test"}, milterpeers.GTUBEMessage(from, "bob@spam.test"))
		if res.Data != gtubeReply {
			t.Errorf("GTUBE: %q, want %q", res.Data, gtubeReply)
		}
		got, id := cleanThrough(t, "bob@spam.test")
		t.Logf("header as delivered:\n%s", headerSection(got.Data))
		if v := headerValue(got.Data, "X-Spamd-Result"); !strings.HasPrefix(v, "default: False [") {
			t.Errorf("X-Spamd-Result %q, want default: False […]", v)
		}
		if headerValue(got.Data, "X-Rspamd-Server") == "" {
			t.Error("no X-Rspamd-Server")
		}
		// rspamd names the queue ID it got as macro i: the ID under which
		// the relay ran the content stage is the one it queued under (the
		// header changes amend the spool file; no second copy, no new ID).
		if v := headerValue(got.Data, "X-Rspamd-Queue-Id"); v != id {
			t.Errorf("X-Rspamd-Queue-Id %q, want %q (macro i, the queue ID)", v, id)
		}
		// Our Received stays on top; rspamd inserts below it.
		if !strings.HasPrefix(string(got.Data), "Received: from ") {
			t.Errorf("the delivered copy does not start with our Received:\n%s", headerSection(got.Data))
		}
	})

	t.Run("clamav", func(t *testing.T) {
		res := send(t, mx, from, []string{"bob@virus.test"}, milterpeers.EICARMessage(from, "bob@virus.test"))
		if res.Data != eicarReply {
			t.Errorf("EICAR: %q, want %q", res.Data, eicarReply)
		}
		got, _ := cleanThrough(t, "bob@virus.test")
		if v := headerValue(got.Data, "X-Virus-Status"); v != "Clean" {
			t.Errorf("X-Virus-Status %q, want Clean", v)
		}
		if headerValue(got.Data, "X-Virus-Scanned") == "" {
			t.Error("no X-Virus-Scanned")
		}
		if hasHeader(got.Data, "X-Spamd-Result") {
			t.Error("rspamd's header on mail for a domain only clamav scans")
		}
	})

	// rspamd first, then clamav-milter, as in Postfix: the EICAR message
	// passes rspamd (its score stays below every action) and
	// clamav-milter refuses it; GTUBE never reaches clamav-milter.
	t.Run("chain", func(t *testing.T) {
		res := send(t, mx, from, []string{"bob@both.test"}, milterpeers.EICARMessage(from, "bob@both.test"))
		if res.Data != eicarReply {
			t.Errorf("EICAR: %q, want %q", res.Data, eicarReply)
		}
		res = send(t, mx, from, []string{"bob@both.test"}, milterpeers.GTUBEMessage(from, "bob@both.test"))
		if res.Data != gtubeReply {
			t.Errorf("GTUBE: %q, want %q", res.Data, gtubeReply)
		}
		got, _ := cleanThrough(t, "bob@both.test")
		if headerValue(got.Data, "X-Virus-Status") != "Clean" || !strings.HasPrefix(headerValue(got.Data, "X-Spamd-Result"), "default: False [") {
			t.Errorf("the clean message lacks one scanner's headers:\n%s", headerSection(got.Data))
		}
	})

	msgs := noMoreMessages(t, down, delivered)
	for _, m := range msgs {
		if s := headerValue(m.Data, "Subject"); s != "Quarterly report" {
			t.Errorf("delivered a message with subject %q: only the clean ones may arrive", s)
		}
	}
	if n := len(r.LogLines("msg=queued")); n != delivered {
		t.Errorf("%d messages queued, want %d", n, delivered)
	}
	if n, m := len(r.LogLines("msg=reject", "check=milter", "milter=rspamd")), len(r.LogLines("msg=reject", "check=milter", "milter=clamav")); n != 2 || m != 2 {
		t.Errorf("refusals logged: rspamd %d, clamav %d; want 2 and 2", n, m)
	}
}

// TestMilterUnavailable: a milter that is down or too slow never lets a
// message through silently: on_error tempfail answers 451 4.7.1 (the
// sender retries), reject 554 5.7.1, and only on_error accept delivers,
// logging the failure. The slow milter is cut off at read_timeout.
func TestMilterUnavailable(t *testing.T) {
	release := make(chan struct{})
	slow := startGoMilter(t, func(*milterMsg, gomilter.Modifier) (*gomilter.Response, error) {
		select {
		case <-release:
		case <-time.After(10 * time.Second):
		}
		return gomilter.RespAccept, nil
	})
	t.Cleanup(func() { close(release) }) // before the milter's own cleanup
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	deadSock := filepath.Join(t.TempDir(), "nobody-listens.sock")
	r, mx, _ := startContentRelay(t, dns.Addr(), fmt.Sprintf(`  content:
    milters:
      - {name: down_tf, address: "inet:%s", connect_timeout: 2s, on_error: tempfail}
      - {name: down_acc, address: "inet:%s", connect_timeout: 2s, on_error: accept}
      - {name: down_rej, address: "unix:%s", connect_timeout: 2s, on_error: reject}
      - {name: slow, address: %q, read_timeout: 1s}
    policies:
      tf: [down_tf]
      acc: [down_acc]
      rej: [down_rej]
      slow: [slow]
`, freeAddr(t), freeAddr(t), deadSock, slow.Addr), fmt.Sprintf(`  tf.test: {deliver_to: "smtp://%[1]s", content_policy: tf}
  acc.test: {deliver_to: "smtp://%[1]s", content_policy: acc}
  rej.test: {deliver_to: "smtp://%[1]s", content_policy: rej}
  slow.test: {deliver_to: "smtp://%[1]s", content_policy: slow}
`, down.Addr))

	const from = "alice@sender.example"
	for _, tc := range []struct {
		rcpt, milter, wantPrefix string
	}{
		{"bob@tf.test", "down_tf", "451 4.7.1 "},
		{"bob@rej.test", "down_rej", "554 5.7.1 "},
		{"bob@slow.test", "slow", "451 4.7.1 "},
	} {
		t.Run(tc.milter, func(t *testing.T) {
			res := send(t, mx, from, []string{tc.rcpt}, milterpeers.CleanMessage(from, tc.rcpt))
			if !strings.HasPrefix(res.Data, tc.wantPrefix) || !strings.Contains(res.Data, tc.milter) {
				t.Errorf("reply %q, want %s… naming %s", res.Data, tc.wantPrefix, tc.milter)
			}
			r.WaitLog(0, 5*time.Second, "milter failed", "milter="+tc.milter)
			if tc.milter == "slow" {
				// Cut off at read_timeout (1s), not after the milter's
				// 10 s; the relay does not wait for it.
				if res.DataTime < time.Second || res.DataTime > 8*time.Second {
					t.Errorf("the slow milter's verdict took %v, want about read_timeout (1s)", res.DataTime)
				}
				if n := len(slow.Messages()); n != 1 {
					t.Errorf("the slow milter saw %d messages, want 1", n)
				}
			}
		})
	}
	t.Run("down_acc", func(t *testing.T) {
		msg := milterpeers.CleanMessage(from, "bob@acc.test")
		mustQueue(t, mx, from, []string{"bob@acc.test"}, msg)
		messageWith(t, down.WaitMessages(t, 1, 10*time.Second), msg)
		r.WaitLog(0, 5*time.Second, "milter failed", "milter=down_acc", "on_error=accept")
	})
	noMoreMessages(t, down, 1)
}

// TestSplitTransaction: recipients whose content policies differ are never
// accepted together. The first recipient's policy wins; the others get
// 452 4.5.3, DATA delivers to the accepted ones only, and the sender's
// next transaction for the rest is accepted. The milter sees only the
// recipients of its own policy.
func TestSplitTransaction(t *testing.T) {
	m := startGoMilter(t, func(_ *milterMsg, mod gomilter.Modifier) (*gomilter.Response, error) {
		if err := mod.AddHeader("X-Test-Milter", "scanned"); err != nil {
			return nil, err
		}
		return gomilter.RespAccept, nil
	})
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	r, mx, _ := startContentRelay(t, dns.Addr(), fmt.Sprintf(`  content:
    milters:
      - {name: tm, address: %q}
    policies:
      scan: [tm]
      plain: []
`, m.Addr), fmt.Sprintf(`  a.test: {deliver_to: "smtp://%[1]s", content_policy: scan}
  c.test: {deliver_to: "smtp://%[1]s", content_policy: scan}
  b.test: {deliver_to: "smtp://%[1]s", content_policy: plain}
`, down.Addr))

	const from = "alice@sender.example"
	c := dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	msg1 := milterpeers.CleanMessage(from, "x@a.test")
	res := transaction(t, c, from, []string{"x@a.test", "y@b.test", "z@c.test"}, msg1, 30*time.Second)
	if !strings.HasPrefix(res.Rcpt[0], "250 ") || !strings.HasPrefix(res.Rcpt[1], "452 4.5.3 ") || !strings.HasPrefix(res.Rcpt[2], "250 ") {
		t.Fatalf("RCPT replies %q, want 250, 452 4.5.3, 250", res.Rcpt)
	}
	if res.Code() != 250 {
		t.Fatalf("DATA: %q", res.Data)
	}
	// The split is a refusal like any other: one line, with the setting.
	r.WaitLog(0, 5*time.Second, "msg=reject", "stage=rcpt", "check=content_policy", "code=452", "rcpt=y@b.test")
	if n := len(r.LogLines("msg=reject", "rcpt=y@b.test")); n != 1 {
		t.Errorf("%d refusal lines for y@b.test, want 1", n)
	}
	// The sender's MTA retries the deferred recipient in a new
	// transaction, on the same connection.
	msg2 := milterpeers.CleanMessage(from, "y@b.test")
	res = transaction(t, c, from, []string{"y@b.test"}, msg2, 30*time.Second)
	if res.Code() != 250 {
		t.Fatalf("second transaction for y@b.test: RCPT %q, DATA %q", res.Rcpt, res.Data)
	}
	// The other way round: the unscanned domain first wins the
	// transaction.
	msg3 := milterpeers.CleanMessage(from, "w@b.test")
	res = transaction(t, c, from, []string{"w@b.test", "v@a.test"}, msg3, 30*time.Second)
	if !strings.HasPrefix(res.Rcpt[0], "250 ") || !strings.HasPrefix(res.Rcpt[1], "452 4.5.3 ") || res.Code() != 250 {
		t.Fatalf("RCPT %q, DATA %q; want 250, 452 4.5.3, then 250", res.Rcpt, res.Data)
	}
	// RSET ends the transaction and with it the policy of its first
	// recipient.
	c.Expect("MAIL FROM:<"+from+">", 250)
	c.Expect("RCPT TO:<u@b.test>", 250)
	c.Expect("RSET", 250)
	msg4 := milterpeers.CleanMessage(from, "u@a.test")
	res = transaction(t, c, from, []string{"u@a.test"}, msg4, 30*time.Second)
	if res.Code() != 250 {
		t.Fatalf("after RSET: RCPT %q, DATA %q", res.Rcpt, res.Data)
	}
	c.Expect("QUIT", 221)

	for _, tc := range []struct {
		msg     string
		to      []string
		scanned bool
	}{
		{msg1, []string{"x@a.test", "z@c.test"}, true},
		{msg2, []string{"y@b.test"}, false},
		{msg3, []string{"w@b.test"}, false},
		{msg4, []string{"u@a.test"}, true},
	} {
		waitDeliveredTo(t, down, tc.msg, tc.to...)
		if got := messageWith(t, down.Messages(), tc.msg); hasHeader(got.Data, "X-Test-Milter") != tc.scanned {
			t.Errorf("message to %q: scanned %v, want %v", tc.to, !tc.scanned, tc.scanned)
		}
	}
	msgs := noMoreMessages(t, down, len(down.Messages()))
	for _, got := range msgs {
		if slices.Contains(got.To, "v@a.test") {
			t.Error("v@a.test, refused with 452, got the message of w@b.test")
		}
	}
	var seen [][]string
	for _, mm := range m.Messages() {
		seen = append(seen, mm.Rcpts)
	}
	if want := [][]string{{"x@a.test", "z@c.test"}, {"u@a.test"}}; !slices.EqualFunc(seen, want, slices.Equal[[]string]) {
		t.Errorf("the milter saw recipients %q, want %q", seen, want)
	}
}

// TestMilterModifications: what a milter changes reaches the queued copy
// (header added or changed, recipient added, body replaced, envelope
// sender changed), and what the relay cannot honour without losing mail
// is refused in the dialog: a deleted recipient refuses the whole message
// (550 5.7.1, or 451 4.7.1 with recipient_deletion: tempfail after a
// reload), DISCARD and QUARANTINE are refusals too, and a milter's own
// 4xx reply is passed on. Nothing refused is delivered.
func TestMilterModifications(t *testing.T) {
	const newBody = "This body was replaced by the test milter.\r\n.A line that starts with a dot.\r\n"
	m := startGoMilter(t, func(msg *milterMsg, mod gomilter.Modifier) (*gomilter.Response, error) {
		var err error
		switch msg.Subject {
		case "delete carol":
			err = mod.DeleteRecipient("carol@example.test")
		case "delete odd":
			// What a milter names goes into our reply: a line break or
			// many long names must not split it or overrun 512 octets.
			err = mod.DeleteRecipient("carol@example.test\n250 2.0.0 forged")
			for i := 0; err == nil && i < 20; i++ {
				err = mod.DeleteRecipient(fmt.Sprintf("%s%d@example.test", strings.Repeat("x", 50), i))
			}
		case "add":
			if err = mod.AddHeader("X-Test-Milter", "added by the test milter"); err == nil {
				err = mod.AddRecipient("dave@example.test", "")
			}
		case "add outside":
			err = mod.AddRecipient("victim@outside.example", "")
		case "replace body":
			err = mod.ReplaceBody(strings.NewReader(newBody))
		case "change subject":
			err = mod.ChangeHeader(1, "Subject", "[scanned] change subject")
		case "change sender":
			err = mod.ChangeFrom("bounces@lists.sender.example", "")
		case "discard":
			return gomilter.RespDiscard, nil
		case "quarantine":
			err = mod.Quarantine("looks odd")
		case "own tempfail":
			return gomilter.RejectWithCodeAndReason(452, "4.3.1 scanner queue full, try again")
		}
		if err != nil {
			return nil, err
		}
		return gomilter.RespAccept, nil
	})
	dns := dnstest.NewServer(t, "")
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	content := func(deletion string) string {
		return fmt.Sprintf(`  content:
    milters:
      - {name: tm, address: %q}
    recipient_deletion: %s
`, m.Addr, deletion)
	}
	domains := fmt.Sprintf("  example.test: {deliver_to: \"smtp://%s\"}\n", down.Addr)
	r, mx, cfgPath := startContentRelay(t, dns.Addr(), content("reject"), domains)

	const from = "alice@sender.example"
	rcpts := []string{"bob@example.test", "carol@example.test"}
	msgFor := func(subject string) string {
		return milterpeers.Message(from, "bob@example.test", subject, []string{"Content-Type: text/plain"}, "original body\r\n")
	}
	delivered := 0

	t.Run("delete recipient", func(t *testing.T) {
		res := send(t, mx, from, rcpts, msgFor("delete carol"))
		if !strings.HasPrefix(res.Data, "550 5.7.1 ") || !strings.Contains(res.Data, "carol@example.test") {
			t.Errorf("reply %q, want 550 5.7.1 naming carol@example.test", res.Data)
		}

		// recipient_deletion: tempfail, on SIGHUP.
		writeFile(t, cfgPath, contentConfig(filepath.Dir(cfgPath), dns.Addr(), mx, content("tempfail"), domains))
		mark := r.Mark()
		r.Signal(syscall.SIGHUP)
		r.WaitLog(mark, 10*time.Second, "configuration reloaded")
		res = send(t, mx, from, rcpts, msgFor("delete carol"))
		if !strings.HasPrefix(res.Data, "451 4.7.1 ") || !strings.Contains(res.Data, "carol@example.test") {
			t.Errorf("after reload: reply %q, want 451 4.7.1 naming carol@example.test", res.Data)
		}
		res = send(t, mx, from, rcpts, msgFor("delete odd"))
		if !strings.HasPrefix(res.Data, "451 4.7.1 ") || strings.Contains(res.Data, "\n") || len(res.Data) > 510 {
			t.Errorf("odd deletions: reply %q (%d octets), want one 451 4.7.1 line within 510 octets", res.Data, len(res.Data))
		}
	})

	for _, tc := range []struct{ subject, wantPrefix string }{
		// The MX relays for nobody, a milter included: a recipient outside
		// our domains refuses the message (temporarily: the filter is ours
		// to fix) instead of relaying it.
		{"add outside", "451 4.3.0 "},
		{"discard", "550 5.7.1 "},
		{"quarantine", "550 5.7.1 "},
		{"own tempfail", "452 4.3.1 scanner queue full, try again"},
	} {
		t.Run(tc.subject, func(t *testing.T) {
			res := send(t, mx, from, rcpts, msgFor(tc.subject))
			if !strings.HasPrefix(res.Data, tc.wantPrefix) {
				t.Errorf("reply %q, want %s…", res.Data, tc.wantPrefix)
			}
		})
	}

	t.Run("add header and recipient", func(t *testing.T) {
		msg := msgFor("add")
		mustQueue(t, mx, from, []string{"bob@example.test"}, msg)
		waitDeliveredTo(t, down, msg, "bob@example.test", "dave@example.test")
		for _, got := range down.Messages() {
			if headerValue(got.Data, "Message-ID") != headerValue([]byte(msg), "Message-ID") {
				continue
			}
			if v := headerFields(got.Data, "X-Test-Milter"); !slices.Equal(v, []string{"added by the test milter"}) {
				t.Errorf("X-Test-Milter fields %q, want one", v)
			}
			if bodyOf(got.Data) != "original body\r\n" {
				t.Errorf("body %q changed", bodyOf(got.Data))
			}
		}
		delivered = len(down.Messages())
	})

	t.Run("replace body", func(t *testing.T) {
		msg := msgFor("replace body")
		mustQueue(t, mx, from, []string{"bob@example.test"}, msg)
		delivered++
		got := messageWith(t, down.WaitMessages(t, delivered, 10*time.Second), msg)
		if b := bodyOf(got.Data); b != newBody {
			t.Errorf("body %q, want %q", b, newBody)
		}
		if !strings.HasSuffix(headerSection(got.Data), headerSection([]byte(msg))) {
			t.Errorf("header changed:\n%s", headerSection(got.Data))
		}
	})

	t.Run("change subject", func(t *testing.T) {
		msg := msgFor("change subject")
		mustQueue(t, mx, from, []string{"bob@example.test"}, msg)
		delivered++
		got := messageWith(t, down.WaitMessages(t, delivered, 10*time.Second), msg)
		if v := headerFields(got.Data, "Subject"); !slices.Equal(v, []string{"[scanned] change subject"}) {
			t.Errorf("Subject fields %q", v)
		}
	})

	t.Run("change sender", func(t *testing.T) {
		msg := msgFor("change sender")
		mustQueue(t, mx, from, []string{"bob@example.test"}, msg)
		delivered++
		got := messageWith(t, down.WaitMessages(t, delivered, 10*time.Second), msg)
		if got.From != "bounces@lists.sender.example" {
			t.Errorf("envelope sender %q, want the milter's bounces@lists.sender.example", got.From)
		}
		if headerValue(got.Data, "From") != "<"+from+">" {
			t.Errorf("From field changed: %q", headerValue(got.Data, "From"))
		}
	})

	msgs := noMoreMessages(t, down, delivered)
	for _, got := range msgs {
		switch s := headerValue(got.Data, "Subject"); s {
		case "delete carol", "delete odd", "discard", "quarantine", "own tempfail", "add outside":
			t.Errorf("a refused message (%q) was delivered to %q", s, got.To)
		}
	}
	if n := len(m.Messages()); n != 11 {
		t.Errorf("the milter saw %d messages, want 11", n)
	}
	if strings.Contains(r.log.String(), "victim@outside.example") && !strings.Contains(r.log.String(), "not relaying for a content filter") {
		t.Errorf("the outside recipient appears in the log without the refusal")
	}
}

// ---------------------------------------------------------------------------
// SPF, DKIM and DMARC.

// dkimTXT is a DKIM key record for pub in zone-file syntax, split into
// character-strings of at most 255 octets as TXT data must be.
func dkimTXT(t *testing.T, pub *rsa.PublicKey) string {
	t.Helper()
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	v := "v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)
	var parts []string
	for len(v) > 200 {
		parts = append(parts, `"`+v[:200]+`"`)
		v = v[200:]
	}
	return strings.Join(append(parts, `"`+v+`"`), " ")
}

var bTagRe = regexp.MustCompile(`(?:^|;)\s*b\s*=([^;]*)`)

// headerB is RFC 6008's header.b for the message's (only) signature, as
// RFC 8601 writes a value: its first eight characters, quoted when they
// are not an RFC 2045 token ('/' and '=' are tspecials).
func headerB(t *testing.T, signed string) string {
	t.Helper()
	sig := headerValue([]byte(signed), "DKIM-Signature")
	m := bTagRe.FindStringSubmatch(sig)
	if m == nil {
		t.Fatalf("no b= in %q", sig)
	}
	b := strings.Join(strings.Fields(m[1]), "")[:8]
	if strings.ContainsAny(b, "/=") {
		b = `"` + b + `"`
	}
	return b
}

// wantTopAR requires the delivered copy to start with exactly the
// Authentication-Results field ar, followed by our Received field.
func wantTopAR(t *testing.T, got []byte, ar string) {
	t.Helper()
	if !bytes.HasPrefix(got, []byte(ar)) {
		t.Errorf("the delivered copy does not start with\n%q\nbut with\n%q", ar, headerSection(got))
		return
	}
	if !bytes.HasPrefix(got[len(ar):], []byte("Received: from ")) {
		t.Errorf("our Received field does not follow Authentication-Results:\n%s", headerSection(got))
	}
}

// TestAuthResults: SPF, DKIM and DMARC through the relay against zones on
// the test DNS server. A message signed by the test, from an address SPF
// allows, arrives with exactly the Authentication-Results field RFC 8601
// asks for (our authserv_id from the configuration, one result per
// line). A p=reject domain's message with no signature and failing SPF is
// refused in the dialog (550 5.7.26). A forged field claiming our
// authserv-id is removed, a foreign one kept. A signature made by
// python3-dkim's dkimsign verifies too. With reject_spf_fail, SPF -all
// refuses at the first accepted RCPT, where SPF is evaluated (550
// 5.7.23).
func TestAuthResults(t *testing.T) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	txt := dkimTXT(t, &key.PublicKey)
	dns := dnstest.NewServer(t, fmt.Sprintf(`
auth.test.                 TXT "v=spf1 ip4:127.0.0.1 -all"
e2e._domainkey.auth.test.  TXT %[1]s
py._domainkey.auth.test.   TXT %[1]s
_dmarc.auth.test.          TXT "v=DMARC1; p=reject"
reject.test.               TXT "v=spf1 ip4:192.0.2.1 -all"
_dmarc.reject.test.        TXT "v=DMARC1; p=reject"
`, txt))
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	const authInbound = `  auth:
    enabled: true
    authserv_id: mx.e2e.test
`
	domains := fmt.Sprintf("  example.test: {deliver_to: \"smtp://%s\"}\n", down.Addr)
	r, mx, _ := startContentRelay(t, dns.Addr(), authInbound, domains)
	const rcpt = "bob@example.test"
	delivered := 0

	t.Run("signed", func(t *testing.T) {
		plain := milterpeers.CleanMessage("alice@auth.test", rcpt)
		var out bytes.Buffer
		err := msgauth.Sign(&out, strings.NewReader(plain), &msgauth.SignOptions{
			Domain: "auth.test", Selector: "e2e", Signer: key,
			HeaderCanonicalization: msgauth.CanonicalizationRelaxed,
			BodyCanonicalization:   msgauth.CanonicalizationRelaxed,
			HeaderKeys:             []string{"From", "To", "Subject", "Date", "Message-ID"},
		})
		if err != nil {
			t.Fatal(err)
		}
		signed := out.String()
		mustQueue(t, mx, "alice@auth.test", []string{rcpt}, signed)
		delivered++
		got := messageWith(t, down.WaitMessages(t, delivered, 10*time.Second), signed)
		wantTopAR(t, got.Data, "Authentication-Results: mx.e2e.test;\r\n"+
			"\tspf=pass smtp.mailfrom=alice@auth.test;\r\n"+
			"\tdkim=pass header.d=auth.test header.s=e2e header.a=rsa-sha256\r\n"+
			" header.b="+headerB(t, signed)+";\r\n"+
			"\tdmarc=pass header.from=auth.test policy.dmarc=reject\r\n")
		// The signature still verifies on the delivered copy.
		res := dnsutil.New(dns.Addr(), 2*time.Second)
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(got.Data), &msgauth.VerifyOptions{
			LookupTXT: func(name string) ([]string, error) { return res.LookupTXT(context.Background(), name) },
		})
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			t.Errorf("the delivered copy's signature: %v %+v", err, vs)
		}
	})

	t.Run("dmarc reject", func(t *testing.T) {
		msg := milterpeers.CleanMessage("boss@reject.test", rcpt)
		res := send(t, mx, "boss@reject.test", []string{rcpt}, msg)
		if !strings.HasPrefix(res.Data, "550 5.7.26 ") || !strings.Contains(res.Data, "reject.test") {
			t.Errorf("reply %q, want 550 5.7.26 naming reject.test", res.Data)
		}
		r.WaitLog(0, 5*time.Second, "msg=reject", "check=dmarc")
	})

	t.Run("header too large", func(t *testing.T) {
		// The checked header is held in memory: past 1 MiB the message is
		// refused for good (552 5.3.4), never buffered up to the 50 MB
		// message limit, twice.
		fill := strings.Repeat("X-Fill: "+strings.Repeat("a", 90)+"\r\n", 12000)
		msg := "From: alice@auth.test\r\nTo: " + rcpt + "\r\nSubject: big header\r\n" + fill + "\r\nbody\r\n"
		res := send(t, mx, "alice@auth.test", []string{rcpt}, msg)
		if !strings.HasPrefix(res.Data, "552 5.3.4 ") {
			t.Errorf("reply %q, want 552 5.3.4", res.Data)
		}
		// smtpd refuses it for every listener before the content stage.
		r.WaitLog(0, 5*time.Second, "msg=reject", "stage=data", "check=header_too_large")
	})

	t.Run("forged", func(t *testing.T) {
		msg := milterpeers.Message("alice@auth.test", rcpt, "forged results", []string{
			"Authentication-Results: mx.e2e.test; dkim=pass header.d=auth.test",
			"Authentication-Results: other.example; spf=pass smtp.mailfrom=alice@auth.test",
			"authentication-results: (a comment)\r\n MX.E2E.TEST;\r\n\tdmarc=pass header.from=auth.test",
			"Content-Type: text/plain",
		}, "unsigned\r\n")
		mustQueue(t, mx, "alice@auth.test", []string{rcpt}, msg)
		delivered++
		got := messageWith(t, down.WaitMessages(t, delivered, 10*time.Second), msg)
		wantTopAR(t, got.Data, "Authentication-Results: mx.e2e.test;\r\n"+
			"\tspf=pass smtp.mailfrom=alice@auth.test;\r\n"+
			"\tdkim=none;\r\n"+
			"\tdmarc=pass header.from=auth.test policy.dmarc=reject\r\n")
		all := headerFields(got.Data, "Authentication-Results")
		if len(all) != 2 || !strings.HasPrefix(all[1], "other.example; ") {
			t.Errorf("Authentication-Results fields %q, want ours and other.example's only", all)
		}
		if bodyOf(got.Data) != "unsigned\r\n" {
			t.Errorf("body %q", bodyOf(got.Data))
		}
	})

	// dkimsign (python3-dkim) shares no code with go-msgauth.
	t.Run("dkimsign", func(t *testing.T) {
		requireTool(t, "dkimsign")
		keyFile := filepath.Join(t.TempDir(), "py.key")
		pemKey := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
		if err := os.WriteFile(keyFile, pemKey, 0o600); err != nil {
			t.Fatal(err)
		}
		plain := milterpeers.CleanMessage("alice@auth.test", rcpt)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		cmd := exec.CommandContext(ctx, "dkimsign", "--signalg", "rsa-sha256", "py", "auth.test", keyFile)
		cmd.Stdin = strings.NewReader(plain)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("dkimsign: %v: %s", err, stderr.String())
		}
		// dkimsign prints the message unsigned when it fails.
		signed := strings.ReplaceAll(strings.ReplaceAll(string(out), "\r\n", "\n"), "\n", "\r\n")
		if !strings.HasPrefix(signed, "DKIM-Signature:") {
			t.Fatalf("dkimsign did not sign (%s): %q", stderr.String(), signed)
		}
		mustQueue(t, mx, "alice@auth.test", []string{rcpt}, signed)
		delivered++
		got := messageWith(t, down.WaitMessages(t, delivered, 10*time.Second), signed)
		wantTopAR(t, got.Data, "Authentication-Results: mx.e2e.test;\r\n"+
			"\tspf=pass smtp.mailfrom=alice@auth.test;\r\n"+
			"\tdkim=pass header.d=auth.test header.s=py header.a=rsa-sha256\r\n"+
			" header.b="+headerB(t, signed)+";\r\n"+
			"\tdmarc=pass header.from=auth.test policy.dmarc=reject\r\n")
	})

	msgs := noMoreMessages(t, down, delivered)
	for _, m := range msgs {
		if slices.Contains(m.To, rcpt) && m.From == "boss@reject.test" {
			t.Error("the DMARC-refused message was delivered")
		}
	}

	t.Run("reject_spf_fail", func(t *testing.T) {
		_, mx2, _ := startContentRelay(t, dns.Addr(), authInbound+"    reject_spf_fail: true\n", domains)
		c := dialSMTP(t, mx2)
		c.Expect("EHLO client.e2e.test", 250)
		c.Expect("MAIL FROM:<boss@reject.test>", 250)
		if code, text := c.Cmd("RCPT TO:<" + rcpt + ">"); code != 550 || !strings.HasPrefix(text, "550 5.7.23 ") {
			t.Errorf("RCPT from a domain whose SPF fails us: %q, want 550 5.7.23", text)
		}
		c.Expect("RSET", 250)
		c.Expect("MAIL FROM:<alice@auth.test>", 250)
		c.Expect("RCPT TO:<"+rcpt+">", 250)
		c.Expect("QUIT", 221)
	})
}

// dmarcMessage is a plain message with the given From fields (each a
// whole field value) and a Subject that names it in the log.
func dmarcMessage(subject string, froms ...string) string {
	var b strings.Builder
	for _, f := range froms {
		b.WriteString("From: " + f + "\r\n")
	}
	b.WriteString("To: bob@example.test\r\nSubject: " + subject + "\r\n" +
		"Date: Mon, 2 Jan 2006 15:04:05 +0000\r\nMessage-ID: <" + strings.ReplaceAll(subject, " ", "-") + "@e2e.test>\r\n" +
		"\r\nTransfer the money today.\r\n")
	return b.String()
}

// TestDMARCDodges: spoofs of a p=reject domain that used to get 250 are
// refused in the dialog. Issue 11, finding 9: a From field with the
// victim plus ten other author domains (permerror "too many author
// domains") and eleven From fields got 250 while the plain spoof got
// 550 5.7.26; now several From fields are refused (550 5.6.0, RFC 5322
// allows one), more than ten author domains too (550 5.7.1), and a
// p=reject failure of any author domain of one From refuses (550
// 5.7.26). Finding 10: a record with a harmless slip (ri=86400s,
// rf=iodef) was permerror and switched p=reject off; now tags are read
// leniently (RFC 7489 §6.3) and p=reject holds, while an invalid p= with
// a valid rua= is p=none (§6.6.3) and delivered. Each refusal is logged
// once with the check that fired.
func TestDMARCDodges(t *testing.T) {
	dns := dnstest.NewServer(t, `
bank.test.            TXT "v=spf1 -all"
_dmarc.bank.test.     TXT "v=DMARC1; p=reject"
slip-ri.test.         TXT "v=spf1 -all"
_dmarc.slip-ri.test.  TXT "v=DMARC1; p=reject; ri=86400s"
slip-rf.test.         TXT "v=spf1 -all"
_dmarc.slip-rf.test.  TXT "v=DMARC1; p=reject; rf=iodef"
slip-sp.test.         TXT "v=spf1 -all"
_dmarc.slip-sp.test.  TXT "v=DMARC1; p=reject; sp=rejekt; pct=hundred; adkim=x"
typo-p.test.          TXT "v=spf1 -all"
_dmarc.typo-p.test.   TXT "v=DMARC1; p=rejekt; rua=mailto:dmarc@typo-p.test"
`)
	down := startTestServer(t, listenLoopback(t), serverOptions{})
	const authInbound = "  auth:\n    enabled: true\n    authserv_id: mx.e2e.test\n"
	domains := fmt.Sprintf("  example.test: {deliver_to: \"smtp://%s\"}\n", down.Addr)
	r, mx, _ := startContentRelay(t, dns.Addr(), authInbound, domains)
	const rcpt = "bob@example.test"

	var ten []string
	for i := range 10 {
		ten = append(ten, fmt.Sprintf("x@d%d.example.net", i))
	}
	var elevenFields []string
	elevenFields = append(elevenFields, "ceo@bank.test")
	elevenFields = append(elevenFields, ten...)

	for _, tc := range []struct {
		name, from string
		msg        string
		want       string // reply prefix
		check      string // the check= of the log line
	}{
		{"plain spoof", "boss@bank.test", dmarcMessage("plain spoof", "ceo@bank.test"), "550 5.7.26 ", "check=dmarc"},
		{"eleven author domains in one From", "boss@bank.test",
			dmarcMessage("eleven domains", strings.Join(elevenFields, ", ")), "550 5.7.1 ", "check=author_domains"},
		{"eleven From fields", "boss@bank.test", dmarcMessage("eleven fields", elevenFields...), "550 5.6.0 ", "check=multiple_from"},
		{"two From fields, the victim second", "boss@bank.test", dmarcMessage("two fields", "x@d0.example.net", "ceo@bank.test"), "550 5.6.0 ", "check=multiple_from"},
		{"victim third of three mailboxes", "boss@bank.test",
			dmarcMessage("three mailboxes", "x@d0.example.net, Y <y@d1.example.net>, ceo@bank.test"), "550 5.7.26 ", "check=dmarc"},
		{"record slip ri=86400s", "boss@slip-ri.test", dmarcMessage("slip ri", "ceo@slip-ri.test"), "550 5.7.26 ", "check=dmarc"},
		{"record slip rf=iodef", "boss@slip-rf.test", dmarcMessage("slip rf", "ceo@slip-rf.test"), "550 5.7.26 ", "check=dmarc"},
		{"bad sp, pct and adkim fall back to defaults", "boss@slip-sp.test", dmarcMessage("slip sp", "ceo@slip-sp.test"), "550 5.7.26 ", "check=dmarc"},
	} {
		mark := r.Mark()
		res := send(t, mx, tc.from, []string{rcpt}, tc.msg)
		if !strings.HasPrefix(res.Data, tc.want) {
			t.Errorf("%s: reply %q, want %q…", tc.name, res.Data, tc.want)
			continue
		}
		// The line is written before the reply; the log pipe may lag.
		var lines []string
		for deadline := time.Now().Add(5 * time.Second); len(lines) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			lines = r.LogLines("msg=reject", "stage=content", tc.check, "queue_id=")
			lines = slices.DeleteFunc(lines, func(l string) bool { return !strings.Contains(r.log.String()[mark:], l) })
		}
		if n := strings.Count(r.log.String()[mark:], "msg=reject"); len(lines) != 1 || n != 1 {
			t.Errorf("%s: want one line \"msg=reject stage=content %s\", got:\n%s", tc.name, tc.check, r.log.String()[mark:])
		}
	}

	// An invalid p= with a valid rua= is p=none: delivered, recorded.
	msg := dmarcMessage("typo p", "ceo@typo-p.test")
	mustQueue(t, mx, "boss@typo-p.test", []string{rcpt}, msg)
	got := messageWith(t, down.WaitMessages(t, 1, 10*time.Second), msg)
	wantTopAR(t, got.Data, "Authentication-Results: mx.e2e.test;\r\n"+
		"\tspf=fail smtp.mailfrom=boss@typo-p.test;\r\n"+
		"\tdkim=none;\r\n"+
		"\tdmarc=fail header.from=typo-p.test policy.dmarc=none\r\n")
	noMoreMessages(t, down, 1)
}
