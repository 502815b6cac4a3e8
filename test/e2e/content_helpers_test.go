package e2e

import (
	"fmt"
	"net"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
)

// ---------------------------------------------------------------------------
// A relay with a content stage.

// startContentRelay writes a configuration with one inbound listener,
// inbound (YAML lines indented under inbound:, e.g. "  content: …") and
// domains (lines under domains:), starts the relay and returns it, the
// listener's address and the configuration's path (for reloads).
func startContentRelay(t *testing.T, dnsAddr, inbound, domains string) (r *Relay, mx, cfgPath string) {
	t.Helper()
	dir := t.TempDir()
	mx = freeAddr(t)
	cfgPath = filepath.Join(dir, "relay.yaml")
	writeFile(t, cfgPath, contentConfig(dir, dnsAddr, mx, inbound, domains))
	if out, errOut, code := runRelayCmd(t, "check-config", "--config", cfgPath); code != 0 {
		t.Fatalf("check-config: %s %s", out, errOut)
	}
	return startRelay(t, cfgPath, mx), mx, cfgPath
}

func contentConfig(dir, dnsAddr, mx, inbound, domains string) string {
	return configHead(filepath.Join(dir, "state"), dnsAddr) + inbound + fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
domains:
%soutbound:
%s`, mx, domains, outboundTimeouts)
}

// ---------------------------------------------------------------------------
// One SMTP transaction, raw, so that every reply is seen as sent.

type txnResult struct {
	Rcpt []string // the reply to each RCPT TO, "250 2.1.5 …"
	Data string   // the reply after the message ("" when DATA was not reached)
	// DataTime is how long the reply to the final dot took: the content
	// stage.
	DataTime time.Duration
}

// Code is the reply code of Data, 0 if none.
func (r txnResult) Code() int {
	if len(r.Data) < 3 {
		return 0
	}
	n, _ := strconv.Atoi(r.Data[:3])
	return n
}

// QueueID is the ID from "250 2.0.0 Ok: queued as ID".
func (r txnResult) QueueID() string {
	m := regexp.MustCompile(`queued as ([A-Za-z0-9]+)`).FindStringSubmatch(r.Data)
	if m == nil {
		return ""
	}
	return m[1]
}

// transaction runs MAIL, one RCPT per address and, when at least one was
// accepted, DATA with msg (CRLF line ends; dot-stuffed here), on an open
// session c. The reply to the end of data may take up to dataTimeout (the
// content stage runs meanwhile).
func transaction(t *testing.T, c *rawSMTP, from string, rcpts []string, msg string, dataTimeout time.Duration) txnResult {
	t.Helper()
	var res txnResult
	c.Expect("MAIL FROM:<"+from+">", 250)
	accepted := 0
	for _, rc := range rcpts {
		code, text := c.Cmd("RCPT TO:<" + rc + ">")
		res.Rcpt = append(res.Rcpt, text)
		if code == 250 {
			accepted++
		}
	}
	if accepted == 0 {
		c.Expect("RSET", 250)
		return res
	}
	c.Expect("DATA", 354)
	var b strings.Builder
	for _, l := range strings.SplitAfter(msg, "\r\n") {
		if strings.HasPrefix(l, ".") {
			b.WriteByte('.')
		}
		b.WriteString(l)
	}
	if !strings.HasSuffix(msg, "\r\n") {
		b.WriteString("\r\n")
	}
	b.WriteString(".\r\n")
	c.Write(b.String())
	start := time.Now()
	res.Data = readReply(t, c, dataTimeout)
	res.DataTime = time.Since(start)
	return res
}

// readReply reads one reply with its own deadline (rawSMTP.Reply allows
// 15 s; a scanner may legitimately take longer on a loaded machine).
func readReply(t *testing.T, c *rawSMTP, timeout time.Duration) string {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(timeout))
	var lines []string
	for {
		line, err := c.br.ReadString('\n')
		if err != nil {
			t.Fatalf("reading reply (after %q): %v", lines, err)
		}
		line = strings.TrimRight(line, "\r\n")
		if len(line) < 4 {
			t.Fatalf("malformed reply line %q", line)
		}
		lines = append(lines, line)
		if line[3] == ' ' {
			return strings.Join(lines, "\n")
		}
	}
}

// send opens a session, runs one transaction and quits.
func send(t *testing.T, mx, from string, rcpts []string, msg string) txnResult {
	t.Helper()
	c := dialSMTP(t, mx)
	c.Expect("EHLO client.e2e.test", 250)
	res := transaction(t, c, from, rcpts, msg, 60*time.Second)
	c.Expect("QUIT", 221)
	t.Logf("%q to %q: RCPT %q, end of data %q after %v", headerValue([]byte(msg), "Subject"), rcpts, res.Rcpt, res.Data, res.DataTime.Round(time.Millisecond))
	return res
}

// mustQueue sends and requires 250 … queued as ID for the message.
func mustQueue(t *testing.T, mx, from string, rcpts []string, msg string) txnResult {
	t.Helper()
	res := send(t, mx, from, rcpts, msg)
	if res.Code() != 250 || res.QueueID() == "" {
		t.Fatalf("RCPT replies %q, DATA reply %q; want 250 … queued as", res.Rcpt, res.Data)
	}
	return res
}

// noMoreMessages waits a moment and requires the downstream to hold
// exactly n messages: what was refused in the dialog must never arrive,
// not even late.
func noMoreMessages(t *testing.T, down *testServer, n int) []received {
	t.Helper()
	time.Sleep(300 * time.Millisecond)
	msgs := down.Messages()
	if len(msgs) != n {
		var subj []string
		for _, m := range msgs {
			subj = append(subj, headerValue(m.Data, "Subject"))
		}
		t.Fatalf("downstream holds %d messages (subjects %q), want %d", len(msgs), subj, n)
	}
	return msgs
}

// messageWith finds the delivered message whose Message-ID is that of msg.
func messageWith(t *testing.T, msgs []received, msg string) received {
	t.Helper()
	id := headerValue([]byte(msg), "Message-ID")
	for _, m := range msgs {
		if headerValue(m.Data, "Message-ID") == id {
			return m
		}
	}
	t.Fatalf("no delivered message with Message-ID %s among %d", id, len(msgs))
	return received{}
}

// headerFields returns the values of every field named name (unfolded,
// without the leading space), top first.
func headerFields(msg []byte, name string) []string {
	var out []string
	var cur *string
	for _, l := range strings.Split(headerSection(msg), "\n") {
		switch {
		case l == "":
		case l[0] == ' ' || l[0] == '\t':
			// A continuation line, of the wanted field or of another.
			if cur != nil {
				*cur += l
			}
		default:
			cur = nil
			n, v, ok := strings.Cut(l, ":")
			if ok && strings.EqualFold(strings.TrimSpace(n), name) {
				out = append(out, strings.TrimLeft(v, " \t"))
				cur = &out[len(out)-1]
			}
		}
	}
	return out
}

func headerValue(msg []byte, name string) string {
	if v := headerFields(msg, name); len(v) > 0 {
		return v[0]
	}
	return ""
}

// bodyOf is the message after the empty line that ends the header.
func bodyOf(msg []byte) string {
	_, b, _ := strings.Cut(string(msg), "\r\n\r\n")
	return b
}

// ---------------------------------------------------------------------------
// A milter written with go-milter's server side, for the verdicts and
// changes no real scanner makes on demand.

// milterMsg is one message as the test milter saw it.
type milterMsg struct {
	From    string
	Rcpts   []string
	Subject string
	Fields  []string // "Name: value" as received
	Body    []byte
	QueueID string // macro i
	// Client is the connect event's host name; ClientName and ClientPTR
	// the macros {client_name} and {client_ptr} at the end of message.
	Client, ClientName, ClientPTR string
}

// goMilter is a running test milter. eom decides at the end of each
// message; it may use the Modifier's changes.
type goMilter struct {
	Addr string
	eom  func(msg *milterMsg, m gomilter.Modifier) (*gomilter.Response, error)

	mu   sync.Mutex
	msgs []milterMsg
	// rcpts counts the RCPT events heard, as they arrive; aborts the
	// conversations ended with ABORT.
	rcpts, aborts atomic.Int32
}

// Messages returns the messages that reached the end of message.
func (g *goMilter) Messages() []milterMsg {
	g.mu.Lock()
	defer g.mu.Unlock()
	return slices.Clone(g.msgs)
}

// startGoMilter serves a milter on 127.0.0.1 that asks for every protocol
// step and may use every modification; eom nil accepts.
func startGoMilter(t *testing.T, eom func(*milterMsg, gomilter.Modifier) (*gomilter.Response, error)) *goMilter {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &goMilter{Addr: "inet:" + ln.Addr().String(), eom: eom}
	srv := gomilter.NewServer(
		gomilter.WithMilter(func() gomilter.Milter { return &milterSession{g: g} }),
		gomilter.WithActions(gomilter.AllClientSupportedActionMasks&^gomilter.OptSetMacros),
		gomilter.WithProtocols(0),
	)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(ln) }() //nolint:errcheck // ends with Close
	t.Cleanup(func() {
		srv.Close()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Errorf("test milter %s did not stop", g.Addr)
		}
	})
	return g
}

type milterSession struct {
	gomilter.NoOpMilter
	g      *goMilter
	cur    milterMsg
	client string
}

func (s *milterSession) Connect(host, _ string, _ uint16, _ string, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.client = host
	return gomilter.RespContinue, nil
}

func (s *milterSession) MailFrom(from, _ string, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.cur = milterMsg{From: from}
	return gomilter.RespContinue, nil
}

func (s *milterSession) RcptTo(rcpt, _ string, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.cur.Rcpts = append(s.cur.Rcpts, rcpt)
	s.g.rcpts.Add(1)
	return gomilter.RespContinue, nil
}

func (s *milterSession) Header(name, value string, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.cur.Fields = append(s.cur.Fields, name+": "+value)
	if strings.EqualFold(name, "Subject") {
		s.cur.Subject = value
	}
	return gomilter.RespContinue, nil
}

func (s *milterSession) BodyChunk(chunk []byte, _ gomilter.Modifier) (*gomilter.Response, error) {
	s.cur.Body = append(s.cur.Body, chunk...)
	return gomilter.RespContinue, nil
}

func (s *milterSession) Abort(gomilter.Modifier) error {
	s.g.aborts.Add(1)
	return nil
}

func (s *milterSession) EndOfMessage(m gomilter.Modifier) (*gomilter.Response, error) {
	s.cur.QueueID = m.Get(gomilter.MacroQueueId)
	s.cur.Client, s.cur.ClientName, s.cur.ClientPTR = s.client, m.Get(gomilter.MacroClientName), m.Get(gomilter.MacroClientPTR)
	msg := s.cur
	s.g.mu.Lock()
	s.g.msgs = append(s.g.msgs, msg)
	s.g.mu.Unlock()
	if s.g.eom == nil {
		return gomilter.RespAccept, nil
	}
	return s.g.eom(&msg, m)
}

// deliveredTo is the sorted union of the recipients of every downstream
// delivery of msg (matched by Message-ID): the relay may deliver one
// message in one transaction or several.
func deliveredTo(down *testServer, msg string) []string {
	id := headerValue([]byte(msg), "Message-ID")
	var to []string
	for _, m := range down.Messages() {
		if headerValue(m.Data, "Message-ID") == id {
			to = append(to, m.To...)
		}
	}
	slices.Sort(to)
	return to
}

// waitDeliveredTo waits until msg was delivered to exactly want (sorted).
func waitDeliveredTo(t *testing.T, down *testServer, msg string, want ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		got := deliveredTo(down, msg)
		if slices.Equal(got, want) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("message %s delivered to %q after 10s, want %q", headerValue([]byte(msg), "Message-ID"), got, want)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
