// Package dnstest runs a real DNS server on 127.0.0.1 for tests, so that
// code under test talks to DNS over the wire exactly as in production and
// nothing ever reaches the internet. Mock is the network-free alternative
// for unit tests that only need a dnsutil.Resolver.
package dnstest

import (
	"net"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/miekg/dns"
)

// DefaultTTL applies to zone records without a TTL or $TTL.
const DefaultTTL = 60

// Query is one question the server received.
type Query struct {
	Name string // lower case, without trailing dot
	Type string // "MX", "A", ...
	Net  string // "udp" or "tcp"
	DO   bool   // the query's EDNS0 DO bit (it wants DNSSEC)
	AD   bool   // the query's AD bit (it wants to know what was validated)
}

// Server answers from a zone like an authoritative server that also
// follows CNAMEs the way a recursive resolver would present them.
type Server struct {
	tb   testing.TB
	addr string

	mu       sync.Mutex
	records  map[string][]dns.RR // by canonical owner name
	exists   map[string]bool     // owners and their ancestors (empty non-terminals)
	servfail map[string]bool
	drop     map[string]bool
	queries  []Query
	// validated, when set, says which names the server vouches for as
	// a DNSSEC-validating resolver (see Validate).
	validated func(name string) bool
}

// NewServer starts a server on 127.0.0.1 (UDP and TCP, same port) that
// answers from zone, RFC 1035 master-file text; relative names are relative
// to the root unless $ORIGIN says otherwise. It stops when the test ends.
func NewServer(tb testing.TB, zone string) *Server {
	tb.Helper()
	pc, l := listen(tb)
	return serve(tb, zone, pc, l)
}

// NewServerPort53 serves zone on ip:53, UDP and TCP, for programs that
// can only be pointed at a resolver through /etc/resolv.conf, which has
// no port (dkimverify, opendkim-testmsg, run in a private mount namespace
// with their own resolv.conf). It needs root; ok is false when ip:53
// cannot be bound.
func NewServerPort53(tb testing.TB, ip, zone string) (s *Server, ok bool) {
	tb.Helper()
	pc, err := net.ListenPacket("udp", net.JoinHostPort(ip, "53"))
	if err != nil {
		return nil, false
	}
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "53"))
	if err != nil {
		pc.Close()
		return nil, false
	}
	return serve(tb, zone, pc, l), true
}

func serve(tb testing.TB, zone string, pc net.PacketConn, l net.Listener) *Server {
	tb.Helper()
	s := &Server{tb: tb, servfail: map[string]bool{}, drop: map[string]bool{}}
	s.records, s.exists = parseZone(tb, zone)
	s.addr = pc.LocalAddr().String()
	for _, srv := range []*dns.Server{
		{PacketConn: pc, Handler: s},
		{Listener: l, Handler: s},
	} {
		started := make(chan struct{})
		srv.NotifyStartedFunc = func() { close(started) }
		errc := make(chan error, 1)
		go func() { errc <- srv.ActivateAndServe() }()
		select {
		case <-started:
		case err := <-errc:
			tb.Fatalf("dnstest: starting server: %v", err)
		}
		tb.Cleanup(func() { _ = srv.Shutdown() })
	}
	return s
}

// listen finds a port free for both UDP and TCP; the UDP port the kernel
// picks may be taken for TCP, hence the retries.
func listen(tb testing.TB) (net.PacketConn, net.Listener) {
	tb.Helper()
	var lastErr error
	for range 20 {
		pc, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			tb.Fatalf("dnstest: %v", err)
		}
		l, err := net.Listen("tcp", pc.LocalAddr().String())
		if err == nil {
			return pc, l
		}
		lastErr = err
		pc.Close()
	}
	tb.Fatalf("dnstest: no port free for both UDP and TCP: %v", lastErr)
	return nil, nil
}

// Addr is the server's address, host:port, for dnsutil.New.
func (s *Server) Addr() string { return s.addr }

// SetZone replaces all records at once. Like NewServer it fails the test
// on a syntax error, so call it from the test goroutine.
func (s *Server) SetZone(zone string) {
	s.tb.Helper()
	records, exists := parseZone(s.tb, zone)
	s.mu.Lock()
	s.records, s.exists = records, exists
	s.mu.Unlock()
}

// ServFail makes every question for name fail with SERVFAIL.
func (s *Server) ServFail(name string) {
	s.mu.Lock()
	s.servfail[dns.CanonicalName(name)] = true
	s.mu.Unlock()
}

// Drop makes the server ignore every question for name, so clients time out.
func (s *Server) Drop(name string) {
	s.mu.Lock()
	s.drop[dns.CanonicalName(name)] = true
	s.mu.Unlock()
}

