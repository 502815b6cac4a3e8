package tlspolicy

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"securerelay/dnsutil"
)

// DNSSECResolver answers through a validating resolver and says whether
// it authenticated the answer (the AD bit). *dnsutil.Client implements it.
// NXDOMAIN and NODATA come back as errors (dnsutil.IsNotFound/IsNoData)
// with authenticated set for a validated denial.
type DNSSECResolver interface {
	LookupSecure(ctx context.Context, name string, qtype uint16) (rrs []dns.RR, authenticated bool, err error)
	LookupTLSA(ctx context.Context, name string) (recs []*dns.TLSA, authenticated bool, err error)
}

var _ DNSSECResolver = (*dnsutil.Client)(nil)

// Options configure a Decider.
type Options struct {
	// Rules are the admin's per-destination rules, in configuration order
	// (their 1-based index names them in Explain and errors).
	Rules []Rule
	// Default applies when no rule, DANE or MTA-STS decides; may when zero.
	Default Level
	// MinVersion raises the lowest TLS version of every level that
	// requires TLS (the site-wide min_version; TLS 1.2 when lower or
	// zero). may keeps TLS 1.0: any encryption beats its clear-text
	// fallback.
	MinVersion uint16
	// DANE enables automatic DANE (RFC 7672) for destinations without a
	// rule. It needs DNSSEC.
	DANE bool
	// MTASTS enables MTA-STS (RFC 8461) for destinations without a rule.
	// It needs Resolver.
	MTASTS bool
	// AllowTLSRequiredNo honours "TLS-Required: No" (RFC 8689 §5): DANE
	// and MTA-STS are set aside. Rules and the default still apply: they
	// are the organisation's own obligations, which a header any internal
	// sender can write must not lift.
	AllowTLSRequiredNo bool

	// Resolver looks up _mta-sts TXT records.
	Resolver dnsutil.Resolver
	// DNSSEC is the validating resolver whose AD bit DANE trusts; set it
	// only when the configuration marks the resolver as validating and the
	// path to it is trusted (loopback or equivalent).
	DNSSEC DNSSECResolver
	// HTTPClient fetches MTA-STS policies; http.DefaultTransport when nil.
	// Redirects are never followed, whatever the client says.
	HTTPClient *http.Client
	// STSFetchTimeout bounds one policy fetch (default 30s).
	STSFetchTimeout time.Duration
	// Cache keeps MTA-STS policies; a NewMemoryCache(0) when nil.
	Cache STSCache
	// RootCAs are the roots for verify and secure; the system roots when
	// nil. (A base tls.Config's RootCAs are not used.)
	RootCAs *x509.CertPool
	// Now is the clock for certificate validity and the MTA-STS cache.
	Now func() time.Time
	// Logger gets what is worth an operator's attention but not a
	// delivery failure (a cache that cannot store); slog.Default when nil.
	Logger *slog.Logger
	// Observe, if set, gets every Outcome that HostPolicy.Evaluate
	// returns: one per session checked (a new connection, or a pooled one
	// checked again for a new transaction), for metrics. It must be quick.
	Observe func(Outcome)
}

// RuleError is New's error for a bad rule; Index is 0-based into
// Options.Rules so that a configuration loader can point at the line.
type RuleError struct {
	Index int
	Match string
	Err   error
}

func (e *RuleError) Error() string {
	return fmt.Sprintf("tls policy rule %d (match %q): %v", e.Index+1, e.Match, e.Err)
}

func (e *RuleError) Unwrap() error { return e.Err }

// rule is a validated Rule with its match parsed.
type rule struct {
	Rule
	index int
	pins  [][sha256.Size]byte
	names []string // Names, lower case
}

func (r *rule) source() string { return fmt.Sprintf("policy rule %d (match %s)", r.index+1, r.Match) }

