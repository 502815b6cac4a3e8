package smtputil

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// SMTP replies the listeners send: every one of them, success or
// refusal, is built here and nowhere else (a test, TestRepliesOnlyHere,
// fails on a reply built in another package). Every reply carries an RFC
// 3463 enhanced status code (except the greeting, the HELO/EHLO reply and
// 354, which RFC 2034 section 3 leaves without) and a text that tells the
// admin of the sending system what to fix (DESIGN.md principle 4). The
// replies go-smtp makes itself (sequence and syntax errors, 250 after MAIL
// and RCPT, QUIT, time-outs…) are worded here too: Builtin, which smtpd
// hands go-smtp (third_party patch 8), maps each situation to a function
// below. A milter's own reply is passed on as it came, through
// MilterReply, which checks it.
//
// go-smtp only uses Code/EnhancedCode/Message when a session method
// returns exactly a *smtp.SMTPError (a type assertion, not errors.As), so
// these functions return that type and callers must return it unwrapped.
// Each call returns a new value, so a caller may adjust it freely. Reply
// builds them; only this file may call it. Every function has its row in
// the tables below (TestCatalogueTable checks the codes against them).
//
// go-smtp does not close the connection after a 421 returned by a session
// method; whoever returns TooManyErrors or ShuttingDown must also close
// the connection (RFC 5321 §3.8: 421 means the server closes).
//
// Reply codes follow RFC 5321 §4.2.3 and the per-command lists of §4.3.2:
// for RCPT those are 550/551/552/553/450/451/452/503/455/555 (plus 421,
// 500, 501 for any command). The relay refusal is the exception: it is
// 554 5.7.1, as Postfix has sent for decades (relay_domains_reject_code),
// because admins, fail2ban filters and monitoring match on exactly that;
// every client treats any 5xx at RCPT as a permanent refusal.
//
// The protocol itself (go-smtp's situations through Builtin, and smtpd's
// own). Success texts are Postfix's plain "Ok"; a "-" is no enhanced code.
//
//	function                  reply      why
//	Greeting                  220 -      RFC 5321 §4.3.1 "220 <domain>"; RFC 2034 §3: no enhanced code before EHLO
//	HeloReply                 250 -      RFC 5321 §4.1.1.1 the reply names the server; no enhanced code (RFC 2034 §3)
//	EhloReply                 250 -      first line of the EHLO reply; the extensions follow
//	MailOK                    250 2.1.0  RFC 3463 X.1.0 other address status: the sender is accepted
//	RcptOK                    250 2.1.5  RFC 3463 X.1.5 destination address valid
//	DataStart                 354 -      RFC 5321 §4.3.2 intermediate reply, Postfix's wording
//	Queued                    250 2.0.0  after DATA/BDAT LAST, once the message is on disk; names the queue ID as Postfix does
//	Accepted                  250 2.0.0  go-smtp's reply when Data returns nil (smtpd never does)
//	ChunkOK                   250 2.0.0  a BDAT chunk that is not the last (RFC 3030 §2)
//	NoopOK                    250 2.0.0
//	ResetOK                   250 2.0.0
//	VrfyReply                 252 2.0.0  RFC 5321 §3.5.3: cannot verify, the recipient is judged at RCPT
//	HelpReply                 214 2.0.0  RFC 5321 §4.1.1.8
//	Closing                   221 2.0.0  RFC 5321 §4.1.1.10 "221 <domain>"
//	StartTLSReady             220 2.0.0  RFC 3207 §4
//	AuthOK                    235 2.7.0  RFC 4954 §6
//	AuthCancelled             501 5.7.0  RFC 4954 §4: "*" cancels with 501
//	AuthBadBase64             501 5.5.2  RFC 4954 §6 "Cannot Base64-decode Client responses"
//	AuthBadResponse           501 5.5.2  as AuthBadBase64: the response is not what the mechanism defines
//	AuthTwice                 503 5.5.1  RFC 4954 §4: AUTH once per session; X.5.1 out of sequence
//	AuthNotOffered            502 5.5.1  RFC 5321 §4.2.4 command not implemented (on this listener)
//	AuthUnknownMechanism      504 5.5.4  RFC 4954 §6 "Unrecognized authentication type"
//	UnknownCommand            500 5.5.2  RFC 5321 §4.2.4 command unrecognized; X.5.2 syntax error
//	NotImplemented            502 5.5.1  RFC 5321 §4.2.4 command not implemented; X.5.1 invalid command
//	WrongHello                500 5.5.2  LHLO is not an SMTP command (RFC 2033)
//	NeedHelo                  503 5.5.1  RFC 5321 §4.1.4: EHLO first; X.5.1 out of sequence
//	NeedMail                  503 5.5.1  RFC 5321 §3.3 bad sequence: RCPT/DATA/BDAT before MAIL
//	NeedRcpt                  503 5.5.1  RFC 5321 §3.3: DATA/BDAT without an accepted RCPT
//	NestedMail                503 5.5.1  RFC 5321 §4.1.4: MAIL inside a transaction (Postfix, Exim: 503)
//	InTransfer                503 5.5.1  RFC 3030 §2: only BDAT or RSET during a BDAT transfer
//	DataForBinary             503 5.5.1  RFC 3030 §3: BODY=BINARYMIME only with BDAT
//	TLSActive                 503 5.5.1  STARTTLS inside TLS: out of sequence
//	TLSNotOffered             502 5.5.1  RFC 5321 §4.2.4 not implemented (no certificate on this listener)
//	CommandSyntax             501 5.5.4  RFC 5321 §4.2.4 syntax error in parameters; X.5.4 invalid command arguments
//	ParamSyntax               501 5.5.4  a malformed MAIL/RCPT parameter value
//	ParamUnsupported          555 5.5.4  RFC 5321 §4.1.1.11: MAIL/RCPT parameter not recognized or not implemented
//	CommandTooLong            500 5.5.2  RFC 5321 §4.5.3.1.9 "500 Line too long" (§4.5.3.1.4: 512 octets a command line)
//	CommandTimeout            421 4.4.2  RFC 5321 §4.5.3.2; X.4.2 bad connection
//	ConnectionError           421 4.4.0  X.4.0 other network problem
//	InternalError             421 4.3.0  X.3.0 other mail system problem: a bug of ours; the client retries
//	LocalError                451 4.3.0  X.3.0: a command could not be completed here; the client retries
//	DataTimeout               421 4.4.2  RFC 5321 §4.5.3.2.6 DATA termination timeout; X.4.2 bad connection
//	ConnectionLost            421 4.4.2  the client went away during DATA (nobody reads it)
//	TransferAborted           451 4.3.0  RSET during BDAT: nothing was stored
//	RequireTLSInClear         530 5.7.10 REQUIRETLS is offered only inside TLS (RFC 8689 §3); X.7.10 encryption needed
//	ProtocolViolation         554 5.5.1  postscreen-like protocol tests (smtpd writes it itself, then closes); X.5.1 invalid command
//	TooManyHops               554 5.4.6  RFC 5321 §6.3; X.4.6 routing loop detected
//	MailLoop                  554 5.4.6  our own Received: for the same recipient: a loop
//	AutoReplyToProgram        550 5.7.1  refused by policy: an auto-reply to an address only programs send from
//	AutoReplyLoop             550 5.7.1  refused by policy: max_auto_replies
//	Builtin                   -   -      the replies go-smtp makes itself, mapped to the functions above
//
// Replies of the roles (inbound, outbound, authres, milter).
//
//	function                  reply      why
//	AddressReply              553 5.1.7  ParseAddress said not fully qualified (sender)
//	AddressReply              553 5.1.3  not fully qualified (recipient)
//	AddressReply              553 5.6.7  non-ASCII address (RFC 6531 X.6.7)
//	SenderControlChars        553 5.1.7  X.1.7 bad sender's mailbox address syntax
//	SenderDomainTempFail      450 4.1.8  as Postfix's unknown_address_tempfail_action: the domain check could not be made
//	RecipientVerifyTempFail   450 4.1.1  the downstream system cannot say now whether the mailbox exists
//	Deferred                  450 4.X.Y  a check's tempfail action: the permanent refusal's temporary twin
//	HeloNotFQDN               504 5.5.2  RFC 5321 §4.3.2 EHLO/HELO: 504; as Postfix's reject_non_fqdn_helo_hostname
//	ClientDenied              554 5.7.1  X.7.1 not authorized: the deny list (as Postfix's access 554)
//	ClientListed              550 5.7.1  DNSBL score reached, as postscreen's 550 5.7.1
//	FirstContact              450 4.7.1  postscreen's deep protocol tests: come back
//	PartnerNeedsTLS           530 5.7.0  RFC 3207 §4 "Must issue a STARTTLS command first"
//	PartnerNeedsTLSDefer      450 4.7.0  the same, tempfail action
//	ContentPolicySplit        452 4.5.3  RFC 5321 §4.5.3.1.10: too many recipients (for this transaction); the rest comes in another
//	RecipientDeletionRefused  550 5.7.1  a milter would drop recipients: the message is refused for all
//	RecipientDeletionDeferred 451 4.7.1  the same, recipient_deletion: tempfail
//	ContentCheckFailed        451 4.3.0  X.3.0: our own failure while checking the content
//	MilterReply               4XX/5XX    the milter's own code, enhanced code and text (checked; else ContentRejected/ContentDeferred)
//	ContentRejected           550 5.7.1  a milter rejected without its own reply (Postfix's milter default)
//	ContentDeferred           451 4.7.1  a milter deferred without its own reply
//	ScannerFailed             554 5.7.1  a milter failed and its on_error says reject
//	ScannerUnavailable        451 4.7.1  a milter failed (on_error tempfail, the default), as Postfix's milter_default_action
//	ScannerHeaderTooLarge     552 5.3.4  as HeaderTooLarge: a size limit of the content scanners
//	SPFFail                   550 5.7.23 RFC 7372 §3.2 SPF validation failed
//	SPFTempFail               451 4.7.24 RFC 7372 §3.2 SPF validation error (DNS)
//	DMARCReject               550 5.7.26 RFC 7372 §3.4 multiple authentication checks failed (DMARC, RFC 7489 §6.6.1)
//	DMARCTempFail             451 4.7.0  DMARC with p=reject failed, but a lookup failed temporarily
//	DMARCLookupTempFail       451 4.7.0  the DMARC policy could not be looked up
//	RelayNotTrusted           554 5.7.1  as RelayDenied: a client outside trusted_networks, AUTH off
//	SenderNotOwned            553 5.7.1  RFC 5321 §4.2.3 553 mailbox name not allowed; X.7.1 not authorized (sender binding)
//	NullSenderRefused         550 5.7.1  X.7.1 policy: MAIL FROM:<> only for reports
//	FromUnusable              553 5.7.1  no usable From: to sign with
//	FromNotOurs               553 5.7.1  a From: domain that is not ours cannot be signed
//	HeaderSenderUnparsable    553 5.7.1  a sender header field that cannot be checked
//	HeaderSenderNotOwned      553 5.7.1  sender binding of the header fields
//
// Refusals by the checks and limits.
//
//	function                  reply      why
//	RelayDenied               554 5.7.1  what Postfix sends (relay_domains_reject_code) and what admins grep for; X.7.1 delivery not authorized
//	RoutingTrickReply         554 5.7.1  same: anti-relay policy
//	BadAddressSyntax          501 5.1.3  RFC 5321 §4.2.3 501 syntax error in parameters; RFC 3463 X.1.3 bad destination address syntax
//	BadSenderSyntax           501 5.1.7  X.1.7 bad sender's mailbox address syntax
//	NotFQDNRecipient          553 5.1.3  RFC 5321 §4.2.3 553 mailbox name not allowed (504 is not a MAIL/RCPT reply in §4.3.2)
//	NotFQDNSender             553 5.1.7
//	NonASCIIAddress           553 5.6.7  X.6.7 non-ASCII addresses not permitted (RFC 6531 §3.5: a UTF-8 address without the SMTPUTF8 parameter)
//	DownstreamNoSMTPUTF8      553 5.6.7  X.6.7 for that recipient: the system behind us lacks SMTPUTF8 and the local part has no ASCII form (RFC 6531 §3.2)
//	SenderDomainNotFound      550 5.1.8  X.1.8 bad sender's system address (NXDOMAIN, no A/AAAA/MX)
//	SenderNullMX              550 5.7.27 RFC 7505 §4.2 sender address has null MX
//	RecipientUnknown          550 5.1.1  X.1.1 bad destination mailbox address
//	BareLineEnding            550 5.6.0  RFC 5321 §2.3.8; X.6.0 other media error (the registry has no code for bare CR/LF)
//	MessageTooBig             552 5.3.4  RFC 1870 §6; X.3.4 message too big for system
//	HeaderTooLarge            552 5.3.4  as MessageTooBig: a size limit of this system that no retry gets under
//	LineTooLong               500 5.5.2  RFC 5321 §4.5.3.1.9 names "500 Line too long" for the text-line limit of §4.5.3.1.6; X.5.2 syntax error, the class 500 belongs to (permanent, unlike the 451 a read error gave)
//	TooManyRecipients         452 4.5.3  RFC 5321 §4.5.3.1.10; X.5.3 too many recipients
//	QueueFailed               451 4.3.0  X.3.0 mail system error: nothing was stored, the client retries
//	InsufficientStorage       452 4.3.1  RFC 5321 §4.2.2 452; RFC 3463 X.3.1 mail system full: refused at MAIL, before any data
//	TLSRequired               530 5.7.0  RFC 3207 §4 "Must issue a STARTTLS command first"
//	AuthRequired              530 5.7.0  RFC 4954 §6 authentication required
//	AuthFailed                535 5.7.8  RFC 4954 §6 authentication credentials invalid
//	AuthTempFail              454 4.7.0  RFC 4954 §6 temporary authentication failure
//	EncryptionRequiredForAuth 538 5.7.11 RFC 4954 §6 encryption required for the mechanism
//	RecipientKeyMissing       550 5.7.1  X.7.1 delivery not authorized: the organisation's policy forbids sending this recipient's mail unencrypted
//	RecipientKeyTempFail      450 4.7.1  the key lookup (WKD, DNS) failed for now; the client retries
//	TooManyErrors             421 4.7.0  RFC 5321 §3.8; X.7.0 security/policy status
//	TooManyConnections        421 4.7.0  RFC 5321 §3.1: 421 may answer the connection; X.7.0 policy
//	TooManyConnectionsFromClient 421 4.7.0  per-client limits at connect, as Postfix's anvil
//	ConnectionRateExceeded    421 4.7.0
//	TooManyJunkCommands       421 4.7.0  as TooManyErrors: the session ends
//	MessageRateExceeded       450 4.7.1  RFC 5321 §4.3.2 MAIL/RCPT 450: temporary; X.7.1 not authorized (now), as Postfix's rate limits
//	RecipientRateExceeded     450 4.7.1
//	AuthLockedOut             454 4.7.0  RFC 4954 §6 temporary authentication failure: the lockout ends by itself
//	AuthBusy                  454 4.7.0
//	ShuttingDown              421 4.3.2  X.3.2 system not accepting network messages
//	MultipleFromFields        550 5.6.0  RFC 5322 §3.6 allows one From field; X.6.0 the content is malformed, which is what the sender must fix (as BareLineEnding)
//	TooManyAuthorDomains      550 5.7.1  X.7.1 refused by policy: DMARC (RFC 7489 §6.6.1) cannot be checked for every author domain
//	TooManyTransactions       421 4.7.0  RFC 5321 §3.8; X.7.0 policy: the client reconnects and goes on
//	AttachmentRefused         554 5.7.1  RFC 5321 §4.3.2 DATA 554 transaction failed; X.7.1 delivery not authorized: the attachment policy refuses the file (as Postfix's and amavisd-new's banned-file reply)
//	AttachmentTempFail        451 4.7.1  the same, deferred (action: tempfail, to try a policy out without losing mail)
//	AttachmentPolicySplit     452 4.5.3  as the content-policy split: recipients with another attachment policy go in their own transaction
//	DSNParamTooLong           501 5.5.4  RFC 3461 §4 bounds ENVID (100) and ORCPT (500 with NOTIFY); X.5.4 invalid command arguments
//	BadDSNParameter           501 5.5.4  RFC 3461 §4 syntax of a DSN parameter

