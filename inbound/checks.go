package inbound

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// act applies a check's action to a refusal: the permanent reply, its
// temporary twin (so an admin can try a check out without losing mail),
// or nothing. smtpd logs and counts the refusal under check.
func (r *Role) act(check string, action Action, perm *smtp.SMTPError) error {
	switch action {
	case ActionOff:
		return nil
	case ActionTempfail:
		return smtpd.Refuse(check, smtputil.Deferred(perm), "action", action.String())
	}
	return smtpd.Refuse(check, perm, "action", action.String())
}

// senderDomain checks that the sender's domain can receive a reply (RFC
// 5321 §5.1 order: MX, else A/AAAA). A DNS failure is always temporary: a
// timeout must never reject mail.
func (r *Role) senderDomain(domain, check string) error {
	if r.resolver == nil || r.checks.SenderDomain == ActionOff || strings.HasPrefix(domain, "[") {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := dnsutil.MXTargets(ctx, r.resolver, domain)
	switch {
	case err == nil:
		return nil
	case dnsutil.IsTemporary(err):
		// Whatever the action: DNS trouble never rejects mail.
		return smtpd.Refuse(check, smtputil.SenderDomainTempFail(domain), "error", err.Error())
	case dnsutil.IsNullMX(err):
		return r.act(check, r.checks.SenderDomain, smtputil.SenderNullMX(domain))
	default:
		return r.act(check, r.checks.SenderDomain, smtputil.SenderDomainNotFound(domain))
	}
}

// RecipientSet is the recipients of one domain: a fixed list plus a file
// that is re-read when its modification time changes (checked at most
// every two seconds, so a busy MX does not stat it per RCPT).
type RecipientSet struct {
	list map[string]bool
	file string

	mu       sync.Mutex
	fromFile map[string]bool
	mtime    time.Time
	checked  time.Time
	log      *slog.Logger
}

// NewRecipientSet makes a set from local parts or addresses and a file
// (may be ""); the file is read now, so a missing one is an error at start.
func NewRecipientSet(list []string, file string, log *slog.Logger) (*RecipientSet, error) {
	s := &RecipientSet{list: map[string]bool{}, file: file, log: log}
	for _, x := range list {
		s.list[recipientKey(x)] = true
	}
	if file != "" {
		if err := s.reload(time.Now()); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *RecipientSet) reload(now time.Time) error {
	s.checked = now
	fi, err := os.Stat(s.file)
	if err != nil {
		return fmt.Errorf("recipients file: %w", err)
	}
	if fi.ModTime().Equal(s.mtime) && s.fromFile != nil {
		return nil
	}
	f, err := os.Open(s.file)
	if err != nil {
		return fmt.Errorf("recipients file: %w", err)
	}
	defer f.Close()
	m := map[string]bool{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if i := strings.IndexByte(line, '#'); i >= 0 {
			line = strings.TrimSpace(line[:i])
		}
		if line != "" {
			m[recipientKey(line)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("recipients file %s: %w", s.file, err)
	}
	s.fromFile, s.mtime = m, fi.ModTime()
	if s.log != nil {
		s.log.Info("recipients file loaded", "file", s.file, "entries", len(m))
	}
	return nil
}

// recipientKey is how a listed local part or address is kept: lower case,
// the domain of an address in A-labels, so that a file may name
// "jörg@müller.example" or "jörg@xn--mller-kva.example" alike.
func recipientKey(x string) string {
	at := strings.LastIndexByte(x, '@')
	if at < 0 {
		return strings.ToLower(x)
	}
	return strings.ToLower(x[:at]) + "@" + smtputil.AddressDomain(x)
}

// Has reports whether the address (local part and domain) exists. Local
// parts compare case-insensitively, as nearly every mail store does.
func (s *RecipientSet) Has(a smtputil.Address) bool {
	local, full := strings.ToLower(a.Local), strings.ToLower(a.Local+"@"+a.Domain)
	if s.list[local] || s.list[full] {
		return true
	}
	if s.file == "" {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if now := time.Now(); now.Sub(s.checked) > 2*time.Second {
		if err := s.reload(now); err != nil && s.log != nil {
			// Keep the last good list: a file being replaced must not
			// turn every recipient into an unknown one.
			s.log.Warn("recipients file not re-read, keeping the last one", "error", err)
		}
	}
	return s.fromFile[local] || s.fromFile[full]
}

var errNotFQDN = smtputil.ErrNotFQDN

func isNotFQDN(err error) bool { return errors.Is(err, errNotFQDN) }
