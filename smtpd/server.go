package smtpd

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/queue"
	"securerelay/smtputil"
)

// Options configure one listener.
type Options struct {
	Name     string
	Address  string
	Hostname string
	// TLS enables STARTTLS; nil disables it.
	TLS *tls.Config

	MaxMessageSize int64
	MaxRecipients  int
	MaxLineLength  int
	MaxErrors      int
	MaxConnections int
	// MaxHops: Received: fields a message may carry; default 50.
	MaxHops        int
	CommandTimeout time.Duration
	DataTimeout    time.Duration
	// NormalizeLineEndings rewrites bare CR/LF in DATA to CRLF instead of
	// refusing the message.
	NormalizeLineEndings bool
	AllowInsecureAuth    bool
	RequireTLS           bool
	// DSN offers the DSN extension (RFC 3461): NOTIFY, ORCPT, RET and
	// ENVID are accepted and kept with the message.
	DSN bool

	Queue  *queue.Queue
	Role   Role
	Logger *slog.Logger

	// AutoReplies counts automatic messages per (sender, recipient); more
	// than MaxAutoReplies within AutoReplyWindow are refused as a loop.
	// nil or MaxAutoReplies 0: no limit.
	AutoReplies     Counter
	MaxAutoReplies  int
	AutoReplyWindow time.Duration
	// AutomaticSenders extends the built-in list of addresses only
	// programs send from (smtputil.IsAutomaticSender).
	AutomaticSenders []string
	// Pregreet enables the pregreet test with this wait (inbound
	// listeners); PregreetSkip exempts clients (the allow list).
	Pregreet     time.Duration
	PregreetSkip func(netip.Addr) bool
	// RefuseNonSMTP ends a session at the first HTTP or proxy command.
	RefuseNonSMTP bool

	// Per-client limits (limits.go; Postfix's anvil). A client is an IPv4
	// address or an IPv6 /64. 0 turns a limit off.
	MaxConnectionsPerClient int // sessions at a time, per listener
	// MaxConnectionRate, MaxMessageRate (MAIL commands) and
	// MaxRecipientRate (RCPT commands) count per ClientRateWindow.
	MaxConnectionRate int
	MaxMessageRate    int
	MaxRecipientRate  int
	ClientRateWindow  time.Duration
	// Failed logins per client and per user (across connections and
	// listeners) within AuthFailureWindow; at the limit every login is
	// refused, before its password is checked.
	MaxAuthFailuresPerClient int
	MaxAuthFailuresPerUser   int
	AuthFailureWindow        time.Duration
	// ClientCounts keeps the rate and failure counts (shared by the
	// listeners); nil: a store of this listener's own, in memory.
	ClientCounts ClientCounter
	// LimitExempt tells the clients no per-client limit applies to
	// (trusted_networks, client_limit_exceptions); nil: none.
	LimitExempt func(netip.Addr) bool
	// MaxJunkCommands: NOOP, RSET, VRFY, HELP… a session may send between
	// two messages; more end it with 421. 0: no limit.
	MaxJunkCommands int
	// StressCommandTimeout replaces CommandTimeout for idle sessions while
	// the listener holds 80% of MaxConnections or more. 0: no stress mode.
	StressCommandTimeout time.Duration
	// Now is the clock of the per-client limits; nil: time.Now.
	Now func() time.Time

	// MinFreeSpace: below this many free bytes on the spool's file system
	// (as FreeSpace reports them, plus the SIZE a client declares) a new
	// message gets 452 4.3.1 at MAIL, before the client sends it (Postfix's
	// queue_minfree). 0 or a nil FreeSpace: no check.
	MinFreeSpace int64
	FreeSpace    func() (int64, error)
}

// Counter counts events per key within a window. The embedded
// implementation is internal/counter; a cluster of relays can share one
// behind this interface.
type Counter interface {
	Add(key string, now time.Time, window time.Duration) (int, error)
}

// Server is one listening socket and its sessions.
type Server struct {
	opts Options
	log  *slog.Logger
	smtp *smtp.Server
	ln   net.Listener

	shutting atomic.Bool
	mu       sync.Mutex
	conns    map[*trackedConn]struct{}
	nextID   atomic.Uint64

	// Per-client limits (limits.go); perClient and refusals under mu.
	counts    ClientCounter
	perClient map[string]int
	refusals  map[string]*atomic.Int64
	stressed  atomic.Bool
	authLocks keyedLocks

	// byCode, sessions (by screening verdict) and accepted are the
	// counts of Stats; byCode and sessions under mu.
	byCode        map[RefusalKey]*atomic.Int64
	sessions      map[string]*atomic.Int64
	accepted      atomic.Int64
	acceptedBytes atomic.Int64
}

