package smtpd

import (
	"bytes"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"

	"securerelay/dkim"
	"securerelay/downgrade"
	"securerelay/queue"
	"securerelay/smtputil"
)

// maxHeader bounds the header a client may send, on every listener: the
// stored header, with our Received: and what roles and milters add
// (Authentication-Results, a rewrite notice), must still fit the
// dkim.MaxHeaderBytes that the signer and authres read at most, or the
// message would be accepted and then never signed (deferred until it
// expires). 64 KiB is left for those fields.
const maxHeader = dkim.MaxHeaderBytes - 64<<10

// defaultMaxHops is the number of Received: fields a message may already
// carry when Options.MaxHops is 0, as Postfix's hopcount_limit.
const defaultMaxHops = 50

type session struct {
	srv *Server
	c   *smtp.Conn
	tc  *trackedConn
	// mu guards st against the one concurrent caller go-smtp has: with
	// BDAT, Data runs in its own goroutine while the command loop goes
	// on, and an RSET then calls Reset during Data.
	mu        sync.Mutex
	st        State
	authFails int
	// queueID is the spooled message's ID during DATA (under mu), for
	// the refusals of the message.
	queueID string
	// rcpt is the address of the RCPT command being answered (under mu).
	rcpt string
}

// edge turns whatever a role or the queue returned into the bare
// *smtp.SMTPError go-smtp needs, logs and counts refusals (Refusal), and
// ends the session once the client has had max_errors of them, go-smtp's
// own error replies included (builtin; a client that keeps trying
// addresses is probing, not sending mail).
func (s *session) edge(err error, stage string) error {
	return s.edgeCheck(err, stage, "")
}

