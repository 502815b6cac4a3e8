package smtpd_test

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/queue"
	"securerelay/smtpd"
)

// Every wait in these tests is bounded by this; nothing sleeps to
// synchronise.
const testTimeout = 10 * time.Second

var discard = slog.New(slog.DiscardHandler)

// delivered is what the recording Deliverer saw of one spooled message.
type delivered struct {
	ID      string
	Env     queue.Envelope
	Data    []byte
	Content queue.Content
}

// recorder is a queue.Deliverer that reports every message it is handed
// and keeps it spooled (TempFail), so the spool file stays for inspection.
type recorder struct{ ch chan delivered }

func (r *recorder) Deliver(ctx context.Context, d *queue.Delivery) []queue.Result {
	var data []byte
	if rc, err := d.Open(); err == nil {
		data, _ = io.ReadAll(rc)
		rc.Close()
	}
	select {
	case r.ch <- delivered{ID: d.ID, Env: *d.Envelope, Data: data, Content: d.Content}:
	case <-ctx.Done():
	}
	res := make([]queue.Result, len(d.Rcpts))
	for i := range res {
		res[i] = queue.Result{Status: queue.TempFail, Code: "4.0.0", Reply: "kept by the test recorder"}
	}
	return res
}

// harness is one listener on 127.0.0.1 with a real queue in a temporary
// directory behind it.
type harness struct {
	t     *testing.T
	srv   *smtpd.Server
	addr  string
	q     *queue.Queue
	dir   string
	rec   *recorder
	serve chan error
}

// start runs a listener for role; mod adjusts the options before New.
// STARTTLS is on by default with a self-signed certificate.
func start(t *testing.T, role smtpd.Role, mod func(*smtpd.Options)) *harness {
	t.Helper()
	h := &harness{t: t, dir: t.TempDir(), rec: &recorder{ch: make(chan delivered, 100)}, serve: make(chan error, 1)}
	q, err := queue.Open(queue.Options{
		Dir:       h.dir,
		Retry:     []time.Duration{time.Hour},
		Logger:    discard,
		Deliverer: h.rec,
	})
	if err != nil {
		t.Fatal(err)
	}
	h.q = q
	q.Start()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		q.Stop(ctx)
	})

	certs, err := smtpd.LoadCerts("", "", t.TempDir(), "mx.ours.test", discard)
	if err != nil {
		t.Fatal(err)
	}
	o := smtpd.Options{
		Name:           "mx",
		Address:        "127.0.0.1:0",
		Hostname:       "mx.ours.test",
		TLS:            certs.Config(),
		CommandTimeout: testTimeout,
		DataTimeout:    testTimeout,
		Queue:          q,
		Role:           role,
		Logger:         discard,
	}
	if mod != nil {
		mod(&o)
	}
	h.srv = smtpd.New(o)
	if err := h.srv.Listen(); err != nil {
		t.Fatal(err)
	}
	h.addr = h.srv.Addr().String()
	go func() { h.serve <- h.srv.Serve() }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
		defer cancel()
		h.srv.Shutdown(ctx)
		select {
		case err := <-h.serve:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(testTimeout):
			t.Errorf("Serve did not return after Shutdown")
		}
	})
	return h
}

// spooled lists the queue IDs of the complete messages in the spool.
func (h *harness) spooled() []string {
	h.t.Helper()
	infos, err := queue.Scan(h.dir)
	if err != nil {
		h.t.Fatal(err)
	}
	var ids []string
	for _, in := range infos {
		if in.Err != nil {
			h.t.Errorf("spool file %s is damaged: %v", in.ID, in.Err)
			continue
		}
		ids = append(ids, in.ID)
	}
	return ids
}

func (h *harness) expectNothingSpooled() {
	h.t.Helper()
	if ids := h.spooled(); len(ids) != 0 {
		h.t.Errorf("spool holds %v, want nothing", ids)
	}
	if n := h.q.Len(); n != 0 {
		h.t.Errorf("queue.Len() = %d, want 0", n)
	}
}

