package outbound_test

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net/netip"
	"strings"
	"testing"
	"time"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/tlspolicy"
)

// A mandatory level is never met in clear text: a next hop without
// STARTTLS, or with a failing handshake, gets nothing, and the delivery is
// deferred with 4.7.10.
func TestTLSEncryptNeverFallsBackToClear(t *testing.T) {
	encrypt := func(o *outbound.EngineOptions) {
		d, err := tlspolicy.New(tlspolicy.Options{Default: tlspolicy.Encrypt})
		if err != nil {
			t.Fatal(err)
		}
		o.TLS = d
	}
	for name, hopTLS := range map[string]*tls.Config{
		"no STARTTLS offered": nil,
		"handshake fails":     {}, // offers STARTTLS, has no certificate
	} {
		t.Run(name, func(t *testing.T) {
			h := newHop(t, hopOptions{TLS: hopTLS})
			e := engine(t, everything(t, "smtp://"+h.addr), encrypt)
			res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
			check(t, name, res[0], queue.TempFail, "4.7.10")
			if !strings.Contains(res[0].Reply, "TLS policy encrypt") || !strings.Contains(res[0].TLSPolicy, "required=encrypt") {
				t.Errorf("reply %q / tls_policy %q do not say TLS was required", res[0].Reply, res[0].TLSPolicy)
			}
			h.none()
		})
	}
	t.Run("STARTTLS works", func(t *testing.T) {
		h := newHop(t, hopOptions{TLS: selfSigned(t)})
		e := engine(t, everything(t, "smtp://"+h.addr), encrypt)
		res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
		check(t, "encrypted", res[0], queue.Delivered, "2.0.0")
		if m := h.next(); !m.TLS {
			t.Errorf("delivered without TLS")
		}
	})
}

// The transform seam sees the session's TLS state and its output is what
// leaves; an error defers the recipients and sends nothing.
func TestTransformSeam(t *testing.T) {
	h := newHop(t, hopOptions{TLS: selfSigned(t)})
	var sawTLS string
	e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) {
		o.Transform = func(m *outbound.Outgoing) (io.Reader, error) {
			sawTLS = m.TLS
			if m.Rcpts[0] == "fail@remote.test" {
				return nil, io.ErrUnexpectedEOF
			}
			b, err := io.ReadAll(m.Data)
			return bytes.NewReader(append([]byte("X-Transformed: yes\r\n"), b...)), err
		}
	})
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
	check(t, "transformed", res[0], queue.Delivered, "2.0.0")
	if m := h.next(); string(m.Data) != "X-Transformed: yes\r\n"+message {
		t.Errorf("next hop got %q", m.Data)
	}
	if !strings.HasPrefix(sawTLS, "TLS1.") {
		t.Errorf("transform saw TLS %q", sawTLS)
	}
	res = deliver(t, e, newSpool(t).put("sender@ours.test", []string{"fail@remote.test"}, message))
	check(t, "transform error", res[0], queue.TempFail, "4.3.0")
	h.none()
}

// An MX record naming "localhost" is resolved like any other name (here it
// does not resolve), never short-cut to 127.0.0.1: a hostile domain must
// not make the relay deliver to itself. A configured next hop may say
// localhost.
func TestLocalhostOnlyForConfiguredNextHops(t *testing.T) {
	h := newHop(t, hopOptions{})
	e := engine(t, &outbound.Router{}, func(o *outbound.EngineOptions) {
		o.Resolver = dnstest.Mock{MX: map[string][]dnsutil.MX{"evil.test": {{Host: "localhost", Pref: 10}}}}
		o.MXPort = h.port
	})
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@evil.test"}, message))
	if res[0].Status == queue.Delivered {
		t.Fatalf("delivered through an MX named localhost: %+v", res[0])
	}
	h.none()

	e = engine(t, everything(t, "smtp://localhost:"+h.port), nil)
	res = deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message))
	check(t, "configured localhost", res[0], queue.Delivered, "2.0.0")
	h.next()
}

// Routing partner mail through a relay must not weaken the partner's rule:
// recipients of a domain with a rule get their own transaction, checked
// against that rule (here verify, which the relay's self-signed
// certificate fails), while the other recipients go through the same relay
// under the relay's own level.
func TestDomainRuleAppliesThroughRoute(t *testing.T) {
	h := newHop(t, hopOptions{TLS: selfSigned(t)})
	d, err := tlspolicy.New(tlspolicy.Options{Default: tlspolicy.May,
		Rules: []tlspolicy.Rule{{Match: "bank.example", Level: tlspolicy.Verify}}})
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) { o.TLS = d })
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"a@bank.example", "b@other.example"}, message))
	check(t, "bank.example", res[0], queue.TempFail, "4.7.5")
	if !strings.Contains(res[0].TLSPolicy, "required=verify") || !strings.Contains(res[0].TLSPolicy, "match bank.example") {
		t.Errorf("bank.example: tls_policy %q does not name the rule", res[0].TLSPolicy)
	}
	check(t, "other.example", res[1], queue.Delivered, "2.0.0")
	if m := h.next(); strings.Join(m.To, ",") != "b@other.example" {
		t.Errorf("the relay got recipients %v, want only b@other.example", m.To)
	}
	h.none()
}

