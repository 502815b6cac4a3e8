package main

import (
	"strings"
	"testing"

	"securerelay/config"
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
		{[]string{"bogus", "--config", "x"}, false},
	} {
		var errOut strings.Builder
		_, ok := parseQueueArgs(c.args, &errOut)
		if ok != c.ok {
			t.Errorf("%v: ok=%v, want %v (%s)", c.args, ok, c.ok, errOut.String())
		}
	}
}
