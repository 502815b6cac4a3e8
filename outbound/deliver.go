package outbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"securerelay/dkim"
	"securerelay/dnsutil"
	"securerelay/downgrade"
	"securerelay/encrypt"
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

type dest struct {
	key  string
	sem  chan struct{}
	idle []*pooled
	// users counts deliveries holding this dest; with no users and no idle
	// session it is dropped from the map, so a smarthost that has sent to
	// every domain on earth does not keep an entry for each (guarded by
	// Engine.mu).
	users int
}

// pooled is a session to a next hop, in use by one delivery or idle in
// its dest.
type pooled struct {
	cl    client
	relay string
	// host is the next-hop host the session was opened to, as ForMX and
	// ForRelay name it: a later transaction's host policy is decided for
	// it before the session is reused (reuse).
	host string
	tls  sessionTLS
	// key summarises the policy the session was opened under (policyKey):
	// only sessions with the key of a new transaction are considered for
	// it, a cheap filter before the live check (recheck).
	key   string
	since time.Time
	// hp and outcome belong to the transaction in progress: the host
	// policy the session was last checked against, and that check for
	// the log and the queue entry.
	hp      *tlspolicy.HostPolicy
	outcome string
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

// tlsState is the TLS policy in force; gen tells sessions checked against
// an older one (before a SIGHUP) apart, so that none is reused under a
// policy it was not checked against.
type tlsState struct {
	d      *tlspolicy.Decider
	honour bool
	gen    uint64
	enc    *Encryption // nil: no rule encrypts
}

var tlsGen atomic.Uint64

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

func (e *Engine) dest(key string) *dest {
	e.mu.Lock()
	defer e.mu.Unlock()
	d := e.dests[key]
	if d == nil {
		d = &dest{key: key, sem: make(chan struct{}, e.o.MaxPerDestination)}
		e.dests[key] = d
	}
	d.users++
	return d
}

// dropIfUnused forgets a dest nobody uses; called with e.mu held.
func (e *Engine) dropIfUnused(d *dest) {
	if d.users == 0 && len(d.idle) == 0 && e.dests[d.key] == d {
		delete(e.dests, d.key)
	}
}

func (e *Engine) releaseDest(d *dest) {
	e.mu.Lock()
	d.users--
	e.dropIfUnused(d)
	e.mu.Unlock()
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

// reuse hands out an idle session for a transaction under pol, or nil. A
// session qualifies when it was opened under the same policy summary
// (key: the cheap filter) and its live TLS state, checked again now,
// meets the host policy this transaction asks of that session's host
// (recheck: the guard, which cannot miss what the key leaves out). A
// session that does not qualify stays idle for transactions it suits.
func (e *Engine) reuse(ctx context.Context, ds *dest, t Target, pol *tlspolicy.Policy, key string, relaxed bool) *pooled {
	e.mu.Lock()
	var cands []*pooled
	for i := len(ds.idle) - 1; i >= 0; i-- {
		p := ds.idle[i]
		if time.Since(p.since) >= e.o.IdleTimeout {
			ds.idle = append(ds.idle[:i], ds.idle[i+1:]...)
			go p.cl.quit()
			continue
		}
		if p.key == key {
			cands = append(cands, p)
		}
	}
	e.mu.Unlock()
	// Deciding a host policy may ask DNS (TLSA, MTA-STS): outside the
	// lock, once per host.
	type decided struct {
		hp  *tlspolicy.HostPolicy
		err error
	}
	hps := map[string]decided{}
	for _, p := range cands {
		d, ok := hps[p.host]
		if !ok {
			d.hp, d.err = forHost(ctx, pol, t, p.host, relaxed)
			hps[p.host] = d
		}
		outcome, err := "", d.err
		if err == nil {
			outcome, err = recheck(d.hp, p.tls)
		}
		if err != nil {
			e.o.Logger.Debug("pooled session does not meet this transaction's TLS policy; not reused for it",
				"domain", pol.Domain, "relay", p.relay, "error", err)
			continue
		}
		e.mu.Lock()
		i := slices.Index(ds.idle, p)
		if i >= 0 {
			ds.idle = slices.Delete(ds.idle, i, i+1)
		}
		e.mu.Unlock()
		if i >= 0 { // else another delivery took it meanwhile
			p.hp, p.outcome = d.hp, outcome
			return p
		}
	}
	return nil
}

// forHost is the host policy for one next-hop host of t; relaxed: for mail
// encrypted end to end (tlspolicy.Policy.Opportunistic), which may use
// any host the destination has, however it falls short of the policy.
func forHost(ctx context.Context, pol *tlspolicy.Policy, t Target, host string, relaxed bool) (*tlspolicy.HostPolicy, error) {
	if relaxed {
		return pol.Opportunistic(host), nil
	}
	if t.Kind == KindMX {
		return pol.ForMX(ctx, host)
	}
	return pol.ForRelay(ctx, host)
}

func (e *Engine) release(ds *dest, p *pooled) {
	p.since = time.Now()
	e.mu.Lock()
	ds.idle = append(ds.idle, p)
	e.mu.Unlock()
	// Close it if nobody picks it up in time; it may be gone by then.
	time.AfterFunc(e.o.IdleTimeout+10*time.Millisecond, func() {
		e.mu.Lock()
		for i, q := range ds.idle {
			if q == p {
				ds.idle = append(ds.idle[:i], ds.idle[i+1:]...)
				e.dropIfUnused(ds)
				e.mu.Unlock()
				p.cl.quit()
				return
			}
		}
		e.mu.Unlock()
	})
}

// txnResult is what one transaction leaves: the recipients' results and
// what may become of the session.
type txnResult struct {
	// res holds one result per recipient, in the order transact got them.
	res []queue.Result
	// sessionBroken: the session cannot carry another transaction (the
	// connection is gone or out of step, or RSET failed): quit it, never
	// pool it.
	sessionBroken bool
	// noReplyToMail: MAIL, the first command, got no reply: on a pooled
	// session, the peer closed it while it idled. Nothing was sent, so a
	// fresh connection may try the transaction again.
	noReplyToMail bool
}

// transact runs one MAIL/RCPT/DATA on p.
func (e *Engine) transact(d *queue.Delivery, t Target, p *pooled, rcpts []string, s *sealing) txnResult {
	tlsInfo := p.tls.info
	// Every recipient starts as a temporary failure: only a reply to the
	// end of DATA may turn one into Delivered.
	res := all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.4.2", Relay: p.relay, TLS: tlsInfo,
		Reply: "transaction with " + p.relay + " did not complete"})
	for i := range res {
		res[i].TLSPolicy = p.outcome
	}
	if p.hp == nil || p.hp.RequiresTLS() && tlsInfo == "" {
		// open() and reuse() never hand out such a session; this is the
		// last line of defence before any byte of the message is sent.
		return txnResult{sessionBroken: true, res: all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.7.10", Relay: p.relay, TLSPolicy: p.outcome,
			Reply: fmt.Sprintf("TLS required for %s, session is not encrypted; not sent", t.Addr)})}
	}
	env := d.Envelope
	dsnHop, _ := p.cl.extension("DSN")
	eightHop, _ := p.cl.extension("8BITMIME")
	set := func(i int, err error, stage string) {
		r := queue.Result{Relay: p.relay, TLS: tlsInfo, TLSPolicy: p.outcome}
		if s != nil {
			r.Encryption = s.note(rcpts[i])
		}
		if err == nil {
			r.Status, r.Code, r.Reply = queue.Delivered, "2.0.0", "accepted after "+stage
			// What a success DSN would say, if one was asked for and the
			// next hop did not take the request over (RFC 3461 §5.2.2).
			switch {
			case dsnHop:
			case t.Kind == KindLMTP:
				r.Success = queue.ActionDelivered
			default:
				r.Success = queue.ActionRelayed
			}
		} else if rp := toReply(err, stage); rp != nil {
			r.Code, r.Reply = rp.enh, fmt.Sprintf("%s said: %s", p.relay, rp.Error())
			r.Status = queue.TempFail
			if rp.permanent() {
				r.Status = queue.PermFail
			}
		} else {
			r.Status, r.Code = queue.TempFail, "4.4.2"
			r.Reply = fmt.Sprintf("lost connection with %s while sending %s: %v", p.relay, stage, err)
		}
		res[i] = r
	}
	// SMTPUTF8 (utf8.go): with the parameter, downgraded to A-labels, or
	// not at all, decided on what this session offered.
	offered, _ := p.cl.extension("SMTPUTF8")
	plan, err := planEnvelope(d, rcpts, offered)
	if err != nil {
		return txnResult{res: all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.3.0", Relay: p.relay, TLS: tlsInfo, TLSPolicy: p.outcome,
			Reply: "cannot read spool file: " + err.Error()})}
	}
	if plan.whole != "" {
		// Nothing was sent: the session stays good for other mail.
		r := noSMTPUTF8(p.relay, plan.whole, plan.wholeWhat)
		r.TLS, r.TLSPolicy = tlsInfo, p.outcome
		return txnResult{res: all(len(rcpts), r)}
	}
	for i, why := range plan.refused {
		if why != "" {
			res[i] = noSMTPUTF8(p.relay, why, utf8Recipient)
			res[i].TLS, res[i].TLSPolicy = tlsInfo, p.outcome
		}
	}
	setAll := func(err error, stage string) {
		for i := range rcpts {
			if plan.refused[i] == "" {
				set(i, err, stage)
			}
		}
	}
	mp := mailParams{requireTLS: p.hp.RequireTLS, smtputf8: plan.smtputf8}
	if dsnHop {
		// RFC 3461 §5.2: a next hop that offers DSN gets the request, and
		// the notices are then its to send.
		mp.ret, mp.envID = env.Ret, env.EnvID
	}
	var conv *sealed
	switch {
	case eightHop || plan.smtputf8:
		// RFC 6531 §3.2: a server that offers SMTPUTF8 takes 8-bit
		// content too; its UTF-8 header fields are no reason to convert.
		if eightHop && (s != nil || d.Content != queue.Content7Bit || env.Body == "8BITMIME") {
			mp.body = "8BITMIME"
		}
	case s == nil && d.Content != queue.Content7Bit:
		// RFC 6152: no 8-bit octet to a next hop without 8BITMIME. The
		// 7-bit copy is made before MAIL, so that a message that cannot
		// be converted goes back without a transaction, and before the
		// DKIM signer (Transform), which signs what leaves. (An encrypted
		// message is ASCII armour already.)
		c, err := e.downgrade(d)
		var de *downgrade.Error
		switch {
		case errors.As(err, &de):
			// No other attempt does better: the next hops of a domain are
			// set up alike, and the message stays what it is.
			for i := range res {
				res[i] = not7Bit(p, de.Reason)
			}
			return txnResult{res: res}
		case err != nil:
			for i := range res {
				res[i].Code, res[i].Reply = "4.3.0", "converting the message to 7 bit failed: "+err.Error()
			}
			return txnResult{res: res}
		}
		if c != nil {
			defer c.Close()
			conv = c
			e.o.Logger.Info("converted to 7 bit: the next hop does not offer 8BITMIME", "queue_id", d.ID, "relay", p.relay)
		}
	}
	if err := p.cl.mail(plan.from, mp); err != nil {
		setAll(err, "MAIL FROM")
		if toReply(err, "") == nil {
			return txnResult{res: res, sessionBroken: true, noReplyToMail: true}
		}
		return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
	}
	var ok, okWire []string
	var okIdx []int
	for i, rc := range rcpts {
		if plan.refused[i] != "" {
			continue
		}
		var rp rcptParams
		if dsnHop {
			// Looked up by the recipient as queued; the wire form may be
			// its A-label downgrade.
			dsn := d.DSN(rc)
			rp = rcptParams{notify: dsn.Notify, orcpt: dsn.ORCPT}
		}
		if err := p.cl.rcpt(plan.rcpts[i], rp); err != nil {
			set(i, err, "RCPT TO")
			if toReply(err, "") == nil {
				// The connection is gone: recipients accepted so far never
				// got their DATA, later ones were never asked.
				for j := range rcpts {
					if j != i && plan.refused[j] == "" && (j > i || res[j].Status != queue.PermFail) {
						set(j, err, "RCPT TO")
					}
				}
				return txnResult{res: res, sessionBroken: true}
			}
			continue
		}
		ok = append(ok, rc)
		okWire = append(okWire, plan.rcpts[i])
		okIdx = append(okIdx, i)
	}
	if len(ok) == 0 {
		return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
	}
	out := &Outgoing{Delivery: d, Target: t, Rcpts: ok, TLS: tlsInfo,
		Reopen: func() (io.ReadCloser, error) { return d.Open() }}
	if conv != nil {
		out.Reopen, out.Converted = conv.Open, true
	}
	fail := func(code, reply string) {
		for _, i := range okIdx {
			res[i] = queue.Result{Status: queue.TempFail, Code: code, Relay: p.relay, TLS: tlsInfo, TLSPolicy: p.outcome, Reply: reply}
			if s != nil {
				res[i].Encryption = s.note(rcpts[i])
			}
		}
	}
	if s != nil {
		// Encrypted first, so that the DKIM signature covers the bytes
		// that leave; the copy is made for the recipients the next hop
		// took, after RCPT, and is not kept: each attempt encrypts anew.
		sc, err := s.seal(d, ok)
		if errors.Is(err, encrypt.ErrMalformed) {
			// No later attempt can encrypt it either: back to the sender
			// now, not a retry every few hours until queue.max_age.
			why := strings.Join(strings.Fields(err.Error()), " ")
			for _, i := range okIdx {
				res[i] = queue.Result{Status: queue.PermFail, Code: "5.6.0", Relay: p.relay, TLS: tlsInfo, TLSPolicy: p.outcome,
					Encryption: s.note(rcpts[i]),
					Reply:      "the message is malformed and cannot be encrypted as the TLS policy requires (" + why + "); not sent",
					Explanation: "Your organisation's policy requires this message to be encrypted end to end for this recipient, and it could not be: " +
						"its header is malformed (" + why + "). Nothing was sent. Ask whoever runs the program that wrote the message to fix it, then send it again."}
			}
			return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
		}
		if err != nil {
			fail("4.3.0", "encrypting the message failed: "+err.Error())
			return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
		}
		defer sc.Close()
		out.Reopen, out.Encrypted = sc.Open, true
		if !eightHop && !plan.smtputf8 && d.Content != queue.Content7Bit {
			// The armour is 7 bit, but the fields kept outside (From, To,
			// Cc) are copied as they are: a raw UTF-8 display name would
			// reach a 7-bit hop as 8-bit octets, which the same message
			// unencrypted is refused for above.
			if de := sevenBitRefusal(sc); de != nil {
				for _, i := range okIdx {
					res[i] = not7Bit(p, de.Reason)
					res[i].Encryption = s.note(rcpts[i])
				}
				return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
			}
		}
	}
	r, err := out.Reopen()
	if err != nil {
		fail("4.3.0", "cannot read spool file: "+err.Error())
		return txnResult{res: res, sessionBroken: true}
	}
	defer r.Close()
	out.Data = r
	var data io.Reader = r
	if e.o.Transform != nil {
		data, err = e.o.Transform(out)
		if err != nil {
			fail("4.3.0", "preparing the message failed: "+err.Error())
			return txnResult{res: res, sessionBroken: p.cl.reset() != nil}
		}
	}
	// LMTP's replies are matched by the address as sent.
	per, err := p.cl.data(data, okWire)
	for k, i := range okIdx {
		// Per-recipient replies (LMTP) take precedence; nil there means
		// accepted, and a recipient without a reply carries the I/O error.
		e := err
		if per != nil {
			e = per[k]
		}
		set(i, e, "end of DATA")
	}
	if err != nil && toReply(err, "") == nil {
		return txnResult{res: res, sessionBroken: true}
	}
	return txnResult{res: res}
}

