package outbound

// Connecting to a destination: the fixed next hop or the MX hosts in
// order (those that failed the TLS policy recently last), each address
// in turn, and a session opened and checked against the host policy.

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"time"

	"securerelay/dnsutil"
	"securerelay/queue"
	"securerelay/tlspolicy"
)

// connect opens a session to t: the fixed next hop, or the MX hosts of the
// domain in preference order (RFC 5321 §5.1), each of their addresses in
// turn, moving on after a connection failure, a 4xx greeting or a session
// that does not meet the TLS policy. MX hosts that failed the policy
// recently go last, so that a retry starts with the others.
func (e *Engine) connect(ctx context.Context, t Target, pol *tlspolicy.Policy, key string, relaxed bool) (p *pooled, fail *queue.Result, policyFailed bool) {
	var hosts []string
	port := e.o.MXPort
	// The MX pruning below resolves each MX host; the connection attempts
	// use the same answers rather than asking DNS twice.
	resolved := map[string][]netip.Addr{}
	lookup := func(h string) ([]netip.Addr, error) {
		if a, ok := resolved[h]; ok {
			return a, nil
		}
		a, err := NextHopAddrs(ctx, e.o.Resolver, h, t.Kind != KindMX)
		if err == nil {
			resolved[h] = a
		}
		return a, err
	}
	switch t.Kind {
	case KindSMTP, KindLMTP:
		h, p, err := net.SplitHostPort(t.Addr)
		if err != nil {
			return nil, &queue.Result{Status: queue.TempFail, Code: "4.3.5", Reply: "bad next hop " + t.Addr + ": " + err.Error()}, false
		}
		hosts, port = []string{h}, p
	case KindMX:
		var self func(string) bool
		if e.o.Self != nil {
			self = func(h string) bool {
				a, err := lookup(h)
				return err == nil && slices.ContainsFunc(a, e.o.Self)
			}
		}
		mx, err := dnsutil.MXTargetsExcept(ctx, e.o.Resolver, t.Addr, self)
		if err != nil {
			return nil, dnsFailure(t.Addr, err), false
		}
		hosts = e.tlsOrder(t.Addr, mx)
	}
	var lastErr error
	var lastTLS *tlsPolicyError
	lastRelay := ""
	// unreached: some host or address failed for another reason than the
	// TLS policy (down, refused, 4xx greeting); it might meet the level
	// next time, so nothing is returned to the sender yet.
	unreached := false
	var lastCred *credentialsError
	lastCredRelay := ""
	for _, h := range hosts {
		hp, err := forHost(ctx, pol, t, h, relaxed)
		if err != nil {
			// This host may not be used at all (MTA-STS enforce and not
			// listed, dane-only without TLSA, …): try the next one.
			te := &tlsPolicyError{outcome: "tls policy refused host " + h + ": " + err.Error()}
			if errors.As(err, &te.f) {
				te.outcome = tlspolicy.Outcome{Host: h, Required: te.f.Level, Source: te.f.Source, Failure: te.f}.String()
				unreached = unreached || te.f.Temporary
			} else {
				unreached = true
			}
			lastErr, lastRelay, lastTLS = te, h, te
			e.o.Logger.Info("TLS policy: not using this next hop", "domain", t.Addr, "host", h, "error", err)
			e.noteTLSFailure(t, h)
			continue
		}
		addrs, err := lookup(h)
		if err != nil {
			lastErr, lastRelay, unreached = err, h, true
			continue
		}
		for _, a := range addrs {
			relay := fmt.Sprintf("%s[%s]:%s", h, a, port)
			p, err := e.open(ctx, t, h, net.JoinHostPort(a.String(), port), relay, hp)
			if err == nil {
				p.key = key
				return p, nil, false
			}
			lastErr, lastRelay = err, relay
			te, ce := (*tlsPolicyError)(nil), (*credentialsError)(nil)
			switch {
			case errors.As(err, &te):
				lastTLS = te
				e.o.Logger.Warn("TLS policy not met, trying the next address or MX", "domain", t.Addr, "relay", relay, "tls_policy", te.outcome)
				e.noteTLSFailure(t, h)
			case errors.As(err, &ce):
				// The route's own requirement, not the destination's: the
				// TLS policy was met, so the host is not marked.
				lastCred, lastCredRelay = ce, relay
				e.o.Logger.Warn("route credentials not sent, trying the next address", "domain", t.Addr, "relay", relay,
					"user", t.Auth.Username, "reason", ce.reason, "tls_policy", ce.outcome)
			default:
				unreached = true
			}
			if ctx.Err() != nil {
				break
			}
		}
	}
	if lastErr == nil {
		lastErr = errors.New("no address to connect to")
	}
	r := &queue.Result{Status: queue.TempFail, Code: "4.4.1", Relay: lastRelay,
		Reply: fmt.Sprintf("could not connect to any next hop for %s: %v", t.Addr, lastErr)}
	if lastTLS != nil {
		// The TLS failure is the one to report even when a later host
		// was simply unreachable: it is what an admin must act on.
		r.TLSPolicy = lastTLS.outcome
		r.Code = "4.7.10"
		if f := lastTLS.f; f != nil {
			r.Code = f.Status(false)
			r.Explanation = f.UserText()
			// RFC 8689 section 4.2.1: a REQUIRETLS message that no next
			// hop can take as required goes back to its sender.
			if (f.Fallback == tlspolicy.FallbackBounce || pol.RequireTLS) && !f.Temporary && !unreached {
				r.Status, r.Code = queue.PermFail, f.Status(true)
			}
		}
		if lastErr != error(lastTLS) {
			r.Reply = fmt.Sprintf("could not deliver to %s: %v (last error: %v)", t.Addr, lastTLS, lastErr)
		}
		return nil, r, true
	}
	if lastCred != nil {
		// As for the TLS policy: what the admin must act on, even when a
		// later address was simply unreachable.
		r.Code, r.TLSPolicy = lastCred.code, lastCred.outcome
		r.Reply = fmt.Sprintf("%s: %v", lastCredRelay, lastCred)
		if lastErr != error(lastCred) {
			r.Reply += fmt.Sprintf(" (last error: %v)", lastErr)
		}
		return nil, r, false
	}
	if rp := toReply(lastErr, "greeting"); rp != nil {
		r.Code = rp.enh
		r.Reply = fmt.Sprintf("%s said: %s", lastRelay, rp.Error())
		if rp.permanent() {
			// Still temporary: a 5xx greeting or EHLO reply refuses the
			// session, not this message (RFC 5321 §3.1); keep trying until
			// max_age, and keep the code consistent with that.
			r.Code = "4" + rp.enh[1:]
		}
	}
	return nil, r, false
}

