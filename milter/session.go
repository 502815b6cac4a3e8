package milter

import (
	"context"
	"fmt"
	"io"
	"sync"

	gomilter "github.com/d--j/go-milter"
)

// outcome is one milter's answer for one message.
type outcome struct {
	failure error // unreachable, timeout, protocol violation: OnError applies

	action   Action
	code     int
	enhanced string
	text     string
	mods     []Modification

	read, written int64 // bytes from and to the milter
}

// chunkSize is the largest body chunk: Postfix's and libmilter's
// MILTER_CHUNK_SIZE, the 64 KiB packet less the command byte.
const chunkSize = 65535

var emptyLine = []byte("\r\n")

var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

// pending is one milter's conversation taken as far as it goes without
// the message: connect, HELO, MAIL, RCPT and DATA. Check begins every
// milter's at once, so that their connections and envelope round trips
// overlap (Postfix opens its milter sessions while the SMTP client sends
// its envelope), and then finishes them one after another with the
// content, each seeing the changes of the ones before it.
type pending struct {
	m             *milterDef
	d             *dialer
	s             *gomilter.ClientSession
	out           outcome
	over          bool // the milter failed or decided before the content
	inTransaction bool
	stop          func() bool // ends the socket's tie to the context
}

// begin opens the conversation with m and takes it through DATA. It does
// not fail: a failure or a decision is in the outcome (p.over).
func (c *Chain) begin(ctx context.Context, m *milterDef, env *Envelope, macros *gomilter.MacroBag, feed *rcptFeed) *pending {
	p := &pending{m: m, d: &dialer{ctx: ctx, timeout: m.cfg.ConnectTimeout, writeTimeout: m.cfg.WriteTimeout,
		budget: c.MaxBodyReplacement + maxPacket}}
	opts := append(m.opts[:len(m.opts):len(m.opts)], gomilter.WithDialer(p.d))
	s, err := gomilter.NewClient(m.network, m.addr, opts...).Session(macros)
	if err != nil {
		p.out.failure, p.over = err, true
		return p
	}
	p.s = s
	// go-milter has no context; closing the socket ends a blocked read
	// or write at once. (The socket itself: guardConn is not safe for use
	// from another goroutine.)
	p.stop = context.AfterFunc(ctx, func() { p.d.conn.Conn.Close() })

	conv := conversation{m: m, s: s, out: &p.out}
	family, port, addr := gomilter.FamilyUnknown, uint16(0), ""
	if env.ClientAddr.IsValid() {
		a := env.ClientAddr.Unmap()
		family, addr = gomilter.FamilyInet, a.String()
		if a.Is6() {
			family = gomilter.FamilyInet6
		}
		port = uint16(env.ClientPort)
	}
	clientName := env.ClientName
	if clientName == "" {
		clientName = "unknown"
	}
	if conv.step(s.Conn(clientName, family, port, addr)) ||
		conv.step(s.Helo(env.Helo)) {
		p.over = true
		return p
	}
	p.inTransaction = true
	if conv.step(s.Mail(env.From, "")) {
		p.over = true
		return p
	}
	for i := 0; ; i++ {
		rcpt, ok, data, queueID := feed.next(ctx, i)
		if !ok {
			if !data {
				// The transaction ended without DATA (or ctx did):
				// close sends ABORT.
				p.over = true
				return p
			}
			if queueID != "" {
				macros.Set(gomilter.MacroQueueId, queueID)
			}
			break
		}
		macros.Set(gomilter.MacroRcptAddr, rcpt)
		macros.Set(gomilter.MacroRcptHost, domainOf(rcpt))
		// A recipient refused by a milter refuses the message: the
		// recipients were accepted in the dialog before DATA, and the
		// relay cannot take back one of them now.
		if conv.step(s.Rcpt(rcpt, "")) {
			p.over = true
			return p
		}
	}
	p.over = conv.step(s.DataStart())
	return p
}

// close ends the conversation (SMFIC_ABORT inside a transaction, then
// QUIT); it may be called more than once.
func (p *pending) close() {
	if p.s != nil {
		if p.inTransaction {
			_ = p.s.Abort(nil)
		}
		_ = p.s.Close()
		p.s = nil
	}
	if p.stop != nil {
		p.stop()
		p.stop = nil
	}
}