// Decider decides TLS policies. It is safe for concurrent use.
type Decider struct {
	o    Options
	http *http.Client
	// Rules by match kind and name.
	rules [4]map[string]*rule
	// hostDANE: some host rule has level dane or dane-only.
	hostDANE bool

	mu      sync.Mutex
	flights map[string]*stsFlight
}

// New checks the options and rules and returns a Decider. Errors for
// rules are *RuleError.
func New(o Options) (*Decider, error) {
	d := &Decider{flights: map[string]*stsFlight{}}
	for i := range d.rules {
		d.rules[i] = map[string]*rule{}
	}
	if o.Default == 0 {
		o.Default = May
	}
	needDNSSEC := o.DANE || o.Default == Dane || o.Default == DaneOnly
	for i, r := range o.Rules {
		if err := r.Validate(); err != nil {
			return nil, &RuleError{Index: i, Match: r.Match, Err: err}
		}
		kind, name, _ := parseMatch(r.Match)
		if prev := d.rules[kind][name]; prev != nil {
			return nil, &RuleError{Index: i, Match: r.Match, Err: fmt.Errorf("same match as rule %d", prev.index+1)}
		}
		cr := &rule{Rule: r, index: i}
		for _, f := range r.Fingerprints {
			fp, _ := ParseFingerprint(f) // Validate parsed it
			cr.pins = append(cr.pins, fp)
		}
		for _, n := range r.Names {
			cr.names = append(cr.names, strings.ToLower(strings.TrimSuffix(n, ".")))
		}
		d.rules[kind][name] = cr
		if r.Level == Dane || r.Level == DaneOnly {
			needDNSSEC = true
			d.hostDANE = d.hostDANE || kind == matchHost || kind == matchHostSuffix
			if o.DNSSEC == nil {
				return nil, &RuleError{Index: i, Match: r.Match, Err: fmt.Errorf("level %s needs a DNSSEC-validating resolver (dns.dnssec in the configuration)", r.Level)}
			}
		}
	}
	switch {
	case o.Default < None || o.Default > Fingerprint:
		return nil, fmt.Errorf("tls policy default: invalid level %s", o.Default)
	case o.Default == Fingerprint:
		return nil, errors.New("tls policy default: fingerprint needs fingerprints, which only a rule can give")
	case needDNSSEC && o.DNSSEC == nil:
		return nil, errors.New("tls policy: DANE needs a DNSSEC-validating resolver (dns.dnssec in the configuration)")
	case o.MTASTS && o.Resolver == nil:
		return nil, errors.New("tls policy: MTA-STS needs a resolver")
	}
	if o.STSFetchTimeout <= 0 {
		o.STSFetchTimeout = 30 * time.Second
	}
	if o.Cache == nil {
		o.Cache = NewMemoryCache(0)
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	hc := http.Client{}
	if o.HTTPClient != nil {
		hc = *o.HTTPClient
	}
	hc.CheckRedirect = func(*http.Request, []*http.Request) error { return errRedirect }
	d.http = &hc
	d.o = o
	return d, nil
}

// RootCAs are the roots verify and secure check chains against (nil: the
// system's), for tools that report a chain apart from the verdict.
func (d *Decider) RootCAs() *x509.CertPool { return d.o.RootCAs }

// HasDomainRule reports whether a rule matches domain as a recipient
// domain (not a host rule): mail for it routed through a relay must be
// decided for that domain, not together with other domains.
func (d *Decider) HasDomainRule(domain string) bool {
	dom := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(domain), "."))
	return d.match(matchDomain, matchSubdomains, dom) != nil
}

// DomainRule returns the Match of the rule that names domain as a
// recipient domain (as written in the rule), or "" when none does. The
// caller keys its own per-rule settings (the encryption fallback's) by
// it; the Decider refuses two rules with the same match.
func (d *Decider) DomainRule(domain string) string {
	dom := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(domain), "."))
	if r := d.match(matchDomain, matchSubdomains, dom); r != nil {
		return r.Match
	}
	return ""
}

