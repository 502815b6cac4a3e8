package inbound

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/attach"
	"securerelay/authres"
	"securerelay/dkim"
	"securerelay/milter"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// Content configures the expensive stages after DATA (dataStages,
// pipeline.go), run while the client waits: the attachment policy,
// SPF/DKIM/DMARC verdicts, then the milters of the recipients' content
// policy. Each verdict is a reply in the dialog; nothing turns into a
// bounce or a silent drop.
type Content struct {
	// Auth, if set, records SPF, DKIM and DMARC in Authentication-Results
	// (and refuses what the policy says to refuse).
	Auth *authres.Checker
	// AuthServID is Auth's: forged Authentication-Results claiming it are
	// removed from the queued message.
	AuthServID string
	// Chains are the milter chains by content policy name; DomainPolicy
	// names a domain's policy ("default" when absent).
	Chains       map[string]*milter.Chain
	DomainPolicy map[string]string
	// RecipientDeletion: ActionReject (550 5.7.1; also ActionDefault) or
	// ActionTempfail (451 4.7.1) when a milter asks to remove some
	// recipients.
	RecipientDeletion Action
	// Hostname is our name (milter macro j).
	Hostname string
	// Timeout bounds the whole stage for one message.
	Timeout time.Duration
	// Attachments, if set, is the attachment policy, run first.
	Attachments *Attachments
}

// Attachments is the attachment policy stage (attach/): it runs first,
// before SPF/DKIM/DMARC and the milters, because it costs no DNS
// question and no scanner run, and a banned file should cost neither.
type Attachments struct {
	Limits attach.Limits
	// Policies by name; "default" is always there. DomainPolicy names a
	// domain's policy ("default" when absent).
	Policies     map[string]*attach.Policy
	DomainPolicy map[string]string
}

func (a *Attachments) policyOf(domain string) string {
	if p := a.DomainPolicy[domain]; p != "" {
		return p
	}
	return "default"
}

// txn is the role's per-transaction state (smtpd.State.Txn).
type txn struct {
	spf    *authres.SPFResult
	policy string // content policy of the first accepted recipient
	attach string // attachment policy of the first accepted recipient
	// early: the milter conversations begun at the first accepted
	// recipient, for the milter stage to take over.
	early *earlyMilters
}

// earlyMilters is a milter chain's check begun at the transaction's
// first accepted recipient.
type earlyMilters struct {
	run    *milter.Run
	cancel context.CancelFunc // ends run's context
	begun  time.Time
	chain  *milter.Chain
}

// close ends the conversations Check did not take (ABORT and QUIT, in
// the background), then their context; it may be called more than once.
func (e *earlyMilters) close() {
	e.run.Close()
	e.cancel()
}

// earlyMaxWait is how long begun milter conversations may wait for the
// end of the client's data. clamav-milter drops a connection idle for ReadTimeout
// (120 s by default); past this, the milter stage starts them afresh
// rather than risk a 451 for a slow sender.
const earlyMaxWait = 30 * time.Second

// contentPolicy is the transaction's content policy: its first accepted
// recipient's, or "default" before one (or when none set it).
func (t *txn) contentPolicy() string {
	if t.policy == "" {
		return "default"
	}
	return t.policy
}

func txnOf(st *smtpd.State) *txn {
	if st == nil {
		return &txn{}
	}
	t, ok := st.Txn.(*txn)
	if !ok {
		t = &txn{}
		st.Txn = t
	}
	return t
}

// SetContent replaces the content stage (start and SIGHUP).
func (r *Role) SetContent(c *Content) { r.content.Store(c) }

func (c *Content) policyOf(domain string) string {
	if p := c.DomainPolicy[domain]; p != "" {
		return p
	}
	return "default"
}

// scans reports whether any milter would see mail for policy (Chains
// holds only policies with milters).
func (c *Content) scans(policy string) bool { return c.Chains[policy] != nil }