// New prepares a listener; call Listen then Serve.
func New(o Options) *Server {
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	s := &Server{opts: o, log: o.Logger.With("listener", o.Name), conns: map[*trackedConn]struct{}{},
		counts: o.ClientCounts, perClient: map[string]int{}, refusals: map[string]*atomic.Int64{},
		byCode: map[RefusalKey]*atomic.Int64{}, sessions: map[string]*atomic.Int64{}}
	if s.counts == nil {
		s.counts = newCounts()
	}
	srv := smtp.NewServer(s)
	srv.Addr = o.Address
	srv.Domain = o.Hostname
	srv.TLSConfig = o.TLS
	srv.MaxMessageBytes = o.MaxMessageSize
	srv.MaxRecipients = o.MaxRecipients
	if o.MaxLineLength > 0 {
		srv.MaxLineLength = o.MaxLineLength
	}
	srv.ReadTimeout = o.CommandTimeout
	srv.WriteTimeout = o.CommandTimeout
	srv.AllowInsecureAuth = o.AllowInsecureAuth
	// REQUIRETLS (RFC 8689): go-smtp offers it only inside TLS, and the
	// delivery engine honours the flag: verified TLS to every next hop.
	srv.EnableREQUIRETLS = true
	// SMTPUTF8 (RFC 6531) on both roles: the roles parse UTF-8 addresses
	// only in a transaction that declared it (State.SMTPUTF8); delivery
	// passes it on or downgrades (outbound/utf8.go).
	srv.EnableSMTPUTF8 = true
	srv.EnableDSN = o.DSN
	srv.ErrorLog = slogPrinter{s.log}
	srv.CommandHook = s.command
	// Every reply go-smtp makes itself comes from the catalogue
	// (third_party patch 8); its errors count as the roles' do.
	srv.Replies = s.reply
	s.smtp = srv
	return s
}

// Listen binds the socket, so that errors (address in use, privileged
// port) surface at start, before any message is accepted.
func (s *Server) Listen() error {
	ln, err := net.Listen("tcp", s.opts.Address)
	if err != nil {
		return fmt.Errorf("listener %s: %w", s.opts.Name, err)
	}
	s.ln = ln
	return nil
}

// Addr is the bound address (useful with port 0).
func (s *Server) Addr() net.Addr { return s.ln.Addr() }

// Serve accepts connections until Shutdown.
func (s *Server) Serve() error {
	s.log.Info("listening", "address", s.ln.Addr().String(), "role", s.opts.Role.Origin(), "starttls", s.opts.TLS != nil)
	err := s.smtp.Serve(&trackingListener{Listener: s.ln, s: s})
	if s.shutting.Load() {
		return nil
	}
	return err
}

// Shutdown stops accepting, ends idle sessions with a 421, lets
// transactions in flight finish until ctx is done, then closes what is left.
// A transaction cut short never got its 250, so nothing is lost.
func (s *Server) Shutdown(ctx context.Context) {
	s.shutting.Store(true)
	done := make(chan struct{})
	go func() {
		// Waits for every session, or returns at ctx's deadline with
		// sessions still open.
		s.smtp.Shutdown(ctx)
		close(done)
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		// Poke idle sessions repeatedly: one may have been between two
		// reads (and re-armed its deadline) the first time.
		s.mu.Lock()
		for c := range s.conns {
			if !c.inTxn.Load() {
				c.Conn.SetReadDeadline(time.Now())
			}
		}
		s.mu.Unlock()
		select {
		case <-done:
			// go-smtp's Shutdown also returns at the deadline (and both
			// cases may be ready at once): only then are sessions left.
			if ctx.Err() != nil {
				s.closeAll()
			}
			return
		case <-ctx.Done():
			s.closeAll()
			<-done
			return
		case <-tick.C:
		}
	}
}

// closeAll ends every session still open. go-smtp's Close does nothing once
// its Shutdown has begun (both share one "done" channel), so this closes
// the connections we track; a transaction cut here never got its 250.
func (s *Server) closeAll() {
	s.mu.Lock()
	left := make([]*trackedConn, 0, len(s.conns))
	for c := range s.conns {
		left = append(left, c)
	}
	s.mu.Unlock()
	for _, c := range left {
		c.Close()
	}
}

