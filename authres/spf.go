package authres

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"

	"blitiri.com.ar/go/spf"
	"github.com/emersion/go-smtp"

	"securerelay/dnsutil"
	"securerelay/smtputil"
)

// SPFResult is the SPF (RFC 7208) verdict for the transaction's
// MAIL FROM identity, or its HELO identity when the sender is null.
type SPFResult struct {
	Result Result
	// Helo is true when the HELO identity was checked (null sender).
	Helo bool
	// Identity is what the header reports: the reverse-path, or the HELO
	// name when Helo is set.
	Identity string
	// Domain is the domain whose record was evaluated ("" when there was
	// none to evaluate); DMARC aligns it with the From domain.
	Domain string
	// Reason explains temperror and permerror results.
	Reason string
	// Reject is set only with Options.RejectSPFFail: 550 for fail, 451
	// for temperror.
	Reject *smtp.SMTPError
}

func (r *SPFResult) resinfo() resinfo {
	ri := resinfo{method: "spf", result: r.Result, reason: r.Reason}
	switch {
	case r.Identity == "":
	case r.Helo:
		ri.props = append(ri.props, prop{"smtp.helo", r.Identity})
	default:
		ri.props = append(ri.props, prop{"smtp.mailfrom", r.Identity})
	}
	return ri
}

// SPF evaluates the sender policy of mailFrom's domain for a client at ip
// that said helo, or, for the null sender, the policy of the HELO domain
// (RFC 7208 §2.4). It can run at MAIL FROM so that a hard fail is refused
// before DATA (Options.RejectSPFFail); Check reuses its result.
func (c *Checker) SPF(ctx context.Context, ip netip.Addr, helo, mailFrom string) SPFResult {
	ctx, cancel := context.WithTimeout(ctx, c.o.Timeout)
	defer cancel()
	return c.spf(ctx, ip, helo, mailFrom)
}

func (c *Checker) spf(ctx context.Context, ip netip.Addr, helo, mailFrom string) SPFResult {
	r := SPFResult{Result: None}
	var sender string
	if mailFrom == "" {
		r.Helo, r.Identity = true, helo
		d, err := smtputil.ParseDomain(helo)
		if err != nil || strings.HasPrefix(d, "[") {
			// An address literal or junk names no policy (RFC 7208 §2.3).
			r.Identity = ""
			return r
		}
		r.Domain, r.Identity = d, d
		sender = "postmaster@" + d
	} else {
		r.Identity = mailFrom
		// A sender whose domain alone is non-ASCII is named in A-labels:
		// our own header field must not keep an otherwise ASCII message
		// from a next hop without SMTPUTF8 (RFC 6531 section 3.2).
		if a, ok := smtputil.DowngradeAddress(mailFrom); ok {
			r.Identity = a
		}
		at := strings.LastIndexByte(mailFrom, '@')
		if at < 0 {
			return r
		}
		// RFC 8616 §3: an SMTPUTF8 sender's domain is looked up in
		// its A-label form.
		d, err := smtputil.DomainToASCII(mailFrom[at+1:])
		if err != nil || strings.HasPrefix(d, "[") {
			return r
		}
		r.Domain = d
		// The library splits the sender at its first '@'; a quoted local
		// part may contain one, which would make it check the wrong
		// domain. Only %{l} sees the substitute.
		sender = strings.ReplaceAll(mailFrom[:at], "@", "%40") + "@" + d
	}
	if !ip.IsValid() {
		r.Result, r.Reason = PermError, "no client IP address"
		return r
	}

	a := &spfResolver{r: c.o.Resolver, v6: ip.Unmap().Is6()}
	res, err := spf.CheckHostWithSender(net.IP(ip.Unmap().AsSlice()), helo, sender,
		spf.WithContext(ctx), spf.WithResolver(a), spf.WithTraceFunc(a.trace))
	r.Result = Result(res)
	switch r.Result {
	case Pass, Fail, SoftFail, Neutral, None:
	case TempError, PermError:
		r.Reason = spfReason(err)
	default:
		// Not one of RFC 7208's results: never report what we do not know.
		r.Result, r.Reason = PermError, "unexpected SPF result "+string(res)
	}
	if c.o.RejectSPFFail {
		switch r.Result {
		case Fail:
			r.Reject = smtputil.SPFFail(r.Domain, ip.Unmap().String())
		case TempError:
			r.Reject = smtputil.SPFTempFail(r.Domain)
		}
	}
	return r
}

// spfReason turns the library's error into a short stable text. The
// library returns *net.DNSError from our adapter; their text is ours.
func spfReason(err error) string {
	var de *net.DNSError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &de):
		return "DNS lookup of " + de.Name + " failed: " + de.Err
	}
	s := strings.TrimPrefix(err.Error(), "spf: ")
	if len(s) > maxReason {
		s = s[:maxReason]
	}
	return s
}

