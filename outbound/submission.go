// Package outbound is the smarthost/submission role (who may relay through
// us, sender binding, the null-sender policy) and the delivery engine
// (routes, MX lookup, the session pool, the TLS policy per destination, the
// SMTP/LMTP client, maildir, the encryption fallback, the 8BITMIME
// downgrade, DKIM signing, DSNs). docs/flow.md walks a message through it.
package outbound

import (
	"bufio"
	"context"
	"net/netip"
	"strings"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dkim"
	"securerelay/queue"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// SubmissionOptions say who may relay through an outbound listener.
type SubmissionOptions struct {
	// Trusted networks relay without AUTH (Postfix's mynetworks).
	Trusted []netip.Prefix
	// Auth: AuthOptional (the zero value), AuthRequired or AuthOff.
	Auth AuthMode
	// ForeignFrom: ForeignFromReject (the zero value) or
	// ForeignFromUnsigned: what to do with mail from an authenticated user
	// whose From: domain is not one of ours.
	ForeignFrom ForeignFrom
	// Ours tells whether a domain is one of ours (receive or sign). nil
	// turns off what depends on it: the foreign_from check and the default
	// sender binding (users without senders or login binding).
	Ours *DomainSet
	// NullSender: NullSenderReject or NullSenderRewrite mail from <> that
	// is not a delivery status or disposition notification; NullSenderAny
	// (the zero value) applies no policy.
	NullSender NullSender
	// NullSenderAddress replaces <> under NullSenderRewrite.
	NullSenderAddress string
	// RecipientKey, when set, refuses a recipient whose mail must always
	// be encrypted and who has no usable OpenPGP key (Engine.RequiredKey).
	RecipientKey func(ctx context.Context, rcpt string) *smtp.SMTPError
}

// recipientKeyTimeout bounds the key lookup at RCPT (WKD over HTTPS, DNS):
// the client waits for the reply meanwhile.
const recipientKeyTimeout = 30 * time.Second

// DomainSet is a reloadable set of domain names.
type DomainSet struct {
	m atomic.Pointer[map[string]bool]
}

// NewDomainSet makes a set of lower-case domain names.
func NewDomainSet(domains []string) *DomainSet {
	d := &DomainSet{}
	d.Set(domains)
	return d
}

// Set replaces the domains (SIGHUP).
func (d *DomainSet) Set(domains []string) {
	m := make(map[string]bool, len(domains))
	for _, x := range domains {
		m[x] = true
	}
	d.m.Store(&m)
}

// Has reports whether domain is in the set.
func (d *DomainSet) Has(domain string) bool {
	return d != nil && (*d.m.Load())[domain]
}

// Submission implements smtpd.Role for outbound listeners.
type Submission struct {
	opts  SubmissionOptions
	users *Users
}

// NewSubmission returns the role for one outbound listener.
func NewSubmission(o SubmissionOptions, users *Users) *Submission {
	return &Submission{opts: o, users: users}
}

// Origin implements smtpd.Role.
func (s *Submission) Origin() string { return queue.OriginOutbound }

// Connect implements smtpd.Role.
func (s *Submission) Connect(*smtpd.State) error { return nil }

// AuthEnabled implements smtpd.Role.
func (s *Submission) AuthEnabled() bool { return s.opts.Auth != AuthOff }

// Authenticate implements smtpd.Role.
func (s *Submission) Authenticate(_ *smtpd.State, user, pass string) error {
	if s.users != nil && s.users.check(user, pass) {
		return nil
	}
	return smtputil.AuthFailed()
}

func (s *Submission) trusted(ip netip.Addr) bool {
	for _, p := range s.opts.Trusted {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// Mail implements smtpd.Role: the relay decision is made here, once per
// transaction, so a stranger is refused before naming any recipient; and
// an authenticated user's envelope sender must be one its account allows
// (MAIL FROM:<> always is: a report's header is checked at DATA).
func (s *Submission) Mail(st *smtpd.State, from string, _ *smtp.MailOptions) (string, error) {
	if st.AuthUser == "" {
		switch {
		case s.opts.Auth == AuthRequired:
			return "", smtpd.Refuse("auth", smtputil.AuthRequired())
		case !s.trusted(st.RemoteIP):
			if s.opts.Auth == AuthOff {
				return "", smtpd.Refuse("trusted_networks", smtputil.RelayNotTrusted(st.RemoteIP.String()))
			}
			return "", smtpd.Refuse("auth", smtputil.AuthRequired())
		}
	}
	canon, err := smtputil.ReversePath(from, st.SMTPUTF8)
	if err != nil {
		return "", smtpd.RefuseErr("address_syntax", err)
	}
	if st.AuthUser == "" || canon == "" {
		return canon, nil
	}
	if why := s.users.lookup(st.AuthUser).refusal(st.AuthUser, canon, s.opts.Ours, false); why != "" {
		return "", smtpd.Refuse("sender_binding", smtputil.SenderNotOwned(canon, st.AuthUser, why),
			"field", "MAIL FROM", "address", canon, "reason", why)
	}
	return canon, nil
}

// Rcpt implements smtpd.Role: any domain, but a well-formed address.
func (s *Submission) Rcpt(st *smtpd.State, to string, _ *smtp.RcptOptions) (string, error) {
	a, err := smtputil.ForwardPath(to, st.SMTPUTF8)
	if err != nil {
		return "", smtpd.RefuseErr("address_syntax", err)
	}
	rcpt := a.String()
	if s.opts.RecipientKey != nil {
		ctx, cancel := context.WithTimeout(context.Background(), recipientKeyTimeout)
		defer cancel()
		if rerr := s.opts.RecipientKey(ctx, rcpt); rerr != nil {
			return "", smtpd.Refuse("without_key", rerr)
		}
	}
	return rcpt, nil
}

// Data implements smtpd.Role. For an authenticated user: every address in
// From:, Sender:, Resent-From: and Resent-Sender: must be one its account
// allows, and the From: domain must be one of ours (so the message can be
// signed), unless the listener sends such mail unsigned: an OTRS or
// Kopano with a wrong sender address is then noticed at once, not
// forwarded unsigned to fail DMARC at the recipient's. For mail from <>:
// the null-sender policy, which only a real report escapes.
func (s *Submission) Data(st *smtpd.State, msg *smtpd.Message) error {
	authed := st.AuthUser != ""
	checkNull := st.From == "" && s.opts.NullSender != NullSenderAny
	if !authed && !checkNull {
		return nil
	}
	r, err := msg.Open()
	if err != nil {
		return err
	}
	// One reader: the header, then (for <>) the body as far as a report
	// part can be.
	br := bufio.NewReader(r)
	header, err := dkim.ReadHeader(br, dkim.MaxHeaderBytes)
	if err != nil {
		return err
	}
	if authed {
		if err := s.checkHeaderSenders(st, header); err != nil {
			return err
		}
	}
	if checkNull {
		if why := checkReport(header, br); why != nil {
			// RFC 5321 §4.5.5 reserves <> for notifications about other
			// mail; a notification or auto-reply sent from <> can never
			// be answered or bounced, and loops between two such systems
			// go unnoticed.
			if s.opts.NullSender != NullSenderRewrite {
				return smtpd.Refuse("null_sender", smtputil.NullSenderRefused(why.Error()), "reason", why.Error())
			}
			msg.NewFrom = s.opts.NullSenderAddress
			msg.AddHeader = "X-Securerelay-Null-Sender: envelope sender <> rewritten to <" + s.opts.NullSenderAddress + ">\r\n"
			if st.Log != nil {
				st.Log.Info("null sender rewritten", "from", s.opts.NullSenderAddress, "reason", why.Error())
			}
		}
	}
	if !authed || s.opts.ForeignFrom == ForeignFromUnsigned || s.opts.Ours == nil {
		return nil
	}
	dom, err := dkim.FromDomain(header)
	if err != nil {
		return smtpd.Refuse("foreign_from", smtputil.FromUnusable(err.Error()), "reason", err.Error())
	}
	if !s.opts.Ours.Has(dom) {
		return smtpd.Refuse("foreign_from", smtputil.FromNotOurs(dom), "domain", dom)
	}
	return nil
}

// checkHeaderSenders applies the sender binding to the header fields:
// every address of every From:, Sender:, Resent-From: and Resent-Sender:
// field (a From: with several mailboxes, or several From: fields, cannot
// slip one past). A field that does not parse cannot be checked and is
// refused: a mail client may still show an address from it.
func (s *Submission) checkHeaderSenders(st *smtpd.State, header []byte) error {
	acct := s.users.lookup(st.AuthUser)
	foreignOK := s.opts.ForeignFrom == ForeignFromUnsigned
	for _, name := range senderFields {
		for _, v := range smtputil.HeaderFields(header, name) {
			if strings.TrimSpace(v) == "" {
				continue // names nobody
			}
			list, err := headerParser.ParseList(v)
			if err != nil {
				return smtpd.Refuse("sender_binding", smtputil.HeaderSenderUnparsable(name, err.Error(), st.AuthUser),
					"field", name, "reason", err.Error())
			}
			for _, a := range list {
				if why := acct.refusal(st.AuthUser, a.Address, s.opts.Ours, foreignOK); why != "" {
					return smtpd.Refuse("sender_binding", smtputil.HeaderSenderNotOwned(name, a.Address, st.AuthUser, why),
						"field", name, "address", a.Address, "reason", why)
				}
			}
		}
	}
	return nil
}
