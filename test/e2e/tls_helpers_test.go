package e2e

// Helpers for the TLS policy tests (tlspolicy_test.go): a test CA, MX
// servers (SMTP or LMTP, AUTH optional) that record every command and
// every byte they receive, before TLS and inside it, a man-in-the-middle
// proxy that strips STARTTLS, a DNS server that plays a DNSSEC-validating
// resolver (the AD bit), and an MTA-STS policy host.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/mail"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"securerelay/dnsutil/dnstest"
	"securerelay/internal/testutil"
)

// ---------------------------------------------------------------------------
// Certificates: internal/testutil's maker (testutil.SelfSigned, ServerTLS,
// SPKISHA256, WriteKeyPair), with the CA written where the relay reads it.

// testCA is a certificate authority the relay trusts through
// outbound.tls.ca_file (for verify, secure and the MTA-STS fetch).
type testCA struct {
	*testutil.CA
	pemFile string
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	ca := testutil.NewCA(t, "securerelay e2e test CA")
	return &testCA{CA: ca, pemFile: ca.WritePEM(t)}
}

// issue makes a server certificate signed by ca, or self-signed when ca
// is nil. The chain sent includes the CA, as servers usually do.
func (ca *testCA) issue(t *testing.T, s testutil.CertSpec) tls.Certificate {
	t.Helper()
	var c *testutil.CA
	if ca != nil {
		c = ca.CA
	}
	return c.Issue(t, s)
}

// ---------------------------------------------------------------------------
// An MX that records everything: internal/testutil's peer with the raw
// bytes and the transcript kept.

// mailCmd is one MAIL FROM a policyMX saw.
type mailCmd struct {
	From       string
	RequireTLS bool
	TLS        bool
	// BODY, RET and ENVID as parsed (DSN ones only with mxOptions.DSN).
	Body, Ret, EnvID string
}

// rcptCmd is one RCPT TO a policyMX saw, with its DSN parameters.
type rcptCmd struct {
	To     string
	Notify string // "SUCCESS,FAILURE"
	ORCPT  string // "RFC822;bob@example.org", decoded
}

type mxOptions struct {
	TLS *tls.Config // nil: no STARTTLS
	// RequireTLS advertises REQUIRETLS (RFC 8689), which go-smtp does only
	// inside TLS.
	RequireTLS bool
	// LMTP speaks LMTP (LHLO) instead of SMTP.
	LMTP bool
	// Users offers AUTH PLAIN (inside TLS) with these passwords.
	Users map[string]string
	// DSN offers DSN (RFC 3461); the parameters are recorded.
	DSN bool
}

// policyMX is an MX host for TLS policy tests: it counts connections and
// records the raw bytes it received, the dialogue as the server read and
// wrote it (inside TLS too), every MAIL, RCPT and DATA, and who logged in.
type policyMX struct{ *testutil.Peer }

func startPolicyMX(t *testing.T, ln net.Listener, o mxOptions) *policyMX {
	t.Helper()
	return &policyMX{testutil.StartPeer(t, testutil.PeerOptions{Listener: ln, Domain: "mx.e2e.test",
		TLS: o.TLS, RequireTLS: o.RequireTLS, DSN: o.DSN, LMTP: o.LMTP, Users: o.Users, Wire: true})}
}

// Mails are the MAIL FROM commands the server saw.
func (m *policyMX) Mails() []mailCmd {
	var out []mailCmd
	for _, mc := range m.Peer.Mails() {
		out = append(out, mailCmd{From: mc.From, TLS: mc.TLS, RequireTLS: mc.Opts.RequireTLS,
			Body: string(mc.Opts.Body), Ret: string(mc.Opts.Return), EnvID: mc.Opts.EnvelopeID})
	}
	return out
}

