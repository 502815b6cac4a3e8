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
	"slices"
	"strings"
	"time"

	"github.com/emersion/go-sasl"
	gosmtp "github.com/emersion/go-smtp"

	"securerelay/smtputil"
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
// DATA replies). Both are secured and checked by the same code (establish).
type client interface {
	// extension reports an EHLO/LHLO keyword and its parameters, from
	// the latest greeting (inside TLS after startTLS).
	extension(name string) (bool, string)
	// startTLS upgrades the session and greets again; the handshake is
	// finished when it returns.
	startTLS(*tls.Config) error
	// tlsState is the finished handshake, nil in clear text.
	tlsState() *tls.ConnectionState
	// auth authenticates with a SASL mechanism.
	auth(sasl.Client) error
	// mail starts a transaction with the parameters in p; rcpt adds a
	// recipient. Each parameter is sent as given: whether the next hop
	// offers its extension is the caller's to check (transact).
	mail(from string, p mailParams) error
	rcpt(to string, p rcptParams) error
	// data sends the message; for LMTP it returns per-recipient replies
	// (nil = accepted) in rcpt order.
	data(r io.Reader, rcpts []string) (perRcpt []error, err error)
	reset() error
	quit()
	// abort closes the connection at once, ending a read or write in
	// progress in another goroutine.
	abort()
}

// mailParams are the MAIL FROM parameters of one transaction, each set
// only where the next hop offers its extension.
type mailParams struct {
	// requireTLS adds REQUIRETLS (RFC 8689); establish refused a session
	// that does not offer it, and a pooled one is checked the same way.
	requireTLS bool
	// smtputf8 adds SMTPUTF8 (RFC 6531), only ever asked of a next hop
	// that offers it, and only for a message that needs it
	// (planEnvelope).
	smtputf8 bool
	// body is BODY= (RFC 6152): "8BITMIME", or "" for none.
	body string
	// ret and envID are RET= and ENVID= (RFC 3461), envID decoded; ""
	// for none.
	ret, envID string
}

// rcptParams are one RCPT TO's parameters (RFC 3461), for a next hop that
// offers DSN.
type rcptParams struct {
	// notify is NOTIFY= as kept in the queue ("SUCCESS,FAILURE").
	notify string
	// orcpt is the original recipient as kept in the queue
	// ("rfc822;bob@example.org", decoded); encoded on the way out.
	orcpt string
}

// args renders the parameters in the order Postfix sends them.
func (p mailParams) args() string {
	var b strings.Builder
	if p.body != "" {
		b.WriteString(" BODY=" + p.body)
	}
	if p.smtputf8 {
		b.WriteString(" SMTPUTF8")
	}
	if p.ret != "" {
		b.WriteString(" RET=" + p.ret)
	}
	if p.envID != "" {
		b.WriteString(" ENVID=" + smtputil.EncodeXtext(p.envID))
	}
	if p.requireTLS {
		b.WriteString(" REQUIRETLS")
	}
	return b.String()
}

func (p rcptParams) args() string {
	var b strings.Builder
	if p.notify != "" {
		b.WriteString(" NOTIFY=" + p.notify)
	}
	// The queue keeps only what smtpd could encode (EncodeORCPT).
	if o, ok := smtputil.EncodeORCPT(p.orcpt); ok {
		b.WriteString(" ORCPT=" + o)
	}
	return b.String()
}

// sessionTLS is what a session showed of its security when it was
// opened: enough to check it again, without asking the server, against
// the host policy of every later transaction that would reuse it.
type sessionTLS struct {
	offered bool                 // STARTTLS in the first EHLO/LHLO
	cs      *tls.ConnectionState // the finished handshake; nil in clear text
	// clearByFallback: in clear text because the handshake failed and the
	// level let delivery go on without TLS (may); a new session would not
	// do better, so reusing this one loses nothing.
	clearByFallback bool
	requireTLS      bool   // REQUIRETLS advertised inside TLS
	info            string // "TLS1.3 TLS_AES_128_GCM_SHA256"; "" in clear text
}

// establish secures a greeted session as hp asks and checks it before
// anything else is sent: STARTTLS when offered (tlsCfg nil: not at all),
// the session against hp, REQUIRETLS, then the route's credentials (auth,
// may be nil). A session that does not meet hp fails with a
// *tlsPolicyError, one that may not carry the credentials with a
// *credentialsError; either way it is closed, and no byte of a message
// reaches that server. tlsFailed reports a failed handshake, so that the
// caller can retry in clear where the level allows it (may), as Postfix
// does. outcome is the check, for the log and the queue entry.
func establish(cl client, hp *tlspolicy.HostPolicy, tlsCfg *tls.Config, auth *RouteAuth) (st sessionTLS, outcome string, tlsFailed bool, err error) {
	st.offered, _ = cl.extension("STARTTLS")
	if st.offered && tlsCfg != nil {
		if herr := cl.startTLS(tlsCfg); herr != nil {
			cl.abort()
			out := hp.Evaluate(st.offered, nil, herr)
			if out.Failure != nil {
				return st, out.String(), true, &tlsPolicyError{f: out.Failure, outcome: out.String()}
			}
			return st, out.String(), true, fmt.Errorf("STARTTLS: %w", herr)
		}
		st.cs = cl.tlsState()
	}
	out := hp.Evaluate(st.offered, st.cs, nil)
	st.info, outcome = out.TLS, out.String()
	if out.Failure != nil {
		cl.abort()
		return st, outcome, false, &tlsPolicyError{f: out.Failure, outcome: outcome}
	}
	st.requireTLS, _ = cl.extension("REQUIRETLS")
	if err := hp.CheckRequireTLS(st.requireTLS); err != nil {
		cl.abort()
		te := &tlsPolicyError{outcome: outcome + "; " + err.Error()}
		if errors.As(err, &te.f) {
			out.Failure = te.f
			te.outcome = out.String()
		}
		return st, te.outcome, false, te
	}
	if auth != nil {
		if err := auth.login(cl, hp, st, outcome); err != nil {
			cl.abort()
			return st, outcome, false, err
		}
	}
	return st, outcome, false, nil
}

