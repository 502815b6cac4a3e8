package main

import (
	"net"
	"path/filepath"
	"testing"
	"time"
)

// listenNotify stands in for systemd's notification socket.
func listenNotify(t *testing.T, name string) *net.UnixConn {
	t.Helper()
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func readNotify(t *testing.T, c *net.UnixConn) string {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 4096)
	n, err := c.Read(buf)
	if err != nil {
		t.Fatalf("no datagram on the notify socket: %v", err)
	}
	return string(buf[:n])
}

func TestSdNotify(t *testing.T) {
	for _, tc := range []struct{ name, listen, env string }{
		{"path", "", ""},
		// systemd passes "@…" for a socket in the abstract namespace.
		{"abstract", "@securerelay-notify-test-" + t.Name(), "@securerelay-notify-test-" + t.Name()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.listen == "" {
				tc.listen = filepath.Join(t.TempDir(), "notify")
				tc.env = tc.listen
			}
			c := listenNotify(t, tc.listen)
			t.Setenv("NOTIFY_SOCKET", tc.env)
			if err := sdNotify("READY=1"); err != nil {
				t.Fatal(err)
			}
			if got := readNotify(t, c); got != "READY=1" {
				t.Errorf("datagram %q, want READY=1", got)
			}
		})
	}
}

func TestSdNotifyWithoutSocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	if err := sdNotify("READY=1"); err != nil {
		t.Errorf("without NOTIFY_SOCKET: %v, want nothing done", err)
	}
	t.Setenv("NOTIFY_SOCKET", filepath.Join(t.TempDir(), "absent"))
	if err := sdNotify("READY=1"); err == nil {
		t.Error("a NOTIFY_SOCKET that does not exist: no error")
	}
}