// next waits for the recorder to see a message.
func (h *harness) next() delivered {
	h.t.Helper()
	select {
	case d := <-h.rec.ch:
		return d
	case <-time.After(testTimeout):
		h.t.Fatal("no message reached the deliverer")
	}
	return delivered{}
}

var queuedRe = regexp.MustCompile(`queued as ([0-9A-F]+)$`)

// queueID checks a 250 reply after DATA and returns the ID it names; the
// message must be in the spool by the time the client has the reply.
func (h *harness) queueID(code int, msg string) string {
	h.t.Helper()
	if code != 250 {
		h.t.Fatalf("after DATA: %d %s, want 250", code, msg)
	}
	m := queuedRe.FindStringSubmatch(msg)
	if m == nil {
		h.t.Fatalf("250 reply %q does not say \"queued as <ID>\"", msg)
	}
	found := false
	for _, id := range h.spooled() {
		found = found || id == m[1]
	}
	if !found {
		h.t.Fatalf("250 queued as %s, but no complete spool file has that ID", m[1])
	}
	return m[1]
}

// client is a raw SMTP connection that speaks the protocol line by line.
type client struct {
	t  *testing.T
	c  net.Conn
	tp *textproto.Conn
}

func dial(t *testing.T, addr string) *client {
	t.Helper()
	c := dialNoGreeting(t, addr)
	if code, msg := c.reply(); code != 220 {
		t.Fatalf("greeting: %d %s", code, msg)
	}
	return c
}

func dialNoGreeting(t *testing.T, addr string) *client {
	t.Helper()
	nc, err := net.DialTimeout("tcp", addr, testTimeout)
	if err != nil {
		t.Fatal(err)
	}
	nc.SetDeadline(time.Now().Add(testTimeout))
	t.Cleanup(func() { nc.Close() })
	return &client{t: t, c: nc, tp: textproto.NewConn(nc)}
}

func (c *client) send(line string) {
	c.t.Helper()
	if err := c.tp.PrintfLine("%s", line); err != nil {
		c.t.Fatalf("sending %q: %v", line, err)
	}
}

// raw writes bytes exactly as given, in one write.
func (c *client) raw(s string) {
	c.t.Helper()
	if _, err := io.WriteString(c.c, s); err != nil {
		c.t.Fatalf("write: %v", err)
	}
}

// reply reads one (possibly multi-line) reply; the text keeps the
// enhanced status code.
func (c *client) reply() (int, string) {
	c.t.Helper()
	code, msg, err := c.tp.ReadResponse(0)
	if err != nil {
		c.t.Fatalf("reading reply: %v", err)
	}
	return code, msg
}

func (c *client) cmd(line string) (int, string) {
	c.t.Helper()
	c.send(line)
	return c.reply()
}

// expect sends line and checks the reply code and, if enh is not empty,
// that the text starts with that enhanced status code.
func (c *client) expect(line string, code int, enh string) string {
	c.t.Helper()
	got, msg := c.cmd(line)
	if got != code || (enh != "" && !strings.HasPrefix(msg, enh+" ")) {
		c.t.Fatalf("%s: got %d %s, want %d %s", line, got, msg, code, enh)
	}
	return msg
}

// ehlo returns the extension keywords (upper case lines after the first).
func (c *client) ehlo(name string) []string {
	c.t.Helper()
	code, msg := c.cmd("EHLO " + name)
	if code != 250 {
		c.t.Fatalf("EHLO: %d %s", code, msg)
	}
	lines := strings.Split(msg, "\n")
	return lines[1:]
}

func hasExt(exts []string, kw string) (string, bool) {
	for _, e := range exts {
		k, v, _ := strings.Cut(e, " ")
		if strings.EqualFold(k, kw) {
			return v, true
		}
	}
	return "", false
}

// starttls upgrades the connection; later commands go over TLS.
func (c *client) starttls() tls.ConnectionState {
	c.t.Helper()
	c.expect("STARTTLS", 220, "2.0.0")
	tc := tls.Client(c.c, &tls.Config{InsecureSkipVerify: true, ServerName: "mx.ours.test"})
	if err := tc.Handshake(); err != nil {
		c.t.Fatalf("TLS handshake: %v", err)
	}
	c.c = tc
	c.tp = textproto.NewConn(tc)
	return tc.ConnectionState()
}