// RcptCmds are the RCPT TO commands the server saw, with DSN parameters.
func (m *policyMX) RcptCmds() []rcptCmd {
	var out []rcptCmd
	for _, r := range m.Peer.RcptCmds() {
		rc := rcptCmd{To: r.To}
		var n []string
		for _, v := range r.Opts.Notify {
			n = append(n, string(v))
		}
		rc.Notify = strings.Join(n, ",")
		if r.Opts.OriginalRecipient != "" {
			rc.ORCPT = string(r.Opts.OriginalRecipientType) + ";" + r.Opts.OriginalRecipient
		}
		out = append(out, rc)
	}
	return out
}

// waitMessage waits for the first message the MX accepted.
func (m *policyMX) waitMessage(t *testing.T, timeout time.Duration) received {
	t.Helper()
	return m.WaitMessages(t, 1, timeout)[0]
}

// checkUntouched requires that the relay sent no envelope command and no
// message byte to m: no MAIL, RCPT or DATA reached the SMTP layer, and
// (for what was sent in clear) the raw bytes hold neither a MAIL, RCPT or
// DATA command nor the message's unique marker. connected says whether
// the relay must have connected at all (it must not when the policy
// refused the host before connecting).
func (m *policyMX) checkUntouched(t *testing.T, marker string, connected bool) {
	t.Helper()
	conns, mails, rcpts, msgs, raw := m.Conns(), len(m.Mails()), len(m.Rcpts()), len(m.Messages()), m.Raw()
	if connected && conns == 0 {
		t.Errorf("MX %s: the relay never connected; the test proves nothing", m.Addr)
	}
	if !connected && conns != 0 {
		t.Errorf("MX %s: the relay connected %d times to a host the policy forbids", m.Addr, conns)
	}
	if mails+rcpts+msgs != 0 {
		t.Errorf("MX %s saw %d MAIL, %d RCPT, %d messages; want none", m.Addr, mails, rcpts, msgs)
	}
	upper := strings.ToUpper(raw)
	for _, s := range []string{"MAIL FROM", "RCPT TO", "\r\nDATA\r\n", strings.ToUpper(marker)} {
		if strings.Contains(upper, s) {
			t.Errorf("MX %s received %q in its raw bytes: %q", m.Addr, s, raw)
		}
	}
}

