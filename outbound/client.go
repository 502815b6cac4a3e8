package outbound

import (
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	netsmtp "net/smtp"
	"net/textproto"
	"regexp"
	"strings"
	"time"

	gosmtp "github.com/emersion/go-smtp"
)

// reply is a next hop's answer in one shape, whichever client produced it.
type reply struct {
	code  int
	enh   string // "5.1.1"; derived from the code's class when the peer sent none
	text  string
	stage string // MAIL, RCPT, DATA, …
}

func (r *reply) Error() string {
	return fmt.Sprintf("%d %s %s (in reply to %s)", r.code, r.enh, r.text, r.stage)
}

func (r *reply) permanent() bool { return r.code >= 500 }

var enhRe = regexp.MustCompile(`^([245]\.\d{1,3}\.\d{1,3})\s+`)

// toReply converts client errors; it returns nil for errors that are not a
// server reply (I/O, TLS), which the caller treats as a lost connection.
func toReply(err error, stage string) *reply {
	var tpe *textproto.Error
	var gse *gosmtp.SMTPError
	switch {
	case errors.As(err, &tpe):
		r := &reply{code: tpe.Code, text: strings.ReplaceAll(tpe.Msg, "\n", " "), stage: stage}
		if m := enhRe.FindStringSubmatch(r.text); m != nil {
			r.enh, r.text = m[1], r.text[len(m[0]):]
		}
		r.fill()
		return r
	case errors.As(err, &gse):
		r := &reply{code: gse.Code, text: strings.ReplaceAll(gse.Message, "\n", " "), stage: stage}
		if gse.EnhancedCode != gosmtp.NoEnhancedCode && gse.EnhancedCode != (gosmtp.EnhancedCode{}) {
			e := gse.EnhancedCode
			r.enh = fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2])
		}
		r.fill()
		return r
	}
	return nil
}

func (r *reply) fill() {
	if r.enh == "" || r.enh[0] != byte('0'+r.code/100) {
		r.enh = fmt.Sprintf("%d.0.0", r.code/100)
	}
}

// client is one established session to a next hop: SMTP through the
// standard library's net/smtp (go-smtp's client cannot send our EHLO name
// before STARTTLS: it always says "localhost" there, which many MXs
// penalise), LMTP through go-smtp (net/smtp has no LHLO and no per-recipient
// DATA replies).
type client interface {
	mail(from string) error
	rcpt(to string) error
	// data sends the message; for LMTP it returns per-recipient replies
	// (nil = accepted) in rcpt order.
	data(r io.Reader, rcpts []string) (perRcpt []error, err error)
	reset() error
	quit()
	// abort closes the connection at once, ending a read or write in
	// progress in another goroutine.
	abort()
	tlsInfo() string
}

type smtpClient struct {
	c       *netsmtp.Client
	conn    net.Conn
	timeout time.Duration
	tls     string
}

func (s *smtpClient) deadline() { s.conn.SetDeadline(time.Now().Add(s.timeout)) }

func (s *smtpClient) mail(from string) error { s.deadline(); return s.c.Mail(from) }
func (s *smtpClient) rcpt(to string) error   { s.deadline(); return s.c.Rcpt(to) }
func (s *smtpClient) data(r io.Reader, _ []string) ([]error, error) {
	s.deadline()
	w, err := s.c.Data()
	if err != nil {
		return nil, err
	}
	// The whole transfer plus the final reply: RFC 5321 §4.5.3.2.6 allows
	// the server 10 minutes after the dot.
	s.conn.SetDeadline(time.Now().Add(s.timeout + 10*time.Minute))
	if _, err := io.Copy(w, r); err != nil {
		return nil, err
	}
	return nil, w.Close()
}
func (s *smtpClient) reset() error { s.deadline(); return s.c.Reset() }
func (s *smtpClient) quit() {
	s.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if s.c.Quit() != nil {
		s.c.Close()
	}
}
func (s *smtpClient) abort()          { s.conn.Close() }
func (s *smtpClient) tlsInfo() string { return s.tls }