// NewSession implements smtp.Backend; go-smtp calls it at EHLO/HELO (again
// after STARTTLS).
func (s *Server) NewSession(c *smtp.Conn) (smtp.Session, error) {
	tc := trackedOf(c.Conn())
	if tc == nil {
		return nil, smtputil.InternalError()
	}
	ss := &session{srv: s, c: c, tc: tc}
	ss.st = State{
		ConnID:   tc.id,
		Listener: s.opts.Name,
		RemoteIP: tc.remote,
		Remote:   addrPort(c.Conn().RemoteAddr()),
		Local:    addrPort(c.Conn().LocalAddr()),
		Helo:     c.Hostname(),
		Log:      s.log.With("conn_id", tc.id, "client", tc.remote.String()),
	}
	if cs, ok := c.TLSConnectionState(); ok {
		ss.st.TLS = &cs
	}
	err := s.opts.Role.Connect(&ss.st)
	if !tc.screened.Swap(true) {
		// Once per connection: a second EHLO and the one after STARTTLS
		// screen again, but it is still one session.
		verdict := ss.st.Screen
		if err != nil {
			verdict = CheckOf(err)
			if verdict == "" {
				verdict = "refused"
			}
		} else if verdict == "" {
			verdict = "pass"
		}
		s.countSession(verdict)
	}
	if err != nil {
		tc.closeAfterWrite.Store(true)
		return nil, ss.edge(err, "helo")
	}
	tc.tarpit.Store(int64(ss.st.Tarpit))
	return ss, nil
}

type trackingListener struct {
	net.Listener
	s *Server
}

func (l *trackingListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		s := l.s
		tc := &trackedConn{Conn: c, s: s, id: fmt.Sprintf("%s-%d", s.opts.Name, s.nextID.Add(1)),
			remote: addrPort(c.RemoteAddr()).Addr()}
		tc.client, tc.exempt = clientKey(tc.remote), s.exempt(tc.remote)
		// The rate counts every attempt, refused or not, as Postfix's.
		se, check := s.connectionRate(tc)
		if se == nil {
			se, check = s.admit(tc)
		}
		if se != nil {
			s.rejectConn(tc, "connect", check, se)
			// Straight to the socket, before go-smtp has it: RFC 5321
			// section 3.1 lets a server answer the connection with 421.
			c.SetWriteDeadline(time.Now().Add(5 * time.Second))
			io.WriteString(c, smtputil.Line(se, s.opts.Hostname, false))
			c.Close()
			continue
		}
		s.log.Debug("connect", "conn_id", tc.id, "client", tc.remote.String())
		return tc, nil
	}
}

// trackedConn is the raw connection under go-smtp (and under TLS after
// STARTTLS). It lets us close a session right after a final reply, and find
// idle sessions at shutdown.
type trackedConn struct {
	net.Conn
	s               *Server
	id              string
	remote          netip.Addr
	client          string // clientKey(remote)
	exempt          bool   // from the per-client limits
	junk            atomic.Int64
	inData          atomic.Bool  // reading message data (DATA), not commands
	deadline        atomic.Int64 // the read deadline go-smtp last asked for
	inTxn           atomic.Bool
	closeAfterWrite atomic.Bool
	closeOnce       sync.Once
	greeted         bool         // only go-smtp's goroutine writes before the greeting
	tarpit          atomic.Int64 // time.Duration before each reply
	sawMail         atomic.Bool
	screened        atomic.Bool // counted in Stats.Sessions
	// errors counts the error replies of the connection (the roles'
	// refusals and go-smtp's own) towards max_errors.
	errors atomic.Int64
	// overshoot counts the 452 4.5.3 replies (recipients over
	// max_recipients) that errors does not count; see maxRcptOvershoot.
	overshoot atomic.Int64
	// lineStart/linePrefix follow the command stream before TLS for the
	// non-SMTP command test (only go-smtp's goroutine reads).
	midLine    bool
	linePrefix []byte
	prevCR     bool
	// writes counts replies written (the greeting is the first);
	// linesUnanswered, command lines received since the last one.
	writes          int
	linesUnanswered int
}

// nonSMTP are command starts that no mail client sends: a web or proxy
// client, or a bot probing for an open proxy (postscreen's "non-SMTP
// command" test). Matched at the start of a line, case-sensitive as sent.
var nonSMTP = [][]byte{[]byte("GET "), []byte("POST "), []byte("HEAD "), []byte("PUT "), []byte("CONNECT "), []byte("Host:"), []byte("User-Agent:")}

