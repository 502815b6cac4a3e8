package queue

import (
	"context"
	"os"
	"sync/atomic"
	"testing"
	"time"
)

// Stop waits for the attempt in flight, whose context is not cancelled
// while Stop's context lives; when Stop returns, the attempt's bookkeeping
// is complete.
func TestStopWaitsForInFlight(t *testing.T) {
	entered := make(chan struct{})
	release := make(chan struct{})
	var ctxErr atomic.Value
	q := open(t, "", Options{}, func(ctx context.Context, d *Delivery) []Result {
		close(entered)
		<-release
		ctxErr.Store(ctx.Err() != nil)
		return all(len(d.Rcpts), Result{Status: Delivered})
	})
	id := put(t, q.Queue, env("a@example.com"), msg1)
	q.Start()
	<-entered

	stopped := make(chan struct{})
	go func() {
		q.stop()
		close(stopped)
	}()
	// Stop must not return while the delivery runs. (A bounded look: a
	// correct Stop never fails this, a broken one is caught most of the time.)
	select {
	case <-stopped:
		t.Fatal("Stop returned while a delivery was in flight")
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	select {
	case <-stopped:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not return after the delivery ended")
	}
	if ctxErr.Load() != false {
		t.Error("Deliverer's context was cancelled although Stop's context was not done")
	}
	if _, err := os.Stat(q.store.path(id)); !os.IsNotExist(err) {
		t.Errorf("delivered message still spooled when Stop returned: %v", err)
	}
}

// When Stop's context ends first, the Deliverer's context is cancelled; the
// message stays spooled and is delivered after the next Open.
func TestStopCancelsAndMessageSurvives(t *testing.T) {
	entered := make(chan struct{})
	var sawCancel atomic.Bool
	q1 := open(t, "", Options{}, func(ctx context.Context, d *Delivery) []Result {
		close(entered)
		<-ctx.Done()
		sawCancel.Store(true)
		return all(len(d.Rcpts), Result{Status: TempFail, Code: "4.3.2", Reply: "shutting down"})
	})
	id := put(t, q1.Queue, env("a@example.com", "b@example.com"), msg1)
	q1.Start()
	<-entered

	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	done := make(chan struct{})
	go func() {
		q1.stopCtx(ctx)
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Stop did not return after its context expired")
	}
	if !sawCancel.Load() {
		t.Fatal("Deliverer's context was not cancelled")
	}
	if _, err := readStored(q1.store.path(id)); err != nil {
		t.Fatalf("message not intact in the spool after Stop: %v", err)
	}
	ps := readStatus(q1.store.path(id)+statusExt, id)
	doneIdx, attempts, next := ps.done, ps.attempts, ps.next
	if len(doneIdx) != 0 || attempts != 1 || !next.Equal(t0) {
		t.Errorf("sidecar after a cut attempt: done %v attempts %d next %v; want none, 1, now", doneIdx, attempts, next)
	}
	q1.Close()

	q2 := open(t, q1.dir, Options{}, nil)
	q2.Start()
	c := q2.rec.next(t)
	if c.id != id || c.attempt != 2 || len(c.rcpts) != 2 || string(c.data) != msg1 {
		t.Fatalf("after restart: %+v", c)
	}
	gone(t, q2.Queue, id)
}

func TestStopWithoutStart(t *testing.T) {
	q := open(t, "", Options{}, nil)
	put(t, q.Queue, env("a@example.com"), msg1)
	q.stopCtx(context.Background())
	if q.Len() != 1 {
		t.Fatal("message lost")
	}
}

// After Stop has returned, the queue starts no delivery. Stop races the
// scheduler's dispatch loop here on purpose (one worker, many messages).
func TestNoDeliveryAfterStopReturned(t *testing.T) {
	for i := 0; i < 50; i++ {
		var stopped, late atomic.Bool
		q := open(t, "", Options{Workers: 1}, nil)
		q.rec.fn = func(ctx context.Context, d *Delivery) []Result {
			if stopped.Load() {
				late.Store(true)
			}
			return all(len(d.Rcpts), Result{Status: Delivered})
		}
		for j := 0; j < 20; j++ {
			put(t, q.Queue, env("a@example.com"), msg1)
		}
		q.Start()
		q.rec.next(t)
		q.stop()
		stopped.Store(true)
		// Whatever Stop left running would show up as an attempt now.
		n := q.rec.n()
		q.Close()
		q.Queue.running.Wait()
		if late.Load() || q.rec.n() != n {
			t.Fatalf("round %d: a delivery started after Stop returned", i)
		}
	}
}
