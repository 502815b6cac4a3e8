// Package inbound is the MX role: it accepts mail only for our own domains
// and (in later stages) screens clients and checks envelopes and content
// inside the SMTP dialog, so that nothing has to be bounced afterwards.
package inbound

import (
	"sync/atomic"

	"github.com/emersion/go-smtp"

	"securerelay/queue"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// Role implements smtpd.Role for MX listeners.
type Role struct {
	domains atomic.Pointer[map[string]bool]
}

// New returns an inbound role accepting mail for domains (lower case, no
// trailing dot).
func New(domains []string) *Role {
	r := &Role{}
	r.SetDomains(domains)
	return r
}

// SetDomains replaces the list of our domains (SIGHUP); sessions in flight
// see the new list from their next RCPT on.
func (r *Role) SetDomains(domains []string) {
	m := make(map[string]bool, len(domains))
	for _, d := range domains {
		m[d] = true
	}
	r.domains.Store(&m)
}

// Origin implements smtpd.Role: inbound mail is never bounced.
func (r *Role) Origin() string { return queue.OriginInbound }

// Connect implements smtpd.Role; screening will hook in here.
func (r *Role) Connect(*smtpd.State) error { return nil }

// AuthEnabled implements smtpd.Role: no AUTH on an MX.
func (r *Role) AuthEnabled() bool { return false }

// Authenticate implements smtpd.Role.
func (r *Role) Authenticate(*smtpd.State, string, string) error { return smtp.ErrAuthUnsupported }

// Mail implements smtpd.Role.
func (r *Role) Mail(_ *smtpd.State, from string, _ *smtp.MailOptions) (string, error) {
	return smtputil.ReversePath(from)
}

// Rcpt implements smtpd.Role: only our domains, and no local part that a
// downstream MTA could read as a route elsewhere.
func (r *Role) Rcpt(_ *smtpd.State, to string, _ *smtp.RcptOptions) (string, error) {
	a, err := smtputil.ForwardPath(to)
	if err != nil {
		return "", err
	}
	if a.IsIPLiteral() || !(*r.domains.Load())[a.Domain] {
		return "", smtputil.RelayDenied(a.Domain)
	}
	if why := smtputil.RoutingTrick(a); why != "" {
		return "", smtputil.RoutingTrickReply(why)
	}
	return a.String(), nil
}

// Data implements smtpd.Role; content scanning will hook in here.
func (r *Role) Data(*smtpd.State, *smtpd.Message) error { return nil }
