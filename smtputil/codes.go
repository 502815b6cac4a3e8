package smtputil

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/emersion/go-smtp"
)

// SMTP replies the listeners send. Every reply carries an RFC 3463
// enhanced status code and a text that tells the admin of the sending
// system what to fix (DESIGN.md principle 4).
//
// go-smtp only uses Code/EnhancedCode/Message when a session method
// returns exactly a *smtp.SMTPError (a type assertion, not errors.As), so
// these functions return that type and callers must return it unwrapped.
// Each call returns a new value, so a caller may adjust it freely.
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
//	function                  reply      why
//	RelayDenied               554 5.7.1  what Postfix sends (relay_domains_reject_code) and what admins grep for; X.7.1 delivery not authorized
//	RoutingTrickReply         554 5.7.1  same: anti-relay policy
//	BadAddressSyntax          501 5.1.3  RFC 5321 §4.2.3 501 syntax error in parameters; RFC 3463 X.1.3 bad destination address syntax
//	BadSenderSyntax           501 5.1.7  X.1.7 bad sender's mailbox address syntax
//	NotFQDNRecipient          553 5.1.3  RFC 5321 §4.2.3 553 mailbox name not allowed (504 is not a MAIL/RCPT reply in §4.3.2)
//	NotFQDNSender             553 5.1.7
//	NonASCIIAddress           553 5.6.7  X.6.7 non-ASCII addresses not permitted (RFC 6531)
//	SenderDomainNotFound      550 5.1.8  X.1.8 bad sender's system address (NXDOMAIN, no A/AAAA/MX)
//	SenderNullMX              550 5.7.27 RFC 7505 §4.2 sender address has null MX
//	DNSTempFail               451 4.4.3  X.4.3 directory server failure: a DNS timeout is temporary
//	RecipientUnknown          550 5.1.1  X.1.1 bad destination mailbox address
//	BareLineEnding            550 5.6.0  RFC 5321 §2.3.8; X.6.0 other media error (the registry has no code for bare CR/LF)
//	MessageTooBig             552 5.3.4  RFC 1870 §6; X.3.4 message too big for system
//	HeaderTooLarge            552 5.3.4  as MessageTooBig: a size limit of this system that no retry gets under
//	LineTooLong               500 5.5.2  RFC 5321 §4.5.3.1.9 names "500 Line too long" for the text-line limit of §4.5.3.1.6; X.5.2 syntax error, the class 500 belongs to (permanent, unlike the 451 a read error gave)
//	TooManyRecipients         452 4.5.3  RFC 5321 §4.5.3.1.10; X.5.3 too many recipients
//	QueueFailed               451 4.3.0  X.3.0 mail system error: nothing was stored, the client retries
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
//	DSNParamTooLong           501 5.5.4  RFC 3461 §4 bounds ENVID (100) and ORCPT (500 with NOTIFY); X.5.4 invalid command arguments
//	BadDSNParameter           501 5.5.4  RFC 3461 §4 syntax of a DSN parameter

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

// NonASCIIAddress refuses internationalised addresses (no SMTPUTF8 here).
func NonASCIIAddress(addr string) *smtp.SMTPError {
	return Reply(553, 5, 6, 7, "<%s>: non-ASCII addresses are not accepted by this server; "+
		"use the ASCII (xn--) form of the domain", addr)
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
		return Reply(553, 5, 6, 7, "%s", detail)
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
	return Reply(550, 5, 7, 27, "sender address rejected: domain %s has a null MX and accepts no mail (RFC 7505)", domain)
}

// DNSTempFail is for a DNS lookup that timed out or SERVFAILed.
func DNSTempFail(domain string) *smtp.SMTPError {
	return Reply(451, 4, 4, 3, "temporary DNS failure looking up %s; please try again later", domain)
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
func TooManyRecipients() *smtp.SMTPError {
	return Reply(452, 4, 5, 3, "too many recipients in this transaction; send the remaining recipients in a new transaction")
}

// QueueFailed is for a message that could not be stored durably; it was
// not accepted, so the client keeps it and retries.
func QueueFailed() *smtp.SMTPError {
	return Reply(451, 4, 3, 0, "message not accepted: local error while storing it; please try again later")
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
// (replyText), since it often carries names taken from the message.
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
// returns its canonical form; the null sender "" stays "". The error, if
// any, is the *smtp.SMTPError to send.
func ReversePath(from string) (string, error) {
	if from == "" {
		return "", nil
	}
	a, err := ParseAddress(from)
	if err != nil {
		return "", AddressReply(err, true)
	}
	return a.String(), nil
}

// ForwardPath parses a RCPT TO address; the error, if any, is the
// *smtp.SMTPError to send.
func ForwardPath(to string) (Address, error) {
	a, err := ParseAddress(to)
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
