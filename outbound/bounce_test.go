package outbound_test

import (
	"context"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/outbound"
	"securerelay/queue"
)

// scripted is a Deliverer that fails the original message's recipients as
// told and hands every DSN (null sender) to the test.
type scripted struct {
	results map[string]queue.Result // by recipient; missing = delivered
	dsns    chan dsnSeen
}

type dsnSeen struct {
	env  queue.Envelope
	data string
}

func (s *scripted) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	res := make([]queue.Result, len(d.Rcpts))
	if d.Envelope.From == "" {
		rc, err := d.Open()
		if err == nil {
			b, _ := io.ReadAll(rc)
			rc.Close()
			s.dsns <- dsnSeen{*d.Envelope, string(b)}
		}
		for i := range res {
			res[i] = queue.Result{Status: queue.Delivered, Code: "2.0.0"}
		}
		return res
	}
	for i, rc := range d.Rcpts {
		r, ok := s.results[rc]
		if !ok {
			r = queue.Result{Status: queue.Delivered, Code: "2.0.0", Relay: "test"}
		}
		res[i] = r
	}
	return res
}

const bodyMarker = "BODY-MUST-NOT-BE-RETURNED"

func TestBouncerSpoolsDSNToSender(t *testing.T) {
	s := &scripted{
		results: map[string]queue.Result{"nobody@remote.test": {
			Status: queue.PermFail, Code: "5.1.1", Relay: "mx.remote.test[192.0.2.1]:25",
			Reply: "mx.remote.test[192.0.2.1]:25 said: 550 5.1.1 user unknown (in reply to RCPT TO)",
		}},
		dsns: make(chan dsnSeen, 4),
	}
	var q *queue.Queue
	q, err := queue.Open(queue.Options{
		Dir: t.TempDir(), Retry: []time.Duration{time.Hour}, Logger: discard, Deliverer: s,
		Bouncer: outbound.NewBouncer(func() *queue.Queue { return q }, outbound.BouncerOptions{Hostname: "relay.ours.test", Postmaster: "postmaster@ours.test"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		q.Stop(ctx)
	}()

	orig := "From: <sender@ours.test>\r\nSubject: the original\r\nMessage-ID: <orig@ours.test>\r\n\r\n" + bodyMarker + "\r\n"
	id, err := q.Put(queue.Envelope{From: "sender@ours.test", To: []string{"ok@remote.test", "nobody@remote.test"}, Origin: queue.OriginOutbound},
		strings.NewReader(orig))
	if err != nil {
		t.Fatal(err)
	}
	var got dsnSeen
	select {
	case got = <-s.dsns:
	case <-time.After(testTimeout):
		t.Fatal("no DSN was spooled")
	}
	if got.env.From != "" || len(got.env.To) != 1 || got.env.To[0] != "sender@ours.test" || got.env.Origin != queue.OriginLocal {
		t.Errorf("DSN envelope %+v, want <> to the original sender, origin local", got.env)
	}
	if !strings.Contains(got.env.Client, id) {
		t.Errorf("DSN envelope client %q does not name the original %s", got.env.Client, id)
	}
	unfolded := strings.ReplaceAll(got.data, "\r\n\t", " ")
	for _, want := range []string{
		"To: <sender@ours.test>\r\n",
		"postmaster@ours.test",
		"Auto-Submitted: auto-replied\r\n",
		"multipart/report",
		"Reporting-MTA: dns; relay.ours.test\r\n",
		"Final-Recipient: rfc822; nobody@remote.test\r\n",
		"Action: failed\r\n",
		"Status: 5.1.1\r\n",
		"Remote-MTA: dns; mx.remote.test\r\n",
		"550 5.1.1 user unknown",
		"Subject: the original",
	} {
		if !strings.Contains(unfolded, want) {
			t.Errorf("DSN lacks %q", want)
		}
	}
	if strings.Contains(got.data, "ok@remote.test") {
		t.Error("DSN reports the delivered recipient too")
	}
	if strings.Contains(got.data, bodyMarker) {
		t.Error("DSN returns the original body; only the header should be returned")
	}
	select {
	case extra := <-s.dsns:
		t.Errorf("second DSN: %+v", extra.env)
	default:
	}
}

// Whole path: the next hop refuses one recipient at RCPT, the engine
// reports PermFail, the queue calls the Bouncer, and the engine delivers
// the DSN with MAIL FROM:<> to the sender.
func TestBounceEndToEnd(t *testing.T) {
	h := newHop(t, hopOptions{Rcpt: func(to string) error {
		if strings.HasPrefix(to, "nobody@") {
			return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "user unknown")
		}
		return nil
	}})
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	var q *queue.Queue
	q, err := queue.Open(queue.Options{
		Dir: t.TempDir(), Retry: []time.Duration{time.Hour}, Logger: discard, Deliverer: e,
		Bouncer: outbound.NewBouncer(func() *queue.Queue { return q }, outbound.BouncerOptions{Hostname: "relay.ours.test"}),
	})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	if _, err := q.Put(queue.Envelope{From: "sender@ours.test", To: []string{"nobody@remote.test", "ok@remote.test"}, Origin: queue.OriginOutbound},
		strings.NewReader(message)); err != nil {
		t.Fatal(err)
	}
	var orig, dsn hopMsg
	for i := 0; i < 2; i++ {
		m := h.next()
		if m.From == "" {
			dsn = m
		} else {
			orig = m
		}
	}
	if len(orig.To) != 1 || orig.To[0] != "ok@remote.test" || string(orig.Data) != message {
		t.Errorf("original went to %v", orig.To)
	}
	if len(dsn.To) != 1 || dsn.To[0] != "sender@ours.test" {
		t.Errorf("DSN went to %v", dsn.To)
	}
	if d := string(dsn.Data); !strings.Contains(d, "Final-Recipient: rfc822; nobody@remote.test") || !strings.Contains(d, "Status: 5.1.1") ||
		!strings.Contains(d, "MAILER-DAEMON@relay.ours.test") {
		t.Errorf("DSN:\n%s", d)
	}
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	q.Stop(ctx)
	if n := q.Len(); n != 0 {
		t.Errorf("%d messages left in the queue", n)
	}
	h.none()
}
