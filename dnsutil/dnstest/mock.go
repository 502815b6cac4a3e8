package dnstest

import (
	"context"
	"errors"
	"net/netip"
	"slices"
	"strings"

	"securerelay/dnsutil"
)

// Mock is a dnsutil.Resolver from maps, for unit tests that need no wire.
// Keys are domain names; case and a trailing dot do not matter. A name
// that is a key in any map exists: asking it for a type it lacks gives
// NODATA, asking any other name gives NXDOMAIN. Fail overrides everything
// for its names. Do not change the maps while lookups run.
type Mock struct {
	MX   map[string][]dnsutil.MX
	Host map[string][]netip.Addr
	TXT  map[string][]string
	// PTR is keyed by address ("192.0.2.1", "2001:db8::1").
	PTR  map[string][]string
	Fail map[string]dnsutil.Kind
}

var (
	_ dnsutil.Resolver       = Mock{}
	_ dnsutil.FamilyResolver = Mock{}
	_ dnsutil.PTRResolver    = Mock{}
)

// LookupMX implements dnsutil.Resolver.
func (m Mock) LookupMX(_ context.Context, name string) ([]dnsutil.MX, error) {
	return lookup(m, m.MX, name, "MX")
}

// LookupHost implements dnsutil.Resolver.
func (m Mock) LookupHost(_ context.Context, name string) ([]netip.Addr, error) {
	return lookup(m, m.Host, name, "A/AAAA")
}

// LookupIP implements dnsutil.FamilyResolver from Host: a name with
// addresses of the other family only is NODATA.
func (m Mock) LookupIP(ctx context.Context, name string, v6 bool) ([]netip.Addr, error) {
	all, err := m.LookupHost(ctx, name)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, a := range all {
		if a.Unmap().Is6() == v6 {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		typ := "A"
		if v6 {
			typ = "AAAA"
		}
		return nil, &dnsutil.Error{Name: strings.TrimSuffix(name, "."), Type: typ, Server: "mock", Kind: dnsutil.NoData}
	}
	return out, nil
}

// LookupTXT implements dnsutil.Resolver.
func (m Mock) LookupTXT(_ context.Context, name string) ([]string, error) {
	return lookup(m, m.TXT, name, "TXT")
}

// LookupPTR implements dnsutil.PTRResolver from PTR; an address without
// an entry is NXDOMAIN.
func (m Mock) LookupPTR(_ context.Context, ip netip.Addr) ([]string, error) {
	key := ip.Unmap().String()
	if k, ok := m.Fail[key]; ok {
		return nil, &dnsutil.Error{Name: key, Type: "PTR", Server: "mock", Kind: k, Err: errors.New("mock failure")}
	}
	names, ok := m.PTR[key]
	if !ok {
		return nil, &dnsutil.Error{Name: key, Type: "PTR", Server: "mock", Kind: dnsutil.NotFound, Err: errors.New("no such name")}
	}
	return slices.Clone(names), nil
}

func lookup[V any](m Mock, data map[string][]V, name, typ string) ([]V, error) {
	mkErr := func(k dnsutil.Kind, err error) error {
		return &dnsutil.Error{Name: strings.TrimSuffix(name, "."), Type: typ, Server: "mock", Kind: k, Err: err}
	}
	if k, ok := find(m.Fail, name); ok {
		var err error
		if k == dnsutil.Temporary {
			err = errors.New("SERVFAIL (mock)")
		}
		return nil, mkErr(k, err)
	}
	if v, _ := find(data, name); len(v) > 0 {
		return slices.Clone(v), nil
	}
	_, mx := find(m.MX, name)
	_, host := find(m.Host, name)
	_, txt := find(m.TXT, name)
	if mx || host || txt {
		return nil, mkErr(dnsutil.NoData, nil)
	}
	return nil, mkErr(dnsutil.NotFound, nil)
}

func find[V any](m map[string]V, name string) (V, bool) {
	key := canon(name)
	if v, ok := m[key]; ok {
		return v, true
	}
	for k, v := range m {
		if canon(k) == key {
			return v, true
		}
	}
	var zero V
	return zero, false
}

func canon(name string) string { return strings.ToLower(strings.TrimSuffix(name, ".")) }