// RuleMatch is the Match of the domain rule that decided p, or "".
func (p *Policy) RuleMatch() string {
	if p.rule == nil {
		return ""
	}
	return p.rule.Match
}

// match finds the rule for name among the exact and parent-domain rules
// of one family: the exact one first, then the closest parent.
func (d *Decider) match(exact, parent matchKind, name string) *rule {
	if r := d.rules[exact][name]; r != nil {
		return r
	}
	for off, end := 0, false; !end; {
		off, end = dns.NextLabel(name, off)
		if end {
			break
		}
		if r := d.rules[parent][name[off:]]; r != nil {
			return r
		}
	}
	return nil
}

// Policy is the decision for one destination domain and one message. Use
// ForMX for each MX host before connecting to it: DANE records and host
// rules are per host. A Policy is safe for concurrent use.
type Policy struct {
	Domain string
	// Level is the domain-wide level: a rule's, dane when the MX RRset is
	// DNSSEC-validated (DANE then decides per host), verify for MTA-STS
	// enforce, else the default. HostPolicy.Level is what is enforced.
	Level        Level
	Source       string // where Level came from, for logs and explain
	Names        []string
	Fingerprints []string
	MinVersion   uint16
	Ciphers      []uint16
	Fallback     string
	// RequireTLS: the message arrived with REQUIRETLS (RFC 8689).
	RequireTLS bool
	// TLSRequiredNo: the message's "TLS-Required: No" is honoured.
	TLSRequiredNo bool
	// MXSecure: the MX RRset was DNSSEC-validated.
	MXSecure bool
	// STS is the MTA-STS policy in force (any mode), nil if none.
	STS *STSPolicy
	// Explain lists every step considered, in order.
	Explain []string

	d        *Decider
	rule     *rule
	origin   origin
	secureMX map[string]bool
	mxErr    error // temporary failure of the DNSSEC MX lookup, when tolerated

	mu sync.Mutex
	// stsFetched: the policy was fetched by this Decide or fetched again
	// by ForMX; it is not fetched once more.
	stsFetched bool
	stsNew     *STSPolicy // fetched again by ForMX
}

// Decide returns the policy for mail to domain (the recipient domain).
// requireTLS: the message arrived with REQUIRETLS (RFC 8689); the level is
// then never below verified TLS, whatever a rule says. tlsRequiredNo: the
// message has "TLS-Required: No", honoured only with
// Options.AllowTLSRequiredNo and never together with REQUIRETLS.
//
// The error is a *Failure with Temporary set when a DNSSEC lookup that
// decides whether DANE applies failed: delivering without knowing could
// be below what the domain requires, so the caller must defer.
func (d *Decider) Decide(ctx context.Context, domain string, requireTLS, tlsRequiredNo bool) (*Policy, error) {
	return d.decide(ctx, domain, requireTLS, tlsRequiredNo, false)
}

// DecideRelay is Decide for mail that goes to a configured next hop (a
// route), followed by ForRelay: rules and REQUIRETLS apply, DANE and
// MTA-STS describe a domain's own MX hosts and are not looked up, so a DNS
// problem there cannot hold up mail for the relay.
func (d *Decider) DecideRelay(ctx context.Context, domain string, requireTLS, tlsRequiredNo bool) (*Policy, error) {
	return d.decide(ctx, domain, requireTLS, tlsRequiredNo, true)
}

