package outbound_test

import (
	"crypto/tls"
	"crypto/x509"
	"net/netip"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/tlspolicy"
)

// corpSecure is a TLS policy with one rule, .corp.test at secure, that
// trusts roots.
func corpSecure(t *testing.T, roots *x509.CertPool) *tlspolicy.Decider {
	t.Helper()
	d, err := tlspolicy.New(tlspolicy.Options{RootCAs: roots,
		Rules: []tlspolicy.Rule{{Match: ".corp.test", Level: tlspolicy.Secure}}})
	if err != nil {
		t.Fatal(err)
	}
	return d
}

// Issue 11, finding 1: one gateway for .corp.test, whose certificate names
// only a.corp.test, under a secure rule. A session that met the rule for
// a.corp.test must not carry mail for b.corp.test, neither in the same
// message nor in the next one while the session is pooled: b's recipients
// are deferred (4.7.5) and never reach the gateway.
func TestPooledSessionMeetsEachTransactionsPolicy(t *testing.T) {
	setup := func(t *testing.T) (*hop, *outbound.Engine) {
		hopTLS, roots := trustedTLS(t, "a.corp.test")
		h := newHop(t, hopOptions{TLS: hopTLS})
		r := &outbound.Router{Routes: []outbound.Route{{Match: ".corp.test", Target: target(t, "smtp://"+h.addr)}}}
		e := engine(t, r, func(o *outbound.EngineOptions) { o.TLS, o.IdleTimeout = corpSecure(t, roots), time.Minute })
		return h, e
	}
	deferred := func(t *testing.T, r queue.Result) {
		t.Helper()
		check(t, "b.corp.test", r, queue.TempFail, "4.7.5")
		if !strings.Contains(r.TLSPolicy, "required=secure") || !strings.Contains(r.TLSPolicy, "failure=name-mismatch") {
			t.Errorf("b.corp.test: tls_policy %q, want the secure rule failed on the name", r.TLSPolicy)
		}
	}
	t.Run("one message", func(t *testing.T) {
		h, e := setup(t)
		res := deliver(t, e, newSpool(t).put("s@ours.test", []string{"x@a.corp.test", "z@b.corp.test"}, message))
		check(t, "a.corp.test", res[0], queue.Delivered, "2.0.0")
		if !strings.Contains(res[0].TLSPolicy, "achieved=secure") {
			t.Errorf("a.corp.test: tls_policy %q", res[0].TLSPolicy)
		}
		deferred(t, res[1])
		if m := h.next(); strings.Join(m.To, ",") != "x@a.corp.test" {
			t.Errorf("the gateway got recipients %v, want only x@a.corp.test", m.To)
		}
		h.none()
	})
	t.Run("two messages on a pooled session", func(t *testing.T) {
		h, e := setup(t)
		sp := newSpool(t)
		check(t, "a.corp.test", deliver(t, e, sp.put("s@ours.test", []string{"x@a.corp.test"}, message))[0], queue.Delivered, "2.0.0")
		h.next()
		deferred(t, deliver(t, e, sp.put("s@ours.test", []string{"z@b.corp.test"}, message))[0])
		h.none()
		// The pooled session is still good for a.corp.test: the check
		// refused it to b, it did not lose it.
		check(t, "a.corp.test again", deliver(t, e, sp.put("s@ours.test", []string{"y@a.corp.test"}, message))[0], queue.Delivered, "2.0.0")
		h.next()
		if n := h.Conns(); n != 2 {
			t.Errorf("%d connections, want 2 (a's session pooled and reused, b's own refused)", n)
		}
	})
}

// Issue 11, finding 2: a rule naming the recipient domain applies to LMTP
// delivery as to SMTP: STARTTLS when the LMTP server offers it, the
// session checked against the rule, and a server that cannot meet it gets
// nothing (4.7.x, deferred).
func TestLMTPObeysDomainRule(t *testing.T) {
	rule := func(t *testing.T, lvl tlspolicy.Level, roots *x509.CertPool) func(*outbound.EngineOptions) {
		d, err := tlspolicy.New(tlspolicy.Options{RootCAs: roots, Rules: []tlspolicy.Rule{{Match: "lmtpp.test", Level: lvl}}})
		if err != nil {
			t.Fatal(err)
		}
		return func(o *outbound.EngineOptions) { o.TLS = d }
	}
	route := func(t *testing.T, h *hop) *outbound.Router {
		return &outbound.Router{Routes: []outbound.Route{{Match: "lmtpp.test", Target: target(t, "lmtp://"+h.addr)}}}
	}
	t.Run("no STARTTLS, encrypt", func(t *testing.T) {
		h := newHop(t, hopOptions{LMTP: true})
		e := engine(t, route(t, h), rule(t, tlspolicy.Encrypt, nil))
		res := deliver(t, e, newSpool(t).put("s@ours.test", []string{"u@lmtpp.test"}, message))
		check(t, "LMTP without STARTTLS", res[0], queue.TempFail, "4.7.10")
		if !strings.Contains(res[0].TLSPolicy, "match lmtpp.test") || !strings.Contains(res[0].TLSPolicy, "failure=no-starttls") {
			t.Errorf("tls_policy %q does not name the rule and the failure", res[0].TLSPolicy)
		}
		if h.Conns() == 0 {
			t.Error("never connected; the test proves nothing")
		}
		h.none()
	})
	t.Run("our own domain to LMTP, no STARTTLS, encrypt", func(t *testing.T) {
		h := newHop(t, hopOptions{LMTP: true})
		r := &outbound.Router{Local: map[string]outbound.Target{"lmtpp.test": target(t, "lmtp://"+h.addr)}}
		e := engine(t, r, rule(t, tlspolicy.Encrypt, nil))
		d := newSpool(t).put("s@remote.test", []string{"u@lmtpp.test"}, message)
		d.Envelope.Origin = queue.OriginInbound
		check(t, "local LMTP without STARTTLS", deliver(t, e, d)[0], queue.TempFail, "4.7.10")
		h.none()
	})
	t.Run("STARTTLS, secure", func(t *testing.T) {
		hopTLS, roots := trustedTLS(t, "lmtpp.test")
		h := newHop(t, hopOptions{LMTP: true, TLS: hopTLS})
		e := engine(t, route(t, h), rule(t, tlspolicy.Secure, roots))
		res := deliver(t, e, newSpool(t).put("s@ours.test", []string{"u@lmtpp.test"}, message))
		check(t, "LMTP with STARTTLS", res[0], queue.Delivered, "2.0.0")
		if !strings.Contains(res[0].TLSPolicy, "achieved=secure") || !strings.HasPrefix(res[0].TLS, "TLS1.") {
			t.Errorf("tls_policy %q, tls %q", res[0].TLSPolicy, res[0].TLS)
		}
		if m := h.next(); !m.TLS || m.Helo != "relay.ours.test" {
			t.Errorf("LMTP server got the message with TLS %v after LHLO %q", m.TLS, m.Helo)
		}
	})
	t.Run("STARTTLS, wrong name, secure", func(t *testing.T) {
		hopTLS, roots := trustedTLS(t, "other.test")
		h := newHop(t, hopOptions{LMTP: true, TLS: hopTLS})
		e := engine(t, route(t, h), rule(t, tlspolicy.Secure, roots))
		res := deliver(t, e, newSpool(t).put("s@ours.test", []string{"u@lmtpp.test"}, message))
		check(t, "LMTP, certificate for another name", res[0], queue.TempFail, "4.7.5")
		h.none()
	})
}

