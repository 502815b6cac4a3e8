package tlspolicy

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/miekg/dns"

	"securerelay/dnsutil"
	"securerelay/smtputil"
)

// HostPolicy is the level to enforce on one connection to one next-hop
// host, with everything needed to check it.
type HostPolicy struct {
	Domain string
	Host   string
	// Level is enforced as is: dane and dane-only here mean usable TLSA
	// records were found (TLSA holds them); a dane policy without them has
	// already become may (or encrypt when all records were unusable).
	Level        Level
	Source       string
	Names        []string // reference identities (verify, secure, DANE-TA)
	Fingerprints []string
	TLSA         []*dns.TLSA
	MinVersion   uint16
	Ciphers      []uint16
	Fallback     string
	// RequireTLS: the message has REQUIRETLS; pass it on in MAIL FROM and
	// call CheckRequireTLS with what the server advertised.
	RequireTLS bool
	// STSTesting: an MTA-STS policy in testing mode covers this host;
	// Evaluate's Outcome.Report says what enforce mode would have refused.
	STSTesting bool
	Explain    []string

	origin origin
	rule   *rule // the rule that decided, nil if none (Outcome.Rule)
	// encryptFallback: the level required (for the log) when this is the
	// opportunistic policy of mail encrypted end to end (Opportunistic).
	encryptFallback *requiredLevel
	observe         func(Outcome)
	pins            [][sha256.Size]byte
	extra           []string // rule names, added to the level's default identities
	roots           *x509.CertPool
	now             func() time.Time
	report          *Failure // a testing-mode finding known before connecting
}

// ForMX refines the policy for one MX host of the destination: a host rule
// (when no domain rule matched), DANE TLSA records at _25._tcp.<mxHost>,
// the MTA-STS mx patterns, then REQUIRETLS. The error is a *Failure when
// this host must not be used at all (MTA-STS enforce with an unlisted MX,
// dane-only without TLSA, REQUIRETLS without an authenticated MX) or when
// a lookup the decision depends on failed (Temporary); try the next MX.
func (p *Policy) ForMX(ctx context.Context, mxHost string) (*HostPolicy, error) {
	return p.forHost(ctx, mxHost, true)
}

// ForRelay is ForMX for a next hop the configuration names (a smarthost
// or a route), not one found in the domain's MX records. Rules and
// REQUIRETLS apply; DANE and MTA-STS do not, since they describe the
// destination's own MX hosts. A domain rule still applies as written, so
// that routing partner mail through a relay cannot quietly weaken it: a
// secure rule will fail on a relay whose certificate does not name the
// partner, which is the point.
func (p *Policy) ForRelay(ctx context.Context, host string) (*HostPolicy, error) {
	return p.forHost(ctx, host, false)
}

func (p *Policy) forHost(ctx context.Context, host string, viaMX bool) (*HostPolicy, error) {
	d := p.d
	host = normalizeHost(host)
	if err := checkHost(host); err != nil {
		return nil, fmt.Errorf("tls policy for %s via %q: %w", p.Domain, host, err)
	}
	ex := &explainer{lines: slices.Clone(p.Explain)}
	if viaMX {
		ex.add("MX host %s:", host)
	} else {
		ex.add("relay %s:", host)
	}
	h := &HostPolicy{Domain: p.Domain, Host: host, RequireTLS: p.RequireTLS, roots: d.o.RootCAs, now: d.o.Now, observe: d.o.Observe}

	r := p.rule
	if r == nil {
		if r = d.match(matchHost, matchHostSuffix, host); r != nil {
			ex.add("  rules: %s matches host %s: %s", r.source(), host, describeRule(r))
		} else if len(d.rules[matchHost])+len(d.rules[matchHostSuffix]) > 0 {
			ex.add("  rules: no host rule matches %s", host)
		}
	}
	var f *Failure
	switch {
	case r != nil:
		h.fromRule(r)
		if r.Level == Dane || r.Level == DaneOnly {
			_, f = p.resolveDANE(ctx, h, ex, viaMX, true)
		}
	case !viaMX:
		ex.add("  DANE and MTA-STS: not applied to a configured relay")
		f = p.defaultLevel(ctx, h, ex, viaMX)
	case p.TLSRequiredNo:
		f = p.defaultLevel(ctx, h, ex, viaMX)
		h.Source = p.Source
	default:
		decided := false
		if d.o.DANE && p.MXSecure {
			decided, f = p.resolveDANE(ctx, h, ex, true, false)
		}
		if sts := p.currentSTS(); !decided && f == nil && sts != nil && sts.Mode != STSNone {
			decided, f = p.applySTS(ctx, h, ex)
		}
		if !decided && f == nil {
			f = p.defaultLevel(ctx, h, ex, viaMX)
		}
	}
	if f == nil && p.RequireTLS {
		f = p.applyRequireTLS(h, ex, viaMX)
	}
	if f != nil {
		ex.add("  result: %s must not be used: %s", host, f.Reason)
		f.Explain = ex.lines
		return nil, f
	}
	h.finish(ex, d.o.MinVersion)
	return h, nil
}

