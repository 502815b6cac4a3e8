package queue

import (
	"bytes"
	"context"
	"hash/crc32"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"
)

// testCRC is computed independently of the package's table.
var testCRC = crc32.MakeTable(crc32.Castagnoli)

// t0 is the fake clock's start; Received times are taken from it.
var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

// fakeClock is the injectable Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *fakeClock { return &fakeClock{t: t0} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

func (c *fakeClock) Advance(d time.Duration) time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
	return c.t
}

// logBuf collects the queue's log output.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// call is one Deliver invocation as the Deliverer saw it.
type call struct {
	id      string
	rcpts   []string
	attempt int
	size    int64
	at      time.Time
	env     Envelope
	data    []byte
	openErr error
}

// recorder is a Deliverer that records every call, reads the data, and
// answers with fn (default: every recipient Delivered).
type recorder struct {
	clock func() time.Time
	fn    func(ctx context.Context, d *Delivery) []Result

	mu    sync.Mutex
	calls []call
	ch    chan call
}

func newRecorder(clock func() time.Time, fn func(ctx context.Context, d *Delivery) []Result) *recorder {
	return &recorder{clock: clock, fn: fn, ch: make(chan call, 100000)}
}

func (r *recorder) Deliver(ctx context.Context, d *Delivery) []Result {
	c := call{id: d.ID, rcpts: append([]string(nil), d.Rcpts...), attempt: d.Attempt, size: d.Size, env: *d.Envelope}
	if r.clock != nil {
		c.at = r.clock()
	}
	rc, err := d.Open()
	if err == nil {
		c.data, err = io.ReadAll(rc)
		rc.Close()
	}
	c.openErr = err
	r.mu.Lock()
	r.calls = append(r.calls, c)
	r.mu.Unlock()
	r.ch <- c
	if r.fn != nil {
		return r.fn(ctx, d)
	}
	return all(len(d.Rcpts), Result{Status: Delivered, Code: "2.0.0", Reply: "250 ok"})
}

func (r *recorder) n() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.calls)
}

// next waits for the next call.
func (r *recorder) next(t *testing.T) call {
	t.Helper()
	select {
	case c := <-r.ch:
		return c
	case <-time.After(5 * time.Second):
		t.Fatal("timeout waiting for a delivery attempt")
		return call{}
	}
}

// all returns n copies of r.
func all(n int, r Result) []Result {
	out := make([]Result, n)
	for i := range out {
		out[i] = r
	}
	return out
}

var (
	tempFail = Result{Status: TempFail, Code: "4.4.1", Reply: "connect: connection refused"}
	permFail = Result{Status: PermFail, Code: "5.1.1", Reply: "550 5.1.1 no such user"}
)

// waitFor polls cond until it holds or d has passed.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timeout after %s waiting for: %s", d, what)
		}
		time.Sleep(time.Millisecond)
	}
}

// settle returns once the scheduler has run through at least one complete
// pass that started after settle was called: three blocking sends on the
// wake channel (capacity 1) cannot all complete before the loop has
// received the first and come back to receive the second.
func settle(t *testing.T, q *Queue) {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for i := 0; i < 3; i++ {
		select {
		case q.wake <- struct{}{}:
		case <-timeout:
			t.Fatal("scheduler loop does not take wake-ups")
		}
	}
}

// snap is a race-free copy of an item's scheduling state.
type snap struct {
	present  bool
	busy     bool
	attempts int
	next     time.Time
	done     []int
}

func state(q *Queue, id string) snap {
	q.mu.Lock()
	defer q.mu.Unlock()
	it, ok := q.items[id]
	if !ok {
		return snap{}
	}
	if it.busy {
		// attempt() owns the other fields while busy.
		return snap{present: true, busy: true}
	}
	s := snap{present: true, attempts: it.attempts, next: it.next}
	for i := range it.done {
		s.done = append(s.done, i)
	}
	sort.Ints(s.done)
	return s
}

// idle waits until id is spooled and not being attempted, and returns its state.
func idle(t *testing.T, q *Queue, id string) snap {
	t.Helper()
	var s snap
	waitFor(t, 5*time.Second, "message "+id+" waiting again", func() bool {
		s = state(q, id)
		return s.present && !s.busy
	})
	return s
}

// gone waits until id has left the queue and its files the spool.
func gone(t *testing.T, q *Queue, id string) {
	t.Helper()
	p := q.store.path(id)
	waitFor(t, 5*time.Second, "message "+id+" removed", func() bool {
		if state(q, id).present {
			return false
		}
		_, err1 := os.Stat(p)
		_, err2 := os.Stat(p + statusExt)
		return os.IsNotExist(err1) && os.IsNotExist(err2)
	})
}

// tq is a Queue under test with its clock, log and a once-only Stop.
type tq struct {
	*Queue
	dir   string
	clock *fakeClock
	logs  *logBuf
	rec   *recorder

	stopOnce sync.Once
}

// open opens a queue on dir (a new temp dir if ""), with a fake clock and
// a recorder answering with fn unless opts.Deliverer is set.
func open(t testing.TB, dir string, opts Options, fn func(ctx context.Context, d *Delivery) []Result) *tq {
	t.Helper()
	if dir == "" {
		dir = filepath.Join(t.TempDir(), "spool")
	}
	h := &tq{dir: dir, logs: &logBuf{}}
	if opts.Now == nil {
		h.clock = newClock()
		opts.Now = h.clock.Now
	}
	if opts.Deliverer == nil {
		h.rec = newRecorder(opts.Now, fn)
		opts.Deliverer = h.rec
	}
	if opts.Logger == nil {
		opts.Logger = slogTo(h.logs)
	}
	opts.Dir = dir
	q, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	h.Queue = q
	t.Cleanup(func() {
		h.stop()
		q.Close()
		if t.Failed() {
			t.Logf("queue log:\n%s", h.logs.String())
		}
	})
	return h
}

func (h *tq) stop() {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h.stopCtx(ctx)
}

// stopCtx calls Stop once (a second Stop would close a closed channel).
func (h *tq) stopCtx(ctx context.Context) {
	h.stopOnce.Do(func() { h.Queue.Stop(ctx) })
}

func env(to ...string) Envelope {
	return Envelope{
		From:     "sender@example.org",
		To:       to,
		Origin:   OriginOutbound,
		Listener: "submission",
		Client:   "otrs.example.org [192.0.2.10]",
		AuthUser: "otrs",
		Received: t0,
	}
}

func put(t testing.TB, q *Queue, e Envelope, data string) string {
	t.Helper()
	id, err := q.Put(e, strings.NewReader(data))
	if err != nil {
		t.Fatalf("Put: %v", err)
	}
	return id
}

// spoolFiles lists every regular file under dir, relative to it.
func spoolFiles(t testing.TB, dir string) []string {
	t.Helper()
	var out []string
	err := filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, filepath.ToSlash(rel))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(out)
	return out
}

const msg1 = "From: sender@example.org\r\nTo: rcpt@example.com\r\nSubject: test\r\n\r\nHello.\r\n"

func slogTo(w io.Writer) *slog.Logger {
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