// Builtin words the replies go-smtp makes itself (third_party patch 8):
// smtpd sets it as the server's Replies. arg is what go-smtp says of the
// situation (the command, the parameter, a parser's error; see
// smtp.Reply). Every smtp.Reply has its reply here (TestBuiltinComplete).
func Builtin(srv *smtp.Server, r smtp.Reply, arg string) *smtp.SMTPError {
	host := srv.Domain
	switch r {
	case smtp.ReplyGreeting:
		return Greeting(host)
	case smtp.ReplyHelo:
		return HeloReply(host)
	case smtp.ReplyEhlo:
		return EhloReply(host)
	case smtp.ReplyMailOK:
		return MailOK()
	case smtp.ReplyRcptOK:
		return RcptOK()
	case smtp.ReplyDataStart:
		return DataStart()
	case smtp.ReplyDataOK:
		return Accepted()
	case smtp.ReplyChunkOK:
		return ChunkOK(arg)
	case smtp.ReplyNoop:
		return NoopOK()
	case smtp.ReplyRset:
		return ResetOK()
	case smtp.ReplyVrfy:
		return VrfyReply()
	case smtp.ReplyHelp:
		return HelpReply()
	case smtp.ReplyQuit:
		return Closing(host)
	case smtp.ReplyStartTLS:
		return StartTLSReady()
	case smtp.ReplyAuthOK:
		return AuthOK()
	case smtp.ReplyAuthCancelled:
		return AuthCancelled()
	case smtp.ReplyAuthBadBase64:
		return AuthBadBase64()
	case smtp.ReplyAuthBadResponse:
		return AuthBadResponse()
	case smtp.ReplyAuthTwice:
		return AuthTwice()
	case smtp.ReplyAuthNeedsTLS:
		return EncryptionRequiredForAuth()
	case smtp.ReplyUnknownCommand:
		return UnknownCommand(arg)
	case smtp.ReplyNotImplemented:
		return NotImplemented(arg)
	case smtp.ReplyWrongHello:
		return WrongHello(arg)
	case smtp.ReplyNeedHello:
		return NeedHelo(arg)
	case smtp.ReplyNeedMail:
		return NeedMail(arg)
	case smtp.ReplyNeedRcpt:
		return NeedRcpt(arg)
	case smtp.ReplyNestedMail:
		return NestedMail()
	case smtp.ReplyInTransfer:
		return InTransfer(arg)
	case smtp.ReplyDataBinary:
		return DataForBinary()
	case smtp.ReplyTLSActive:
		return TLSActive()
	case smtp.ReplyTLSNotOffered:
		return TLSNotOffered()
	case smtp.ReplySyntax:
		return CommandSyntax(arg)
	case smtp.ReplyBadSender:
		return BadSenderSyntax(arg)
	case smtp.ReplyBadRecipient:
		return BadAddressSyntax(arg)
	case smtp.ReplyParamSyntax:
		return ParamSyntax(arg)
	case smtp.ReplyParamUnsupported:
		return ParamUnsupported(arg)
	case smtp.ReplyTooBig:
		return MessageTooBig(srv.MaxMessageBytes)
	case smtp.ReplyTooManyRcpts:
		return TooManyRecipients(srv.MaxRecipients)
	case smtp.ReplyLineTooLong:
		return CommandTooLong(srv.MaxLineLength)
	case smtp.ReplyTimeout:
		return CommandTimeout()
	case smtp.ReplyConnError:
		return ConnectionError()
	case smtp.ReplyInternalError:
		return InternalError()
	case smtp.ReplyLocalError:
		return LocalError()
	case smtp.ReplyBusy:
		return TooManyConnections()
	}
	// A go-smtp upgrade added a situation: still a reply of ours, never
	// the library's; TestBuiltinComplete names it.
	return LocalError()
}