// edgeCheck is edge for a bare reply of smtpd's own: check names the
// setting (or always-on rule) that refused. A Refusal names its own check.
func (s *session) edgeCheck(err error, stage, check string, attrs ...any) error {
	if err == nil {
		return nil
	}
	level := slog.LevelInfo
	var se *smtp.SMTPError
	if ref := (*Refusal)(nil); errors.As(err, &ref) && ref.Reply != nil {
		se, check, attrs, level = ref.Reply, ref.Check, ref.Attrs, ref.Level
	} else if bare, ok := err.(*smtp.SMTPError); ok {
		se = bare
	} else {
		s.st.Log.Error("internal error, answering with a temporary failure", "stage", stage, "error", err)
		check = "local_error"
		switch stage {
		case "data", "content":
			se = smtputil.QueueFailed()
		case "auth":
			se = smtputil.AuthTempFail()
		default:
			se = smtputil.LocalError()
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if se.Code >= 400 {
		if check == "" {
			// A role's bare reply: still logged and counted, under a name
			// that says the role did not name its check.
			check = "unnamed"
		}
		known := []any{"helo", s.st.Helo, "from", s.st.From}
		if s.rcpt != "" {
			known = append(known, "rcpt", sanitize(s.rcpt))
		}
		if s.queueID != "" {
			known = append(known, "queue_id", s.queueID)
		}
		s.srv.reject(s.st.Log, level, stage, check, se, known, attrs)
		if s.tc.tooManyErrors(se, s.st.Log) {
			return smtputil.TooManyErrors()
		}
	}
	if se.Code == 421 {
		s.tc.closeAfterWrite.Store(true)
	}
	return se
}

func (s *session) AuthMechanisms() []string {
	if !s.srv.opts.Role.AuthEnabled() {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	if !s.srv.opts.Role.AuthEnabled() {
		return nil, smtputil.AuthNotOffered()
	}
	if s.st.TLS == nil && !s.srv.opts.AllowInsecureAuth {
		// go-smtp answers this itself before asking (538); kept for
		// the case it would not.
		return nil, smtputil.EncryptionRequiredForAuth()
	}
	check := func(user, pass string) error {
		// The per-client and per-user failure counts come first: a
		// client or user locked out gets no password check (no bcrypt),
		// and the right password is refused as well.
		release, locked, limit := s.authGate(user)
		if locked != nil {
			s.authFails++
			time.Sleep(time.Duration(min(s.authFails, 5)) * time.Second)
			return s.edgeCheck(locked, "auth", limit)
		}
		err := s.srv.opts.Role.Authenticate(&s.st, user, pass)
		if err != nil && isCredentialFailure(err) {
			s.authFailed(user)
		} else if err == nil {
			s.authSucceeded(user)
		}
		release()
		if err == nil {
			s.st.AuthUser = user
			s.st.Log = s.st.Log.With("sasl_username", user)
			s.st.Log.Info("authenticated", "mechanism", mech)
			return nil
		}
		s.authFails++
		// Slow guessing down: each failure in a session costs more.
		time.Sleep(time.Duration(min(s.authFails, 5)) * time.Second)
		if se, ok := err.(*smtp.SMTPError); ok {
			// The one line of the failed login: a warning, as a guesser
			// must be noticed.
			ref := Refuse("auth", se, "mechanism", mech, "sasl_username", sanitize(user), "failures", s.authFails)
			ref.Level = slog.LevelWarn
			err = ref
		}
		return s.edgeCheck(err, "auth", "auth")
	}
	switch strings.ToUpper(mech) {
	case sasl.Plain:
		return sasl.NewPlainServer(func(identity, user, pass string) error {
			if identity != "" && identity != user {
				return s.edgeCheck(smtputil.AuthFailed(), "auth", "auth")
			}
			return check(user, pass)
		}), nil
	case sasl.Login:
		return &loginServer{check: check}, nil
	}
	return nil, smtputil.AuthUnknownMechanism(mech)
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.srv.shutting.Load() {
		return s.edgeCheck(smtputil.ShuttingDown(), "mail", "shutdown")
	}
	if se := s.rate("msg", s.srv.opts.MaxMessageRate); se != nil {
		return s.edgeCheck(se, "mail", "max_message_rate_per_client")
	}
	if s.srv.opts.RequireTLS && s.st.TLS == nil {
		return s.edgeCheck(smtputil.TLSRequired(), "mail", "require_tls")
	}
	if opts != nil && opts.RequireTLS && s.st.TLS == nil {
		// Advertised only inside TLS (RFC 8689 section 3): over a clear
		// session the sender's own hop already broke the promise.
		return s.edgeCheck(smtputil.RequireTLSInClear(), "mail", "requiretls")
	}
	if o := &s.srv.opts; o.MinFreeSpace > 0 && o.FreeSpace != nil {
		free, err := o.FreeSpace()
		var size int64
		if opts != nil {
			size = opts.Size
		}
		// A free-space figure that cannot be read is no reason to refuse:
		// the spool write itself still fails safely (451, never 250).
		if err == nil && free-size < o.MinFreeSpace {
			// A warning: the operator has to make room (or the spool's
			// file system fills on its own); it ends by itself then.
			ref := Refuse("min_free_space", smtputil.InsufficientStorage(), "free_bytes", free, "size", size, "min_free_space", o.MinFreeSpace)
			ref.Level = slog.LevelWarn
			return s.edgeCheck(ref, "mail", "min_free_space")
		}
	}
	if opts != nil && len(smtputil.EncodeXtext(opts.EnvelopeID)) > smtputil.MaxEnvIDLen {
		return s.edgeCheck(smtputil.DSNParamTooLong("ENVID", smtputil.MaxEnvIDLen), "mail", "dsn_parameters")
	}
	// A new transaction: the role's state of an earlier one that ended
	// with a refused MAIL (go-smtp calls no Reset then) must not carry
	// over, e.g. that sender's SPF verdict into this message's header.
	s.dropTxn()
	s.st.SMTPUTF8 = opts != nil && opts.UTF8
	canon, err := s.srv.opts.Role.Mail(&s.st, from, opts)
	if err != nil {
		return s.edge(err, "mail")
	}
	s.st.From = canon
	s.st.Rcpts, s.st.RcptDSN = nil, nil
	s.st.RequireTLS = opts != nil && opts.RequireTLS
	s.st.Body, s.st.Ret, s.st.EnvID = "", "", ""
	if opts != nil {
		s.st.Body, s.st.Ret, s.st.EnvID = string(opts.Body), string(opts.Return), opts.EnvelopeID
	}
	s.tc.inTxn.Store(true)
	s.tc.sawMail.Store(true)
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.setRcpt(to)
	defer s.setRcpt("")
	if se := s.rate("rcpt", s.srv.opts.MaxRecipientRate); se != nil {
		return s.edgeCheck(se, "rcpt", "max_recipient_rate_per_client")
	}
	var dsn queue.RcptDSN
	if opts != nil && len(opts.Notify) > 0 {
		n := make([]string, len(opts.Notify))
		for i, v := range opts.Notify {
			n[i] = string(v)
		}
		dsn.Notify = strings.Join(n, ",")
	}
	if opts != nil && opts.OriginalRecipient != "" {
		// Kept decoded, "type;address"; passed on encoded again.
		dsn.ORCPT = strings.ToLower(string(opts.OriginalRecipientType)) + ";" + opts.OriginalRecipient
		enc, ok := smtputil.EncodeORCPT(dsn.ORCPT)
		if !ok {
			return s.edgeCheck(smtputil.BadDSNParameter("ORCPT", "the original recipient is not an address of type rfc822 or utf-8"), "rcpt", "dsn_parameters")
		}
		if len(enc) > smtputil.MaxORCPTLen {
			return s.edgeCheck(smtputil.DSNParamTooLong("ORCPT", smtputil.MaxORCPTLen), "rcpt", "dsn_parameters")
		}
	}
	canon, err := s.srv.opts.Role.Rcpt(&s.st, to, opts)
	if err != nil {
		return s.edge(err, "rcpt")
	}

	s.st.Rcpts = append(s.st.Rcpts, canon)
	if dsn != (queue.RcptDSN{}) {
		for len(s.st.RcptDSN) < len(s.st.Rcpts)-1 {
			s.st.RcptDSN = append(s.st.RcptDSN, queue.RcptDSN{})
		}
		s.st.RcptDSN = append(s.st.RcptDSN, dsn)
	}
	return nil
}

func (s *session) Data(r io.Reader) error {
	o := &s.srv.opts
	// Message data is not an idle session: the stress time-out stays off
	// it (limits.go).
	s.tc.inData.Store(true)
	defer s.tc.inData.Store(false)
	if o.DataTimeout > 0 {
		s.c.Conn().SetReadDeadline(time.Now().Add(o.DataTimeout))
	}
	s.mu.Lock()
	helo := s.st.Helo
	env := queue.Envelope{
		From:     s.st.From,
		To:       append([]string(nil), s.st.Rcpts...),
		Origin:   o.Role.Origin(),
		Listener: o.Name,
		Client:   fmt.Sprintf("%s[%s]", sanitize(helo), s.st.RemoteIP),
		AuthUser: s.st.AuthUser,
		// RFC 8689: the promise travels with the message to every hop.
		RequireTLS: s.st.RequireTLS,
		// RFC 6531: delivery passes SMTPUTF8 on, or downgrades.
		SMTPUTF8: s.st.SMTPUTF8 || needsSMTPUTF8(s.st.From, s.st.Rcpts),
		Body:     s.st.Body,
		Ret:      s.st.Ret,
		EnvID:    s.st.EnvID,
		RcptDSN:  append([]queue.RcptDSN(nil), s.st.RcptDSN...),
	}
	s.mu.Unlock()
	w, err := o.Queue.NewWriter(env)
	if err != nil {
		s.st.Log.Error("cannot spool message", "error", err)
		return s.edgeCheck(smtputil.QueueFailed(), "data", "local_error")
	}
	defer w.Abort()
	s.setQueueID(w.ID())
	defer s.setQueueID("")
	if ds, ok := o.Role.(DataStarter); ok {
		defer ds.DataStart(&s.st, w.ID())()
	}

	ri := smtputil.ReceivedInfo{
		FromHelo: helo,
		ClientIP: s.st.RemoteIP,
		ByHost:   o.Hostname,
		Listener: o.Name,
		Protocol: "ESMTP",
		QueueID:  w.ID(),
		Time:     time.Now(),
	}
	if env.SMTPUTF8 {
		ri.Protocol = "UTF8SMTP" // RFC 6531 §4.3
	}
	if s.st.TLS != nil {
		ri.Protocol += "S"
		ri.TLSVersion = smtputil.TLSVersionName(s.st.TLS.Version)
		ri.TLSCipher = tls.CipherSuiteName(s.st.TLS.CipherSuite)
	}
	if s.st.AuthUser != "" {
		ri.Protocol += "A"
	}
	if len(env.To) == 1 {
		ri.For = env.To[0]
	}
	if _, err := io.WriteString(w, smtputil.Received(ri)); err != nil {
		s.st.Log.Error("cannot spool message", "queue_id", w.ID(), "error", err)
		return s.edgeCheck(smtputil.QueueFailed(), "data", "local_error")
	}
	hops := &smtputil.HopCounter{Max: maxHeader}
	// Whether the data has 8-bit octets, seen on the way to the spool:
	// delivery to a next hop without 8BITMIME must then convert it.
	eight := &downgrade.Detector{}
	lines := smtputil.NewLineLengthReader(smtputil.NewLineEndingReader(r, o.NormalizeLineEndings), s.srv.smtp.MaxLineLength)
	_, err = io.Copy(w, io.TeeReader(lines, io.MultiWriter(hops, eight)))
	if err != nil {
		var ne net.Error
		switch {
		case errors.Is(err, smtp.ErrDataReset):
			// RSET during BDAT: the client gave the message up. Not a
			// refusal, so neither logged nor counted (TransferAborted
			// says why it is temporary).
			return smtputil.TransferAborted()
		case errors.Is(err, smtputil.ErrBareLineEnding):
			return s.edgeCheck(smtputil.BareLineEnding(), "data", "bare_line_endings")
		case errors.Is(err, smtputil.ErrLineTooLong):
			// Permanent: no retry shortens the line. go-smtp reads the
			// rest of the data before this reply goes out.
			return s.edgeCheck(smtputil.LineTooLong(s.srv.smtp.MaxLineLength), "data", "max_line_length")
		case errors.Is(err, smtputil.ErrHeaderTooLarge):
			// The signer (and authres) read at most dkim.MaxHeaderBytes:
			// a 250 here would be a message that can never leave.
			// Logged and counted under inbound's old name for it.
			return s.edgeCheck(smtputil.HeaderTooLarge(maxHeader), "data", "header_too_large")
		case errors.Is(err, smtp.ErrDataTooLarge):
			// go-smtp's DATA reader counted past max_message_size.
			return s.edgeCheck(smtputil.MessageTooBig(o.MaxMessageSize), "data", "max_message_size")
		case errors.As(err, &ne) && ne.Timeout():
			s.tc.closeAfterWrite.Store(true)
			return s.edgeCheck(smtputil.DataTimeout(), "data", "data_timeout")
		case errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, net.ErrClosed):
			s.st.Log.Info("client disconnected during DATA", "queue_id", w.ID())
			return s.edgeCheck(smtputil.ConnectionLost(), "data", "connection_lost")
		default:
			// Anything else is our side: the spool could not be written.
			s.st.Log.Error("cannot spool message", "queue_id", w.ID(), "error", err)
			return s.edgeCheck(smtputil.QueueFailed(), "data", "local_error")
		}
	}
	maxHops := o.MaxHops
	if maxHops <= 0 {
		maxHops = defaultMaxHops
	}
	if hops.N > maxHops {
		// RFC 5321 §6.3: a loop, almost certainly (a deliver_to or a
		// forwarding rule pointing back here). Refusing ends it; for our
		// own deliveries the refusal reaches the queue, which holds or
		// bounces the message once instead of circulating it forever.
		return s.edgeCheck(smtputil.TooManyHops(hops.N, maxHops), "data", "max_hops")
	}
	if err := s.loopCheck(hops.Header, env); err != nil {
		return s.edge(err, "data")
	}
	msg := &Message{QueueID: w.ID(), Size: w.Size(), Open: w.Reader}
	if err := o.Role.Data(&s.st, msg); err != nil {
		return s.edge(err, "content")
	}
	w.SetContent(contentOf(eight))
	changed := msg.NewFrom != "" || msg.AddHeader != "" || msg.Rewrite != nil || len(msg.AddRcpts) > 0
	if changed && (msg.Rewrite == nil || msg.RewriteHeaderOnly) {
		// The common case (Authentication-Results on every inbound
		// message): amended in place, no copy, same queue ID.
		env2, ok, err := s.amend(w, env, msg)
		if err != nil {
			s.st.Log.Error("cannot spool the changed message", "queue_id", w.ID(), "error", err)
			return s.edgeCheck(smtputil.QueueFailed(), "data", "local_error")
		}
		if ok {
			if env2.From != env.From || len(env2.To) != len(env.To) {
				s.st.Log.Info("envelope changed before queueing", "queue_id", w.ID(),
					"old_from", env.From, "from", env2.From, "old_nrcpt", len(env.To), "nrcpt", len(env2.To))
			}
			env, changed = env2, false
		}
	}
	if changed {
		w2, err := s.respool(w, env, msg)
		if err != nil {
			s.st.Log.Error("cannot spool the changed message", "queue_id", w.ID(), "error", err)
			return s.edgeCheck(smtputil.QueueFailed(), "data", "local_error")
		}
		defer w2.Abort()
		s.st.Log.Info("message changed before queueing", "old_queue_id", w.ID(), "queue_id", w2.ID(),
			"old_from", env.From, "from", w2.Envelope().From)
		w, env = w2, w2.Envelope()
		s.setQueueID(w.ID())
	}
	if err := w.Commit(); err != nil {
		s.st.Log.Error("cannot commit message to the spool", "queue_id", w.ID(), "error", err)
		return s.edgeCheck(smtputil.QueueFailed(), "data", "local_error")
	}
	s.st.Log.Info("queued", "queue_id", w.ID(), "from", env.From, "nrcpt", len(env.To),
		"size", w.Size(), "helo", sanitize(helo), "tls", ri.TLSVersion)
	s.srv.accepted.Add(1)
	s.srv.acceptedBytes.Add(w.Size())
	s.endTxn()
	// A message went through: the junk commands count from here, as
	// Postfix resets its count after each delivered message.
	s.tc.junk.Store(0)
	// go-smtp sends whatever SMTPError Data returns, 2xx included; this is
	// how the client learns the queue ID, as Postfix admins expect.
	return smtputil.Queued(w.ID())
}

// loopCheck refuses the two loops that need no state: a message that
// already passed this relay for the same recipient (our own Received:
// field, "by <hostname> (securerelay) … for <rcpt>", is the loop marker),
// and an automatic message (Auto-Submitted, Precedence bulk…, or from <>)
// to an address only programs send from (MAILER-DAEMON, noreply), which is
// how two auto-responders start answering each other.
func (s *session) loopCheck(header []byte, env queue.Envelope) error {
	if len(env.To) == 1 {
		mark := "by " + s.srv.opts.Hostname + " (securerelay) "
		forRcpt := "for <" + smtputil.TraceFor(env.To[0]) + ">"
		for _, r := range smtputil.HeaderFields(header, "Received") {
			if strings.Contains(r, mark) && strings.Contains(r, forRcpt) {
				return Refuse("mail_loop", smtputil.MailLoop(s.srv.opts.Hostname, env.To[0]), "to", env.To[0])
			}
		}
	}
	if env.From == "" || smtputil.IsAutomatic(header) {
		for _, rc := range env.To {
			if smtputil.IsAutomaticSender(rc, s.srv.opts.AutomaticSenders) {
				return Refuse("automatic_senders", smtputil.AutoReplyToProgram(rc), "to", rc)
			}
		}
		o := &s.srv.opts
		if o.AutoReplies != nil && o.MaxAutoReplies > 0 {
			now := time.Now()
			for _, rc := range env.To {
				n, err := o.AutoReplies.Add(strings.ToLower(env.From)+" "+strings.ToLower(rc), now, o.AutoReplyWindow)
				if err != nil {
					// The counter is a protection: without it the message
					// goes through rather than being lost to a store error.
					s.st.Log.Warn("auto-reply counter unavailable", "error", err)
					continue
				}
				if n > o.MaxAutoReplies {
					from := env.From
					if from == "" {
						from = "<>"
					}
					// A warning: two systems are answering each other.
					ref := Refuse("max_auto_replies", smtputil.AutoReplyLoop(n, from, rc, o.AutoReplyWindow, o.MaxAutoReplies),
						"to", rc, "auto_replies", n, "window", o.AutoReplyWindow.String())
					ref.Level = slog.LevelWarn
					return ref
				}
			}
		}
	}
	return nil
}

// changedEnvelope is env with the sender and recipients a Data hook set.
func changedEnvelope(env queue.Envelope, msg *Message) queue.Envelope {
	if msg.NewFrom != "" {
		env.From = msg.NewFrom
	}
	if len(msg.AddRcpts) > 0 {
		env.To = append([]string(nil), env.To...)
		for _, rc := range msg.AddRcpts {
			if !slices.ContainsFunc(env.To, func(t string) bool { return strings.EqualFold(t, rc) }) {
				env.To = append(env.To, rc)
			}
		}
	}
	// A milter's new sender or recipient may be the first address that
	// needs SMTPUTF8.
	env.SMTPUTF8 = env.SMTPUTF8 || needsSMTPUTF8(env.From, env.To)
	return env
}

// amend applies a Data hook's changes to the spooled message in its own
// file (queue.Writer.Amend) when they leave the body alone: AddHeader
// goes on top, a header-only Rewrite runs over the stored header section
// alone (up to and including the empty line; the whole message when it
// has none) and its output replaces it. Since the rewrite copies what
// follows that line as it is, the result is the message respool would
// write. ok false: the header section is larger than any header smtpd
// accepts, which cannot happen; respool then does it the long way.
func (s *session) amend(w *queue.Writer, env queue.Envelope, msg *Message) (queue.Envelope, bool, error) {
	header := []byte(msg.AddHeader)
	var bodyOff int64
	if msg.Rewrite != nil {
		r, err := w.Reader()
		if err != nil {
			return env, false, err
		}
		in, out := hdrBufs.Get().(*[]byte), hdrBufs.Get().(*[]byte)
		// Amend copies the header into the file's buffer: both go back.
		defer putHdrBuf(in)
		defer putHdrBuf(out)
		hs, err := headerSection((*in)[:0], r, dkim.MaxHeaderBytes)
		*in = hs
		if errors.Is(err, errHeaderSection) {
			return env, false, nil
		}
		if err != nil {
			return env, false, err
		}
		b := bytes.NewBuffer((*out)[:0])
		b.Write(header)
		err = msg.Rewrite(b, bytes.NewReader(hs))
		*out = b.Bytes()
		if err != nil {
			return env, false, err
		}
		header, bodyOff = *out, int64(len(hs))
	}
	var newEnv *queue.Envelope
	if msg.NewFrom != "" || len(msg.AddRcpts) > 0 {
		e := changedEnvelope(env, msg)
		newEnv = &e
	}
	if err := w.Amend(newEnv, header, bodyOff); err != nil {
		return env, false, err
	}
	return w.Envelope(), true, nil
}

var errHeaderSection = errors.New("header section too large")

// hdrBufs recycles amend's header buffers: two per changed message, the
// GC's work otherwise. Buffers grown past 64 KiB are left to it.
var hdrBufs = sync.Pool{New: func() any { b := make([]byte, 0, 8<<10); return &b }}

func putHdrBuf(b *[]byte) {
	if cap(*b) <= 64<<10 {
		*b = (*b)[:0]
		hdrBufs.Put(b)
	}
}

// headerSection reads the stored message's header into buf through the
// empty line that ends it, or all of it when there is none, at most limit
// octets. The spool holds CRLF line ends only (NewLineEndingReader), so
// the empty line is the first CRLF right after a CRLF, or one at the very
// start.
func headerSection(buf []byte, r io.Reader, limit int) ([]byte, error) {
	buf = buf[:0]
	if cap(buf) == 0 {
		buf = make([]byte, 0, 8<<10)
	}
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= limit {
				return nil, errHeaderSection
			}
			buf = slices.Grow(buf, min(len(buf), limit-len(buf)))
		}
		from := max(0, len(buf)-3)
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if bytes.HasPrefix(buf, []byte("\r\n")) {
			return buf[:2], nil
		}
		if i := bytes.Index(buf[from:], []byte("\r\n\r\n")); i >= 0 {
			return buf[:from+i+4], nil
		}
		if err == io.EOF {
			return buf, nil
		}
		if err != nil {
			return nil, err
		}
	}
}

