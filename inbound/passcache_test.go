package inbound_test

import (
	"bytes"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/inbound"
	"securerelay/smtpd"
)

// A client that passed is remembered across Close and OpenPassCache (a
// restart); an expired pass is not; two roles share one cache.
func TestPassCacheSurvivesReopen(t *testing.T) {
	path := filepath.Join(t.TempDir(), "screen-cache.json")
	log := slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil))
	open := func() *inbound.PassCache {
		t.Helper()
		p := inbound.OpenPassCache(path, time.Hour, 24*time.Hour, log)
		return p
	}
	screen := inbound.Screen{CacheTTL: time.Hour, DeepProtocol: true}
	fresh := netip.MustParseAddr("192.0.2.8")

	p := open()
	r1 := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Screen: screen, PassCache: p})
	r2 := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Screen: screen, PassCache: p})
	st := &smtpd.State{RemoteIP: fresh, Helo: "mail.example.org"}
	if err := r1.Connect(st); err != nil {
		t.Fatal(err)
	}
	if _, err := r1.Mail(st, "a@example.org", nil); err == nil {
		t.Fatal("first contact passed the deep protocol test")
	}
	if !r2.Allowed(fresh) {
		t.Fatal("the other listener's role does not know the client that passed")
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}

	p = open()
	defer p.Close()
	if p.Len() != 1 {
		t.Fatalf("reopened cache holds %d clients, want 1", p.Len())
	}
	r3 := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Screen: screen, PassCache: p})
	st = &smtpd.State{RemoteIP: fresh, Helo: "mail.example.org"}
	if err := r3.Connect(st); err != nil {
		t.Fatal(err)
	}
	if _, err := r3.Mail(st, "a@example.org", nil); err != nil {
		t.Fatalf("after a restart, a client that passed is tested again: %v", err)
	}
}

// Expired passes are not loaded; a damaged file is moved aside with a
// warning and the cache starts empty; so does one that cannot be read.
func TestPassCacheFile(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "screen-cache.json")
	var logs bytes.Buffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	now := time.Now()
	os.WriteFile(path, []byte(`{"192.0.2.1":"`+now.Add(time.Hour).Format(time.RFC3339Nano)+`","192.0.2.2":"`+now.Add(-time.Minute).Format(time.RFC3339Nano)+`"}`), 0o600)
	p := inbound.OpenPassCache(path, time.Hour, 24*time.Hour, log)
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Screen: inbound.Screen{CacheTTL: time.Hour}, PassCache: p})
	if !r.Allowed(netip.MustParseAddr("192.0.2.1")) || r.Allowed(netip.MustParseAddr("192.0.2.2")) || p.Len() != 1 {
		t.Errorf("loaded %d clients; want only the unexpired one", p.Len())
	}
	p.Close()

	os.WriteFile(path, []byte(`{"192.0.2.1":`), 0o600)
	p = inbound.OpenPassCache(path, time.Hour, 24*time.Hour, log)
	defer p.Close()
	if p.Len() != 0 || !strings.Contains(logs.String(), "screening cache unreadable") {
		t.Errorf("damaged file: %d clients, logs %q", p.Len(), logs.String())
	}
	if _, err := os.Stat(path + ".damaged"); err != nil {
		t.Errorf("damaged file not moved aside: %v", err)
	}

	// Not readable at all (a folder in its place): the relay still starts,
	// with an empty cache and a warning; the save at Close says it failed.
	blocked := filepath.Join(dir, "blocked.json")
	os.Mkdir(blocked, 0o755)
	q := inbound.OpenPassCache(blocked, time.Hour, time.Hour, log)
	if q.Len() != 0 || !strings.Contains(logs.String(), "screening cache not readable") {
		t.Errorf("unreadable file: %d clients, logs %q", q.Len(), logs.String())
	}
	inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Screen: inbound.Screen{CacheTTL: time.Hour}, PassCache: q}).
		Connect(&smtpd.State{RemoteIP: netip.MustParseAddr("192.0.2.9"), Helo: "mail.example.org"})
	if err := q.Close(); err == nil {
		t.Error("saving over a folder reported no error")
	}
}

// The saver writes a changed cache on its own, so that kill -9 loses at
// most one interval of passes.
func TestPassCacheSavedPeriodically(t *testing.T) {
	path := filepath.Join(t.TempDir(), "screen-cache.json")
	p := inbound.OpenPassCache(path, 20*time.Millisecond, time.Hour, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	defer p.Close()
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Screen: inbound.Screen{CacheTTL: time.Hour}, PassCache: p})
	if err := r.Connect(&smtpd.State{RemoteIP: netip.MustParseAddr("192.0.2.77"), Helo: "mail.example.org"}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), `"192.0.2.77"`) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("cache file after 5s: %q, want the client that passed", b)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
