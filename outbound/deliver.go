package outbound

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"securerelay/dnsutil"
	"securerelay/queue"
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
	// StartTLS enables opportunistic STARTTLS; it is the default TLS level
	// (TLSMay, or TLSNone when false) when TLSLevel is nil.
	StartTLS bool
	// TLSLevel decides the level per target (the TLS policy seam).
	TLSLevel func(Target) TLSLevel
	// Transform, if set, rewrites the message per transaction.
	Transform Transform
	// MXPort is the port of MX hosts: "25" in real life.
	MXPort string
	Logger *slog.Logger
}

// Engine implements queue.Deliverer.
type Engine struct {
	o      EngineOptions
	router atomic.Pointer[Router]

	mu    sync.Mutex
	dests map[string]*dest
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

type pooled struct {
	cl    client
	relay string
	since time.Time
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
	if o.TLSLevel == nil {
		lvl := TLSNone
		if o.StartTLS {
			lvl = TLSMay
		}
		o.TLSLevel = func(Target) TLSLevel { return lvl }
	}
	e := &Engine{o: o, dests: map[string]*dest{}}
	e.router.Store(r)
	return e
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
		idx []int
	}
	var groups []*group
	byKey := map[string]*group{}
	for i, rc := range d.Rcpts {
		dom := strings.ToLower(rc[strings.LastIndexByte(rc, '@')+1:])
		t := router.Route(dom)
		g := byKey[t.Key()]
		if g == nil {
			g = &group{t: t}
			byKey[t.Key()] = g
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
		if g.t.Kind == "maildir" {
			gr = deliverMaildir(g.t.Addr, e.o.Helo, d, rcpts)
		} else {
			gr = e.deliverRemote(ctx, d, g.t, rcpts)
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

func (e *Engine) deliverRemote(ctx context.Context, d *queue.Delivery, t Target, rcpts []string) []queue.Result {
	ds := e.dest(t.Key())
	defer e.releaseDest(ds)
	select {
	case ds.sem <- struct{}{}:
	case <-ctx.Done():
		return all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.3.2", Reply: "shutting down"})
	}
	defer func() { <-ds.sem }()

	for try := 0; ; try++ {
		p, reused := e.idleConn(ds)
		if p == nil {
			var fail *queue.Result
			p, fail = e.connect(ctx, t)
			if fail != nil {
				return all(len(rcpts), *fail)
			}
		}
		// queue.Deliverer: return promptly when ctx is cancelled. The
		// time-outs allow a next hop 10 minutes after the dot (and go-smtp's
		// LMTP client sets none while sending), so closing the connection
		// is what ends a transaction in progress; its recipients then
		// fail temporarily as with any lost connection.
		stop := context.AfterFunc(ctx, p.cl.abort)
		res, broken, stale := e.transact(d, t, p, rcpts)
		if !stop() {
			broken, stale = true, false
		}
		if stale && reused && try == 0 {
			// A pooled session the peer had already closed: not a real
			// failure, try once more on a fresh connection.
			p.cl.quit()
			continue
		}
		if broken || e.o.IdleTimeout <= 0 {
			p.cl.quit()
		} else {
			e.release(ds, p)
		}
		return res
	}
}

func (e *Engine) idleConn(ds *dest) (*pooled, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for len(ds.idle) > 0 {
		p := ds.idle[len(ds.idle)-1]
		ds.idle = ds.idle[:len(ds.idle)-1]
		if time.Since(p.since) < e.o.IdleTimeout {
			return p, true
		}
		go p.cl.quit()
	}
	return nil, false
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

// transact runs one MAIL/RCPT/DATA. broken reports that the session cannot
// be reused; stale that it failed on its very first command without a reply
// (a pooled session the peer had closed), so nothing was sent.
func (e *Engine) transact(d *queue.Delivery, t Target, p *pooled, rcpts []string) (res []queue.Result, broken, stale bool) {
	tlsInfo := p.cl.tlsInfo()
	// Every recipient starts as a temporary failure: only a reply to the
	// end of DATA may turn one into Delivered.
	res = all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.4.2", Relay: p.relay, TLS: tlsInfo,
		Reply: "transaction with " + p.relay + " did not complete"})
	if lvl := e.o.TLSLevel(t); lvl >= TLSEncrypt && tlsInfo == "" {
		// open() never hands out such a session; this is the last line of
		// defence for a policy that changed while a session sat in the pool.
		return all(len(rcpts), queue.Result{Status: queue.TempFail, Code: "4.7.5", Relay: p.relay,
			Reply: fmt.Sprintf("TLS level %s required for %s, session is not encrypted; not sent", lvl, t.Addr)}), true, false
	}
	set := func(i int, err error, stage string) {
		r := queue.Result{Relay: p.relay, TLS: tlsInfo}
		if err == nil {
			r.Status, r.Code, r.Reply = queue.Delivered, "2.0.0", "accepted after "+stage
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
	setAll := func(err error, stage string) {
		for i := range rcpts {
			set(i, err, stage)
		}
	}
	if err := p.cl.mail(d.Envelope.From); err != nil {
		setAll(err, "MAIL FROM")
		if toReply(err, "") == nil {
			return res, true, true
		}
		return res, p.cl.reset() != nil, false
	}
	var ok []string
	var okIdx []int
	for i, rc := range rcpts {
		if err := p.cl.rcpt(rc); err != nil {
			set(i, err, "RCPT TO")
			if toReply(err, "") == nil {
				// The connection is gone: recipients accepted so far never
				// got their DATA, later ones were never asked.
				for j := range rcpts {
					if j != i && (j > i || res[j].Status != queue.PermFail) {
						set(j, err, "RCPT TO")
					}
				}
				return res, true, false
			}
			continue
		}
		ok = append(ok, rc)
		okIdx = append(okIdx, i)
	}
	if len(ok) == 0 {
		return res, p.cl.reset() != nil, false
	}
	r, err := d.Open()
	if err != nil {
		for _, i := range okIdx {
			res[i] = queue.Result{Status: queue.TempFail, Code: "4.3.0", Reply: "cannot read spool file: " + err.Error(), Relay: p.relay}
		}
		return res, true, false
	}
	defer r.Close()
	var data io.Reader = r
	if e.o.Transform != nil {
		data, err = e.o.Transform(d, t, ok, tlsInfo, r)
		if err != nil {
			for _, i := range okIdx {
				res[i] = queue.Result{Status: queue.TempFail, Code: "4.3.0", Relay: p.relay, TLS: tlsInfo,
					Reply: "preparing the message failed: " + err.Error()}
			}
			return res, p.cl.reset() != nil, false
		}
	}
	per, err := p.cl.data(data, ok)
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
		return res, true, false
	}
	return res, false, false
}

// connect opens a session to t: the fixed next hop, or the MX hosts of the
// domain in preference order (RFC 5321 §5.1), each of their addresses in
// turn, moving on after a connection failure or a 4xx greeting.
func (e *Engine) connect(ctx context.Context, t Target) (*pooled, *queue.Result) {
	var hosts []string
	port := e.o.MXPort
	switch t.Kind {
	case "smtp", "lmtp":
		h, p, err := net.SplitHostPort(t.Addr)
		if err != nil {
			return nil, &queue.Result{Status: queue.TempFail, Code: "4.3.5", Reply: "bad next hop " + t.Addr + ": " + err.Error()}
		}
		hosts, port = []string{h}, p
	case "mx":
		mx, err := dnsutil.MXTargets(ctx, e.o.Resolver, t.Addr)
		if err != nil {
			return nil, dnsFailure(t.Addr, err)
		}
		hosts = mx
	}
	var lastErr error
	lastRelay := ""
	for _, h := range hosts {
		addrs, err := e.addrs(ctx, h, t.Kind != "mx")
		if err != nil {
			lastErr, lastRelay = err, h
			continue
		}
		for _, a := range addrs {
			relay := fmt.Sprintf("%s[%s]:%s", h, a, port)
			p, err := e.open(ctx, t, h, net.JoinHostPort(a.String(), port), relay)
			if err == nil {
				return p, nil
			}
			lastErr, lastRelay = err, relay
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
	var tre *tlsRequiredError
	if errors.As(lastErr, &tre) {
		r.Code = "4.7.10"
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
	return nil, r
}

// addrs resolves a next hop. "localhost" is taken literally only for a
// next hop the admin configured: an MX record naming localhost is a
// hostile or broken domain's, and must not make us connect to ourselves.
func (e *Engine) addrs(ctx context.Context, host string, configured bool) ([]netip.Addr, error) {
	if a, err := netip.ParseAddr(host); err == nil {
		return []netip.Addr{a}, nil
	}
	if host == "localhost" && configured {
		return []netip.Addr{netip.MustParseAddr("127.0.0.1")}, nil
	}
	return e.o.Resolver.LookupHost(ctx, host)
}

func (e *Engine) open(ctx context.Context, t Target, host, addr, relay string) (*pooled, error) {
	level := e.o.TLSLevel(t)
	starttls := level >= TLSMay && t.Kind != "lmtp"
	required := level >= TLSEncrypt
	if required && t.Kind == "lmtp" {
		return nil, &tlsRequiredError{"LMTP delivery has no STARTTLS here"}
	}
	for {
		dctx, cancel := context.WithTimeout(ctx, e.o.ConnectTimeout)
		conn, err := e.o.Dial(dctx, "tcp", addr)
		cancel()
		if err != nil {
			return nil, err
		}
		var cl client
		if t.Kind == "lmtp" {
			cl, err = newLMTPClient(conn, e.o.Helo, e.o.CommandTimeout)
		} else {
			var tlsFailed bool
			var sc *smtpClient
			sc, tlsFailed, err = newSMTPClient(conn, host, e.o.Helo, e.o.CommandTimeout, starttls, required, t.Auth)
			if tlsFailed && starttls && !required {
				e.o.Logger.Info("STARTTLS failed, retrying in clear (opportunistic TLS)", "relay", relay, "error", err)
				starttls = false
				continue
			}
			if err == nil {
				cl = sc
			}
		}
		if err != nil {
			return nil, err
		}
		return &pooled{cl: cl, relay: relay}, nil
	}
}

func dnsFailure(domain string, err error) *queue.Result {
	switch {
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
