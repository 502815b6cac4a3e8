// Package dnsutil is the relay's one way into DNS. Every lookup goes to a
// configured resolver address, never to the system resolver, so that tests
// can run their own DNS server and production can point at a validating
// resolver. Errors carry a Kind because the SMTP layer must tell a
// temporary failure (4xx, try again) from a definitive answer (5xx).
package dnsutil

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// Resolver is what the rest of the relay needs from DNS. It is kept small
// so that dnstest.Mock and other fakes stay trivial.
type Resolver interface {
	LookupMX(ctx context.Context, name string) ([]MX, error)
	// LookupHost returns the A and AAAA addresses of name.
	LookupHost(ctx context.Context, name string) ([]netip.Addr, error)
	// LookupTXT returns one string per TXT record, its character-strings
	// concatenated (as SPF, DKIM and MTA-STS require).
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// FamilyResolver is a Resolver that can also ask for the addresses of
// one family alone, for callers to whom only that family matters (SPF's
// a and mx mechanisms, RFC 7208 §5.3/§5.4, ask only for the client's).
// Callers fall back to LookupHost when a resolver lacks it.
type FamilyResolver interface {
	// LookupIP returns the AAAA addresses of name when v6 is true, its A
	// addresses otherwise.
	LookupIP(ctx context.Context, name string, v6 bool) ([]netip.Addr, error)
}

// LookupFamily returns the addresses of name of one family, AAAA when v6
// is true, A otherwise: through FamilyResolver when r has it, else
// LookupHost's answer filtered, an empty remainder being NODATA as a
// resolver asked for that family would answer.
func LookupFamily(ctx context.Context, r Resolver, name string, v6 bool) ([]netip.Addr, error) {
	if fr, ok := r.(FamilyResolver); ok {
		return fr.LookupIP(ctx, name, v6)
	}
	addrs, err := r.LookupHost(ctx, name)
	addrs = slices.DeleteFunc(addrs, func(ip netip.Addr) bool { return ip.Unmap().Is6() != v6 })
	if err == nil && len(addrs) == 0 {
		err = &Error{Name: name, Kind: NoData}
	}
	return addrs, err
}

// MX is one mail exchanger. Host is lower case without the trailing dot,
// except for the root (RFC 7505 null MX), which stays ".".
type MX struct {
	Host string
	Pref uint16
}

// Kind classifies a lookup failure by what the caller should do about it.
type Kind int

const (
	// Temporary is the zero Kind so that an unclassified failure is retried
	// rather than turned into a bounce.
	Temporary Kind = iota
	// NotFound is NXDOMAIN: the name does not exist.
	NotFound
	// NoData is NOERROR with no records of the asked type. It differs from
	// NotFound because a domain without MX may still get mail (implicit MX).
	NoData
	// Invalid means the name cannot be a DNS name, so asking is pointless.
	Invalid
)

func (k Kind) String() string {
	switch k {
	case Temporary:
		return "temporary"
	case NotFound:
		return "NXDOMAIN"
	case NoData:
		return "NODATA"
	case Invalid:
		return "invalid name"
	}
	return fmt.Sprintf("Kind(%d)", int(k))
}

// Error is the error of every failed lookup.
type Error struct {
	Name   string // as asked, without trailing dot
	Type   string // "MX", "A", "AAAA", "A/AAAA", "TXT"
	Server string // resolver address; only for logs
	Kind   Kind
	Err    error // cause, if there is more to say than Kind
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("lookup ")
	b.WriteString(e.Type)
	b.WriteByte(' ')
	b.WriteString(e.Name)
	if e.Server != "" {
		b.WriteString(" via ")
		b.WriteString(e.Server)
	}
	b.WriteString(": ")
	switch {
	case e.Err != nil:
		b.WriteString(e.Err.Error())
	case e.Kind == NoData:
		b.WriteString("no " + e.Type + " records (NODATA)")
	default:
		b.WriteString(e.Kind.String())
	}
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

func kindOf(err error) (Kind, bool) {
	var e *Error
	if errors.As(err, &e) {
		return e.Kind, true
	}
	return 0, false
}

// IsNotFound reports whether err is an NXDOMAIN answer (not NODATA).
func IsNotFound(err error) bool { k, ok := kindOf(err); return ok && k == NotFound }

// IsNoData reports whether the name exists but has no records of the type.
func IsNoData(err error) bool { k, ok := kindOf(err); return ok && k == NoData }

// IsTemporary reports whether err is a lookup failure worth retrying.
func IsTemporary(err error) bool { k, ok := kindOf(err); return ok && k == Temporary }

// DefaultTimeout applies when New is given no positive timeout.
const DefaultTimeout = 5 * time.Second

// udpSize is what we advertise via EDNS0; answers larger than this come
// truncated and are fetched again over TCP.
const udpSize = 4096

// maxChain bounds CNAME chains; resolvers give up far earlier.
const maxChain = 16

// Client is a Resolver that asks one resolver at Addr. It is safe for
// concurrent use.
type Client struct {
	Addr    string        // host:port
	Timeout time.Duration // for a whole lookup, retries and TCP included

	// Exchange, when set, replaces the network round trip; network is
	// "udp" or "tcp". It exists so tests can hand the client replies no
	// well-behaved server sends.
	Exchange func(ctx context.Context, m *dns.Msg, network string) (*dns.Msg, error)

	// Cache, when set, keeps answers for their TTL (NewCache).
	Cache *Cache
}

// New returns a Client asking the resolver at addr (host:port).
func New(addr string, timeout time.Duration) *Client {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Client{Addr: addr, Timeout: timeout}
}

var _ Resolver = (*Client)(nil)

// LookupMX returns the MX records of name in answer order.
func (c *Client) LookupMX(ctx context.Context, name string) ([]MX, error) {
	rrs, err := c.query(ctx, name, dns.TypeMX)
	if err != nil {
		return nil, err
	}
	var out []MX
	for _, rr := range rrs {
		if mx, ok := rr.(*dns.MX); ok {
			out = append(out, MX{Host: normalizeHost(mx.Mx), Pref: mx.Preference})
		}
	}
	return out, nil
}

// LookupHost asks for A and AAAA at the same time. Addresses of one family
// are returned even if the other lookup failed: a host reachable over IPv4
// must not be deferred because its IPv6 zone is broken.
func (c *Client) LookupHost(ctx context.Context, name string) ([]netip.Addr, error) {
	var (
		wg         sync.WaitGroup
		v4, v6     []netip.Addr
		err4, err6 error
	)
	wg.Go(func() { v4, err4 = c.lookupAddr(ctx, name, dns.TypeA) })
	wg.Go(func() { v6, err6 = c.lookupAddr(ctx, name, dns.TypeAAAA) })
	wg.Wait()
	if addrs := append(v4, v6...); len(addrs) > 0 {
		return addrs, nil
	}
	return nil, combineHostErrors(name, c.Addr, err4, err6)
}

var _ FamilyResolver = (*Client)(nil)

// LookupIP implements FamilyResolver: one question, A or AAAA.
func (c *Client) LookupIP(ctx context.Context, name string, v6 bool) ([]netip.Addr, error) {
	if v6 {
		return c.lookupAddr(ctx, name, dns.TypeAAAA)
	}
	return c.lookupAddr(ctx, name, dns.TypeA)
}

// combineHostErrors turns two failed (or empty) family lookups into one
// error. Temporary wins, because the missing answer might have had
// addresses; NXDOMAIN needs both to agree, since a name that one query
// found is not absent.
func combineHostErrors(name, server string, err4, err6 error) error {
	k4, _ := kindOf(err4)
	k6, _ := kindOf(err6)
	e := &Error{Name: strings.TrimSuffix(name, "."), Type: "A/AAAA", Server: server}
	switch {
	case err4 == nil && err6 == nil:
		// Both answered with records we could not use; treat as none.
		e.Kind = NoData
	case (err4 != nil && k4 == Temporary) || (err6 != nil && k6 == Temporary):
		e.Kind = Temporary
		e.Err = errors.Join(err4, err6)
	case k4 == Invalid || k6 == Invalid:
		e.Kind = Invalid
		e.Err = errors.Join(err4, err6)
	case k4 == NotFound && k6 == NotFound:
		e.Kind = NotFound
	default:
		e.Kind = NoData
	}
	return e
}

func (c *Client) lookupAddr(ctx context.Context, name string, qtype uint16) ([]netip.Addr, error) {
	rrs, err := c.query(ctx, name, qtype)
	if err != nil {
		return nil, err
	}
	var out []netip.Addr
	for _, rr := range rrs {
		var ip net.IP
		switch rr := rr.(type) {
		case *dns.A:
			ip = rr.A
		case *dns.AAAA:
			ip = rr.AAAA
		}
		a, ok := netip.AddrFromSlice(ip)
		if !ok {
			continue
		}
		if qtype == dns.TypeA {
			// miekg/dns may hold IPv4 in 16-byte form.
			a = a.Unmap()
		}
		out = append(out, a)
	}
	return out, nil
}

// LookupTXT returns one string per TXT record with the raw bytes of its
// character-strings joined.
func (c *Client) LookupTXT(ctx context.Context, name string) ([]string, error) {
	rrs, err := c.query(ctx, name, dns.TypeTXT)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TXT); ok {
			var b strings.Builder
			for _, s := range t.Txt {
				b.WriteString(unescapeTXT(s))
			}
			out = append(out, b.String())
		}
	}
	return out, nil
}