// not7Bit is the result for a message that a next hop without 8BITMIME
// cannot take and that cannot be converted to 7 bit.
func not7Bit(p *pooled, why string) queue.Result {
	return queue.Result{Status: queue.PermFail, Code: "5.6.3", Relay: p.relay, TLS: p.tls.info, TLSPolicy: p.outcome,
		Reply: fmt.Sprintf("%s does not offer 8BITMIME and the message cannot be converted to 7 bit (%s); not sent", p.relay, why),
		Explanation: "The receiving mail server accepts only messages in plain 7-bit form, and this message could not be converted " +
			"to that form without changing what it says: " + why + ". Nothing was sent. The same text written by another " +
			"mail program, or as an attachment, may get through; your mail administrator can tell you more."}
}

// sevenBitRefusal is why the encrypted copy sc cannot go to a next hop
// without 8BITMIME, or nil when it can. A read error is no refusal: the
// transaction then fails on reading the copy, temporarily.
func sevenBitRefusal(sc *sealed) *downgrade.Error {
	r, err := sc.Open()
	if err != nil {
		return nil
	}
	defer r.Close()
	var de *downgrade.Error
	if _, err := downgrade.Analyze(r); errors.As(err, &de) {
		return de
	}
	return nil
}

// downgrade makes the 7-bit copy of d for a next hop without 8BITMIME, in
// memory or, past spillAt, an unlinked file in SpillDir; nil when the
// message has no 8-bit octet after all. A message that cannot be
// converted is a *downgrade.Error.
func (e *Engine) downgrade(d *queue.Delivery) (*sealed, error) {
	r, err := d.Open()
	if err != nil {
		return nil, fmt.Errorf("cannot read spool file: %w", err)
	}
	plan, err := downgrade.Analyze(r)
	r.Close()
	if err != nil || !plan.Needed() {
		return nil, err
	}
	if r, err = d.Open(); err != nil {
		return nil, fmt.Errorf("cannot read spool file: %w", err)
	}
	defer r.Close()
	out := &sealed{dir: e.o.SpillDir}
	if err := plan.Convert(out, r); err != nil {
		out.Close()
		return nil, err
	}
	return out, nil
}

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
			if (f.Fallback == "bounce" || pol.RequireTLS) && !f.Temporary && !unreached {
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

// decideTLS is the destination's TLS policy for this message: the recipient
// domain for MX delivery; for a route, the recipient domain when a rule
// names it (routing partner mail through a relay must not weaken its
// rule), else the next-hop host (as Postfix looks up
// smtp_tls_policy_maps by next-hop destination).
func (e *Engine) decideTLS(ctx context.Context, ts *tlsState, d *queue.Delivery, t Target, ruleDom string) (*tlspolicy.Policy, string, *queue.Result) {
	dest := t.Addr
	if t.Kind != KindMX {
		dest, _, _ = net.SplitHostPort(t.Addr)
		if ruleDom != "" {
			dest = ruleDom
		}
	}
	// REQUIRETLS binds every relay hop; final delivery of inbound mail to
	// the organisation's own mail store (a route) is where it ends.
	requireTLS := d.Envelope.RequireTLS && (t.Kind == KindMX || d.Envelope.Origin != queue.OriginInbound)
	tlsNo := false
	if ts.honour && !requireTLS {
		tlsNo = tlsRequiredNo(d)
	}
	decide := ts.d.Decide
	if t.Kind != KindMX {
		decide = ts.d.DecideRelay
	}
	pol, err := decide(ctx, dest, requireTLS, tlsNo)
	if err != nil {
		r := &queue.Result{Status: queue.TempFail, Code: "4.4.3", Reply: "TLS policy for " + dest + " could not be decided: " + err.Error()}
		var f *tlspolicy.Failure
		if errors.As(err, &f) {
			r.Code, r.TLSPolicy, r.Explanation = f.Status(false), f.Error(), f.UserText()
		}
		return nil, "", r
	}
	return pol, policyKey(ts.gen, pol), nil
}

// tlsRequiredNo reads the "TLS-Required: No" header field (RFC 8689 §5).
func tlsRequiredNo(d *queue.Delivery) bool {
	r, err := d.Open()
	if err != nil {
		return false
	}
	defer r.Close()
	h, err := dkim.ReadHeader(r, dkim.MaxHeaderBytes)
	if err != nil {
		return false
	}
	for _, v := range smtputil.HeaderFields(h, "TLS-Required") {
		if strings.EqualFold(strings.TrimSpace(v), "no") {
			return true
		}
	}
	return false
}

// policyKey summarises the policy a session is opened under: reuse
// considers only sessions with the same key, so that a session stays with
// the recipient domain and policy generation it was opened for. It is the
// cheap filter, not the guard: what a policy asks of a host (names, TLSA,
// host rules) is only known per host, and reuse checks the live session
// against that (recheck) whatever the key says.
func policyKey(gen uint64, p *tlspolicy.Policy) string {
	return fmt.Sprintf("%d|%s|%s|%s|%v|%v|%v|%v|%d|%v", gen, p.Domain, p.Level, p.Source, p.RequireTLS, p.TLSRequiredNo,
		p.Names, p.Fingerprints, p.MinVersion, p.Ciphers)
}

// tlsFailMemory is how long an MX that failed the TLS policy goes last.
const tlsFailMemory = time.Hour

func (e *Engine) noteTLSFailure(t Target, host string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := time.Now()
	if len(e.tlsFailed) > 10000 {
		for k, at := range e.tlsFailed {
			if now.Sub(at) > tlsFailMemory {
				delete(e.tlsFailed, k)
			}
		}
	}
	e.tlsFailed[t.Addr+" "+host] = now
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