// spfStage evaluates SPF once per transaction, at its first accepted
// recipient, and refuses every recipient when reject_spf_fail says so.
// Not at MAIL: a sender's SPF record may cost over a hundred DNS
// questions (RFC 7208 §4.6.4 allows ten terms of ten MX hosts each), and
// a client that names no recipient we accept, or repeats MAIL and RSET,
// must not make us ask them. The refusal therefore comes at RCPT (550
// 5.7.23), which RFC 5321 permits and senders treat alike.
func (r *Role) spfStage(p *pass, check string) error {
	c, st := r.content.Load(), p.st
	if c == nil || c.Auth == nil || st == nil {
		return nil
	}
	t := txnOf(st)
	if t.spf == nil {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
		defer cancel()
		res := c.Auth.SPF(ctx, st.RemoteIP, st.Helo, st.From)
		t.spf = &res
	}
	if t.spf.Reject == nil {
		return nil
	}
	refusal := *t.spf.Reject
	return smtpd.Refuse(check, &refusal, "result", t.spf.Result)
}

// attachmentSplitStage and contentSplitStage keep one attachment and one
// content policy per transaction: SMTP has one reply to DATA for all
// recipients, so recipients whose scanning differs are sent by the client
// in another transaction (452 4.5.3 makes a real MTA retry them at once),
// never accepted and then treated alike.
func (r *Role) attachmentSplitStage(p *pass, check string) error {
	c := r.content.Load()
	if c == nil || c.Attachments == nil {
		return nil
	}
	t, domain := txnOf(p.st), p.addr.Domain
	switch pol := c.Attachments.policyOf(domain); {
	case t.attach == "":
		t.attach = pol
	case t.attach != pol:
		return smtpd.Refuse(check, smtputil.AttachmentPolicySplit(domain), "policy", pol, "transaction_policy", t.attach)
	}
	return nil
}

func (r *Role) contentSplitStage(p *pass, check string) error {
	c := r.content.Load()
	if c == nil || len(c.Chains) == 0 {
		return nil
	}
	t, domain := txnOf(p.st), p.addr.Domain
	pol := c.policyOf(domain)
	switch {
	case t.policy == "":
		t.policy = pol
	case t.policy != pol && (c.scans(pol) || c.scans(t.policy)):
		return smtpd.Refuse(check, smtputil.ContentPolicySplit(domain), "policy", pol, "transaction_policy", t.policy)
	}
	return nil
}

func (c *Content) timeout() time.Duration {
	if c.Timeout > 0 {
		return c.Timeout
	}
	return 5 * time.Minute
}

// attachmentStage: the attachment policy of the transaction.
func (r *Role) attachmentStage(p *pass, _ string) error {
	if p.c.Attachments == nil {
		return nil
	}
	forged, err := r.attachments(p.ctx, p.st, p.msg, p.c.Attachments, p.t.attach)
	p.forged = forged
	return err
}

// authStage: SPF (from RCPT), DKIM and DMARC, recorded in an
// Authentication-Results field on top; authres names the check that
// refuses.
func (r *Role) authStage(p *pass, _ string) error {
	c, st, msg := p.c, p.st, p.msg
	if c.Auth == nil {
		return nil
	}
	src, err := msg.Open()
	if err != nil {
		return r.contentFailed(msg, "reading the spooled message", err)
	}
	v, err := c.Auth.Check(p.ctx, st.RemoteIP, st.Helo, st.From, p.t.spf, src)
	closeReader(src)
	if errors.Is(err, dkim.ErrHeaderTooLarge) {
		// Checked headers are held in memory; no retry will shrink
		// one, so the refusal is permanent (as too big a message).
		return smtpd.Refuse("header_too_large", smtputil.HeaderTooLarge(dkim.MaxHeaderBytes))
	}
	if err != nil {
		return r.contentFailed(msg, "SPF/DKIM/DMARC", err)
	}
	if v.Reject != nil {
		return smtpd.Refuse(v.Check, v.Reject)
	}
	msg.AddHeader += v.Header
	p.strip = v.Forged > 0
	return nil
}

