// Package dsn builds RFC 3464 delivery status notifications for messages
// the relay accepted: bounces and delay warnings, and the success notices
// a sender asked for with NOTIFY=SUCCESS (RFC 3461): "delivered" where the
// relay made the final delivery, "relayed" where it passed the message to
// a server that does not confirm deliveries itself.
//
// The caller (the queue) must send the result with the null reverse-path
// MAIL FROM:<> (RFC 5321 §4.5.5, RFC 3464 §2), so that a DSN that cannot
// be delivered is never answered by another DSN.
package dsn

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"mime/quotedprintable"
	"net/mail"
	"net/textproto"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"securerelay/downgrade"
	"securerelay/smtputil"
)

// Recipient is the delivery outcome for one recipient.
type Recipient struct {
	Address           string
	OriginalRecipient string // optional; ORCPT (RFC 3461 §4.2), decoded, "rfc822;" or "utf-8;" prefix optional
	Action            string // failed | delayed | delivered | relayed
	Status            string // RFC 3463 code, e.g. 5.1.1; X.0.0 of the action's class if empty or invalid
	RemoteMTA         string // host name, optional
	Diagnostic        string // remote reply text, e.g. "550 5.1.1 user unknown", optional
	// Explanation says in an end user's words what went wrong where the
	// status and reply alone would not (a TLS policy not met), optional.
	Explanation string
	LastAttempt time.Time
}

// Report is one DSN about one message.
type Report struct {
	ReportingMTA string // our host name
	Postmaster   string // From: of the DSN; MAILER-DAEMON@ReportingMTA if empty
	Sender       string // envelope sender of the original message; the DSN's To:
	QueueID      string
	Arrival      time.Time
	Recipients   []Recipient
	// Original is the original message, or its start: its header is
	// returned (RET=HDRS, RFC 3461 §4.3), or all of it with ReturnFull.
	Original []byte
	// ReturnFull: the sender asked for the whole message back (RET=FULL).
	// A report of failures then returns Original whole, as message/rfc822,
	// unless TooLargeToReturn is set or the message could not travel
	// intact inside the report (8-bit header fields, lines over 998
	// octets): then its header, and the text says why.
	ReturnFull bool
	// TooLargeToReturn is the size of a message larger than the relay
	// returns; Original then holds only its start.
	TooLargeToReturn int64
	// EnvID is the ENVID of the original transaction (RFC 3461 §4.4),
	// decoded; reported as Original-Envelope-Id.
	EnvID     string
	Now       time.Time
	MessageID string // optional; generated if empty
}

var (
	// ErrNullSender: the original message had MAIL FROM:<>. RFC 5321 §6.1
	// forbids sending a notification to the null reverse-path: mail with
	// a null sender is itself a notification (RFC 5321 §4.5.5), and
	// answering it could start a loop of bounces between two systems.
	ErrNullSender = errors.New("dsn: no DSN is sent for a message with a null sender")
	// ErrNoRecipients: a DSN reports on at least one recipient (RFC 3464
	// §2.1 requires one or more per-recipient groups).
	ErrNoRecipients = errors.New("dsn: no recipients to report")
)

const (
	// Bounds for text that came from the network (remote replies,
	// addresses): enough for any real SMTP reply (a reply line is at most
	// 512 octets, RFC 5321 §4.5.3.1.5), small enough that a folded field
	// never approaches the 998-octet line limit.
	maxDiagnostic = 1000
	maxAddress    = 256 // path limit, RFC 5321 §4.5.3.1.3
	maxHostname   = 255
	maxQueueID    = 64
	// MaxOriginalHeader bounds the returned header of the original
	// message; an over-long header is cut at a line boundary.
	MaxOriginalHeader = 64 * 1024
)

