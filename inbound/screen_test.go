package inbound_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/inbound"
	"securerelay/smtpd"
)

// Screening at EHLO: deny wins, allow skips DNSBL scoring, lists add up
// their weights (an allowlist subtracts), codes filter answers, a list
// that fails counts as not listed, and the refusal names the lists.
func TestScreen(t *testing.T) {
	ip := netip.MustParseAddr("192.0.2.99")
	listed := func(addrs ...string) []netip.Addr {
		var out []netip.Addr
		for _, a := range addrs {
			out = append(out, netip.MustParseAddr(a))
		}
		return out
	}
	mock := dnstest.Mock{
		Host: map[string][]netip.Addr{
			"99.2.0.192.bl-a.test": listed("127.0.0.2"),
			"99.2.0.192.bl-b.test": listed("127.0.0.4"),
			"99.2.0.192.wl.test":   listed("127.0.0.10"),
		},
		Fail: map[string]dnsutil.Kind{"99.2.0.192.broken.test": dnsutil.Temporary},
	}
	lists := func(ls ...inbound.DNSBLList) inbound.Screen {
		return inbound.Screen{DNSBL: inbound.DNSBL{Threshold: 3, Timeout: time.Second, Lists: ls}}
	}
	for _, c := range []struct {
		name   string
		screen inbound.Screen
		want   int
	}{
		{"one heavy list", lists(inbound.DNSBLList{Zone: "bl-a.test", Weight: 3}), 550},
		{"two light lists add up", lists(inbound.DNSBLList{Zone: "bl-a.test", Weight: 2}, inbound.DNSBLList{Zone: "bl-b.test", Weight: 1}), 550},
		{"below threshold", lists(inbound.DNSBLList{Zone: "bl-a.test", Weight: 2}), 250},
		{"allowlist subtracts", lists(inbound.DNSBLList{Zone: "bl-a.test", Weight: 3}, inbound.DNSBLList{Zone: "wl.test", Weight: -3}), 250},
		{"code filter", lists(inbound.DNSBLList{Zone: "bl-b.test", Weight: 3, Codes: listed("127.0.0.2")}), 250},
		{"failing list counts as not listed", lists(inbound.DNSBLList{Zone: "broken.test", Weight: 3}), 250},
		{"not listed", lists(inbound.DNSBLList{Zone: "clean.test", Weight: 3}), 250},
		{"deny", inbound.Screen{Deny: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}, 554},
		{"allow skips DNSBL", func() inbound.Screen {
			s := lists(inbound.DNSBLList{Zone: "bl-a.test", Weight: 3})
			s.Allow = []netip.Prefix{netip.MustParsePrefix("192.0.2.99/32")}
			return s
		}(), 250},
	} {
		r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Resolver: mock, Screen: c.screen})
		err := r.Connect(&smtpd.State{RemoteIP: ip, Helo: "mail.example.org"})
		if got, enh := code(err); got != c.want || (got != 250 && enh[1] != 7) {
			t.Errorf("%s: %d %v (%v), want %d 5.7.x", c.name, got, enh, err, c.want)
		}
		// The check smtpd logs and counts the refusal under.
		if want := map[int]string{550: "dnsbl", 554: "deny"}[c.want]; smtpd.CheckOf(err) != want {
			t.Errorf("%s: refused as %q, want %q", c.name, smtpd.CheckOf(err), want)
		}
	}
}

func TestHeloCheck(t *testing.T) {
	for helo, want := range map[string]int{"mail.example.org": 250, "[192.0.2.1]": 250, "[IPv6:2001:db8::1]": 250, "localhost": 504, "bad_name!": 504, "[300.1.1.1]": 504} {
		r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Checks: inbound.Checks{HeloFQDN: inbound.ActionReject}})
		if got, _ := code(r.Connect(&smtpd.State{RemoteIP: netip.MustParseAddr("192.0.2.1"), Helo: helo})); got != want {
			t.Errorf("EHLO %s: %d, want %d", helo, got, want)
		}
	}
	r := inbound.New([]string{"ours.test"}) // off by default
	if err := r.Connect(&smtpd.State{RemoteIP: netip.MustParseAddr("192.0.2.1"), Helo: "localhost"}); err != nil {
		t.Errorf("HELO check on by default: %v", err)
	}
}

