// Package inbound is the MX role: it accepts mail only for our own domains,
// screens clients at EHLO, checks the envelope at MAIL and RCPT and the
// content after DATA, all inside the SMTP dialog, so that nothing has to
// be bounced afterwards. pipeline.go lists every stage in the order it
// runs; the stages live in screen.go (screening), role.go, checks.go,
// tlsfrom.go and verify.go (the envelope), content.go (attachment policy,
// SPF/DKIM/DMARC, milters) and clientname.go (the client name the
// milters are told). docs/flow.md walks a message through them.
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

// Checks are the envelope checks' actions (ActionDefault: reject).
type Checks struct {
	SenderFQDN, RecipientFQDN, SenderDomain, UnknownRecipient Action
	// HeloFQDN is off unless set (many legitimate servers fail it).
	HeloFQDN Action
}

// Options configure the inbound role beyond its domains.
type Options struct {
	Domains []string
	// Recipients, per domain, that exist; a domain without an entry
	// accepts every local part.
	Recipients map[string]*RecipientSet
	// Verifiers, per domain without a list: recipients are verified
	// downstream by an RCPT probe.
	Verifiers map[string]*Verifier
	// Resolver for the sender-domain check; nil skips it.
	Resolver dnsutil.Resolver
	Checks   Checks
	Screen   Screen
	Log      *slog.Logger
	// Postmaster receives RCPT TO:<Postmaster> without a domain, which
	// RFC 5321 section 4.1.1.3 says every server MUST accept. Empty: the
	// bare form is refused like any unqualified recipient.
	Postmaster string
	// TLSFrom lists partner domains whose mail must arrive over TLS.
	TLSFrom []TLSFrom
	// PassCache is shared by the inbound listeners and may be kept in a
	// file; nil: a cache in memory for this role alone.
	PassCache *PassCache
	// MaxMailPerSession ends a session at the MAIL command over it (421
	// 4.7.0); 0: no limit.
	MaxMailPerSession int
}