// finish sends the header and body of cnt and reads the verdict, then
// closes the conversation. The returned error is for the caller (source,
// context); the milter's own failures are in outcome.failure.
func (p *pending) finish(ctx context.Context, c *Chain, cnt *content) (out outcome, err error) {
	defer func() {
		p.close()
		out = p.out
		if p.d.conn != nil {
			out.read, out.written = p.d.conn.read, p.d.conn.written
		}
		// The caller's deadline or cancellation is not the milter's fault.
		if out.failure != nil && err == nil && ctx.Err() != nil {
			err = ctx.Err()
		}
	}()
	if p.over {
		return
	}
	s := p.s
	conv := conversation{m: p.m, s: s, out: &p.out}
	if err := cnt.load(); err != nil {
		return outcome{}, err
	}
	leadSpace := s.ProtocolOption(gomilter.OptHeaderLeadingSpace)
	if !s.ProtocolOption(gomilter.OptNoHeaders) {
		for _, f := range cnt.fields() {
			if conv.step(s.HeaderField(f.name(), f.milterValue(leadSpace), nil)) {
				return
			}
			if s.Skip() {
				break
			}
		}
	}
	if conv.step(s.HeaderEnd()) {
		return
	}
	decided, err := conv.body(cnt)
	if err != nil || decided {
		return outcome{}, err
	}
	mods, act, eerr := s.End()
	p.inTransaction = false
	if eerr != nil {
		p.out.failure = eerr
		return
	}
	if act.Type == gomilter.ActionAccept || act.Type == gomilter.ActionContinue {
		conv.collect(mods, leadSpace, c.MaxBodyReplacement)
		return
	}
	conv.decide(act)
	return
}

type conversation struct {
	m   *milterDef
	s   *gomilter.ClientSession
	out *outcome
}

// step records the milter's answer to one event and reports whether the
// conversation is over.
func (v *conversation) step(act *gomilter.Action, err error) bool {
	if err != nil {
		v.out.failure = err
		return true
	}
	return v.decide(act)
}

// decide maps a milter action onto the outcome. Continue goes on; Accept
// ends this milter's part (no more events, no modifications), as in
// Sendmail and Postfix.
func (v *conversation) decide(act *gomilter.Action) bool {
	switch act.Type {
	case gomilter.ActionContinue:
		return false
	case gomilter.ActionAccept:
		v.out.action = Accept
		return true
	case gomilter.ActionReject, gomilter.ActionDiscard:
		v.setDefault(Reject)
	case gomilter.ActionTempFail:
		v.setDefault(Tempfail)
	case gomilter.ActionRejectWithCode:
		code, enh, text, err := parseReply(act.SMTPReply)
		if err != nil {
			v.out.failure = fmt.Errorf("SMFIR_REPLYCODE: %w", err)
			return true
		}
		v.out.action = Reject
		if code < 500 {
			v.out.action = Tempfail
		}
		v.out.code, v.out.enhanced, v.out.text = code, enh, text
	default:
		v.out.failure = fmt.Errorf("unexpected milter action %v", act.Type)
	}
	return true
}

func (v *conversation) setDefault(a Action) {
	v.out.action = a
	v.out.code, v.out.enhanced, v.out.text = defaultReply(a, v.m.name)
}

// body streams the body in chunks of up to 65535 bytes. Nothing is read
// when the milter negotiated SMFIP_NOBODY, and reading stops when it
// answers SMFIR_SKIP.
func (v *conversation) body(cnt *content) (decided bool, err error) {
	sent := false
	if !v.s.ProtocolOption(gomilter.OptNoBody) {
		r, err := cnt.body()
		if err != nil {
			return false, err
		}
		bp := chunkPool.Get().(*[]byte)
		defer chunkPool.Put(bp)
		buf := *bp
		for {
			n, rerr := io.ReadFull(r, buf)
			if n > 0 {
				sent = true
				if v.step(v.s.BodyChunk(buf[:n])) {
					return true, nil
				}
				if v.s.Skip() {
					break
				}
			}
			if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
				break
			}
			if rerr != nil {
				return false, errSource{rerr}
			}
		}
	}
	if !sent {
		// go-milter's End needs a BodyChunk call first; with SMFIP_NOBODY
		// it sends nothing. An empty body cannot go as an empty BODY
		// packet (libmilter, in clamav-milter, drops the connection), so
		// it goes as one empty line, which Postfix would not send at all.
		// For a scanner both are an empty body, and DKIM canonicalizes
		// both to the same body hash (RFC 6376 §3.4.3, §3.4.4).
		return v.step(v.s.BodyChunk(emptyLine)), nil
	}
	return false, nil
}