func (h *HostPolicy) fromRule(r *rule) {
	h.Level, h.Source, h.origin, h.rule = r.Level, r.source(), originRule, r
	h.Fingerprints, h.pins, h.extra = r.Fingerprints, r.pins, r.names
	h.MinVersion, h.Ciphers, h.Fallback = r.MinVersion, r.Ciphers, r.Fallback
}

func (p *Policy) defaultLevel(ctx context.Context, h *HostPolicy, ex *explainer, viaMX bool) *Failure {
	h.Level, h.Source, h.origin = p.d.o.Default, "default", originDefault
	if p.STS != nil && p.STS.Mode == STSTesting {
		h.Source = "default (MTA-STS testing)"
	}
	if h.Level == Dane || h.Level == DaneOnly {
		_, f := p.resolveDANE(ctx, h, ex, viaMX, true)
		return f
	}
	return nil
}

// fail builds a Failure for h as it stands.
func (h *HostPolicy) fail(code Code, reason string, err error) *Failure {
	return &Failure{Code: code, Reason: reason, Domain: h.Domain, Host: h.Host, Level: h.Level,
		Source: h.Source, Fallback: h.Fallback, Err: err, origin: h.origin}
}

var errNotSecureMX = errors.New("not in the DNSSEC-validated MX RRset")

type daneState int

const (
	daneNotApplicable daneState = iota // insecure somewhere, or no records
	daneUsable
	daneUnusable // validated TLSA records, none usable
)

// resolveDANE applies DANE to h. explicit: the level dane or dane-only was
// configured (rule or default), so a host without TLSA records gets may,
// or fails for dane-only; otherwise DANE is automatic and decides nothing
// for such a host (decided false), leaving it to MTA-STS and the default.
func (p *Policy) resolveDANE(ctx context.Context, h *HostPolicy, ex *explainer, viaMX, explicit bool) (decided bool, f *Failure) {
	only := explicit && h.Level == DaneOnly
	if !explicit {
		h.Level, h.origin = Dane, originDANE
	}
	st, recs, why, err := p.tlsa(ctx, h.Host, viaMX)
	ex.add("  DANE: %s", why)
	name := "_25._tcp." + h.Host
	switch {
	case errors.Is(err, errNotSecureMX):
		return true, h.fail(CodeMXNotAllowed, why, nil)
	case err != nil:
		f = h.fail(CodeDNS, why, err)
		f.Temporary = true
		return true, f
	case st == daneUsable:
		if !explicit {
			h.Source = "DANE (TLSA at " + name + ")"
		} else {
			h.Source += "; TLSA at " + name
		}
		h.TLSA = recs
		return true, nil
	case st == daneUnusable && !only:
		// RFC 7672 §2.2: TLS is still mandatory, unauthenticated.
		h.Level = Encrypt
		if !explicit {
			h.Source = "DANE (TLSA at " + name + ", none usable: encrypt)"
		} else {
			h.Source += "; TLSA at " + name + " unusable: encrypt"
		}
		return true, nil
	case only:
		return true, h.fail(CodeNoTLSA, "dane-only: "+why, nil)
	case explicit:
		h.Level = May
		h.Source += "; no usable DANE: may"
		return true, nil
	}
	return false, nil
}