// Greeting is the 220 a client gets on connecting.
func Greeting(host string) *smtp.SMTPError {
	return replyNoCode(220, "%s ESMTP ready", host)
}

// HeloReply answers HELO: the server's name.
func HeloReply(host string) *smtp.SMTPError {
	return replyNoCode(250, "%s", host)
}

// EhloReply is the first line of the EHLO reply: the server's name.
func EhloReply(host string) *smtp.SMTPError {
	return replyNoCode(250, "%s", host)
}

// MailOK accepts MAIL FROM.
func MailOK() *smtp.SMTPError { return Reply(250, 2, 1, 0, "Ok") }

// RcptOK accepts RCPT TO.
func RcptOK() *smtp.SMTPError { return Reply(250, 2, 1, 5, "Ok") }

// DataStart answers DATA: send the message.
func DataStart() *smtp.SMTPError {
	return replyNoCode(354, "End data with <CR><LF>.<CR><LF>")
}

// Queued is the 250 after the message is stored, naming its queue ID.
func Queued(id string) *smtp.SMTPError { return Reply(250, 2, 0, 0, "Ok: queued as %s", id) }

// Accepted is go-smtp's 250 for a Data method that returned nil.
func Accepted() *smtp.SMTPError { return Reply(250, 2, 0, 0, "Ok") }

// ChunkOK accepts a BDAT chunk that is not the last; size is its size in
// octets as the client gave it.
func ChunkOK(size string) *smtp.SMTPError { return Reply(250, 2, 0, 0, "Ok: %s octets", size) }

// NoopOK answers NOOP.
func NoopOK() *smtp.SMTPError { return Reply(250, 2, 0, 0, "Ok") }

// ResetOK answers RSET.
func ResetOK() *smtp.SMTPError { return Reply(250, 2, 0, 0, "Ok") }

// VrfyReply answers VRFY: addresses are not disclosed, and not needed.
func VrfyReply() *smtp.SMTPError {
	return Reply(252, 2, 0, 0, "cannot VRFY addresses; send the message, and each recipient is accepted or refused at RCPT TO")
}

// HelpReply answers HELP.
func HelpReply() *smtp.SMTPError {
	return Reply(214, 2, 0, 0, "this is an SMTP server (RFC 5321); send EHLO to see the extensions it offers")
}

// Closing answers QUIT.
func Closing(host string) *smtp.SMTPError {
	return Reply(221, 2, 0, 0, "%s closing connection", host)
}

// StartTLSReady answers STARTTLS; the handshake follows.
func StartTLSReady() *smtp.SMTPError { return Reply(220, 2, 0, 0, "Ready to start TLS") }

// AuthOK ends a successful AUTH.
func AuthOK() *smtp.SMTPError { return Reply(235, 2, 7, 0, "Authentication successful") }

// AuthCancelled answers the client's "*" during AUTH.
func AuthCancelled() *smtp.SMTPError {
	return Reply(501, 5, 7, 0, "authentication cancelled by the client")
}

// AuthBadBase64 refuses an AUTH response that is not base64.
func AuthBadBase64() *smtp.SMTPError {
	return Reply(501, 5, 5, 2, "cannot decode the AUTH response as base64; check the client's SASL implementation")
}

// AuthBadResponse refuses an AUTH response the mechanism cannot read (a
// PLAIN response without its NUL separators).
func AuthBadResponse() *smtp.SMTPError {
	return Reply(501, 5, 5, 2, "malformed AUTH response for this mechanism; check the client's SASL implementation")
}

