package queue

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

var testOp = Operator{User: "alice", UID: 1000, Via: "socket"}

// A held message released (here by retry) is delivered to the recipients it still owes,
// and to no other: the sidecar that went to hold/ says who got it.
func TestReleaseDeliversOnlyOwed(t *testing.T) {
	refuse := "carol@example.com"
	q := open(t, "", Options{}, func(ctx context.Context, d *Delivery) []Result {
		out := make([]Result, len(d.Rcpts))
		for i, r := range d.Rcpts {
			out[i] = Result{Status: Delivered, Code: "2.0.0", Reply: "250 ok"}
			if r == refuse {
				out[i] = permFail
			}
		}
		return out
	})
	q.Start()
	id := put(t, q.Queue, inboundEnv("alice@example.com", "bob@example.com", "carol@example.com"), msg1)
	if c := q.rec.next(t); len(c.rcpts) != 3 {
		t.Fatalf("first attempt to %v", c.rcpts)
	}
	waitFor(t, 5*time.Second, "held", func() bool { n, _ := q.HoldUsage(); return n == 1 })
	infos, err := Scan(q.dir)
	if err != nil || len(infos) != 1 {
		t.Fatalf("Scan: %v, %d", err, len(infos))
	}
	if p, h, d := infos[0].Count(); p != 0 || h != 1 || d != 2 || infos[0].Rcpts[2].Code != "5.1.1" {
		t.Fatalf("held message: pending %d held %d done %d, %+v", p, h, d, infos[0].Rcpts)
	}
	if !strings.Contains(q.logs.String(), "msg=held ") || strings.Contains(q.logs.String(), "status=bounced") {
		t.Errorf("held recipient not logged as held:\n%s", q.logs.String())
	}

	refuse = ""
	// Not racy: the recorder calls fn only in an attempt, and none runs.
	// Retry of a held message is its release.
	if err := q.Retry(context.Background(), id, testOp); err != nil {
		t.Fatal(err)
	}
	if c := q.rec.next(t); strings.Join(c.rcpts, " ") != "carol@example.com" {
		t.Fatalf("after release, attempt to %v; want carol only", c.rcpts)
	}
	gone(t, q.Queue, id)
	if !strings.Contains(q.logs.String(), `msg="queue control: released" queue_id=`+id) || !strings.Contains(q.logs.String(), "operator=alice uid=1000 via=socket") {
		t.Errorf("release not logged with the operator:\n%s", q.logs.String())
	}
}

// An operation on a message being delivered right now waits for the
// attempt to end, and acts on what the attempt left; past ClaimWait it
// refuses with ErrBusy and changes nothing.
func TestControlWaitsForDelivery(t *testing.T) {
	release := make(chan struct{})
	q := open(t, "", Options{Retry: []time.Duration{time.Hour}}, func(ctx context.Context, d *Delivery) []Result {
		<-release
		return all(len(d.Rcpts), tempFail)
	})
	q.Start()
	id := put(t, q.Queue, inboundEnv("a@example.com"), msg1)
	q.rec.next(t) // the attempt is under way, blocked

	old := ClaimWait
	ClaimWait = 50 * time.Millisecond
	err := q.Hold(context.Background(), id, testOp)
	ClaimWait = old
	if !errors.Is(err, ErrBusy) {
		t.Fatalf("Hold during an attempt: %v, want ErrBusy", err)
	}
	if _, err := os.Stat(q.store.path(id)); err != nil {
		t.Fatalf("message touched by a refused hold: %v", err)
	}

	done := make(chan error, 1)
	go func() { done <- q.Hold(context.Background(), id, testOp) }()
	select {
	case err := <-done:
		t.Fatalf("Hold returned during the attempt: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Hold did not return after the attempt ended")
	}
	if _, err := os.Stat(filepath.Join(q.dir, holdDir, id)); err != nil {
		t.Fatalf("not in hold/: %v", err)
	}
	if state(q.Queue, id).present {
		t.Fatal("held message still scheduled")
	}
	infos, _ := Scan(q.dir)
	if len(infos) != 1 || !infos[0].Held || infos[0].Rcpts[0].State != RcptHeld || infos[0].Attempts != 1 {
		t.Fatalf("after hold: %+v", infos)
	}
	// Delete waits the same way; here nothing runs: gone at once.
	if err := q.Delete(context.Background(), id, testOp); err != nil {
		t.Fatal(err)
	}
	if _, err := q.Locate(id); !errors.Is(err, ErrNotFound) {
		t.Fatalf("after delete: %v", err)
	}
	if n, _ := q.HoldUsage(); n != 0 {
		t.Fatalf("hold index still counts %d", n)
	}
}

