package outbound

import (
	"io"
	"mime"
	"net/mail"
	"strings"
	"sync/atomic"

	"golang.org/x/crypto/bcrypt"
	"golang.org/x/net/idna"
)

// Sender binding (Postfix's smtpd_sender_login_maps, applied to header
// fields too): an authenticated user may use as envelope sender, and in
// From:, Sender:, Resent-From: and Resent-Sender:, only the addresses its
// account allows. Without it any logged-in application could send as
// anyone: as an outsider (whose address then receives the bounces, i.e.
// backscatter) or as any mailbox of our domains. Clients in
// trusted_networks that do not log in have no account and are not bound.

// Account is one SMTP AUTH user.
type Account struct {
	Name         string
	PasswordHash string // bcrypt
	// Senders lists what the user may use: "otrs@example.com" (that
	// address) or "@example.com" (any address in that domain). When
	// given, it is the whole list, for the envelope sender and the header
	// fields alike. nil: LoginOnly decides.
	Senders []string
	// LoginOnly, without Senders: only the login name, which is then an
	// address; otherwise any address in one of our domains.
	LoginOnly bool
}

// account is an Account ready for lookups.
type account struct {
	hash      []byte
	listed    bool
	addrs     map[string]bool // normalised "local@domain"
	domains   map[string]bool // normalised domain
	loginOnly bool
	login     string // the name as a normalised address, "" if it is none
}

// Users is the shared, reloadable table of SMTP AUTH accounts.
type Users struct {
	m atomic.Pointer[map[string]*account]
}

// NewUsers makes a table from name → bcrypt hash; every user gets the
// default binding (our domains).
func NewUsers(hashes map[string]string) *Users {
	u := &Users{}
	u.Set(hashes)
	return u
}

// NewAccounts makes a table of accounts with their sender binding.
func NewAccounts(accts []Account) *Users {
	u := &Users{}
	u.SetAccounts(accts)
	return u
}

// Set replaces the accounts by name → bcrypt hash, each with the default
// binding (SIGHUP).
func (u *Users) Set(hashes map[string]string) {
	accts := make([]Account, 0, len(hashes))
	for name, h := range hashes {
		accts = append(accts, Account{Name: name, PasswordHash: h})
	}
	u.SetAccounts(accts)
}

// SetAccounts replaces the accounts, passwords and bindings in one step
// (SIGHUP): a session never sees a new password with an old binding.
func (u *Users) SetAccounts(accts []Account) {
	m := make(map[string]*account, len(accts))
	for _, a := range accts {
		acc := &account{hash: []byte(a.PasswordHash), listed: a.Senders != nil, loginOnly: a.LoginOnly,
			addrs: map[string]bool{}, domains: map[string]bool{}}
		if l, d, ok := splitAddress(a.Name); ok {
			acc.login = l + "@" + d
		}
		for _, s := range a.Senders {
			if strings.HasPrefix(s, "@") {
				if d, ok := normalDomain(s[1:]); ok {
					acc.domains[d] = true
				}
			} else if l, d, ok := splitAddress(s); ok {
				acc.addrs[l+"@"+d] = true
			}
		}
		m[a.Name] = acc
	}
	u.m.Store(&m)
}

// dummyHash keeps the time of a login for an unknown user the same as for
// a wrong password, so that user names cannot be probed by timing.
var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("securerelay-dummy"), bcrypt.DefaultCost)

func (u *Users) check(user, pass string) bool {
	a := u.lookup(user)
	if a == nil {
		bcrypt.CompareHashAndPassword(dummyHash, []byte(pass))
		return false
	}
	return bcrypt.CompareHashAndPassword(a.hash, []byte(pass)) == nil
}

func (u *Users) lookup(user string) *account {
	if u == nil {
		return nil
	}
	return (*u.m.Load())[user]
}

// refusal says why the account may not use addr, or "" when it may.
// header: addr is from a header field, where foreignOK lets a user
// without a senders list use domains that are not ours (foreign_from:
// unsigned: such mail leaves unsigned and impersonates none of our
// mailboxes). An account that is gone (removed by a reload during the
// session) allows nothing.
func (a *account) refusal(user, addr string, ours *DomainSet, foreignOK bool) string {
	l, d, ok := splitAddress(addr)
	switch {
	case a == nil:
		return "user " + user + " is no longer configured on this relay"
	case !ok:
		return "it is not a usable address"
	case a.listed:
		if a.addrs[l+"@"+d] || a.domains[d] {
			return ""
		}
		return "it is not among the senders of user " + user
	case foreignOK && !ours.Has(d):
		return ""
	case a.loginOnly:
		if a.login != "" && a.login == l+"@"+d {
			return ""
		}
		return "user " + user + " may only send as itself"
	case ours == nil || ours.Has(d):
		// No domain set (a Submission built without Ours, as for
		// foreign_from): the domain default has nothing to go by.
		return ""
	default:
		return "its domain " + d + " is not one of this relay's domains"
	}
}

// splitAddress splits an address at its last '@' and normalises both
// halves for comparison: local parts compare without case (as Postfix's
// lookup tables do, and as every mailbox server in practice treats them),
// domains as normalDomain says.
func splitAddress(addr string) (local, domain string, ok bool) {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 {
		return "", "", false
	}
	domain, ok = normalDomain(addr[at+1:])
	return strings.ToLower(addr[:at]), domain, ok
}

// normalDomain lower-cases a domain, drops a trailing dot and turns
// U-labels into A-labels, so that "Bücher.Example." in a From: field and
// "xn--bcher-kva.example" in the configuration are the same domain.
func normalDomain(d string) (string, bool) {
	d = strings.TrimSuffix(strings.ToLower(d), ".")
	if d == "" {
		return "", false
	}
	if a, err := idna.Lookup.ToASCII(d); err == nil {
		return a, true
	}
	for i := 0; i < len(d); i++ {
		if d[i] >= 0x80 {
			return "", false
		}
	}
	// An ASCII name IDNA's rules refuse (an underscore, an address
	// literal) still compares as written.
	return d, true
}

// senderFields are the header fields that name the author or sender of a
// message (RFC 5322 §3.6.2, §3.6.6): each address in each of them is
// bound like the envelope sender.
var senderFields = []string{"From", "Sender", "Resent-From", "Resent-Sender"}

// headerParser reads address lists; encoded words pass undecoded (only
// the addresses matter, and an unknown charset in a display name must not
// make the field unreadable).
var headerParser = mail.AddressParser{WordDecoder: &mime.WordDecoder{
	CharsetReader: func(_ string, input io.Reader) (io.Reader, error) { return input, nil },
}}