// milterRcpt passes an accepted recipient to the transaction's milters:
// the first begins their conversations (connect, HELO, MAIL, RCPT), as
// Postfix's smtpd talks to its milters during the dialog, so that their
// round trips are over before the client's data is; each later one
// follows. They see the message itself only in the milter stage, after
// the cheaper stages passed (a banned attachment still never reaches a
// scanner: its conversations end with ABORT), and nothing at all if the
// transaction ends without DATA (txn.End).
func (r *Role) milterRcpt(st *smtpd.State, rcpt string) {
	c := r.content.Load()
	if c == nil {
		return
	}
	t := txnOf(st)
	if t.early != nil {
		t.early.run.AddRcpt(rcpt)
		return
	}
	ch := c.Chains[t.contentPolicy()]
	if ch == nil {
		return
	}
	env := milterEnvelope(c, st, "")
	env.Rcpts = []string{rcpt}
	ctx, cancel := context.WithCancel(context.Background())
	t.early = &earlyMilters{run: ch.BeginTransaction(ctx, env), cancel: cancel, begun: time.Now(), chain: ch}
}

// DataStart implements smtpd.DataStarter: the milters begun at RCPT get
// the queue ID and DATA while the client sends the message.
func (r *Role) DataStart(st *smtpd.State, queueID string) (end func()) {
	t := txnOf(st)
	e := t.early
	if e == nil {
		return func() {}
	}
	e.run.EndEnvelope(queueID)
	return e.close
}

// End implements smtpd's transaction end: milters begun for a
// transaction that ended without DATA get ABORT.
func (t *txn) End() {
	if t.early != nil {
		t.early.close()
	}
}

// milterEnvelope is what the milters learn of the transaction.
func milterEnvelope(c *Content, st *smtpd.State, queueID string) *milter.Envelope {
	env := &milter.Envelope{
		// {daemon_name} is our host name, as Postfix's default
		// milter_daemon_name: rspamd uses it as its authserv-id.
		QueueID: queueID, Hostname: c.Hostname, DaemonName: c.Hostname,
		ClientAddr: st.RemoteIP, ClientPort: int(st.Remote.Port()), LocalAddr: st.Local,
		Helo: st.Helo, AuthUser: st.AuthUser, From: st.From, Rcpts: st.Rcpts,
	}
	cn := clientName(st)
	env.ClientName, env.ClientPTR = cn.Verified, cn.PTR
	if st.TLS != nil {
		// Postfix's spelling of the macros: TLSv1.3 and the IANA name.
		env.TLSVersion = strings.Replace(tls.VersionName(st.TLS.Version), " ", "v", 1)
		env.TLSCipher = tls.CipherSuiteName(st.TLS.CipherSuite)
	}
	return env
}

// milterBegin takes over the conversations begun at RCPT (milterRcpt),
// bounded from now on by the content stage's time-out; or, without them
// (the chain changed by a reload, or a client that took longer than
// earlyMaxWait from its first recipient to the end of its data), begins
// them now, beside SPF/DKIM/DMARC. Data closes them.
func (r *Role) milterBegin(p *pass) {
	ch := p.c.Chains[p.policy]
	if ch == nil {
		return
	}
	if e := p.t.early; e != nil {
		p.t.early = nil
		if e.chain == ch && time.Since(e.begun) < earlyMaxWait {
			// Already done by DataStart unless the role runs without
			// smtpd (tests).
			e.run.EndEnvelope(p.msg.QueueID)
			context.AfterFunc(p.ctx, e.cancel)
			p.milters = e.run
			return
		}
		e.close()
	}
	p.milters = ch.Begin(p.ctx, milterEnvelope(p.c, p.st, p.msg.QueueID))
}