// query asks for one type and returns the records at the end of any CNAME
// chain. A nil error means at least one record.
func (c *Client) query(ctx context.Context, name string, qtype uint16) ([]dns.RR, error) {
	rrs, _, err := c.exchange(ctx, name, qtype, false)
	return rrs, err
}

// exchange is query, and with secure LookupSecure: the DO and AD bits set
// in the question, the answer's AD bit returned (also with a NXDOMAIN or
// NODATA error, which is then a validated denial).
func (c *Client) exchange(ctx context.Context, name string, qtype uint16, secure bool) (rrs []dns.RR, ad bool, err error) {
	tname := dns.TypeToString[qtype]
	mkErr := func(k Kind, err error) error {
		return &Error{Name: strings.TrimSuffix(name, "."), Type: tname, Server: c.Addr, Kind: k, Err: err}
	}
	fqdn := dns.Fqdn(name)
	if _, ok := dns.IsDomainName(fqdn); !ok || name == "" || name == "." {
		return nil, false, mkErr(Invalid, errors.New("not a valid domain name"))
	}

	key := keyOf(fqdn, qtype, secure)
	if c.Cache != nil {
		if e, ok := c.Cache.get(key); ok {
			if e.kind != Temporary {
				return nil, e.ad, mkErr(e.kind, nil)
			}
			// A copy of the slice: callers may sort or cut theirs.
			return slices.Clone(e.rrs), e.ad, nil
		}
	}

	timeout := c.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	m := new(dns.Msg)
	m.SetQuestion(fqdn, qtype) // sets RD
	m.SetEdns0(udpSize, secure)
	m.AuthenticatedData = secure

	start := time.Now()
	r, err := c.exchangeUDP(ctx, m)
	if err == nil && r.Truncated {
		r, err = c.roundTrip(ctx, m, "tcp")
	}
	if err != nil {
		if isTimeout(err) {
			err = fmt.Errorf("timeout after %v: %w", time.Since(start).Round(time.Millisecond), err)
		}
		return nil, false, mkErr(Temporary, err)
	}
	rrs, kind, err := interpret(r, fqdn, qtype)
	if err != nil {
		return nil, false, mkErr(kind, err)
	}
	// Only NOERROR and NXDOMAIN get here; SERVFAIL (what a validating
	// resolver answers for bogus data) is a temporary error above.
	ad = r.AuthenticatedData
	if kind == Temporary && len(rrs) == 0 {
		kind = NoData
	}
	if c.Cache != nil {
		if kind != Temporary {
			c.Cache.put(key, cacheEntry{kind: kind, ad: ad}, negativeTTL(r))
		} else {
			c.Cache.put(key, cacheEntry{rrs: rrs, kind: kind, ad: ad}, answerTTL(r, rrs))
		}
	}
	if kind != Temporary {
		return nil, ad, mkErr(kind, nil)
	}
	return rrs, ad, nil
}

