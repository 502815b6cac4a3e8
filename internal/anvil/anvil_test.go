package anvil

import (
	"fmt"
	"testing"
	"time"
)

func TestWindow(t *testing.T) {
	s := New(0)
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	const w = time.Minute
	for i := 1; i <= 5; i++ {
		if n, _ := s.Add("a", t0.Add(time.Duration(i)*time.Second), w); n != i {
			t.Fatalf("event %d counted as %d", i, n)
		}
	}
	if n, _ := s.Count("a", t0.Add(10*time.Second), w); n != 5 {
		t.Errorf("Count = %d, want 5 (and Count adds nothing)", n)
	}
	if n, _ := s.Count("b", t0, w); n != 0 {
		t.Errorf("unknown key: %d", n)
	}
	// Never fewer than the window: just under a minute after the last
	// event all five still count.
	if n, _ := s.Count("a", t0.Add(5*time.Second+w-time.Millisecond), w); n != 5 {
		t.Errorf("within the window: %d, want 5", n)
	}
	// Gone once window plus one slot width has passed.
	if n, _ := s.Count("a", t0.Add(5*time.Second+w+w/slots+time.Second), w); n != 0 {
		t.Errorf("after the window: %d, want 0", n)
	}
	// A later event starts afresh; long gaps do not walk every slot.
	if n, _ := s.Add("a", t0.Add(1000*time.Hour), w); n != 1 {
		t.Errorf("after a long gap: %d, want 1", n)
	}
	// A clock that went back counts into the newest slot.
	if n, _ := s.Add("a", t0, w); n != 2 {
		t.Errorf("clock back: %d, want 2", n)
	}
}

// Events spread over time: the count is what fell within the window.
func TestSliding(t *testing.T) {
	s := New(0)
	t0 := time.Unix(1_800_000_000, 0)
	const w = 12 * time.Second // one-second slots
	var n int
	for i := 0; i < 60; i++ {
		n, _ = s.Add("k", t0.Add(time.Duration(i)*time.Second), w)
	}
	// The last 12 to 13 seconds: 12 or 13 events.
	if n < 12 || n > 13 {
		t.Errorf("one event a second in a 12s window: %d", n)
	}
}

func TestBounded(t *testing.T) {
	s := New(100)
	t0 := time.Unix(1_800_000_000, 0)
	for i := 0; i < 1000; i++ {
		s.Add(fmt.Sprint(i), t0, time.Hour)
	}
	if s.Len() > 100 {
		t.Errorf("%d keys held, bound 100", s.Len())
	}
	// Stale keys go at the next sweep.
	s.Add("new", t0.Add(3*time.Hour), time.Hour)
	if s.Len() != 1 {
		t.Errorf("%d keys after they all expired, want 1", s.Len())
	}
}

// One key asked for with two windows keeps two counts: a caller with
// another window neither resets nor reads the first one's.
func TestWindowsApart(t *testing.T) {
	s := New(0)
	t0 := time.Unix(1_800_000_000, 0)
	s.Add("k", t0, 15*time.Minute)
	s.Add("k", t0, 15*time.Minute)
	if n, _ := s.Add("k", t0, time.Hour); n != 1 {
		t.Errorf("first event under the other window counted as %d, want 1", n)
	}
	if n, _ := s.Count("k", t0, 15*time.Minute); n != 2 {
		t.Errorf("count under the first window after an event under another: %d, want 2", n)
	}
}