// tlsa finds the TLSA records for an MX host as RFC 7672 §2.2 asks: only
// for a host from a validated MX RRset, whose address records are
// validated too, and only records the resolver validated. The TLSA base
// domain is the MX host name as listed; CNAME-expanded bases (§2.2.3) are
// not tried.
func (p *Policy) tlsa(ctx context.Context, host string, viaMX bool) (daneState, []*dns.TLSA, string, error) {
	if !viaMX {
		return daneNotApplicable, nil, "not used for configured relays", nil
	}
	if !p.MXSecure {
		return daneNotApplicable, nil, "the MX RRset of " + p.Domain + " is not DNSSEC-validated", nil
	}
	if !p.secureMX[host] {
		// The validated MX RRset does not name this host, so whoever
		// named it (an unvalidated lookup, an attacker) is wrong.
		return 0, nil, host + " is not in the DNSSEC-validated MX RRset of " + p.Domain, errNotSecureMX
	}
	sec := p.d.o.DNSSEC
	addrSecure := false
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		_, ad, err := sec.LookupSecure(ctx, host, qt)
		if err != nil && !dnsutil.IsPermanent(err) {
			return 0, nil, fmt.Sprintf("address lookup of %s failed: %v", host, err), err
		}
		if ad {
			addrSecure = true
			break
		}
	}
	if !addrSecure {
		return daneNotApplicable, nil, "address records of " + host + " are not DNSSEC-validated", nil
	}
	name := "_25._tcp." + host
	all, ad, err := sec.LookupTLSA(ctx, name)
	switch {
	case err != nil && dnsutil.IsPermanent(err):
		v := "denial not validated"
		if ad {
			v = "validated denial"
		}
		return daneNotApplicable, nil, fmt.Sprintf("no TLSA records at %s (%s, %s)", name, dnsReason(err), v), nil
	case err != nil:
		return 0, nil, fmt.Sprintf("TLSA lookup at %s failed: %v", name, err), err
	case !ad:
		return daneNotApplicable, nil, fmt.Sprintf("TLSA records at %s are not DNSSEC-validated (no AD bit): ignored", name), nil
	}
	usable := usableTLSA(all)
	if len(usable) == 0 {
		return daneUnusable, nil, fmt.Sprintf("%d validated TLSA records at %s, none usable (RFC 7672 §3.1)", len(all), name), nil
	}
	desc := make([]string, len(usable))
	for i, r := range usable {
		desc[i] = fmt.Sprintf("%d %d %d", r.Usage, r.Selector, r.MatchingType)
	}
	return daneUsable, usable, fmt.Sprintf("%d usable validated TLSA records at %s (%s)", len(usable), name, strings.Join(desc, ", ")), nil
}

// applySTS applies an MTA-STS policy in enforce or testing mode to h. An
// MX host that the policy does not list makes the policy be fetched again
// once (RFC 8461 §5.1: the domain may have moved its MX hosts since), and
// then, in enforce mode, makes the host unusable.
func (p *Policy) applySTS(ctx context.Context, h *HostPolicy, ex *explainer) (decided bool, f *Failure) {
	sts := p.currentSTS()
	if !sts.Match(h.Host) {
		if fresh := p.refreshSTS(ctx, ex); fresh != nil {
			sts = fresh
		}
	}
	src := fmt.Sprintf("MTA-STS %s (id %s)", sts.Mode, sts.ID)
	if !sts.Match(h.Host) {
		reason := fmt.Sprintf("MX host %s matches none of the MTA-STS mx patterns (%s)", h.Host, strings.Join(sts.MX, " "))
		if sts.Mode == STSEnforce {
			h.Level, h.Source, h.origin = Verify, src, originSTS
			ex.add("  MTA-STS: %s: this MX must not be used", reason)
			return true, h.fail(CodeMXNotAllowed, reason, nil)
		}
		ex.add("  MTA-STS testing: %s; reported, not enforced", reason)
		h.STSTesting = true
		h.report = &Failure{Code: CodeMXNotAllowed, Reason: reason, Domain: h.Domain, Host: h.Host,
			Level: Verify, Source: src, origin: originSTS}
		return false, nil
	}
	if sts.Mode == STSTesting {
		ex.add("  MTA-STS testing: %s is listed; certificate failures are reported, not enforced", h.Host)
		h.STSTesting = true
		return false, nil
	}
	ex.add("  MTA-STS enforce: %s is listed; verify with TLS 1.2 or later (RFC 8461 §4)", h.Host)
	h.Level, h.Source, h.origin = Verify, src, originSTS
	return true, nil
}

