package outbound

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"

	"securerelay/smtputil"
)

// The null sender (RFC 5321 §4.5.5) is for notifications about other
// mail. Whether a message is one is decided by its content, not by its
// Content-Type header alone, which any application can write: the message
// must be a multipart/report (RFC 6522) whose report part is a
// message/delivery-status (RFC 3464) or message/disposition-notification
// (RFC 8098), or their RFC 6533 "global" forms, and that part must parse.
//
// How strict, and why: the parser is not a signature check, since whoever
// can send from <> can also write a well-formed report with any text in
// its human-readable part. What it reliably stops is what the finding was
// about: ordinary mail (ticket notifications, auto-replies, anything
// written by hand) that merely claims to be a report. So the structure and
// the fields every real generator writes are required, as RFC 3464 and
// RFC 8098 require them, and everything a generator may vary is tolerated:
//
//   - the report part is a direct child of the top-level multipart/report
//     whose report-type names it (a report forwarded inside another message
//     is not a notification from this sender), in any position among the
//     first maxReportParts parts (RFC 6522 puts it second; Exchange's
//     human-readable part is itself a multipart/alternative); the global
//     form of the part is accepted under either report-type;
//   - any Content-Transfer-Encoding go-message decodes, any header case
//     (Exim writes "Content-type"), CRLF or LF, blank lines around groups;
//   - DSN: a per-message group with Reporting-MTA, then at least one
//     per-recipient group, each with Final-Recipient (address-type;
//     address), Action (failed, delayed, delivered, relayed, expanded) and
//     Status (RFC 3463 syntax; a comment after it is ignored, as some MTAs
//     write one); unknown and X- fields are ignored (Postfix, Exchange);
//   - MDN: one group with Final-Recipient and a Disposition of the form
//     action-mode/sending-mode; type, with a type RFC 8098 or RFC 3798
//     defines (Thunderbird, Dovecot, Cyrus and Zimbra Sieve rejections).
//
// The check reads at most maxReportBody bytes of the body, streaming: the
// report part comes before the returned original (RFC 6522), so a report
// whose status part does not end within that bound is not taken for one,
// and a 50 MB message costs at most that much reading and no memory.
const (
	maxReportBody  = 1 << 20
	maxReportParts = 8
)

// reportParts maps a report-type (RFC 6522 §3: the subtype of the report
// part) to the kind of report.
var reportTypes = map[string]string{
	"delivery-status":                 "dsn",
	"global-delivery-status":          "dsn", // RFC 6533
	"disposition-notification":        "mdn",
	"global-disposition-notification": "mdn", // RFC 6533
}

// checkReport returns nil when header and body (the rest of the message)
// are a delivery status or disposition notification, else why not, in
// words for the sending admin.
func checkReport(header []byte, body io.Reader) error {
	h, err := textproto.ReadHeader(bufio.NewReader(bytes.NewReader(header)))
	if err != nil {
		return fmt.Errorf("the header does not parse (%v)", err)
	}
	mh := message.Header{Header: h}
	mt, params, err := mh.ContentType()
	if err != nil || mt != "multipart/report" {
		return errors.New("it is not a multipart/report")
	}
	rt := strings.ToLower(params["report-type"])
	kind := reportTypes[rt]
	if kind == "" {
		return fmt.Errorf("its report-type %q is neither delivery-status nor disposition-notification", rt)
	}
	if params["boundary"] == "" {
		return errors.New("its multipart/report has no boundary")
	}
	e, err := message.New(mh, io.LimitReader(body, maxReportBody))
	if err != nil {
		return fmt.Errorf("its body cannot be read (%v)", err)
	}
	mr := e.MultipartReader()
	defer mr.Close()
	// The global form of the part may come under either report-type
	// (Postfix writes report-type=delivery-status for both).
	want := "message/" + strings.TrimPrefix(rt, "global-")
	for i := 1; i <= maxReportParts; i++ {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		// A part in a charset or encoding go-message does not know is
		// still a part; only the report part itself must be readable.
		if err != nil && !message.IsUnknownCharset(err) && !message.IsUnknownEncoding(err) {
			if i == 1 {
				return fmt.Errorf("its body has no parts (%v)", err)
			}
			return fmt.Errorf("its MIME structure does not parse before a %s part (%v)", want, err)
		}
		pt, _, _ := p.Header.ContentType()
		if pt != want && pt != "message/global-"+strings.TrimPrefix(want, "message/") {
			continue
		}
		if err != nil {
			return fmt.Errorf("its %s part (part %d) cannot be decoded (%v)", want, i, err)
		}
		if kind == "dsn" {
			err = parseDeliveryStatus(p.Body)
		} else {
			err = parseDisposition(p.Body)
		}
		if err != nil {
			return fmt.Errorf("its %s part (part %d) does not parse: %v", want, i, err)
		}
		return nil
	}
	return fmt.Errorf("it has no %s part among its first %d parts and %d KiB", want, maxReportParts, maxReportBody>>10)
}