// AuthTwice refuses AUTH after a successful one.
func AuthTwice() *smtp.SMTPError {
	return Reply(503, 5, 5, 1, "already authenticated; AUTH is allowed once per session")
}

// AuthNotOffered refuses AUTH on a listener that does not offer it.
func AuthNotOffered() *smtp.SMTPError {
	return Reply(502, 5, 5, 1, "authentication is not offered on this port; use the submission port of this relay")
}

// AuthUnknownMechanism refuses an AUTH mechanism that is not offered.
func AuthUnknownMechanism(mech string) *smtp.SMTPError {
	return Reply(504, 5, 5, 4, "authentication mechanism %s is not offered; use one that the EHLO reply lists", verb(mech))
}

// UnknownCommand refuses a command the server does not know; verb is the
// command as sent ("" for an empty line).
func UnknownCommand(cmd string) *smtp.SMTPError {
	if cmd == "" {
		return Reply(500, 5, 5, 2, "empty command line; send an SMTP command (RFC 5321)")
	}
	return Reply(500, 5, 5, 2, "command %s not recognized; check the client's SMTP implementation", verb(cmd))
}

// NotImplemented refuses a known command this server does not implement
// (SEND, SOML, SAML, EXPN, TURN).
func NotImplemented(cmd string) *smtp.SMTPError {
	return Reply(502, 5, 5, 1, "%s is not implemented by this server", verb(cmd))
}

// WrongHello refuses LHLO: this is SMTP, not LMTP.
func WrongHello(cmd string) *smtp.SMTPError {
	return Reply(500, 5, 5, 2, "%s is not an SMTP command: this is an SMTP server, send EHLO", verb(cmd))
}

// NeedHelo refuses a command sent before EHLO/HELO.
func NeedHelo(cmd string) *smtp.SMTPError {
	return Reply(503, 5, 5, 1, "send EHLO (or HELO) with your host name before %s", verb(cmd))
}

// NeedMail refuses RCPT, DATA or BDAT before MAIL FROM.
func NeedMail(cmd string) *smtp.SMTPError {
	return Reply(503, 5, 5, 1, "bad sequence of commands: send MAIL FROM before %s", verb(cmd))
}

// NeedRcpt refuses DATA or BDAT before any recipient was accepted.
func NeedRcpt(cmd string) *smtp.SMTPError {
	return Reply(503, 5, 5, 1, "bad sequence of commands: no recipient accepted yet; send RCPT TO (and check its reply) before %s", verb(cmd))
}

// NestedMail refuses MAIL FROM inside a transaction.
func NestedMail() *smtp.SMTPError {
	return Reply(503, 5, 5, 1, "bad sequence of commands: a transaction is already open; finish it with DATA or end it with RSET before another MAIL FROM")
}

// InTransfer refuses MAIL, RCPT or DATA during a BDAT transfer.
func InTransfer(cmd string) *smtp.SMTPError {
	return Reply(503, 5, 5, 1, "bad sequence of commands: %s during a BDAT transfer; finish it with BDAT … LAST or end it with RSET", verb(cmd))
}

// DataForBinary refuses DATA for a BODY=BINARYMIME message.
func DataForBinary() *smtp.SMTPError {
	return Reply(503, 5, 5, 1, "bad sequence of commands: a BODY=BINARYMIME message must be sent with BDAT, not DATA (RFC 3030)")
}

// TLSActive refuses STARTTLS inside TLS.
func TLSActive() *smtp.SMTPError {
	return Reply(503, 5, 5, 1, "bad sequence of commands: TLS is already active")
}

// TLSNotOffered refuses STARTTLS on a listener without TLS.
func TLSNotOffered() *smtp.SMTPError {
	return Reply(502, 5, 5, 1, "STARTTLS is not offered on this port")
}

// commandUsage is the syntax CommandSyntax shows for each command.
var commandUsage = map[string]string{
	"HELO": "HELO your.host.name",
	"EHLO": "EHLO your.host.name",
	"LHLO": "LHLO your.host.name",
	"MAIL": "MAIL FROM:<address> [parameters]",
	"RCPT": "RCPT TO:<address> [parameters]",
	"DATA": "DATA, without parameters",
	"BDAT": "BDAT size [LAST]",
	"AUTH": "AUTH mechanism [initial-response]",
}

// CommandSyntax refuses a command whose arguments do not parse.
func CommandSyntax(cmd string) *smtp.SMTPError {
	if u, ok := commandUsage[cmd]; ok {
		return Reply(501, 5, 5, 4, "syntax error in the arguments; the syntax is: %s (RFC 5321)", u)
	}
	return Reply(501, 5, 5, 4, "syntax error in the arguments of %s", verb(cmd))
}

// ParamSyntax refuses a MAIL or RCPT parameter with a malformed value.
func ParamSyntax(param string) *smtp.SMTPError {
	return Reply(501, 5, 5, 4, "malformed value of the %s parameter; check the client's SMTP implementation", verb(param))
}

// ParamUnsupported refuses a MAIL or RCPT parameter this server does not
// recognise or offer.
func ParamUnsupported(param string) *smtp.SMTPError {
	return Reply(555, 5, 5, 4, "parameter %s is not supported here; send only the parameters of extensions that the EHLO reply lists", verb(param))
}

// CommandTooLong refuses a command line over limit octets; the rest of
// the line is skipped and the session goes on.
func CommandTooLong(limit int) *smtp.SMTPError {
	return Reply(500, 5, 5, 2, "command line too long (this server reads at most %d octets a line; RFC 5321 section 4.5.3.1.4 allows 512); the line was ignored", limit)
}

// CommandTimeout ends a session that sent no command in time.
func CommandTimeout() *smtp.SMTPError {
	return Reply(421, 4, 4, 2, "timeout waiting for a command, closing connection")
}

// ConnectionError ends a session whose connection failed.
func ConnectionError() *smtp.SMTPError {
	return Reply(421, 4, 4, 0, "connection error, closing connection")
}

// InternalError ends a session after a bug of ours; nothing was accepted.
func InternalError() *smtp.SMTPError {
	return Reply(421, 4, 3, 0, "internal error in this server, closing connection; please try again later")
}

// LocalError answers a command that could not be completed here for a
// reason of ours (QueueFailed is the one for a message).
func LocalError() *smtp.SMTPError {
	return Reply(451, 4, 3, 0, "local error in this server; please try again later")
}

// DataTimeout ends a session whose message data stopped arriving.
func DataTimeout() *smtp.SMTPError {
	return Reply(421, 4, 4, 2, "timeout while receiving the message, closing connection; nothing was accepted")
}

// ConnectionLost is the reply to a DATA whose client went away.
func ConnectionLost() *smtp.SMTPError {
	return Reply(421, 4, 4, 2, "connection lost during DATA; nothing was accepted")
}

// TransferAborted is the result of a BDAT transfer ended by RSET. Nobody
// normally sees it; it is temporary because go-smtp v0.25.1 can hand an
// aborted transfer's result to the next BDAT transaction, which must then
// read "try again", never a permanent refusal.
func TransferAborted() *smtp.SMTPError {
	return Reply(451, 4, 3, 0, "message transfer aborted (RSET during BDAT); send the message again")
}

// RequireTLSInClear refuses MAIL FROM … REQUIRETLS outside TLS.
func RequireTLSInClear() *smtp.SMTPError {
	return Reply(530, 5, 7, 10, "REQUIRETLS needs an encrypted session; use STARTTLS first")
}

// ProtocolViolation ends a session that failed a protocol test (what)
// and says what a real MTA does (fix). smtpd writes it itself (Line).
func ProtocolViolation(what, fix string) *smtp.SMTPError {
	return Reply(554, 5, 5, 1, "protocol error: %s; %s", what, fix)
}

