package main

import (
	"strings"
	"testing"
	"time"

	"securerelay/config"
	"securerelay/queue"
)

// One process at a time owns the spool: a relay for its lifetime, a
// queue command working on a stopped relay's spool for its own.
func TestSpoolLockExcludes(t *testing.T) {
	cfg := &config.Config{StateDir: t.TempDir()}
	unlock, err := lockSpool(cfg, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lockSpool(cfg, 0); err == nil || !strings.Contains(err.Error(), "in use by another process") {
		t.Fatalf("second lock: %v, want refused", err)
	}
	unlock()
	unlock2, err := lockSpool(cfg, 0)
	if err != nil {
		t.Fatalf("lock after unlock: %v", err)
	}
	unlock2()
}

func TestQueueArgs(t *testing.T) {
	for _, c := range []struct {
		args []string
		ok   bool
	}{
		{[]string{"hold", "--config", "x", "0123456789ABCDEF"}, true},
		{[]string{"hold", "0123456789ABCDEF", "--config", "x", "1123456789ABCDEF"}, true},
		{[]string{"hold", "--config", "x"}, false},
		{[]string{"retry", "--config", "x", "--all"}, true},
		{[]string{"retry", "--config", "x", "--all", "0123456789ABCDEF"}, false},
		{[]string{"delete", "--config", "x", "--to", "@example.org"}, true},
		{[]string{"delete", "--config", "x", "--to", "@example.org", "0123456789ABCDEF"}, false},
		{[]string{"prune", "--config", "x"}, false},
		{[]string{"prune", "--config", "x", "--held-older-than", "7d"}, true},
		{[]string{"list", "--config", "x", "--older-than", "2h", "--held", "--json"}, true},
		{[]string{"show", "--config", "x"}, false},
		{[]string{"bounce", "--config", "x"}, false},
		{[]string{"bounce", "--config", "x", "0123456789ABCDEF", "1123456789ABCDEF"}, true},
		{[]string{"bogus", "--config", "x"}, false},
	} {
		var errOut strings.Builder
		_, ok := parseQueueArgs(c.args, &errOut)
		if ok != c.ok {
			t.Errorf("%v: ok=%v, want %v (%s)", c.args, ok, c.ok, errOut.String())
		}
	}
}

// queue list shows each message's age, and every recipient still owed,
// tried or not, with its state and last error; done ones are counted.
func TestPrintListAgeAndOwed(t *testing.T) {
	now := time.Date(2026, 12, 7, 12, 0, 0, 0, time.UTC)
	in := queue.Info{ID: "0123456789ABCDEF", Size: 42, Attempts: 1, TLSPolicy: "required secure; achieved none",
		Envelope: queue.Envelope{From: "a@example.org", To: []string{"b@x.test", "c@x.test", "d@x.test"}, Received: now.Add(-(26*time.Hour + 5*time.Minute))},
		Rcpts: []queue.RcptInfo{{Addr: "b@x.test", State: queue.RcptSent, Code: "2.0.0"},
			{Addr: "c@x.test", State: queue.RcptDeferred, Code: "4.2.0", Reply: "busy"},
			{Addr: "d@x.test", State: queue.RcptPending}}}
	var out strings.Builder
	printListAt([]queue.Info{in}, now, &out)
	for _, want := range []string{"AGE", " 1d02h ", "2 of 3 pending", "  tls: required secure; achieved none",
		"  [deferred] c@x.test: 4.2.0 busy", "  [pending] d@x.test\n"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("list lacks %q:\n%s", want, out.String())
		}
	}
	if strings.Contains(out.String(), "b@x.test") {
		t.Errorf("list shows a recipient done:\n%s", out.String())
	}
	for d, want := range map[time.Duration]string{45 * time.Second: "45s", 12 * time.Minute: "12m", 3*time.Hour + 5*time.Minute: "3h05m"} {
		if got := age(d); got != want {
			t.Errorf("age(%v) = %q, want %q", d, got, want)
		}
	}
}