// currentSTS is p.STS, or the policy refreshSTS fetched since; p.STS
// itself stays as Decide left it, since callers may read it.
func (p *Policy) currentSTS() *STSPolicy {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stsNew != nil {
		return p.stsNew
	}
	return p.STS
}

// refreshSTS fetches the domain's policy again, at most once per Policy
// and not when Decide has just fetched it, and returns the policy so
// fetched (by this call or an earlier one), or nil.
func (p *Policy) refreshSTS(ctx context.Context, ex *explainer) *STSPolicy {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stsFetched {
		return p.stsNew
	}
	p.stsFetched = true
	np, err := p.d.fetchShared(ctx, p.Domain)
	if err != nil {
		ex.add("  MTA-STS: MX not listed; fetching the policy again failed: %v", err)
		return nil
	}
	p.d.stamp(ctx, p.Domain, np, p.STS.ID, p.d.o.Now())
	ex.add("  MTA-STS: MX not listed; fetched the policy again: %s", np.summary())
	p.stsNew = np
	return np
}

// applyRequireTLS enforces RFC 8689 §4.2.1: the server must be
// authenticated (PKIX with the MX name, or DANE), and an MX name only
// counts when DNSSEC or MTA-STS vouches for it. secure and fingerprint
// authenticate the server without trusting the MX answer.
func (p *Policy) applyRequireTLS(h *HostPolicy, ex *explainer, viaMX bool) *Failure {
	switch h.Level {
	case Secure, Fingerprint, Dane, DaneOnly:
		ex.add("  REQUIRETLS: level %s authenticates the server", h.Level)
		return nil
	}
	if h.Level != Verify {
		h.Source = fmt.Sprintf("REQUIRETLS (RFC 8689), raised from %s (%s)", h.Level, h.Source)
		h.Level, h.origin = Verify, originRequireTLS
		h.MinVersion = max(h.MinVersion, tls.VersionTLS12)
		h.Fingerprints, h.pins = nil, nil
		ex.add("  REQUIRETLS: raised to verify")
	}
	var how string
	sts := p.currentSTS()
	switch {
	case !viaMX:
		how = "a relay named in the configuration"
	case p.secureMX[h.Host]:
		how = "from a DNSSEC-validated MX RRset"
	case sts != nil && sts.Mode != STSNone && sts.Match(h.Host):
		how = "listed in the MTA-STS policy"
	default:
		reason := fmt.Sprintf("REQUIRETLS needs an authenticated MX host, and %s is neither from a DNSSEC-validated MX RRset nor listed in an MTA-STS policy", h.Host)
		f := h.fail(CodeMXNotAuthenticated, reason, p.mxErr)
		f.Temporary = p.mxErr != nil
		return f
	}
	ex.add("  REQUIRETLS: MX host authenticated: %s", how)
	return nil
}