// respool writes the message again with the envelope sender and extra
// header fields a Data hook asked for; the caller commits the new writer.
func (s *session) respool(w *queue.Writer, env queue.Envelope, msg *Message) (*queue.Writer, error) {
	env = changedEnvelope(env, msg)
	w2, err := s.srv.opts.Queue.NewWriter(env)
	if err != nil {
		return nil, err
	}
	eight := &downgrade.Detector{}
	dst := io.MultiWriter(w2, eight)
	r, err := w.Reader()
	if err == nil {
		_, err = io.WriteString(dst, msg.AddHeader)
	}
	if err == nil && msg.Rewrite != nil {
		err = msg.Rewrite(dst, r)
	} else if err == nil {
		_, err = io.Copy(dst, r)
	}
	if err != nil {
		w2.Abort()
		return nil, err
	}
	w2.SetContent(contentOf(eight))
	w.Abort()
	return w2, nil
}

// contentOf is what a Detector saw, for the queue.
func contentOf(d *downgrade.Detector) queue.Content {
	if d.EightBit {
		return queue.Content8Bit
	}
	return queue.Content7Bit
}

func (s *session) setRcpt(to string) {
	s.mu.Lock()
	s.rcpt = to
	s.mu.Unlock()
}

func (s *session) setQueueID(id string) {
	s.mu.Lock()
	s.queueID = id
	s.mu.Unlock()
}

