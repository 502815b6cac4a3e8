package outbound

// The TLS decision per delivery: which policy applies (recipient domain
// or next hop, REQUIRETLS, TLS-Required: No), the key sessions are
// pooled under, and the memory of MX hosts that failed the policy.

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"securerelay/dkim"
	"securerelay/queue"
	"securerelay/smtputil"
	"securerelay/tlspolicy"
)

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