// An MX host that did not meet the TLS level is passed over within the
// attempt (the next MX gets the message) and goes last on the next
// attempt, so the retry does not start with the host that failed.
func TestTLSFailedMXGoesLast(t *testing.T) {
	plain := newHop(t, hopOptions{})
	good := newHop(t, hopOptions{TLS: selfSigned(t), Addr: "127.0.0.2:" + plain.port})
	res := dnstest.Mock{
		MX: map[string][]dnsutil.MX{"order.test": {{Host: "plain.order.test", Pref: 10}, {Host: "tls.order.test", Pref: 20}}},
		Host: map[string][]netip.Addr{
			"plain.order.test": {netip.MustParseAddr("127.0.0.1")},
			"tls.order.test":   {netip.MustParseAddr("127.0.0.2")},
		},
	}
	d, err := tlspolicy.New(tlspolicy.Options{Default: tlspolicy.Encrypt})
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, &outbound.Router{}, func(o *outbound.EngineOptions) {
		o.Resolver, o.MXPort, o.TLS, o.IdleTimeout = res, plain.port, d, 0
	})
	sp := newSpool(t)
	for i := range 2 {
		r := deliver(t, e, sp.put("sender@ours.test", []string{"a@order.test"}, message))
		check(t, fmt.Sprint("attempt ", i), r[0], queue.Delivered, "2.0.0")
		if !strings.HasPrefix(r[0].Relay, "tls.order.test[") || !strings.Contains(r[0].TLSPolicy, "required=encrypt") {
			t.Errorf("attempt %d: relay %q tls_policy %q", i, r[0].Relay, r[0].TLSPolicy)
		}
		good.next()
	}
	if n := plain.Conns(); n != 1 {
		t.Errorf("the MX without STARTTLS got %d connections, want 1 (the second attempt must start with the other MX)", n)
	}
	plain.none()
}

// A pooled session is never reused under a policy it was not checked
// against: after a reload raises the minimum TLS version, the next
// delivery opens a new session, which a TLS 1.2-only hop cannot meet.
func TestPoolNotReusedAcrossTLSReload(t *testing.T) {
	hopTLS := selfSigned(t)
	hopTLS.MaxVersion = tls.VersionTLS12
	h := newHop(t, hopOptions{TLS: hopTLS})
	rule := func(min uint16) *tlspolicy.Decider {
		d, err := tlspolicy.New(tlspolicy.Options{Rules: []tlspolicy.Rule{{Match: "bank.example", Level: tlspolicy.Encrypt, MinVersion: min}}})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) {
		o.TLS, o.IdleTimeout = rule(tls.VersionTLS12), time.Minute
	})
	sp := newSpool(t)
	res := deliver(t, e, sp.put("sender@ours.test", []string{"a@bank.example"}, message))
	check(t, "TLS 1.2 allowed", res[0], queue.Delivered, "2.0.0")
	h.next()
	e.SetTLS(rule(tls.VersionTLS13), false, nil)
	res = deliver(t, e, sp.put("sender@ours.test", []string{"a@bank.example"}, message))
	check(t, "after the reload", res[0], queue.TempFail, "4.7.10")
	h.none()
	if n := h.Conns(); n != 2 {
		t.Errorf("%d connections, want 2 (the pooled one must not be reused)", n)
	}
}

// fallback: bounce returns the message only when every MX was reached and
// failed the level; an MX that was merely down might meet it next time.
func TestBounceOnlyWhenEveryMXFailedTheLevel(t *testing.T) {
	plain := newHop(t, hopOptions{})
	res := dnstest.Mock{
		MX: map[string][]dnsutil.MX{
			"bank.example": {{Host: "down.bank.example", Pref: 10}, {Host: "plain.bank.example", Pref: 20}},
			"solo.example": {{Host: "plain.bank.example", Pref: 10}},
		},
		Host: map[string][]netip.Addr{
			"down.bank.example":  {netip.MustParseAddr("127.0.0.3")}, // nothing listens there
			"plain.bank.example": {netip.MustParseAddr("127.0.0.1")},
		},
	}
	d, err := tlspolicy.New(tlspolicy.Options{Rules: []tlspolicy.Rule{
		{Match: "bank.example", Level: tlspolicy.Encrypt, Fallback: tlspolicy.FallbackBounce},
		{Match: "solo.example", Level: tlspolicy.Encrypt, Fallback: tlspolicy.FallbackBounce},
	}})
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, &outbound.Router{}, func(o *outbound.EngineOptions) {
		o.Resolver, o.MXPort, o.TLS, o.IdleTimeout = res, plain.port, d, 0
	})
	sp := newSpool(t)
	r := deliver(t, e, sp.put("sender@ours.test", []string{"a@bank.example"}, message))
	check(t, "one MX down, the other without STARTTLS", r[0], queue.TempFail, "4.7.10")
	r = deliver(t, e, sp.put("sender@ours.test", []string{"a@solo.example"}, message))
	check(t, "the only MX without STARTTLS", r[0], queue.PermFail, "5.7.10")
	if !strings.Contains(r[0].Explanation, "solo.example") {
		t.Errorf("explanation %q does not name the domain", r[0].Explanation)
	}
	plain.none()
}
