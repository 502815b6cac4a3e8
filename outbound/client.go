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

	"securerelay/tlspolicy"
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
	// mail starts a transaction; requireTLS adds REQUIRETLS (RFC 8689),
	// and a next hop that does not offer it gets nothing.
	mail(from string, requireTLS bool) error
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
	outcome string // the TLS policy check, for logs and the queue entry
}

func (s *smtpClient) deadline() { s.conn.SetDeadline(time.Now().Add(s.timeout)) }

func (s *smtpClient) mail(from string, requireTLS bool) error {
	s.deadline()
	if !requireTLS {
		return s.c.Mail(from)
	}
	// newSMTPClient refused a session without TLS or without REQUIRETLS
	// (HostPolicy.CheckRequireTLS), and the pool hands such a session only
	// to deliveries under the same policy. net/smtp has no way to add
	// MAIL parameters of its own.
	cmd := "MAIL FROM:<%s>"
	if ok, _ := s.c.Extension("8BITMIME"); ok {
		cmd += " BODY=8BITMIME"
	}
	id, err := s.c.Text.Cmd(cmd+" REQUIRETLS", from)
	if err != nil {
		return err
	}
	s.c.Text.StartResponse(id)
	defer s.c.Text.EndResponse(id)
	_, _, err = s.c.Text.ReadResponse(250)
	return err
}

func (s *smtpClient) rcpt(to string) error { s.deadline(); return s.c.Rcpt(to) }
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

// newSMTPClient greets the next hop and, with tlsCfg (from the host's TLS
// policy), uses STARTTLS when offered. The session is then checked against
// hp before anything else is sent: a level that is not met closes it with a
// *tlsPolicyError, so that no byte of a message reaches that server.
// tlsFailed reports a failed handshake, so that the caller can retry in
// clear where the level allows it (may), as Postfix does.
func newSMTPClient(conn net.Conn, host, helo string, timeout time.Duration, tlsCfg *tls.Config, hp *tlspolicy.HostPolicy, auth *RouteAuth) (c *smtpClient, tlsFailed bool, err error) {
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
	var cs *tls.ConnectionState
	if offered && tlsCfg != nil {
		sc.deadline()
		if herr := nc.StartTLS(tlsCfg); herr != nil {
			nc.Close()
			out := hp.Evaluate(offered, nil, herr)
			if out.Failure != nil {
				return nil, true, &tlsPolicyError{f: out.Failure, outcome: out.String()}
			}
			return nil, true, fmt.Errorf("STARTTLS: %w", herr)
		}
		if st, ok := nc.TLSConnectionState(); ok {
			cs = &st
		}
	}
	out := hp.Evaluate(offered, cs, nil)
	sc.tls, sc.outcome = out.TLS, out.String()
	if out.Failure != nil {
		nc.Close()
		return nil, false, &tlsPolicyError{f: out.Failure, outcome: sc.outcome}
	}
	if hp.RequireTLS {
		adv, _ := nc.Extension("REQUIRETLS")
		if err := hp.CheckRequireTLS(adv); err != nil {
			nc.Close()
			te := &tlsPolicyError{outcome: sc.outcome + "; " + err.Error()}
			if errors.As(err, &te.f) {
				out.Failure = te.f
				te.outcome = out.String()
			}
			return nil, false, te
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

// mail ignores requireTLS: LMTP is final delivery into the mail store,
// where RFC 8689's next-hop requirement ends.
func (l *lmtpClient) mail(from string, _ bool) error { return l.c.Mail(from, nil) }
func (l *lmtpClient) rcpt(to string) error           { return l.c.Rcpt(to, nil) }
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
