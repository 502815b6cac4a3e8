package queue

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"
)

func alwaysTemp(ctx context.Context, d *Delivery) []Result { return all(len(d.Rcpts), tempFail) }

// bouncer records the calls of a Bouncer; err (if set) decides its answer.
type bouncer struct {
	mu    sync.Mutex
	calls [][]Bounce
	ids   []string
	err   func(n int) error
}

func (b *bouncer) Bounce(d *Delivery, failed []Bounce) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.calls = append(b.calls, append([]Bounce(nil), failed...))
	b.ids = append(b.ids, d.ID)
	if b.err != nil {
		return b.err(len(b.calls))
	}
	return nil
}

func (b *bouncer) n() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.calls)
}

func (b *bouncer) call(i int) []Bounce {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.calls[i]
}

// TempFail: the next attempt comes after retry[0] (+ at most 10%), then
// retry[1], ..., and the last interval repeats; not a nanosecond earlier.
func TestRetrySchedule(t *testing.T) {
	retry := []time.Duration{time.Minute, 5 * time.Minute, 30 * time.Minute}
	q := open(t, "", Options{Retry: retry, MaxAge: 30 * 24 * time.Hour}, alwaysTemp)
	id := put(t, q.Queue, env("a@example.com"), msg1)
	q.Start()
	if c := q.rec.next(t); c.attempt != 1 || !c.at.Equal(t0) {
		t.Fatalf("first attempt %d at %v", c.attempt, c.at)
	}
	last := t0
	want := []time.Duration{time.Minute, 5 * time.Minute, 30 * time.Minute, 30 * time.Minute, 30 * time.Minute}
	for k, w := range want {
		s := idle(t, q.Queue, id)
		if s.attempts != k+1 {
			t.Fatalf("attempts %d, want %d", s.attempts, k+1)
		}
		delay := s.next.Sub(last)
		if delay < w || delay > w+w/10 {
			t.Fatalf("after attempt %d: next in %v, want %v + at most 10%%", k+1, delay, w)
		}
		// the sidecar records the same
		ps := readStatus(q.store.path(id)+statusExt, id)
		done, attempts, next := ps.done, ps.attempts, ps.next
		if len(done) != 0 || attempts != k+1 || !next.Equal(s.next) {
			t.Fatalf("sidecar: done %v attempts %d next %v; want none, %d, %v", done, attempts, next, k+1, s.next)
		}
		// one nanosecond early: nothing happens
		q.clock.Set(s.next.Add(-time.Nanosecond))
		settle(t, q.Queue)
		if st := state(q.Queue, id); st.busy || q.rec.n() != k+1 {
			t.Fatalf("attempt %d started before it was due", k+2)
		}
		q.clock.Set(s.next)
		q.poke()
		c := q.rec.next(t)
		if c.attempt != k+2 || !c.at.Equal(s.next) {
			t.Fatalf("attempt %d at %v, want attempt %d at %v", c.attempt, c.at, k+2, s.next)
		}
		last = s.next
	}
}

// The jitter is in [0, 10%] and not constant.
func TestBackoffJitter(t *testing.T) {
	q := open(t, "", Options{Retry: []time.Duration{time.Minute, time.Hour}}, nil)
	for n, base := range map[int]time.Duration{1: time.Minute, 2: time.Hour, 3: time.Hour, 50: time.Hour} {
		seen := map[time.Duration]bool{}
		for i := 0; i < 200; i++ {
			d := q.backoff(n)
			if d < base || d > base+base/10 {
				t.Fatalf("backoff(%d) = %v, want in [%v, %v]", n, d, base, base+base/10)
			}
			seen[d] = true
		}
		if len(seen) < 100 {
			t.Errorf("backoff(%d): only %d distinct values in 200", n, len(seen))
		}
	}
}

