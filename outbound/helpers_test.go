package outbound_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"log"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"securerelay/dnsutil/dnstest"
	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/smtpd"
)

const testTimeout = 10 * time.Second

var discard = slog.New(slog.DiscardHandler)

// spool is a real queue in a temporary directory whose Deliverer only
// hands the *queue.Delivery to the test (and keeps the message spooled), so
// that tests can call the engine with genuine deliveries.
type spool struct {
	t  *testing.T
	q  *queue.Queue
	ch chan *queue.Delivery
}

type handOver chan *queue.Delivery

func (h handOver) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	select {
	case h <- d:
	case <-ctx.Done():
	}
	return all(len(d.Rcpts), queue.Result{Status: queue.TempFail, Code: "4.0.0", Reply: "held for the test"})
}

func all(n int, r queue.Result) []queue.Result {
	out := make([]queue.Result, n)
	for i := range out {
		out[i] = r
	}
	return out
}

func newSpool(t *testing.T) *spool {
	t.Helper()
	ch := make(chan *queue.Delivery, 16)
	q, err := queue.Open(queue.Options{Dir: t.TempDir(), Retry: []time.Duration{time.Hour}, Logger: discard, Deliverer: handOver(ch)})
	if err != nil {
		t.Fatal(err)
	}
	q.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		q.Stop(ctx)
	})
	return &spool{t: t, q: q, ch: ch}
}

// put spools a message and returns the queue's delivery for it.
func (s *spool) put(from string, to []string, data string) *queue.Delivery {
	s.t.Helper()
	return s.putEnv(queue.Envelope{From: from, To: to, Origin: queue.OriginOutbound}, data)
}

// putEnv is put with a whole envelope (origin, SMTPUTF8, …).
func (s *spool) putEnv(env queue.Envelope, data string) *queue.Delivery {
	s.t.Helper()
	id, err := s.q.Put(env, strings.NewReader(data))
	if err != nil {
		s.t.Fatal(err)
	}
	for {
		select {
		case d := <-s.ch:
			if d.ID == id {
				// The test's own copy, envelope included: tests change it
				// (an inbound origin), and the queue still reads its own
				// after the hand-over.
				dd, env := *d, *d.Envelope
				dd.Envelope = &env
				return &dd
			}
		case <-time.After(testTimeout):
			s.t.Fatalf("queue did not hand over %s", id)
		}
	}
}

// hopMsg is one message a test next hop accepted.
type hopMsg struct {
	From string
	To   []string
	Data []byte
	TLS  bool
	Auth string
	Helo string
	// UTF8: MAIL FROM carried SMTPUTF8.
	UTF8 bool
	// MailOpts and RcptOpts are the MAIL and RCPT parameters as the hop
	// parsed them (RcptOpts by recipient).
	MailOpts smtp.MailOptions
	RcptOpts map[string]smtp.RcptOptions
}

// hopOptions shape a test next hop's answers.
type hopOptions struct {
	LMTP bool
	TLS  *tls.Config
	Addr string // default 127.0.0.1:0
	// Mail and Rcpt refuse when they return an error.
	Mail func(from string) error
	Rcpt func(to string) error
	// Status is the LMTP per-recipient reply after DATA.
	Status func(to string) error
	// Users enables AUTH PLAIN with these passwords.
	Users map[string]string
	// AllowInsecureAuth offers AUTH without TLS too.
	AllowInsecureAuth bool
	// SMTPUTF8 offers SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool
	// Data sees each message as received, before the reply to DATA: an
	// error refuses it, and errDrop closes the connection without a
	// reply (a next hop that goes away at the end of DATA).
	Data func(b []byte) error
	// DSN offers DSN (RFC 3461).
	DSN bool
	// Discard lists EHLO keywords the hop does not offer, as Postfix's
	// smtpd_discard_ehlo_keywords ("8BITMIME"): taken out of its EHLO
	// reply on the wire.
	Discard []string
}

// errDrop makes a hop close the connection instead of answering DATA.
var errDrop = errors.New("connection dropped by the test")

