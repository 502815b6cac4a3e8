package queue

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func withDSN(e Envelope, p ...RcptDSN) Envelope {
	e.RcptDSN = p
	return e
}

func TestRcptDSNWants(t *testing.T) {
	for _, tc := range []struct {
		notify                  string
		success, failure, delay bool
	}{
		{"", false, true, true},
		{"NEVER", false, false, false},
		{"SUCCESS", true, false, false},
		{"success,FAILURE", true, true, false},
		{"DELAY,FAILURE", false, true, true},
	} {
		r := RcptDSN{Notify: tc.notify}
		if r.Wants(NotifySuccess) != tc.success || r.Wants(NotifyFailure) != tc.failure || r.Wants(NotifyDelay) != tc.delay {
			t.Errorf("NOTIFY=%q: success %v failure %v delay %v; want %v %v %v", tc.notify,
				r.Wants(NotifySuccess), r.Wants(NotifyFailure), r.Wants(NotifyDelay), tc.success, tc.failure, tc.delay)
		}
	}
}

// A failure a recipient asked not to hear about (NOTIFY=NEVER, or SUCCESS
// or DELAY only) is no DSN, and the message is not held for the admin
// either: the sender made the choice; the others still get theirs.
func TestNoFailureDSNWhenNotAsked(t *testing.T) {
	b := &bouncer{}
	q := open(t, "", Options{Bouncer: b.Bounce}, func(ctx context.Context, d *Delivery) []Result {
		return all(len(d.Rcpts), permFail)
	})
	e := withDSN(env("never@example.com", "success@example.com", "default@example.com", "failure@example.com"),
		RcptDSN{Notify: "NEVER"}, RcptDSN{Notify: "SUCCESS"}, RcptDSN{}, RcptDSN{Notify: "FAILURE", ORCPT: "rfc822;Failure@Example.com"})
	id := put(t, q.Queue, e, msg1)
	q.Start()
	q.rec.next(t)
	gone(t, q.Queue, id)
	q.stop()
	if _, err := os.Stat(filepath.Join(q.dir, holdDir, id)); !os.IsNotExist(err) {
		t.Errorf("message held (%v); the sender asked for no notice, nothing is kept", err)
	}
	if b.n() != 1 {
		t.Fatalf("Bouncer called %d times, want once", b.n())
	}
	got := b.call(0)
	if len(got) != 2 || got[0].Rcpt != "default@example.com" || got[1].Rcpt != "failure@example.com" ||
		got[0].Action != ActionFailed || got[1].DSN.ORCPT != "rfc822;Failure@Example.com" {
		t.Fatalf("reports %+v; want default@ and failure@ (with its ORCPT), failed", got)
	}
	if n := strings.Count(q.logs.String(), "no DSN: the sender asked for none"); n != 2 {
		t.Errorf("%d log lines for the failures without a DSN, want 2", n)
	}
}

