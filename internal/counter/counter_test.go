package counter

import (
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"
)

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

func TestWindowAndRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.json")
	c, err := Open(path, time.Hour, quiet)
	if err != nil {
		t.Fatal(err)
	}
	// Recent: Close drops entries older than a day by the wall clock.
	t0 := time.Now().Add(-30 * time.Minute).Truncate(time.Minute)
	for i := 1; i <= 3; i++ {
		if n, _ := c.Add("a b", t0.Add(time.Duration(i)*time.Minute), time.Hour); n != i {
			t.Fatalf("add %d: count %d", i, n)
		}
	}
	if n, _ := c.Add("other", t0, time.Hour); n != 1 {
		t.Fatalf("keys not separate: %d", n)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	// After a restart the counts go on; events older than the window drop.
	c2, err := Open(path, time.Hour, quiet)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if n, _ := c2.Add("a b", t0.Add(10*time.Minute), time.Hour); n != 4 {
		t.Fatalf("after restart: count %d, want 4", n)
	}
	// At minute 62 the events of minutes 1 and 2 are an hour old or more:
	// left are 3, 10 and 62.
	if n, _ := c2.Add("a b", t0.Add(62*time.Minute), time.Hour); n != 3 {
		t.Fatalf("after the first events left the window: count %d, want 3", n)
	}
}
