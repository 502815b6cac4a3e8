package dnsutil_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/miekg/dns"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
)

// Short, so that timeout tests keep the suite fast.
const testTimeout = 300 * time.Millisecond

const zone = `
$ORIGIN example.org.
@        SOA   ns hostmaster 1 3600 600 86400 60
@        MX    10 MX1.example.org.
@        MX    20 mx2
@        A     192.0.2.1
mx1      A     192.0.2.10
mx2      AAAA  2001:db8::2
noMX     A     192.0.2.20
v6only   AAAA  2001:db8::30
txtonly  TXT   "v=spf1 -all"
nullmx   MX    0 .
alias    CNAME alias2
alias2   CNAME example.org.
dangling CNAME gone.example.org.
loop1    CNAME loop2
loop2    CNAME loop1
a.sub    A     192.0.2.40
escaped  TXT   "a\"b\\c\009" "tail"
multi    TXT   "one" "two"
multi    TXT   "three"
`

func setup(t *testing.T) (*dnstest.Server, *dnsutil.Client) {
	t.Helper()
	srv := dnstest.NewServer(t, zone)
	return srv, dnsutil.New(srv.Addr(), testTimeout)
}

func TestLookupMX(t *testing.T) {
	_, c := setup(t)
	got, err := c.LookupMX(t.Context(), "Example.ORG")
	if err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(got, func(a, b dnsutil.MX) int { return int(a.Pref) - int(b.Pref) })
	want := []dnsutil.MX{{Host: "mx1.example.org", Pref: 10}, {Host: "mx2.example.org", Pref: 20}}
	if !slices.Equal(got, want) {
		t.Errorf("LookupMX = %v, want %v", got, want)
	}
}

func TestLookupMXFollowsCNAME(t *testing.T) {
	_, c := setup(t)
	got, err := c.LookupMX(t.Context(), "alias.example.org.")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 {
		t.Errorf("LookupMX via CNAME chain = %v, want the 2 MX of example.org", got)
	}
}

func TestNXDOMAINvsNODATA(t *testing.T) {
	_, c := setup(t)
	ctx := t.Context()
	for _, tc := range []struct {
		name   string
		lookup func() error
		kind   dnsutil.Kind
	}{
		{"nxdomain", func() error { _, err := c.LookupMX(ctx, "nope.example.org"); return err }, dnsutil.NotFound},
		{"nodata", func() error { _, err := c.LookupMX(ctx, "txtonly.example.org"); return err }, dnsutil.NoData},
		{"empty non-terminal", func() error { _, err := c.LookupMX(ctx, "sub.example.org"); return err }, dnsutil.NoData},
		{"cname to nxdomain", func() error { _, err := c.LookupHost(ctx, "dangling.example.org"); return err }, dnsutil.NotFound},
		{"host nodata", func() error { _, err := c.LookupHost(ctx, "txtonly.example.org"); return err }, dnsutil.NoData},
		{"txt nodata", func() error { _, err := c.LookupTXT(ctx, "mx1.example.org"); return err }, dnsutil.NoData},
		{"cname loop", func() error { _, err := c.LookupMX(ctx, "loop1.example.org"); return err }, dnsutil.Temporary},
		{"invalid name", func() error { _, err := c.LookupMX(ctx, "a..b"); return err }, dnsutil.Invalid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.lookup()
			var e *dnsutil.Error
			if !errors.As(err, &e) {
				t.Fatalf("err = %v, want *dnsutil.Error", err)
			}
			if e.Kind != tc.kind {
				t.Errorf("Kind = %v, want %v (%v)", e.Kind, tc.kind, err)
			}
			if dnsutil.IsNotFound(err) != (tc.kind == dnsutil.NotFound) ||
				dnsutil.IsNoData(err) != (tc.kind == dnsutil.NoData) ||
				dnsutil.IsTemporary(err) != (tc.kind == dnsutil.Temporary) ||
				dnsutil.IsPermanent(err) != (tc.kind != dnsutil.Temporary) {
				t.Errorf("predicates disagree with Kind %v for %v", tc.kind, err)
			}
		})
	}
}

