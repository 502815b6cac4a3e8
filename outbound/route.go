package outbound

import (
	"fmt"
	"strings"

	"securerelay/smtputil"
	"securerelay/tlspolicy"
)

// Target is where a recipient's mail goes next.
type Target struct {
	Kind Kind
	// Addr is host:port for smtp/lmtp, the directory for maildir, the
	// recipient domain for mx.
	Addr string
	// Auth, for smarthosts that want it.
	Auth *RouteAuth
}

// Kind is how a Target takes mail; the zero Kind is none (a Target
// that ParseTarget refused).
type Kind uint8

const (
	// KindMX: the recipient domain's MX hosts (Addr is the domain).
	KindMX Kind = iota + 1
	// KindSMTP: a configured next hop, smtp://host:port.
	KindSMTP
	// KindLMTP: a configured next hop, lmtp://host:port.
	KindLMTP
	// KindMaildir: a local directory, maildir:/path.
	KindMaildir
)

// String is the kind as a route spells it (and as Key and logs show
// it): "mx", "smtp", "lmtp" or "maildir".
func (k Kind) String() string {
	switch k {
	case KindSMTP:
		return "smtp"
	case KindLMTP:
		return "lmtp"
	case KindMaildir:
		return "maildir"
	case KindMX:
		return "mx"
	}
	return ""
}

// Key identifies a destination for connection reuse and concurrency limits.
// The AUTH user is part of it: a pooled session is already authenticated,
// so two routes to one smarthost with different accounts must not share.
func (t Target) Key() string {
	if t.Auth != nil {
		return t.Kind.String() + ":" + t.Auth.Username + "@" + t.Addr
	}
	return t.Kind.String() + ":" + t.Addr
}

// configured reports a next hop the configuration names (smtp://,
// lmtp://, and whatever kind comes): one that takes mail for domains other
// than its own, so a rule naming a recipient domain must be applied to it
// explicitly. Not for MX delivery (decided per recipient domain anyway)
// or maildir (local: nothing crosses a network).
func (t Target) configured() bool { return t.Kind != KindMX && t.Kind != KindMaildir }

// RouteAuth are credentials for a next hop.
type RouteAuth struct {
	Username, Password string
	// TLS is what a session must prove before the credentials go out:
	// Verify (any other value, zero included, means it too) is a
	// certificate that chains to a trusted root and names the next-hop
	// host; Encrypt accepts any TLS session, which whoever can redirect
	// the connection can offer.
	TLS tlspolicy.Level
	// AllowInsecure lets them go out in clear text, hence over any session.
	AllowInsecure bool
}

// minTLS is the least a session must prove for the credentials: None,
// Encrypt or Verify.
func (a *RouteAuth) minTLS() tlspolicy.Level {
	switch {
	case a.AllowInsecure:
		return tlspolicy.None
	case a.TLS == tlspolicy.Encrypt:
		return tlspolicy.Encrypt
	}
	return tlspolicy.Verify
}

// Route is one transport_maps-like entry: Match is "*", "example.org" or
// ".example.org" (subdomains only, as in Postfix's parent_domain_matches…
// being off).
type Route struct {
	Match  string
	Target Target
}

// Router picks targets: our own domains first (deliver_to), then routes in
// order, then MX.
type Router struct {
	Local  map[string]Target
	Routes []Route
}

// ParseTarget turns a deliver_to/next_hop string into a Target.
func ParseTarget(s string) (Target, error) {
	switch {
	case strings.HasPrefix(s, "smtp://"):
		return Target{Kind: KindSMTP, Addr: strings.TrimSuffix(strings.TrimPrefix(s, "smtp://"), "/")}, nil
	case strings.HasPrefix(s, "lmtp://"):
		return Target{Kind: KindLMTP, Addr: strings.TrimSuffix(strings.TrimPrefix(s, "lmtp://"), "/")}, nil
	case strings.HasPrefix(s, "maildir:"):
		return Target{Kind: KindMaildir, Addr: strings.TrimPrefix(s, "maildir:")}, nil
	}
	return Target{}, fmt.Errorf("unknown target %q (want smtp://host:port, lmtp://host:port or maildir:PATH)", s)
}

// Route returns the target for a recipient domain.
func (r *Router) Route(domain string) Target {
	if t, ok := r.Local[domain]; ok {
		return t
	}
	for _, rt := range r.Routes {
		if rt.Match == "*" || smtputil.MatchDomain(rt.Match, domain) {
			return rt.Target
		}
	}
	return Target{Kind: KindMX, Addr: domain}
}
