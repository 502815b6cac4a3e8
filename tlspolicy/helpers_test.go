package tlspolicy_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"net/smtp"
	"strings"
	"sync"
	"testing"
	"time"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/internal/testutil"
	"securerelay/tlspolicy"
)

// ---- clock ----

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// ---- certificates ----

// issue makes a server certificate for names signed by ca (self-signed
// when ca is nil) with testutil's maker; the chain sent includes the CA.
func issue(t *testing.T, ca *testutil.CA, names []string, o testutil.CertSpec) tls.Certificate {
	t.Helper()
	o.Names = names
	return ca.Issue(t, o)
}

// ---- DNS: a zone server that plays a validating resolver ----

// dnsServer answers from a zone and sets the AD bit on answers for names
// under the signed zones ("=name" for that name only), when the query asks
// for DNSSEC, as a validating resolver does.
type dnsServer struct{ *dnstest.Server }

func newDNS(t *testing.T, zone string, signed ...string) *dnsServer {
	t.Helper()
	s := &dnsServer{dnstest.NewServer(t, zone)}
	s.Validate(dnstest.Signed(signed...))
	return s
}

func (s *dnsServer) client() *dnsutil.Client { return dnsutil.New(s.Addr(), 2*time.Second) }

// ---- MTA-STS policy server ----

type stsResponse struct {
	status int
	ctype  string
	body   string
	// redirect, when set, answers 302 to this URL.
	redirect string
	delay    time.Duration
}

// stsServer is one HTTPS server for every mta-sts.<domain> host: the
// certificate is chosen by SNI (a CA-issued one by default), the answer
// by Host.
type stsServer struct {
	srv *httptest.Server
	ca  *testutil.CA

	mu      sync.Mutex
	certs   map[string]*tls.Certificate
	answers map[string]stsResponse
	fetches map[string]int
}

func newSTSServer(t *testing.T, ca *testutil.CA) *stsServer {
	t.Helper()
	s := &stsServer{ca: ca, certs: map[string]*tls.Certificate{}, answers: map[string]stsResponse{}, fetches: map[string]int{}}
	s.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		host := strings.ToLower(r.Host)
		s.mu.Lock()
		a, ok := s.answers[host]
		if r.URL.Path == "/.well-known/mta-sts.txt" {
			s.fetches[host]++
		}
		s.mu.Unlock()
		if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
			http.NotFound(w, r)
			return
		}
		time.Sleep(a.delay)
		if a.redirect != "" {
			http.Redirect(w, r, a.redirect, http.StatusFound)
			return
		}
		w.Header().Set("Content-Type", a.ctype)
		w.WriteHeader(a.status)
		io.WriteString(w, a.body)
	}))
	s.srv.TLS = &tls.Config{GetCertificate: func(hello *tls.ClientHelloInfo) (*tls.Certificate, error) {
		name := strings.ToLower(hello.ServerName)
		s.mu.Lock()
		c, ok := s.certs[name]
		s.mu.Unlock()
		if ok {
			return c, nil
		}
		c2 := issue(t, ca, []string{name}, testutil.CertSpec{})
		s.mu.Lock()
		s.certs[name] = &c2
		s.mu.Unlock()
		return &c2, nil
	}}
	s.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	s.srv.StartTLS()
	t.Cleanup(s.srv.Close)
	return s
}

// policy serves body as the policy of domain.
func (s *stsServer) policy(domain, body string) {
	s.answer(domain, stsResponse{status: 200, ctype: "text/plain; charset=utf-8", body: body})
}

func (s *stsServer) answer(domain string, a stsResponse) {
	s.mu.Lock()
	s.answers["mta-sts."+domain] = a
	s.mu.Unlock()
}

func (s *stsServer) cert(domain string, c tls.Certificate) {
	s.mu.Lock()
	s.certs["mta-sts."+domain] = &c
	s.mu.Unlock()
}

func (s *stsServer) fetchCount(domain string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.fetches["mta-sts."+domain]
}