func (d *Decider) decide(ctx context.Context, domain string, requireTLS, tlsRequiredNo, relay bool) (*Policy, error) {
	dom := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(domain), "."))
	if err := checkName(dom); err != nil {
		return nil, fmt.Errorf("tls policy for %q: %w", domain, err)
	}
	p := &Policy{Domain: dom, d: d, RequireTLS: requireTLS}
	ex := &explainer{}
	ex.add("destination %s", dom)
	if requireTLS {
		ex.add("REQUIRETLS: the message requires verified TLS (RFC 8689); no rule can lower that")
	}
	if tlsRequiredNo {
		switch {
		case requireTLS:
			ex.add("TLS-Required: No: ignored, the message also has REQUIRETLS (RFC 8689 §5)")
		case !d.o.AllowTLSRequiredNo:
			ex.add("TLS-Required: No: ignored, the configuration does not allow it")
		default:
			p.TLSRequiredNo = true
			ex.add("TLS-Required: No: honoured; DANE and MTA-STS are set aside (rules and the default still apply)")
		}
	}

	r := d.match(matchDomain, matchSubdomains, dom)
	if r != nil {
		p.rule = r
		p.Level, p.Source, p.origin = r.Level, r.source(), originRule
		p.Names, p.Fingerprints = r.Names, r.Fingerprints
		p.MinVersion, p.Ciphers, p.Fallback = r.MinVersion, r.Ciphers, r.Fallback
		ex.add("rules: %s matches %s: %s", r.source(), dom, describeRule(r))
	} else if d.hasRules() {
		ex.add("rules: no rule matches %s", dom)
	} else {
		ex.add("rules: none configured")
	}

	auto := r == nil && !p.TLSRequiredNo
	// Host rules are matched per MX, but whether one with a DANE level
	// applies is known only then, so the MX RRset is looked up here.
	daneWanted := (auto && (d.o.DANE || d.o.Default == Dane || d.o.Default == DaneOnly)) ||
		(r != nil && (r.Level == Dane || r.Level == DaneOnly)) ||
		(r == nil && d.hostDANE)
	switch {
	case relay:
		ex.add("DANE and MTA-STS: not looked up for a configured relay")
	case daneWanted:
		if err := p.lookupMX(ctx, ex); err != nil {
			if f, ok := err.(*Failure); ok {
				f.Explain = ex.lines
			}
			return nil, err
		}
	case requireTLS && d.o.DNSSEC != nil:
		// Only to authenticate the MX hosts for REQUIRETLS.
		if err := p.lookupMX(ctx, ex); err != nil {
			p.mxErr = err
		}
	case d.o.DNSSEC == nil || !d.o.DANE:
		ex.add("DANE: disabled")
	default:
		ex.add("DANE: not consulted (%s)", notConsulted(r, p))
	}

	switch {
	case relay:
	case !d.o.MTASTS:
		ex.add("MTA-STS: disabled")
	case auto || requireTLS:
		p.STS, p.stsFetched = d.discoverSTS(ctx, dom, ex)
	default:
		ex.add("MTA-STS: not consulted (%s)", notConsulted(r, p))
	}

	switch {
	case r != nil:
	case p.TLSRequiredNo:
		// RFC 8689 §5 lifts what the recipient domain publishes (DANE,
		// MTA-STS), not the sending site's own default: a header any
		// internal sender can write must not lower that.
		p.Level, p.Source = d.o.Default, "default (TLS-Required: No: DANE and MTA-STS not applied, RFC 8689 §5)"
	case d.o.DANE && p.MXSecure:
		p.Level, p.Source, p.origin = Dane, "DANE (DNSSEC-validated MX; TLSA decided per MX host)", originDANE
	case p.STS != nil && p.STS.Mode == STSEnforce:
		p.Level, p.Source, p.origin = Verify, "MTA-STS enforce (id "+p.STS.ID+")", originSTS
	case p.STS != nil && p.STS.Mode == STSTesting:
		p.Level, p.Source = d.o.Default, "default (MTA-STS testing: failures are reported, not enforced)"
	default:
		p.Level, p.Source = d.o.Default, "default"
	}
	if requireTLS && !p.Level.authenticates() {
		p.Source = fmt.Sprintf("REQUIRETLS (RFC 8689), raised from %s (%s)", p.Level, p.Source)
		p.Level, p.origin = Verify, originRequireTLS
	}
	ex.add("domain level: %s from %s", p.Level, p.Source)
	p.Explain = ex.lines
	return p, nil
}