// finish fills the defaults that depend on the final level.
func (h *HostPolicy) finish(ex *explainer, floor uint16) {
	if h.MinVersion == 0 {
		h.MinVersion = tls.VersionTLS12
		if h.Level == May || h.Level == None {
			h.MinVersion = tls.VersionTLS10
		}
	}
	if h.RequiresTLS() {
		h.MinVersion = max(h.MinVersion, floor)
	}
	switch h.Level {
	case Verify:
		h.Names = append([]string{h.Host}, h.extra...)
	case Secure:
		h.Names = append([]string{h.Domain, "." + h.Domain}, h.extra...)
	case Dane, DaneOnly:
		h.Names = append([]string{h.Host, h.Domain}, h.extra...)
	}
	h.Names = slices.Compact(h.Names)
	var b strings.Builder
	fmt.Fprintf(&b, "  result: level %s from %s", h.Level, h.Source)
	if h.Level != None {
		fmt.Fprintf(&b, ", min %s", versionName(h.MinVersion))
	}
	if len(h.Names) > 0 {
		fmt.Fprintf(&b, ", names %s", strings.Join(h.Names, " "))
	}
	if h.RequireTLS {
		b.WriteString(", REQUIRETLS passed on")
	}
	ex.add("%s", b.String())
	h.Explain = ex.lines
}

// Authenticates reports whether h's level proves who the server is
// (chain and name, TLSA or pin), not just that the session is encrypted.
func (h *HostPolicy) Authenticates() bool { return h.Level.authenticates() }

// VerifyHost checks that a finished handshake proves the server to be
// h.Host, whatever level h enforces: what credentials for that host need,
// since secure checks the recipient domain's name and may or encrypt
// nothing at all. Proof is a chain to the roots verify uses (the system's
// and ca_file) and a certificate that names h.Host, or, when h is a
// fingerprint level, a pinned certificate. cs is nil in clear text. A
// Failure (at level verify) says what was missing; its Source is empty,
// for the caller to phrase.
func (h *HostPolicy) VerifyHost(cs *tls.ConnectionState) *Failure {
	fail := func(code Code, reason string, err error) *Failure {
		return &Failure{Code: code, Reason: reason, Domain: h.Domain, Host: h.Host, Level: Verify, Err: err, origin: h.origin}
	}
	if cs == nil || !cs.HandshakeComplete {
		return fail(CodeNoSTARTTLS, "the session is not encrypted", nil)
	}
	if h.Level == Fingerprint && pinCheck(cs.PeerCertificates, h.pins).ok() {
		return nil
	}
	if res := pkixCheck(cs.PeerCertificates, []string{h.Host}, h.roots, h.now(), nil); !res.ok() {
		return fail(res.Code, res.Reason, res.Err)
	}
	return nil
}

type requiredLevel struct {
	level  Level
	source string
}

// Opportunistic is the host policy for a message that the relay has
// encrypted end to end (OpenPGP) because the level required for host
// could not be had, or because a rule says the partner's mail is always
// encrypted: the message no longer depends on the session for its
// confidentiality, so the best session the host offers is used (STARTTLS
// when offered, any certificate; clear text otherwise), as at level may.
// Its Outcome still names the level required and where it came from,
// and says fallback=encrypt. The pool never hands such a session to a
// transaction in clear text: its level (may) fails every stricter check.
func (p *Policy) Opportunistic(host string) *HostPolicy {
	host = normalizeHost(host)
	h := &HostPolicy{Domain: p.Domain, Host: host, Level: May, Source: "fallback=encrypt", origin: p.origin,
		rule: p.rule, observe: p.d.o.Observe,
		roots: p.d.o.RootCAs, now: p.d.o.Now, encryptFallback: &requiredLevel{p.Level, p.Source}}
	ex := &explainer{lines: slices.Clone(p.Explain)}
	ex.add("host %s: the message is encrypted end to end (OpenPGP): best session offered, as may", host)
	h.finish(ex, 0)
	return h
}

// EncryptFallback reports whether h is an Opportunistic policy.
func (h *HostPolicy) EncryptFallback() bool { return h.encryptFallback != nil }

// UseSTARTTLS reports whether to try STARTTLS at all (not for none).
func (h *HostPolicy) UseSTARTTLS() bool { return h.Level != None }

// RequiresTLS reports whether a clear-text session, or a failed handshake,
// fails the level. When false, a failed handshake may be retried in clear.
func (h *HostPolicy) RequiresTLS() bool { return h.Level >= Encrypt }