// listenOn listens on ip:port, waiting for a port another test still
// holds; binding a port below 1024 needs root (skip, or fail under CI).
func listenOn(t *testing.T, ip, port string) net.Listener {
	t.Helper()
	addr := net.JoinHostPort(ip, port)
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := net.Listen("tcp", addr)
		if err == nil {
			return l
		}
		if errors.Is(err, syscall.EACCES) || errors.Is(err, syscall.EPERM) {
			skipOrFail(t, "cannot bind %s (run as root): %v", addr, err)
		}
		if !errors.Is(err, syscall.EADDRINUSE) || time.Now().After(deadline) {
			skipOrFail(t, "cannot bind %s: %v", addr, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// A man in the middle that strips STARTTLS.

// stripProxy forwards SMTP between the relay and a real server and removes
// STARTTLS from the server's EHLO reply, as an attacker on the path would.
type stripProxy struct {
	Addr string

	mu       sync.Mutex
	fromPeer bytes.Buffer // what the relay sent
	stripped int          // STARTTLS lines removed
}

func startStripProxy(t *testing.T, ln net.Listener, backend string) *stripProxy {
	t.Helper()
	p := &stripProxy{Addr: ln.Addr().String()}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var open []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.DialTimeout("tcp", backend, 5*time.Second)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			open = append(open, c, s)
			mu.Unlock()
			wg.Add(2)
			go func() {
				defer wg.Done()
				defer s.Close()
				io.Copy(s, io.TeeReader(c, fromPeerWriter{p}))
			}()
			go func() {
				defer wg.Done()
				defer c.Close()
				p.relayReplies(c, s)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range open {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return p
}

// fromPeerWriter keeps what the relay sent through the proxy.
type fromPeerWriter struct{ p *stripProxy }

func (w fromPeerWriter) Write(b []byte) (int, error) {
	w.p.mu.Lock()
	defer w.p.mu.Unlock()
	return w.p.fromPeer.Write(b)
}

// relayReplies copies server replies to the client one whole reply at a
// time, leaving STARTTLS out of every multi-line reply.
func (p *stripProxy) relayReplies(client, server net.Conn) {
	br := bufio.NewReader(server)
	var reply []string
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			if _, err := io.WriteString(client, line+"\r\n"); err != nil {
				return
			}
			continue
		}
		if strings.EqualFold(strings.TrimSpace(line[4:]), "STARTTLS") {
			p.mu.Lock()
			p.stripped++
			p.mu.Unlock()
		} else {
			reply = append(reply, line)
		}
		if line[3] != ' ' {
			continue
		}
		var out strings.Builder
		for i, l := range reply {
			sep := "-"
			if i == len(reply)-1 {
				sep = " "
			}
			out.WriteString(l[:3] + sep + l[4:] + "\r\n")
		}
		reply = nil
		if _, err := io.WriteString(client, out.String()); err != nil {
			return
		}
	}
}

func (p *stripProxy) FromPeer() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.fromPeer.String()
}

func (p *stripProxy) Stripped() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.stripped
}

// ---------------------------------------------------------------------------
// DNS with the AD bit.

// newADDNS answers from a zone like a DNSSEC-validating resolver: the AD
// bit is set on every answer, positive or negative, to a query that asks
// for DNSSEC (DO or AD), except for names at or under the unsigned domains.
func newADDNS(t *testing.T, zone string, unsigned ...string) *dnstest.Server {
	t.Helper()
	s := dnstest.NewServer(t, zone)
	insecure := dnstest.Signed(unsigned...)
	s.Validate(func(name string) bool { return !insecure(name) })
	return s
}

// ---------------------------------------------------------------------------
// MTA-STS: the policy host.

// stsHost serves https://mta-sts.DOMAIN/.well-known/mta-sts.txt for
// several domains with one certificate naming all of them, and any other
// files given (WKD keys at https://openpgpkey.DOMAIN/.well-known/…).
type stsHost struct {
	Addr string

	mu       sync.Mutex
	policies map[string]string // by Host
	fetches  map[string]int
	files    map[string][]byte // by "host/path"
	gets     map[string]int    // of files, by "host/path"
}

func startSTSHost(t *testing.T, ln net.Listener, ca *testCA, policies map[string]string) *stsHost {
	t.Helper()
	return startHTTPSHost(t, ln, ca, policies, nil)
}

// startHTTPSHost is startSTSHost that also serves files, by URL without
// the query ("openpgpkey.partner.test/.well-known/openpgpkey/…"); the
// certificate names their hosts too.
func startHTTPSHost(t *testing.T, ln net.Listener, ca *testCA, policies map[string]string, files map[string][]byte) *stsHost {
	t.Helper()
	h := &stsHost{Addr: ln.Addr().String(), policies: map[string]string{}, fetches: map[string]int{},
		files: map[string][]byte{}, gets: map[string]int{}}
	var names []string
	for d, p := range policies {
		h.policies["mta-sts."+d] = p
		names = append(names, "mta-sts."+d)
	}
	for u, body := range files {
		h.files[u] = body
		if host, _, _ := strings.Cut(u, "/"); !slices.Contains(names, host) {
			names = append(names, host)
		}
	}
	slices.Sort(names)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			host, _, err := net.SplitHostPort(r.Host)
			if err != nil {
				host = r.Host
			}
			host = strings.ToLower(host)
			h.mu.Lock()
			p, ok := h.policies[host]
			if r.URL.Path == "/.well-known/mta-sts.txt" {
				h.fetches[host]++
			}
			f, isFile := h.files[host+r.URL.Path]
			if isFile {
				h.gets[host+r.URL.Path]++
			}
			h.mu.Unlock()
			if isFile {
				w.Header().Set("Content-Type", "application/octet-stream")
				w.Write(f)
				return
			}
			if !ok || r.URL.Path != "/.well-known/mta-sts.txt" {
				http.NotFound(w, r)
				return
			}
			w.Header().Set("Content-Type", "text/plain")
			io.WriteString(w, p)
		}),
		TLSConfig:         testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: names})),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          log.New(io.Discard, "", 0),
	}
	done := make(chan struct{})
	go func() { defer close(done); srv.ServeTLS(ln, "", "") }()
	t.Cleanup(func() {
		srv.Close()
		<-done
	})
	return h
}

