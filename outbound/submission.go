// Package outbound is the smarthost/submission role (who may relay through
// us) and the delivery engine (routes, MX lookup, the SMTP/LMTP client,
// maildir, DSNs).
package outbound

import (
	"bufio"
	"net/netip"
	"sync"
	"sync/atomic"

	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"

	"securerelay/dkim"
	"securerelay/queue"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// SubmissionOptions say who may relay through an outbound listener.
type SubmissionOptions struct {
	// Trusted networks relay without AUTH (Postfix's mynetworks).
	Trusted []netip.Prefix
	// Auth: "required", "optional" or "off".
	Auth string
	// ForeignFrom: "reject" (default) or "unsigned": what to do with mail
	// from an authenticated user whose From: domain is not one of ours.
	ForeignFrom string
	// Ours tells whether a domain is one of ours (receive or sign).
	Ours *DomainSet
	// NullSender: "reject" or "rewrite" mail from <> that is not a
	// delivery status or disposition notification; "" applies no policy.
	NullSender string
	// NullSenderAddress replaces <> under "rewrite".
	NullSenderAddress string
}

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
	count counters
}

// Users is the shared, reloadable table of SMTP AUTH accounts.
type Users struct {
	m atomic.Pointer[map[string][]byte]
}

// NewUsers makes a table from name → bcrypt hash.
func NewUsers(hashes map[string]string) *Users {
	u := &Users{}
	u.Set(hashes)
	return u
}

// Set replaces the accounts (SIGHUP).
func (u *Users) Set(hashes map[string]string) {
	m := make(map[string][]byte, len(hashes))
	for k, v := range hashes {
		m[k] = []byte(v)
	}
	u.m.Store(&m)
}

// dummyHash keeps the time of a login for an unknown user the same as for
// a wrong password, so that user names cannot be probed by timing.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("securerelay-dummy"), bcrypt.DefaultCost)

func (u *Users) check(user, pass string) bool {
	h, ok := (*u.m.Load())[user]
	if !ok {
		bcrypt.CompareHashAndPassword(dummyHash, []byte(pass))
		return false
	}
	return bcrypt.CompareHashAndPassword(h, []byte(pass)) == nil
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
func (s *Submission) AuthEnabled() bool { return s.opts.Auth != "off" }

// Authenticate implements smtpd.Role.
func (s *Submission) Authenticate(_ *smtpd.State, user, pass string) error {
	if s.users != nil && s.users.check(user, pass) {
		return nil
	}
	return smtp.ErrAuthFailed
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
// transaction, so a stranger is refused before naming any recipient.
func (s *Submission) Mail(st *smtpd.State, from string, _ *smtp.MailOptions) (string, error) {
	if st.AuthUser == "" {
		switch {
		case s.opts.Auth == "required":
			return "", smtputil.AuthRequired()
		case !s.trusted(st.RemoteIP):
			if s.opts.Auth == "off" {
				return "", &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1},
					Message: "relay access denied: client " + st.RemoteIP.String() + " is not in this listener's trusted_networks"}
			}
			return "", smtputil.AuthRequired()
		}
	}
	return smtputil.ReversePath(from)
}

// Rcpt implements smtpd.Role: any domain, but a well-formed address.
func (s *Submission) Rcpt(_ *smtpd.State, to string, _ *smtp.RcptOptions) (string, error) {
	a, err := smtputil.ForwardPath(to)
	if err != nil {
		return "", err
	}
	return a.String(), nil
}

// Data implements smtpd.Role. An authenticated user may only send mail
// From: one of our domains (so the message can be signed), unless the
// listener sends such mail unsigned: an OTRS or Kopano with a wrong sender
// address is then noticed at once, not forwarded unsigned to fail DMARC at
// the recipient's. For mail from <>: the null-sender policy, which only a
// real report escapes.
func (s *Submission) Data(st *smtpd.State, msg *smtpd.Message) error {
	authed := st.AuthUser != "" && s.opts.ForeignFrom != "unsigned" && s.opts.Ours != nil
	checkNull := st.From == "" && s.opts.NullSender != ""
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
	if checkNull {
		if why := checkReport(header, br); why != nil {
			// RFC 5321 §4.5.5 reserves <> for notifications about other
			// mail; a notification or auto-reply sent from <> can never
			// be answered or bounced, and loops between two such systems
			// go unnoticed.
			if s.opts.NullSender != "rewrite" {
				s.refused(st, "null_sender", "reason", why.Error())
				return smtputil.Reply(550, 5, 7, 1, "null sender refused: MAIL FROM:<> is reserved for delivery status "+
					"and disposition notifications, and this is none (%v); set a sender address (such as noreply@your.domain) "+
					"in the sending application", why)
			}
			msg.NewFrom = s.opts.NullSenderAddress
			msg.AddHeader = "X-Securerelay-Null-Sender: envelope sender <> rewritten to <" + s.opts.NullSenderAddress + ">\r\n"
			if st.Log != nil {
				st.Log.Info("null sender rewritten", "from", s.opts.NullSenderAddress, "reason", why.Error())
			}
		}
	}
	if !authed {
		return nil
	}
	dom, err := dkim.FromDomain(header)
	if err != nil {
		s.refused(st, "foreign_from", "reason", err.Error())
		return smtputil.Reply(553, 5, 7, 1, "message refused: no usable From: header (%v); set a sender address in the sending application", err)
	}
	if !s.opts.Ours.Has(dom) {
		s.refused(st, "foreign_from", "domain", dom)
		return smtputil.Reply(553, 5, 7, 1, "message refused: the From: domain %s is not one of this relay's domains, so it cannot be signed; fix the sender address in the sending application", dom)
	}
	return nil
}

// refused logs and counts one refusal of an outbound check, named as in
// the configuration (sender_binding, null_sender, foreign_from).
func (s *Submission) refused(st *smtpd.State, check string, kv ...any) {
	n := s.count.inc(check)
	if st.Log != nil {
		st.Log.Info("outbound check refused", append([]any{"check", check, "count", n}, kv...)...)
	}
}

// counters count refusals per check, for the logs now and metrics later.
type counters struct {
	mu sync.Mutex
	m  map[string]*atomic.Int64
}

func (c *counters) inc(check string) int64 {
	c.mu.Lock()
	if c.m == nil {
		c.m = map[string]*atomic.Int64{}
	}
	v := c.m[check]
	if v == nil {
		v = &atomic.Int64{}
		c.m[check] = v
	}
	c.mu.Unlock()
	return v.Add(1)
}

// Refusals returns how often each check has refused so far.
func (s *Submission) Refusals() map[string]int64 {
	s.count.mu.Lock()
	defer s.count.mu.Unlock()
	out := map[string]int64{}
	for k, v := range s.count.m {
		out[k] = v.Load()
	}
	return out
}