// TooManyHops refuses a message that carries n Received: fields, more
// than max: a loop, almost certainly (RFC 5321 §6.3).
func TooManyHops(n, max int) *smtp.SMTPError {
	return Reply(554, 5, 4, 6, "too many hops (%d Received: header fields, limit %d): this looks like a mail loop; "+
		"check the forwarding and routing between your servers and this one", n, max)
}

// MailLoop refuses a message that already passed this relay (host) for
// the same recipient.
func MailLoop(host, rcpt string) *smtp.SMTPError {
	return Reply(554, 5, 4, 6, "mail loop: this message already passed %s for <%s>; check forwarding rules and deliver_to targets", host, rcpt)
}

// AutoReplyToProgram refuses an automatic message to an address only
// programs send from: how two auto-responders start answering each other.
func AutoReplyToProgram(rcpt string) *smtp.SMTPError {
	return Reply(550, 5, 7, 1, "automatic message to <%s>, an address only programs send from: refused to break an auto-reply loop; "+
		"do not send notifications or auto-replies to it", rcpt)
}

// AutoReplyLoop refuses the n-th automatic message from from to rcpt
// within window, over max.
func AutoReplyLoop(n int, from, rcpt string, window time.Duration, max int) *smtp.SMTPError {
	return Reply(550, 5, 7, 1, "auto-reply loop: %d automatic messages from %s to <%s> within %s (limit %d); check the auto-responders on both sides",
		n, from, rcpt, window, max)
}

// SenderControlChars refuses a sender address with control characters.
func SenderControlChars(from string) *smtp.SMTPError {
	return Reply(553, 5, 1, 7, "sender address rejected: control characters in %q", from)
}

// SenderDomainTempFail defers a sender whose domain could not be looked
// up: a DNS timeout must never refuse mail.
func SenderDomainTempFail(domain string) *smtp.SMTPError {
	return Reply(450, 4, 1, 8, "cannot verify the sender domain %s: DNS lookup failed temporarily; try again later", domain)
}

// RecipientVerifyTempFail defers a recipient the downstream system cannot
// confirm now.
func RecipientVerifyTempFail(addr string) *smtp.SMTPError {
	return Reply(450, 4, 1, 1, "<%s>: recipient address cannot be verified now (the mail system behind this server does not answer); try again later", addr)
}

// Deferred is the temporary twin of a permanent refusal (a check's
// action "tempfail", so that an admin can try a check without losing
// mail): 450 and class 4, same detail and text.
func Deferred(perm *smtp.SMTPError) *smtp.SMTPError {
	return &smtp.SMTPError{Code: 450, EnhancedCode: smtp.EnhancedCode{4, perm.EnhancedCode[1], perm.EnhancedCode[2]}, Message: perm.Message}
}

// HeloNotFQDN refuses an EHLO/HELO name that is not a fully qualified
// host name (helo is already cleaned for the reply).
func HeloNotFQDN(helo string) *smtp.SMTPError {
	return Reply(504, 5, 5, 2, "HELO/EHLO name %q is not a fully qualified host name; configure the sending server's host name", helo)
}

// ClientDenied refuses a client on the deny list.
func ClientDenied(ip string) *smtp.SMTPError {
	return Reply(554, 5, 7, 1, "client %s is on this server's deny list", ip)
}

// ClientListed refuses a client listed on DNSBLs (lists: their names).
func ClientListed(ip, lists string) *smtp.SMTPError {
	return Reply(550, 5, 7, 1, "client %s is listed on %s; see the lists' sites for delisting", ip, lists)
}

// FirstContact defers the first MAIL of a client new to the deep
// protocol test.
func FirstContact(ip string) *smtp.SMTPError {
	return Reply(450, 4, 7, 1, "first contact from %s: please try again in a minute (real mail servers retry; this is a one-time check)", ip)
}

// partnerText is the refusal of a partner's mail in clear text.
const partnerText = "%s must arrive over TLS (this site's TLS policy for %s); your server must use STARTTLS before MAIL FROM"

// PartnerNeedsTLS refuses a partner's mail (what) that came without TLS
// although the rule for match requires it.
func PartnerNeedsTLS(what, match string) *smtp.SMTPError {
	return Reply(530, 5, 7, 0, partnerText, what, match)
}

// PartnerNeedsTLSDefer is PartnerNeedsTLS for a rule whose action is
// tempfail.
func PartnerNeedsTLSDefer(what, match string) *smtp.SMTPError {
	return Reply(450, 4, 7, 0, partnerText+"; try again with TLS", what, match)
}

// ContentPolicySplit defers a recipient whose content scanning differs
// from that of the recipients already accepted.
func ContentPolicySplit(domain string) *smtp.SMTPError {
	return Reply(452, 4, 5, 3, "recipients of %s are scanned differently from the recipients already accepted; send to them in a separate transaction", domain)
}

// deletionText explains why a message whose recipients a milter would
// drop is refused for all.
const deletionText = "the content filter wants to refuse delivery to some recipients (%s); the message is refused for all, so that none is silently dropped; send it to the others alone"

// RecipientDeletionRefused refuses a message a milter would take
// recipients (list) from.
func RecipientDeletionRefused(list string) *smtp.SMTPError {
	return Reply(550, 5, 7, 1, deletionText, list)
}

// RecipientDeletionDeferred is RecipientDeletionRefused with
// recipient_deletion: tempfail.
func RecipientDeletionDeferred(list string) *smtp.SMTPError {
	return Reply(451, 4, 7, 1, deletionText, list)
}

// ContentCheckFailed defers a message the content stage could not check
// (what failed).
func ContentCheckFailed(what string) *smtp.SMTPError {
	return Reply(451, 4, 3, 0, "local error while checking the message (%s); try again later", what)
}

// Milter replies: the milter's reply goes out as it came, one line per
// line, at most this many lines.
const maxMilterLines = 32

// MilterReply passes on the reply a milter sent (SMFIR_REPLYCODE), as
// Postfix does: code and text as the milter said, checked first. A code
// that is not 4xx/5xx cannot be sent and becomes ContentDeferred (451,
// with the milter's name); an enhanced code that is not RFC 3463 syntax or
// whose class differs from the code becomes X.7.1 of the code's class;
// each line of text (lines separated by "\n") is cut to fit a reply line
// and anything but printable ASCII becomes '?'. milter names the milter
// for the replies it did not word.
func MilterReply(code int, enhanced, text, milter string) *smtp.SMTPError {
	if code < 400 || code > 599 {
		return ContentDeferred(milter)
	}
	class := code / 100
	e := smtp.EnhancedCode{class, 7, 1}
	if IsEnhancedStatus(enhanced) && int(enhanced[0]-'0') == class {
		p := strings.Split(enhanced, ".")
		b, _ := strconv.Atoi(p[1])
		c, _ := strconv.Atoi(p[2])
		e = smtp.EnhancedCode{class, b, c}
	}
	lines := strings.Split(text, "\n")
	if len(lines) > maxMilterLines {
		lines = lines[:maxMilterLines]
	}
	for i, l := range lines {
		lines[i] = replyText(l)
	}
	msg := strings.Join(lines, "\n")
	if strings.TrimSpace(msg) == "" {
		if class == 4 {
			return ContentDeferred(milter)
		}
		return ContentRejected(milter)
	}
	return &smtp.SMTPError{Code: code, EnhancedCode: e, Message: msg}
}

// ContentRejected is the refusal of a milter that rejected without a
// reply of its own.
func ContentRejected(milter string) *smtp.SMTPError {
	return Reply(550, 5, 7, 1, "Message rejected by content scanner %s", milter)
}

// ContentDeferred is the deferral of a milter that answered tempfail
// without a reply of its own.
func ContentDeferred(milter string) *smtp.SMTPError {
	return Reply(451, 4, 7, 1, "Message deferred by content scanner %s, try again later", milter)
}

