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

// Validate: AD only for validated names, only when the query asks for
// DNSSEC, never on SERVFAIL; the query's bits are recorded.
func TestServerValidate(t *testing.T) {
	srv := dnstest.NewServer(t, `
signed.example.  A 192.0.2.1
a.signed.example. A 192.0.2.2
one.example.     A 192.0.2.3
x.one.example.   A 192.0.2.4
broken.signed.example. A 192.0.2.5
`)
	srv.Validate(dnstest.Signed("signed.example", "=one.example"))
	srv.ServFail("broken.signed.example")
	query := func(name string, do, ad bool) bool {
		t.Helper()
		m := new(dns.Msg)
		m.SetQuestion(name, dns.TypeA)
		m.AuthenticatedData = ad
		if do {
			m.SetEdns0(1232, true)
		}
		r, _, err := (&dns.Client{Net: "tcp"}).Exchange(m, srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		return r.AuthenticatedData
	}
	for _, c := range []struct {
		name   string
		do, ad bool
		want   bool
	}{
		{"signed.example.", true, false, true},
		{"A.Signed.Example.", false, true, true},
		{"nxdomain.signed.example.", true, false, true}, // validated denial
		{"a.signed.example.", false, false, false},      // did not ask
		{"one.example.", true, false, true},
		{"x.one.example.", true, false, false}, // "=" is that name only
		{"other.example.", true, true, false},
		{"broken.signed.example.", true, true, false},
	} {
		if got := query(c.name, c.do, c.ad); got != c.want {
			t.Errorf("%s do=%v ad=%v: AD %v, want %v", c.name, c.do, c.ad, got, c.want)
		}
	}
	q := srv.Queries()
	if len(q) != 8 || !q[0].DO || q[0].AD || q[1].DO || !q[1].AD {
		t.Errorf("recorded queries: %+v", q)
	}
	srv.Validate(nil)
	if query("signed.example.", true, true) {
		t.Error("AD after Validate(nil)")
	}
}