// recheck judges a pooled session against the host policy of a new
// transaction with what the session showed when it was opened, through
// the same Evaluate and CheckRequireTLS a new session gets, so that
// nothing a policy can ask (names, pins, TLSA, version, ciphers,
// REQUIRETLS, and whatever is added later) is left unchecked. A session
// in clear text is not reused where a new one would use STARTTLS.
func recheck(hp *tlspolicy.HostPolicy, st sessionTLS) (outcome string, err error) {
	if hp.UseSTARTTLS() && st.offered && st.cs == nil && !st.clearByFallback {
		return "", errors.New("the session is in clear text, and a new one would use STARTTLS")
	}
	out := hp.Evaluate(st.offered, st.cs, nil)
	if out.Failure != nil {
		return "", out.Failure
	}
	if err := hp.CheckRequireTLS(st.requireTLS); err != nil {
		return "", err
	}
	return out.String(), nil
}

// credentialsError: the route's credentials were not sent to this next
// hop, and neither was anything else.
type credentialsError struct {
	code    string // enhanced status code, 4.7.x
	reason  string
	outcome string // the session's TLS check
}

func (e *credentialsError) Error() string {
	return "route credentials not sent, nor the message: " + e.reason
}

// login sends the route's credentials, once the session has proved what
// the route asks before it trusts a server with them (minTLS) and the
// server offers a mechanism we use (PLAIN).
func (a *RouteAuth) login(cl client, hp *tlspolicy.HostPolicy, st sessionTLS, outcome string) error {
	refuse := func(code, reason string) error {
		return &credentialsError{code: code, reason: reason, outcome: outcome}
	}
	switch a.minTLS() {
	case tlspolicy.Verify:
		if f := hp.VerifyHost(st.cs); f != nil {
			return refuse(f.Status(false), fmt.Sprintf("the next hop is not verified as %s (%s); credentials need a certificate that chains to a trusted root (the system's or outbound.tls.ca_file) and names %s, or auth.tls: encrypt",
				hp.Host, f.Reason, hp.Host))
		}
	case tlspolicy.Encrypt:
		if st.cs == nil {
			return refuse("4.7.10", "the session is not encrypted (auth.tls: encrypt; only allow_insecure_auth: true allows clear text)")
		}
	}
	adv, mechs := cl.extension("AUTH")
	if !adv || !slices.ContainsFunc(strings.Fields(mechs), func(m string) bool { return strings.EqualFold(m, sasl.Plain) }) {
		offered := "does not advertise AUTH"
		if adv {
			offered = "offers AUTH " + mechs + " only"
		}
		return refuse("4.7.0", fmt.Sprintf("the next hop %s; credentials go out with AUTH PLAIN only", offered))
	}
	if err := cl.auth(sasl.NewPlainClient("", a.Username, a.Password)); err != nil {
		return fmt.Errorf("AUTH at next hop: %w", err)
	}
	return nil
}

type smtpClient struct {
	c       *netsmtp.Client
	conn    net.Conn
	timeout time.Duration
}

func (s *smtpClient) deadline() { s.conn.SetDeadline(time.Now().Add(s.timeout)) }

func (s *smtpClient) extension(name string) (bool, string) { return s.c.Extension(name) }
func (s *smtpClient) startTLS(cfg *tls.Config) error       { s.deadline(); return s.c.StartTLS(cfg) }
func (s *smtpClient) tlsState() *tls.ConnectionState {
	if st, ok := s.c.TLSConnectionState(); ok {
		return &st
	}
	return nil
}
func (s *smtpClient) auth(a sasl.Client) error { s.deadline(); return s.c.Auth(saslAuth{a}) }

// mail and rcpt go through net/smtp's textproto connection: net/smtp has
// no way to add parameters of our own (REQUIRETLS, DSN), and its Mail
// decides BODY and SMTPUTF8 by itself.
func (s *smtpClient) mail(from string, p mailParams) error {
	return s.cmd(250, "MAIL FROM:<"+from+">"+p.args())
}