func TestServFailIsTemporary(t *testing.T) {
	srv, c := setup(t)
	srv.ServFail("example.org")
	_, err := c.LookupMX(t.Context(), "example.org")
	if !dnsutil.IsTemporary(err) || dnsutil.IsPermanent(err) {
		t.Fatalf("err = %v, want temporary", err)
	}
	want := fmt.Sprintf("lookup MX example.org via %s: SERVFAIL", srv.Addr())
	if err.Error() != want {
		t.Errorf("Error() = %q, want %q", err, want)
	}
}

func TestDroppedIsTemporaryWithinTimeout(t *testing.T) {
	srv, c := setup(t)
	srv.Drop("example.org")
	start := time.Now()
	_, err := c.LookupMX(t.Context(), "example.org")
	elapsed := time.Since(start)
	if !dnsutil.IsTemporary(err) {
		t.Fatalf("err = %v, want temporary", err)
	}
	if !strings.Contains(err.Error(), "timeout") {
		t.Errorf("Error() = %q, want it to say timeout", err)
	}
	if elapsed > testTimeout+200*time.Millisecond {
		t.Errorf("took %v, timeout is %v", elapsed, testTimeout)
	}
	udp := 0
	for _, q := range srv.Queries() {
		if q.Name == "example.org" && q.Type == "MX" && q.Net == "udp" {
			udp++
		}
	}
	if udp != 2 {
		t.Errorf("server saw %d UDP queries, want 2 (one retry)", udp)
	}
}

