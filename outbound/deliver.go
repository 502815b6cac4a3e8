package outbound

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"securerelay/dnsutil"
	"securerelay/queue"
	"securerelay/smtputil"
	"securerelay/tlspolicy"
)

// EngineOptions configure the delivery engine.
type EngineOptions struct {
	// Helo is the name we send in EHLO/LHLO.
	Helo     string
	Resolver dnsutil.Resolver
	// Dial connects to a next hop; default a net.Dialer with
	// ConnectTimeout. Tests and a future source-address option inject here.
	Dial              func(ctx context.Context, network, addr string) (net.Conn, error)
	MaxPerDestination int
	ConnectTimeout    time.Duration
	CommandTimeout    time.Duration
	// IdleTimeout keeps a connection for reuse; 0 disables reuse.
	IdleTimeout time.Duration
	// StartTLS enables opportunistic STARTTLS; it gives the default level
	// (may, or none when false) when TLS is nil.
	StartTLS bool
	// TLS decides the level per destination and checks each session
	// against it before MAIL FROM (YAML rules, DANE, MTA-STS, REQUIRETLS).
	TLS *tlspolicy.Decider
	// HonourTLSRequiredNo: read the message's "TLS-Required: No" header
	// (RFC 8689) and let the Decider weigh it; false never reads it.
	HonourTLSRequiredNo bool
	// TLSBase is the starting point of every client TLS configuration
	// (tests; nil is fine).
	TLSBase *tls.Config
	// Transform, if set, rewrites the message per transaction (after the
	// OpenPGP encryption, when there is one).
	Transform Transform
	// Encryption is the OpenPGP stage of the TLS rules that encrypt
	// (fallback: encrypt, encrypt: always); nil when none does.
	Encryption *Encryption
	// SpillDir holds a 7-bit copy made for a next hop without 8BITMIME
	// while it is sent, when larger than spillAt (unlinked at once); "":
	// the system's temporary directory.
	SpillDir string
	// MXPort is the port of MX hosts: "25" in real life.
	MXPort string
	// Self reports whether an address, on MXPort, is this relay itself
	// (one of its listeners, or an address that reaches it through NAT):
	// an MX host with such an address is cut from the MX list with every
	// MX of equal or worse preference (RFC 5321 §5.1), so a backup MX
	// entry pointing at us never hands the mail back to ourselves. nil:
	// nothing is us, nothing to cut.
	Self   func(netip.Addr) bool
	Logger *slog.Logger
}

// Engine implements queue.Deliverer.
type Engine struct {
	o      EngineOptions
	router atomic.Pointer[Router]
	tls    atomic.Pointer[tlsState]

	mu    sync.Mutex
	dests map[string]*dest
	// tlsFailed remembers MX hosts ("domain host") that did not meet the
	// TLS level, so that the next attempt starts with the other MX hosts.
	tlsFailed map[string]time.Time
}

// NewEngine returns a delivery engine; call Close to drop pooled sessions.
func NewEngine(o EngineOptions, r *Router) *Engine {
	if o.MaxPerDestination <= 0 {
		o.MaxPerDestination = 20
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 30 * time.Second
	}
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 5 * time.Minute
	}
	if o.MXPort == "" {
		o.MXPort = "25"
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	if o.Dial == nil {
		d := &net.Dialer{Timeout: o.ConnectTimeout}
		o.Dial = d.DialContext
	}
	if o.TLS == nil {
		lvl := tlspolicy.None
		if o.StartTLS {
			lvl = tlspolicy.May
		}
		o.TLS, _ = tlspolicy.New(tlspolicy.Options{Default: lvl, Logger: o.Logger})
	}
	e := &Engine{o: o, dests: map[string]*dest{}, tlsFailed: map[string]time.Time{}}
	e.SetTLS(o.TLS, o.HonourTLSRequiredNo, o.Encryption)
	e.router.Store(r)
	return e
}

// SetTLS swaps the TLS policy and the encryption rules that go with its
// rules (SIGHUP); pooled sessions checked against the old policy are not
// reused unless the new one asks the same.
func (e *Engine) SetTLS(d *tlspolicy.Decider, honourTLSRequiredNo bool, enc *Encryption) {
	e.tls.Store(&tlsState{d: d, honour: honourTLSRequiredNo, gen: tlsGen.Add(1), enc: enc})
}

// SetRouter swaps routes and local domains (SIGHUP).
func (e *Engine) SetRouter(r *Router) { e.router.Store(r) }

// Close ends all pooled sessions with QUIT.
func (e *Engine) Close() {
	e.mu.Lock()
	var all []*pooled
	for _, d := range e.dests {
		all = append(all, d.idle...)
		d.idle = nil
	}
	e.mu.Unlock()
	for _, p := range all {
		p.cl.quit()
	}
}

