package milter

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/emersion/go-smtp"

	"securerelay/smtputil"
)

// Action is the verdict of a Check.
type Action int

const (
	// Accept: every milter accepted (or continued to the end); the
	// message may be stored, with Result.Mods applied.
	Accept Action = iota
	// Reject: refuse the message with a 5xx reply. A milter's DISCARD and
	// QUARANTINE become Reject too: this relay never accepts a message it
	// will not deliver.
	Reject
	// Tempfail: refuse the message with a 4xx reply.
	Tempfail
)

func (a Action) String() string {
	switch a {
	case Accept:
		return "accept"
	case Reject:
		return "reject"
	case Tempfail:
		return "tempfail"
	}
	return "Action(" + strconv.Itoa(int(a)) + ")"
}

// ModKind says what a Modification changes.
type ModKind int

const (
	AddHeader    ModKind = iota + 1 // SMFIR_ADDHEADER: append a field
	InsertHeader                    // SMFIR_INSHEADER: insert a field at Index
	ChangeHeader                    // SMFIR_CHGHEADER: replace (or, Value "", delete) the Index-th field called Name
	ReplaceBody                     // SMFIR_REPLBODY: Body is the whole new body
	AddRcpt                         // SMFIR_ADDRCPT, SMFIR_ADDRCPT_PAR: add Addr (with ESMTP Args)
	DelRcpt                         // SMFIR_DELRCPT: remove Addr
	ChangeFrom                      // SMFIR_CHGFROM: the envelope sender becomes Addr (with ESMTP Args)
)

func (k ModKind) String() string {
	switch k {
	case AddHeader:
		return "add-header"
	case InsertHeader:
		return "insert-header"
	case ChangeHeader:
		return "change-header"
	case ReplaceBody:
		return "replace-body"
	case AddRcpt:
		return "add-rcpt"
	case DelRcpt:
		return "del-rcpt"
	case ChangeFrom:
		return "change-from"
	}
	return "ModKind(" + strconv.Itoa(int(k)) + ")"
}

// Modification is one change a milter asked for at end of message.
type Modification struct {
	Kind   ModKind
	Milter string // Config.Name of the milter that asked

	// Header changes. Index is 1-based per field name for ChangeHeader
	// (0 is taken as 1, as Sendmail and Postfix do; an index past the last
	// such field adds one). For InsertHeader it is the number of fields
	// (of the header as this milter saw it, after earlier milters' changes)
	// that stay above the new one: 0 puts it on top.
	Name, Value string
	Index       int

	// Envelope changes: the address without angle brackets and the ESMTP
	// parameters, if any.
	Addr, Args string

	// Body is the complete replacement body for ReplaceBody, as the
	// milter sent it; Apply turns bare CR and LF into CRLF.
	Body []byte

	// leadSpace: the milter negotiated SMFIP_HDR_LEADSPC, so Value is the
	// exact text after the colon; otherwise the MTA adds one space.
	leadSpace bool
}

// Result is the outcome of a Check.
type Result struct {
	Action Action
	// Code, Enhanced and Text form the SMTP reply for Reject and Tempfail:
	// the milter's own reply when it sent one (SMFIR_REPLYCODE), else 550
	// 5.7.1 or 451 4.7.1 with a text naming the milter. Text has one line
	// per reply line (joined by "\n"), without codes, safe to send.
	Code     int
	Enhanced string
	Text     string
	// Milter is the Config.Name of the milter that rejected or failed;
	// empty for Accept.
	Milter string
	// Mods are the modifications of all milters that accepted, in the
	// order they were made. Envelope changes are left to the caller
	// (RecipientsAdded, RecipientsDeleted, NewFrom); Apply makes the
	// content changes.
	Mods []Modification
}

// RecipientsAdded returns the recipients the milters added, in order.
func (r *Result) RecipientsAdded() []string { return r.addrs(AddRcpt) }

// RecipientsDeleted returns the recipients the milters removed, in order.
func (r *Result) RecipientsDeleted() []string { return r.addrs(DelRcpt) }

func (r *Result) addrs(k ModKind) []string {
	var out []string
	for _, m := range r.Mods {
		if m.Kind == k {
			out = append(out, m.Addr)
		}
	}
	return out
}