func (s *session) endTxn() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.From = ""
	s.st.Rcpts, s.st.RcptDSN = nil, nil
	s.st.RequireTLS = false
	s.st.SMTPUTF8 = false
	s.st.Body, s.st.Ret, s.st.EnvID = "", "", ""
	s.dropTxn()
	s.tc.inTxn.Store(false)
	if s.srv.shutting.Load() {
		s.tc.Conn.SetReadDeadline(time.Now())
	}
}

// Reset runs on RSET and on a repeated EHLO/HELO (RFC 5321 §4.1.4), so
// the HELO name is refreshed here too.
func (s *session) Reset() {
	s.endTxn()
	s.mu.Lock()
	s.st.Helo = s.c.Hostname()
	s.mu.Unlock()
}

// Logout runs when the connection closes and when STARTTLS discards the
// session (go-smtp then calls neither Reset nor anything else): a
// transaction begun before STARTTLS ends with it, or Shutdown would take
// the session for busy and wait for it until its deadline.
func (s *session) Logout() error {
	s.mu.Lock()
	s.dropTxn()
	s.mu.Unlock()
	s.tc.inTxn.Store(false)
	return nil
}

// dropTxn ends the role's state of the transaction; one with an End
// method (TxnEnder) releases what it held, such as milter conversations
// begun at RCPT.
func (s *session) dropTxn() {
	if e, ok := s.st.Txn.(TxnEnder); ok {
		e.End()
	}
	s.st.Txn = nil
}