func TestCallerDeadlineWins(t *testing.T) {
	srv, c := setup(t)
	srv.Drop("example.org")
	c.Timeout = 10 * time.Second
	ctx, cancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.LookupMX(ctx, "example.org")
	if !dnsutil.IsTemporary(err) {
		t.Fatalf("err = %v, want temporary", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("took %v despite a 100ms context deadline", d)
	}
}

func TestCancelIsTemporaryAndPrompt(t *testing.T) {
	srv, c := setup(t)
	srv.Drop("example.org")
	c.Timeout = 10 * time.Second
	ctx, cancel := context.WithCancel(t.Context())
	time.AfterFunc(50*time.Millisecond, cancel)
	start := time.Now()
	_, err := c.LookupMX(ctx, "example.org")
	if !dnsutil.IsTemporary(err) || !errors.Is(err, context.Canceled) {
		t.Fatalf("err = %v, want temporary wrapping context.Canceled", err)
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("cancel took %v to take effect", d)
	}
}

func TestNoServerIsTemporary(t *testing.T) {
	// A port nobody listens on: the kernel answers with ICMP unreachable.
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := pc.LocalAddr().String()
	pc.Close()
	_, err = dnsutil.New(addr, testTimeout).LookupMX(t.Context(), "example.org")
	if !dnsutil.IsTemporary(err) {
		t.Fatalf("err = %v, want temporary", err)
	}
}

func TestLookupHost(t *testing.T) {
	_, c := setup(t)
	for name, want := range map[string][]netip.Addr{
		"mx1.example.org":    {netip.MustParseAddr("192.0.2.10")},
		"mx2.example.org":    {netip.MustParseAddr("2001:db8::2")},
		"alias.example.org.": {netip.MustParseAddr("192.0.2.1")},
	} {
		got, err := c.LookupHost(t.Context(), name)
		if err != nil {
			t.Errorf("LookupHost(%s): %v", name, err)
			continue
		}
		if !slices.Equal(got, want) {
			t.Errorf("LookupHost(%s) = %v, want %v", name, got, want)
		}
	}
}

func TestLookupTXT(t *testing.T) {
	_, c := setup(t)
	got, err := c.LookupTXT(t.Context(), "escaped.example.org")
	if err != nil {
		t.Fatal(err)
	}
	// The zone's escapes describe raw bytes; callers must see those bytes.
	if want := []string{"a\"b\\c\ttail"}; !slices.Equal(got, want) {
		t.Errorf("LookupTXT = %q, want %q", got, want)
	}
	got, err = c.LookupTXT(t.Context(), "multi.example.org")
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(got)
	if want := []string{"onetwo", "three"}; !slices.Equal(got, want) {
		t.Errorf("LookupTXT = %q, want %q", got, want)
	}
}

func TestTCPFallback(t *testing.T) {
	var b strings.Builder
	b.WriteString("$ORIGIN big.example.\n")
	for i := range 300 { // 300 A records do not fit into 4096 bytes
		fmt.Fprintf(&b, "many A 10.0.%d.%d\n", i/256, i%256)
	}
	long := strings.Repeat("x", 250)
	b.WriteString("txt TXT")
	for range 20 { // 5000 bytes of one TXT record
		fmt.Fprintf(&b, " %q", long)
	}
	b.WriteString("\n")
	srv := dnstest.NewServer(t, b.String())
	c := dnsutil.New(srv.Addr(), testTimeout)

	addrs, err := c.LookupHost(t.Context(), "many.big.example")
	if err != nil {
		t.Fatal(err)
	}
	if len(addrs) != 300 {
		t.Errorf("got %d addresses, want 300", len(addrs))
	}
	txt, err := c.LookupTXT(t.Context(), "txt.big.example")
	if err != nil {
		t.Fatal(err)
	}
	if len(txt) != 1 || txt[0] != strings.Repeat(long, 20) {
		t.Errorf("TXT came back with %d records", len(txt))
	}
	var tcp []string
	for _, q := range srv.Queries() {
		if q.Net == "tcp" {
			tcp = append(tcp, q.Type+" "+q.Name)
		}
	}
	slices.Sort(tcp)
	if want := []string{"A many.big.example", "TXT txt.big.example"}; !slices.Equal(tcp, want) {
		t.Errorf("TCP queries = %v, want %v", tcp, want)
	}
}

func TestSetZoneLive(t *testing.T) {
	srv, c := setup(t)
	srv.SetZone("example.org. MX 5 new.example.org.\n")
	got, err := c.LookupMX(t.Context(), "example.org")
	if err != nil {
		t.Fatal(err)
	}
	if want := []dnsutil.MX{{Host: "new.example.org", Pref: 5}}; !slices.Equal(got, want) {
		t.Errorf("after SetZone LookupMX = %v, want %v", got, want)
	}
	if _, err := c.LookupMX(t.Context(), "mx1.example.org"); !dnsutil.IsNotFound(err) {
		t.Errorf("old record still there: %v", err)
	}
}

// hook answers in place of the network with what f makes of the reply.
func hook(f func(req, resp *dns.Msg)) func(context.Context, *dns.Msg, string) (*dns.Msg, error) {
	return func(_ context.Context, m *dns.Msg, _ string) (*dns.Msg, error) {
		resp := new(dns.Msg)
		resp.SetReply(m)
		f(m, resp)
		return resp, nil
	}
}

func TestIgnoresRecordsOffTheChain(t *testing.T) {
	c := dnsutil.New("192.0.2.53:53", testTimeout)
	c.Exchange = hook(func(_, resp *dns.Msg) {
		rr := func(s string) dns.RR { r, _ := dns.NewRR(s); return r }
		resp.Answer = []dns.RR{
			rr("evil.example. 60 MX 1 attacker.example."),
			rr("Example.org. 60 CNAME target.example."),
			rr("other.example. 60 MX 1 attacker.example."),
			rr("TARGET.example. 60 MX 10 good.example."),
		}
	})
	got, err := c.LookupMX(t.Context(), "example.org")
	if err != nil {
		t.Fatal(err)
	}
	if want := []dnsutil.MX{{Host: "good.example", Pref: 10}}; !slices.Equal(got, want) {
		t.Errorf("LookupMX = %v, want %v", got, want)
	}
}

func TestBrokenRepliesAreTemporary(t *testing.T) {
	for name, f := range map[string]func(req, resp *dns.Msg){
		"refused":        func(_, resp *dns.Msg) { resp.Rcode = dns.RcodeRefused },
		"other question": func(_, resp *dns.Msg) { resp.Question[0].Name = "example.com." },
		"other type":     func(_, resp *dns.Msg) { resp.Question[0].Qtype = dns.TypeA },
		"no question":    func(_, resp *dns.Msg) { resp.Question = nil },
		"not a response": func(_, resp *dns.Msg) { resp.Response = false },
		"always truncated": func(_, resp *dns.Msg) {
			resp.Truncated = true
		},
	} {
		t.Run(name, func(t *testing.T) {
			c := dnsutil.New("192.0.2.53:53", testTimeout)
			c.Exchange = hook(f)
			_, err := c.LookupMX(t.Context(), "example.org")
			if !dnsutil.IsTemporary(err) {
				t.Errorf("err = %v, want temporary", err)
			}
		})
	}
}

func TestQueryShape(t *testing.T) {
	var got *dns.Msg
	c := dnsutil.New("192.0.2.53:53", testTimeout)
	c.Exchange = hook(func(req, resp *dns.Msg) { got = req; resp.Rcode = dns.RcodeNameError })
	_, _ = c.LookupMX(t.Context(), "example")
	if got == nil {
		t.Fatal("no query sent")
	}
	if q := got.Question[0]; q.Name != "example." || q.Qtype != dns.TypeMX {
		t.Errorf("question = %v, want MX example. (no search domains)", q)
	}
	if !got.RecursionDesired {
		t.Error("RD bit not set")
	}
	if opt := got.IsEdns0(); opt == nil || opt.UDPSize() != 4096 {
		t.Errorf("EDNS0 = %v, want 4096", opt)
	}
}

func TestLookupHostPartialFailure(t *testing.T) {
	c := dnsutil.New("192.0.2.53:53", testTimeout)
	c.Exchange = hook(func(req, resp *dns.Msg) {
		if req.Question[0].Qtype == dns.TypeAAAA {
			resp.Rcode = dns.RcodeServerFailure
			return
		}
		rr, _ := dns.NewRR("h.example. 60 A 192.0.2.7")
		resp.Answer = []dns.RR{rr}
	})
	got, err := c.LookupHost(t.Context(), "h.example")
	if err != nil || !slices.Equal(got, []netip.Addr{netip.MustParseAddr("192.0.2.7")}) {
		t.Errorf("LookupHost = %v, %v; want the IPv4 address despite AAAA SERVFAIL", got, err)
	}

	c.Exchange = hook(func(req, resp *dns.Msg) {
		if req.Question[0].Qtype == dns.TypeAAAA {
			resp.Rcode = dns.RcodeServerFailure
		} else {
			resp.Rcode = dns.RcodeNameError
		}
	})
	if _, err := c.LookupHost(t.Context(), "h.example"); !dnsutil.IsTemporary(err) {
		t.Errorf("NXDOMAIN for A but SERVFAIL for AAAA: err = %v, want temporary", err)
	}
}

// validatingServer answers from zone and plays a validating resolver for
// names under signed; flags lists the DO and AD bits of every query.
func validatingServer(t *testing.T, zone, signed string) (addr string, flags func() []string) {
	t.Helper()
	srv := dnstest.NewServer(t, zone)
	srv.Validate(dnstest.Signed(signed))
	return srv.Addr(), func() []string {
		var seen []string
		for _, q := range srv.Queries() {
			seen = append(seen, fmt.Sprintf("%s. do=%v ad=%v", q.Name, q.DO, q.AD))
		}
		return seen
	}
}

const secureZone = `
$ORIGIN signed.example.
@           SOA  ns hostmaster 1 3600 600 86400 60
@           MX   10 mx
mx          A    192.0.2.25
_25._tcp.mx TLSA 3 1 1 0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF0123456789ABCDEF
$ORIGIN plain.example.
@           SOA  ns hostmaster 1 3600 600 86400 60
_25._tcp.mx TLSA 3 1 1 00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff
`

func TestLookupSecure(t *testing.T) {
	addr, flags := validatingServer(t, secureZone, "signed.example.")
	c := dnsutil.New(addr, testTimeout)
	ctx := t.Context()

	recs, ad, err := c.LookupTLSA(ctx, "_25._tcp.mx.signed.example")
	if err != nil || !ad || len(recs) != 1 {
		t.Fatalf("signed TLSA = %v, ad=%v, %v; want 1 record, authenticated", recs, ad, err)
	}
	if r := recs[0]; r.Usage != 3 || r.Selector != 1 || r.MatchingType != 1 ||
		!strings.EqualFold(r.Certificate, "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef") {
		t.Errorf("TLSA record = %v", r)
	}
	recs, ad, err = c.LookupTLSA(ctx, "_25._tcp.mx.plain.example")
	if err != nil || ad || len(recs) != 1 {
		t.Errorf("unsigned TLSA = %v, ad=%v, %v; want 1 record, not authenticated", recs, ad, err)
	}
	rrs, ad, err := c.LookupSecure(ctx, "signed.example", dns.TypeMX)
	if err != nil || !ad || len(rrs) != 1 {
		t.Errorf("signed MX = %v, ad=%v, %v", rrs, ad, err)
	}

	// Validated denials keep the AD bit: DANE must tell them from insecure ones.
	_, ad, err = c.LookupTLSA(ctx, "_25._tcp.other.signed.example")
	if !dnsutil.IsNotFound(err) || !ad {
		t.Errorf("signed NXDOMAIN: ad=%v, %v; want NXDOMAIN, authenticated", ad, err)
	}
	_, ad, err = c.LookupTLSA(ctx, "mx.signed.example")
	if !dnsutil.IsNoData(err) || !ad {
		t.Errorf("signed NODATA: ad=%v, %v; want NODATA, authenticated", ad, err)
	}
	_, ad, err = c.LookupTLSA(ctx, "_25._tcp.other.plain.example")
	if !dnsutil.IsNotFound(err) || ad {
		t.Errorf("unsigned NXDOMAIN: ad=%v, %v; want NXDOMAIN, not authenticated", ad, err)
	}
	if _, _, err := c.LookupSecure(ctx, "a..b", dns.TypeTLSA); !dnsutil.IsPermanent(err) {
		t.Errorf("invalid name: %v", err)
	}

	for _, f := range flags() {
		if !strings.HasSuffix(f, "do=true ad=true") {
			t.Errorf("query %q: want DO and AD bits set", f)
		}
	}
	// The plain lookups must not change: no DO bit there.
	if _, err := c.LookupMX(ctx, "signed.example"); err != nil {
		t.Fatal(err)
	}
	if all := flags(); !strings.HasSuffix(all[len(all)-1], "do=false ad=false") {
		t.Errorf("LookupMX sent %q; want no DNSSEC bits", all[len(all)-1])
	}
}

func TestLookupSecureServFail(t *testing.T) {
	// A validating resolver answers SERVFAIL for bogus data: temporary, never "no records".
	c := dnsutil.New("192.0.2.53:53", testTimeout)
	c.Exchange = hook(func(_, resp *dns.Msg) { resp.Rcode = dns.RcodeServerFailure; resp.AuthenticatedData = true })
	recs, ad, err := c.LookupTLSA(t.Context(), "_25._tcp.mx.example")
	if !dnsutil.IsTemporary(err) || ad || recs != nil {
		t.Errorf("SERVFAIL: %v, ad=%v, %v; want temporary, not authenticated", recs, ad, err)
	}
}
