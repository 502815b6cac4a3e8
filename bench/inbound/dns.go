package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"syscall"

	"github.com/miekg/dns"
)

// statsName is the question (TXT) that returns the server's query counts
// instead of DNS data; the benchmark asks it before and after each run to
// see how much DNS work each relay did (and that the DNSBL was not asked
// again once the client had passed screening).
const statsName = "stats.bench-dns."

// zoneServer answers authoritatively from a master file, like the local
// resolver of a mail server would from its cache: data, NODATA or NXDOMAIN
// with the zone's SOA (the negative TTL), never a referral.
type zoneServer struct {
	records map[string][]dns.RR // by canonical owner
	exists  map[string]bool     // owners and their ancestors
	zones   []string            // SOA owners, longest first

	mu     sync.Mutex
	counts map[string]int
}

func newZoneServer(text string) (*zoneServer, error) {
	s := &zoneServer{records: map[string][]dns.RR{}, exists: map[string]bool{}, counts: map[string]int{}}
	zp := dns.NewZoneParser(strings.NewReader(text), ".", "zone.txt")
	for rr, ok := zp.Next(); ok; rr, ok = zp.Next() {
		name := dns.CanonicalName(rr.Header().Name)
		s.records[name] = append(s.records[name], rr)
		if rr.Header().Rrtype == dns.TypeSOA {
			s.zones = append(s.zones, name)
		}
		for n := name; ; {
			s.exists[n] = true
			_, rest, ok := strings.Cut(n, ".")
			if !ok || rest == "" {
				break
			}
			n = rest
		}
	}
	if err := zp.Err(); err != nil {
		return nil, err
	}
	sort.Slice(s.zones, func(i, j int) bool { return len(s.zones[i]) > len(s.zones[j]) })
	return s, nil
}

// category groups a question for the counts: which check asked it.
func category(name string, qtype uint16) string {
	t := dns.TypeToString[qtype]
	switch {
	case strings.HasSuffix(name, "."+dnsblZone+"."):
		return "dnsbl/" + t
	case strings.Contains(name, "._domainkey."):
		return "dkim/" + t
	case strings.HasPrefix(name, "_dmarc."):
		return "dmarc/" + t
	case strings.HasSuffix(name, ".in-addr.arpa."):
		return "ptr/" + t
	case name == senderDomain+".":
		return "sender/" + t
	case strings.HasSuffix(name, "."+senderDomain+"."):
		return "senderhost/" + t
	}
	return "other/" + t
}

func (s *zoneServer) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	resp := new(dns.Msg)
	resp.SetReply(req)
	if len(req.Question) != 1 {
		resp.Rcode = dns.RcodeFormatError
		w.WriteMsg(resp) //nolint:errcheck // the client may be gone
		return
	}
	q := req.Question[0]
	name := dns.CanonicalName(q.Name)
	if name == statsName {
		s.mu.Lock()
		keys := make([]string, 0, len(s.counts))
		for k := range s.counts {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		var txt []string
		for _, k := range keys {
			txt = append(txt, fmt.Sprintf("%s=%d", k, s.counts[k]))
		}
		s.mu.Unlock()
		if len(txt) == 0 {
			txt = []string{"none=0"}
		}
		resp.Answer = append(resp.Answer, &dns.TXT{Hdr: dns.RR_Header{Name: q.Name, Rrtype: dns.TypeTXT, Class: dns.ClassINET}, Txt: txt})
		w.WriteMsg(resp) //nolint:errcheck
		return
	}
	s.mu.Lock()
	s.counts[category(name, q.Qtype)]++
	s.mu.Unlock()
	resp.Authoritative = true
	for _, rr := range s.records[name] {
		if rr.Header().Rrtype == q.Qtype || q.Qtype == dns.TypeANY {
			c := dns.Copy(rr)
			c.Header().Name = q.Name
			resp.Answer = append(resp.Answer, c)
		}
	}
	if len(resp.Answer) == 0 {
		if !s.exists[name] {
			resp.Rcode = dns.RcodeNameError
		}
		for _, z := range s.zones {
			if dns.IsSubDomain(z, name) {
				resp.Ns = append(resp.Ns, s.records[z][0])
				break
			}
		}
	}
	size := dns.MinMsgSize
	if o := req.IsEdns0(); o != nil {
		size = int(o.UDPSize())
		resp.SetEdns0(o.UDPSize(), false)
	}
	if _, udp := w.RemoteAddr().(*net.UDPAddr); udp {
		resp.Truncate(size)
	}
	w.WriteMsg(resp) //nolint:errcheck
}

// serveDNS answers zone on addr (UDP and TCP) until SIGTERM or SIGINT.
// Port 53 needs root; it is what Postfix's resolver, configured only
// through resolv.conf, can be pointed at.
func serveDNS(addr, zoneFile string) error {
	text, err := os.ReadFile(zoneFile)
	if err != nil {
		return err
	}
	s, err := newZoneServer(string(text))
	if err != nil {
		return fmt.Errorf("%s: %w", zoneFile, err)
	}
	pc, err := net.ListenPacket("udp", addr)
	if err != nil {
		return err
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	errc := make(chan error, 2)
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: l, Handler: s}} {
		go func() { errc <- srv.ActivateAndServe() }()
		defer srv.Shutdown() //nolint:errcheck // exiting anyway
	}
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	select {
	case <-sig:
		return nil
	case err := <-errc:
		return err
	}
}

// dnsCounts asks the server at addr for its query counts.
func dnsCounts(addr string) (map[string]int, error) {
	m := new(dns.Msg)
	m.SetQuestion(statsName, dns.TypeTXT)
	c := &dns.Client{Net: "tcp"}
	r, _, err := c.Exchange(m, addr)
	if err != nil {
		return nil, err
	}
	out := map[string]int{}
	for _, rr := range r.Answer {
		if t, ok := rr.(*dns.TXT); ok {
			for _, kv := range t.Txt {
				var k string
				var v int
				if i := strings.LastIndexByte(kv, '='); i > 0 {
					k = kv[:i]
					fmt.Sscan(kv[i+1:], &v) //nolint:errcheck // a malformed count reads as 0
					out[k] = v
				}
			}
		}
	}
	return out, nil
}
