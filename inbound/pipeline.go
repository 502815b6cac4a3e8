package inbound

import (
	"context"
	"io"

	"github.com/emersion/go-smtp"

	"securerelay/milter"
	"securerelay/smtpd"
	"securerelay/smtputil"
)

// The inbound pipeline: every stage the MX runs, per SMTP step, in the
// order it runs. "Where does check X run, what runs before it?" is
// answered here; the stages' code lives in screen.go, role.go, checks.go,
// tlsfrom.go, verify.go and content.go.
//
// A stage's name is its check: the check= key smtpd logs a refusal under,
// the name it counts it under, and, where an admin sets the action, the
// key in the configuration (inbound.checks.sender_fqdn, …). also lists
// the other names a stage may refuse under. pipeline_internal_test.go
// holds the table and the code together: every check a refusal in this
// package names is in a row, and no name is in two.
//
// Before each step smtpd runs its own checks (connection limits,
// pregreet, require_tls, the spool's free space, and at DATA the line
// endings, sizes, hops and loops); docs/flow.md, "Inbound", walks both.

// At EHLO (Role.Connect): the screening, then the EHLO name.
var ehloStages = []stage{
	{name: "deny", run: (*Role).denyStage},
	// The allow list and the pass cache: the rest of the screening is
	// skipped (helo_fqdn still runs).
	{name: "allow", run: (*Role).allowStage},
	// Scoring; listed below the threshold: a tarpit. A client that
	// passes is marked for the deep protocol test, or cached as passed.
	{name: "dnsbl", run: (*Role).dnsblStage},
	{name: "helo_fqdn", run: (*Role).heloStage},
}

// At MAIL FROM (Role.Mail). <> skips the address stages; of the later
// ones, only plaintext_partner applies to it (by the EHLO name).
var mailStages = []stage{
	{name: "max_mail_per_session", run: (*Role).mailCountStage},
	{name: "deep_protocol_test", run: (*Role).deepStage},
	{name: "address_syntax", run: (*Role).senderSyntaxStage},
	// Off: user@host is accepted as it is, and no later stage runs.
	{name: "sender_fqdn", run: (*Role).senderFQDNStage},
	{name: "plaintext_partner", run: (*Role).partnerStage},
	{name: "sender_domain", run: (*Role).senderDomainStage},
}

// At RCPT TO (Role.Rcpt). go-smtp refuses recipients over
// max_recipients before the role sees them. A recipient that passes
// them all goes on to the milters of the transaction's content policy
// (milterRcpt: the first begins their conversations).
var rcptStages = []stage{
	// The bare <Postmaster>: skips the address stages, not the split
	// nor SPF.
	{name: "postmaster", run: (*Role).postmasterStage},
	{name: "address_syntax", run: (*Role).rcptSyntaxStage},
	{name: "recipient_fqdn", run: (*Role).recipientFQDNStage},
	{name: "relay", also: []string{"routing_trick"}, run: (*Role).relayStage},
	{name: "unknown_recipient", also: []string{"verify"}, run: (*Role).recipientStage},
	// One attachment and one content policy per transaction (DATA has
	// one reply for all recipients).
	{name: "attachment_policy", run: (*Role).attachmentSplitStage},
	{name: "content_policy", run: (*Role).contentSplitStage},
	// Once per transaction, at its first accepted recipient.
	{name: "spf", run: (*Role).spfStage},
}

// After DATA (Role.Data), on the spooled copy, bounded by one time-out.
var dataStages = []stage{
	// First: no DNS question, no scanner.
	{name: "attachment", run: (*Role).attachmentStage},
	{name: "dmarc", also: []string{"multiple_from", "author_domains", "header_too_large"}, run: (*Role).authStage},
	// The milters' envelope stages began in the dialog (milterRcpt at
	// each accepted RCPT, Role.DataStart at DATA); begin takes them over,
	// or starts them beside SPF/DKIM/DMARC when they could not begin
	// then. They see the message only if it passes.
	{name: "milter", also: []string{"recipient_deletion"}, begin: (*Role).milterBegin, run: (*Role).milterStage},
	// Last, so that only our fields reach the recipient.
	{name: "forged_fields", run: (*Role).forgedStage},
}

// stage is one row of the pipeline.
type stage struct {
	name string
	also []string
	// run gets the row's name as check, to refuse under.
	run func(r *Role, p *pass, check string) error
	// begin, if set, starts the stage just before the row above it runs.
	begin func(r *Role, p *pass)
}

// pass is what the stages of one step share.
type pass struct {
	st *smtpd.State
	// done: the command is accepted; the later stages do not run.
	done bool

	// MAIL and RCPT.
	raw     string           // the address as the client wrote it
	addr    smtputil.Address // parsed by address_syntax
	notFQDN bool             // address_syntax found no domain or no dot in it
	out     string           // the address the command is accepted with
	bare    bool             // RCPT: the bare <Postmaster>

	// EHLO: the allow list or the pass cache let the client through.
	screened bool

	// DATA.
	ctx      context.Context
	msg      *smtpd.Message
	c        *Content
	t        *txn
	policy   string // the transaction's content policy
	milters  *milter.Run
	forged   bool // X-Securerelay-Attachment fields of the sender's
	strip    bool // forged Authentication-Results to remove
	rewrites []func(io.Writer, io.Reader) error
	// bodyReplaced: a milter replaced the body, so the rewrites are not
	// header-only (smtpd then spools the message anew).
	bodyReplaced bool
}

// run runs the stages in order up to the first refusal.
func (r *Role) run(stages []stage, p *pass) error {
	for i, s := range stages {
		if i+1 < len(stages) && stages[i+1].begin != nil {
			stages[i+1].begin(r, p)
		}
		if err := s.run(r, p, s.name); err != nil {
			return err
		}
		if p.done {
			return nil
		}
	}
	return nil
}

// Connect implements smtpd.Role: the EHLO stages.
func (r *Role) Connect(st *smtpd.State) error {
	if err := r.run(ehloStages, &pass{st: st}); err != nil {
		return err
	}
	r.beginClientName(st)
	return nil
}

// Mail implements smtpd.Role: the MAIL stages. The null sender is always
// valid (RFC 5321 §4.5.5).
func (r *Role) Mail(st *smtpd.State, from string, _ *smtp.MailOptions) (string, error) {
	p := &pass{st: st, raw: from}
	if err := r.run(mailStages, p); err != nil {
		return "", err
	}
	return p.out, nil
}

// Rcpt implements smtpd.Role: the RCPT stages.
func (r *Role) Rcpt(st *smtpd.State, to string, _ *smtp.RcptOptions) (string, error) {
	p := &pass{st: st, raw: to}
	if err := r.run(rcptStages, p); err != nil {
		return "", err
	}
	r.milterRcpt(st, p.out)
	return p.out, nil
}

// Data implements smtpd.Role: the content stages.
func (r *Role) Data(st *smtpd.State, msg *smtpd.Message) error {
	c := r.content.Load()
	if c == nil {
		return nil
	}
	t := txnOf(st)
	p := &pass{st: st, msg: msg, c: c, t: t, policy: t.contentPolicy()}
	ctx, cancel := context.WithTimeout(context.Background(), c.timeout())
	defer cancel()
	p.ctx = ctx
	defer func() {
		if p.milters != nil {
			p.milters.Close()
		}
	}()
	if err := r.run(dataStages, p); err != nil {
		return err
	}
	if len(p.rewrites) > 0 {
		msg.Rewrite, msg.RewriteHeaderOnly = chain(p.rewrites), !p.bodyReplaced
	}
	return nil
}