// Build returns the DSN as a complete RFC 5322 message with CRLF line
// endings: multipart/report (RFC 6522) with a human-readable text part,
// a message/delivery-status part (RFC 3464) and, if Original is given,
// the original header as text/rfc822-headers.
func Build(r Report) ([]byte, error) {
	sender := strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(r.Sender), "<"), ">")
	if sender == "" {
		return nil, ErrNullSender
	}
	// An SMTPUTF8 sender (RFC 6531) gets its DSN too: To: is in ASCII
	// when the address has an ASCII form (its domain in A-labels), else
	// in UTF-8 (RFC 6532; the DSN then travels with SMTPUTF8 itself).
	to, err := smtputil.ParseMailbox(sender, true)
	if err != nil {
		return nil, fmt.Errorf("dsn: sender: %w", err)
	}
	toAddr, ok := to.ASCII()
	if !ok {
		toAddr = to.String()
	}
	if len(r.Recipients) == 0 {
		return nil, ErrNoRecipients
	}
	mta, err := smtputil.ParseDomain(r.ReportingMTA)
	if err != nil || strings.HasPrefix(mta, "[") {
		return nil, fmt.Errorf("dsn: reporting MTA %q is not a host name: %v", r.ReportingMTA, err)
	}
	pm := r.Postmaster
	if pm == "" {
		pm = "MAILER-DAEMON@" + mta
	}
	from, err := smtputil.ParseAddress(pm)
	if err != nil {
		return nil, fmt.Errorf("dsn: postmaster: %w", err)
	}

	rcpts := make([]recipient, 0, len(r.Recipients))
	anyFailed, anyDelayed := false, false
	for i, rc := range r.Recipients {
		c, err := cleanRecipient(rc)
		if err != nil {
			return nil, fmt.Errorf("dsn: recipient %d: %w", i, err)
		}
		anyFailed = anyFailed || c.action == "failed"
		anyDelayed = anyDelayed || c.action == "delayed"
		rcpts = append(rcpts, c)
	}

	now := r.Now
	if now.IsZero() {
		now = time.Now()
	}
	queueID := atomText(r.QueueID, maxQueueID)
	msgID := cleanMessageID(r.MessageID)
	if msgID == "" {
		msgID = newMessageID(queueID, mta, now)
	}
	subject := "Successful Mail Delivery Report"
	switch {
	case anyFailed:
		subject = "Undelivered Mail Returned to Sender"
	case anyDelayed:
		subject = "Delayed Mail (still being retried)"
	}
	// A failure may return the whole message (RET=FULL); a report without
	// failures returns the header only (RFC 3461 §4.3).
	full := r.ReturnFull && anyFailed && r.TooLargeToReturn <= 0 && canReturnWhole(r.Original)
	original := r.Original
	if full && needsEncoding(original) {
		// A message/rfc822 part may not be encoded as a whole (RFC 2046
		// §5.2.1), so an 8-bit original would make the report 8-bit, and a
		// hop on the way back without 8BITMIME could not take it. Its own
		// text parts are converted instead, as the outbound side does for
		// a 7-bit next hop; what cannot be converted goes back as its
		// header only.
		if c, ok := sevenBit(original); ok {
			original = c
		} else {
			full = false
		}
	}
	envID := printableLine(r.EnvID, 100)

	var body bytes.Buffer
	mw := multipart.NewWriter(&body)

	var out bytes.Buffer
	out.WriteString(smtputil.FoldField("From", (&mail.Address{Name: "Mail Delivery System", Address: from.Key()}).String()))
	out.WriteString(smtputil.FoldField("To", (&mail.Address{Address: unquoted(toAddr)}).String()))
	out.WriteString(smtputil.FoldField("Subject", subject))
	out.WriteString(smtputil.FoldField("Date", now.Format(smtputil.DateFormat)))
	out.WriteString(smtputil.FoldField("Message-ID", msgID))
	// RFC 3834 §5: marks the DSN as automatic, so that vacation
	// responders and our own null-sender/loop policy do not answer it.
	out.WriteString(smtputil.FoldField("Auto-Submitted", "auto-replied"))
	out.WriteString(smtputil.FoldField("MIME-Version", "1.0"))
	out.WriteString(smtputil.FoldField("Content-Type", mime.FormatMediaType("multipart/report", map[string]string{
		"report-type": "delivery-status",
		"boundary":    mw.Boundary(),
	})))
	out.WriteString("\r\n")

	// For readers without MIME support (RFC 2046 §5.1.1 preamble).
	body.WriteString("This is a MIME-encapsulated message.\r\n\r\n")

	// Part 1: explanation for the human sender.
	ph := textproto.MIMEHeader{}
	ph.Set("Content-Type", mime.FormatMediaType("text/plain", map[string]string{"charset": "utf-8"}))
	ph.Set("Content-Transfer-Encoding", "quoted-printable")
	ph.Set("Content-Description", "Notification")
	pw, err := mw.CreatePart(ph)
	if err != nil {
		return nil, err
	}
	qp := quotedprintable.NewWriter(pw)
	if _, err := io.WriteString(qp, humanText(mta, queueID, r.Arrival, rcpts, full, r.ReturnFull && anyFailed && !full, r.TooLargeToReturn)); err != nil {
		return nil, err
	}
	if err := qp.Close(); err != nil {
		return nil, err
	}

	// Part 2: machine-readable status, RFC 3464 §2.2 and §2.3. Every value
	// in it is ASCII without CR/LF, so the default 7bit is correct, and
	// message/* parts may not be QP or base64 encoded anyway (RFC 2045
	// §6.4).
	ph = textproto.MIMEHeader{}
	ph.Set("Content-Type", "message/delivery-status")
	ph.Set("Content-Description", "Delivery report")
	pw, err = mw.CreatePart(ph)
	if err != nil {
		return nil, err
	}
	if _, err := io.WriteString(pw, deliveryStatus(mta, envID, r.Arrival, rcpts)); err != nil {
		return nil, err
	}

	// Part 3: the original message when the sender asked for it
	// (RET=FULL) and it failed, as message/rfc822, which may not be
	// encoded (RFC 2046 §5.2.1): 8-bit body text stays 8-bit.
	if full {
		ph = textproto.MIMEHeader{}
		ph.Set("Content-Type", "message/rfc822")
		ph.Set("Content-Description", "Undelivered Message")
		ph.Set("Content-Transfer-Encoding", "7bit")
		pw, err = mw.CreatePart(ph)
		if err != nil {
			return nil, err
		}
		if _, err := pw.Write(original); err != nil {
			return nil, err
		}
		if !bytes.HasSuffix(original, []byte("\r\n")) {
			io.WriteString(pw, "\r\n")
		}
	}
	// Otherwise the original header (text/rfc822-headers, RFC 6522); the
	// body is not returned (RET=HDRS, or no RET): it may be large and
	// private, and the header identifies the message.
	if hdr := originalHeader(r.Original); !full && len(hdr) > 0 {
		ph = textproto.MIMEHeader{}
		ph.Set("Content-Type", "text/rfc822-headers")
		desc := "Undelivered Message Headers"
		if !anyFailed {
			desc = "Message Headers"
		}
		ph.Set("Content-Description", desc)
		if needsEncoding(hdr) {
			ph.Set("Content-Transfer-Encoding", "quoted-printable")
		} else {
			ph.Set("Content-Transfer-Encoding", "7bit")
		}
		pw, err = mw.CreatePart(ph)
		if err != nil {
			return nil, err
		}
		var w io.Writer = pw
		var q *quotedprintable.Writer
		if needsEncoding(hdr) {
			q = quotedprintable.NewWriter(pw)
			w = q
		}
		if _, err := w.Write(hdr); err != nil {
			return nil, err
		}
		if q != nil {
			if err := q.Close(); err != nil {
				return nil, err
			}
		}
	}
	if err := mw.Close(); err != nil {
		return nil, err
	}
	body.WriteString("\r\n")

	out.Write(body.Bytes())
	return out.Bytes(), nil
}

