package queue

import (
	"context"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// Options.Observe gets every recipient's result where it is logged, with
// the same status: sent, deferred, and held (inbound mail: no DSN);
// Oldest counts what is left and when it arrived.
func TestObserve(t *testing.T) {
	var mu sync.Mutex
	var got []string
	opts := Options{Observe: func(o Outcome) {
		mu.Lock()
		defer mu.Unlock()
		got = append(got, o.Origin+" "+o.State+" "+o.Result.Code)
	}}
	h := open(t, "", opts, func(_ context.Context, d *Delivery) []Result {
		var out []Result
		for _, r := range d.Rcpts {
			switch {
			case strings.HasPrefix(r, "soft@"):
				out = append(out, Result{Status: TempFail, Code: "4.2.0"})
			case strings.HasPrefix(r, "hard@"):
				out = append(out, Result{Status: PermFail, Code: "5.1.1"})
			default:
				out = append(out, Result{Status: Delivered, Code: "2.0.0"})
			}
		}
		return out
	})
	if n, oldest := h.Oldest(); n != 0 || !oldest.IsZero() {
		t.Errorf("empty queue: Oldest = %d, %v", n, oldest)
	}
	e := env("ok@example.net", "soft@example.net")
	deferred := put(t, h.Queue, e, "Subject: x\r\n\r\nbody\r\n")
	in := env("hard@example.net")
	in.Origin, in.Received = OriginInbound, t0.Add(time.Minute)
	put(t, h.Queue, in, "Subject: y\r\n\r\nbody\r\n")
	h.Start()
	waitFor(t, 10*time.Second, "three results", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) == 3 })
	idle(t, h.Queue, deferred)
	mu.Lock()
	slices.Sort(got)
	want := []string{"inbound held 5.1.1", "outbound deferred 4.2.0", "outbound sent 2.0.0"}
	if !slices.Equal(got, want) {
		t.Errorf("observed %q, want %q", got, want)
	}
	mu.Unlock()
	for _, w := range []string{"status=held", "status=deferred", "status=sent"} {
		if !strings.Contains(h.logs.String(), w) {
			t.Errorf("log lacks %s", w)
		}
	}
	if n, oldest := h.Oldest(); n != 1 || !oldest.Equal(t0) {
		t.Errorf("Oldest = %d, %v; want 1, %v (the deferred message)", n, oldest, t0)
	}
}