// exchangeUDP retries once on timeout, because a lost datagram is the
// common case and the first attempt only gets half the time for it.
func (c *Client) exchangeUDP(ctx context.Context, m *dns.Msg) (*dns.Msg, error) {
	first := ctx
	if dl, ok := ctx.Deadline(); ok {
		var cancel context.CancelFunc
		first, cancel = context.WithDeadline(ctx, time.Now().Add(time.Until(dl)/2))
		defer cancel()
	}
	r, err := c.roundTrip(first, m, "udp")
	if err != nil && isTimeout(err) && ctx.Err() == nil {
		r, err = c.roundTrip(ctx, m, "udp")
	}
	return r, err
}

func (c *Client) roundTrip(ctx context.Context, m *dns.Msg, network string) (*dns.Msg, error) {
	type result struct {
		r   *dns.Msg
		err error
	}
	// miekg/dns only honours the context's deadline, not its cancellation;
	// a relay shutting down should not wait for DNS. The goroutine ends at
	// the deadline, which query always sets.
	ch := make(chan result, 1)
	m = m.Copy() // packing writes to the message; a retry may overlap an abandoned attempt
	go func() {
		var res result
		if c.Exchange != nil {
			res.r, res.err = c.Exchange(ctx, m, network)
		} else {
			dc := &dns.Client{Net: network, UDPSize: udpSize}
			res.r, _, res.err = dc.ExchangeContext(ctx, m, c.Addr)
		}
		ch <- res
	}()
	select {
	case res := <-ch:
		return res.r, res.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

func isTimeout(err error) bool {
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, os.ErrDeadlineExceeded) {
		return true
	}
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// interpret checks that r answers the question and picks the records of
// qtype at the end of the CNAME chain starting at fqdn. Records whose owner
// is not on the chain are ignored: they were not asked for and trusting
// them would let a resolver's stray data redirect mail. It returns
// Kind Temporary with a nil error and possibly no records for NOERROR.
func interpret(r *dns.Msg, fqdn string, qtype uint16) ([]dns.RR, Kind, error) {
	if r == nil || !r.Response || r.Opcode != dns.OpcodeQuery || len(r.Question) != 1 {
		return nil, Temporary, errors.New("garbled reply")
	}
	q := r.Question[0]
	if q.Qtype != qtype || q.Qclass != dns.ClassINET || !strings.EqualFold(q.Name, fqdn) {
		return nil, Temporary, errors.New("garbled reply: question does not match")
	}
	if r.Truncated {
		// Only possible over TCP or from Exchange hooks: the answer is incomplete.
		return nil, Temporary, errors.New("truncated reply")
	}
	switch r.Rcode {
	case dns.RcodeSuccess:
	case dns.RcodeNameError:
		return nil, NotFound, nil
	default:
		rc, ok := dns.RcodeToString[r.Rcode]
		if !ok {
			rc = fmt.Sprintf("RCODE%d", r.Rcode)
		}
		return nil, Temporary, errors.New(rc)
	}

	name := fqdn
	seen := make(map[string]bool)
	for range maxChain {
		seen[strings.ToLower(name)] = true
		var out []dns.RR
		next := ""
		for _, rr := range r.Answer {
			h := rr.Header()
			if h.Class != dns.ClassINET || !strings.EqualFold(h.Name, name) {
				continue
			}
			switch {
			case h.Rrtype == qtype:
				out = append(out, rr)
			case h.Rrtype == dns.TypeCNAME && next == "":
				if cn, ok := rr.(*dns.CNAME); ok {
					next = cn.Target
				}
			}
		}
		if len(out) > 0 || next == "" {
			return out, Temporary, nil
		}
		if seen[strings.ToLower(next)] {
			break
		}
		name = next
	}
	// Resolvers answer a CNAME loop with SERVFAIL; do the same.
	return nil, Temporary, errors.New("CNAME loop or chain too long")
}

func normalizeHost(h string) string {
	if h == "." {
		return h
	}
	return strings.ToLower(strings.TrimSuffix(h, "."))
}

// unescapeTXT undoes miekg/dns's presentation escaping of a character-string
// (\DDD for unprintable bytes, \X for '"' and '\'), so that callers see the
// bytes that were on the wire: a DKIM key or SPF record must not contain
// backslashes the sender never published.
func unescapeTXT(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	b := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' || i+1 == len(s) {
			b = append(b, s[i])
			continue
		}
		i++
		if i+2 < len(s) && isDigit(s[i]) && isDigit(s[i+1]) && isDigit(s[i+2]) {
			if n := int(s[i]-'0')*100 + int(s[i+1]-'0')*10 + int(s[i+2]-'0'); n <= 255 {
				b = append(b, byte(n))
				i += 2
				continue
			}
		}
		b = append(b, s[i])
	}
	return string(b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// LookupSecure asks for the records of qtype at name, like the other
// lookups, with the DNSSEC OK bit (RFC 4035 §3.2.1) and the AD bit (RFC 6840
// §5.7) set, and reports whether the resolver vouched for the answer by
// setting AD in its reply. authenticated is meaningful for negative answers
// too: NXDOMAIN or NODATA with AD is a validated denial, which DANE needs
// to tell "no TLSA records" from "an attacker removed them".
//
// The AD bit is only as trustworthy as the resolver and the path to it, so
// callers must use it only when the configuration says Addr is a
// validating resolver reached over a trusted path (typically loopback).
// It is not part of Resolver: only DANE needs it, and a fake that is not
// asked for it cannot claim authentication by accident.
func (c *Client) LookupSecure(ctx context.Context, name string, qtype uint16) (rrs []dns.RR, authenticated bool, err error) {
	return c.exchange(ctx, name, qtype, true)
}

// LookupTLSA returns the TLSA records at name (for SMTP, _25._tcp.<mx host>)
// and whether the resolver authenticated them; see LookupSecure.
func (c *Client) LookupTLSA(ctx context.Context, name string) (recs []*dns.TLSA, authenticated bool, err error) {
	rrs, ad, err := c.LookupSecure(ctx, name, dns.TypeTLSA)
	for _, rr := range rrs {
		if t, ok := rr.(*dns.TLSA); ok {
			recs = append(recs, t)
		}
	}
	return recs, ad, err
}