// milterStage: the message, one milter after another; their verdict and
// changes.
func (r *Role) milterStage(p *pass, check string) error {
	if p.milters == nil {
		return nil
	}
	c, st, msg, policy := p.c, p.st, p.msg, p.policy
	res, err := p.milters.Check(func() (io.Reader, error) { return msg.Open() })
	if err != nil {
		return r.contentFailed(msg, "content scanning", err)
	}
	if res.Action != milter.Accept {
		return smtpd.Refuse(check, milterReply(res), "milter", res.Milter, "action", res.Action.String(), "policy", policy)
	}
	if del := res.RecipientsDeleted(); len(del) > 0 {
		// The catalogue cleans the milter's addresses: they must
		// neither break the reply into lines nor overrun 512 octets.
		reply := smtputil.RecipientDeletionRefused(strings.Join(del, ", "))
		if c.RecipientDeletion == ActionTempfail {
			reply = smtputil.RecipientDeletionDeferred(strings.Join(del, ", "))
		}
		// A warning: a milter asked to delete recipients; the whole
		// message is refused rather than losing them.
		ref := smtpd.Refuse("recipient_deletion", reply, "deleted", strings.Join(del, ","), "policy", policy)
		ref.Level = slog.LevelWarn
		return ref
	}
	for _, a := range res.RecipientsAdded() {
		addr, err := smtputil.ParseMailbox(strings.Trim(a, "<>"), st.SMTPUTF8)
		if err != nil {
			return r.contentFailed(msg, "a milter's added recipient", fmt.Errorf("%q: %w", a, err))
		}
		// The MX relays for nobody, its milters included: an added
		// recipient passes the same domain and routing checks as RCPT.
		if _, refusal := r.notOurs(addr); refusal != nil {
			return r.contentFailed(msg, "a milter's added recipient", fmt.Errorf("%s is not in a domain this server accepts mail for; not relaying for a content filter", addr))
		}
		st.Log.Info("milter added a recipient", "queue_id", msg.QueueID, "rcpt", addr.String())
		msg.AddRcpts = append(msg.AddRcpts, addr.String())
	}
	if from, ok := res.NewFrom(); ok {
		from = strings.Trim(from, "<>")
		if from == "" {
			// The null sender cannot be set through NewFrom; keep the
			// sender rather than guess.
			st.Log.Warn("milter changed the sender to <>; kept the original", "queue_id", msg.QueueID)
		} else if a, err := smtputil.ParseMailbox(from, st.SMTPUTF8); err != nil {
			return r.contentFailed(msg, "a milter's new sender", fmt.Errorf("%q: %w", from, err))
		} else {
			msg.NewFrom = a.String()
		}
	}
	if res.ChangesContent() {
		p.rewrites = append(p.rewrites, res.Apply)
		p.bodyReplaced = p.bodyReplaced || res.ReplacesBody()
		// A milter may add a field claiming our authserv-id too.
		p.strip = p.strip || c.Auth != nil
	}
	return nil
}

// forgedStage removes the fields that claim to be ours: forged
// Authentication-Results (after the milters, whose header positions
// refer to the message they saw, forged fields included) and the
// sender's X-Securerelay-Attachment fields.
func (r *Role) forgedStage(p *pass, _ string) error {
	if p.strip {
		id := p.c.AuthServID
		p.rewrites = append(p.rewrites, func(w io.Writer, r io.Reader) error {
			_, err := authres.StripForged(w, r, id)
			return err
		})
	}
	if p.forged {
		p.rewrites = append(p.rewrites, stripAttachmentFields)
	}
	return nil
}

func stripAttachmentFields(w io.Writer, r io.Reader) error {
	_, err := attach.StripForged(w, r)
	return err
}

