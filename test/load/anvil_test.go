package load

import (
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"securerelay/internal/loopback"
)

// BenchmarkOneClientIdle is finding 4 of issue 11: one address opens 500
// idle connections (max_connections is 500) and then a second address
// connects. Without the per-client limits the second client is refused;
// with the defaults it is greeted at once. Reports how many sessions the
// first client holds, how many were refused, and the second client's
// greeting time (or 421).
//
//	go test -run XXX -bench OneClientIdle -benchtime 1x ./test/load/
func BenchmarkOneClientIdle(b *testing.B) {
	for _, tc := range []struct{ name, limits string }{
		{"limits=off", "{max_connections_per_client: 0, max_connection_rate_per_client: 0}"},
		{"limits=default", "{}"},
	} {
		b.Run(tc.name, func(b *testing.B) {
			addr := loopback.Addr(b)
			startRelay(b, addr, tc.limits)
			held, refused := 0, 0
			var conns []net.Conn
			defer func() {
				for _, c := range conns {
					c.Close()
				}
			}()
			start := time.Now()
			for i := 0; i < 500; i++ {
				c, line, err := connectFrom(addr, "127.0.0.1")
				if err != nil {
					b.Fatalf("connection %d: %v", i, err)
				}
				conns = append(conns, c)
				switch {
				case strings.HasPrefix(line, "220"):
					held++
				case strings.HasPrefix(line, "421 4.7.0"):
					refused++
				default:
					b.Fatalf("connection %d: %q", i, line)
				}
			}
			fill := time.Since(start)
			t0 := time.Now()
			c, line, err := connectFrom(addr, "127.0.0.2")
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			greet := time.Since(t0)
			ok := strings.HasPrefix(line, "220")
			b.ReportMetric(float64(held), "sessions-held")
			b.ReportMetric(float64(refused), "refused")
			b.ReportMetric(map[bool]float64{true: 1}[ok], "second-client-greeted")
			b.ReportMetric(float64(greet.Microseconds())/1000, "ms-second-greeting")
			b.Logf("%s: 127.0.0.1 holds %d sessions, %d refused (500 attempts in %v); 127.0.0.2 got %q in %v",
				tc.name, held, refused, fill.Round(time.Millisecond), line, greet.Round(time.Microsecond))
		})
	}
}

// BenchmarkManyClientsIdle: 500 addresses hold one idle session each, so
// max_connections (500) is full and per-client limits cannot help. Stress
// mode (at 80% of max_connections) gives idle sessions the 10s
// stress_command_timeout instead of command_timeout (5m): reports how long
// a new client waits until it is greeted.
//
//	go test -run XXX -bench ManyClientsIdle -benchtime 1x ./test/load/
func BenchmarkManyClientsIdle(b *testing.B) {
	addr := loopback.Addr(b)
	startRelay(b, addr, "{}")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 500; i++ {
		from := fmt.Sprintf("127.0.%d.%d", 1+i/250, 1+i%250)
		c, line, err := connectFrom(addr, from)
		if err != nil || !strings.HasPrefix(line, "220") {
			b.Fatalf("session %d from %s: %q %v", i, from, line, err)
		}
		conns = append(conns, c)
	}
	t0 := time.Now()
	tries := 0
	for {
		tries++
		c, line, err := connectFrom(addr, "127.0.9.9")
		if err == nil && strings.HasPrefix(line, "220") {
			c.Close()
			break
		}
		if c != nil {
			c.Close()
		}
		if time.Since(t0) > 2*time.Minute {
			b.Fatalf("no session for a new client within 2 minutes (last %q %v)", line, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	wait := time.Since(t0)
	b.ReportMetric(wait.Seconds(), "s-until-greeted")
	b.Logf("listener full with 500 idle clients: a new client was greeted after %v (%d tries)", wait.Round(time.Millisecond), tries)
}
