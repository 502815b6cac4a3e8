// Package e2e runs the real securerelay binary against real peers over
// real sockets on loopback: swaks and openssl s_client as clients, go-smtp
// servers as downstream systems and MX hosts, a miekg/dns server as the
// resolver. Nothing here touches the internet, and every wait is bounded.
//
// The package has test files only. TestMain builds the binary once.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"securerelay/internal/loopback"
	"securerelay/internal/testutil"
)

// relayBin is the securerelay binary built by TestMain.
var relayBin string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "securerelay-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	relayBin = filepath.Join(dir, "securerelay")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", relayBin, "securerelay/cmd/securerelay")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "e2e: go build securerelay/cmd/securerelay: %v\n", err)
		return 1
	}
	return m.Run()
}

// inCI reports CI=true: a missing tool or privilege is then a failure.
func inCI() bool { return os.Getenv("CI") == "true" }

// skipOrFail skips the test, or fails it under CI=true.
func skipOrFail(t *testing.T, format string, args ...any) {
	t.Helper()
	if inCI() {
		t.Fatalf(format+" (CI=true: this is a failure, not a skip)", args...)
	}
	t.Skipf(format, args...)
}

// requireTool makes sure a program is on PATH.
func requireTool(t *testing.T, name string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		skipOrFail(t, "%s not found on PATH; install it (Debian package %s, see test.sh)", name, name)
	}
}

// ---------------------------------------------------------------------------
// The relay process.

// logBuffer collects the relay's stdout and stderr.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Relay is a running securerelay serve.
type Relay struct {
	t      *testing.T
	Config string
	cmd    *exec.Cmd
	log    *logBuffer
	exited chan struct{}
	err    error // from Wait, valid after exited is closed
	// stopped: Stop ran already (a test that restarts the relay).
	stopped bool
}

// writeFile writes content to path atomically (the relay may read it at
// any time, e.g. on SIGHUP).
func writeFile(t *testing.T, path, content string) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// startRelay runs `securerelay serve --config cfgPath` and waits until every
// address in addrs accepts connections. It stops the relay with SIGTERM when
// the test ends and checks that it exits 0; the relay's log is printed if
// the test failed.
func startRelay(t *testing.T, cfgPath string, addrs ...string) *Relay {
	t.Helper()
	return startRelayCmd(t, exec.Command(relayBin, "serve", "--config", cfgPath), cfgPath, addrs...)
}

// startRelayCmd is startRelay with the command that runs the relay (one
// that execs it, so that its PID is the relay's: signals reach it).
func startRelayCmd(t *testing.T, cmd *exec.Cmd, cfgPath string, addrs ...string) *Relay {
	t.Helper()
	r := &Relay{t: t, Config: cfgPath, log: &logBuffer{}, exited: make(chan struct{})}
	r.cmd = cmd
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatalf("starting relay: %v", err)
	}
	go func() {
		r.err = r.cmd.Wait()
		close(r.exited)
	}()
	t.Cleanup(r.stop)
	deadline := time.Now().Add(10 * time.Second)
	for _, a := range addrs {
		for {
			c, err := net.DialTimeout("tcp", a, time.Second)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-r.exited:
				t.Fatalf("relay exited before listening on %s: %v", a, r.err)
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("relay does not accept connections on %s after 10s: %v", a, err)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	return r
}

// Stop stops the relay now, as the end of the test would, checking its
// exit; a test that restarts the relay on the same state calls it.
func (r *Relay) Stop() { r.stop() }

func (r *Relay) stop() {
	if r.stopped {
		return
	}
	r.stopped = true
	t := r.t
	defer func() {
		if t.Failed() {
			t.Logf("relay log (%s):\n%s", r.Config, r.log.String())
		}
	}()
	select {
	case <-r.exited:
		t.Errorf("relay exited on its own before the end of the test: %v", r.err)
		return
	default:
	}
	if err := r.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Errorf("SIGTERM: %v", err)
	}
	select {
	case <-r.exited:
	case <-time.After(20 * time.Second):
		r.cmd.Process.Kill()
		<-r.exited
		t.Errorf("relay did not exit within 20s of SIGTERM")
		return
	}
	if r.err != nil {
		t.Errorf("relay exit after SIGTERM: %v (want exit status 0)", r.err)
	}
	if l := r.log.String(); strings.Contains(l, "DATA RACE") || strings.Contains(l, "panic") {
		t.Errorf("relay log shows a panic or data race")
	}
}

// Signal sends sig to the relay.
func (r *Relay) Signal(sig os.Signal) {
	r.t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		r.t.Fatalf("signal %v: %v", sig, err)
	}
}

// Running reports whether the relay process is still alive.
func (r *Relay) Running() bool {
	select {
	case <-r.exited:
		return false
	default:
		return true
	}
}

