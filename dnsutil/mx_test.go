package dnsutil_test

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"testing"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
)

func noShuffle(t *testing.T) {
	t.Cleanup(dnsutil.SetShuffle(func(int, func(i, j int)) {}))
}

func TestMXTargetsOrder(t *testing.T) {
	srv := dnstest.NewServer(t, `
$ORIGIN example.net.
@ MX 30 c
@ MX 10 a1
@ MX 20 b
@ MX 10 a2
@ MX 20 B
`)
	c := dnsutil.New(srv.Addr(), testTimeout)
	seen := map[string]bool{}
	for range 64 {
		got, err := dnsutil.MXTargets(t.Context(), c, "example.net")
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != 4 || got[2] != "b.example.net" || got[3] != "c.example.net" ||
			!slices.Contains(got[:2], "a1.example.net") || !slices.Contains(got[:2], "a2.example.net") {
			t.Fatalf("MXTargets = %v, want a1/a2 in any order, then b (once), then c", got)
		}
		seen[got[0]] = true
	}
	if len(seen) != 2 {
		t.Errorf("equal-preference hosts never swapped in 64 runs: first was always %v", seen)
	}
}

func TestMXTargetsDeterministicShuffle(t *testing.T) {
	noShuffle(t)
	m := dnstest.Mock{MX: map[string][]dnsutil.MX{"example.net": {
		{Host: "z", Pref: 10}, {Host: "y", Pref: 5}, {Host: "x", Pref: 10},
	}}}
	got, err := dnsutil.MXTargets(t.Context(), m, "example.net")
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"y", "z", "x"}; !slices.Equal(got, want) {
		t.Errorf("MXTargets = %v, want %v (stable within a preference)", got, want)
	}
}

func TestMXTargetsImplicit(t *testing.T) {
	_, c := setup(t)
	for name, want := range map[string]string{
		"noMX.example.org":    "nomx.example.org",
		"v6only.example.org.": "v6only.example.org",
	} {
		got, err := dnsutil.MXTargets(t.Context(), c, name)
		if err != nil || !slices.Equal(got, []string{want}) {
			t.Errorf("MXTargets(%s) = %v, %v; want implicit MX %s", name, got, err, want)
		}
	}
}

func TestMXTargetsPermanent(t *testing.T) {
	_, c := setup(t)
	for name, check := range map[string]func(error) bool{
		"nullmx.example.org":  dnsutil.IsNullMX,
		"nope.example.org":    dnsutil.IsNotFound,
		"txtonly.example.org": dnsutil.IsNoData, // no MX, no address
	} {
		got, err := dnsutil.MXTargets(t.Context(), c, name)
		if err == nil {
			t.Errorf("MXTargets(%s) = %v, want an error", name, got)
			continue
		}
		if !check(err) || !dnsutil.IsPermanent(err) || dnsutil.IsTemporary(err) {
			t.Errorf("MXTargets(%s): %v: want a permanent error of the right kind", name, err)
		}
	}
}

func TestMXTargetsTemporary(t *testing.T) {
	srv, c := setup(t)
	srv.ServFail("example.org")
	srv.Drop("nomx.example.org")
	for _, name := range []string{"example.org", "nomx.example.org"} {
		_, err := dnsutil.MXTargets(t.Context(), c, name)
		if !dnsutil.IsTemporary(err) || dnsutil.IsPermanent(err) {
			t.Errorf("MXTargets(%s): %v: want temporary", name, err)
		}
	}

	// MX NODATA, then the address lookup fails: still temporary, as the
	// implicit MX may exist.
	m := dnstest.Mock{TXT: map[string][]string{"d.example": {"x"}}}
	_, err := dnsutil.MXTargets(t.Context(), failHost{m}, "d.example")
	if !dnsutil.IsTemporary(err) {
		t.Errorf("implicit MX with failing A/AAAA: %v, want temporary", err)
	}
}

// failHost is a Mock whose address lookups fail temporarily, which the
// name-keyed Mock.Fail cannot express for one type only.
type failHost struct{ dnstest.Mock }

func (failHost) LookupHost(_ context.Context, name string) ([]netip.Addr, error) {
	return nil, &dnsutil.Error{Name: name, Type: "A/AAAA", Kind: dnsutil.Temporary, Err: errors.New("timeout")}
}