// Bounce of a message being delivered waits for the attempt, then
// reports through the Bouncer the recipients it left owed (not the one
// delivered, not one that asked NOTIFY=NEVER), and removes the message.
// A Bouncer that fails, the null sender and inbound mail change nothing.
func TestBounceWaitsAndReportsOwed(t *testing.T) {
	release := make(chan struct{})
	var mu sync.Mutex
	var calls [][]Bounce
	bounceErr := errors.New("disk full")
	failBouncer := true
	q := open(t, "", Options{Retry: []time.Duration{time.Hour}, Bouncer: func(d *Delivery, b []Bounce) error {
		mu.Lock()
		defer mu.Unlock()
		if failBouncer {
			return bounceErr
		}
		calls = append(calls, b)
		return nil
	}}, func(ctx context.Context, d *Delivery) []Result {
		<-release
		out := all(len(d.Rcpts), tempFail)
		for i, r := range d.Rcpts {
			if r == "b@example.com" {
				out[i] = Result{Status: Delivered, Code: "2.0.0", Reply: "250 ok"}
			}
		}
		return out
	})
	q.Start()
	e := env("b@example.com", "c@example.com", "d@example.com")
	e.RcptDSN = []RcptDSN{{}, {}, {Notify: "NEVER"}}
	id := put(t, q.Queue, e, msg1)
	q.rec.next(t) // the attempt is under way, blocked

	done := make(chan error, 1)
	go func() { done <- q.Bounce(context.Background(), id, testOp) }()
	select {
	case err := <-done:
		t.Fatalf("Bounce returned during the attempt: %v", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	// The Bouncer fails: nothing changed, the message stays scheduled.
	if err := <-done; !errors.Is(err, bounceErr) {
		t.Fatalf("Bounce with a failing Bouncer: %v", err)
	}
	if s := state(q.Queue, id); !s.present || strings.Contains(q.logs.String(), "status=bounced") {
		t.Fatalf("a failed bounce changed the message: %+v\n%s", s, q.logs.String())
	}
	mu.Lock()
	failBouncer = false
	mu.Unlock()
	if err := q.Bounce(context.Background(), id, testOp); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 1 || len(calls[0]) != 1 || calls[0][0].Rcpt != "c@example.com" || calls[0][0].Result.Code != BounceCode ||
		calls[0][0].Action != ActionFailed || !strings.Contains(calls[0][0].Result.Explanation, "4.4.1 connect: connection refused") {
		t.Fatalf("Bouncer calls: %+v; want one failure for c with %s and the last error", calls, BounceCode)
	}
	gone(t, q.Queue, id)
	logs := q.logs.String()
	for _, want := range []string{"to=c@example.com relay=none", "to=d@example.com relay=none", `msg="queue control: bounced" queue_id=` + id} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	if strings.Count(logs, "status=bounced") != 2 {
		t.Errorf("want status=bounced for c and d only:\n%s", logs)
	}

	for _, e := range []Envelope{inboundEnv("x@example.com"), func() Envelope { e := env("x@example.com"); e.From = ""; return e }()} {
		release2 := put(t, q.Queue, e, msg1)
		q.rec.next(t)
		idle(t, q.Queue, release2)
		if err := q.Bounce(context.Background(), release2, testOp); !errors.Is(err, ErrNoBounce) {
			t.Errorf("Bounce of from=%q origin=%s: %v, want ErrNoBounce", e.From, e.Origin, err)
		}
		if !state(q.Queue, release2).present {
			t.Errorf("a refused bounce removed %s", release2)
		}
	}
	if len(calls) != 1 {
		t.Errorf("Bouncer called for a refused bounce: %+v", calls)
	}
}

// The TLS outcome of the last attempt (queue list's "tls:") survives the
// message being held, by the queue (no DSN possible) or by an operator,
// and its release.
func TestTLSOutcomeSurvivesHold(t *testing.T) {
	const why = "required secure (policy rule 1); achieved none: no STARTTLS"
	q := open(t, "", Options{Retry: []time.Duration{time.Hour}}, func(ctx context.Context, d *Delivery) []Result {
		out := make([]Result, len(d.Rcpts))
		for i, r := range d.Rcpts {
			out[i] = Result{Status: TempFail, Code: "4.7.5", Reply: "TLS required", TLSPolicy: why}
			if strings.HasPrefix(r, "perm") {
				out[i].Status, out[i].Code = PermFail, "5.7.5"
			}
		}
		return out
	})
	q.Start()
	byOp := put(t, q.Queue, env("temp@example.com"), msg1)
	q.rec.next(t)
	idle(t, q.Queue, byOp)
	byQueue := put(t, q.Queue, inboundEnv("perm@example.com"), msg1)
	q.rec.next(t)
	waitFor(t, 5*time.Second, "held", func() bool { n, _ := q.HoldUsage(); return n == 1 })
	if err := q.Hold(context.Background(), byOp, testOp); err != nil {
		t.Fatal(err)
	}
	check := func(when string) {
		t.Helper()
		infos, err := Scan(q.dir)
		if err != nil || len(infos) != 2 {
			t.Fatalf("Scan: %v, %d", err, len(infos))
		}
		for _, in := range infos {
			if in.ID != byOp && in.ID != byQueue {
				t.Errorf("%s: unexpected %s", when, in.ID)
			}
			if in.TLSPolicy != why {
				t.Errorf("%s: %s: TLS outcome %q, want %q", when, in.ID, in.TLSPolicy, why)
			}
		}
	}
	check("held")
	q.stop() // the release must not be tried: its outcome would replace the last
	if err := q.Release(context.Background(), byOp, testOp); err != nil {
		t.Fatal(err)
	}
	check("released")
}