type countingResolver struct {
	dnsutil.Resolver
	n int
}

func (c *countingResolver) LookupHost(ctx context.Context, name string) ([]netip.Addr, error) {
	c.n++
	return c.Resolver.LookupHost(ctx, name)
}

// A client that passed screening is not screened again within the cache
// TTL: no DNS query, and it skips the pregreet wait (Allowed).
func TestScreenCache(t *testing.T) {
	res := &countingResolver{Resolver: dnstest.Mock{}}
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Resolver: res, Screen: inbound.Screen{
		CacheTTL: time.Hour,
		DNSBL:    inbound.DNSBL{Threshold: 3, Timeout: time.Second, Lists: []inbound.DNSBLList{{Zone: "bl.test", Weight: 3}}},
	}})
	ip := netip.MustParseAddr("192.0.2.7")
	if r.Allowed(ip) {
		t.Fatal("unscreened client allowed")
	}
	for i := 0; i < 3; i++ {
		if err := r.Connect(&smtpd.State{RemoteIP: ip, Helo: "mail.example.org"}); err != nil {
			t.Fatal(err)
		}
	}
	if res.n != 1 {
		t.Errorf("%d DNSBL queries for three connections, want 1 (then cached)", res.n)
	}
	if !r.Allowed(ip) {
		t.Error("a client that passed does not skip the pregreet wait")
	}
}

// The deep protocol test: the first session of a new client that passed
// screening gets 450 4.7.1 at MAIL; its retry goes through (cached).
func TestDeepProtocolTest(t *testing.T) {
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Screen: inbound.Screen{CacheTTL: time.Hour, DeepProtocol: true}})
	ip := netip.MustParseAddr("192.0.2.8")
	st := &smtpd.State{RemoteIP: ip, Helo: "mail.example.org"}
	if err := r.Connect(st); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Mail(st, "a@example.org", nil); err == nil {
		t.Fatal("first session's MAIL accepted")
	} else if c, e := code(err); c != 450 || e != (smtp.EnhancedCode{4, 7, 1}) || smtpd.CheckOf(err) != "deep_protocol_test" {
		t.Fatalf("first MAIL: %d %v, refused as %q", c, e, smtpd.CheckOf(err))
	}
	st2 := &smtpd.State{RemoteIP: ip, Helo: "mail.example.org"}
	if err := r.Connect(st2); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Mail(st2, "a@example.org", nil); err != nil {
		t.Fatalf("retry refused: %v", err)
	}
}

// A client listed below the threshold is tarpitted (State.Tarpit set).
func TestTarpitForListedClient(t *testing.T) {
	mock := dnstest.Mock{Host: map[string][]netip.Addr{"8.2.0.192.bl-a.test": {netip.MustParseAddr("127.0.0.2")}}}
	r := inbound.NewWithOptions(inbound.Options{Domains: []string{"ours.test"}, Resolver: mock, Screen: inbound.Screen{
		Tarpit: 200 * time.Millisecond,
		DNSBL:  inbound.DNSBL{Threshold: 3, Timeout: time.Second, Lists: []inbound.DNSBLList{{Zone: "bl-a.test", Weight: 1}}},
	}})
	st := &smtpd.State{RemoteIP: netip.MustParseAddr("192.0.2.8"), Helo: "x.example.org"}
	if err := r.Connect(st); err != nil || st.Tarpit != 200*time.Millisecond {
		t.Fatalf("listed below threshold: err %v, tarpit %v", err, st.Tarpit)
	}
	clean := &smtpd.State{RemoteIP: netip.MustParseAddr("192.0.2.9"), Helo: "x.example.org"}
	if err := r.Connect(clean); err != nil || clean.Tarpit != 0 {
		t.Fatalf("clean client: err %v, tarpit %v", err, clean.Tarpit)
	}
}