func notConsulted(r *rule, p *Policy) string {
	if r != nil {
		return "a policy rule decides"
	}
	if p.TLSRequiredNo {
		return "TLS-Required: No"
	}
	return "not needed"
}

func (d *Decider) hasRules() bool {
	for _, m := range d.rules {
		if len(m) > 0 {
			return true
		}
	}
	return false
}

func describeRule(r *rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "level %s", r.Level)
	if len(r.Names) > 0 {
		fmt.Fprintf(&b, ", names %s", strings.Join(r.names, " "))
	}
	for _, fp := range r.pins {
		fmt.Fprintf(&b, ", fingerprint %s", formatFingerprint(fp))
	}
	if r.MinVersion != 0 {
		fmt.Fprintf(&b, ", min %s", versionName(r.MinVersion))
	}
	if len(r.Ciphers) > 0 {
		names := make([]string, len(r.Ciphers))
		for i, c := range r.Ciphers {
			names[i] = cipherName(c)
		}
		fmt.Fprintf(&b, ", ciphers %s", strings.Join(names, " "))
	}
	if r.Fallback != "" {
		fmt.Fprintf(&b, ", fallback %s", r.Fallback)
	}
	return b.String()
}

// lookupMX asks the validating resolver for the MX RRset (RFC 7672 §2.2:
// DANE applies only to MX hosts from a secure MX RRset, or to the domain
// itself after a secure denial of MX records).
func (p *Policy) lookupMX(ctx context.Context, ex *explainer) error {
	rrs, ad, err := p.d.o.DNSSEC.LookupSecure(ctx, p.Domain, dns.TypeMX)
	switch {
	case err == nil && ad:
		p.secureMX = map[string]bool{}
		var hosts []string
		for _, rr := range rrs {
			if mx, ok := rr.(*dns.MX); ok && mx.Mx != "." {
				h := normalizeHost(mx.Mx)
				p.secureMX[h] = true
				hosts = append(hosts, h)
			}
		}
		slices.Sort(hosts)
		p.MXSecure = len(hosts) > 0
		ex.add("DNSSEC: MX RRset of %s is validated (AD bit): %s", p.Domain, strings.Join(hosts, " "))
	case err == nil:
		ex.add("DNSSEC: MX RRset of %s is not validated (no AD bit): DANE does not apply", p.Domain)
	case dnsutil.IsNoData(err) && ad:
		p.secureMX = map[string]bool{p.Domain: true}
		p.MXSecure = true
		ex.add("DNSSEC: %s has no MX records (validated denial): the domain is its own mail host", p.Domain)
	case dnsutil.IsPermanent(err):
		ex.add("DNSSEC: MX lookup of %s: %s: DANE does not apply", p.Domain, dnsReason(err))
	default:
		ex.add("DNSSEC: MX lookup failed: %v", err)
		return &Failure{Code: CodeDNS, Domain: p.Domain, Level: p.Level, Source: p.Source, Fallback: p.Fallback,
			Temporary: true, Err: err, origin: p.origin,
			Reason: fmt.Sprintf("DNSSEC lookup of the MX records failed, so whether DANE applies is unknown: %v", err)}
	}
	return nil
}

func normalizeHost(h string) string {
	h = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(h), "."))
	if strings.HasPrefix(h, "[") && strings.HasSuffix(h, "]") {
		h = h[1 : len(h)-1]
	}
	return h
}

func checkHost(h string) error {
	if _, err := netip.ParseAddr(h); err == nil {
		return nil
	}
	return checkName(h)
}

// dnsReason says why a lookup found nothing, briefly for definite
// answers and in full (resolver included) for failures.
func dnsReason(err error) string {
	switch {
	case dnsutil.IsNotFound(err):
		return "NXDOMAIN"
	case dnsutil.IsNoData(err):
		return "no records (NODATA)"
	}
	return err.Error()
}

type explainer struct{ lines []string }

func (e *explainer) add(format string, args ...any) {
	e.lines = append(e.lines, fmt.Sprintf(format, args...))
}