// dsnActions are the Action values of RFC 3464 §2.3.3.
var dsnActions = map[string]bool{"failed": true, "delayed": true, "delivered": true, "relayed": true, "expanded": true}

// parseDeliveryStatus checks an RFC 3464 §2.1 delivery-status body: the
// per-message fields, then one or more groups of per-recipient fields.
func parseDeliveryStatus(r io.Reader) error {
	br := bufio.NewReader(r)
	msg, more, err := readGroup(br)
	if err != nil {
		return fmt.Errorf("per-message fields: %v", err)
	}
	if msg.Get("Reporting-MTA") == "" {
		return errors.New("no Reporting-MTA field in the per-message fields (RFC 3464 section 2.2)")
	}
	n := 0
	for more {
		var g textproto.Header
		g, more, err = readGroup(br)
		n++
		if err != nil {
			return fmt.Errorf("per-recipient group %d: %v", n, err)
		}
		if err := recipientField(g, "Final-Recipient"); err != nil {
			return fmt.Errorf("per-recipient group %d: %v", n, err)
		}
		for _, f := range []string{"Action", "Status"} {
			if g.Get(f) == "" {
				return fmt.Errorf("per-recipient group %d: no %s field", n, f)
			}
		}
		if a := firstWord(g.Get("Action")); !dsnActions[a] {
			return fmt.Errorf("per-recipient group %d: Action %q is not failed, delayed, delivered, relayed or expanded", n, g.Get("Action"))
		}
		if s := firstWord(g.Get("Status")); !smtputil.IsEnhancedStatus(s) {
			return fmt.Errorf("per-recipient group %d: Status %q is not a status code such as 5.1.1", n, g.Get("Status"))
		}
	}
	if n == 0 {
		return errors.New("no per-recipient fields after the per-message fields (RFC 3464 section 2.1)")
	}
	return nil
}

// mdnDispositions are the disposition types of RFC 8098 §3.2.6.2, and
// the ones RFC 3798 had (a generator may still write them).
var mdnDispositions = map[string]bool{"displayed": true, "deleted": true, "dispatched": true, "processed": true,
	"denied": true, "failed": true}

// parseDisposition checks an RFC 8098 §3.1 disposition-notification body:
// one group of fields with Final-Recipient and Disposition.
func parseDisposition(r io.Reader) error {
	g, _, err := readGroup(bufio.NewReader(r))
	if err != nil {
		return err
	}
	if err := recipientField(g, "Final-Recipient"); err != nil {
		return err
	}
	// disposition-field = "Disposition" ":" OWS disposition-mode OWS ";"
	//     OWS disposition-type [ "/" disposition-modifier ... ]
	d := g.Get("Disposition")
	if d == "" {
		return errors.New("no Disposition field")
	}
	mode, typ, ok := strings.Cut(d, ";")
	am, sm, ok2 := strings.Cut(strings.TrimSpace(mode), "/")
	typ, _, _ = strings.Cut(strings.TrimSpace(typ), "/")
	if !ok || !ok2 || am == "" || sm == "" || !mdnDispositions[strings.ToLower(strings.TrimSpace(typ))] {
		return fmt.Errorf("the Disposition %q is not of the form action-mode/sending-mode; displayed|deleted|dispatched|processed (RFC 8098 section 3.2.6)", d)
	}
	return nil
}

// readGroup reads one group of fields, skipping blank lines before it,
// and tells whether anything but blank lines follows it.
func readGroup(br *bufio.Reader) (textproto.Header, bool, error) {
	if err := skipBlankLines(br); err != nil {
		return textproto.Header{}, false, errors.New("no fields")
	}
	h, err := textproto.ReadHeader(br)
	if err != nil {
		return h, false, err
	}
	if h.Len() == 0 {
		return h, false, errors.New("no fields")
	}
	return h, skipBlankLines(br) == nil, nil
}

// skipBlankLines consumes empty lines; io.EOF when nothing else follows.
func skipBlankLines(br *bufio.Reader) error {
	for {
		b, err := br.Peek(1)
		if err != nil {
			return io.EOF
		}
		switch b[0] {
		case '\n':
			br.Discard(1)
		case '\r':
			if b2, _ := br.Peek(2); len(b2) == 2 && b2[1] == '\n' {
				br.Discard(2)
				continue
			}
			return nil
		default:
			return nil
		}
	}
}

// recipientField checks an "address-type ; generic-address" field (RFC
// 3464 §2.3.2, RFC 8098 §3.2.4).
func recipientField(g textproto.Header, name string) error {
	v := g.Get(name)
	typ, addr, ok := strings.Cut(v, ";")
	if !ok || strings.TrimSpace(typ) == "" || strings.TrimSpace(addr) == "" {
		if v == "" {
			return fmt.Errorf("no %s field", name)
		}
		return fmt.Errorf("%s %q is not of the form rfc822; address", name, v)
	}
	return nil
}

// firstWord is the lower-cased value up to the first space or comment.
func firstWord(v string) string {
	v = strings.TrimSpace(v)
	if i := strings.IndexAny(v, " \t("); i >= 0 {
		v = v[:i]
	}
	return strings.ToLower(v)
}