// data sends DATA, then body as is (it must end with CRLF.CRLF), and
// returns the final reply.
func (c *client) data(body string) (int, string) {
	c.t.Helper()
	c.expect("DATA", 354, "")
	c.raw(body)
	return c.reply()
}

// expectClosed checks that the server closed the connection (after any
// reply already read).
func (c *client) expectClosed() {
	c.t.Helper()
	line, err := c.tp.ReadLine()
	if err == nil {
		c.t.Fatalf("connection still open, server sent %q", line)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		c.t.Fatalf("connection not closed by the server within %v", testTimeout)
	}
}

// fakeRole is a Role whose decisions the test sets; by default it accepts
// everything and records the senders it was asked about.
type fakeRole struct {
	origin      string
	authEnabled bool
	connect     func(*smtpd.State) error
	mail        func(*smtpd.State, string) (string, error)
	rcpt        func(*smtpd.State, string) (string, error)
	data        func(*smtpd.State, *smtpd.Message) error

	mu    sync.Mutex
	mails []string
}

func (f *fakeRole) Origin() string {
	if f.origin == "" {
		return queue.OriginInbound
	}
	return f.origin
}

func (f *fakeRole) Connect(st *smtpd.State) error {
	if f.connect != nil {
		return f.connect(st)
	}
	return nil
}

func (f *fakeRole) AuthEnabled() bool { return f.authEnabled }

func (f *fakeRole) Authenticate(_ *smtpd.State, user, pass string) error {
	if user == "user" && pass == "secret" {
		return nil
	}
	return smtp.ErrAuthFailed
}

func (f *fakeRole) Mail(st *smtpd.State, from string, _ *smtp.MailOptions) (string, error) {
	f.mu.Lock()
	f.mails = append(f.mails, from)
	f.mu.Unlock()
	if f.mail != nil {
		return f.mail(st, from)
	}
	return from, nil
}

func (f *fakeRole) Rcpt(st *smtpd.State, to string, _ *smtp.RcptOptions) (string, error) {
	if f.rcpt != nil {
		return f.rcpt(st, to)
	}
	return to, nil
}

func (f *fakeRole) Data(st *smtpd.State, msg *smtpd.Message) error {
	if f.data != nil {
		return f.data(st, msg)
	}
	return nil
}

func (f *fakeRole) senders() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.mails...)
}

// recordingRole wraps a real role and records what MAIL FROM it saw.
type recordingRole struct {
	smtpd.Role
	mu    sync.Mutex
	mails []string
}

func (r *recordingRole) Mail(st *smtpd.State, from string, o *smtp.MailOptions) (string, error) {
	r.mu.Lock()
	r.mails = append(r.mails, from)
	r.mu.Unlock()
	return r.Role.Mail(st, from, o)
}

func (r *recordingRole) senders() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.mails...)
}

// splitReceived separates our Received: field (unfolded) from the data
// that follows it.
func splitReceived(t *testing.T, data []byte) (string, []byte) {
	t.Helper()
	s := string(data)
	if !strings.HasPrefix(s, "Received: ") {
		t.Fatalf("spooled data does not begin with Received:\n%.300s", s)
	}
	end := 0
	for {
		i := strings.Index(s[end:], "\r\n")
		if i < 0 {
			t.Fatalf("unterminated Received: field")
		}
		end += i + 2
		if end >= len(s) || (s[end] != '\t' && s[end] != ' ') {
			break
		}
	}
	field := strings.ReplaceAll(s[:end-2], "\r\n\t", " ")
	field = strings.ReplaceAll(field, "\r\n ", " ")
	return field, data[end:]
}

// simple runs EHLO, MAIL, RCPT and returns the connection ready for DATA.
func simple(t *testing.T, addr, from, to string) *client {
	t.Helper()
	c := dial(t, addr)
	c.ehlo("client.example.org")
	c.expect("MAIL FROM:<"+from+">", 250, "")
	c.expect("RCPT TO:<"+to+">", 250, "")
	return c
}
