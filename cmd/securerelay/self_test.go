package main

import (
	"net"
	"net/netip"
	"testing"

	"securerelay/config"
)

// Which addresses count as this relay for MX pruning: only listeners on
// port 25, never by name; a wildcard listener makes every local address
// (and all of loopback) ours.
func TestSelfAddrs(t *testing.T) {
	mk := func(addrs ...string) *config.Config {
		c := &config.Config{Hostname: "relay.example", Outbound: config.Outbound{Helo: "mx.partner.example"}}
		for i, a := range addrs {
			c.Listeners = append(c.Listeners, config.Listener{Name: string(rune('a' + i)), Address: a, Role: "inbound"})
		}
		return c
	}
	ip := netip.MustParseAddr
	if selfAddrs(mk("127.0.0.1:2525", "192.0.2.1:587")) != nil {
		t.Error("no listener on port 25, yet an address is ours")
	}
	nat := mk("10.0.0.5:2525")
	nat.ProxyAddresses = []string{"203.0.113.25"}
	if n := selfAddrs(nat); n == nil || !n(ip("203.0.113.25")) || n(ip("10.0.0.5")) {
		t.Error("proxy_addresses: the public address must be ours, the listener on 2525 not")
	}
	one := selfAddrs(mk("127.0.0.90:25", "127.0.0.1:587"))
	if one == nil || !one(ip("127.0.0.90")) || !one(ip("::ffff:127.0.0.90")) || one(ip("127.0.0.1")) || one(ip("192.0.2.1")) {
		t.Error("listener on 127.0.0.90:25: wrong addresses counted as ours")
	}
	for _, wild := range []string{":25", "0.0.0.0:25", "[::]:25"} {
		all := selfAddrs(mk(wild))
		if all == nil || !all(ip("127.0.0.5")) || !all(ip("::1")) || all(ip("192.0.2.77")) {
			t.Errorf("listener on %s: loopback must be ours, a foreign address not", wild)
		}
		ifas, _ := net.InterfaceAddrs()
		for _, a := range ifas {
			if p, err := netip.ParsePrefix(a.String()); err == nil && !all(p.Addr()) {
				t.Errorf("listener on %s: interface address %s not counted as ours", wild, p.Addr())
			}
		}
	}
}