// recipient is a Recipient with every field validated or sanitised.
type recipient struct {
	addr, origType, orig, action, status, remoteMTA string
	// addrType is Final-Recipient's address type: rfc822, or utf-8 for an
	// address with a UTF-8 local part (RFC 6533 §3), whose addr is then
	// utf-8-addr-xtext; addrHuman is the address for the text part.
	addrType, addrHuman string

	diag        string   // ASCII, for message/delivery-status
	diagHuman   []string // reply lines as printable UTF-8, for the text part
	explain     string   // Recipient.Explanation, one printable line
	lastAttempt time.Time
}

func cleanRecipient(rc Recipient) (recipient, error) {
	var c recipient
	c.action = strings.ToLower(strings.TrimSpace(rc.Action))
	class := ""
	switch c.action {
	case "failed":
		class = "5"
	case "delayed":
		class = "4"
	case "delivered", "relayed":
		class = "2"
	default:
		return c, fmt.Errorf("action %q is not failed, delayed, delivered or relayed", rc.Action)
	}
	c.addrType, c.addr, c.addrHuman = "rfc822", cleanAddress(rc.Address), ""
	if c.addr == "" {
		return c, errors.New("empty recipient address")
	}
	c.addrHuman = c.addr
	if a, err := smtputil.ParseMailbox(strings.Trim(strings.TrimSpace(rc.Address), "<>"), true); err == nil && smtputil.NeedsSMTPUTF8(a.String()) {
		// RFC 6533 §3: in the 7-bit message/delivery-status part, an
		// address that has no ASCII form is of type utf-8, written as
		// utf-8-addr-xtext; one whose domain alone is non-ASCII is an
		// rfc822 address in A-labels.
		c.addrHuman = a.String()
		if ascii, ok := a.ASCII(); ok {
			c.addr = ascii
		} else {
			c.addrType, c.addr = "utf-8", utf8AddrXtext(a.String())
		}
	}
	if o := strings.TrimSpace(rc.OriginalRecipient); o != "" {
		c.origType = "rfc822"
		if t, a, ok := strings.Cut(o, ";"); ok && atomText(t, 20) == strings.TrimSpace(t) && strings.TrimSpace(t) != "" {
			c.origType, o = strings.ToLower(strings.TrimSpace(t)), a
		}
		if c.origType == "utf-8" {
			// RFC 6533 §3: in message/delivery-status a UTF-8 address
			// is written in utf-8-addr-xtext, which is ASCII.
			if enc, ok := smtputil.EncodeUTF8AddrXtext(strings.TrimSpace(o)); ok && len(enc) <= maxAddress*4 {
				c.orig = enc
			}
		} else {
			c.orig = cleanAddress(o)
		}
	}
	// RFC 3464 §2.3.3/§2.3.4: the status class must match the action; a
	// mismatch or a malformed code would make the report contradict
	// itself, so fall back to the generic code of the class.
	c.status = class + ".0.0"
	if smtputil.IsEnhancedStatus(rc.Status) && rc.Status[:1] == class {
		c.status = rc.Status
	}
	c.remoteMTA = cleanHost(rc.RemoteMTA)
	c.diag = asciiLine(rc.Diagnostic, maxDiagnostic)
	c.diagHuman = humanLines(rc.Diagnostic, maxDiagnostic)
	c.explain = strings.Join(humanLines(rc.Explanation, maxDiagnostic), " ")
	c.lastAttempt = rc.LastAttempt
	return c, nil
}