// Validate makes the server play a DNSSEC-validating resolver (the AD bit
// is all a stub resolver such as ours gets to see): every answer, positive
// or negative, to a query that asks for DNSSEC (DO or AD bit) carries AD
// when validated says the name's data is signed. validated gets the
// canonical name (lower case, trailing dot); nil turns AD off again.
func (s *Server) Validate(validated func(name string) bool) {
	s.mu.Lock()
	s.validated = validated
	s.mu.Unlock()
}

// Signed is a Validate predicate: names at or under any of zones, or
// exactly name for an entry "=name".
func Signed(zones ...string) func(name string) bool {
	var under, exact []string
	for _, z := range zones {
		if e, ok := strings.CutPrefix(z, "="); ok {
			exact = append(exact, dns.CanonicalName(e))
		} else {
			under = append(under, dns.CanonicalName(z))
		}
	}
	return func(name string) bool {
		for _, z := range under {
			if dns.IsSubDomain(z, name) {
				return true
			}
		}
		return slices.Contains(exact, name)
	}
}

// Queries returns the questions received so far, in order.
func (s *Server) Queries() []Query {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Query(nil), s.queries...)
}

func parseZone(tb testing.TB, zone string) (map[string][]dns.RR, map[string]bool) {
	tb.Helper()
	records := map[string][]dns.RR{}
	exists := map[string]bool{}
	zp := dns.NewZoneParser(strings.NewReader(zone), ".", "")
	zp.SetDefaultTTL(DefaultTTL)
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		owner := dns.CanonicalName(rr.Header().Name)
		records[owner] = append(records[owner], rr)
		for off, end := 0, false; !end; off, end = dns.NextLabel(owner, off) {
			exists[owner[off:]] = true
		}
	}
	if err := zp.Err(); err != nil {
		tb.Fatalf("dnstest: zone: %v", err)
	}
	return records, exists
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	if len(req.Question) != 1 || req.Opcode != dns.OpcodeQuery {
		resp.SetRcode(req, dns.RcodeFormatError)
		_ = w.WriteMsg(resp)
		return
	}
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	_, udp := w.RemoteAddr().(*net.UDPAddr)
	network := "tcp"
	if udp {
		network = "udp"
	}

	opt := req.IsEdns0()
	do := opt != nil && opt.Do()
	s.mu.Lock()
	s.queries = append(s.queries, Query{Name: strings.TrimSuffix(name, "."), Type: dns.TypeToString[q.Qtype], Net: network,
		DO: do, AD: req.AuthenticatedData})
	drop, servfail := s.drop[name], s.servfail[name]
	resp.SetReply(req)
	resp.Authoritative = true
	resp.RecursionAvailable = true
	// A validating resolver's SERVFAIL (bogus data, say) vouches for nothing.
	resp.AuthenticatedData = (do || req.AuthenticatedData) && !servfail && s.validated != nil && s.validated(name)
	if servfail {
		resp.Rcode = dns.RcodeServerFailure
	} else if !drop {
		s.answer(resp, name, q.Qtype)
	}
	s.mu.Unlock()
	if drop {
		return
	}

	size := dns.MinMsgSize
	if opt != nil {
		size = max(size, int(opt.UDPSize()))
		resp.SetEdns0(4096, false)
	}
	if udp {
		resp.Truncate(size)
	}
	_ = w.WriteMsg(resp)
}

// answer fills resp for name and qtype; s.mu must be held. Records are
// copied because packing writes to them and answers are packed concurrently.
func (s *Server) answer(resp *dns.Msg, name string, qtype uint16) {
	for range 16 {
		rrs, ok := s.records[name]
		if !ok {
			if !s.exists[name] {
				resp.Rcode = dns.RcodeNameError
			}
			s.addSOA(resp, name)
			return
		}
		var match []dns.RR
		var cname *dns.CNAME
		for _, rr := range rrs {
			switch t := rr.Header().Rrtype; {
			case t == qtype || qtype == dns.TypeANY:
				match = append(match, dns.Copy(rr))
			case t == dns.TypeCNAME:
				cname = rr.(*dns.CNAME)
			}
		}
		if len(match) > 0 {
			resp.Answer = append(resp.Answer, match...)
			return
		}
		if cname == nil {
			s.addSOA(resp, name)
			return
		}
		resp.Answer = append(resp.Answer, dns.Copy(cname))
		name = dns.CanonicalName(cname.Target)
	}
	// What resolvers do with a CNAME loop.
	resp.Answer = nil
	resp.Rcode = dns.RcodeServerFailure
}

// addSOA puts the closest enclosing SOA, if the zone has one, into the
// authority section, as negative answers carry it for caching (RFC 2308).
func (s *Server) addSOA(resp *dns.Msg, name string) {
	for off, end := 0, false; !end; off, end = dns.NextLabel(name, off) {
		for _, rr := range s.records[name[off:]] {
			if rr.Header().Rrtype == dns.TypeSOA {
				resp.Ns = append(resp.Ns, dns.Copy(rr))
				return
			}
		}
	}
}