// session is the role's per-session state (smtpd.State.Data). STARTTLS
// starts a new one, as it starts a new SMTP session (RFC 3207 §4.2).
type session struct {
	// deepPending: the client must still show that it retries (the deep
	// protocol test, screen.go).
	deepPending bool
	// mails counts the MAIL commands of the session.
	mails int
	// name is the client's reverse DNS for the milters (clientname.go).
	name *nameLookup
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

// mailCountStage: each MAIL may cost DNS questions (the sender's domain,
// SPF at the first recipient); RSET must not repeat them without end.
func (r *Role) mailCountStage(p *pass, check string) error {
	if s := sessionOf(p.st); r.maxMail > 0 {
		if s.mails++; s.mails > r.maxMail {
			return smtpd.Refuse(check, smtputil.TooManyTransactions(r.maxMail), "limit", r.maxMail)
		}
	}
	return nil
}

// senderSyntaxStage parses the sender; UTF-8 only with SMTPUTF8. A
// sender without a dot in its domain is left to sender_fqdn.
func (r *Role) senderSyntaxStage(p *pass, check string) error {
	from := p.raw
	if from == "" {
		return nil
	}
	if strings.IndexFunc(from, func(c rune) bool { return c < 0x20 || c == 0x7f }) >= 0 {
		return smtpd.Refuse(check, smtputil.SenderControlChars(from))
	}
	a, err := smtputil.ParseMailbox(from, p.st != nil && p.st.SMTPUTF8)
	if isNotFQDN(err) {
		p.notFQDN = true
		return nil
	}
	if err != nil {
		return smtpd.Refuse(check, smtputil.AddressReply(err, true))
	}
	p.addr, p.out = a, a.String()
	return nil
}

// senderFQDNStage: "off" lets user@host through; a sender with no domain
// at all never: downstream MTAs would qualify it with their own domain
// and take a stranger's mail for internal.
func (r *Role) senderFQDNStage(p *pass, check string) error {
	if !p.notFQDN {
		return nil
	}
	action := r.checks.SenderFQDN
	if !strings.Contains(p.raw, "@") {
		action = ActionReject
	}
	if err := r.act(check, action, smtputil.NotFQDNSender(p.raw)); err != nil {
		return err
	}
	p.out, p.done = p.raw, true
	return nil
}

// partnerStage: a partner's mail in clear (tlsfrom.go); for <> by the
// EHLO name alone.
func (r *Role) partnerStage(p *pass, check string) error {
	return r.plaintextPartner(p.st, p.addr.Domain, check)
}

func (r *Role) senderDomainStage(p *pass, check string) error {
	if p.raw == "" {
		return nil
	}
	return r.senderDomain(p.addr.Domain, check)
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

// postmasterStage: RFC 5321 4.1.1.3: the one unqualified recipient
// every server must take, whatever the other checks say: it is how a
// blocked sender reaches a human.
func (r *Role) postmasterStage(p *pass, _ string) error {
	if !strings.EqualFold(p.raw, "postmaster") || r.postmaster == "" {
		return nil
	}
	if p.st != nil && p.st.Log != nil {
		p.st.Log.Info("bare postmaster recipient", "rcpt", p.raw, "routed_to", r.postmaster)
	}
	p.bare, p.out = true, r.postmaster
	p.addr.Domain = strings.ToLower(r.postmaster[strings.LastIndexByte(r.postmaster, '@')+1:])
	return nil
}

// rcptSyntaxStage parses the recipient; one without a dot in its domain
// is left to recipient_fqdn.
func (r *Role) rcptSyntaxStage(p *pass, check string) error {
	if p.bare {
		return nil
	}
	a, err := smtputil.ParseMailbox(p.raw, p.st != nil && p.st.SMTPUTF8)
	if isNotFQDN(err) {
		p.notFQDN = true
		return nil
	}
	if err != nil {
		return smtpd.Refuse(check, smtputil.AddressReply(err, false))
	}
	p.addr, p.out = a, a.String()
	return nil
}

func (r *Role) recipientFQDNStage(p *pass, check string) error {
	if !p.notFQDN {
		return nil
	}
	if err := r.act(check, r.checks.RecipientFQDN, smtputil.NotFQDNRecipient(p.raw)); err != nil {
		return err
	}
	// Without a domain it cannot be one of ours either.
	return smtpd.Refuse("relay", smtputil.RelayDenied(p.raw))
}

// relayStage: only our domains, no local part that a downstream MTA
// could read as a route elsewhere (notOurs names the check).
func (r *Role) relayStage(p *pass, _ string) error {
	if p.bare {
		return nil
	}
	if check, refusal := r.notOurs(p.addr); refusal != nil {
		return smtpd.Refuse(check, refusal)
	}
	return nil
}

// recipientStage: a recipient that exists, when the domain lists its
// recipients or has them verified downstream.
func (r *Role) recipientStage(p *pass, check string) error {
	if p.bare {
		return nil
	}
	a := p.addr
	if set := (*r.recipients.Load())[a.Domain]; set != nil {
		if !set.Has(a) {
			return r.act(check, r.checks.UnknownRecipient, smtputil.RecipientUnknown(a.String()))
		}
	} else if v := (*r.verifiers.Load())[a.Domain]; v != nil && r.checks.UnknownRecipient != ActionOff {
		exists, err := v.Exists(a.String())
		switch {
		case errors.Is(err, errNoSMTPUTF8):
			// In the dialog, not after our 250: the message could only
			// be held (RFC 6531 §3.2 allows no downgrade of it).
			return smtpd.Refuse("verify", smtputil.DownstreamNoSMTPUTF8(a.String()), "error", err.Error())
		case err != nil:
			// Never a silent accept: the sender retries until the
			// downstream can answer. A warning: the downstream is down.
			ref := smtpd.Refuse("verify", smtputil.RecipientVerifyTempFail(a.String()), "error", err.Error())
			ref.Level = slog.LevelWarn
			return ref
		case !exists:
			return r.act(check, r.checks.UnknownRecipient, smtputil.RecipientUnknown(a.String()))
		}
	}
	return nil
}
