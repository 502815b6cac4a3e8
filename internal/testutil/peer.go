package testutil

import (
	"bytes"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// PeerOptions shape a test SMTP/LMTP peer's offer and answers. The zero
// value is a plain SMTP server on 127.0.0.1 that accepts everything.
type PeerOptions struct {
	// Listener to serve on; nil listens on Addr, else 127.0.0.1:0. Only
	// loopback addresses: tests never touch the network.
	Listener net.Listener
	Addr     string
	// Domain is the name in the greeting; default "peer.test".
	Domain string
	// LMTP speaks LMTP (LHLO, a reply per recipient after DATA).
	LMTP bool
	// TLS offers STARTTLS with this configuration; nil offers none.
	TLS *tls.Config
	// Extensions offered besides go-smtp's defaults. RequireTLS
	// (RFC 8689) is offered by go-smtp only inside TLS.
	RequireTLS, DSN, SMTPUTF8 bool
	// Discard lists EHLO keywords taken out of the EHLO reply on the wire,
	// as Postfix's smtpd_discard_ehlo_keywords does ("8BITMIME").
	Discard []string
	// MaxMessageBytes is announced in SIZE and enforced; 0: no limit.
	MaxMessageBytes int64
	// Users offers AUTH PLAIN with these passwords (inside TLS, or in
	// clear with AllowInsecureAuth); RequireAuth refuses MAIL before a
	// login.
	Users             map[string]string
	AllowInsecureAuth bool
	RequireAuth       bool
	// Mail and Rcpt refuse a command when they return an error; the
	// command is recorded either way.
	Mail func(from string) error
	Rcpt func(to string) error
	// Data sees each message before the reply to DATA: an error refuses
	// it (for every recipient under LMTP), and ErrDrop closes the
	// connection without a reply.
	Data func(b []byte) error
	// Status is the LMTP reply for each recipient after DATA.
	Status func(to string) error
	// Wire keeps every byte the client sent, before TLS (Raw), and the
	// dialogue as the server read and wrote it, inside TLS too
	// (Transcript).
	Wire bool
	// Timeout for reads and writes; default 15s.
	Timeout time.Duration
}

// ErrDrop makes a peer close the connection instead of answering DATA (a
// next hop that goes away at the end of the data).
var ErrDrop = errors.New("connection dropped by the test")

// Message is one message a peer accepted.
type Message struct {
	From string
	To   []string // the recipients it was accepted for
	Data []byte
	TLS  bool   // the session was encrypted
	Helo string // the EHLO/LHLO name
	Auth string // the user logged in, if any
	// UTF8: MAIL FROM carried SMTPUTF8.
	UTF8 bool
	// MailOpts and RcptOpts are the MAIL and RCPT parameters as parsed
	// (RcptOpts by recipient).
	MailOpts smtp.MailOptions
	RcptOpts map[string]smtp.RcptOptions
}

// MailCmd is one MAIL FROM the peer saw, refused ones included.
type MailCmd struct {
	From string
	TLS  bool
	Opts smtp.MailOptions
}

// RcptCmd is one RCPT TO the peer saw, refused ones included.
type RcptCmd struct {
	To   string
	Opts smtp.RcptOptions
}

// Peer is a go-smtp server on loopback that records what reaches it: the
// connections, every MAIL and RCPT, each DATA transfer, the messages it
// accepted (envelope, data, TLS state, EHLO name, login), and on request
// the bytes on the wire. Its methods are safe while sessions run.
type Peer struct {
	Addr string // host:port
	Port string

	tb        testing.TB
	o         PeerOptions
	conns     atomic.Int32
	authTries atomic.Int32
	datas     atomic.Int32

	mu         sync.Mutex
	sessions   []*smtp.Conn
	mails      []MailCmd
	rcpts      []RcptCmd
	msgs       []Message
	taken      int // messages handed out by Next
	logins     []string
	raw        bytes.Buffer
	transcript bytes.Buffer
}

// StartPeer serves until the test ends.
func StartPeer(tb testing.TB, o PeerOptions) *Peer {
	tb.Helper()
	ln := o.Listener
	if ln == nil {
		addr := o.Addr
		if addr == "" {
			addr = "127.0.0.1:0"
		}
		var err error
		if ln, err = net.Listen("tcp", addr); err != nil {
			tb.Fatal(err)
		}
	}
	if ip := ln.Addr().(*net.TCPAddr).IP; !ip.IsLoopback() {
		ln.Close()
		tb.Fatalf("testutil: peer on %s: tests listen on loopback only", ln.Addr())
	}
	p := &Peer{tb: tb, o: o, Addr: ln.Addr().String()}
	_, p.Port, _ = net.SplitHostPort(p.Addr)
	s := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		p.mu.Lock()
		p.sessions = append(p.sessions, c)
		p.mu.Unlock()
		return &peerSession{p: p, c: c}, nil
	}))
	s.Domain = o.Domain
	if s.Domain == "" {
		s.Domain = "peer.test"
	}
	s.LMTP = o.LMTP
	s.TLSConfig = o.TLS
	s.EnableREQUIRETLS = o.RequireTLS
	s.EnableDSN = o.DSN
	s.EnableSMTPUTF8 = o.SMTPUTF8
	s.MaxMessageBytes = o.MaxMessageBytes
	s.AllowInsecureAuth = o.AllowInsecureAuth
	s.ReadTimeout, s.WriteTimeout = o.Timeout, o.Timeout
	if o.Timeout == 0 {
		s.ReadTimeout, s.WriteTimeout = 15*time.Second, 15*time.Second
	}
	// Failed handshakes and dropped sessions are the point of many tests.
	s.ErrorLog = log.New(io.Discard, "", 0)
	if o.Wire {
		s.Debug = lockedWriter{&p.mu, &p.transcript}
	}
	done := make(chan struct{})
	go func() { defer close(done); _ = s.Serve(peerListener{ln, p}) }()
	tb.Cleanup(func() {
		s.Close()
		// Also the listener itself: a Close that comes before Serve has
		// registered it (a test that never connects) leaves Serve in
		// Accept for ever.
		ln.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			tb.Errorf("test peer %s did not stop", p.Addr)
		}
	})
	return p
}

