package e2e

import (
	"os/user"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/internal/testutil"
)

// Issue 14: queue bounce returns a waiting message, and a held one, to
// its sender with a failure DSN (status 5.0.0) for the recipients still
// owed it, then removes it; it is logged per recipient as status=bounced
// and with the operator; a message from <> is refused, nothing changed;
// with the relay stopped it works on the spool.
// The next hop (partner.test) defers everyone but bob, so messages wait;
// DSNs to alice@example.test arrive in a maildir and are read with
// Python's email package.
func TestQueueBounce(t *testing.T) {
	requireTool(t, "python3")
	peer := testutil.StartPeer(t, testutil.PeerOptions{Domain: "partner.e2e.test", Rcpt: func(to string) error {
		if strings.HasPrefix(to, "bob@") {
			return nil
		}
		return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "mailbox busy, try later (e2e)"}
	}})
	// No retry of its own within the test.
	r := startDSNRelay(t, peer.Addr, "", "queue:\n  retry: [1h]\n")
	cfg := r.Relay.Config
	me, err := user.Current()
	if err != nil {
		t.Fatal(err)
	}
	send := func(from string, to []string, data []byte) string {
		t.Helper()
		var rcpts []pyRcpt
		for _, a := range to {
			rcpts = append(rcpts, pyRcpt{To: a})
		}
		mark := r.Mark()
		replies := pySend(t, r.Sub, from, nil, rcpts, data)
		last := replies[len(replies)-1]
		if !strings.HasPrefix(last, "250 2.0.0 Ok: queued as ") {
			t.Fatalf("smtplib replies %q", replies)
		}
		id := strings.TrimPrefix(last, "250 2.0.0 Ok: queued as ")
		for _, a := range to {
			r.WaitLog(mark, 20*time.Second, "queue_id="+id, "to="+a, "status=")
		}
		return id
	}
	bounce := func(id string) (string, string, int) {
		return runRelayCmd(t, "queue", "bounce", id, "--config", cfg)
	}
	inQueue := func(id string) bool {
		out, errOut, code := runRelayCmd(t, "queue", "list", "--config", cfg)
		if code != 0 {
			t.Fatalf("queue list: exit %d: %s", code, errOut)
		}
		return strings.Contains(out, id)
	}

	// A deferred message, delivered to bob already: only carol and dave
	// are returned.
	waiting := send("alice@example.test", []string{"bob@partner.test", "carol@partner.test", "dave@partner.test"},
		[]byte("From: alice@example.test\r\nTo: bob@partner.test\r\nSubject: waiting one\r\n\r\nhello\r\n"))
	mark := r.Mark()
	if out, errOut, code := bounce(waiting); code != 0 || !strings.Contains(out, waiting+": returned to its sender") {
		t.Fatalf("bounce of a waiting message: exit %d\n%s%s", code, out, errOut)
	}
	d := r.dsnFor(t, 1)
	if d.Type != "multipart/report" || d.ReportType != "delivery-status" || len(d.Recipients) != 2 {
		t.Fatalf("DSN for the waiting message: %+v", d)
	}
	for k, who := range []string{"carol", "dave"} {
		rc := d.Recipients[k]
		if rc["Final-Recipient"] != "rfc822; "+who+"@partner.test" || rc["Action"] != "failed" || rc["Status"] != "5.0.0" {
			t.Errorf("DSN recipient %d: %+v, want %s failed 5.0.0", k, rc, who)
		}
	}
	if !strings.Contains(d.Text, "postmaster returned this message") || !strings.Contains(d.Text, "4.2.0 mailbox busy") {
		t.Errorf("DSN text does not say why:\n%s", d.Text)
	}
	if !strings.Contains(d.ThirdPart, "rfc822") {
		t.Errorf("DSN does not return the message (header): %+v", d)
	}
	for _, who := range []string{"carol", "dave"} {
		if l := r.LogLines("queue_id="+waiting, "to="+who+"@partner.test", "status=bounced", "dsn=5.0.0"); len(l) != 1 {
			t.Errorf("log lines status=bounced for %s: %d, want 1\n%s", who, len(l), r.log.String()[mark:])
		}
	}
	if l := r.LogLines("queue_id="+waiting, "to=bob@partner.test", "status=bounced"); len(l) != 0 {
		t.Errorf("bob, delivered, logged as bounced: %q", l)
	}
	if l := r.LogLines(`msg="queue control: bounced"`, "queue_id="+waiting, "operator="+me.Username, "uid="+me.Uid, "via=socket"); len(l) != 1 {
		t.Errorf("bounce not logged with the operator:\n%s", r.log.String()[mark:])
	}
	if inQueue(waiting) {
		t.Errorf("%s still in the queue after the bounce", waiting)
	}
	if n := len(peer.Messages()); n != 1 {
		t.Errorf("next hop got %d messages, want bob's one only", n)
	}

	// A held message (held by the operator).
	held := send("alice@example.test", []string{"erin@partner.test"},
		[]byte("From: alice@example.test\r\nTo: erin@partner.test\r\nSubject: held one\r\n\r\nhello\r\n"))
	if out, errOut, code := runRelayCmd(t, "queue", "hold", held, "--config", cfg); code != 0 {
		t.Fatalf("hold: exit %d\n%s%s", code, out, errOut)
	}
	if out, errOut, code := bounce(held); code != 0 || !strings.Contains(out, held+": returned to its sender") {
		t.Fatalf("bounce of a held message: exit %d\n%s%s", code, out, errOut)
	}
	d = r.dsnFor(t, 2)
	if len(d.Recipients) != 1 || d.Recipients[0]["Final-Recipient"] != "rfc822; erin@partner.test" ||
		d.Recipients[0]["Action"] != "failed" || d.Recipients[0]["Status"] != "5.0.0" {
		t.Errorf("DSN for the held message: %+v", d.Recipients)
	}
	// The attempt before the hold, not the operator's name.
	if !strings.Contains(d.Text, "4.2.0 mailbox busy") || strings.Contains(d.Text, "operator") || strings.Contains(d.Text, me.Username) {
		t.Errorf("DSN text for the held message:\n%s", d.Text)
	}
	if l := r.LogLines("queue_id="+held, "to=erin@partner.test", "status=bounced", "dsn=5.0.0"); len(l) != 1 {
		t.Errorf("log lines status=bounced for erin: %d, want 1", len(l))
	}
	if inQueue(held) {
		t.Errorf("%s still in the queue (or hold) after the bounce", held)
	}

	// A message from <> (the first DSN, sent on to a partner, waiting):
	// refused, still queued, no DSN.
	dsnMsg := waitMaildir(t, r.Mail, "alice@example.test", 2, 10*time.Second)[0]
	null := send("", []string{"frank@partner.test"}, dsnMsg)
	out, errOut, code := bounce(null)
	if code != 1 || !strings.Contains(errOut, "null sender <>") || !strings.Contains(errOut, "queue delete "+null) {
		t.Errorf("bounce of a <> message: exit %d\n%s%s", code, out, errOut)
	}
	if !inQueue(null) {
		t.Errorf("%s gone after a refused bounce", null)
	}
	if l := r.LogLines("queue_id="+null, "status=bounced"); len(l) != 0 {
		t.Errorf("<> message logged as bounced: %q", l)
	}
	if l := r.LogLines("non-delivery notification", "queue_id="+null); len(l) != 0 {
		t.Errorf("a DSN was spooled for the <> message: %q", l)
	}

	// With the relay stopped the bounce works on the spool: the DSN is
	// spooled there and sent when the relay starts again.
	stopped := send("alice@example.test", []string{"gina@partner.test"},
		[]byte("From: alice@example.test\r\nTo: gina@partner.test\r\nSubject: while stopped\r\n\r\nhello\r\n"))
	r.Stop()
	out, errOut, code = bounce(stopped)
	if code != 0 || !strings.Contains(out, stopped+": returned to its sender") || !strings.Contains(errOut, "queue control: bounced") ||
		!strings.Contains(errOut, "operator="+me.Username) || !strings.Contains(errOut, "via=spool") {
		t.Fatalf("bounce with the relay stopped: exit %d\n%s%s", code, out, errOut)
	}
	r2 := startRelay(t, cfg, r.MX, r.Sub)
	r.Relay = r2
	d = r.dsnFor(t, 3)
	if len(d.Recipients) != 1 || d.Recipients[0]["Final-Recipient"] != "rfc822; gina@partner.test" || d.Recipients[0]["Status"] != "5.0.0" {
		t.Errorf("DSN of the bounce on the stopped relay's spool: %+v", d.Recipients)
	}
	if inQueue(stopped) {
		t.Errorf("%s still queued after the bounce on the spool", stopped)
	}
}