// hop is a go-smtp server on 127.0.0.1 that records what it is sent.
type hop struct {
	t     *testing.T
	o     hopOptions
	addr  string
	port  string
	conns atomic.Int32
	// authTries counts the AUTH commands that reached the session (with
	// TLS, or AllowInsecureAuth), whether AUTH was offered or not.
	authTries atomic.Int32
	got       chan hopMsg

	mu       sync.Mutex
	sessions []*smtp.Conn
}

func newHop(t *testing.T, o hopOptions) *hop {
	t.Helper()
	addr := o.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	h := &hop{t: t, o: o, addr: ln.Addr().String(), got: make(chan hopMsg, 100)}
	_, h.port, _ = net.SplitHostPort(h.addr)
	srv := smtp.NewServer(smtp.BackendFunc(func(c *smtp.Conn) (smtp.Session, error) {
		h.mu.Lock()
		h.sessions = append(h.sessions, c)
		h.mu.Unlock()
		return &hopSession{h: h, c: c}, nil
	}))
	srv.Domain = "hop.test"
	srv.LMTP = o.LMTP
	srv.TLSConfig = o.TLS
	srv.AllowInsecureAuth = o.AllowInsecureAuth
	srv.EnableSMTPUTF8 = o.SMTPUTF8
	srv.EnableDSN = o.DSN
	srv.ReadTimeout = testTimeout
	srv.WriteTimeout = testTimeout
	srv.ErrorLog = log.New(io.Discard, "", 0)
	go srv.Serve(countingListener{ln, &h.conns, o.Discard})
	t.Cleanup(func() { srv.Close() })
	return h
}

// dropSessions closes the server side of every connection, as a next hop
// does with idle clients.
func (h *hop) dropSessions() {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, c := range h.sessions {
		c.Close()
	}
	h.sessions = nil
}

func (h *hop) next() hopMsg {
	h.t.Helper()
	select {
	case m := <-h.got:
		return m
	case <-time.After(testTimeout):
		h.t.Fatal("next hop received no message")
	}
	return hopMsg{}
}

// none checks that nothing (more) arrived.
func (h *hop) none() {
	h.t.Helper()
	select {
	case m := <-h.got:
		h.t.Errorf("next hop received an unexpected message from <%s> to %v", m.From, m.To)
	default:
	}
}

type countingListener struct {
	net.Listener
	n       *atomic.Int32
	discard []string
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
		if len(l.discard) > 0 {
			c = discardConn{c, l.discard}
		}
	}
	return c, err
}

// discardConn takes keywords out of the EHLO reply the server writes.
// go-smtp writes one reply line per Write and ends its EHLO reply with
// SIZE, so dropping a "250-KEYWORD" line is all it takes.
type discardConn struct {
	net.Conn
	keywords []string
}

func (c discardConn) Write(p []byte) (int, error) {
	if line, ok := strings.CutPrefix(string(p), "250-"); ok {
		kw, _, _ := strings.Cut(strings.TrimSuffix(line, "\r\n"), " ")
		if slices.ContainsFunc(c.keywords, func(k string) bool { return strings.EqualFold(k, kw) }) {
			return len(p), nil
		}
	}
	return c.Conn.Write(p)
}

type hopSession struct {
	h        *hop
	c        *smtp.Conn
	from     string
	to       []string
	auth     string
	utf8     bool
	mailOpts smtp.MailOptions
	rcptOpts map[string]smtp.RcptOptions
}

func (s *hopSession) Reset() {
	s.from, s.to, s.utf8, s.mailOpts, s.rcptOpts = "", nil, false, smtp.MailOptions{}, nil
}
func (s *hopSession) Logout() error { return nil }