// Conns is the number of connections accepted (go-smtp starts a new
// session at every EHLO, so sessions would count STARTTLS twice).
func (p *Peer) Conns() int { return int(p.conns.Load()) }

// AuthTries counts the AUTH commands that reached a session, whether AUTH
// was offered or not.
func (p *Peer) AuthTries() int { return int(p.authTries.Load()) }

// Datas counts the DATA transfers, refused ones included.
func (p *Peer) Datas() int { return int(p.datas.Load()) }

// Mails are the MAIL FROM commands seen.
func (p *Peer) Mails() []MailCmd { p.mu.Lock(); defer p.mu.Unlock(); return slices.Clone(p.mails) }

// RcptCmds are the RCPT TO commands seen, with their parameters.
func (p *Peer) RcptCmds() []RcptCmd { p.mu.Lock(); defer p.mu.Unlock(); return slices.Clone(p.rcpts) }

// Rcpts are the RCPT TO addresses seen, refused ones included.
func (p *Peer) Rcpts() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]string, len(p.rcpts))
	for i, r := range p.rcpts {
		out[i] = r.To
	}
	return out
}

// Messages are the messages accepted so far.
func (p *Peer) Messages() []Message { p.mu.Lock(); defer p.mu.Unlock(); return slices.Clone(p.msgs) }

// Logins are the users that authenticated.
func (p *Peer) Logins() []string { p.mu.Lock(); defer p.mu.Unlock(); return slices.Clone(p.logins) }

// Raw is every byte clients sent, as it crossed the wire (TLS records
// encrypted); only with Wire.
func (p *Peer) Raw() string { p.mu.Lock(); defer p.mu.Unlock(); return p.raw.String() }

// Transcript is the dialogue as the server saw it, inside TLS too; only
// with Wire.
func (p *Peer) Transcript() string { p.mu.Lock(); defer p.mu.Unlock(); return p.transcript.String() }

