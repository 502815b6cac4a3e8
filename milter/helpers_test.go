package milter

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"

	"securerelay/internal/loopback"
)

// script drives a test milter (go-milter's server side): what it answers
// at each stage, and a record of what it received.
type script struct {
	// resp maps a stage ("connect", "helo", "mail", "rcpt", "data",
	// "header", "eoh", "body") to the answer; missing means continue.
	resp map[string]*gomilter.Response
	// eom runs at end of message; nil accepts.
	eom func(m gomilter.Modifier) (*gomilter.Response, error)

	mu      sync.Mutex
	events  []string
	headers []string // "Name: value" as received
	body    bytes.Buffer
	macros  map[string]string
	conns   atomic.Int32
}

var watchedMacros = []string{"i", "j", "v", "_", "r", "{daemon_name}", "{daemon_addr}", "{daemon_port}",
	"{if_addr}", "{client_addr}", "{client_port}", "{client_name}", "{client_ptr}", "{tls_version}",
	"{cipher}", "{auth_type}", "{auth_authen}", "{mail_addr}", "{mail_host}", "{rcpt_addr}", "{rcpt_host}"}

func (s *script) record(ev string, m gomilter.Modifier) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.events = append(s.events, ev)
	if s.macros == nil {
		s.macros = map[string]string{}
	}
	for _, n := range watchedMacros {
		if v, ok := m.GetEx(n); ok {
			s.macros[n] = v
		}
	}
}

func (s *script) answer(stage string) (*gomilter.Response, error) {
	if r := s.resp[stage]; r != nil {
		return r, nil
	}
	return gomilter.RespContinue, nil
}

func (s *script) Events() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.events...)
}

func (s *script) Headers() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.headers...)
}

func (s *script) Body() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.body.String()
}

func (s *script) Macros() map[string]string {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]string{}
	for k, v := range s.macros {
		out[k] = v
	}
	return out
}

type testMilter struct{ s *script }

func (t *testMilter) NewConnection(gomilter.Modifier) error { t.s.conns.Add(1); return nil }
func (t *testMilter) Connect(host, family string, port uint16, addr string, m gomilter.Modifier) (*gomilter.Response, error) {
	t.s.record(fmt.Sprintf("connect %s %s %d %s", host, family, port, addr), m)
	return t.s.answer("connect")
}
func (t *testMilter) Helo(name string, m gomilter.Modifier) (*gomilter.Response, error) {
	t.s.record("helo "+name, m)
	return t.s.answer("helo")
}
func (t *testMilter) MailFrom(from, args string, m gomilter.Modifier) (*gomilter.Response, error) {
	t.s.record("mail <"+from+">", m)
	return t.s.answer("mail")
}
func (t *testMilter) RcptTo(rcpt, args string, m gomilter.Modifier) (*gomilter.Response, error) {
	t.s.record("rcpt <"+rcpt+">", m)
	return t.s.answer("rcpt")
}
func (t *testMilter) Data(m gomilter.Modifier) (*gomilter.Response, error) {
	t.s.record("data", m)
	return t.s.answer("data")
}
func (t *testMilter) Header(name, value string, m gomilter.Modifier) (*gomilter.Response, error) {
	t.s.record("header", m)
	t.s.mu.Lock()
	t.s.headers = append(t.s.headers, name+":"+value)
	t.s.mu.Unlock()
	return t.s.answer("header")
}
func (t *testMilter) Headers(m gomilter.Modifier) (*gomilter.Response, error) {
	t.s.record("eoh", m)
	return t.s.answer("eoh")
}
func (t *testMilter) BodyChunk(chunk []byte, m gomilter.Modifier) (*gomilter.Response, error) {
	t.s.record(fmt.Sprintf("body %d", len(chunk)), m)
	t.s.mu.Lock()
	t.s.body.Write(chunk)
	t.s.mu.Unlock()
	return t.s.answer("body")
}
func (t *testMilter) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	t.s.record("eom", m)
	if t.s.eom != nil {
		return t.s.eom(m)
	}
	return gomilter.RespAccept, nil
}
func (t *testMilter) Abort(m gomilter.Modifier) error { t.s.record("abort", m); return nil }
func (t *testMilter) Unknown(cmd string, m gomilter.Modifier) (*gomilter.Response, error) {
	return gomilter.RespContinue, nil
}
func (t *testMilter) Cleanup(gomilter.Modifier) {}

// startMilter runs a go-milter server for s on 127.0.0.1 and returns its
// address in Postfix's inet: form. protocol is what the milter asks for.
func startMilter(t testing.TB, s *script, actions gomilter.OptAction, protocol gomilter.OptProtocol) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := gomilter.NewServer(
		gomilter.WithMilter(func() gomilter.Milter { return &testMilter{s: s} }),
		gomilter.WithActions(actions),
		gomilter.WithProtocols(protocol),
	)
	go srv.Serve(ln) //nolint:errcheck // ends with Close
	t.Cleanup(func() { srv.Close() })
	return "inet:" + ln.Addr().String()
}

const allActions = gomilter.AllClientSupportedActionMasks &^ gomilter.OptSetMacros

func testEnvelope() *Envelope {
	return &Envelope{
		QueueID:    "4XyZ1abc",
		Hostname:   "mx1.example.net",
		DaemonName: "mx",
		ClientAddr: netip.MustParseAddr("192.0.2.7"),
		ClientPort: 40123,
		ClientName: "mail.sender.example",
		LocalAddr:  netip.MustParseAddrPort("127.0.0.1:25"),
		Helo:       "mail.sender.example",
		AuthUser:   "",
		TLSVersion: "TLSv1.3",
		TLSCipher:  "TLS_AES_128_GCM_SHA256",
		From:       "alice@sender.example",
		Rcpts:      []string{"bob@example.net", "carol@example.net"},
	}
}

const testMessage = "Received: from mail.sender.example ([192.0.2.7])\r\n" +
	"\tby mx1.example.net; Tue, 1 Dec 2026 10:00:00 +0000\r\n" +
	"From: Alice <alice@sender.example>\r\n" +
	"To: bob@example.net, carol@example.net\r\n" +
	"Subject:  two spaces\r\n" +
	"Message-ID: <1@check.sender.example>\r\n" +
	"\r\n" +
	"Hello Bob,\r\n" +
	"\r\n" +
	"this is the body.\r\n"

// opener returns an open function over msg that counts its calls.
func opener(msg string, calls *atomic.Int32) func() (io.Reader, error) {
	return func() (io.Reader, error) {
		if calls != nil {
			calls.Add(1)
		}
		return strings.NewReader(msg), nil
	}
}

func newTestChain(t testing.TB, cfgs ...Config) *Chain {
	t.Helper()
	c, err := NewChain(cfgs, testLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func testLogger(t testing.TB) *slog.Logger {
	if testing.Verbose() {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func check(t testing.TB, c *Chain, env *Envelope, msg string) *Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	res, err := c.Check(ctx, env, opener(msg, nil))
	if err != nil {
		t.Fatalf("Check: %v", err)
	}
	return res
}

func applied(t testing.TB, res *Result, msg string) string {
	t.Helper()
	var b bytes.Buffer
	if err := res.Apply(&b, strings.NewReader(msg)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
	return b.String()
}

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) int {
	t.Helper()
	return loopback.Port(t)
}

func netipMust(s string) netip.Addr { return netip.MustParseAddr(s) }

func itoa(i int) string { return fmt.Sprint(i) }

func netListenUnix(path string) (net.Listener, error) { return net.Listen("unix", path) }