// cleanAddress renders an address from the queue (originally from the
// network) for the report. Parsable addresses are written in canonical
// form; anything else is reduced to printable ASCII so that it can never
// break a field or the message.
func cleanAddress(s string) string {
	s = strings.TrimSuffix(strings.TrimPrefix(strings.TrimSpace(s), "<"), ">")
	if a, err := smtputil.ParseAddress(s); err == nil {
		return a.String()
	}
	return asciiLine(s, maxAddress)
}

// utf8AddrXtext encodes an address as RFC 6533 §3's utf-8-addr-xtext:
// every character outside printable ASCII, and '+', '=' and '\\' (which
// xtext and the escape itself use), as \x{HEX}, so that the value stays
// 7-bit for message/delivery-status.
func utf8AddrXtext(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r > 0x20 && r < 0x7f && r != '+' && r != '=' && r != '\\' {
			b.WriteRune(r)
			continue
		}
		fmt.Fprintf(&b, "\\x{%X}", r)
	}
	return b.String()
}

// unquoted is an address without the quotes of a quoted local part:
// mail.Address quotes it again where the header needs it.
func unquoted(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at <= 0 || !strings.HasPrefix(addr, `"`) {
		return addr
	}
	a, err := smtputil.ParseMailbox(addr, true)
	if err != nil {
		return addr
	}
	return a.Local + addr[at:]
}

// cleanHost keeps a host name or address literal, else drops it.
func cleanHost(s string) string {
	h, err := smtputil.ParseDomain(strings.TrimSpace(s))
	if err != nil && !errors.Is(err, smtputil.ErrNotFQDN) {
		return ""
	}
	if err != nil {
		return asciiLine(strings.ToLower(s), maxHostname)
	}
	return h
}