// client trusts the test CA and reaches every host at the test server.
func (s *stsServer) client() *http.Client {
	addr := s.srv.Listener.Addr().String()
	var d net.Dialer
	return &http.Client{Transport: &http.Transport{
		// Every fetch must see the certificate the test set up now.
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{RootCAs: s.ca.Pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// ---- SMTP peers ----

// mx is the shared recording peer, as the MX host of a policy test.
type mx struct {
	*testutil.Peer
	addr string
}

type mxOpts struct {
	tls        *tls.Config // nil: no STARTTLS
	requireTLS bool        // advertise REQUIRETLS
}

func newMX(t *testing.T, o mxOpts) *mx {
	t.Helper()
	p := testutil.StartPeer(t, testutil.PeerOptions{Domain: "mx.test", TLS: o.tls, RequireTLS: o.requireTLS, Timeout: 10 * time.Second})
	return &mx{Peer: p, addr: p.Addr}
}

// received is what reached the MX: the MAIL FROM commands, and per
// message its data and whether the session was encrypted.
func (m *mx) received() (mails int, messages []string, encrypted []bool) {
	for _, msg := range m.Messages() {
		messages = append(messages, string(msg.Data))
		encrypted = append(encrypted, msg.TLS)
	}
	return len(m.Mails()), messages, encrypted
}

// tlsServer returns a server config with cert, tweaked by mod.
func tlsServer(cert tls.Certificate, mod func(*tls.Config)) *tls.Config {
	c := &tls.Config{Certificates: []tls.Certificate{cert}}
	if mod != nil {
		mod(c)
	}
	return c
}

const testMessage = "Subject: test\r\n\r\nconfidential\r\n"

// send delivers one message to addr as the delivery engine should use the
// package: STARTTLS with h.TLSConfig, h.Evaluate before MAIL FROM, and a
// reconnect in clear text only when the level allows it. It returns the
// outcome of the session that decided and the error that stopped it.
func send(t *testing.T, h *tlspolicy.HostPolicy, addr string) (tlspolicy.Outcome, error) {
	t.Helper()
	useTLS := h.UseSTARTTLS()
	for attempt := 0; attempt < 2; attempt++ {
		conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		conn.SetDeadline(time.Now().Add(10 * time.Second))
		c, err := smtp.NewClient(conn, h.Host)
		if err != nil {
			conn.Close()
			t.Fatal(err)
		}
		if err := c.Hello("client.test"); err != nil {
			c.Close()
			t.Fatal(err)
		}
		offered, _ := c.Extension("STARTTLS")
		var cs *tls.ConnectionState
		var herr error
		if offered && useTLS {
			herr = c.StartTLS(h.TLSConfig(nil))
			if herr == nil {
				st, _ := c.TLSConnectionState()
				cs = &st
			}
		}
		o := h.Evaluate(offered, cs, herr)
		if o.Failure != nil {
			c.Close()
			return o, o.Failure
		}
		if herr != nil {
			// may: the handshake failed, so the session is unusable;
			// reconnect without STARTTLS.
			c.Close()
			useTLS = false
			continue
		}
		if h.RequireTLS {
			ok, _ := c.Extension("REQUIRETLS")
			if err := h.CheckRequireTLS(ok); err != nil {
				c.Close()
				return o, err
			}
		}
		if err := c.Mail("sender@client.test"); err != nil {
			c.Close()
			return o, err
		}
		if err := c.Rcpt("rcpt@" + h.Domain); err != nil {
			c.Close()
			return o, err
		}
		w, err := c.Data()
		if err != nil {
			c.Close()
			return o, err
		}
		io.WriteString(w, testMessage)
		if err := w.Close(); err != nil {
			c.Close()
			return o, err
		}
		c.Quit()
		return o, nil
	}
	return tlspolicy.Outcome{}, errors.New("send: gave up after two sessions")
}

// stripProxy forwards to target and hides STARTTLS from the client, as a
// man in the middle does: it rewrites the EHLO keyword in server replies.
func stripProxy(t *testing.T, target string) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				go func() { _, _ = io.Copy(s, c) }()
				r := bufio.NewReader(s)
				for {
					line, err := r.ReadString('\n')
					if err != nil {
						return
					}
					line = strings.Replace(line, "STARTTLS", "XSTRIPPED", 1)
					if _, err := io.WriteString(c, line); err != nil {
						return
					}
				}
			}()
		}
	}()
	return l.Addr().String()
}

// must fails the test on error.
func must[T any](t *testing.T) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

// failureCode is the Code of err's *Failure, or "" when err is nil.
func failureCode(t *testing.T, err error) tlspolicy.Code {
	t.Helper()
	if err == nil {
		return ""
	}
	var f *tlspolicy.Failure
	if !errors.As(err, &f) {
		t.Fatalf("error %v (%T) is not a *tlspolicy.Failure", err, err)
	}
	return f.Code
}

func errorsAs(err error, target any) bool { return errors.As(err, target) }
