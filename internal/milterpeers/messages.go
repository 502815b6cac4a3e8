package milterpeers

import (
	"encoding/base64"
	"fmt"
	"net/mail"
	"strings"
	"sync/atomic"
	"time"
)

// EICAR is the anti-virus test file (68 bytes), which every scanner
// detects and which harms nothing.
const EICAR = `X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*`

// GTUBE is the Generic Test for Unsolicited Bulk Email: rspamd (like
// SpamAssassin) treats a text part containing it as spam whatever else it
// says. rspamd 3.4 looks for it only in text parts of at most 8 KiB.
const GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

var msgSeq atomic.Uint64

// Message builds a well-formed message (CRLF line ends, ending in CRLF)
// from from to to: Date (now), From, To, Subject, a unique Message-ID,
// MIME-Version, then extra header lines as given, and body. It is the
// base of the other builders; its fields keep rspamd's score of a plain
// message near zero (a Message-ID with a fully qualified right-hand side
// that does not contain the sender's address, a current Date).
func Message(from, to, subject string, extra []string, body string) string {
	var b strings.Builder
	n := msgSeq.Add(1)
	domain := "sender.example"
	if at := strings.LastIndexByte(from, '@'); at >= 0 && at < len(from)-1 {
		domain = from[at+1:]
	}
	fmt.Fprintf(&b, "Date: %s\r\n", time.Now().UTC().Format(time.RFC1123Z))
	fmt.Fprintf(&b, "From: %s\r\n", (&mail.Address{Address: from}).String())
	fmt.Fprintf(&b, "To: %s\r\n", (&mail.Address{Address: to}).String())
	fmt.Fprintf(&b, "Subject: %s\r\n", subject)
	fmt.Fprintf(&b, "Message-ID: <%d.%d@check.%s>\r\n", time.Now().UnixNano(), n, domain)
	b.WriteString("MIME-Version: 1.0\r\n")
	for _, h := range extra {
		b.WriteString(h + "\r\n")
	}
	b.WriteString("\r\n")
	b.WriteString(body)
	if body != "" && !strings.HasSuffix(body, "\r\n") {
		b.WriteString("\r\n")
	}
	return b.String()
}

// CleanMessage is a short plain-text business message that no scanner
// objects to.
func CleanMessage(from, to string) string {
	return Message(from, to, "Quarterly report", []string{"Content-Type: text/plain; charset=utf-8"},
		"Hello,\r\n\r\nplease find the figures for the last quarter below. Revenue grew\r\n"+
			"slightly, costs stayed flat, and the new office opens in March.\r\n\r\nRegards,\r\nAlice\r\n")
}

// GTUBEMessage carries GTUBE in a small text/plain body: rspamd refuses
// it with "554 5.7.1 Gtube pattern".
func GTUBEMessage(from, to string) string {
	return Message(from, to, "Test spam mail (GTUBE)", []string{"Content-Type: text/plain; charset=us-ascii"},
		"This is the GTUBE, the\r\n\tGeneric\r\n\tTest for\r\n\tUnsolicited\r\n\tBulk\r\n\tEmail\r\n\r\n"+
			GTUBE+"\r\n\r\nYou should send this test mail from an account outside of your network.\r\n")
}

// EICARMessage is a multipart/mixed message with a short text and the
// EICAR file attached (base64, as invoice.com): clamav-milter refuses it
// with "550 5.7.1 Virus found: Local.EICAR.Test.String.UNOFFICIAL"; rspamd
// scores it below any action (about 4, mostly for the .com attachment).
func EICARMessage(from, to string) string {
	return Message(from, to, "Invoice", []string{`Content-Type: multipart/mixed; boundary="b1"`},
		"--b1\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\nThe invoice is attached.\r\n\r\n"+
			"--b1\r\nContent-Type: application/octet-stream; name=\"invoice.com\"\r\n"+
			"Content-Transfer-Encoding: base64\r\nContent-Disposition: attachment; filename=\"invoice.com\"\r\n\r\n"+
			base64.StdEncoding.EncodeToString([]byte(EICAR))+"\r\n--b1--\r\n")
}
