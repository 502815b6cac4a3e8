// Package inbound is the MX role: it accepts mail only for our own domains,
// screens clients at EHLO (screen.go), checks the envelope at MAIL and RCPT
// (role.go, checks.go, tlsfrom.go, verify.go) and the content after DATA
// (content.go: attachment policy, then SPF/DKIM/DMARC, then milters), all
// inside the SMTP dialog, so that nothing has to be bounced afterwards.
// docs/flow.md walks a message through these stages in order.
package inbound

import (
	"errors"
	"log/slog"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil"
	"securerelay/queue"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// Role implements smtpd.Role for MX listeners.
type Role struct {
	domains    atomic.Pointer[map[string]bool]
	recipients atomic.Pointer[map[string]*RecipientSet]
	verifiers  atomic.Pointer[map[string]*Verifier]
	tlsFrom    atomic.Pointer[[]TLSFrom]
	content    atomic.Pointer[Content]
	resolver   dnsutil.Resolver
	checks     Checks
	screen     Screen
	passed     *PassCache
	log        *slog.Logger
	postmaster string
	maxMail    int
}

// session is the role's per-session state (smtpd.State.Data). STARTTLS
// starts a new one, as it starts a new SMTP session (RFC 3207 §4.2).
type session struct {
	// deepPending: the client must still show that it retries (the deep
	// protocol test, screen.go).
	deepPending bool
	// mails counts the MAIL commands of the session.
	mails int
}

func sessionOf(st *smtpd.State) *session {
	if st == nil {
		return &session{}
	}
	s, ok := st.Data.(*session)
	if !ok {
		s = &session{}
		st.Data = s
	}
	return s
}

// New returns an inbound role accepting mail for domains (lower case, no
// trailing dot) with every check at its default and no DNS check.
func New(domains []string) *Role {
	return NewWithOptions(Options{Domains: domains})
}

// NewWithOptions returns an inbound role with its envelope checks.
func NewWithOptions(o Options) *Role {
	r := &Role{resolver: o.Resolver, checks: o.Checks, screen: o.Screen, log: o.Log, postmaster: o.Postmaster,
		maxMail: o.MaxMailPerSession}
	r.passed = o.PassCache
	if r.passed == nil {
		r.passed = NewPassCache()
	}
	if r.screen.DNSBL.Timeout <= 0 {
		r.screen.DNSBL.Timeout = 2 * time.Second
	}
	if r.screen.DNSBL.Threshold <= 0 {
		r.screen.DNSBL.Threshold = 3
	}
	r.SetDomains(o.Domains)
	r.SetRecipients(o.Recipients)
	r.SetVerifiers(o.Verifiers)
	r.SetTLSFrom(o.TLSFrom)
	return r
}

// SetVerifiers replaces the recipient probes (SIGHUP); their caches start
// empty.
func (r *Role) SetVerifiers(m map[string]*Verifier) {
	if m == nil {
		m = map[string]*Verifier{}
	}
	r.verifiers.Store(&m)
}

// SetRecipients replaces the recipient sets (SIGHUP).
func (r *Role) SetRecipients(m map[string]*RecipientSet) {
	if m == nil {
		m = map[string]*RecipientSet{}
	}
	r.recipients.Store(&m)
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

// AuthEnabled implements smtpd.Role: no AUTH on an MX.
func (r *Role) AuthEnabled() bool { return false }

// Authenticate implements smtpd.Role.
func (r *Role) Authenticate(*smtpd.State, string, string) error { return smtputil.AuthNotOffered() }

// Mail implements smtpd.Role: a fully qualified sender whose domain
// exists. The null sender is always valid (RFC 5321 §4.5.5). SPF waits
// for the first accepted recipient (spfOnce).
func (r *Role) Mail(st *smtpd.State, from string, _ *smtp.MailOptions) (string, error) {
	if s := sessionOf(st); r.maxMail > 0 {
		// Each MAIL may cost DNS questions (the sender's domain, SPF at
		// the first recipient); RSET must not repeat them without end.
		if s.mails++; s.mails > r.maxMail {
			return "", smtpd.Refuse("max_mail_per_session", smtputil.TooManyTransactions(r.maxMail), "limit", r.maxMail)
		}
	}
	if err := r.deepCheck(st); err != nil {
		return "", err
	}
	if from == "" {
		return "", r.plaintextPartner(st, "")
	}
	if strings.IndexFunc(from, func(c rune) bool { return c < 0x20 || c == 0x7f }) >= 0 {
		return "", smtpd.Refuse("address_syntax", smtputil.SenderControlChars(from))
	}
	a, err := smtputil.ParseMailbox(from, st != nil && st.SMTPUTF8)
	if isNotFQDN(err) {
		// "off" lets user@host through; a sender with no domain at all
		// never: downstream MTAs would qualify it with their own domain
		// and take a stranger's mail for internal.
		action := r.checks.SenderFQDN
		if !strings.Contains(from, "@") {
			action = ActionReject
		}
		if err := r.act("sender_fqdn", action, smtputil.NotFQDNSender(from)); err != nil {
			return "", err
		}
		return from, nil
	}
	if err != nil {
		return "", smtpd.Refuse("address_syntax", smtputil.AddressReply(err, true))
	}
	if err := r.plaintextPartner(st, a.Domain); err != nil {
		return "", err
	}
	if err := r.senderDomain(a.Domain); err != nil {
		return "", err
	}
	return a.String(), nil
}

// notOurs refuses a recipient this server must not take mail for: an IP
// literal or a domain not ours (it would relay), or a local part that a
// downstream MTA could read as a route elsewhere. check names the
// refusal (smtpd logs and counts it under that name). Rcpt and the
// recipients a milter adds both pass it.
func (r *Role) notOurs(a smtputil.Address) (check string, refusal *smtp.SMTPError) {
	if a.IsIPLiteral() || !(*r.domains.Load())[a.Domain] {
		return "relay", smtputil.RelayDenied(a.Domain)
	}
	if why := smtputil.RoutingTrick(a); why != "" {
		return "routing_trick", smtputil.RoutingTrickReply(why)
	}
	return "", nil
}

// Rcpt implements smtpd.Role: only our domains, no local part that a
// downstream MTA could read as a route elsewhere, and a recipient that
// exists when the domain lists its recipients.
func (r *Role) Rcpt(st *smtpd.State, to string, _ *smtp.RcptOptions) (string, error) {
	if strings.EqualFold(to, "postmaster") && r.postmaster != "" {
		// RFC 5321 4.1.1.3: the one unqualified recipient every server
		// must take, whatever the other checks say: it is how a blocked
		// sender reaches a human.
		if st != nil && st.Log != nil {
			st.Log.Info("bare postmaster recipient", "rcpt", to, "routed_to", r.postmaster)
		}
		if err := r.splitPolicy(st, strings.ToLower(r.postmaster[strings.LastIndexByte(r.postmaster, '@')+1:])); err != nil {
			return "", err
		}
		if err := r.spfOnce(st); err != nil {
			return "", err
		}
		return r.postmaster, nil
	}
	a, err := smtputil.ParseMailbox(to, st != nil && st.SMTPUTF8)
	if isNotFQDN(err) {
		if err := r.act("recipient_fqdn", r.checks.RecipientFQDN, smtputil.NotFQDNRecipient(to)); err != nil {
			return "", err
		}
		// Without a domain it cannot be one of ours either.
		return "", smtpd.Refuse("relay", smtputil.RelayDenied(to))
	}
	if err != nil {
		return "", smtpd.Refuse("address_syntax", smtputil.AddressReply(err, false))
	}
	if check, refusal := r.notOurs(a); refusal != nil {
		return "", smtpd.Refuse(check, refusal)
	}
	if set := (*r.recipients.Load())[a.Domain]; set != nil {
		if !set.Has(a) {
			if err := r.act("unknown_recipient", r.checks.UnknownRecipient, smtputil.RecipientUnknown(a.String())); err != nil {
				return "", err
			}
		}
	} else if v := (*r.verifiers.Load())[a.Domain]; v != nil && r.checks.UnknownRecipient != ActionOff {
		exists, err := v.Exists(a.String())
		switch {
		case errors.Is(err, errNoSMTPUTF8):
			// In the dialog, not after our 250: the message could only
			// be held (RFC 6531 §3.2 allows no downgrade of it).
			return "", smtpd.Refuse("verify", smtputil.DownstreamNoSMTPUTF8(a.String()), "error", err.Error())
		case err != nil:
			// Never a silent accept: the sender retries until the
			// downstream can answer. A warning: the downstream is down.
			ref := smtpd.Refuse("verify", smtputil.RecipientVerifyTempFail(a.String()), "error", err.Error())
			ref.Level = slog.LevelWarn
			return "", ref
		case !exists:
			if err := r.act("unknown_recipient", r.checks.UnknownRecipient, smtputil.RecipientUnknown(a.String())); err != nil {
				return "", err
			}
		}
	}
	if err := r.splitPolicy(st, a.Domain); err != nil {
		return "", err
	}
	if err := r.spfOnce(st); err != nil {
		return "", err
	}
	return a.String(), nil
}