// tlsPolicyError: a next hop did not meet the TLS policy (or may not be
// used under it); nothing was sent.
type tlsPolicyError struct {
	f       *tlspolicy.Failure
	outcome string
}

func (e *tlsPolicyError) Error() string {
	if e.f != nil {
		return e.f.Error() + "; not sent"
	}
	return e.outcome + "; not sent"
}

// tlsOrder moves MX hosts that recently failed the TLS policy to the end,
// keeping the preference order otherwise.
func (e *Engine) tlsOrder(domain string, hosts []string) []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.tlsFailed) == 0 {
		return hosts
	}
	var good, failed []string
	for _, h := range hosts {
		if at, ok := e.tlsFailed[domain+" "+h]; ok && time.Since(at) < tlsFailMemory {
			failed = append(failed, h)
		} else {
			good = append(good, h)
		}
	}
	return append(good, failed...)
}

// NextHopAddrs resolves a next hop as delivery connects to it: a literal
// address as is, else through r. "localhost" is taken literally only for
// a next hop the admin configured: an MX record naming localhost is a
// hostile or broken domain's, and must not make us connect to ourselves.
// tls-policy probe calls it too, so that it connects where delivery would.
func NextHopAddrs(ctx context.Context, r dnsutil.Resolver, host string, configured bool) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	if host == "localhost" && configured {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	return r.LookupHost(ctx, host)
}

// open connects to one address of host and hands out the session once
// establish has secured it and checked it against hp (and the route's
// credentials, when it has any), SMTP and LMTP alike.
func (e *Engine) open(ctx context.Context, t Target, host, addr, relay string, hp *tlspolicy.HostPolicy) (*pooled, error) {
	starttls, fallback := hp.UseSTARTTLS(), false
	for {
		dctx, cancel := context.WithTimeout(ctx, e.o.ConnectTimeout)
		conn, err := e.o.Dial(dctx, "tcp", addr)
		cancel()
		if err != nil {
			return nil, err
		}
		var cl client
		if t.Kind == KindLMTP {
			cl, err = newLMTPClient(conn, e.o.Helo, e.o.CommandTimeout)
		} else {
			cl, err = newSMTPClient(conn, host, e.o.Helo, e.o.CommandTimeout)
		}
		if err != nil {
			return nil, err
		}
		var tlsCfg *tls.Config
		if starttls {
			tlsCfg = hp.TLSConfig(e.o.TLSBase)
		}
		st, outcome, tlsFailed, err := establish(cl, hp, tlsCfg, t.Auth)
		if tlsFailed && starttls && !hp.RequiresTLS() {
			e.o.Logger.Info("STARTTLS failed, retrying in clear (opportunistic TLS)", "relay", relay, "error", err)
			starttls, fallback = false, true
			continue
		}
		if err != nil {
			return nil, err
		}
		st.clearByFallback = fallback
		return &pooled{cl: cl, relay: relay, host: host, tls: st, hp: hp, outcome: outcome}, nil
	}
}

func dnsFailure(domain string, err error) *queue.Result {
	switch {
	case dnsutil.IsMXLoop(err):
		return &queue.Result{Status: queue.PermFail, Code: "5.4.6",
			Reply: fmt.Sprintf("mail for %s loops back to this relay (%v); fix the domain's MX records, or list %s under domains if this relay should take its mail", domain, err, domain)}
	case dnsutil.IsNullMX(err):
		return &queue.Result{Status: queue.PermFail, Code: "5.1.10",
			Reply: fmt.Sprintf("domain %s does not accept mail (null MX, RFC 7505)", domain)}
	case dnsutil.IsPermanent(err):
		return &queue.Result{Status: queue.PermFail, Code: "5.1.2",
			Reply: fmt.Sprintf("domain %s has no mail server (no MX and no A/AAAA record): %v", domain, err)}
	}
	return &queue.Result{Status: queue.TempFail, Code: "4.4.3",
		Reply: fmt.Sprintf("DNS lookup for %s failed temporarily: %v", domain, err)}
}
