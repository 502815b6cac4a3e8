package loopback

import (
	"net"
	"strconv"
	"testing"
)

func TestPortIsFreeAndBelowEphemeralRange(t *testing.T) {
	low := ephemeralLow()
	if low-minPort < 1000 {
		t.Skipf("ephemeral range starts at %d: no room below it, Port falls back to the kernel's choice", low)
	}
	seen := map[int]bool{}
	for range 20 {
		p := Port(t)
		if p < minPort || p >= low {
			t.Fatalf("port %d outside [%d, %d)", p, minPort, low)
		}
		seen[p] = true
		l, err := net.Listen("tcp", "127.0.0.1:"+strconv.Itoa(p))
		if err != nil {
			t.Fatalf("port %d not free: %v", p, err)
		}
		l.Close()
	}
	if len(seen) < 10 {
		t.Errorf("20 picks gave only %d distinct ports: not random", len(seen))
	}
}

// A port is handed out once per process: two draws of one test once met
// on one port, and the relay refused its configuration (two listeners on
// one socket).
func TestPortNeverTwice(t *testing.T) {
	seen := map[int]bool{}
	for range 2000 {
		p := Port(t)
		if seen[p] {
			t.Fatalf("port %d handed out twice", p)
		}
		seen[p] = true
	}
}