func (h *stsHost) Fetches(domain string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.fetches["mta-sts."+domain]
}

// Gets counts the requests for a file ("host/path").
func (h *stsHost) Gets(file string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.gets[file]
}

// ---------------------------------------------------------------------------
// The relay.

// policyRelayOpts configures startPolicyRelay.
type policyRelayOpts struct {
	Resolver string
	DNSSEC   bool   // dns.dnssec_validating
	TLS      string // lines under outbound.tls, indented by four spaces
	Inbound  bool   // also an inbound listener
	// CertFile and KeyFile are the listeners' certificate (self-signed
	// when empty).
	CertFile, KeyFile string
	// Routes are lines under outbound.routes, indented by four spaces.
	Routes string
	// IdleTimeout replaces outbound.idle_connection_timeout (1s).
	IdleTimeout string
	// Outbound are more lines under outbound (encryption:), indented by
	// two spaces; Domain more lines under domains.example.test, indented
	// by four; Domains more domains, indented by two; Queue replaces the
	// lines under queue (retry: [1h]), indented by two.
	Outbound, Domain, Domains, Queue string
}

// policyRelay is a relay with a submission listener that trusts
// 127.0.0.0/8, example.test delivered to a maildir (where DSNs to
// senders @example.test land), and retries an hour apart, so that a
// deferral stays one attempt for the length of a test.
type policyRelay struct {
	*Relay
	Sub, MX, Mail, Cfg string
}

func startPolicyRelay(t *testing.T, o policyRelayOpts) *policyRelay {
	t.Helper()
	dir := t.TempDir()
	p := &policyRelay{Sub: freeAddr(t), Mail: filepath.Join(dir, "mail"), Cfg: filepath.Join(dir, "relay.yaml")}
	head := configHead(filepath.Join(dir, "state"), o.Resolver)
	if o.DNSSEC {
		head = strings.Replace(head, "  timeout: 2s\n", "  timeout: 2s\n  dnssec_validating: true\n", 1)
	}
	var b strings.Builder
	b.WriteString(head)
	if o.CertFile != "" {
		fmt.Fprintf(&b, "tls:\n  cert: %q\n  key: %q\n", o.CertFile, o.KeyFile)
	}
	b.WriteString("listeners:\n")
	fmt.Fprintf(&b, "  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8]}\n", p.Sub)
	addrs := []string{p.Sub}
	if o.Inbound {
		p.MX = freeAddr(t)
		addrs = append(addrs, p.MX)
		fmt.Fprintf(&b, "  - {name: mx, address: %q, role: inbound}\n", p.MX)
	}
	fmt.Fprintf(&b, "domains:\n  example.test:\n    deliver_to: %q\n%s%s", "maildir:"+p.Mail, o.Domain, o.Domains)
	queue := "  retry: [1h]\n"
	if o.Queue != "" {
		queue = o.Queue
	}
	b.WriteString("queue:\n" + queue)
	timeouts := outboundTimeouts
	if o.IdleTimeout != "" {
		timeouts = strings.Replace(timeouts, "idle_connection_timeout: 1s", "idle_connection_timeout: "+o.IdleTimeout, 1)
	}
	b.WriteString("outbound:\n" + timeouts)
	if o.Routes != "" {
		b.WriteString("  routes:\n" + o.Routes)
	}
	b.WriteString(o.Outbound)
	b.WriteString("  tls:\n" + o.TLS)
	writeFile(t, p.Cfg, b.String())
	if out, errOut, code := runRelayCmd(t, "check-config", "--config", p.Cfg); code != 0 {
		t.Fatalf("check-config: exit %d: %s %s\n%s", code, out, errOut, b.String())
	}
	p.Relay = startRelay(t, p.Cfg, addrs...)
	return p
}

// send submits one message and returns its queue ID.
func (p *policyRelay) send(t *testing.T, from, to, subject string) string {
	t.Helper()
	return mustSend(t, "--server", p.Sub, "--from", from, "--to", to, "--header", "Subject: "+subject).QueueID()
}