// newSMTPClient greets the server, and with starttls tries STARTTLS when
// offered. TLS here is opportunistic: the certificate is not verified, which
// is exactly RFC 7435's opportunistic security; verified levels come from
// the TLS policy. tlsFailed reports a failed handshake so the caller can
// retry in clear, as Postfix does at the "may" level.
//
// With required, a peer that does not offer STARTTLS, or a failed
// handshake, is an error: the caller must not fall back to clear text.
func newSMTPClient(conn net.Conn, host, helo string, timeout time.Duration, starttls, required bool, auth *RouteAuth) (c *smtpClient, tlsFailed bool, err error) {
	conn.SetDeadline(time.Now().Add(timeout))
	nc, err := netsmtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return nil, false, err
	}
	sc := &smtpClient{c: nc, conn: conn, timeout: timeout}
	if err := nc.Hello(helo); err != nil {
		nc.Close()
		return nil, false, err
	}
	offered, _ := nc.Extension("STARTTLS")
	if required && !offered {
		nc.Close()
		return nil, false, &tlsRequiredError{"the next hop does not offer STARTTLS"}
	}
	if offered && starttls {
		sc.deadline()
		cfg := &tls.Config{ServerName: host, InsecureSkipVerify: true, MinVersion: tls.VersionTLS10}
		if err := nc.StartTLS(cfg); err != nil {
			nc.Close()
			if required {
				return nil, true, &tlsRequiredError{"STARTTLS failed: " + err.Error()}
			}
			return nil, true, fmt.Errorf("STARTTLS: %w", err)
		}
		if st, ok := nc.TLSConnectionState(); ok {
			sc.tls = strings.ReplaceAll(tls.VersionName(st.Version), " ", "") + " " + tls.CipherSuiteName(st.CipherSuite)
		}
	}
	if auth != nil {
		if sc.tls == "" && !auth.AllowInsecure {
			nc.Close()
			return nil, false, errors.New("next hop wants AUTH but offers no TLS; refusing to send the password in clear (set allow_insecure_auth to override)")
		}
		sc.deadline()
		if err := nc.Auth(plainAuth{auth.Username, auth.Password}); err != nil {
			nc.Close()
			return nil, false, fmt.Errorf("AUTH at next hop: %w", err)
		}
	}
	return sc, false, nil
}

// plainAuth is SASL PLAIN (RFC 4616) for net/smtp. net/smtp's own PlainAuth
// refuses non-TLS connections outright; we make that decision ourselves
// (allow_insecure_auth) before calling Auth.
type plainAuth struct{ user, pass string }

func (a plainAuth) Start(*netsmtp.ServerInfo) (string, []byte, error) {
	return "PLAIN", []byte("\x00" + a.user + "\x00" + a.pass), nil
}
func (a plainAuth) Next(_ []byte, more bool) ([]byte, error) {
	if more {
		return nil, errors.New("unexpected server challenge")
	}
	return nil, nil
}

type lmtpClient struct {
	c       *gosmtp.Client
	conn    net.Conn
	timeout time.Duration
}

func newLMTPClient(conn net.Conn, helo string, timeout time.Duration) (*lmtpClient, error) {
	c := gosmtp.NewClientLMTP(conn)
	c.CommandTimeout = timeout
	if err := c.Hello(helo); err != nil {
		c.Close()
		return nil, err
	}
	return &lmtpClient{c: c, conn: conn, timeout: timeout}, nil
}

func (l *lmtpClient) mail(from string) error { return l.c.Mail(from, nil) }
func (l *lmtpClient) rcpt(to string) error   { return l.c.Rcpt(to, nil) }
func (l *lmtpClient) data(r io.Reader, rcpts []string) ([]error, error) {
	w, err := l.c.Data()
	if err != nil {
		return nil, err
	}
	if _, err := io.Copy(w, r); err != nil {
		return nil, err
	}
	resp, err := w.CloseWithLMTPResponse()
	if err == nil {
		return make([]error, len(rcpts)), nil
	}
	// A bare LMTPDataError: every recipient got its own reply (accepted
	// ones are in resp). go-smtp joins it with the I/O error when the
	// connection broke half way: then only the recipients with a reply
	// know their fate, and the others get the I/O error, never "accepted".
	le, ioErr := gosmtp.LMTPDataError(nil), error(nil)
	switch e := err.(type) {
	case gosmtp.LMTPDataError:
		le = e
	case interface{ Unwrap() []error }:
		for _, x := range e.Unwrap() {
			if l, ok := x.(gosmtp.LMTPDataError); ok {
				le = l
			} else if ioErr == nil {
				ioErr = x
			}
		}
	default:
		return nil, err
	}
	if ioErr == nil && le == nil {
		return nil, err
	}
	per := make([]error, len(rcpts))
	for i, rc := range rcpts {
		switch {
		case le[rc] != nil:
			per[i] = le[rc]
		case resp[rc] != nil:
			per[i] = nil
		default:
			per[i] = ioErr
		}
	}
	return per, ioErr
}
func (l *lmtpClient) reset() error { return l.c.Reset() }
func (l *lmtpClient) quit() {
	l.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if l.c.Quit() != nil {
		l.c.Close()
	}
}
func (l *lmtpClient) abort()          { l.conn.Close() }
func (l *lmtpClient) tlsInfo() string { return "" }

// tlsRequiredError says a session could not meet a mandatory TLS level; the
// delivery is deferred with X.7.10 (encryption needed, RFC 5248).
type tlsRequiredError struct{ why string }

func (e *tlsRequiredError) Error() string {
	return "TLS required by policy: " + e.why + "; not sent in clear"
}