// Read watches the commands go-smtp reads (in clear text; after STARTTLS
// these bytes are TLS records and match nothing) and ends the session at
// the first non-SMTP command, instead of answering each with 500.
func (c *trackedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	// Only clear-text commands before the first MAIL are watched: from
	// MAIL on the stream carries message data, where any text may begin a
	// line; after STARTTLS the bytes are TLS records. A web client, proxy
	// probe or bot never gets that far.
	if !c.s.opts.RefuseNonSMTP || n == 0 || c.sawMail.Load() {
		return n, err
	}
	for _, b := range p[:n] {
		if !c.midLine {
			// RFC 2920: a client may pipeline only once the EHLO reply has
			// advertised PIPELINING; a second command before any reply
			// comes from software that does not wait for answers.
			if c.linesUnanswered >= 1 && c.writes <= 1 {
				return c.protocolViolation("commands sent before the server answered", "wait for the EHLO reply before sending more")
			}
			c.linePrefix = c.linePrefix[:0]
			c.midLine = true
		}
		if b == '\n' {
			c.midLine = false
			if !c.prevCR {
				return c.protocolViolation("bare newline in a command", "end commands with CRLF")
			}
			c.prevCR = false
			c.linesUnanswered++
			continue
		}
		c.prevCR = b == '\r'
		if len(c.linePrefix) < 12 {
			c.linePrefix = append(c.linePrefix, b)
			if len(c.linePrefix) == 5 && bytes.EqualFold(c.linePrefix, []byte("MAIL ")) ||
				len(c.linePrefix) == 8 && bytes.EqualFold(c.linePrefix, []byte("STARTTLS")) {
				// MAIL: what follows in this read may be pipelined BDAT
				// data (RFC 3030). STARTTLS: what follows is TLS. Stop.
				c.sawMail.Store(true)
				return n, err
			}
			for _, bad := range nonSMTP {
				if bytes.Equal(c.linePrefix, bad) {
					return c.protocolViolation("non-SMTP command "+strings.TrimSpace(string(bad)), "this is an SMTP server, not HTTP or a proxy")
				}
			}
		}
	}
	return n, err
}

// protocolViolation ends a session that failed a protocol test.
func (c *trackedConn) protocolViolation(what, fix string) (int, error) {
	se := smtputil.ProtocolViolation(what, fix)
	c.s.rejectConn(c, "protocol", "protocol_tests", se)
	c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c.Conn, smtputil.Line(se, c.s.opts.Hostname, false))
	c.Close()
	return 0, net.ErrClosed
}

func (c *trackedConn) Write(p []byte) (int, error) {
	if !c.greeted {
		c.greeted = true
		if !c.pregreet() {
			return 0, net.ErrClosed
		}
	}
	if d := time.Duration(c.tarpit.Load()); d > 0 {
		time.Sleep(d)
	}
	c.writes++
	c.linesUnanswered = 0
	n, err := c.Conn.Write(p)
	if c.closeAfterWrite.Load() {
		c.Close()
	}
	return n, err
}

// pregreet is postscreen's pregreet test, run just before go-smtp's own
// greeting goes out: we send the first line of a multi-line greeting
// ("220-"), and wait. A real MTA waits for the last line ("220 ") before
// it speaks; a bot that talks first is refused and disconnected. It
// reports whether the session may go on.
func (c *trackedConn) pregreet() bool {
	o := &c.s.opts
	if o.Pregreet <= 0 || (o.PregreetSkip != nil && o.PregreetSkip(c.remote)) {
		return true
	}
	c.Conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	if _, err := io.WriteString(c.Conn, smtputil.Line(smtputil.Greeting(o.Hostname), "", true)); err != nil {
		c.Close()
		return false
	}
	c.Conn.SetReadDeadline(time.Now().Add(o.Pregreet))
	var b [1]byte
	n, err := c.Conn.Read(b[:])
	c.Conn.SetReadDeadline(time.Time{})
	var ne net.Error
	if n == 0 && errors.As(err, &ne) && ne.Timeout() {
		return true // silent, as a real MTA is
	}
	if n > 0 {
		se := smtputil.ProtocolViolation("you talked before the greeting ended", `wait for the "220 " line`)
		c.s.rejectConn(c, "pregreet", "pregreet", se)
		io.WriteString(c.Conn, smtputil.Line(se, o.Hostname, false))
	}
	c.Close()
	return false
}