// attempt is the queue's log line for one delivery attempt.
type attempt struct {
	Status string // sent, deferred, bounced or held
	Line   string
}

// waitAttempt waits for the queue's result line for id; it fails t (not
// the test that started the relay), so subtests may call it.
func (p *policyRelay) waitAttempt(t *testing.T, id string, timeout time.Duration) attempt {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, st := range []string{"sent", "deferred", "bounced", "held"} {
			if l := p.LogLines("msg="+st, "queue_id="+id, "status="+st); len(l) > 0 {
				return attempt{Status: st, Line: l[0]}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no delivery result for %s within %v", id, timeout)
		}
		if !p.Running() {
			t.Fatalf("relay exited while waiting for the delivery of %s", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitRcpt is waitAttempt for one recipient of a message.
func (p *policyRelay) waitRcpt(t *testing.T, id, rcpt string, timeout time.Duration) attempt {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, st := range []string{"sent", "deferred", "bounced", "held"} {
			if l := p.LogLines("msg="+st, "queue_id="+id, "to="+rcpt+" ", "status="+st); len(l) > 0 {
				return attempt{Status: st, Line: l[0]}
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no delivery result for %s to %s within %v", id, rcpt, timeout)
		}
		if !p.Running() {
			t.Fatalf("relay exited while waiting for the delivery of %s", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitLine is WaitLog for subtests: it fails the calling test.
func (p *policyRelay) waitLine(t *testing.T, timeout time.Duration, subs ...string) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if l := p.LogLines(subs...); len(l) > 0 {
			return l[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no relay log line with %q within %v", subs, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// queueTLSLine waits until `queue list` shows the TLS line under id.
func (p *policyRelay) queueTLSLine(t *testing.T, id string, timeout time.Duration) string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out, errOut, code := runRelayCmd(t, "queue", "list", "--config", p.Cfg)
		if code != 0 {
			t.Fatalf("queue list: exit %d: %s", code, errOut)
		}
		lines := strings.Split(out, "\n")
		for i, l := range lines {
			if strings.HasPrefix(l, id) && i+1 < len(lines) && strings.HasPrefix(lines[i+1], "  tls: ") {
				return lines[i+1]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("queue list shows no tls line under %s after %v:\n%s", id, timeout, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ---------------------------------------------------------------------------
// A raw client over STARTTLS.

// startTLS upgrades a raw session with STARTTLS; the relay's certificate
// is self-signed, and who it is does not matter here.
func (c *rawSMTP) startTLS() tls.ConnectionState {
	c.t.Helper()
	c.Expect("STARTTLS", 220)
	tc := tls.Client(c.conn, &tls.Config{InsecureSkipVerify: true, ServerName: "relay.e2e.test"})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := tc.HandshakeContext(ctx); err != nil {
		c.t.Fatalf("STARTTLS handshake: %v", err)
	}
	c.conn, c.br = tc, bufio.NewReader(tc)
	return tc.ConnectionState()
}

// ---------------------------------------------------------------------------
// DSNs.

// dsnParts returns the human-readable part of a DSN, decoded and with
// whitespace runs collapsed (the text is wrapped), and the
// message/delivery-status part as is.
func dsnParts(t *testing.T, msg []byte) (text, status string) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatalf("DSN: %v\n%s", err, msg)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" {
		t.Fatalf("DSN Content-Type %q (%v), want multipart/report", m.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	for {
		part, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("DSN: %v", err)
		}
		body, err := io.ReadAll(part)
		if err != nil {
			t.Fatalf("DSN part: %v", err)
		}
		ct, _, _ := mime.ParseMediaType(part.Header.Get("Content-Type"))
		switch ct {
		case "text/plain":
			if text == "" {
				text = strings.Join(strings.Fields(string(body)), " ")
			}
		case "message/delivery-status":
			status = string(body)
		}
	}
	return text, status
}

// tempFile writes content to a new file and returns its name.
func tempFile(t *testing.T, name, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}