// ScannerFailed refuses a message whose milter failed, when its on_error
// says reject.
func ScannerFailed(milter string) *smtp.SMTPError {
	return Reply(554, 5, 7, 1, "Content scanner %s failed, message refused", milter)
}

// ScannerUnavailable defers a message whose milter failed.
func ScannerUnavailable(milter string) *smtp.SMTPError {
	return Reply(451, 4, 7, 1, "Content scanner %s unavailable, try again later", milter)
}

// ScannerHeaderTooLarge refuses a message whose header the content
// scanners cannot take (more than maxBytes octets or maxFields fields).
func ScannerHeaderTooLarge(maxBytes, maxFields int) *smtp.SMTPError {
	return Reply(552, 5, 3, 4, "Message header too large for the content scanners (more than %d bytes or %d fields); shorten the header", maxBytes, maxFields)
}

// SPFFail refuses a message whose sender domain's SPF does not allow the
// client ip (reject_spf_fail).
func SPFFail(domain, ip string) *smtp.SMTPError {
	return Reply(550, 5, 7, 23, "SPF of %s does not allow sending from %s; "+
		"the sender's domain must list this server in its SPF record", domain, ip)
}

// SPFTempFail defers a message whose SPF could not be evaluated now.
func SPFTempFail(domain string) *smtp.SMTPError {
	return Reply(451, 4, 7, 24, "temporary DNS failure while checking SPF of %s; please try again later", domain)
}

// DMARCReject refuses a message that fails the DMARC policy reject of
// from; why says which checks failed.
func DMARCReject(from, why string) *smtp.SMTPError {
	return Reply(550, 5, 7, 26, "message rejected: the DMARC policy of %s says reject, and %s; "+
		"the sender's domain must sign with DKIM or publish SPF for this server", from, why)
}

// DMARCTempFail defers a message that failed DMARC with policy reject
// while a DNS lookup failed (why): the retry may pass.
func DMARCTempFail(from, why string) *smtp.SMTPError {
	return Reply(451, 4, 7, 0, "DMARC check for %s failed with policy reject, but a DNS lookup "+
		"failed temporarily (%s); please try again later", from, why)
}

// DMARCLookupTempFail defers a message whose DMARC policy could not be
// looked up.
func DMARCLookupTempFail(from string) *smtp.SMTPError {
	return Reply(451, 4, 7, 0, "temporary DNS failure while looking up the DMARC policy of %s; please try again later", from)
}

// RelayNotTrusted refuses MAIL from a client outside trusted_networks on
// an outbound listener without AUTH.
func RelayNotTrusted(ip string) *smtp.SMTPError {
	return Reply(554, 5, 7, 1, "relay access denied: client %s is not in this listener's trusted_networks", ip)
}

// SenderNotOwned refuses MAIL FROM an address the user may not use.
func SenderNotOwned(addr, user, why string) *smtp.SMTPError {
	return Reply(553, 5, 7, 1, "<%s>: sender address rejected: not owned by user %s (%s); "+
		"set the sender address in the sending application to one this login may use, "+
		"or have the relay's admin add it to the user's senders", addr, user, why)
}

// NullSenderRefused refuses a message from <> that is no report (why).
func NullSenderRefused(why string) *smtp.SMTPError {
	return Reply(550, 5, 7, 1, "null sender refused: MAIL FROM:<> is reserved for delivery status "+
		"and disposition notifications, and this is none (%s); set a sender address (such as noreply@your.domain) "+
		"in the sending application", why)
}

// FromUnusable refuses a message without a usable From: field.
func FromUnusable(why string) *smtp.SMTPError {
	return Reply(553, 5, 7, 1, "message refused: no usable From: header (%s); set a sender address in the sending application", why)
}

// FromNotOurs refuses a message whose From: domain is not ours.
func FromNotOurs(domain string) *smtp.SMTPError {
	return Reply(553, 5, 7, 1, "message refused: the From: domain %s is not one of this relay's domains, so it cannot be signed; fix the sender address in the sending application", domain)
}

// HeaderSenderUnparsable refuses a sender field (From:, Sender:…) that
// does not parse, so it cannot be checked.
func HeaderSenderUnparsable(field, why, user string) *smtp.SMTPError {
	return Reply(553, 5, 7, 1, "message refused: the %s: field does not parse as addresses (%s), "+
		"so it cannot be checked against the addresses user %s may use; fix the sending application", field, why, user)
}

// HeaderSenderNotOwned refuses a sender field naming an address the user
// may not use.
func HeaderSenderNotOwned(field, addr, user, why string) *smtp.SMTPError {
	return Reply(553, 5, 7, 1, "message refused: %s: <%s> is not owned by user %s (%s); "+
		"set the %s: address in the sending application to one this login may use, "+
		"or have the relay's admin add it to the user's senders", field, addr, user, why, field)
}

// verb bounds what the client sent (a command, a parameter) before it
// is quoted in a reply.
func verb(s string) string {
	if len(s) > 32 {
		s = s[:32] + "..."
	}
	return s
}

// replyNoCode builds a reply without an enhanced code: the greeting and
// the HELO/EHLO reply (RFC 2034 section 3) and 354.
func replyNoCode(code int, format string, args ...any) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: smtp.NoEnhancedCode, Message: replyText(fmt.Sprintf(format, args...))}
}

// Line is a reply as smtpd writes it to the socket itself, outside
// go-smtp (at connect, before the greeting, after a protocol test): one
// line, CRLF-terminated; host, when not "", first in the text, as RFC
// 5321 section 4.2 shows the 220 and 421 replies. more makes it a
// continuation line ("220-…").
func Line(se *smtp.SMTPError, host string, more bool) string {
	sep := " "
	if more {
		sep = "-"
	}
	var b strings.Builder
	fmt.Fprintf(&b, "%d%s", se.Code, sep)
	if se.EnhancedCode != smtp.NoEnhancedCode && se.EnhancedCode != smtp.EnhancedCodeNotSet {
		fmt.Fprintf(&b, "%d.%d.%d ", se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])
	}
	if host != "" {
		b.WriteString(host + " ")
	}
	b.WriteString(replyText(se.Message) + "\r\n")
	return b.String()
}

// RelayDenied refuses a recipient in a domain we do not serve.
func RelayDenied(domain string) *smtp.SMTPError {
	return Reply(554, 5, 7, 1, "relay access denied: %s is not a domain this server accepts mail for; "+
		"send to the MX of that domain, or authenticate on the submission port", domain)
}

// RoutingTrickReply refuses a local part that could be re-routed
// downstream; reason is the text returned by RoutingTrick. (The name
// differs from the function that detects the trick only because Go has
// one namespace per package.)
func RoutingTrickReply(reason string) *smtp.SMTPError {
	return Reply(554, 5, 7, 1, "address refused: %s; such addresses can be used to relay through this server. "+
		"Use the plain address of the final recipient", reason)
}

// BadAddressSyntax refuses a recipient address that does not parse.
func BadAddressSyntax(detail string) *smtp.SMTPError {
	return Reply(501, 5, 1, 3, "bad recipient address syntax: %s; RFC 5321 section 4.1.2 describes valid addresses", detail)
}

// BadSenderSyntax refuses a MAIL FROM address that does not parse.
func BadSenderSyntax(detail string) *smtp.SMTPError {
	return Reply(501, 5, 1, 7, "bad sender address syntax: %s; RFC 5321 section 4.1.2 describes valid addresses", detail)
}

// NotFQDNRecipient refuses RCPT TO:<user@host> without a dot in the domain.
func NotFQDNRecipient(addr string) *smtp.SMTPError {
	return Reply(553, 5, 1, 3, "<%s>: recipient address rejected: need a fully-qualified address "+
		"(user@example.com, not user@host)", addr)
}