// asciiLine makes untrusted text safe for a header-style field: control
// characters (CR, LF, TAB, ...) become spaces, other non-ASCII characters
// '?', whitespace runs collapse, and the result is cut to max octets.
func asciiLine(s string, max int) string {
	var b strings.Builder
	for _, r := range s { // an invalid UTF-8 octet is one RuneError
		switch {
		case r < 0x20 || r == 0x7f:
			b.WriteByte(' ')
		case r >= 0x80:
			b.WriteByte('?')
		default:
			b.WriteRune(r)
		}
	}
	out := strings.Join(strings.Fields(b.String()), " ")
	if len(out) > max {
		out = strings.TrimSpace(out[:max])
	}
	return out
}

// humanLines is asciiLine for the UTF-8 text part: it keeps the lines of
// a multi-line reply and printable Unicode (remote servers may answer in
// other languages) but removes control and format characters (including
// bidi overrides that could disguise the text). At most max octets in
// total are kept.
func humanLines(s string, max int) []string {
	s = strings.ToValidUTF8(s, "?")
	var out []string
	total := 0
	for _, line := range strings.FieldsFunc(s, func(r rune) bool { return r == '\r' || r == '\n' }) {
		var b strings.Builder
		for _, r := range line {
			if unicode.IsPrint(r) {
				b.WriteRune(r)
			} else {
				b.WriteByte(' ')
			}
		}
		l := strings.Join(strings.Fields(b.String()), " ")
		if l == "" {
			continue
		}
		if total+len(l) > max {
			cut := max - total
			for cut > 0 && !utf8.RuneStart(l[cut]) {
				cut--
			}
			if l = strings.TrimSpace(l[:cut]); l != "" {
				out = append(out, l)
			}
			break
		}
		total += len(l)
		out = append(out, l)
	}
	return out
}

// printableLine keeps a value that must travel as given (an ENVID): only
// printable ASCII and spaces, at most max octets; anything else makes it
// "" rather than a different value the sender would not recognise.
func printableLine(s string, max int) string {
	if len(s) > max {
		return ""
	}
	for i := 0; i < len(s); i++ {
		if s[i] < ' ' || s[i] > '~' {
			return ""
		}
	}
	return strings.TrimSpace(s)
}

// atomText keeps RFC 5322 atext characters only (for queue IDs).
func atomText(s string, max int) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < max; i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0 {
			b.WriteByte(c)
		}
	}
	return b.String()
}

// cleanMessageID accepts a caller-supplied Message-ID only if it has the
// RFC 5322 §3.6.4 shape <left@right> with no whitespace or control
// characters.
func cleanMessageID(s string) string {
	s = strings.TrimSpace(s)
	if s == "" {
		return ""
	}
	if !strings.HasPrefix(s, "<") {
		s = "<" + s + ">"
	}
	inner := s[1 : len(s)-1]
	if !strings.HasSuffix(s, ">") || len(s) > 250 || strings.Count(inner, "@") != 1 ||
		strings.HasPrefix(inner, "@") || strings.HasSuffix(inner, "@") {
		return ""
	}
	for i := 0; i < len(inner); i++ {
		if c := inner[i]; c <= 0x20 || c >= 0x7f || c == '<' || c == '>' || c == '"' || c == '\\' {
			return ""
		}
	}
	return s
}

// newMessageID makes a unique ID: one message may get several DSNs
// (delayed, then failed), so queue ID and host alone are not enough.
func newMessageID(queueID, mta string, now time.Time) string {
	var rnd [8]byte
	_, _ = rand.Read(rnd[:])
	left := now.UTC().Format("20060102150405") + "." + hex.EncodeToString(rnd[:])
	if queueID != "" {
		left = queueID + "." + left
	}
	return "<dsn." + left + "@" + mta + ">"
}

