package inbound

import (
	"bytes"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// A full cache makes room from expired passes only; it never empties
// itself for a flood of new addresses, which would push every regular
// sender back through screening.
func TestPassCacheFullKeepsLivePasses(t *testing.T) {
	p := NewPassCache()
	now := time.Now()
	regular := netip.MustParseAddr("192.0.2.25")
	p.add(regular, now.Add(time.Hour))
	base := netip.MustParseAddr("2001:db8::").As16()
	for i := range maxPassed - 1 {
		a := base
		a[12], a[13], a[14], a[15] = byte(i>>24), byte(i>>16), byte(i>>8), byte(i)
		until := now.Add(time.Hour)
		if i < 10 {
			until = now.Add(-time.Minute) // ten passes already over
		}
		p.add(netip.AddrFrom16(a), until)
	}
	if len(p.m) != maxPassed {
		t.Fatalf("%d entries, want %d", len(p.m), maxPassed)
	}
	flood := netip.MustParseAddr("2001:db8:1::1")
	p.add(flood, now.Add(time.Hour)) // room made from the expired ones
	if !p.has(flood, now) || len(p.m) != maxPassed-9 {
		t.Fatalf("after one more: %d entries, new one kept %v; want the 10 expired dropped", len(p.m), p.has(flood, now))
	}
	for i := range 20 {
		p.add(netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 2, byte(i)}), now.Add(time.Hour))
	}
	if !p.has(regular, now) {
		t.Error("a flood of new addresses pushed out a regular sender's pass")
	}
	if len(p.m) > maxPassed {
		t.Errorf("%d entries, over the cap %d", len(p.m), maxPassed)
	}
}

// A pass loaded from the file lasts at most maxTTL from now.
func TestPassCacheLoadCapsTTL(t *testing.T) {
	path := filepath.Join(t.TempDir(), "screen-cache.json")
	far := time.Now().Add(30 * 24 * time.Hour).UTC().Format(time.RFC3339Nano)
	os.WriteFile(path, []byte(`{"192.0.2.1":"`+far+`"}`), 0o600)
	p := OpenPassCache(path, time.Hour, time.Hour, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	defer p.Close()
	until := p.m[netip.MustParseAddr("192.0.2.1")]
	if until.After(time.Now().Add(time.Hour)) || until.Before(time.Now().Add(50*time.Minute)) {
		t.Errorf("loaded pass until %v, want about an hour from now", until)
	}
}