// NotFQDNSender refuses MAIL FROM:<user@host> or a sender without domain:
// nobody could reply or send a bounce to it.
func NotFQDNSender(addr string) *smtp.SMTPError {
	return Reply(553, 5, 1, 7, "<%s>: sender address rejected: need a fully-qualified address "+
		"(user@example.com, not user@host); fix the sender address or masquerading of the sending system", addr)
}

// NonASCIIAddress refuses an internationalised address in a transaction
// that did not declare SMTPUTF8; detail says which part is non-ASCII.
func NonASCIIAddress(detail string) *smtp.SMTPError {
	return Reply(553, 5, 6, 7, "%s", detail)
}

// DownstreamNoSMTPUTF8 refuses, at RCPT, a recipient with a non-ASCII
// local part when the system we deliver its domain to does not offer
// SMTPUTF8: the message could never be delivered, and inbound mail is
// refused in the dialog rather than held.
func DownstreamNoSMTPUTF8(addr string) *smtp.SMTPError {
	return Reply(553, 5, 6, 7, "<%s>: recipient address rejected: the mail system behind this server does not support "+
		"internationalised addresses (SMTPUTF8, RFC 6531), and this one has non-ASCII characters before the @; "+
		"ask the recipient for an ASCII address", addr)
}

// AddressReply picks the reply for an error from ParseAddress.
func AddressReply(err error, sender bool) *smtp.SMTPError {
	var ae *AddressError
	detail := err.Error()
	if errors.As(err, &ae) {
		detail = ae.Detail
	}
	switch {
	case errors.Is(err, ErrNotFQDN):
		if sender {
			return Reply(553, 5, 1, 7, "sender address rejected: %s; need a fully-qualified address (user@example.com)", detail)
		}
		return Reply(553, 5, 1, 3, "recipient address rejected: %s; need a fully-qualified address (user@example.com)", detail)
	case errors.Is(err, ErrNonASCII):
		return NonASCIIAddress(detail)
	case sender:
		return BadSenderSyntax(detail)
	default:
		return BadAddressSyntax(detail)
	}
}

// SenderDomainNotFound refuses a sender whose domain does not exist or has
// neither MX nor address records: bounces to it could not be delivered.
func SenderDomainNotFound(domain string) *smtp.SMTPError {
	return Reply(550, 5, 1, 8, "sender address rejected: domain %s does not exist in DNS (no MX, A or AAAA record); "+
		"use a sender address in a registered domain", domain)
}

// SenderNullMX refuses a sender whose domain publishes a null MX: the
// domain declares that it receives no mail, so replies would be lost.
func SenderNullMX(domain string) *smtp.SMTPError {
	return Reply(550, 5, 7, 27, "sender address rejected: domain %s has a null MX and accepts no mail (RFC 7505), "+
		"so nobody could reply; use a sender address in a domain that receives mail", domain)
}

// RecipientUnknown refuses a recipient that does not exist in our domain.
func RecipientUnknown(addr string) *smtp.SMTPError {
	return Reply(550, 5, 1, 1, "<%s>: recipient address rejected: no such mailbox here; check the spelling of the address", addr)
}

// BareLineEnding refuses a message with ErrBareLineEnding after DATA.
func BareLineEnding() *smtp.SMTPError {
	return Reply(550, 5, 6, 0, "message contains bare CR or LF; fix the sending software to use CRLF (RFC 5321 section 2.3.8)")
}

// MessageTooBig refuses a message over the size limit (in bytes).
func MessageTooBig(limit int64) *smtp.SMTPError {
	return Reply(552, 5, 3, 4, "message too big: this server accepts at most %d bytes; send large files another way", limit)
}

// HeaderTooLarge refuses a message whose header exceeds limit bytes.
func HeaderTooLarge(limit int) *smtp.SMTPError {
	return Reply(552, 5, 3, 4, "message header is larger than %d bytes; shorten the header (a runaway Received: or X- field?)", limit)
}

// LineTooLong refuses a message with a line over limit bytes (CRLF
// included).
func LineTooLong(limit int) *smtp.SMTPError {
	return Reply(500, 5, 5, 2, "message has a line longer than %d bytes (RFC 5321 section 4.5.3.1.6 allows 1000); "+
		"encode long lines (quoted-printable or base64) in the sending software", limit)
}

// TooManyRecipients defers the recipients over the limit; the client
// sends them in another transaction (RFC 5321 §4.5.3.1.10).
func TooManyRecipients(limit int) *smtp.SMTPError {
	return Reply(452, 4, 5, 3, "too many recipients in this transaction (limit %d); send the remaining recipients in a new transaction", limit)
}

// QueueFailed is for a message that could not be stored durably; it was
// not accepted, so the client keeps it and retries.
func QueueFailed() *smtp.SMTPError {
	return Reply(451, 4, 3, 0, "message not accepted: local error while storing it; please try again later")
}

// InsufficientStorage refuses a new message while the spool's file system
// has less free space than the configured minimum (Postfix's "452 4.3.1
// Insufficient system storage"): at MAIL, so the client sends no data,
// and temporary, so it retries.
func InsufficientStorage() *smtp.SMTPError {
	return Reply(452, 4, 3, 1, "insufficient system storage: this server's mail spool is almost full; please try again later")
}

// TLSRequired refuses commands before STARTTLS on a listener that requires it.
func TLSRequired() *smtp.SMTPError {
	return Reply(530, 5, 7, 0, "must issue a STARTTLS command first; configure the client to use STARTTLS on this port")
}

// AuthRequired refuses MAIL before AUTH on a listener that requires it.
func AuthRequired() *smtp.SMTPError {
	return Reply(530, 5, 7, 0, "authentication required; configure the client with the user name and password for this relay")
}

// AuthFailed refuses wrong credentials.
func AuthFailed() *smtp.SMTPError {
	return Reply(535, 5, 7, 8, "authentication credentials invalid; check the user name and password configured in the client")
}

// AuthTempFail is for a credential check that could not be completed.
func AuthTempFail() *smtp.SMTPError {
	return Reply(454, 4, 7, 0, "temporary authentication failure; please try again later")
}

// EncryptionRequiredForAuth refuses AUTH over a connection without TLS.
func EncryptionRequiredForAuth() *smtp.SMTPError {
	return Reply(538, 5, 7, 11, "encryption required for authentication; issue STARTTLS before AUTH")
}

// TooManyErrors ends a session that keeps sending bad commands. The caller
// must close the connection after sending it.
func TooManyErrors() *smtp.SMTPError {
	return Reply(421, 4, 7, 0, "too many errors in this session, closing connection; check the client's SMTP log")
}

// ShuttingDown ends sessions while the relay stops. The caller must close
// the connection after sending it.
func ShuttingDown() *smtp.SMTPError {
	return Reply(421, 4, 3, 2, "server shutting down, closing connection; please try again later")
}

// RecipientKeyMissing refuses, on an outbound listener, a recipient whose
// mail a TLS rule says is always encrypted (encrypt: always) and who has
// no usable OpenPGP key: the user learns it at once, not from a DSN.
func RecipientKeyMissing(rcpt, match, searched string) *smtp.SMTPError {
	return Reply(550, 5, 7, 1, "mail to %s must be encrypted (TLS policy rule for %s, encrypt: always), and no usable OpenPGP key was found for it "+
		"(looked in: %s); ask the recipient to publish a key in their Web Key Directory (WKD), or your mail administrator to pin one", rcpt, match, searched)
}

// RecipientKeyTempFail defers such a recipient when its key could not be
// looked up for now (WKD server or DNS down).
func RecipientKeyTempFail(rcpt, detail string) *smtp.SMTPError {
	return Reply(450, 4, 7, 1, "mail to %s must be encrypted, and its OpenPGP key cannot be looked up right now (%s); try again later", rcpt, detail)
}

// TooManyConnections refuses a connection when the listener is full.
func TooManyConnections() *smtp.SMTPError {
	return Reply(421, 4, 7, 0, "too many connections, try again later")
}

