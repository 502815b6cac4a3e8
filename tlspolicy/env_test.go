package tlspolicy_test

import (
	"testing"

	"securerelay/internal/testutil"
	"securerelay/tlspolicy"
)

// env is one test world: a DNS server, a CA, an MTA-STS web server and a
// clock, and Deciders wired to them.
type env struct {
	t     *testing.T
	dns   *dnsServer
	ca    *testutil.CA
	sts   *stsServer
	clock *clock
	cache *tlspolicy.MemoryCache
}

func newEnv(t *testing.T, zone string, signed ...string) *env {
	t.Helper()
	ca := testutil.NewCA(t, "Test CA")
	return &env{t: t, dns: newDNS(t, zone, signed...), ca: ca, sts: newSTSServer(t, ca), clock: newClock(), cache: tlspolicy.NewMemoryCache(0)}
}

// decider has DANE and MTA-STS off unless mod turns them on.
func (e *env) decider(mod func(*tlspolicy.Options)) *tlspolicy.Decider {
	e.t.Helper()
	o := tlspolicy.Options{
		Resolver:   e.dns.client(),
		DNSSEC:     e.dns.client(),
		HTTPClient: e.sts.client(),
		RootCAs:    e.ca.Pool,
		Now:        e.clock.Now,
		Cache:      e.cache,
	}
	if mod != nil {
		mod(&o)
	}
	d, err := tlspolicy.New(o)
	if err != nil {
		e.t.Fatal(err)
	}
	return d
}

func (e *env) forMX(d *tlspolicy.Decider, domain, host string, requireTLS bool) (*tlspolicy.HostPolicy, error) {
	e.t.Helper()
	p, err := d.Decide(e.t.Context(), domain, requireTLS, false)
	if err != nil {
		e.t.Fatalf("Decide(%s): %v", domain, err)
	}
	return p.ForMX(e.t.Context(), host)
}
