package dnstest_test

import (
	"testing"

	"github.com/miekg/dns"

	"securerelay/dnsutil/dnstest"
)

func ask(t *testing.T, addr, name string, qtype uint16) *dns.Msg {
	t.Helper()
	m := new(dns.Msg)
	m.SetQuestion(name, qtype)
	r, _, err := (&dns.Client{Net: "tcp"}).Exchange(m, addr)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestServerAnswers(t *testing.T) {
	srv := dnstest.NewServer(t, `
$ORIGIN example.org.
@     SOA ns hostmaster 1 3600 600 86400 30
www   CNAME host
host  A   192.0.2.1
x.y   TXT "deep"
`)
	r := ask(t, srv.Addr(), "WWW.example.org.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || !r.Authoritative || len(r.Answer) != 2 {
		t.Fatalf("CNAME chain answer:\n%v", r)
	}
	if ttl := r.Answer[1].Header().Ttl; ttl != dnstest.DefaultTTL {
		t.Errorf("TTL = %d, want default %d", ttl, dnstest.DefaultTTL)
	}
	r = ask(t, srv.Addr(), "y.example.org.", dns.TypeA)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 || len(r.Ns) != 1 {
		t.Errorf("empty non-terminal: want NODATA with SOA:\n%v", r)
	}
	r = ask(t, srv.Addr(), "host.example.org.", dns.TypeMX)
	if r.Rcode != dns.RcodeSuccess || len(r.Answer) != 0 {
		t.Errorf("want NODATA:\n%v", r)
	}
	r = ask(t, srv.Addr(), "none.example.org.", dns.TypeA)
	if r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 {
		t.Errorf("want NXDOMAIN with SOA:\n%v", r)
	}
}