// TooManyConnectionsFromClient refuses a connection from a client (an
// address, or an IPv6 /64) that already holds limit sessions.
func TooManyConnectionsFromClient(client string, limit int) *smtp.SMTPError {
	return Reply(421, 4, 7, 0, "too many connections from %s (limit %d at a time per client); "+
		"close idle connections or send over fewer, and try again later", client, limit)
}

// ConnectionRateExceeded refuses a connection over a client's rate.
func ConnectionRateExceeded(client string, limit int, window time.Duration) *smtp.SMTPError {
	return Reply(421, 4, 7, 0, "too many connections from %s (limit %d per %s); try again later, and reuse connections",
		client, limit, windowText(window))
}

// MessageRateExceeded defers a MAIL over a client's message rate.
func MessageRateExceeded(client string, limit int, window time.Duration) *smtp.SMTPError {
	return Reply(450, 4, 7, 1, "too much mail from %s (limit %d messages per %s); try again later", client, limit, windowText(window))
}

// RecipientRateExceeded defers a RCPT over a client's recipient rate.
func RecipientRateExceeded(client string, limit int, window time.Duration) *smtp.SMTPError {
	return Reply(450, 4, 7, 1, "too many recipients from %s (limit %d per %s); try again later", client, limit, windowText(window))
}

// AuthLockedOut refuses a login while the client or the user (who says
// which: "from 192.0.2.1", "for this user") has too many failures; the
// password is not even checked.
func AuthLockedOut(who string, limit int, window time.Duration) *smtp.SMTPError {
	return Reply(454, 4, 7, 0, "too many failed logins %s (limit %d per %s): logins are refused for now, "+
		"even with the right password; wait up to %s, and check the password configured in the client", who, limit, windowText(window), windowText(window))
}

// AuthBusy refuses a login that waited too long for another login of the
// same client or user to be checked.
func AuthBusy() *smtp.SMTPError {
	return Reply(454, 4, 7, 0, "too many logins in progress for this client or user; try again in a moment")
}

// TooManyJunkCommands ends a session that sends commands but no mail. The
// caller must close the connection after sending it.
func TooManyJunkCommands(limit int) *smtp.SMTPError {
	return Reply(421, 4, 7, 0, "too many commands that send no mail (limit %d NOOP, RSET, VRFY, HELP between messages), closing connection", limit)
}

// windowText writes a limit's time window as an admin writes it: 1m, 15m, 1h.
func windowText(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

// IsEnhancedStatus checks RFC 3463 §2 syntax: class ("2", "4" or "5")
// "." 1*3digit "." 1*3digit.
func IsEnhancedStatus(s string) bool {
	parts := strings.Split(s, ".")
	if len(parts) != 3 || len(parts[0]) != 1 || !strings.ContainsAny(parts[0], "245") {
		return false
	}
	for _, p := range parts[1:] {
		if len(p) < 1 || len(p) > 3 || strings.Trim(p, "0123456789") != "" {
			return false
		}
	}
	return true
}

// Longest text we put into a reply line: RFC 5321 §4.5.3.1.5 limits a
// reply line to 512 octets including code, enhanced code and CRLF.
const maxReplyText = 480

// Reply builds a one-line reply with an enhanced status code; the text is
// cut to fit a reply line and anything but printable ASCII becomes '?'
// (replyText), since it often carries names taken from the message. Only
// the catalogue functions in this file call it (TestRepliesOnlyHere):
// another package that needs a reply adds a function here, with its row
// in the tables above.
func Reply(code, class, subject, detail int, format string, args ...any) *smtp.SMTPError {
	return &smtp.SMTPError{
		Code:         code,
		EnhancedCode: smtp.EnhancedCode{class, subject, detail},
		Message:      replyText(fmt.Sprintf(format, args...)),
	}
}

// replyText keeps a reply on one line: go-smtp splits Message at LF into
// a multi-line reply and writes CR verbatim, so text that came from the
// network (addresses, domains) could otherwise forge reply lines.
func replyText(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < maxReplyText; i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b.WriteByte(c)
	}
	return b.String()
}

// ReversePath checks a MAIL FROM address as go-smtp hands it over and
// returns its canonical form; the null sender "" stays "". smtputf8: the
// MAIL command carried SMTPUTF8 (ParseMailbox). The error, if any, is the
// *smtp.SMTPError to send.
func ReversePath(from string, smtputf8 bool) (string, error) {
	if from == "" {
		return "", nil
	}
	a, err := ParseMailbox(from, smtputf8)
	if err != nil {
		return "", AddressReply(err, true)
	}
	return a.String(), nil
}

// ForwardPath parses a RCPT TO address of a transaction that declared
// SMTPUTF8 or not; the error, if any, is the *smtp.SMTPError to send.
func ForwardPath(to string, smtputf8 bool) (Address, error) {
	a, err := ParseMailbox(to, smtputf8)
	if err != nil {
		return Address{}, AddressReply(err, false)
	}
	return a, nil
}

// MultipleFromFields refuses a message with n > 1 From fields: RFC 5322
// §3.6 allows one, and a DMARC check of one of them would let the other
// show a spoofed author.
func MultipleFromFields(n int) *smtp.SMTPError {
	return Reply(550, 5, 6, 0, "message has %d From: header fields; RFC 5322 section 3.6 allows exactly one, "+
		"so the author cannot be authenticated (DMARC); fix the sending software", n)
}

// TooManyAuthorDomains refuses a From field with more author domains
// than are checked against their DMARC policies.
func TooManyAuthorDomains(n, max int) *smtp.SMTPError {
	return Reply(550, 5, 7, 1, "the From: field names addresses in %d domains; this server checks the DMARC policy of "+
		"at most %d and refuses what it cannot check; name fewer authors (and the one who sends in Sender:)", n, max)
}

// TooManyTransactions ends a session at a MAIL command over the limit
// per session. The caller must close the connection after sending it.
func TooManyTransactions(max int) *smtp.SMTPError {
	return Reply(421, 4, 7, 0, "too many transactions in one session (limit %d), closing connection; "+
		"reconnect to send more", max)
}

// AttachmentRefused refuses a message for one of its files (the
// attachment policy, attach/): where names the attachment and the path
// inside its archives, reason says what the file is.
func AttachmentRefused(where, reason string) *smtp.SMTPError {
	return Reply(554, 5, 7, 1, "message refused because of the attachment %s: %s; this server accepts no programs, scripts or disguised files, "+
		"also not inside archives; send the file another way (e.g. a download link)", where, reason)
}

// AttachmentTempFail is AttachmentRefused for a policy whose action is
// tempfail: the sender keeps the message and retries.
func AttachmentTempFail(where, reason string) *smtp.SMTPError {
	return Reply(451, 4, 7, 1, "message deferred because of the attachment %s: %s; the attachment policy defers such files for now; try again later", where, reason)
}

// AttachmentPolicySplit defers a recipient whose domain has another
// attachment policy than the recipients already accepted: one reply to
// DATA serves all of them.
func AttachmentPolicySplit(domain string) *smtp.SMTPError {
	return Reply(452, 4, 5, 3, "recipients of %s have another attachment policy than the recipients already accepted; send to them in a separate transaction", domain)
}

// DSNParamTooLong refuses an ENVID or ORCPT longer than RFC 3461 allows
// (limit characters, as sent in xtext).
func DSNParamTooLong(param string, limit int) *smtp.SMTPError {
	return Reply(501, 5, 5, 4, "%s parameter is longer than the %d characters RFC 3461 section 4 allows; "+
		"shorten it in the sending software", param, limit)
}

// BadDSNParameter refuses a DSN parameter (RFC 3461 §4) that cannot be
// kept or passed on; detail says what is wrong with it.
func BadDSNParameter(param, detail string) *smtp.SMTPError {
	return Reply(501, 5, 5, 4, "bad %s parameter: %s (RFC 3461 section 4); fix it in the sending software", param, detail)
}