// Mark is a position in the log; WaitLog looks only at what comes after it.
func (r *Relay) Mark() int { return len(r.log.String()) }

// WaitLog waits for a log line after mark that contains every one of subs
// and returns it.
func (r *Relay) WaitLog(mark int, timeout time.Duration, subs ...string) string {
	r.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		l := r.log.String()
		if mark <= len(l) {
			for _, line := range strings.Split(l[mark:], "\n") {
				if containsAll(line, subs) {
					return line
				}
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("no relay log line with %q within %v", subs, timeout)
		}
		if !r.Running() {
			r.t.Fatalf("relay exited while waiting for a log line with %q: %v", subs, r.err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// LogLines returns the log lines that contain every one of subs.
func (r *Relay) LogLines(subs ...string) []string {
	var out []string
	for _, line := range strings.Split(r.log.String(), "\n") {
		if containsAll(line, subs) {
			out = append(out, line)
		}
	}
	return out
}

func containsAll(s string, subs []string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// runRelayCmd runs the binary with args (not serve) and returns its output
// and exit code.
func runRelayCmd(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, relayBin, args...)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		code = ee.ExitCode()
	default:
		t.Fatalf("securerelay %v: %v", args, err)
	}
	return o.String(), e.String(), code
}

// ---------------------------------------------------------------------------
// Configuration.

// freeAddr returns 127.0.0.1:PORT with a port that was free a moment ago,
// for the relay to bind (see package loopback for why not port 0).
func freeAddr(t *testing.T) string {
	t.Helper()
	return loopback.Addr(t)
}

// configHead is the common top of a test configuration.
func configHead(stateDir, resolver string) string {
	return configHeadChecks(stateDir, resolver, "off")
}

// configHeadChecks is configHead with the sender-domain check's action:
// most tests send from domains their test DNS does not serve, and test
// something else.
func configHeadChecks(stateDir, resolver, senderDomain string) string {
	return fmt.Sprintf(`hostname: relay.e2e.test
state_dir: %q
postmaster: postmaster@relay.e2e.test
log:
  level: info
dns:
  resolver: %q
  timeout: 2s
inbound:
  checks: {sender_domain: %s}
`, stateDir, resolver, senderDomain)
}

// outboundTimeouts keeps deliveries to test peers bounded.
const outboundTimeouts = `  connect_timeout: 5s
  command_timeout: 10s
  idle_connection_timeout: 1s
`

// ---------------------------------------------------------------------------
// swaks.

type swaksResult struct {
	Out  string
	Code int
}

// QueueID is the ID from "250 2.0.0 Ok: queued as ID", or "".
func (s swaksResult) QueueID() string {
	m := regexp.MustCompile(`queued as ([A-Za-z0-9]+)`).FindStringSubmatch(s.Out)
	if m == nil {
		return ""
	}
	return m[1]
}

// swaks runs swaks with args (plus a HELO name and a time-out).
func swaks(t *testing.T, args ...string) swaksResult {
	t.Helper()
	requireTool(t, "swaks")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	all := append([]string{"--helo", "client.e2e.test", "--timeout", "10"}, args...)
	cmd := exec.CommandContext(ctx, "swaks", all...)
	out, err := cmd.CombinedOutput()
	res := swaksResult{Out: string(out)}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		res.Code = ee.ExitCode()
	default:
		t.Fatalf("swaks: %v\n%s", err, out)
	}
	if ctx.Err() != nil {
		t.Fatalf("swaks timed out:\n%s", out)
	}
	return res
}

// mustSend runs swaks and requires the message to be accepted with 250.
func mustSend(t *testing.T, args ...string) swaksResult {
	t.Helper()
	res := swaks(t, args...)
	if res.Code != 0 || res.QueueID() == "" {
		t.Fatalf("swaks %v: exit %d, want 0 and \"250 ... queued as\":\n%s", args, res.Code, res.Out)
	}
	return res
}

// ErrorReplies are the error replies in the swaks transcript (the lines
// swaks marks "<** " or, under TLS, "<~* "), without that mark.
func (s swaksResult) ErrorReplies() []string {
	var out []string
	for _, l := range strings.Split(s.Out, "\n") {
		if strings.HasPrefix(l, "<**") || strings.HasPrefix(l, "<~*") {
			out = append(out, strings.TrimSpace(l[3:]))
		}
	}
	return out
}

// ---------------------------------------------------------------------------
// Test SMTP/LMTP servers (downstream systems and MX hosts).

// received is one message a test server accepted.
type received = testutil.Message

type serverOptions struct {
	LMTP bool
	TLS  *tls.Config
	// RcptErr, if set, decides each RCPT TO; nil error accepts.
	RcptErr func(to string) error
	// DataErr, if set, refuses every message at the end of DATA.
	DataErr error
	// SMTPUTF8 offers SMTPUTF8 (RFC 6531).
	SMTPUTF8 bool
	// DataDelay, if set, is waited after reading DATA, before the reply
	// (a delivery that stays in progress for a while).
	DataDelay time.Duration
}

// testServer is internal/testutil's recording peer: Messages, Rcpts
// (every RCPT TO seen, refused ones included), WaitMessages.
type testServer = testutil.Peer

// startTestServer serves SMTP (or LMTP) on ln until the test ends.
func startTestServer(t *testing.T, ln net.Listener, o serverOptions) *testServer {
	t.Helper()
	po := testutil.PeerOptions{Listener: ln, Domain: "downstream.e2e.test", LMTP: o.LMTP, TLS: o.TLS,
		Rcpt: o.RcptErr, SMTPUTF8: o.SMTPUTF8, MaxMessageBytes: 64 << 20, AllowInsecureAuth: true}
	if o.DataErr != nil || o.DataDelay > 0 {
		po.Data = func([]byte) error {
			time.Sleep(o.DataDelay)
			return o.DataErr
		}
	}
	return testutil.StartPeer(t, po)
}

// listenLoopback listens on 127.0.0.1 on a free port.
func listenLoopback(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// listenMX listens on ip:25, where MX delivery connects, as in reality.
// Binding port 25 needs root (or CAP_NET_BIND_SERVICE): without it the test
// skips, or fails under CI=true. A port held by someone else is waited for.
func listenMX(t *testing.T, ip string) net.Listener {
	t.Helper()
	return listenOn(t, ip, "25")
}

// ---------------------------------------------------------------------------
// A raw SMTP client, for what swaks would normalise away.

type rawSMTP struct {
	t    *testing.T
	conn net.Conn
	br   *bufio.Reader
}

// dialSMTP connects and reads the 220 greeting.
func dialSMTP(t *testing.T, addr string) *rawSMTP {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	c := &rawSMTP{t: t, conn: conn, br: bufio.NewReader(conn)}
	if code, text := c.Reply(); code != 220 {
		t.Fatalf("greeting: %d %s", code, text)
	}
	return c
}

// Write sends raw bytes.
func (c *rawSMTP) Write(s string) {
	c.t.Helper()
	c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.conn, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// Reply reads one (possibly multi-line) reply.
func (c *rawSMTP) Reply() (int, string) {
	c.t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(15 * time.Second))
	var lines []string
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			c.t.Fatalf("reading reply (after %q): %v", lines, err)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			c.t.Fatalf("malformed reply line %q", line)
		}
		lines = append(lines, line)
		if line[3] == ' ' {
			code, err := strconv.Atoi(line[:3])
			if err != nil {
				c.t.Fatalf("malformed reply line %q", line)
			}
			return code, strings.Join(lines, "\n")
		}
	}
}

// Cmd sends one command line and returns the reply.
func (c *rawSMTP) Cmd(line string) (int, string) {
	c.t.Helper()
	c.Write(line + "\r\n")
	return c.Reply()
}

// Expect sends a command and requires the reply code.
func (c *rawSMTP) Expect(line string, code int) string {
	c.t.Helper()
	got, text := c.Cmd(line)
	if got != code {
		c.t.Fatalf("%q: got %q, want %d", line, text, code)
	}
	return text
}

// ---------------------------------------------------------------------------
// Maildir.

// maildirMessages returns the messages in ROOT/<rcpt>/new.
func maildirMessages(t *testing.T, root, rcpt string) [][]byte {
	t.Helper()
	dir := filepath.Join(root, rcpt, "new")
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// waitMaildir waits until ROOT/<rcpt>/new holds at least n messages.
func waitMaildir(t *testing.T, root, rcpt string, n int, timeout time.Duration) [][]byte {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		m := maildirMessages(t, root, rcpt)
		if len(m) >= n {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("maildir %s/%s/new: %d messages after %v, want %d", root, rcpt, len(m), timeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// mailboxes lists the mailboxes (recipient directories) under a maildir root.
func mailboxes(t *testing.T, root string) []string {
	t.Helper()
	ents, err := os.ReadDir(root)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

// headerSection is the message up to the first empty line.
func headerSection(msg []byte) string {
	s := strings.ReplaceAll(string(msg), "\r\n", "\n")
	if i := strings.Index(s, "\n\n"); i >= 0 {
		return s[:i+1]
	}
	return s
}

// hasHeader reports whether the header section has a field named name.
func hasHeader(msg []byte, name string) bool {
	for _, l := range strings.Split(headerSection(msg), "\n") {
		if len(l) > len(name) && strings.EqualFold(l[:len(name)+1], name+":") {
			return true
		}
	}
	return false
}