func (s *smtpClient) rcpt(to string, p rcptParams) error {
	// 250 and 251 (will forward), as net/smtp's Rcpt takes them.
	return s.cmd(25, "RCPT TO:<"+to+">"+p.args())
}

// cmd sends one command line and reads its reply, expecting code (a
// prefix, as textproto matches it).
func (s *smtpClient) cmd(code int, line string) error {
	s.deadline()
	if strings.ContainsAny(line, "\r\n") {
		return errors.New("smtp: a line break in a command")
	}
	id, err := s.c.Text.Cmd("%s", line)
	if err != nil {
		return err
	}
	s.c.Text.StartResponse(id)
	defer s.c.Text.EndResponse(id)
	_, _, err = s.c.Text.ReadResponse(code)
	return err
}
func (s *smtpClient) data(r io.Reader, _ []string) ([]error, error) {
	// As net/smtp's Data, but with smtputil's dot-stuffing writer, which
	// writes whole runs where textproto's goes byte by byte.
	if err := s.cmd(354, "DATA"); err != nil {
		return nil, err
	}
	// The whole transfer plus the final reply: RFC 5321 §4.5.3.2.6 allows
	// the server 10 minutes after the dot.
	s.conn.SetDeadline(time.Now().Add(s.timeout + 10*time.Minute))
	w := smtputil.NewDotWriter(s.c.Text.W)
	if _, err := io.Copy(w, r); err != nil {
		return nil, err
	}
	if err := w.Close(); err != nil {
		return nil, err
	}
	_, _, err := s.c.Text.ReadResponse(250)
	return nil, err
}
func (s *smtpClient) reset() error { s.deadline(); return s.c.Reset() }
func (s *smtpClient) quit() {
	s.conn.SetDeadline(time.Now().Add(5 * time.Second))
	if s.c.Quit() != nil {
		s.c.Close()
	}
}
func (s *smtpClient) abort() { s.conn.Close() }

// newSMTPClient reads the greeting and sends EHLO; establish does the rest.
func newSMTPClient(conn net.Conn, host, helo string, timeout time.Duration) (*smtpClient, error) {
	conn.SetDeadline(time.Now().Add(timeout))
	nc, err := netsmtp.NewClient(conn, host)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if err := nc.Hello(helo); err != nil {
		nc.Close()
		return nil, err
	}
	return &smtpClient{c: nc, conn: conn, timeout: timeout}, nil
}

// saslAuth runs a go-sasl client (the mechanisms LMTP uses too) through
// net/smtp's Auth. When and whether to send credentials at all is
// RouteAuth.login's decision, not net/smtp's (its PlainAuth refuses any
// session without TLS, verified or not).
type saslAuth struct{ c sasl.Client }

func (a saslAuth) Start(*netsmtp.ServerInfo) (string, []byte, error) { return a.c.Start() }
func (a saslAuth) Next(challenge []byte, more bool) ([]byte, error) {
	if !more {
		return nil, nil
	}
	return a.c.Next(challenge)
}

type lmtpClient struct {
	c    *gosmtp.Client
	conn net.Conn
}

// newLMTPClient reads the greeting and sends LHLO; establish does the rest.
func newLMTPClient(conn net.Conn, helo string, timeout time.Duration) (*lmtpClient, error) {
	c := gosmtp.NewClientLMTP(conn)
	c.CommandTimeout = timeout
	if err := c.Hello(helo); err != nil {
		c.Close()
		return nil, err
	}
	return &lmtpClient{c: c, conn: conn}, nil
}

func (l *lmtpClient) extension(name string) (bool, string) { return l.c.Extension(name) }
func (l *lmtpClient) startTLS(cfg *tls.Config) error       { return l.c.StartTLS(cfg) }
func (l *lmtpClient) tlsState() *tls.ConnectionState {
	if st, ok := l.c.TLSConnectionState(); ok {
		return &st
	}
	return nil
}
func (l *lmtpClient) auth(a sasl.Client) error { return l.c.Auth(a) }

// mail and rcpt pass the parameters through go-smtp's options, which
// send each only where the server offers its extension (and BODY=8BITMIME
// whenever it offers 8BITMIME, which is harmless for 7-bit content).
// REQUIRETLS: delivery decides whether the message still has it at this
// hop (decideTLS), and establish checked that the server advertises it.
func (l *lmtpClient) mail(from string, p mailParams) error {
	return l.c.Mail(from, &gosmtp.MailOptions{RequireTLS: p.requireTLS, UTF8: p.smtputf8,
		Return: gosmtp.DSNReturn(p.ret), EnvelopeID: p.envID})
}

func (l *lmtpClient) rcpt(to string, p rcptParams) error {
	o := &gosmtp.RcptOptions{}
	for _, n := range strings.Split(p.notify, ",") {
		if n != "" {
			o.Notify = append(o.Notify, gosmtp.DSNNotify(n))
		}
	}
	if typ, addr, ok := strings.Cut(p.orcpt, ";"); ok {
		o.OriginalRecipientType, o.OriginalRecipient = gosmtp.DSNAddressType(strings.ToUpper(typ)), addr
	}
	return l.c.Rcpt(to, o)
}
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
func (l *lmtpClient) abort() { l.conn.Close() }
