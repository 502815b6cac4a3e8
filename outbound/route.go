package outbound

import (
	"fmt"
	"strings"

	"securerelay/smtputil"
)

// Target is where a recipient's mail goes next.
type Target struct {
	// Kind is "smtp", "lmtp", "maildir" or "mx".
	Kind string
	// Addr is host:port for smtp/lmtp, the directory for maildir, the
	// recipient domain for mx.
	Addr string
	// Auth, for smarthosts that want it.
	Auth *RouteAuth
}

// Key identifies a destination for connection reuse and concurrency limits.
// The AUTH user is part of it: a pooled session is already authenticated,
// so two routes to one smarthost with different accounts must not share.
func (t Target) Key() string {
	if t.Auth != nil {
		return t.Kind + ":" + t.Auth.Username + "@" + t.Addr
	}
	return t.Kind + ":" + t.Addr
}

// RouteAuth are credentials for a next hop.
type RouteAuth struct {
	Username, Password string
	AllowInsecure      bool
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
		return Target{Kind: "smtp", Addr: strings.TrimSuffix(strings.TrimPrefix(s, "smtp://"), "/")}, nil
	case strings.HasPrefix(s, "lmtp://"):
		return Target{Kind: "lmtp", Addr: strings.TrimSuffix(strings.TrimPrefix(s, "lmtp://"), "/")}, nil
	case strings.HasPrefix(s, "maildir:"):
		return Target{Kind: "maildir", Addr: strings.TrimPrefix(s, "maildir:")}, nil
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
	return Target{Kind: "mx", Addr: domain}
}
