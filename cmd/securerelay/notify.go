package main

import (
	"fmt"
	"net"
	"os"
)

// sdNotify tells the service manager about the relay's state, as
// sd_notify(3) does: one datagram to the socket named in $NOTIFY_SOCKET
// (a path, or "@name" in the abstract namespace, which package net
// understands). Without $NOTIFY_SOCKET (not run by systemd, or a unit
// other than Type=notify) it does nothing. Under Type=notify systemd
// counts the relay as started only at READY=1, so `systemctl start`
// returns once the listeners are bound, or fails when a port is taken.
//
// A failure is returned for the log only: the relay serves mail either
// way, and systemd notices a missing READY=1 by its start time-out.
func sdNotify(state string) error {
	addr := os.Getenv("NOTIFY_SOCKET")
	if addr == "" {
		return nil
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: addr, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify %q: %w", addr, err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify %q: %w", addr, err)
	}
	return nil
}