func (s *hopSession) AuthMechanisms() []string {
	if s.h.o.Users == nil {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *hopSession) Auth(mech string) (sasl.Server, error) {
	s.h.authTries.Add(1)
	if s.h.o.Users == nil || mech != sasl.Plain {
		return nil, smtp.ErrAuthUnknownMechanism
	}
	return sasl.NewPlainServer(func(_, user, pass string) error {
		if p, ok := s.h.o.Users[user]; ok && p == pass {
			s.auth = user
			return nil
		}
		return smtp.ErrAuthFailed
	}), nil
}

func (s *hopSession) Mail(from string, mo *smtp.MailOptions) error {
	if mo != nil {
		s.mailOpts = *mo
	}
	if s.h.o.Users != nil && s.auth == "" {
		return smtp.ErrAuthRequired
	}
	if s.h.o.Mail != nil {
		if err := s.h.o.Mail(from); err != nil {
			return err
		}
	}
	s.from = from
	s.utf8 = mo != nil && mo.UTF8
	return nil
}

func (s *hopSession) Rcpt(to string, o *smtp.RcptOptions) error {
	if s.h.o.Rcpt != nil {
		if err := s.h.o.Rcpt(to); err != nil {
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

func (s *hopSession) record(b []byte, to []string) {
	_, isTLS := s.c.TLSConnectionState()
	s.h.got <- hopMsg{From: s.from, To: to, Data: b, TLS: isTLS, Auth: s.auth, Helo: s.c.Hostname(), UTF8: s.utf8,
		MailOpts: s.mailOpts, RcptOpts: s.rcptOpts}
}

func (s *hopSession) Data(r io.Reader) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if s.h.o.Data != nil {
		if err := s.h.o.Data(b); err != nil {
			if errors.Is(err, errDrop) {
				s.c.Close()
			}
			return err
		}
	}
	s.record(b, append([]string(nil), s.to...))
	return nil
}

func (s *hopSession) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	b, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	var ok []string
	for _, to := range s.to {
		var e error
		if s.h.o.Status != nil {
			e = s.h.o.Status(to)
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

func smtpErr(code int, enh smtp.EnhancedCode, msg string) error {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

// engine returns a delivery engine with short time-outs; mod adjusts it.
func engine(t *testing.T, r *outbound.Router, mod func(*outbound.EngineOptions)) *outbound.Engine {
	t.Helper()
	o := outbound.EngineOptions{
		Helo:           "relay.ours.test",
		Resolver:       dnstest.Mock{},
		ConnectTimeout: 5 * time.Second,
		CommandTimeout: testTimeout,
		StartTLS:       true,
		Logger:         discard,
	}
	if mod != nil {
		mod(&o)
	}
	e := outbound.NewEngine(o, r)
	t.Cleanup(e.Close)
	return e
}

func target(t *testing.T, s string) outbound.Target {
	t.Helper()
	tg, err := outbound.ParseTarget(s)
	if err != nil {
		t.Fatal(err)
	}
	return tg
}

// everything routes all domains to one next hop.
func everything(t *testing.T, next string) *outbound.Router {
	return &outbound.Router{Routes: []outbound.Route{{Match: "*", Target: target(t, next)}}}
}

func deliver(t *testing.T, e *outbound.Engine, d *queue.Delivery) []queue.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	res := e.Deliver(ctx, d)
	if len(res) != len(d.Rcpts) {
		t.Fatalf("%d results for %d recipients", len(res), len(d.Rcpts))
	}
	return res
}

func statusName(s queue.Status) string {
	switch s {
	case queue.Delivered:
		return "Delivered"
	case queue.TempFail:
		return "TempFail"
	case queue.PermFail:
		return "PermFail"
	}
	return "?"
}

// check compares one result's status and enhanced code.
func check(t *testing.T, what string, r queue.Result, st queue.Status, code string) {
	t.Helper()
	if r.Status != st || r.Code != code {
		t.Errorf("%s: %s %s %q (relay %q), want %s %s", what, statusName(r.Status), r.Code, r.Reply, r.Relay, statusName(st), code)
	}
}

func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	c, err := smtpd.LoadCerts("", "", t.TempDir(), "hop.test", discard)
	if err != nil {
		t.Fatal(err)
	}
	return c.Config()
}

// trustedTLS is a server configuration with a certificate for name (made
// as selfSigned's) and a root pool that trusts it, so that a TLS policy
// built with these roots verifies the next hop as name.
func trustedTLS(t *testing.T, name string) (*tls.Config, *x509.CertPool) {
	t.Helper()
	c, err := smtpd.LoadCerts("", "", t.TempDir(), name, discard)
	if err != nil {
		t.Fatal(err)
	}
	cfg := c.Config()
	cert, err := cfg.GetCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := x509.ParseCertificate(cert.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(leaf)
	return cfg, roots
}
