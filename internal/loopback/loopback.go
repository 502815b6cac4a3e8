// Package loopback hands tests a 127.0.0.1 port for a process that binds
// it later (the relay under test, a scanner daemon) or for an address
// where nothing may answer.
//
// A port from Listen("127.0.0.1:0") comes from the kernel's ephemeral
// range, which every other test process draws from too, for its own
// listeners and for the source port of each outgoing connection: in the
// moment between our Close and the daemon's bind, someone else can take
// it (CI once dialled a stranger's listener that way). Ports are drawn
// here from below that range instead, where the kernel never allocates
// on its own; only another caller of this package could collide, and
// the random pick makes that unlikely.
package loopback

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
)

// Ports are drawn from [max(minPort, low-window), low), where low starts
// the ephemeral range: clear of the well-known and registered services
// most machines run.
const (
	minPort = 10000
	window  = 16384
)

// ephemeralLow is the start of the kernel's ephemeral port range, or 0 if
// it cannot be read (not Linux).
func ephemeralLow() int {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0
	}
	n, err := strconv.Atoi(f[0])
	if err != nil {
		return 0
	}
	return n
}

// Port returns a TCP port on 127.0.0.1 that is free now and outside the
// kernel's ephemeral range when that range leaves room below it.
func Port(t testing.TB) int {
	t.Helper()
	p, err := Free()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// Free is Port for code without a testing.TB.
func Free() (int, error) {
	low := ephemeralLow()
	if low-minPort >= 1000 {
		start := max(minPort, low-window)
		for range 50 {
			p := start + rand.IntN(low-start)
			if !claim(p) {
				// Handed out before in this process: free now perhaps,
				// but a test may be about to bind it (two draws of one
				// test met on one port once).
				continue
			}
			if l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p))); err == nil {
				l.Close()
				return p, nil
			}
		}
	}
	// No room below the range, or 50 taken ports in a row: the kernel's
	// choice, with the race described above.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("no free loopback port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Addr is Port as "127.0.0.1:PORT".
var (
	mu      sync.Mutex
	claimed = map[int]bool{}
)

// claim reports whether p was not handed out before, and marks it.
func claim(p int) bool {
	mu.Lock()
	defer mu.Unlock()
	if claimed[p] {
		return false
	}
	claimed[p] = true
	return true
}

func Addr(t testing.TB) string {
	t.Helper()
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(Port(t)))
}
