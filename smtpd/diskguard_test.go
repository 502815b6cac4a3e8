package smtpd_test

import (
	"log/slog"
	"strings"
	"sync/atomic"
	"testing"

	"securerelay/smtpd"
)

// Below MinFreeSpace (plus the declared SIZE) MAIL gets 452 4.3.1 before
// any data, logged once as a warning and counted; it recovers by itself.
func TestMinFreeSpace(t *testing.T) {
	logs := &lockedBuffer{}
	var free atomic.Int64
	free.Store(10 << 20)
	h := start(t, &fakeRole{}, func(o *smtpd.Options) {
		o.Logger = slog.New(slog.NewTextHandler(logs, nil))
		o.MinFreeSpace = 5 << 20
		o.FreeSpace = func() (int64, error) { return free.Load(), nil }
	})
	c := dial(t, h.addr)
	c.ehlo("client.example")
	c.expect("MAIL FROM:<a@sender.test>", 250, "")
	c.expect("RSET", 250, "")
	// 10 MiB free, 6 MiB declared: less than 5 MiB would be left.
	c.expect("MAIL FROM:<a@sender.test> SIZE=6291456", 452, "4.3.1")
	free.Store(4 << 20)
	c.expect("MAIL FROM:<a@sender.test>", 452, "4.3.1")
	free.Store(10 << 20)
	c.expect("MAIL FROM:<a@sender.test>", 250, "")
	c.expect("RCPT TO:<rcpt@ours.test>", 250, "")
	if code, _ := c.data("Subject: x\r\n\r\nbody\r\n.\r\n"); code != 250 {
		t.Fatalf("DATA once there is room again: %d", code)
	}
	if got := logs.lines("msg=reject", "level=WARN", "stage=mail", "check=min_free_space", "code=452", "dsn=4.3.1"); len(got) != 2 {
		t.Errorf("want two refusal lines, got:\n%s", strings.Join(logs.lines("msg=reject"), "\n"))
	}
	if n := h.srv.Refusals()["min_free_space"]; n != 2 {
		t.Errorf("counted %d, want 2", n)
	}
}