// deliveryStatus renders the message/delivery-status body: the
// per-message group, then one group per recipient, each ended by an
// empty line (RFC 3464 §2.1).
func deliveryStatus(mta, envID string, arrival time.Time, rcpts []recipient) string {
	var b strings.Builder
	if envID != "" {
		// RFC 3464 §2.2.1: first, and exactly as the sender gave it
		// (not folded, which could change its spaces; it is short).
		b.WriteString("Original-Envelope-Id: " + envID + "\r\n")
	}
	b.WriteString(smtputil.FoldField("Reporting-MTA", "dns; "+mta))
	if !arrival.IsZero() {
		b.WriteString(smtputil.FoldField("Arrival-Date", arrival.Format(smtputil.DateFormat)))
	}
	for _, c := range rcpts {
		b.WriteString("\r\n")
		if c.orig != "" {
			b.WriteString(smtputil.FoldField("Original-Recipient", c.origType+"; "+c.orig))
		}
		b.WriteString(smtputil.FoldField("Final-Recipient", c.addrType+"; "+c.addr))
		b.WriteString(smtputil.FoldField("Action", c.action))
		b.WriteString(smtputil.FoldField("Status", c.status))
		if c.remoteMTA != "" {
			b.WriteString(smtputil.FoldField("Remote-MTA", "dns; "+c.remoteMTA))
		}
		if c.diag != "" {
			b.WriteString(smtputil.FoldField("Diagnostic-Code", "smtp; "+c.diag))
		}
		if !c.lastAttempt.IsZero() {
			b.WriteString(smtputil.FoldField("Last-Attempt-Date", c.lastAttempt.Format(smtputil.DateFormat)))
		}
	}
	return b.String()
}