// Success notices: only for NOTIFY=SUCCESS, only where the engine says the
// relay is the one to send it (Result.Success), and never for inbound mail
// or <>.
func TestSuccessNotices(t *testing.T) {
	results := map[string]Result{
		"relayed@example.com":   {Status: Delivered, Code: "2.0.0", Success: ActionRelayed, Relay: "mx.example.com[192.0.2.1]:25"},
		"delivered@example.com": {Status: Delivered, Code: "2.0.0", Success: ActionDelivered, Relay: "maildir"},
		"passed@example.com":    {Status: Delivered, Code: "2.0.0"}, // the next hop took the request over
		"nonotify@example.com":  {Status: Delivered, Code: "2.0.0", Success: ActionRelayed},
	}
	deliver := func(ctx context.Context, d *Delivery) []Result {
		var rs []Result
		for _, r := range d.Rcpts {
			rs = append(rs, results[r])
		}
		return rs
	}
	succ := RcptDSN{Notify: "SUCCESS,FAILURE"}
	e := withDSN(env("relayed@example.com", "delivered@example.com", "passed@example.com", "nonotify@example.com"), succ, succ, succ)
	for _, tc := range []struct {
		name, from, origin string
		want               int
	}{
		{"outbound", "sender@example.org", OriginOutbound, 2},
		{"inbound", "sender@example.org", OriginInbound, 0},
		{"null sender", "", OriginOutbound, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &bouncer{}
			q := open(t, "", Options{Bouncer: b.Bounce}, deliver)
			e := e
			e.From, e.Origin = tc.from, tc.origin
			id := put(t, q.Queue, e, msg1)
			q.Start()
			q.rec.next(t)
			gone(t, q.Queue, id)
			if tc.want == 0 {
				if b.n() != 0 {
					t.Fatalf("notices sent: %+v", b.calls)
				}
				return
			}
			if b.n() != 1 {
				t.Fatalf("Bouncer called %d times, want once", b.n())
			}
			got := b.call(0)
			if len(got) != 2 || got[0].Rcpt != "relayed@example.com" || got[0].Action != ActionRelayed ||
				got[1].Rcpt != "delivered@example.com" || got[1].Action != ActionDelivered {
				t.Fatalf("notices %+v", got)
			}
		})
	}
}

// A success notice that cannot be spooled is logged; the recipient stays
// delivered (it is not delivered twice for the sake of its notice).
func TestSuccessNoticeErrorDoesNotRedeliver(t *testing.T) {
	b := &bouncer{err: func(int) error { return os.ErrPermission }}
	q := open(t, "", Options{Bouncer: b.Bounce}, func(ctx context.Context, d *Delivery) []Result {
		return all(len(d.Rcpts), Result{Status: Delivered, Code: "2.0.0", Success: ActionRelayed})
	})
	id := put(t, q.Queue, withDSN(env("a@example.com"), RcptDSN{Notify: "SUCCESS"}), msg1)
	q.Start()
	q.rec.next(t)
	gone(t, q.Queue, id)
	if q.rec.n() != 1 || b.n() != 1 {
		t.Fatalf("%d attempts, %d notices", q.rec.n(), b.n())
	}
	if !strings.Contains(q.logs.String(), "could not queue a delay or success notice") {
		t.Error("failed notice not logged")
	}
}

// Delay warnings: once per recipient, after DelayWarning, only for those
// who asked (DELAY, or no NOTIFY), and remembered across a restart.
func TestDelayWarning(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	b := &bouncer{}
	opts := Options{Retry: []time.Duration{time.Hour}, MaxAge: 5 * 24 * time.Hour, DelayWarning: 4 * time.Hour, Bouncer: b.Bounce}
	q := open(t, dir, opts, alwaysTemp)
	e := withDSN(env("default@example.com", "delay@example.com", "failure@example.com", "never@example.com"),
		RcptDSN{}, RcptDSN{Notify: "DELAY"}, RcptDSN{Notify: "FAILURE"}, RcptDSN{Notify: "NEVER"})
	id := put(t, q.Queue, e, msg1)
	q.Start()
	q.rec.next(t)
	s := idle(t, q.Queue, id)
	if b.n() != 0 {
		t.Fatalf("warning before delay_warning_time: %+v", b.calls)
	}
	// Attempts after 4h: one warning for the two who asked, then none.
	for k := 0; k < 5; k++ {
		q.clock.Set(s.next)
		q.poke()
		q.rec.next(t)
		s = idle(t, q.Queue, id)
	}
	if b.n() != 1 {
		t.Fatalf("%d warnings sent, want 1: %+v", b.n(), b.calls)
	}
	got := b.call(0)
	if len(got) != 2 || got[0].Rcpt != "default@example.com" || got[1].Rcpt != "delay@example.com" || got[0].Action != ActionDelayed {
		t.Fatalf("warning %+v", got)
	}
	// After a restart the sidecar says who was warned.
	q.stop()
	q.Close()
	q2 := open(t, dir, opts, alwaysTemp)
	q2.clock.Set(s.next)
	q2.Start()
	q2.rec.next(t)
	idle(t, q2.Queue, id)
	if b.n() != 1 {
		t.Fatalf("warned again after a restart: %+v", b.calls)
	}
}