// NewFrom returns the envelope sender the last milter to change it set,
// and whether any did.
func (r *Result) NewFrom() (addr string, ok bool) {
	for _, m := range r.Mods {
		if m.Kind == ChangeFrom {
			addr, ok = m.Addr, true
		}
	}
	return addr, ok
}

// ChangesContent reports whether Apply would write anything other than the
// original message.
func (r *Result) ChangesContent() bool {
	for _, m := range r.Mods {
		switch m.Kind {
		case AddHeader, InsertHeader, ChangeHeader, ReplaceBody:
			return true
		}
	}
	return false
}

// ReplacesBody reports whether a milter replaced the body (SMFIR_REPLBODY):
// without it Apply changes the header section only.
func (r *Result) ReplacesBody() bool {
	for _, m := range r.Mods {
		if m.Kind == ReplaceBody {
			return true
		}
	}
	return false
}

// Apply writes the message with the milters' header and body changes: msg
// is the original message as given to Check (CRLF line ends). Only the
// header section is held in memory; the body is streamed from msg, or from
// the replacement a milter sent.
func (r *Result) Apply(w io.Writer, msg io.Reader) error {
	if !r.ChangesContent() {
		_, err := io.Copy(w, msg)
		return err
	}
	br := bufio.NewReaderSize(msg, 64<<10)
	h, err := readHeader(br)
	if err != nil {
		return fmt.Errorf("milter: apply: reading header: %w", err)
	}
	fields, body := applyMods(h.fields, r.Mods)
	_, peekErr := br.Peek(1)
	hasBody := len(h.bodyStart) > 0 || peekErr == nil
	bw := bufio.NewWriterSize(w, 32<<10)
	writeFields(bw, fields, h.sep != nil || hasBody || body != nil)
	// The empty line between header and body. A message whose header
	// ended at a line that is not a field had none; it gets one (as
	// Postfix does), or that line could now read as a continuation of an
	// added field.
	switch {
	case h.sep != nil:
		bw.Write(h.sep)
	case hasBody || body != nil:
		bw.WriteString("\r\n")
	}
	if body != nil {
		if _, err := io.Copy(bw, smtputil.NewLineEndingReader(bytes.NewReader(body), true)); err != nil {
			return fmt.Errorf("milter: apply: %w", err)
		}
		return flush(bw)
	}
	bw.Write(h.bodyStart)
	if _, err := br.WriteTo(bw); err != nil {
		return fmt.Errorf("milter: apply: %w", err)
	}
	return flush(bw)
}

func flush(bw *bufio.Writer) error {
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("milter: apply: %w", err)
	}
	return nil
}

// writeFields writes the fields; a field without a final line break (the
// end of a message that stops inside its header) gets one when more follows.
func writeFields(w *bufio.Writer, fields []field, more bool) {
	for i, f := range fields {
		w.Write(f.raw)
		if (i < len(fields)-1 || more) && (len(f.raw) == 0 || f.raw[len(f.raw)-1] != '\n') {
			w.WriteString("\r\n")
		}
	}
}

// applyMods applies the header changes in order to a copy of fields and
// returns the last replacement body (nil if none). Deleted fields are
// removed at once, so later indexes count the remaining ones, as in Postfix.
func applyMods(fields []field, mods []Modification) ([]field, []byte) {
	out := make([]field, len(fields), len(fields)+len(mods))
	copy(out, fields)
	var body []byte
	for _, m := range mods {
		switch m.Kind {
		case AddHeader:
			out = append(out, newField(m.Name, m.Value, m.leadSpace))
		case InsertHeader:
			i := min(max(m.Index, 0), len(out))
			out = append(out, field{})
			copy(out[i+1:], out[i:])
			out[i] = newField(m.Name, m.Value, m.leadSpace)
		case ChangeHeader:
			out = changeField(out, m)
		case ReplaceBody:
			body = m.Body
			if body == nil {
				body = []byte{}
			}
		}
	}
	return out, body
}

func changeField(fields []field, m Modification) []field {
	idx := max(m.Index, 1)
	seen := 0
	for i, f := range fields {
		if !strings.EqualFold(f.name(), m.Name) {
			continue
		}
		if seen++; seen < idx {
			continue
		}
		if m.Value == "" {
			return append(fields[:i], fields[i+1:]...)
		}
		fields[i] = newField(m.Name, m.Value, m.leadSpace)
		return fields
	}
	if m.Value == "" {
		return fields
	}
	// libmilter's documented smfi_chgheader semantics: an index past the
	// last field of that name adds one.
	return append(fields, newField(m.Name, m.Value, m.leadSpace))
}