// spfResolver adapts dnsutil.Resolver to the interface of
// blitiri.com.ar/go/spf, which tells answers apart by *net.DNSError
// flags (a type assertion, so the error must be exactly that type):
// IsNotFound for NXDOMAIN and NODATA, which RFC 7208 §4.6.4 counts as
// void lookups alike; IsTemporary for everything that may succeed later.
//
// It also asks for addresses of the client's family only where RFC 7208
// says so (§5.3 a, §5.4 mx: "the type appropriate for the connection"),
// which halves what a record of ten mx terms of ten hosts each costs:
// 111 questions instead of 211. The library asks LookupIPAddr for a, for
// each MX host and for exists without saying which; exists wants A even
// for an IPv6 client (§5.7). So the adapter follows the evaluation: the
// library's trace line "masks on …" starts an a or mx term (a must then
// be the next question, mx asks LookupMX next), and the hosts LookupMX
// returned are asked for in their order. Any other address question is
// taken for exists: A for an IPv4 client, A and AAAA for an IPv6 client
// (the library matches only A answers for exists). Should a new library
// version word its trace differently, a and mx lookups fall into that
// last case: more questions, never another result. One adapter serves
// one evaluation, which the library runs in one goroutine.
type spfResolver struct {
	r  dnsutil.Resolver
	v6 bool // the client's address family

	amx     bool     // an a or mx term has started, nothing asked yet
	mxHosts []string // MX hosts of that mx term not yet asked for
}

// traceTermStart is the library's trace at the start of an a or mx term
// (blitiri.com.ar/go/spf v1.6.0, aField and mxField); TestSPFFamily
// notices when it changes.
const traceTermStart = "masks on %q, %q: %q %v"

func (a *spfResolver) trace(f string, _ ...any) {
	if f == traceTermStart {
		a.amx, a.mxHosts = true, nil
	}
}

func (a *spfResolver) LookupTXT(ctx context.Context, name string) ([]string, error) {
	a.amx, a.mxHosts = false, nil
	txt, err := a.r.LookupTXT(ctx, name)
	if err != nil {
		return nil, netError(name, err)
	}
	return txt, nil
}

func (a *spfResolver) LookupMX(ctx context.Context, name string) ([]*net.MX, error) {
	mxTerm := a.amx
	a.amx, a.mxHosts = false, nil
	mxs, err := a.r.LookupMX(ctx, name)
	if err != nil {
		return nil, netError(name, err)
	}
	out := make([]*net.MX, 0, len(mxs))
	for _, mx := range mxs {
		out = append(out, &net.MX{Host: mx.Host, Pref: mx.Pref})
		if mxTerm {
			a.mxHosts = append(a.mxHosts, mx.Host)
		}
	}
	return out, nil
}

func (a *spfResolver) LookupIPAddr(ctx context.Context, host string) ([]net.IPAddr, error) {
	family := false
	switch {
	case len(a.mxHosts) > 0 && a.mxHosts[0] == host:
		a.mxHosts, family = a.mxHosts[1:], true
	case a.amx:
		a.amx, a.mxHosts, family = false, nil, true
	default:
		a.mxHosts = nil
	}
	// One family is enough for a and mx, and for exists from an IPv4
	// client (A is right for all three then).
	var addrs []netip.Addr
	var err error
	switch v6 := family && a.v6; {
	case family || !a.v6:
		addrs, err = dnsutil.LookupFamily(ctx, a.r, host, v6)
	default:
		addrs, err = a.r.LookupHost(ctx, host)
	}
	if err != nil {
		return nil, netError(host, err)
	}
	out := make([]net.IPAddr, 0, len(addrs))
	for _, ip := range addrs {
		out = append(out, net.IPAddr{IP: net.IP(ip.Unmap().AsSlice())})
	}
	return out, nil
}

// LookupAddr always fails: SPF gets no PTR lookup, on purpose. The
// library then lets the ptr mechanism not match, which RFC 7208 §5.5
// prescribes for a failed reverse lookup and which is what a record that
// relies on the discouraged ptr mechanism deserves. The error is neither
// NotFound nor temporary, so it counts as no void lookup and cannot turn
// the result into temperror.
func (a *spfResolver) LookupAddr(_ context.Context, addr string) ([]string, error) {
	return nil, &net.DNSError{Name: addr, Err: "PTR lookups are not supported"}
}

// netError classifies a dnsutil error for the SPF library, with stable
// text (no resolver address, no timings) because it ends up in the
// Authentication-Results reason.
func netError(name string, err error) error {
	name = strings.TrimSuffix(name, ".")
	switch {
	case dnsutil.IsNotFound(err):
		return &net.DNSError{Name: name, Err: "NXDOMAIN", IsNotFound: true}
	case dnsutil.IsNoData(err):
		return &net.DNSError{Name: name, Err: "no records", IsNotFound: true}
	case dnsutil.IsTemporary(err):
		return &net.DNSError{Name: name, Err: "temporary DNS failure", IsTemporary: true}
	}
	var de *dnsutil.Error
	if errors.As(err, &de) && de.Kind == dnsutil.Invalid {
		// A name that cannot exist: RFC 7208 §4.3 makes that "none" for
		// the top-level domain, and a mechanism's target does not match.
		return &net.DNSError{Name: name, Err: "invalid domain name", IsNotFound: true}
	}
	// Anything unclassified (a cancelled context, say) may work later.
	return &net.DNSError{Name: name, Err: "temporary DNS failure", IsTemporary: true}
}
