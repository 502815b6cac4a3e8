package outbound_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil/dnstest"
	"securerelay/internal/testutil"
	"securerelay/outbound"
	"securerelay/queue"
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
type hopMsg = testutil.Message

// hopOptions shape a test next hop's answers (testutil.PeerOptions in
// this package's words).
type hopOptions struct {
	LMTP bool
	TLS  *tls.Config
	Addr string // default 127.0.0.1:0
	// Mail and Rcpt refuse when they return an error.
	Mail func(from string) error
	Rcpt func(to string) error
	// Status is the LMTP per-recipient reply after DATA.
	Status func(to string) error
	// Users enables AUTH PLAIN with these passwords, and requires it.
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
	// smtpd_discard_ehlo_keywords ("8BITMIME").
	Discard []string
}

// errDrop makes a hop close the connection instead of answering DATA.
var errDrop = testutil.ErrDrop

// hop is the shared recording peer (internal/testutil) as a next hop.
type hop struct {
	*testutil.Peer
	t    *testing.T
	addr string
	port string
}

func newHop(t *testing.T, o hopOptions) *hop {
	t.Helper()
	p := testutil.StartPeer(t, testutil.PeerOptions{
		Addr: o.Addr, Domain: "hop.test", LMTP: o.LMTP, TLS: o.TLS,
		DSN: o.DSN, SMTPUTF8: o.SMTPUTF8, Discard: o.Discard,
		Users: o.Users, AllowInsecureAuth: o.AllowInsecureAuth, RequireAuth: o.Users != nil,
		Mail: o.Mail, Rcpt: o.Rcpt, Data: o.Data, Status: o.Status,
		Timeout: testTimeout,
	})
	return &hop{Peer: p, t: t, addr: p.Addr, port: p.Port}
}

// dropSessions closes the server side of every connection, as a next hop
// does with idle clients.
func (h *hop) dropSessions() { h.DropSessions() }

// next waits for the next message the hop accepted.
func (h *hop) next() hopMsg {
	h.t.Helper()
	return h.Next(h.t, testTimeout)
}

// none checks that nothing (more) arrived.
func (h *hop) none() {
	h.t.Helper()
	h.None(h.t)
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

// selfSigned is a server configuration with a self-signed certificate
// for hop.test, which no client verifies.
func selfSigned(t *testing.T) *tls.Config {
	t.Helper()
	return testutil.ServerTLS(testutil.SelfSigned(t, "hop.test"))
}

// trustedTLS is a server configuration with a self-signed certificate for
// name and a root pool that trusts it, so that a TLS policy built with
// these roots verifies the next hop as name.
func trustedTLS(t *testing.T, name string) (*tls.Config, *x509.CertPool) {
	t.Helper()
	c := testutil.SelfSigned(t, name)
	roots := x509.NewCertPool()
	roots.AddCert(c.Leaf)
	return testutil.ServerTLS(c), roots
}