// collect turns the end-of-message modifications into Modifications. A
// modification the milter did not negotiate, a header name that cannot be
// written, or an oversized body breaks the protocol; a quarantine request
// refuses the message (this relay does not hold mail back).
func (v *conversation) collect(mods []gomilter.ModifyAction, leadSpace bool, maxBody int64) {
	allowed := func(opts ...gomilter.OptAction) bool {
		for _, o := range opts {
			if v.s.ActionOption(o) {
				return true
			}
		}
		return false
	}
	var out []Modification
	body := -1 // index in out of the ReplaceBody, if any
	var bodyLen int64
	for _, ma := range mods {
		mod := Modification{Milter: v.m.name, leadSpace: leadSpace}
		var ok bool
		switch ma.Type {
		case gomilter.ActionAddHeader:
			mod.Kind, ok = AddHeader, allowed(gomilter.OptAddHeader)
		case gomilter.ActionInsertHeader:
			mod.Kind, ok = InsertHeader, allowed(gomilter.OptAddHeader, gomilter.OptChangeHeader)
		case gomilter.ActionChangeHeader:
			mod.Kind, ok = ChangeHeader, allowed(gomilter.OptChangeHeader)
		case gomilter.ActionReplaceBody:
			if !allowed(gomilter.OptChangeBody) {
				break
			}
			if bodyLen += int64(len(ma.Body)); bodyLen > maxBody {
				v.out.failure = fmt.Errorf("body replacement larger than %d bytes", maxBody)
				return
			}
			// One body in several SMFIR_REPLBODY packets.
			if body >= 0 {
				out[body].Body = append(out[body].Body, ma.Body...)
				continue
			}
			mod.Kind, ok = ReplaceBody, true
			mod.Body = append([]byte{}, ma.Body...)
			body = len(out)
		case gomilter.ActionAddRcpt:
			mod.Kind, ok = AddRcpt, allowed(gomilter.OptAddRcpt, gomilter.OptAddRcptWithArgs)
			mod.Addr, mod.Args = gomilter.RemoveAngle(ma.Rcpt), ma.RcptArgs
		case gomilter.ActionDelRcpt:
			mod.Kind, ok = DelRcpt, allowed(gomilter.OptRemoveRcpt)
			mod.Addr = gomilter.RemoveAngle(ma.Rcpt)
		case gomilter.ActionChangeFrom:
			mod.Kind, ok = ChangeFrom, allowed(gomilter.OptChangeFrom)
			mod.Addr, mod.Args = gomilter.RemoveAngle(ma.From), ma.FromArgs
		case gomilter.ActionQuarantine:
			if !allowed(gomilter.OptQuarantine) {
				break
			}
			v.out.action, v.out.code, v.out.enhanced = Reject, 550, "5.7.1"
			v.out.text = "Message rejected by content scanner " + v.m.name
			if r := sanitizeText(ma.Reason); r != "" {
				v.out.text += ": " + r
			}
			v.out.mods = nil
			return
		}
		if !ok {
			v.out.failure = fmt.Errorf("milter sent %v, which it did not negotiate", ma)
			return
		}
		switch mod.Kind {
		case AddHeader, InsertHeader, ChangeHeader:
			if !validFieldName(ma.HeaderName) {
				v.out.failure = fmt.Errorf("milter sent invalid header name %q", ma.HeaderName)
				return
			}
			mod.Name, mod.Value, mod.Index = ma.HeaderName, ma.HeaderValue, int(ma.HeaderIndex)
		}
		out = append(out, mod)
	}
	v.out.action, v.out.mods = Accept, out
}

// replacedBody returns the last body replacement in mods, or nil.
func replacedBody(mods []Modification) []byte {
	var body []byte
	for _, m := range mods {
		if m.Kind == ReplaceBody {
			body = m.Body
			if body == nil {
				body = []byte{}
			}
		}
	}
	return body
}