// Deliver implements queue.Deliverer: recipients are grouped by target and
// each group is sent in one transaction.
func (e *Engine) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	res := make([]queue.Result, len(d.Rcpts))
	router := e.router.Load()
	type group struct {
		t   Target
		dom string // recipient domain whose TLS rule applies through a route
		idx []int
	}
	var groups []*group
	byKey := map[string]*group{}
	// One snapshot of the TLS policy (and its encryption rules) for the
	// whole delivery: a SIGHUP meanwhile must not group recipients by one
	// set of rules and decide their transactions by another.
	ts := e.tls.Load()
	pol := ts.d
	for i, rc := range d.Rcpts {
		// Routes, TLS rules and MX lookup use the A-label form: one
		// domain however the sender wrote it (RFC 5890).
		dom := smtputil.AddressDomain(rc)
		t := router.Route(dom)
		key, ruleDom := t.Key(), ""
		if t.configured() && pol.HasDomainRule(dom) {
			// A partner rule travels with its recipients through a relay
			// (SMTP, LMTP, any next hop the configuration names): their
			// own transaction, checked against their own rule. MX
			// delivery is per recipient domain anyway; maildir sends
			// nothing over a network.
			key, ruleDom = key+"|"+dom, dom
		}
		g := byKey[key]
		if g == nil {
			g = &group{t: t, dom: ruleDom}
			byKey[key] = g
			groups = append(groups, g)
		}
		g.idx = append(g.idx, i)
	}
	for _, g := range groups {
		rcpts := make([]string, len(g.idx))
		for k, i := range g.idx {
			rcpts[k] = d.Rcpts[i]
		}
		var gr []queue.Result
		if g.t.Kind == KindMaildir {
			gr = deliverMaildir(g.t.Addr, e.o.Helo, d, rcpts)
		} else {
			gr = e.deliverRemote(ctx, ts, d, g.t, g.dom, rcpts)
		}
		for k, i := range g.idx {
			res[i] = gr[k]
		}
	}
	return res
}

func all(n int, r queue.Result) []queue.Result {
	out := make([]queue.Result, n)
	for i := range out {
		out[i] = r
	}
	return out
}

func (e *Engine) deliverRemote(ctx context.Context, ts *tlsState, d *queue.Delivery, t Target, ruleDom string, rcpts []string) []queue.Result {
	ds := e.dest(t.Key())
	defer e.releaseDest(ds)
	select {
	case ds.sem <- struct{}{}:
	case <-ctx.Done():
		return all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.3.2", Reply: "shutting down"})
	}
	defer func() { <-ds.sem }()

	pol, key, fail := e.decideTLS(ctx, ts, d, t, ruleDom)
	if fail != nil {
		return all(len(rcpts), *fail)
	}
	// The encryption rule is the recipient domain's: a route's next-hop
	// host is no address to look a key up for.
	if r := ts.enc.ruleFor(pol, d); r != nil && (t.Kind == KindMX || ruleDom != "") {
		return e.deliverEncrypting(ctx, ds, ts.enc, r, d, t, pol, key, rcpts)
	}
	res, _ := e.send(ctx, ds, d, t, pol, key, rcpts, nil, false)
	return res
}

// send delivers rcpts in one transaction, on a pooled session or a new
// one that meets pol. With s, the message is encrypted to the recipients'
// keys first; relaxed: s's encryption, not the session, protects the
// message, so the best session the hosts offer will do
// (tlspolicy.Policy.Opportunistic). policyFailed reports that no next hop
// met the TLS policy: nothing was sent, and every result says why.
func (e *Engine) send(ctx context.Context, ds *dest, d *queue.Delivery, t Target, pol *tlspolicy.Policy, key string,
	rcpts []string, s *sealing, relaxed bool) (res []queue.Result, policyFailed bool) {
	if relaxed {
		if s == nil {
			// Never reached: only an encrypted message may take a session
			// below the policy. Guarded all the same, as transact guards
			// the level: this is the promise the product is named for.
			return all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.7.10",
				Reply: "internal error: a session below the TLS policy was asked for an unencrypted message; not sent"}), false
		}
		// Such sessions are pooled apart: reuse checks them against the
		// relaxed policy, which a cleartext transaction never asks.
		key += "|encrypted end to end"
	}
	for try := 0; ; try++ {
		var p *pooled
		reused := false
		if try == 0 {
			// The retry after a stale session connects afresh: when the
			// peer closed one idle session it has usually closed them all,
			// and the next pooled one would fail the delivery the same way.
			p = e.reuse(ctx, ds, t, pol, key, relaxed)
			reused = p != nil
		}
		if p == nil {
			var fail *queue.Result
			p, fail, policyFailed = e.connect(ctx, t, pol, key, relaxed)
			if fail != nil {
				return all(len(rcpts), *fail), policyFailed
			}
		}
		// queue.Deliverer: return promptly when ctx is cancelled. The
		// time-outs allow a next hop 10 minutes after the dot (and go-smtp's
		// LMTP client sets none while sending), so closing the connection
		// is what ends a transaction in progress; its recipients then
		// fail temporarily as with any lost connection.
		stop := context.AfterFunc(ctx, p.cl.abort)
		tr := e.transact(d, t, p, rcpts, s)
		if !stop() {
			tr.sessionBroken, tr.noReplyToMail = true, false
		}
		if tr.noReplyToMail && reused && try == 0 {
			// A pooled session the peer had already closed: not a real
			// failure, try once more on a fresh connection.
			p.cl.quit()
			continue
		}
		if tr.sessionBroken || e.o.IdleTimeout <= 0 {
			p.cl.quit()
		} else {
			e.release(ds, p)
		}
		return tr.res, false
	}
}
