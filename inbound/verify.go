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
)

// Verifier asks a domain's downstream system whether a recipient exists,
// with an RCPT probe (Postfix's reject_unverified_recipient), and caches
// the answers: existing recipients for PositiveTTL, unknown ones for
// NegativeTTL. A downstream that cannot answer is never taken for a yes.
type Verifier struct {
	// Target is smtp://host:port or lmtp://host:port.
	Kind, Addr  string
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
// 5xx to RCPT means "no such user"; a 2xx means it exists.
func (v *Verifier) probe(addr string) (bool, error) {
	conn, err := net.DialTimeout("tcp", v.Addr, v.Timeout)
	if err != nil {
		return false, err
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(v.Timeout))
	var rcptErr error
	if v.Kind == "lmtp" {
		c := gosmtp.NewClientLMTP(conn)
		if err := c.Hello(v.Helo); err != nil {
			return false, err
		}
		if err := c.Mail("", nil); err != nil {
			return false, err
		}
		rcptErr = c.Rcpt(addr, nil)
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
		if err := c.Mail(""); err != nil {
			return false, err
		}
		rcptErr = c.Rcpt(addr)
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