// defaultReply is the reply for a milter that rejected or deferred
// without its own: the catalogue's, naming the milter (the sending admin
// sees it).
func defaultReply(a Action, milter string) (int, string, string) {
	if a == Tempfail {
		return replyFields(smtputil.ContentDeferred(milter))
	}
	return replyFields(smtputil.ContentRejected(milter))
}

// result is a Result that carries a reply of the catalogue.
func result(a Action, se *smtp.SMTPError, milter string, mods []Modification) *Result {
	r := &Result{Action: a, Milter: milter, Mods: mods}
	r.Code, r.Enhanced, r.Text = replyFields(se)
	return r
}

// replyFields splits a catalogue reply into a Result's fields.
func replyFields(se *smtp.SMTPError) (int, string, string) {
	e := se.EnhancedCode
	return se.Code, fmt.Sprintf("%d.%d.%d", e[0], e[1], e[2]), se.Message
}

// parseReply turns an SMFIR_REPLYCODE text into code, enhanced code and a
// sanitized text. The text is one or more SMTP reply lines ("550-5.7.1
// first\r\n550 5.7.1 last"), as libmilter's smfi_setmlreply builds them.
// Like Postfix it undoes the '%' doubling Sendmail needs ("%%" → "%") and
// drops a lone '%'. An enhanced code whose class does not match the reply
// code is corrected (RFC 3463 §2); a missing one defaults to X.7.1.
func parseReply(s string) (code int, enhanced, text string, err error) {
	s = strings.TrimRight(s, "\r\n")
	if s == "" {
		return 0, "", "", fmt.Errorf("empty reply")
	}
	lines := strings.Split(strings.ReplaceAll(s, "\r\n", "\n"), "\n")
	if len(lines) > maxReplyLines {
		lines = lines[:maxReplyLines]
	}
	texts := make([]string, 0, len(lines))
	for i, l := range lines {
		if len(l) < 3 || !isDigits(l[:3]) || (len(l) > 3 && l[3] != ' ' && l[3] != '-') {
			return 0, "", "", fmt.Errorf("malformed reply line %q", truncate(l, 80))
		}
		c, _ := strconv.Atoi(l[:3])
		if i == 0 {
			code = c
			if code < 400 || code > 599 {
				return 0, "", "", fmt.Errorf("reply code %d is not 4xx or 5xx", code)
			}
		} else if c != code {
			return 0, "", "", fmt.Errorf("reply lines carry different codes %d and %d", code, c)
		}
		rest := ""
		if len(l) > 4 {
			rest = l[4:]
		}
		if e, after, ok := cutEnhanced(rest); ok {
			if i == 0 {
				enhanced = e
			}
			rest = after
		}
		texts = append(texts, sanitizeText(unpercent(rest)))
	}
	class := string(rune('0' + code/100))
	if enhanced == "" {
		enhanced = class + ".7.1"
	} else if enhanced[:1] != class {
		enhanced = class + enhanced[1:]
	}
	return code, enhanced, strings.Join(texts, "\n"), nil
}

const (
	maxReplyLines = 32
	maxReplyLine  = 400 // text per line; an SMTP reply line is at most 512 octets
)

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// cutEnhanced splits an RFC 3463 status code ("5.7.1") off the start of s.
func cutEnhanced(s string) (code, rest string, ok bool) {
	end := strings.IndexByte(s, ' ')
	if end < 0 {
		end = len(s)
	}
	if !smtputil.IsEnhancedStatus(s[:end]) {
		return "", s, false
	}
	return s[:end], strings.TrimLeft(s[end:], " "), true
}

func unpercent(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '%' {
			i++
			if i == len(s) {
				break
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// sanitizeText keeps a reply text to printable ASCII of bounded length: it
// is sent to the SMTP client as is.
func sanitizeText(s string) string {
	b := []byte(truncate(s, maxReplyLine))
	for i, c := range b {
		if c < ' ' || c >= 0x7f {
			b[i] = '?'
		}
	}
	return strings.TrimSpace(string(b))
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}