// attachments runs the attachment policy of the transaction on the
// spooled message: a refusal is a reply naming the file, an accepted
// finding a header for the recipient's admin. forged: the message came
// with X-Securerelay-Attachment fields of its own, to be removed.
func (r *Role) attachments(ctx context.Context, st *smtpd.State, msg *smtpd.Message, a *Attachments, name string) (forged bool, err error) {
	if name == "" {
		name = "default"
	}
	pol := a.Policies[name]
	if pol == nil {
		pol = a.Policies["default"]
	}
	src, err := msg.Open()
	if err != nil {
		return false, r.contentFailed(msg, "reading the spooled message", err)
	}
	v, err := attach.Inspect(ctx, src, a.Limits, pol)
	closeReader(src)
	if err != nil {
		return false, r.contentFailed(msg, "attachment check", err)
	}
	f := v.Finding
	switch v.Action {
	case attach.Pass:
		return v.Forged > 0, nil
	case attach.Accept:
		log := r.log
		if st != nil && st.Log != nil {
			log = st.Log
		}
		for i, f := range v.Findings {
			if i == maxAttachmentHeaders {
				break
			}
			msg.AddHeader += attachmentHeader(f, pol.Name)
			if log != nil {
				log.Info("inbound check accepted", "check", "attachment", "class", string(f.Class), "file", f.File, "path", f.Path,
					"action", f.Action, "policy", pol.Name, "reason", f.Reason, "queue_id", msg.QueueID)
			}
		}
		return v.Forged > 0, nil
	}
	reply := smtputil.AttachmentRefused(f.Where(), f.Reason)
	if v.Action == attach.Tempfail {
		reply = smtputil.AttachmentTempFail(f.Where(), f.Reason)
	}
	return false, smtpd.Refuse("attachment", reply, "class", string(f.Class), "file", f.File, "path", f.Path, "action", v.Action,
		"policy", pol.Name, "reason", f.Reason)
}

// maxAttachmentHeaders bounds the header lines one message gets.
const maxAttachmentHeaders = 8

// attachmentHeader records an accepted finding for the recipient's
// admin (and its filters): one field per finding, ASCII only, no
// line break a name could smuggle in.
func attachmentHeader(f attach.Finding, policy string) string {
	v := fmt.Sprintf("%s; file=%s; reason=%s; policy=%s", f.Class, f.Where(), strconv.QuoteToASCII(f.Reason), policy)
	if len(v) > 900 {
		v = v[:900]
	}
	return "X-Securerelay-Attachment: " + strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, v) + "\r\n"
}

// chain composes streaming rewrites with pipes, so that no stage holds
// the message in memory.
func chain(fs []func(io.Writer, io.Reader) error) func(io.Writer, io.Reader) error {
	if len(fs) == 1 {
		return fs[0]
	}
	return func(w io.Writer, r io.Reader) error {
		pr, pw := io.Pipe()
		done := make(chan error, 1)
		go func() {
			err := fs[0](pw, r)
			pw.CloseWithError(err)
			done <- err
		}()
		err := chain(fs[1:])(w, pr)
		pr.CloseWithError(err)
		if err2 := <-done; err == nil {
			err = err2
		}
		return err
	}
}

func closeReader(r io.Reader) {
	if c, ok := r.(io.Closer); ok {
		c.Close()
	}
}

// contentFailed is our own failure during the stage: never a silent accept.
func (r *Role) contentFailed(msg *smtpd.Message, what string, err error) error {
	if r.log != nil {
		r.log.Error("content stage failed", "queue_id", msg.QueueID, "stage", what, "error", err)
	}
	return smtpd.Refuse("local_error", smtputil.ContentCheckFailed(what))
}

// milterReply is the milter's own reply (code, enhanced code and text), as
// Postfix passes it on, checked by the catalogue.
func milterReply(res *milter.Result) *smtp.SMTPError {
	return smtputil.MilterReply(res.Code, res.Enhanced, res.Text, res.Milter)
}
