package dnstest_test

import (
	"net/netip"
	"slices"
	"testing"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
)

func TestMock(t *testing.T) {
	m := dnstest.Mock{
		MX:   map[string][]dnsutil.MX{"Example.org.": {{Host: "mx.example.org", Pref: 10}}},
		Host: map[string][]netip.Addr{"mx.example.org": {netip.MustParseAddr("192.0.2.1")}},
		Fail: map[string]dnsutil.Kind{"broken.example": dnsutil.Temporary, "gone.example": dnsutil.NotFound},
	}
	ctx := t.Context()
	if got, err := m.LookupMX(ctx, "example.ORG"); err != nil || len(got) != 1 {
		t.Errorf("LookupMX = %v, %v", got, err)
	}
	if _, err := m.LookupMX(ctx, "mx.example.org"); !dnsutil.IsNoData(err) {
		t.Errorf("MX of a host-only name: %v, want NODATA", err)
	}
	if _, err := m.LookupTXT(ctx, "nowhere.example"); !dnsutil.IsNotFound(err) {
		t.Errorf("unknown name: %v, want NXDOMAIN", err)
	}
	if _, err := m.LookupHost(ctx, "broken.example"); !dnsutil.IsTemporary(err) {
		t.Errorf("Fail Temporary: %v", err)
	}
	if _, err := m.LookupHost(ctx, "gone.example"); !dnsutil.IsNotFound(err) {
		t.Errorf("Fail NotFound: %v", err)
	}
	got, err := dnsutil.MXTargets(ctx, m, "example.org")
	if err != nil || !slices.Equal(got, []string{"mx.example.org"}) {
		t.Errorf("MXTargets over Mock = %v, %v", got, err)
	}
}