// TLSConfig returns the configuration for STARTTLS to h.Host, based on a
// clone of base (which may be nil; its RootCAs and verification hooks are
// replaced). It returns nil for level none. Verification happens in
// VerifyConnection for every level that checks identity, because DANE and
// pinning have no PKIX counterpart, so a failed check aborts the
// handshake and the error wraps a *Failure; Check reports it.
func (h *HostPolicy) TLSConfig(base *tls.Config) *tls.Config {
	if h.Level == None {
		return nil
	}
	var c *tls.Config
	if base != nil {
		c = base.Clone()
	} else {
		c = &tls.Config{}
	}
	c.ServerName = h.Host
	c.MinVersion = h.MinVersion
	if len(h.Ciphers) > 0 {
		c.CipherSuites = slices.Clone(h.Ciphers)
	}
	c.InsecureSkipVerify = true
	c.VerifyPeerCertificate = nil
	c.RootCAs = nil
	c.VerifyConnection = nil
	if h.Level > Encrypt {
		c.VerifyConnection = func(cs tls.ConnectionState) error {
			if res := h.verifyPeer(&cs); !res.ok() {
				return h.fail(res.Code, res.Reason, res.Err)
			}
			return nil
		}
	}
	return c
}

// verifyPeer is the identity check of h.Level on a handshake's result.
func (h *HostPolicy) verifyPeer(cs *tls.ConnectionState) check {
	switch h.Level {
	case Verify, Secure:
		return pkixCheck(cs.PeerCertificates, h.Names, h.roots, h.now(), nil)
	case Dane, DaneOnly:
		return daneCheck(cs.PeerCertificates, h.TLSA, h.Names, h.now())
	case Fingerprint:
		return pinCheck(cs.PeerCertificates, h.pins)
	}
	return check{}
}

// Outcome is what happened on one connection, for the log and the queue
// entry: the level required and where it came from, what the session
// achieved, and why it fell short.
type Outcome struct {
	Host     string
	Required Level
	Source   string
	// Origin says what kind of source decided Required: "rule",
	// "dane", "mta-sts", "requiretls" or "default"; Rule is the match
	// of the admin's policy rule that decided, "" when none did.
	Origin, Rule string
	// Achieved: None for clear text; Encrypt when the server was not
	// authenticated; Verify when its certificate chain and MX name are
	// valid; else the authenticated level required (dane, secure, …).
	Achieved Level
	TLS      string   // "TLS1.3 TLS_AES_128_GCM_SHA256", "" in clear
	Failure  *Failure // nil when the level is met
	// Report: MTA-STS testing mode and enforce would have refused this
	// host or session. Log it (and TLSRPT, later); delivery goes on.
	Report *Failure
	// EncryptFallback: the message is encrypted end to end and sent over
	// what the host offers, whatever Required says (Opportunistic).
	EncryptFallback bool
}

func (o Outcome) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "tls required=%s (%s) achieved=%s", o.Required, o.Source, o.Achieved)
	if o.TLS != "" {
		fmt.Fprintf(&b, " %s", o.TLS)
	}
	if o.Failure != nil {
		fmt.Fprintf(&b, " failure=%s: %s", o.Failure.Code, o.Failure.Reason)
	}
	if o.EncryptFallback {
		b.WriteString(" fallback=encrypt")
	}
	if o.Report != nil {
		fmt.Fprintf(&b, " mta-sts-testing-report=%s: %s", o.Report.Code, o.Report.Reason)
	}
	return b.String()
}

// Check inspects a session after the STARTTLS step: nil when the level is
// met, else a *Failure, and then not one byte of the message may be sent.
// starttlsOffered: the server's EHLO listed STARTTLS; cs: the state of the
// finished handshake, nil when there was none; handshakeErr: its error.
// For none and may, clear text meets the level (after a failed handshake
// the caller reconnects without STARTTLS).
func (h *HostPolicy) Check(starttlsOffered bool, cs *tls.ConnectionState, handshakeErr error) error {
	if f := h.Evaluate(starttlsOffered, cs, handshakeErr).Failure; f != nil {
		return f
	}
	return nil
}

