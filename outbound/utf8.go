package outbound

import (
	"fmt"
	"slices"

	"securerelay/dkim"
	"securerelay/queue"
	"securerelay/smtputil"
)

// SMTPUTF8 (RFC 6531) at delivery. A message the queue flags as needing
// it goes to a next hop that offers SMTPUTF8 with the parameter and its
// addresses as the sender wrote them. To a next hop that does not, RFC
// 6531 §3.2 allows no conversion of the message: the only thing that may
// change is the form of a domain name, U-labels to the equivalent
// A-labels (RFC 5890), so
//
//   - an envelope address whose domain alone is non-ASCII goes out with
//     A-labels, and the message without SMTPUTF8, when the header is all
//     ASCII (a header field in UTF-8, RFC 6532, is exactly what such a
//     server cannot take; RFC 6857's downgrade is for a mail store after
//     delivery, not for transport);
//   - anything else (a UTF-8 local part of the sender or of a recipient,
//     UTF-8 in the header) is not sent: 5.6.7, permanent, as Postfix
//     answers it ("SMTPUTF8 is required, but was not offered by host").
//     Outbound mail returns to its sender with a DSN that says why;
//     inbound mail is held (it is never bounced), with the log line.
//
// Nothing is ever sent mangled: no '?' for a character, no encoded word
// in an address.

// envelopePlan is how one transaction's envelope goes to one session.
type envelopePlan struct {
	from  string   // MAIL FROM as sent
	rcpts []string // RCPT TO as sent, by index; "" where refused
	// refused says, by index, why a recipient cannot go to this session
	// (a UTF-8 local part and no SMTPUTF8); "" for one that goes.
	refused []string
	// whole, if set, is why nothing can go: the sender's local part or
	// the header (wholeWhat) needs SMTPUTF8, which the session does not
	// offer.
	whole     string
	wholeWhat utf8Part
	smtputf8  bool // MAIL with SMTPUTF8
}

// utf8Part is what keeps a message from a next hop without SMTPUTF8.
type utf8Part int

const (
	utf8Recipient utf8Part = iota
	utf8Sender
	utf8Header
)

// planEnvelope decides the envelope of d for a session whose EHLO/LHLO
// did (offered) or did not offer SMTPUTF8. A header that cannot be read
// is an error: the caller defers, as for any spool read failure.
func planEnvelope(d *queue.Delivery, rcpts []string, offered bool) (envelopePlan, error) {
	p := envelopePlan{from: d.Envelope.From, rcpts: append([]string(nil), rcpts...), refused: make([]string, len(rcpts))}
	// The flag decides; an address that needs SMTPUTF8 without it (a
	// spool file written by hand, a bug) is treated as flagged, never
	// sent raw to a server that did not offer SMTPUTF8.
	if !d.Envelope.SMTPUTF8 && !smtputil.NeedsSMTPUTF8(d.Envelope.From) && !slices.ContainsFunc(rcpts, smtputil.NeedsSMTPUTF8) {
		return p, nil
	}
	if offered {
		p.smtputf8 = true
		return p, nil
	}
	from, ok := smtputil.DowngradeAddress(d.Envelope.From)
	if !ok {
		p.whole, p.wholeWhat = fmt.Sprintf("the sender <%s> has non-ASCII characters before the @", d.Envelope.From), utf8Sender
		return p, nil
	}
	nonASCII, err := headerNeedsSMTPUTF8(d)
	if err != nil {
		return p, err
	}
	if nonASCII {
		p.whole, p.wholeWhat = "the message header has non-ASCII characters (UTF-8 header fields, RFC 6532)", utf8Header
		return p, nil
	}
	p.from = from
	for i, rc := range rcpts {
		if a, ok := smtputil.DowngradeAddress(rc); ok {
			p.rcpts[i] = a
		} else {
			p.rcpts[i] = ""
			p.refused[i] = fmt.Sprintf("the recipient <%s> has non-ASCII characters before the @", rc)
		}
	}
	return p, nil
}

// headerNeedsSMTPUTF8 reports an octet above 0x7f in the message header.
func headerNeedsSMTPUTF8(d *queue.Delivery) (bool, error) {
	r, err := d.Open()
	if err != nil {
		return false, err
	}
	defer r.Close()
	h, err := dkim.ReadHeader(r, dkim.MaxHeaderBytes)
	if err != nil {
		return false, err
	}
	for _, c := range h {
		if c >= 0x80 {
			return true, nil
		}
	}
	return false, nil
}

// noSMTPUTF8 is the result for what planEnvelope refused: permanent,
// 5.6.7 (RFC 6531 §3.5: non-ASCII addresses not permitted for that
// recipient; Postfix uses it for the header as well), with the reply in
// the log and the queue, and the words for the sender's DSN.
func noSMTPUTF8(relay, why string, what utf8Part) queue.Result {
	r := queue.Result{Status: queue.PermFail, Code: "5.6.7", Relay: relay,
		Reply: fmt.Sprintf("SMTPUTF8 is required, but was not offered by host %s: %s; not sent", relay, why)}
	switch what {
	case utf8Sender:
		r.Explanation = "The receiving mail server does not support internationalised mail (SMTPUTF8, RFC 6531), and " + why +
			", which has no ASCII form. Nothing was sent. Send the message again from an address that is all ASCII."
	case utf8Header:
		r.Explanation = "The receiving mail server does not support internationalised mail (SMTPUTF8, RFC 6531), and " + why +
			": an address or name in From:, To:, Cc: or Subject: written in UTF-8 rather than MIME-encoded. Nothing was sent. " +
			"Write the addresses in ASCII (for a domain, its xn-- form) or let the mail program encode the names, then send it again."
	default:
		r.Explanation = "The receiving mail server does not support internationalised mail (SMTPUTF8, RFC 6531), and " + why +
			", which has no ASCII form, so no mail can reach this address there. Nothing was sent. Ask the recipient for an address that is all ASCII."
	}
	return r
}