// Issue 11, finding 3: route credentials go only to a next hop that
// advertised AUTH and proved, inside TLS, to be the route's host (or to
// the weaker session the route allows); otherwise nothing is sent and the
// delivery waits with 4.7.x.
func TestRouteAuthNeedsVerifiedHost(t *testing.T) {
	users := map[string]string{"relay": "pw"}
	run := func(t *testing.T, hopTLS *tls.Config, roots *x509.CertPool, o hopOptions, auth outbound.RouteAuth) (*hop, queue.Result) {
		t.Helper()
		o.TLS = hopTLS
		h := newHop(t, o)
		tg := target(t, "smtp://smarthost.test:"+h.port)
		tg.Auth = &auth
		d, err := tlspolicy.New(tlspolicy.Options{RootCAs: roots})
		if err != nil {
			t.Fatal(err)
		}
		e := engine(t, &outbound.Router{Routes: []outbound.Route{{Match: "*", Target: tg}}}, func(eo *outbound.EngineOptions) {
			eo.TLS = d
			eo.Resolver = dnstest.Mock{Host: map[string][]netip.Addr{"smarthost.test": {netip.MustParseAddr("127.0.0.1")}}}
		})
		return h, deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))[0]
	}
	creds := outbound.RouteAuth{Username: "relay", Password: "pw"}
	t.Run("verified host, AUTH offered", func(t *testing.T) {
		hopTLS, roots := trustedTLS(t, "smarthost.test")
		h, r := run(t, hopTLS, roots, hopOptions{Users: users}, creds)
		check(t, "verified", r, queue.Delivered, "2.0.0")
		if m := h.next(); m.Auth != "relay" || !m.TLS {
			t.Errorf("next hop: auth %q, TLS %v", m.Auth, m.TLS)
		}
	})
	t.Run("self-signed, AUTH not offered", func(t *testing.T) {
		h, r := run(t, selfSigned(t), nil, hopOptions{}, creds)
		check(t, "self-signed", r, queue.TempFail, "4.7.5")
		if !strings.Contains(r.Reply, "credentials") {
			t.Errorf("reply %q does not say the credentials were held back", r.Reply)
		}
		if n := h.AuthTries(); n != 0 {
			t.Errorf("%d AUTH commands sent to an unverified server", n)
		}
		h.none()
	})
	t.Run("self-signed, AUTH offered", func(t *testing.T) {
		h, r := run(t, selfSigned(t), nil, hopOptions{Users: users}, creds)
		check(t, "self-signed", r, queue.TempFail, "4.7.5")
		if n := h.AuthTries(); n != 0 {
			t.Errorf("%d AUTH commands sent to an unverified server", n)
		}
		h.none()
	})
	t.Run("verified host, AUTH not offered", func(t *testing.T) {
		hopTLS, roots := trustedTLS(t, "smarthost.test")
		h, r := run(t, hopTLS, roots, hopOptions{}, creds)
		check(t, "no AUTH", r, queue.TempFail, "4.7.0")
		if !strings.Contains(r.Reply, "AUTH") {
			t.Errorf("reply %q does not say AUTH was missing", r.Reply)
		}
		if n := h.AuthTries(); n != 0 {
			t.Errorf("%d AUTH commands sent to a server that did not offer AUTH", n)
		}
		h.none()
	})
	t.Run("no TLS", func(t *testing.T) {
		h, r := run(t, nil, nil, hopOptions{Users: users, AllowInsecureAuth: true}, creds)
		check(t, "clear text", r, queue.TempFail, "4.7.10")
		if n := h.AuthTries(); n != 0 {
			t.Errorf("%d AUTH commands sent in clear", n)
		}
		h.none()
	})
}