// Evaluate is Check with the full Outcome.
func (h *HostPolicy) Evaluate(starttlsOffered bool, cs *tls.ConnectionState, handshakeErr error) Outcome {
	o := Outcome{Host: h.Host, Required: h.Level, Source: h.Source, Achieved: None, Origin: h.origin.String()}
	if h.rule != nil {
		o.Rule = h.rule.Match
	}
	if h.observe != nil {
		defer func() { h.observe(o) }()
	}
	if f := h.encryptFallback; f != nil {
		o.Required, o.Source, o.EncryptFallback = f.level, f.source, true
	}
	if handshakeErr == nil && cs != nil && cs.HandshakeComplete {
		o.TLS = smtputil.TLSVersionName(cs.Version) + " " + tls.CipherSuiteName(cs.CipherSuite)
	}
	o.Failure = h.session(starttlsOffered, cs, handshakeErr)
	switch {
	case o.TLS == "":
	case o.Failure == nil && h.Level > Encrypt:
		o.Achieved = h.Level
	case pkixCheck(cs.PeerCertificates, []string{h.Host}, h.roots, h.now(), nil).ok():
		o.Achieved = Verify
	default:
		o.Achieved = Encrypt
	}
	if h.STSTesting {
		o.Report = h.report
		if o.Report == nil {
			shadow := *h
			shadow.Level, shadow.Source, shadow.origin = Verify, "MTA-STS testing", originSTS
			shadow.Names, shadow.MinVersion = []string{h.Host}, max(h.MinVersion, tls.VersionTLS12)
			o.Report = shadow.session(starttlsOffered, cs, handshakeErr)
		}
	}
	return o
}

// session is the check itself.
func (h *HostPolicy) session(starttlsOffered bool, cs *tls.ConnectionState, handshakeErr error) *Failure {
	if !h.RequiresTLS() {
		return nil
	}
	switch {
	case handshakeErr != nil:
		var f *Failure
		if errors.As(handshakeErr, &f) {
			return f
		}
		if strings.Contains(handshakeErr.Error(), "protocol version") {
			return h.fail(CodeVersion, fmt.Sprintf("no TLS version in common: the minimum is %s (%v)", versionName(h.MinVersion), handshakeErr), handshakeErr)
		}
		return h.fail(CodeHandshake, "handshake failed: "+handshakeErr.Error(), handshakeErr)
	case !starttlsOffered && cs == nil:
		return h.fail(CodeNoSTARTTLS, "no STARTTLS offered", nil)
	case cs == nil || !cs.HandshakeComplete:
		return h.fail(CodeNoSTARTTLS, "STARTTLS offered but not used", nil)
	case cs.Version < h.MinVersion:
		return h.fail(CodeVersion, fmt.Sprintf("%s below minimum %s", versionName(cs.Version), versionName(h.MinVersion)), nil)
	case len(h.Ciphers) > 0 && cs.Version <= tls.VersionTLS12 && !slices.Contains(h.Ciphers, cs.CipherSuite):
		return h.fail(CodeCipher, fmt.Sprintf("cipher suite %s not allowed", tls.CipherSuiteName(cs.CipherSuite)), nil)
	}
	if res := h.verifyPeer(cs); !res.ok() {
		return h.fail(res.Code, res.Reason, res.Err)
	}
	return nil
}

// CheckRequireTLS is for messages with REQUIRETLS (h.RequireTLS), after
// the EHLO that follows STARTTLS: the server must advertise REQUIRETLS
// (RFC 8689 §4.2.1), or the message must not be sent to it. It returns
// nil when h.RequireTLS is false.
func (h *HostPolicy) CheckRequireTLS(advertised bool) error {
	if !h.RequireTLS || advertised {
		return nil
	}
	f := h.fail(CodeNoRequireTLS, "the server does not advertise REQUIRETLS", nil)
	f.origin = originRequireTLS
	return f
}