// needsSMTPUTF8 reports an envelope with a non-ASCII address: the queue
// must know the message needs SMTPUTF8 (or a downgrade) whatever the
// client declared.
func needsSMTPUTF8(from string, to []string) bool {
	return smtputil.NeedsSMTPUTF8(from) || slices.ContainsFunc(to, smtputil.NeedsSMTPUTF8)
}

// loginServer is the server side of the LOGIN SASL mechanism (a de-facto
// standard, draft-murchison-sasl-login), which go-sasl implements only as a
// client; Outlook-era clients and many ticket systems still use it.
type loginServer struct {
	check    func(user, pass string) error
	step     int
	username string
}

func (l *loginServer) Next(resp []byte) ([]byte, bool, error) {
	switch l.step {
	case 0:
		l.step++
		if len(resp) > 0 { // initial response carries the username
			l.username = string(resp)
			l.step++
			return []byte("Password:"), false, nil
		}
		return []byte("Username:"), false, nil
	case 1:
		l.username = string(resp)
		l.step++
		return []byte("Password:"), false, nil
	case 2:
		l.step++
		return nil, true, l.check(l.username, string(resp))
	}
	return nil, true, smtputil.AuthFailed()
}

// sanitize bounds and cleans client-supplied text for logs.
func sanitize(s string) string {
	if len(s) > 255 {
		s = s[:255]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return '?'
		}
		return r
	}, s)
}
