// Package smtpd is the SMTP listener plumbing shared by both roles: the
// go-smtp server, STARTTLS, limits and time-outs, AUTH mechanics, the
// Received: header and the spooling of DATA into the queue. What a role
// accepts or refuses is decided by a Role (package inbound for the MX role,
// package outbound for submission/smarthost); this package only enforces the
// mechanics and the acknowledgement rule: 250 only after queue.Commit.
//
// go-smtp turns any error that is not a bare *smtp.SMTPError into a 451
// carrying internal text (MAIL/RCPT) or, worse, a permanent 554 (DATA), so
// every error returned to go-smtp from here is built with smtpError or one of
// the smtputil reply values, never passed through.
package smtpd

import (
	"crypto/tls"
	"io"
	"log/slog"
	"net/netip"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/queue"
)

// State is what a role may see of a session. Roles must treat it as read
// only, except Data which a Connect hook may set for its own use.
type State struct {
	ConnID   string
	Listener string
	RemoteIP netip.Addr
	// Remote and Local are the connection's two ends (milter macros).
	Remote, Local netip.AddrPort
	// Helo is the EHLO/HELO argument as sent.
	Helo string
	// TLS is non-nil once STARTTLS succeeded.
	TLS *tls.ConnectionState
	// AuthUser is the SMTP AUTH identity, "" when not authenticated.
	AuthUser string
	// From and Rcpts are the current transaction's envelope, as the role
	// canonicalised them.
	From  string
	Rcpts []string
	// RequireTLS: the client sent MAIL FROM with REQUIRETLS (RFC 8689):
	// the message may only leave over verified TLS.
	RequireTLS bool
	// Body, Ret and EnvID are the transaction's BODY= (RFC 6152), RET=
	// and ENVID= (RFC 3461, decoded); "" when not given.
	Body, Ret, EnvID string
	// RcptDSN holds NOTIFY and ORCPT of each recipient in Rcpts, by index.
	RcptDSN []queue.RcptDSN
	Log     *slog.Logger
	// Screen is the screening verdict a role's Connect may set for the
	// sessions count (Stats.Sessions): a short fixed word ("allow",
	// "listed"…), never an address; "" counts as "pass", a refusal
	// under its check.
	Screen string
	// Data is free for the role's per-session use (screening verdicts…).
	Data any
	// Txn is free for the role's per-transaction use (an SPF verdict, the
	// content policy of the first recipient); cleared when a transaction
	// ends (after DATA, on RSET, a new MAIL, STARTTLS, the connection's
	// end), after its End method if it is a TxnEnder.
	Txn any
	// Tarpit, set by Connect, delays every reply to this client by this
	// much: a suspicious client is slowed down, costing us only a sleeping
	// goroutine.
	Tarpit time.Duration
	// SMTPUTF8: the client sent MAIL FROM with SMTPUTF8 (RFC 6531): the
	// transaction's addresses and the message's header may be UTF-8.
	// Set before Role.Mail runs, so that Mail and Rcpt parse with it.
	SMTPUTF8 bool
}

// Message gives a Data hook the spooled message before it is committed.
type Message struct {
	QueueID string
	Size    int64
	Open    func() (io.Reader, error)

	// A Data hook may set these to change the message before it is
	// committed: NewFrom replaces the envelope sender, AddHeader (one or
	// more complete header fields, CRLF-terminated) goes on top. Changes
	// that leave the body alone are recorded in the spool file itself
	// (queue.Writer.Amend: no copy, same queue ID); a Rewrite that may
	// change the body makes smtpd spool the message anew, under a new
	// queue ID, and discard the first copy.
	NewFrom   string
	AddHeader string
	// Rewrite, if set, produces the message to queue from the spooled
	// one (a content filter's header and body changes), streaming; it runs
	// after AddHeader is written.
	Rewrite func(dst io.Writer, src io.Reader) error
	// RewriteHeaderOnly promises that Rewrite changes the header section
	// only: it copies the empty line that ends the header and everything
	// after it as it is (the milters' header changes, the stripping of
	// forged fields). smtpd may then give Rewrite the stored header
	// section alone, up to and including that line, and keep the body
	// where it is. Unset (the safe default), Rewrite gets the whole
	// message.
	RewriteHeaderOnly bool
	// AddRcpts are envelope recipients to add (a milter's ADDRCPT).
	AddRcpts []string
}

// TxnEnder is a State.Txn that holds something to release when the
// transaction ends, however it ends (the inbound role's milter
// conversations, begun at the first accepted recipient).
type TxnEnder interface{ End() }

// DataStarter is implemented by a role that has work to hand on as soon
// as DATA (or the first BDAT) is accepted, before the client sends a
// byte of the message: the envelope is final then, and the queue ID
// known (the inbound role's milters, their conversations begun at the
// first recipient, get the queue ID and DATA, so that their round trips
// overlap the client's sending and our spooling instead of adding to the
// end-of-data wait). end runs once the DATA command is over, whatever
// its outcome (Role.Data included), so that nothing begun outlives a
// refused or broken transfer.
type DataStarter interface {
	DataStart(st *State, queueID string) (end func())
}

// Role decides what a listener accepts. A refusal is returned as a
// *Refusal naming the check (smtpd logs and counts it, the role does
// neither); a bare *smtp.SMTPError is sent as well, logged as check
// "unnamed"; anything else is logged and turned into a 451 4.3.0.
type Role interface {
	// Origin is recorded in the queue envelope (queue.OriginInbound or
	// queue.OriginOutbound); it decides, for one, whether DSNs are sent.
	Origin() string
	// Connect runs when the client's EHLO/HELO arrives, before anything
	// else; it is the screening seam.
	Connect(st *State) error
	// AuthEnabled tells whether AUTH is offered on this listener at all.
	AuthEnabled() bool
	// Authenticate checks credentials; return smtp.ErrAuthFailed (or a
	// 454 for a temporary problem).
	Authenticate(st *State, username, password string) error
	// Mail checks the sender and returns its canonical form ("" for <>).
	Mail(st *State, from string, opts *smtp.MailOptions) (string, error)
	// Rcpt checks one recipient and returns its canonical form.
	Rcpt(st *State, to string, opts *smtp.RcptOptions) (string, error)
	// Data runs after the message is spooled, before it is committed: the
	// content-scanning seam. A refusal discards the spooled copy.
	Data(st *State, msg *Message) error
}