// The same schedule end to end on the scheduler's real timer path: in a
// synctest bubble time.Now and the timers are virtual, so the whole retry
// sequence up to max_age runs instantly and exactly.
func TestRetryScheduleVirtualTime(t *testing.T) {
	dir := t.TempDir()
	synctest.Test(t, func(t *testing.T) {
		retry := []time.Duration{time.Minute, 5 * time.Minute, 30 * time.Minute}
		maxAge := 2 * time.Hour
		var mu sync.Mutex
		var times []time.Time
		b := &bouncer{}
		bounced := make(chan struct{})
		q, err := Open(Options{
			Dir: dir, Retry: retry, MaxAge: maxAge, Logger: slogTo(&logBuf{}),
			Deliverer: deliverFunc(func(ctx context.Context, d *Delivery) []Result {
				mu.Lock()
				times = append(times, time.Now())
				mu.Unlock()
				return all(len(d.Rcpts), tempFail)
			}),
			Bouncer: func(d *Delivery, f []Bounce) error {
				err := b.Bounce(d, f)
				close(bounced)
				return err
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		defer q.Close()
		start := time.Now()
		e := env("a@example.com")
		e.Received = start
		if _, err := q.Put(e, strings.NewReader(msg1)); err != nil {
			t.Fatal(err)
		}
		q.Start()
		<-bounced
		q.Stop(context.Background())

		mu.Lock()
		defer mu.Unlock()
		if !times[0].Equal(start) {
			t.Errorf("first attempt at +%v", times[0].Sub(start))
		}
		for k := 1; k < len(times); k++ {
			w := retry[min(k-1, len(retry)-1)]
			if d := times[k].Sub(times[k-1]); d < w || d > w+w/10 {
				t.Errorf("interval %d: %v, want %v + at most 10%%", k, d, w)
			}
		}
		if last := times[len(times)-1].Sub(start); last < maxAge || times[len(times)-2].Sub(start) >= maxAge {
			t.Errorf("bounced at attempt %d (+%v); previous at +%v; max_age %v",
				len(times), last, times[len(times)-2].Sub(start), maxAge)
		}
		if b.n() != 1 || b.call(0)[0].Result.Code != "5.4.7" {
			t.Errorf("bounces %+v", b.calls)
		}
		if q.Len() != 0 {
			t.Errorf("Len %d after the bounce", q.Len())
		}
	})
}

func TestKickMakesDueNow(t *testing.T) {
	q := open(t, "", Options{Retry: []time.Duration{time.Hour}}, alwaysTemp)
	id := put(t, q.Queue, env("a@example.com"), msg1)
	q.Start()
	q.rec.next(t)
	idle(t, q.Queue, id)
	q.clock.Advance(time.Minute)
	settle(t, q.Queue)
	if q.rec.n() != 1 {
		t.Fatal("attempted before due")
	}
	q.Kick()
	if c := q.rec.next(t); c.attempt != 2 || !c.at.Equal(t0.Add(time.Minute)) {
		t.Fatalf("after Kick: attempt %d at %v", c.attempt, c.at)
	}
}

// After max_age a TempFail becomes a PermFail with 4.4.7 and goes to the
// Bouncer once; before it, it stays a TempFail.
func TestMaxAgeBouncesOnce(t *testing.T) {
	maxAge := 5 * 24 * time.Hour
	b := &bouncer{}
	q := open(t, "", Options{Retry: []time.Duration{time.Hour}, MaxAge: maxAge, Bouncer: b.Bounce}, alwaysTemp)
	id := put(t, q.Queue, env("a@example.com", "b@example.com"), msg1)
	q.Start()
	q.rec.next(t)
	idle(t, q.Queue, id)

	q.clock.Set(t0.Add(maxAge - time.Nanosecond))
	q.Kick()
	q.rec.next(t)
	if s := idle(t, q.Queue, id); s.attempts != 2 || len(s.done) != 0 || b.n() != 0 {
		t.Fatalf("just before max_age: %+v, %d bounces", s, b.n())
	}

	q.clock.Set(t0.Add(maxAge))
	q.Kick()
	if c := q.rec.next(t); len(c.rcpts) != 2 {
		t.Fatalf("rcpts %v", c.rcpts)
	}
	gone(t, q.Queue, id)
	if b.n() != 1 {
		t.Fatalf("Bouncer called %d times", b.n())
	}
	f := b.call(0)
	if len(f) != 2 || f[0].Rcpt != "a@example.com" || f[1].Rcpt != "b@example.com" {
		t.Fatalf("bounces %+v", f)
	}
	for _, x := range f {
		r := x.Result
		if r.Status != PermFail || r.Code != "5.4.7" || !strings.Contains(r.Reply, "expired") || !strings.Contains(r.Reply, tempFail.Reply) {
			t.Errorf("expired result %+v", r)
		}
	}
	q.clock.Advance(time.Hour)
	q.Kick()
	settle(t, q.Queue)
	q.stop()
	if q.rec.n() != 3 || b.n() != 1 {
		t.Fatalf("after the bounce: %d attempts, %d bounces", q.rec.n(), b.n())
	}
}

// Per recipient: Delivered is done, PermFail is bounced (only it), TempFail
// is retried alone.
func TestMixedResults(t *testing.T) {
	b := &bouncer{}
	var mu sync.Mutex
	round := 0
	q := open(t, "", Options{Retry: []time.Duration{time.Minute}, Bouncer: b.Bounce}, func(ctx context.Context, d *Delivery) []Result {
		mu.Lock()
		defer mu.Unlock()
		round++
		if round == 1 {
			return []Result{{Status: Delivered}, tempFail, permFail, tempFail}
		}
		return []Result{{Status: Delivered}, tempFail}
	})
	id := put(t, q.Queue, env("ok@example.com", "later@example.com", "bad@example.com", "slow@example.com"), msg1)
	q.Start()
	q.rec.next(t)
	s := idle(t, q.Queue, id)
	if len(s.done) != 2 || s.done[0] != 0 || s.done[1] != 2 {
		t.Fatalf("done %v, want [0 2]", s.done)
	}
	if b.n() != 1 || len(b.call(0)) != 1 || b.call(0)[0].Rcpt != "bad@example.com" || b.call(0)[0].Result.Code != "5.1.1" {
		t.Fatalf("bounces %+v", b.calls)
	}
	q.clock.Set(s.next)
	q.poke()
	if c := q.rec.next(t); strings.Join(c.rcpts, ",") != "later@example.com,slow@example.com" || c.attempt != 2 {
		t.Fatalf("second attempt: rcpts %v attempt %d", c.rcpts, c.attempt)
	}
	s = idle(t, q.Queue, id)
	q.clock.Set(s.next)
	q.poke()
	if c := q.rec.next(t); strings.Join(c.rcpts, ",") != "slow@example.com" {
		t.Fatalf("third attempt: rcpts %v", c.rcpts)
	}
	// round 3 answers two results for one recipient: the extra one is ignored
	gone(t, q.Queue, id)
	q.stop()
	if q.rec.n() != 3 || b.n() != 1 {
		t.Fatalf("%d attempts, %d bounces", q.rec.n(), b.n())
	}
}

// A Deliverer that answers fewer results than recipients: the missing ones
// are temporary failures, not lost and not delivered.
func TestMissingResultsAreTempFail(t *testing.T) {
	var mu sync.Mutex
	round := 0
	q := open(t, "", Options{Retry: []time.Duration{time.Minute}}, func(ctx context.Context, d *Delivery) []Result {
		mu.Lock()
		defer mu.Unlock()
		round++
		if round == 1 {
			return []Result{{Status: Delivered}}
		}
		return all(len(d.Rcpts), Result{Status: Delivered})
	})
	id := put(t, q.Queue, env("a@example.com", "b@example.com", "c@example.com"), msg1)
	q.Start()
	q.rec.next(t)
	s := idle(t, q.Queue, id)
	if len(s.done) != 1 {
		t.Fatalf("done %v", s.done)
	}
	if !strings.Contains(q.logs.String(), "delivery engine returned no result") {
		t.Error("missing results not logged")
	}
	q.Kick()
	if c := q.rec.next(t); strings.Join(c.rcpts, ",") != "b@example.com,c@example.com" {
		t.Fatalf("rcpts %v", c.rcpts)
	}
	gone(t, q.Queue, id)
}

func TestBouncerRules(t *testing.T) {
	for _, tc := range []struct {
		name, from, origin string
		expired            bool
		wantLog            string
	}{
		{"inbound", "sender@example.org", OriginInbound, false, "no DSN is sent for inbound"},
		{"inbound-expired", "sender@example.org", OriginInbound, true, "no DSN is sent for inbound"},
		{"null-sender", "", OriginOutbound, false, "no DSN for the null sender"},
		{"null-sender-local", "", OriginLocal, false, "no DSN for the null sender"},
		{"null-sender-expired", "", OriginLocal, true, "no DSN for the null sender"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &bouncer{}
			result := permFail
			if tc.expired {
				result = tempFail
			}
			q := open(t, "", Options{MaxAge: time.Hour, Bouncer: b.Bounce}, func(ctx context.Context, d *Delivery) []Result {
				return append(all(len(d.Rcpts)-1, result), Result{Status: Delivered})
			})
			e := env("x@example.com", "y@example.com", "z@example.com")
			e.From, e.Origin = tc.from, tc.origin
			id := put(t, q.Queue, e, msg1)
			if tc.expired {
				q.clock.Advance(time.Hour)
			}
			q.Start()
			q.rec.next(t)
			gone(t, q.Queue, id)
			q.stop()
			isHeld(t, q.dir, id, msg1)
			if b.n() != 0 {
				t.Fatalf("Bouncer called: %+v", b.calls)
			}
			if q.rec.n() != 1 {
				t.Fatalf("%d attempts", q.rec.n())
			}
			if !strings.Contains(q.logs.String(), tc.wantLog) {
				t.Errorf("log lacks %q", tc.wantLog)
			}
		})
	}
}

func TestBouncerGetsOutboundAndLocal(t *testing.T) {
	for _, origin := range []string{OriginOutbound, OriginLocal} {
		b := &bouncer{}
		q := open(t, "", Options{Bouncer: b.Bounce}, func(ctx context.Context, d *Delivery) []Result {
			return all(len(d.Rcpts), permFail)
		})
		e := env("x@example.com")
		e.Origin = origin
		id := put(t, q.Queue, e, msg1)
		q.Start()
		q.rec.next(t)
		gone(t, q.Queue, id)
		if b.n() != 1 || b.ids[0] != id {
			t.Fatalf("%s: bounces %d ids %v", origin, b.n(), b.ids)
		}
	}
}

// The Bouncer fails: the recipient stays pending, is attempted again and
// bounced later; the one already delivered is not attempted again.
func TestBouncerErrorKeepsPending(t *testing.T) {
	b := &bouncer{err: func(n int) error {
		if n == 1 {
			return errors.New("spool full")
		}
		return nil
	}}
	q := open(t, "", Options{Retry: []time.Duration{time.Minute}, Bouncer: b.Bounce}, func(ctx context.Context, d *Delivery) []Result {
		var rs []Result
		for _, r := range d.Rcpts {
			if r == "ok@example.com" {
				rs = append(rs, Result{Status: Delivered})
			} else {
				rs = append(rs, permFail)
			}
		}
		return rs
	})
	id := put(t, q.Queue, env("ok@example.com", "bad@example.com"), msg1)
	q.Start()
	q.rec.next(t)
	s := idle(t, q.Queue, id)
	if b.n() != 1 || len(s.done) != 1 || s.done[0] != 0 {
		t.Fatalf("after failing Bouncer: %d calls, done %v; want 1 call, done [0]", b.n(), s.done)
	}
	if d := s.next.Sub(t0); d < time.Minute || d > time.Minute+6*time.Second {
		t.Fatalf("retry in %v", d)
	}
	if !strings.Contains(q.logs.String(), "could not queue DSN") {
		t.Error("Bouncer error not logged")
	}
	q.clock.Set(s.next)
	q.poke()
	if c := q.rec.next(t); strings.Join(c.rcpts, ",") != "bad@example.com" || c.attempt != 2 {
		t.Fatalf("second attempt: rcpts %v attempt %d", c.rcpts, c.attempt)
	}
	gone(t, q.Queue, id)
	if b.n() != 2 || b.call(1)[0].Rcpt != "bad@example.com" {
		t.Fatalf("bounces %+v", b.calls)
	}
}

func TestNoBouncerConfigured(t *testing.T) {
	q := open(t, "", Options{}, func(ctx context.Context, d *Delivery) []Result { return all(len(d.Rcpts), permFail) })
	id := put(t, q.Queue, env("x@example.com"), msg1)
	q.Start()
	q.rec.next(t)
	gone(t, q.Queue, id)
	isHeld(t, q.dir, id, msg1)
}

// isHeld checks that a message nobody could be told about was kept, whole,
// in hold/ instead of being deleted.
func isHeld(t *testing.T, dir, id, data string) {
	t.Helper()
	st, err := readStored(filepath.Join(dir, holdDir, id))
	if err != nil {
		t.Fatalf("message %s not in hold/: %v", id, err)
	}
	if st.dataLen != int64(len(data)) {
		t.Fatalf("held message has %d bytes of data, want %d", st.dataLen, len(data))
	}
}

// A permanent failure without a DSN marks the message for hold/; the mark
// survives a restart while other recipients are still pending, and the
// message ends in hold/, not deleted, once they are done.
func TestHeldSurvivesRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	e := env("bad@example.com", "later@example.com")
	e.Origin = OriginInbound
	q1 := open(t, dir, Options{Retry: []time.Duration{time.Hour}}, func(ctx context.Context, d *Delivery) []Result {
		var rs []Result
		for _, r := range d.Rcpts {
			if r == "bad@example.com" {
				rs = append(rs, permFail)
			} else {
				rs = append(rs, tempFail)
			}
		}
		return rs
	})
	id := put(t, q1.Queue, e, msg1)
	q1.Start()
	q1.rec.next(t)
	idle(t, q1.Queue, id)
	q1.stop()
	q1.Close()
	q2 := open(t, dir, Options{}, func(ctx context.Context, d *Delivery) []Result { return all(len(d.Rcpts), Result{Status: Delivered}) })
	q2.Kick()
	q2.Start()
	if c := q2.rec.next(t); strings.Join(c.rcpts, ",") != "later@example.com" {
		t.Fatalf("after restart: %v", c.rcpts)
	}
	gone(t, q2.Queue, id)
	isHeld(t, dir, id, msg1)
}
