package dnsutil_test

import (
	"net/netip"
	"testing"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
)

// The client name an MTA tells its milters: a PTR name counts only when
// its own addresses lead back to the client (forward-confirmed).
func TestLookupClientName(t *testing.T) {
	srv := dnstest.NewServer(t, `
7.2.0.192.in-addr.arpa.   PTR  Mail.Sender.Example.
mail.sender.example.      A    192.0.2.7
8.2.0.192.in-addr.arpa.   PTR  forged.example.
forged.example.           A    198.51.100.1
9.2.0.192.in-addr.arpa.   PTR  nowhere.example.
9.2.0.192.in-addr.arpa.   PTR  mail.sender.example.
mail.sender.example.      A    192.0.2.9
5.2.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa. PTR v6.sender.example.
v6.sender.example.        AAAA 2001:db8::25
v6.sender.example.        A    192.0.2.7
`)
	c := dnsutil.New(srv.Addr(), testTimeout)
	for _, tc := range []struct {
		ip            string
		verified, ptr string
	}{
		{"192.0.2.7", "mail.sender.example", "mail.sender.example"},
		{"::ffff:192.0.2.7", "mail.sender.example", "mail.sender.example"},
		// The name's addresses are elsewhere: anybody can write any PTR.
		{"192.0.2.8", "", "forged.example"},
		// The second name confirms (the first has no address at all).
		{"192.0.2.9", "mail.sender.example", "*"}, // PTR: either, in the answer's order
		{"2001:db8::25", "v6.sender.example", "v6.sender.example"},
		{"192.0.2.10", "", ""}, // no PTR
	} {
		got := dnsutil.LookupClientName(t.Context(), c, netip.MustParseAddr(tc.ip))
		if got.Verified != tc.verified || (tc.ptr != "*" && got.PTR != tc.ptr) || got.PTR == "" && tc.ptr == "*" {
			t.Errorf("%s: %+v, want verified %q, PTR %q", tc.ip, got, tc.verified, tc.ptr)
		}
	}
	// A resolver without PTR lookups, and a failing one: unknown, never an
	// error (nothing is refused for it).
	if got := dnsutil.LookupClientName(t.Context(), noPTR{c}, netip.MustParseAddr("192.0.2.7")); got != (dnsutil.ClientName{}) {
		t.Errorf("resolver without LookupPTR: %+v", got)
	}
	m := dnstest.Mock{Fail: map[string]dnsutil.Kind{"192.0.2.7": dnsutil.Temporary}}
	if got := dnsutil.LookupClientName(t.Context(), m, netip.MustParseAddr("192.0.2.7")); got != (dnsutil.ClientName{}) {
		t.Errorf("SERVFAIL: %+v", got)
	}
	if _, err := c.LookupPTR(t.Context(), netip.MustParseAddr("192.0.2.10")); !dnsutil.IsNotFound(err) {
		t.Errorf("no PTR: %v, want NXDOMAIN", err)
	}
}

// noPTR hides the Client's LookupPTR.
type noPTR struct{ dnsutil.Resolver }

// One family of a name, with or without the resolver's LookupIP: the
// fallback filters LookupHost and answers NODATA for an empty remainder,
// as the resolver itself would.
func TestLookupFamily(t *testing.T) {
	m := dnstest.Mock{Host: map[string][]netip.Addr{
		"dual.example":   {netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("2001:db8::1")},
		"v4only.example": {netip.MustParseAddr("192.0.2.2")},
	}}
	for _, r := range []dnsutil.Resolver{m, noPTR{m}} {
		got, err := dnsutil.LookupFamily(t.Context(), r, "dual.example", true)
		if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("2001:db8::1") {
			t.Errorf("%T: dual, AAAA: %v %v", r, got, err)
		}
		got, err = dnsutil.LookupFamily(t.Context(), r, "dual.example", false)
		if err != nil || len(got) != 1 || got[0] != netip.MustParseAddr("192.0.2.1") {
			t.Errorf("%T: dual, A: %v %v", r, got, err)
		}
		if got, err := dnsutil.LookupFamily(t.Context(), r, "v4only.example", true); !dnsutil.IsNoData(err) {
			t.Errorf("%T: v4only, AAAA: %v %v, want NODATA", r, got, err)
		}
		if _, err := dnsutil.LookupFamily(t.Context(), r, "none.example", false); !dnsutil.IsNotFound(err) {
			t.Errorf("%T: none: %v, want NXDOMAIN", r, err)
		}
	}
}