// humanText is the first part: what happened, per recipient, in words
// a sender without mail-system knowledge can act on.
func humanText(mta, queueID string, arrival time.Time, rcpts []recipient, full, fullOmitted bool, tooLarge int64) string {
	var failed, delayed, delivered, relayed []recipient
	for _, c := range rcpts {
		switch c.action {
		case "failed":
			failed = append(failed, c)
		case "delayed":
			delayed = append(delayed, c)
		case "delivered":
			delivered = append(delivered, c)
		default:
			relayed = append(relayed, c)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "This is the mail system at host %s.\n\n", mta)
	switch {
	case len(failed) > 0:
		b.WriteString("Your message could not be delivered to the recipients listed below.\n" +
			"This is a permanent error: the mail system has given up and will not\n" +
			"try again. Please check the explanation for each recipient, correct\n" +
			"the problem (for example a mistyped address), and send the message again.\n\n")
	case len(delayed) > 0:
		b.WriteString("Your message has not yet been delivered to the recipients listed below.\n" +
			"The mail system will keep trying; you do not need to send the message\n" +
			"again. You will get another notice if it finally cannot be delivered.\n\n")
	default:
		b.WriteString("You asked to be told when your message was delivered. This is that\n" +
			"confirmation for the recipients listed below; you do not need to do\n" +
			"anything.\n\n")
	}
	if queueID != "" {
		fmt.Fprintf(&b, "Queue ID:  %s\n", queueID)
	}
	if !arrival.IsZero() {
		fmt.Fprintf(&b, "Received:  %s\n", arrival.Format(smtputil.DateFormat))
	}
	b.WriteString("\n")
	writeGroup := func(title, verb string, list []recipient, success bool) {
		if len(list) == 0 {
			return
		}
		b.WriteString(title + "\n\n")
		for _, c := range list {
			fmt.Fprintf(&b, "<%s>: %s\n", c.addrHuman, verb)
			if c.orig != "" && c.origType == "rfc822" && !strings.EqualFold(c.orig, c.addr) {
				fmt.Fprintf(&b, "    (you wrote to <%s>)\n", c.orig)
			}
			if !success {
				fmt.Fprintf(&b, "    Reason: %s (status %s)\n", explainStatus(c.status), c.status)
			}
			if c.explain != "" {
				fmt.Fprintf(&b, "    %s\n", wrapText(c.explain, 70, "    "))
			}
			if len(c.diagHuman) > 0 && !success {
				if c.remoteMTA != "" {
					// Not "replied": the details are often the relay's own
					// (a TLS policy failure, an expiry), not the server's.
					fmt.Fprintf(&b, "    Details (receiving server %s):\n", c.remoteMTA)
				} else {
					b.WriteString("    Details:\n")
				}
				for _, l := range c.diagHuman {
					fmt.Fprintf(&b, "      %s\n", l)
				}
			} else if c.remoteMTA != "" {
				fmt.Fprintf(&b, "    Receiving server: %s\n", c.remoteMTA)
			}
			if !c.lastAttempt.IsZero() {
				label := "Last attempt"
				if success {
					label = "Handed over"
				}
				fmt.Fprintf(&b, "    %s: %s\n", label, c.lastAttempt.Format(smtputil.DateFormat))
			}
			b.WriteString("\n")
		}
	}
	writeGroup("Delivery failed permanently for:", "could not be delivered", failed, false)
	writeGroup("Delivery is delayed (still being retried) for:", "not delivered yet", delayed, false)
	writeGroup("Delivered to the mailbox of:", "delivered", delivered, true)
	writeGroup("Passed on, without a confirmation of final delivery, for:", "passed on to the next mail server", relayed, true)
	if len(relayed) > 0 {
		b.WriteString("The mail server named above accepted your message for these recipients\n" +
			"but does not send delivery confirmations. This is the last confirmation\n" +
			"you will get for them: it shows the message left this system, not that\n" +
			"it reached the recipient's mailbox.\n\n")
	}
	b.WriteString("If you need help, forward this whole message to your mail administrator.\n")
	switch {
	case full:
		b.WriteString("The machine-readable report is attached, followed by your original\n" +
			"message.\n")
	case fullOmitted && tooLarge > 0:
		fmt.Fprintf(&b, "The machine-readable report is attached, followed by the header of your\n"+
			"original message. You asked for the whole message back, but at %s it\n"+
			"is larger than this system returns; you still have it in your sent mail.\n", sizeText(tooLarge))
	case fullOmitted:
		b.WriteString("The machine-readable report is attached, followed by the header of your\n" +
			"original message. You asked for the whole message back, but it cannot be\n" +
			"attached unchanged; you still have it in your sent mail.\n")
	case len(failed) > 0 || len(delayed) > 0:
		b.WriteString("The machine-readable report is attached, followed by the header of your\n" +
			"original message (its text and attachments are not returned).\n")
	default:
		b.WriteString("The machine-readable report is attached, followed by the header of your\n" +
			"message.\n")
	}
	return b.String()
}

// sizeText writes a size as a user reads it: 12 KB, 3.4 MB.
func sizeText(n int64) string {
	switch {
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MB", float64(n)/(1<<20))
	case n >= 1<<10:
		return fmt.Sprintf("%d KB", n>>10)
	}
	return fmt.Sprintf("%d bytes", n)
}

// sevenBit is msg with its 8-bit text parts converted to 7 bit
// (quoted-printable), or false when that cannot be done without changing
// what it says.
func sevenBit(msg []byte) ([]byte, bool) {
	plan, err := downgrade.Analyze(bytes.NewReader(msg))
	if err != nil {
		return nil, false
	}
	if !plan.Needed() {
		return msg, true
	}
	var out bytes.Buffer
	if err := plan.Convert(&out, bytes.NewReader(msg)); err != nil || needsEncoding(out.Bytes()) {
		return nil, false
	}
	return out.Bytes(), true
}

// canReturnWhole reports whether msg can travel intact as a message/rfc822
// part: a header without 8-bit octets (those need message/global and
// SMTPUTF8), no NUL, and no line over 998 octets (RFC 5322 §2.1.1), since
// the part may not be encoded.
func canReturnWhole(msg []byte) bool {
	if len(msg) == 0 {
		return false
	}
	hdr := msg
	if i := bytes.Index(msg, []byte("\r\n\r\n")); i >= 0 {
		hdr = msg[:i]
	}
	for _, c := range hdr {
		if c >= 0x80 {
			return false
		}
	}
	for _, l := range bytes.Split(msg, []byte("\r\n")) {
		if len(l) > 998 || bytes.IndexByte(l, 0) >= 0 || bytes.ContainsAny(l, "\r\n") {
			return false
		}
	}
	return true
}

// explainStatus puts an RFC 3463 code into plain words: the detail code
// where a common one is known, else the subject (RFC 3463 §3).
func explainStatus(code string) string {
	detail := map[string]string{
		"1.1":  "the mailbox does not exist at the destination",
		"1.2":  "the destination domain does not exist or does not accept mail",
		"1.3":  "the recipient address is not valid",
		"1.6":  "the mailbox has moved and no forwarding address is known",
		"1.10": "the recipient domain declares that it accepts no mail (null MX)",
		"2.1":  "the mailbox is disabled",
		"2.2":  "the mailbox is full",
		"2.3":  "the message is larger than the recipient accepts",
		"3.4":  "the message is too big for the receiving system",
		"4.1":  "the receiving server did not answer",
		"4.2":  "the connection to the receiving server was lost",
		"4.3":  "a DNS lookup failed",
		"4.4":  "no mail server could be found for the destination",
		"4.7":  "the message could not be delivered within the maximum time",
		"5.3":  "the message has too many recipients",
		"7.1":  "the receiving server refused the message for policy reasons",
		"7.10": "the destination requires encryption that could not be established",
		"7.26": "the receiving server considered the message not authenticated (SPF/DKIM/DMARC)",
	}
	parts := strings.SplitN(code, ".", 2)
	if len(parts) == 2 {
		if s, ok := detail[parts[1]]; ok {
			return s
		}
	}
	subject := map[string]string{
		"0": "unspecified error",
		"1": "problem with the address",
		"2": "problem with the recipient's mailbox",
		"3": "problem with the receiving mail system",
		"4": "network or routing problem",
		"5": "mail protocol problem",
		"6": "problem with the message content",
		"7": "security or policy problem",
	}
	if len(parts) == 2 {
		if s, ok := subject[strings.SplitN(parts[1], ".", 2)[0]]; ok {
			return s
		}
	}
	return "unspecified error"
}

// originalHeader returns the header of msg with CRLF line endings, cut
// at MaxOriginalHeader. Line endings are normalised first (a bare CR or
// LF counts as a line ending, as a lenient MUA would read it), so the end
// of the header is the first empty line however the lines were ended;
// without an empty line the whole message is header. The result never
// contains an empty line, which would end the header part early.
func originalHeader(msg []byte) []byte {
	truncated := len(msg) > MaxOriginalHeader
	if truncated {
		msg = msg[:MaxOriginalHeader]
	}
	norm, err := io.ReadAll(smtputil.NewLineEndingReader(bytes.NewReader(msg), true))
	if err != nil || bytes.HasPrefix(norm, []byte("\r\n")) {
		return nil // read errors cannot happen on a bytes.Reader; "\r\n": empty header
	}
	if i := bytes.Index(norm, []byte("\r\n\r\n")); i >= 0 {
		norm = norm[:i+2]
	} else if truncated || len(norm) > MaxOriginalHeader {
		// The header goes on beyond the limit (or grew by normalising):
		// keep whole lines only, or cut one giant line hard, leaving
		// room for its CRLF.
		limit := min(len(norm), MaxOriginalHeader)
		if i := bytes.LastIndex(norm[:limit], []byte("\r\n")); i >= 0 {
			norm = norm[:i+2]
		} else {
			norm = norm[:min(len(norm), MaxOriginalHeader-2)]
		}
	}
	if !bytes.HasSuffix(norm, []byte("\r\n")) {
		// A last line without CRLF, or a hard cut; a cut between CR
		// and LF must not leave a bare CR behind.
		norm = append(bytes.TrimRight(norm, "\r"), '\r', '\n')
	}
	if len(norm) == 2 {
		return nil
	}
	return norm
}

// needsEncoding reports whether the header must be quoted-printable
// encoded to travel as 7bit: 8-bit octets (RFC 6532 headers or junk), NUL,
// or lines over the 998-octet limit of RFC 5322 §2.1.1.
func needsEncoding(b []byte) bool {
	lineLen := 0
	for _, c := range b {
		switch {
		case c == '\n':
			lineLen = 0
			continue
		case c >= 0x80 || c == 0:
			return true
		}
		lineLen++
		if lineLen > 998 {
			return true
		}
	}
	return false
}

// wrapText breaks s at spaces into lines of at most width runes, joined
// with a newline and indent, for the human-readable part.
func wrapText(s string, width int, indent string) string {
	var lines []string
	line := ""
	for _, w := range strings.Fields(s) {
		if line != "" && len([]rune(line))+1+len([]rune(w)) > width {
			lines = append(lines, line)
			line = ""
		}
		if line != "" {
			line += " "
		}
		line += w
	}
	if line != "" {
		lines = append(lines, line)
	}
	return strings.Join(lines, "\n"+indent)
}