// WaitMessages waits until at least n messages were accepted.
func (p *Peer) WaitMessages(tb testing.TB, n int, timeout time.Duration) []Message {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if m := p.Messages(); len(m) >= n {
			return m
		}
		if time.Now().After(deadline) {
			tb.Fatalf("test peer %s: %d messages after %v, want %d", p.Addr, len(p.Messages()), timeout, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Next waits for the next message that Next has not returned yet.
func (p *Peer) Next(tb testing.TB, timeout time.Duration) Message {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p.mu.Lock()
		if p.taken < len(p.msgs) {
			m := p.msgs[p.taken]
			p.taken++
			p.mu.Unlock()
			return m
		}
		p.mu.Unlock()
		if time.Now().After(deadline) {
			tb.Fatalf("test peer %s received no message in %v", p.Addr, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// None reports an error for each message Next has not returned yet, and
// takes them.
func (p *Peer) None(tb testing.TB) {
	tb.Helper()
	p.mu.Lock()
	rest := p.msgs[p.taken:]
	p.taken = len(p.msgs)
	p.mu.Unlock()
	for _, m := range rest {
		tb.Errorf("test peer %s received an unexpected message from <%s> to %v", p.Addr, m.From, m.To)
	}
}

// DropSessions closes the server side of every connection, as a next hop
// does with idle clients.
func (p *Peer) DropSessions() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.sessions {
		c.Close()
	}
	p.sessions = nil
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (w lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

// peerListener counts connections and wraps them for Wire and Discard.
type peerListener struct {
	net.Listener
	p *Peer
}

func (l peerListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	l.p.conns.Add(1)
	return &peerConn{Conn: c, p: l.p}, nil
}

type peerConn struct {
	net.Conn
	p *Peer
}

// Read keeps every byte the client sends, before any TLS: in clear text,
// "no MAIL FROM in the bytes" means none was sent.
func (c *peerConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 && c.p.o.Wire {
		c.p.mu.Lock()
		c.p.raw.Write(b[:n])
		c.p.mu.Unlock()
	}
	return n, err
}

// Write takes Discard's keywords out of the EHLO reply. go-smtp writes one
// reply line per Write and ends its EHLO reply with SIZE, so dropping a
// "250-KEYWORD" line is all it takes.
func (c *peerConn) Write(b []byte) (int, error) {
	if line, ok := strings.CutPrefix(string(b), "250-"); ok && len(c.p.o.Discard) > 0 {
		kw, _, _ := strings.Cut(strings.TrimSuffix(line, "\r\n"), " ")
		if slices.ContainsFunc(c.p.o.Discard, func(k string) bool { return strings.EqualFold(k, kw) }) {
			return len(b), nil
		}
	}
	return c.Conn.Write(b)
}

type peerSession struct {
	p        *Peer
	c        *smtp.Conn
	auth     string
	from     string
	to       []string
	utf8     bool
	mailOpts smtp.MailOptions
	rcptOpts map[string]smtp.RcptOptions
}

func (s *peerSession) Reset() {
	s.from, s.to, s.utf8, s.mailOpts, s.rcptOpts = "", nil, false, smtp.MailOptions{}, nil
}

func (s *peerSession) Logout() error { return nil }

func (s *peerSession) AuthMechanisms() []string {
	if s.p.o.Users == nil {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *peerSession) Auth(mech string) (sasl.Server, error) {
	s.p.authTries.Add(1)
	if s.p.o.Users == nil || mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if p, ok := s.p.o.Users[user]; !ok || p != pass {
			return smtp.ErrAuthFailed
		}
		s.auth = user
		s.p.mu.Lock()
		s.p.logins = append(s.p.logins, user)
		s.p.mu.Unlock()
		return nil
	}), nil
}

func (s *peerSession) Mail(from string, mo *smtp.MailOptions) error {
	_, isTLS := s.c.TLSConnectionState()
	mc := MailCmd{From: from, TLS: isTLS}
	if mo != nil {
		mc.Opts = *mo
	}
	s.p.mu.Lock()
	s.p.mails = append(s.p.mails, mc)
	s.p.mu.Unlock()
	if s.p.o.RequireAuth && s.auth == "" {
		return smtp.ErrAuthRequired
	}
	if s.p.o.Mail != nil {
		if err := s.p.o.Mail(from); err != nil {
			return err
		}
	}
	s.from, s.to, s.rcptOpts = from, nil, nil
	s.utf8, s.mailOpts = mc.Opts.UTF8, mc.Opts
	return nil
}

func (s *peerSession) Rcpt(to string, o *smtp.RcptOptions) error {
	rc := RcptCmd{To: to}
	if o != nil {
		rc.Opts = *o
	}
	s.p.mu.Lock()
	s.p.rcpts = append(s.p.rcpts, rc)
	s.p.mu.Unlock()
	if s.p.o.Rcpt != nil {
		if err := s.p.o.Rcpt(to); err != nil {
			return err
		}
	}
	s.to = append(s.to, to)
	if o != nil {
		if s.rcptOpts == nil {
			s.rcptOpts = map[string]smtp.RcptOptions{}
		}
		s.rcptOpts[to] = *o
	}
	return nil
}

// data reads the message and asks the Data hook; an error refuses it.
func (s *peerSession) data(r io.Reader) ([]byte, error) {
	// Counted before the read, so that a transfer cut short counts too.
	s.p.datas.Add(1)
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, err
	}
	if s.p.o.Data != nil {
		if err := s.p.o.Data(b); err != nil {
			if errors.Is(err, ErrDrop) {
				s.c.Close()
			}
			return nil, err
		}
	}
	return b, nil
}

func (s *peerSession) record(b []byte, to []string) {
	_, isTLS := s.c.TLSConnectionState()
	s.p.mu.Lock()
	defer s.p.mu.Unlock()
	s.p.msgs = append(s.p.msgs, Message{From: s.from, To: to, Data: b, TLS: isTLS, Helo: s.c.Hostname(),
		Auth: s.auth, UTF8: s.utf8, MailOpts: s.mailOpts, RcptOpts: s.rcptOpts})
}

func (s *peerSession) Data(r io.Reader) error {
	b, err := s.data(r)
	if err != nil {
		return err
	}
	s.record(b, slices.Clone(s.to))
	return nil
}

func (s *peerSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	b, err := s.data(r)
	if err != nil {
		return err // go-smtp gives it to every recipient
	}
	var ok []string
	for _, to := range s.to {
		var e error
		if s.p.o.Status != nil {
			e = s.p.o.Status(to)
		}
		status.SetStatus(to, e)
		if e == nil {
			ok = append(ok, to)
		}
	}
	if len(ok) > 0 {
		s.record(b, ok)
	}
	return nil
}