func (c *trackedConn) Close() error {
	var err error
	c.closeOnce.Do(func() {
		err = c.Conn.Close()
		c.s.release(c)
	})
	return err
}

// maxRcptOvershoot is how many recipients over the per-transaction limit
// (452 4.5.3) a session may send before each counts towards max_errors,
// as Postfix's smtpd_recipient_overshoot_limit (1000).
const maxRcptOvershoot = 1000

// tooManyErrors counts an error reply to the client (a role's refusal or
// go-smtp's own) and reports whether it is the max_errors-th: the
// session then ends with TooManyErrors instead. A 421 is not replaced: it
// ends the session anyway.
func (c *trackedConn) tooManyErrors(se *smtp.SMTPError, log *slog.Logger) bool {
	if se.Code < 400 {
		return false
	}
	if se.Code == 452 && se.EnhancedCode == (smtp.EnhancedCode{4, 5, 3}) && c.overshoot.Add(1) <= maxRcptOvershoot {
		// Too many recipients: the client is to send the rest in another
		// transaction (RFC 5321 §4.5.3.1.10), which is no error of it.
		// Counted it closed the session with 421 at the tenth excess
		// recipient, so that the recipients accepted before never got
		// the message and a retry did the same.
		return false
	}
	n := c.errors.Add(1)
	if max := c.s.opts.MaxErrors; max <= 0 || n < int64(max) || se.Code == 421 {
		return false
	}
	log.Warn("too many errors, closing session", "errors", n)
	c.closeAfterWrite.Store(true)
	return true
}

// reply is go-smtp's Replies (third_party patch 8): the replies go-smtp
// makes itself come from the catalogue, and its error replies are
// treated as edge treats a role's: logged, counted towards max_errors,
// and a 421 closes the connection.
func (s *Server) reply(c *smtp.Conn, r smtp.Reply, arg string) *smtp.SMTPError {
	se := smtputil.Builtin(c.Server(), r, arg)
	tc := trackedOf(c.Conn())
	if tc == nil || se.Code < 400 {
		return se
	}
	log := s.log.With("conn_id", tc.id, "client", tc.remote.String())
	if r != smtp.ReplyConnError { // a reset connection is no refusal
		var known []any
		if ss, ok := c.Session().(*session); ok {
			ss.mu.Lock()
			known = []any{"helo", ss.st.Helo, "from", ss.st.From}
			ss.mu.Unlock()
		}
		s.reject(log, slog.LevelInfo, "command", builtinCheck(r), se, known, nil)
	}
	if tc.tooManyErrors(se, log) {
		return smtputil.TooManyErrors()
	}
	if se.Code == 421 {
		tc.closeAfterWrite.Store(true)
	}
	return se
}

// builtinCheck names what refused in one of go-smtp's own error
// replies: the setting where one applies, else "protocol" (a command out
// of sequence or that does not parse).
func builtinCheck(r smtp.Reply) string {
	switch r {
	case smtp.ReplyTooBig:
		return "max_message_size"
	case smtp.ReplyTooManyRcpts:
		return "max_recipients"
	case smtp.ReplyLineTooLong:
		return "max_line_length"
	case smtp.ReplyTimeout:
		return "command_timeout"
	case smtp.ReplyAuthNeedsTLS:
		return "allow_insecure_auth"
	case smtp.ReplyInternalError, smtp.ReplyLocalError:
		return "local_error"
	case smtp.ReplyBusy:
		return "busy"
	}
	return "protocol"
}

func trackedOf(c net.Conn) *trackedConn {
	for c != nil {
		switch v := c.(type) {
		case *trackedConn:
			return v
		case *tls.Conn:
			c = v.NetConn()
		default:
			return nil
		}
	}
	return nil
}

type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Printf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	// A panic in a session is our bug and must be seen; connection resets
	// and failed handshakes of scanners are noise outside debugging.
	if strings.HasPrefix(msg, "panic") {
		p.l.Error("smtp: " + msg)
		return
	}
	p.l.Debug("smtp: " + msg)
}
func (p slogPrinter) Println(v ...any) { p.l.Debug("smtp: " + fmt.Sprint(v...)) }

func addrPort(a net.Addr) netip.AddrPort {
	ap, err := netip.ParseAddrPort(a.String())
	if err != nil {
		return netip.AddrPort{}
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
}
