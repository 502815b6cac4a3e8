package inbound

import (
	"errors"
	"fmt"
	"net"
	netsmtp "net/smtp"
	"net/textproto"
	"strings"
	"sync"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"securerelay/smtputil"
)

// Verifier asks a domain's downstream system whether a recipient exists,
// with an RCPT probe (Postfix's reject_unverified_recipient), and caches
// the answers: existing recipients for PositiveTTL, unknown ones for
// NegativeTTL. A downstream that cannot answer is never taken for a yes.
type Verifier struct {
	// Addr is the downstream's host:port; LMTP: it speaks LMTP (an
	// lmtp:// deliver_to), else SMTP.
	Addr        string
	LMTP        bool
	Helo        string
	Timeout     time.Duration
	PositiveTTL time.Duration
	NegativeTTL time.Duration

	mu    sync.Mutex
	cache map[string]verdict
}

type verdict struct {
	exists bool
	until  time.Time
}

// errUnverifiable: the downstream could not answer (down, 4xx, time-out).
var errUnverifiable = errors.New("recipient cannot be verified now")

// errNoSMTPUTF8: the downstream does not offer SMTPUTF8 and the address
// has a non-ASCII local part, which no downgrade can express (RFC 6531
// §3.2): the recipient cannot get mail through this downstream at all.
var errNoSMTPUTF8 = errors.New("the downstream system does not offer SMTPUTF8, and the local part is not ASCII")

// Exists reports whether addr exists downstream; errUnverifiable (wrapped)
// when that cannot be known now.
func (v *Verifier) Exists(addr string) (bool, error) {
	key := strings.ToLower(addr)
	now := time.Now()
	v.mu.Lock()
	if v.cache == nil {
		v.cache = map[string]verdict{}
	}
	if c, ok := v.cache[key]; ok && now.Before(c.until) {
		v.mu.Unlock()
		return c.exists, nil
	}
	v.mu.Unlock()

	exists, err := v.probe(addr)
	if errors.Is(err, errNoSMTPUTF8) {
		return false, err
	}
	if err != nil {
		return false, fmt.Errorf("%w: %v", errUnverifiable, err)
	}
	ttl := v.NegativeTTL
	if exists {
		ttl = v.PositiveTTL
	}
	v.mu.Lock()
	if len(v.cache) > 100000 {
		clear(v.cache)
	}
	v.cache[key] = verdict{exists: exists, until: now.Add(ttl)}
	v.mu.Unlock()
	return exists, nil
}

// probe runs MAIL FROM:<> / RCPT TO / QUIT against the downstream. Only a
// 5xx to RCPT means "no such user"; a 2xx means it exists. An address
// that needs SMTPUTF8 is asked as delivery would send it: with SMTPUTF8
// when the downstream offers it, else in its ASCII form (A-labels), else
// not at all (errNoSMTPUTF8).
func (v *Verifier) probe(addr string) (bool, error) {
	intl := smtputil.NeedsSMTPUTF8(addr)
	ascii, downgradable := smtputil.DowngradeAddress(addr)
	// rcptFor picks the form to ask for, once the EHLO reply is known.
	rcptFor := func(offered bool) (string, error) {
		switch {
		case !intl || offered:
			return addr, nil
		case downgradable:
			return ascii, nil
		}
		return "", errNoSMTPUTF8
	}
	conn, err := net.DialTimeout("tcp", v.Addr, v.Timeout)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(v.Timeout))
	var rcptErr error
	if v.LMTP {
		c := gosmtp.NewClientLMTP(conn)
		if err := c.Hello(v.Helo); err != nil {
			return false, err
		}
		offered, _ := c.Extension("SMTPUTF8")
		rcpt, err := rcptFor(offered)
		if err != nil {
			c.Quit()
			return false, err
		}
		if err := c.Mail("", &gosmtp.MailOptions{UTF8: intl && offered}); err != nil {
			return false, err
		}
		rcptErr = c.Rcpt(rcpt, nil)
		c.Quit()
		var se *gosmtp.SMTPError
		if errors.As(rcptErr, &se) && se.Code >= 500 {
			return false, nil
		}
	} else {
		c, err := netsmtp.NewClient(conn, v.Addr)
		if err != nil {
			return false, err
		}
		if err := c.Hello(v.Helo); err != nil {
			return false, err
		}
		offered, _ := c.Extension("SMTPUTF8")
		rcpt, err := rcptFor(offered)
		if err != nil {
			c.Quit()
			return false, err
		}
		// net/smtp adds SMTPUTF8 to MAIL itself whenever it is offered.
		if err := c.Mail(""); err != nil {
			return false, err
		}
		rcptErr = c.Rcpt(rcpt)
		c.Quit()
		var te *textproto.Error
		if errors.As(rcptErr, &te) && te.Code >= 500 {
			return false, nil
		}
	}
	if rcptErr != nil {
		return false, rcptErr
	}
	return true, nil
}
