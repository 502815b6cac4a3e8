package dnsutil

import (
	"context"
	"errors"
	"net/netip"

	"github.com/miekg/dns"
)

// PTRResolver is a Resolver that can also look up the names of an
// address: the client name an MTA gives its milters (Postfix's and
// Sendmail's {client_name}) comes from it. Callers without one treat
// every client as "unknown".
type PTRResolver interface {
	// LookupPTR returns the names of ip's PTR records (RFC 1035 §3.5),
	// lower case without the trailing dot.
	LookupPTR(ctx context.Context, ip netip.Addr) ([]string, error)
}

// LookupPTR implements PTRResolver.
func (c *Client) LookupPTR(ctx context.Context, ip netip.Addr) ([]string, error) {
	if !ip.IsValid() {
		return nil, &Error{Name: ip.String(), Type: "PTR", Server: c.Addr, Kind: Invalid, Err: errors.New("not an IP address")}
	}
	name, err := dns.ReverseAddr(ip.Unmap().String())
	if err != nil {
		return nil, &Error{Name: ip.String(), Type: "PTR", Server: c.Addr, Kind: Invalid, Err: err}
	}
	rrs, err := c.query(ctx, name, dns.TypePTR)
	if err != nil {
		return nil, err
	}
	var out []string
	for _, rr := range rrs {
		if p, ok := rr.(*dns.PTR); ok {
			out = append(out, normalizeHost(p.Ptr))
		}
	}
	return out, nil
}

// maxPTRNames bounds the names of one address whose addresses are looked
// up: the reverse zone is the client's, and a long list of names would be
// a long list of queries on its behalf.
const maxPTRNames = 5

// ClientName is what reverse DNS says of a client, as Postfix's smtpd
// learns it at connect: Verified is a name of ip's PTR records whose A or
// AAAA records include ip (forward-confirmed, "FCrDNS"), "" when none
// does; PTR is the first PTR name, verified or not ("" without one).
type ClientName struct {
	Verified, PTR string
}

// LookupClientName looks up ip's PTR names and confirms them forward, in
// their order, the first that maps back to ip winning. A DNS failure on
// the way leaves the name unverified: the client is "unknown" to the
// milters then, as to Postfix's when its lookup fails; nothing is refused
// for it.
func LookupClientName(ctx context.Context, r Resolver, ip netip.Addr) ClientName {
	var cn ClientName
	pr, ok := r.(PTRResolver)
	if !ok || !ip.IsValid() {
		return cn
	}
	ip = ip.Unmap()
	names, err := pr.LookupPTR(ctx, ip)
	if err != nil || len(names) == 0 {
		return cn
	}
	cn.PTR = names[0]
	for _, n := range names[:min(len(names), maxPTRNames)] {
		if n == "." || n == "" {
			continue
		}
		addrs, err := LookupFamily(ctx, r, n, ip.Is6())
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if a.Unmap() == ip {
				cn.Verified = n
				return cn
			}
		}
	}
	return cn
}
