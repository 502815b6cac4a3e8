package inbound

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"sync"
	"time"

	"securerelay/dnsutil"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// Screen is the per-client screening done at EHLO, before the client may
// send mail: allow and deny networks and DNSBL scoring.
type Screen struct {
	Allow, Deny []netip.Prefix
	DNSBL       DNSBL
	// CacheTTL: a client that passed screening is not screened again (no
	// DNSBL query, no pregreet wait) for this long. 0: no cache.
	CacheTTL time.Duration
	// Tarpit delays every reply to a client listed somewhere but below the
	// threshold. 0: off.
	Tarpit time.Duration
	// DeepProtocol: a client's first passing session ends with 450 at
	// MAIL; a real MTA retries (and is cached as passed), a bot rarely
	// does. Costs first-time senders one retry delay.
	DeepProtocol bool
}

// DNSBL scores a client on DNS block- and allowlists.
type DNSBL struct {
	Threshold int
	Timeout   time.Duration
	Lists     []DNSBLList
}

// DNSBLList is one zone with its weight (negative for an allowlist) and,
// optionally, the answers that count.
type DNSBLList struct {
	Zone   string
	Weight int
	Codes  []netip.Addr
}

func inAny(ip netip.Addr, ps []netip.Prefix) bool {
	for _, p := range ps {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// dnsblName is the query name for ip in zone: reversed octets for IPv4,
// reversed nibbles for IPv6 (RFC 5782 §2.1, §2.4).
func dnsblName(ip netip.Addr, zone string) string {
	var parts []string
	if ip.Is4() {
		b := ip.As4()
		for i := 3; i >= 0; i-- {
			parts = append(parts, fmt.Sprint(b[i]))
		}
	} else {
		b := ip.As16()
		for i := 15; i >= 0; i-- {
			parts = append(parts, fmt.Sprintf("%x", b[i]&0xf), fmt.Sprintf("%x", b[i]>>4))
		}
	}
	return strings.Join(parts, ".") + "." + strings.TrimSuffix(zone, ".")
}

// score queries every list at once, bounded by the timeout; a list that
// does not answer in time counts as not listed, and is logged, so a slow
// list never delays or refuses mail on its own.
func (r *Role) score(ip netip.Addr) (int, []string) {
	d := r.screen.DNSBL
	if len(d.Lists) == 0 || r.resolver == nil {
		return 0, nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), d.Timeout)
	defer cancel()
	type hit struct {
		zone   string
		weight int
	}
	var wg sync.WaitGroup
	hits := make(chan hit, len(d.Lists))
	for _, l := range d.Lists {
		wg.Add(1)
		go func(l DNSBLList) {
			defer wg.Done()
			addrs, err := r.resolver.LookupHost(ctx, dnsblName(ip, l.Zone))
			if err != nil {
				if !dnsutil.IsNotFound(err) && !dnsutil.IsNoData(err) && r.log != nil {
					r.log.Warn("dnsbl did not answer, counted as not listed", "zone", l.Zone, "client", ip.String(), "error", err)
				}
				return
			}
			for _, a := range addrs {
				if len(l.Codes) == 0 || containsAddr(l.Codes, a) {
					hits <- hit{l.Zone, l.Weight}
					return
				}
			}
		}(l)
	}
	wg.Wait()
	close(hits)
	total := 0
	var listed []string
	for h := range hits {
		total += h.weight
		if h.weight > 0 {
			listed = append(listed, h.zone)
		}
	}
	return total, listed
}

func containsAddr(as []netip.Addr, a netip.Addr) bool {
	for _, x := range as {
		if x == a {
			return true
		}
	}
	return false
}

// Allowed reports whether a client skips screening, including the
// pregreet wait: on the allow list, or passed recently (the cache).
func (r *Role) Allowed(ip netip.Addr) bool {
	return inAny(ip, r.screen.Allow) || (r.screen.CacheTTL > 0 && r.passed.has(ip, time.Now()))
}

func (r *Role) denyStage(p *pass, check string) error {
	if inAny(p.st.RemoteIP, r.screen.Deny) {
		return smtpd.Refuse(check, smtputil.ClientDenied(p.st.RemoteIP.String()))
	}
	return nil
}

// allowStage ends the screening for a client on the allow list or
// screened recently (the pass cache: no DNS query).
func (r *Role) allowStage(p *pass, _ string) error {
	switch {
	case inAny(p.st.RemoteIP, r.screen.Allow):
		p.st.Screen, p.screened = "allow", true
	case r.screen.CacheTTL > 0 && r.passed.has(p.st.RemoteIP, time.Now()):
		p.st.Screen, p.screened = "cached", true
	}
	return nil
}

func (r *Role) dnsblStage(p *pass, check string) error {
	if p.screened {
		return nil
	}
	ip, st := p.st.RemoteIP, p.st
	total, listed := r.score(ip)
	if len(r.screen.DNSBL.Lists) > 0 && total >= r.screen.DNSBL.Threshold && len(listed) > 0 {
		return smtpd.Refuse(check, smtputil.ClientListed(ip.String(), strings.Join(listed, ", ")),
			"score", total, "lists", strings.Join(listed, ","))
	}
	if total > 0 {
		st.Screen = "listed" // below the threshold
	}
	if total > 0 && r.screen.Tarpit > 0 {
		st.Tarpit = r.screen.Tarpit // listed somewhere: slow it down
	}
	if r.screen.DeepProtocol {
		// Not cached yet: the MAIL of this session gets a 450; the client
		// is cached then, so its retry goes through.
		sessionOf(st).deepPending = true
		return nil
	}
	if r.screen.CacheTTL > 0 {
		r.passed.add(ip, time.Now().Add(r.screen.CacheTTL))
	}
	return nil
}

// heloStage is the EHLO name check (off by default).
func (r *Role) heloStage(p *pass, check string) error {
	if a := r.checks.HeloFQDN.or(ActionOff); a != ActionOff && !validHelo(p.st.Helo) {
		return r.act(check, a, smtputil.HeloNotFQDN(sanitizeHelo(p.st.Helo)))
	}
	return nil
}

// deepStage is the second half of the deep protocol test, at MAIL.
func (r *Role) deepStage(p *pass, check string) error {
	st := p.st
	s := sessionOf(st)
	if !s.deepPending {
		return nil
	}
	s.deepPending = false
	r.passed.add(st.RemoteIP, time.Now().Add(max(r.screen.CacheTTL, time.Hour)))
	return smtpd.Refuse(check, smtputil.FirstContact(st.RemoteIP.String()))
}

func validHelo(h string) bool {
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		a := strings.TrimPrefix(h[1:len(h)-1], "IPv6:")
		_, err := netip.ParseAddr(a)
		return err == nil
	}
	_, err := smtputil.ParseDomain(h)
	return err == nil
}

func sanitizeHelo(h string) string {
	if len(h) > 100 {
		h = h[:100]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, h)
}
