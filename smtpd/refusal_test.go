package smtpd_test

import (
	"bytes"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"securerelay/smtpd"
	"securerelay/smtputil"
)

// lockedBuffer is a log sink the sessions' goroutines may share.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// lines returns the log lines holding every one of want.
func (l *lockedBuffer) lines(want ...string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
next:
	for _, line := range strings.Split(l.b.String(), "\n") {
		for _, w := range want {
			if !strings.Contains(line, w) {
				continue next
			}
		}
		out = append(out, line)
	}
	return out
}

// A role's Refusal reaches the client as its bare reply (not go-smtp's
// 451 for an unknown error type) and is logged exactly once, as "reject"
// with the session's keys, the stage, the check and the check's own keys,
// and counted under the check; the refusals smtpd makes itself use the
// same line.
func TestRefusalLoggedOnce(t *testing.T) {
	logs := &lockedBuffer{}
	role := &fakeRole{
		mail: func(_ *smtpd.State, from string) (string, error) {
			if from == "bad@sender.test" {
				return "", smtpd.Refuse("sender_check", smtputil.Reply(550, 5, 7, 1, "sender refused"), "seen", "bad")
			}
			return from, nil
		},
		rcpt: func(_ *smtpd.State, to string) (string, error) {
			if strings.HasPrefix(to, "nobody@") {
				return "", smtpd.Refuse("rcpt_check", smtputil.Reply(450, 4, 1, 1, "try later"))
			}
			if strings.HasPrefix(to, "bare@") {
				return "", smtputil.Reply(550, 5, 1, 1, "a bare reply")
			}
			return to, nil
		},
		data: func(*smtpd.State, *smtpd.Message) error {
			ref := smtpd.Refuse("content_check", smtputil.Reply(554, 5, 7, 1, "content refused"), "class", "bad")
			ref.Level = slog.LevelWarn
			return ref
		},
	}
	h := start(t, role, func(o *smtpd.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, nil))
		o.MaxErrors = 100
		o.MaxHops = 1
	})
	c := dial(t, h.addr)
	c.ehlo("client.example")
	c.expect("MAIL FROM:<bad@sender.test>", 550, "5.7.1")
	c.expect("MAIL FROM:<good@sender.test>", 250, "")
	c.expect("RCPT TO:<nobody@ours.test>", 450, "4.1.1")
	c.expect("RCPT TO:<bare@ours.test>", 550, "5.1.1")
	c.expect("RCPT TO:<rcpt@ours.test>", 250, "")
	if code, msg := c.data("Subject: x\r\n\r\nbody\r\n.\r\n"); code != 554 || !strings.HasPrefix(msg, "5.7.1 content refused") {
		t.Fatalf("DATA: %d %s, want the role's 554 5.7.1", code, msg)
	}
	// smtpd's own refusal: a message over max_hops.
	c.expect("MAIL FROM:<good@sender.test>", 250, "")
	c.expect("RCPT TO:<rcpt@ours.test>", 250, "")
	if code, _ := c.data("Received: from a\r\nReceived: from b\r\n\r\nbody\r\n.\r\n"); code != 554 {
		t.Fatalf("DATA over max_hops: %d", code)
	}
	c.expect("QUIT", 221, "")

	common := []string{"msg=reject", "listener=mx", "conn_id=mx-1", "client=127.0.0.1", "helo=client.example"}
	for _, want := range [][]string{
		{"level=INFO", "stage=mail", "check=sender_check", "code=550", "dsn=5.7.1", `reply="sender refused"`, "from=\"\"", "count=1", "seen=bad"},
		{"level=INFO", "stage=rcpt", "check=rcpt_check", "code=450", "dsn=4.1.1", "from=good@sender.test", "rcpt=nobody@ours.test", "count=1"},
		{"level=INFO", "stage=rcpt", "check=unnamed", "code=550", "rcpt=bare@ours.test"},
		{"level=WARN", "stage=content", "check=content_check", "code=554", "queue_id=", "class=bad"},
		{"level=INFO", "stage=data", "check=max_hops", "code=554", "dsn=5.4.6", "queue_id=", "count=1"},
	} {
		if got := logs.lines(append(common, want...)...); len(got) != 1 {
			t.Errorf("want one line with %v, got %d:\n%s", want, len(got), strings.Join(logs.lines("msg=reject"), "\n"))
		}
	}
	if n := len(logs.lines("msg=reject")); n != 5 {
		t.Errorf("%d reject lines, want 5 (one per refusal):\n%s", n, strings.Join(logs.lines("msg=reject"), "\n"))
	}
	r := h.srv.Refusals()
	if r["sender_check"] != 1 || r["rcpt_check"] != 1 || r["unnamed"] != 1 || r["content_check"] != 1 || r["max_hops"] != 1 {
		t.Errorf("refusals counted: %v", r)
	}
}