func TestMXTargetsNullMXMixed(t *testing.T) {
	noShuffle(t)
	m := dnstest.Mock{MX: map[string][]dnsutil.MX{
		"null.example":  {{Host: ".", Pref: 0}},
		"null2.example": {{Host: "", Pref: 0}},
		"mixed.example": {{Host: ".", Pref: 0}, {Host: "mx.mixed.example", Pref: 10}},
	}}
	for _, d := range []string{"null.example", "null2.example"} {
		if _, err := dnsutil.MXTargets(t.Context(), m, d); !dnsutil.IsNullMX(err) || !dnsutil.IsPermanent(err) {
			t.Errorf("%s: err = %v, want null MX", d, err)
		}
	}
	got, err := dnsutil.MXTargets(t.Context(), m, "mixed.example")
	if err != nil || !slices.Equal(got, []string{"mx.mixed.example"}) {
		t.Errorf("mixed null MX = %v, %v; want the real MX only", got, err)
	}
}

func TestIsPermanentOther(t *testing.T) {
	if dnsutil.IsPermanent(nil) || dnsutil.IsPermanent(errors.New("x")) {
		t.Error("IsPermanent true for nil or a foreign error")
	}
}

// RFC 5321 §5.1: an MX host that is us (by address) drops it and every MX of
// equal or worse preference; nothing left is a loop, returned at once.
func TestMXTargetsExceptSelf(t *testing.T) {
	noShuffle(t)
	m := dnstest.Mock{
		MX: map[string][]dnsutil.MX{
			"backup.example": {{Host: "mx1.backup.example", Pref: 10}, {Host: "Relay.Ours.Example.", Pref: 20},
				{Host: "mx2.backup.example", Pref: 20}, {Host: "mx3.backup.example", Pref: 30}},
			"primary.example": {{Host: "relay.ours.example", Pref: 10}, {Host: "mx2.primary.example", Pref: 20}},
			"twice.example": {{Host: "mx0.twice.example", Pref: 5}, {Host: "relay.ours.example", Pref: 30},
				{Host: "alias.ours.example", Pref: 10}, {Host: "mx2.twice.example", Pref: 20}},
			"other.example": {{Host: "mx.other.example", Pref: 10}},
		},
		Host: map[string][]netip.Addr{"relay.ours.example": {netip.MustParseAddr("192.0.2.1")}},
	}
	// The relay's MX names resolve to its address; mx2.twice.example to
	// another machine's and a lookup failure.
	m.Host["alias.ours.example"] = []netip.Addr{netip.MustParseAddr("192.0.2.1")}
	for _, h := range []string{"mx1.backup.example", "mx2.backup.example", "mx3.backup.example", "mx2.primary.example", "mx0.twice.example", "mx.other.example"} {
		m.Host[h] = []netip.Addr{netip.MustParseAddr("198.51.100.7")}
	}
	self := dnsutil.AddrSelf(t.Context(), m, func(a netip.Addr) bool { return a == netip.MustParseAddr("192.0.2.1") })
	for _, c := range []struct {
		domain string
		want   []string
	}{
		{"backup.example", []string{"mx1.backup.example"}},
		{"twice.example", []string{"mx0.twice.example"}},
		{"other.example", []string{"mx.other.example"}},
	} {
		got, err := dnsutil.MXTargetsExcept(t.Context(), m, c.domain, self)
		if err != nil || !slices.Equal(got, c.want) {
			t.Errorf("%s: %v, %v; want %v", c.domain, got, err, c.want)
		}
	}
	for _, d := range []string{"primary.example", "relay.ours.example"} { // best MX; implicit MX
		if _, err := dnsutil.MXTargetsExcept(t.Context(), m, d, self); !dnsutil.IsMXLoop(err) || !dnsutil.IsPermanent(err) {
			t.Errorf("%s: err = %v, want a permanent MX loop", d, err)
		}
	}
	if self("mx.other.example") || self("unknown.example") {
		t.Error("AddrSelf matches a host with other addresses, or one that does not resolve")
	}
	// Without self, MXTargets keeps the whole list.
	if got, err := dnsutil.MXTargets(t.Context(), m, "primary.example"); err != nil || len(got) != 2 {
		t.Errorf("MXTargets(primary.example) = %v, %v", got, err)
	}
}