// Off by default, and never for inbound mail.
func TestNoDelayWarning(t *testing.T) {
	for _, tc := range []struct {
		name   string
		warn   time.Duration
		origin string
	}{{"off", 0, OriginOutbound}, {"inbound", time.Hour, OriginInbound}} {
		t.Run(tc.name, func(t *testing.T) {
			b := &bouncer{}
			q := open(t, "", Options{Retry: []time.Duration{time.Hour}, DelayWarning: tc.warn, Bouncer: b.Bounce}, alwaysTemp)
			e := withDSN(env("a@example.com"), RcptDSN{Notify: "DELAY"})
			e.Origin = tc.origin
			id := put(t, q.Queue, e, msg1)
			q.clock.Advance(48 * time.Hour)
			q.Start()
			q.rec.next(t)
			idle(t, q.Queue, id)
			if b.n() != 0 {
				t.Fatalf("warning sent: %+v", b.calls)
			}
		})
	}
}

// Files written before DSN support have none of the new fields; they load
// as messages without DSN parameters, and the new fields survive a
// restart.
func TestEnvelopeDSNFieldsCompatible(t *testing.T) {
	old := `{"from":"a@example.org","to":["b@example.com"],"origin":"outbound","received":"2026-11-28T12:00:00Z"}`
	var e Envelope
	if err := json.Unmarshal([]byte(old), &e); err != nil {
		t.Fatal(err)
	}
	if e.DSN(0) != (RcptDSN{}) || e.Ret != "" || e.EnvID != "" || e.Body != "" {
		t.Fatalf("old envelope read as %+v", e)
	}
	dir := filepath.Join(t.TempDir(), "spool")
	q := open(t, dir, Options{}, alwaysTemp)
	ne := withDSN(env("b@example.com", "c@example.com"), RcptDSN{Notify: "SUCCESS,DELAY", ORCPT: "rfc822;B@example.com"})
	ne.Ret, ne.EnvID, ne.Body = "HDRS", "QQ314159", "8BITMIME"
	id := put(t, q.Queue, ne, msg1)
	q.Close()
	st, err := readStored(filepath.Join(dir, shardOf(id), id))
	if err != nil {
		t.Fatal(err)
	}
	got := st.env
	if got.Ret != "HDRS" || got.EnvID != "QQ314159" || got.Body != "8BITMIME" || got.DSN(0) != ne.RcptDSN[0] || got.DSN(1) != (RcptDSN{}) {
		t.Fatalf("envelope read back as %+v", got)
	}
}

// What the writer saw of the data reaches the delivery; a recovered
// message says it does not know.
func TestContentReachesDelivery(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	q := open(t, dir, Options{Retry: []time.Duration{time.Hour}}, alwaysTemp)
	var seen []Content
	q.rec.fn = func(ctx context.Context, d *Delivery) []Result {
		seen = append(seen, d.Content)
		return all(len(d.Rcpts), tempFail)
	}
	w, err := q.NewWriter(env("a@example.com"))
	if err != nil {
		t.Fatal(err)
	}
	w.Write([]byte("Subject: x\r\n\r\nGr\xc3\xbc\xc3\x9fe\r\n"))
	w.SetContent(Content8Bit)
	if err := w.Commit(); err != nil {
		t.Fatal(err)
	}
	q.Start()
	q.rec.next(t)
	idle(t, q.Queue, w.ID())
	q.stop()
	q.Close()
	q2 := open(t, dir, Options{}, alwaysTemp)
	q2.rec.fn = q.rec.fn
	q2.clock.Advance(2 * time.Hour)
	q2.Start()
	q2.rec.next(t)
	idle(t, q2.Queue, w.ID())
	if len(seen) != 2 || seen[0] != Content8Bit || seen[1] != ContentUnknown {
		t.Fatalf("content seen %v, want [8bit unknown]", seen)
	}
}
