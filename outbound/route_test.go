package outbound_test

import (
	"strings"
	"testing"

	"securerelay/outbound"
	"securerelay/queue"
)

func TestParseTarget(t *testing.T) {
	for in, want := range map[string]outbound.Target{
		"smtp://kopano.internal:25":  {Kind: outbound.KindSMTP, Addr: "kopano.internal:25"},
		"smtp://kopano.internal:25/": {Kind: outbound.KindSMTP, Addr: "kopano.internal:25"},
		"lmtp://127.0.0.1:24":        {Kind: outbound.KindLMTP, Addr: "127.0.0.1:24"},
		"maildir:/var/mail/ours":     {Kind: outbound.KindMaildir, Addr: "/var/mail/ours"},
	} {
		got, err := outbound.ParseTarget(in)
		if err != nil || got.Kind != want.Kind || got.Addr != want.Addr {
			t.Errorf("ParseTarget(%q) = %+v, %v; want %+v", in, got, err, want)
		}
	}
	for _, in := range []string{"", "kopano.internal:25", "http://x:25", "SMTP//x:25"} {
		if got, err := outbound.ParseTarget(in); err == nil {
			t.Errorf("ParseTarget(%q) = %+v, want an error", in, got)
		}
	}
}

func TestRouteOrder(t *testing.T) {
	local := outbound.Target{Kind: outbound.KindMaildir, Addr: "/var/mail"}
	lmtp := outbound.Target{Kind: outbound.KindLMTP, Addr: "groupware:24"}
	exact := outbound.Target{Kind: outbound.KindSMTP, Addr: "exact:25"}
	parent := outbound.Target{Kind: outbound.KindSMTP, Addr: "parent:25"}
	star := outbound.Target{Kind: outbound.KindSMTP, Addr: "smarthost:25"}
	r := &outbound.Router{
		Local: map[string]outbound.Target{"ours.test": local, "sub.parent.test": lmtp, "exact.test": lmtp},
		Routes: []outbound.Route{
			{Match: "exact.test", Target: exact},
			{Match: "partner.test", Target: exact},
			{Match: ".parent.test", Target: parent},
			{Match: "*", Target: star},
		},
	}
	for dom, want := range map[string]outbound.Target{
		"ours.test":         local,  // our domain
		"exact.test":        lmtp,   // our domain wins over a route for it
		"sub.parent.test":   lmtp,   // our domain wins over a parent route
		"partner.test":      exact,  // exact route
		"sub.partner.test":  star,   // an exact route does not cover subdomains
		"a.parent.test":     parent, // .parent: subdomains
		"a.b.parent.test":   parent,
		"parent.test":       star, // .parent: not the domain itself
		"xparent.test":      star, // not a label boundary
		"parent.test.other": star,
		"other.test":        star,
	} {
		if got := r.Route(dom); got.Key() != want.Key() {
			t.Errorf("Route(%q) = %s, want %s", dom, got.Key(), want.Key())
		}
	}

	// Without "*" the rest goes by MX.
	r = &outbound.Router{Routes: []outbound.Route{{Match: "partner.test", Target: exact}}}
	if got := r.Route("other.test"); got.Kind != outbound.KindMX || got.Addr != "other.test" {
		t.Errorf("Route(other.test) = %+v, want MX delivery", got)
	}

	// The first matching route wins (config validation rejects routes
	// shadowed this way).
	r = &outbound.Router{Routes: []outbound.Route{{Match: ".example.org", Target: parent}, {Match: "a.example.org", Target: exact}}}
	if got := r.Route("a.example.org"); got.Key() != parent.Key() {
		t.Errorf("Route(a.example.org) = %s, want the first match %s", got.Key(), parent.Key())
	}
}

func TestTargetKeys(t *testing.T) {
	keys := map[string]bool{}
	for _, tg := range []outbound.Target{
		{Kind: outbound.KindSMTP, Addr: "h:25"}, {Kind: outbound.KindLMTP, Addr: "h:25"}, {Kind: outbound.KindMX, Addr: "h"}, {Kind: outbound.KindMaildir, Addr: "h"},
	} {
		if keys[tg.Key()] {
			t.Errorf("two targets share the key %q", tg.Key())
		}
		keys[tg.Key()] = true
	}
}

// One Deliver call with recipients for two destinations: each group goes
// to its own next hop in one transaction, results stay in recipient order.
func TestDeliverGroupsByTarget(t *testing.T) {
	lmtp := newHop(t, hopOptions{LMTP: true})
	smart := newHop(t, hopOptions{})
	r := &outbound.Router{
		Local:  map[string]outbound.Target{"ours.test": target(t, "lmtp://"+lmtp.addr)},
		Routes: []outbound.Route{{Match: "*", Target: target(t, "smtp://"+smart.addr)}},
	}
	e := engine(t, r, nil)
	rcpts := []string{"x@remote.test", "y@ours.test", "z@other.test", "w@OURS.TEST"}
	res := deliver(t, e, newSpool(t).put("sender@ours.test", rcpts, message))
	for i, rs := range res {
		check(t, rcpts[i], rs, queue.Delivered, "2.0.0")
		wantHop := smart.addr
		if strings.Contains(strings.ToLower(rcpts[i]), "@ours.test") {
			wantHop = lmtp.addr
		}
		if !strings.HasSuffix(rs.Relay, wantHop[strings.LastIndexByte(wantHop, ':'):]) {
			t.Errorf("%s went via %s, want %s", rcpts[i], rs.Relay, wantHop)
		}
	}
	if m := lmtp.next(); strings.Join(m.To, ",") != "y@ours.test,w@OURS.TEST" {
		t.Errorf("LMTP hop got %v", m.To)
	}
	if m := smart.next(); strings.Join(m.To, ",") != "x@remote.test,z@other.test" {
		t.Errorf("smarthost got %v", m.To)
	}
	lmtp.none()
	smart.none()
}
