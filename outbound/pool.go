package outbound

// The session pool: one dest per destination key (the concurrency limit
// and its idle sessions), and the reuse of an idle session only when it
// still meets the TLS policy of the transaction that would take it.

import (
	"context"
	"slices"
	"time"

	"securerelay/tlspolicy"
)

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
