package main

import (
	"bytes"
	"compress/zlib"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/emersion/go-msgauth/dkim"
)

// The names the benchmark's DNS answers for. The sender's domain publishes
// MX, SPF, a DKIM key and DMARC p=reject, as a well-run sender does, so
// that both relays' envelope checks and securerelay's SPF/DKIM/DMARC do
// their full work and pass.
const (
	senderDomain = "sender.example"
	senderHost   = "mail.sender.example" // the client's EHLO name and PTR
	sender       = "alice@" + senderDomain
	rcptDomain   = "inbound.example"
	dnsblZone    = "dnsbl.example"
	dkimSelector = "bench"
	recipients   = 50
	// The Message-ID's local part is replaced for every message sent
	// (the field is not signed), so that no scanner sees one twice.
	midToken = "MSGID-PLACEHOLDER"
)

// rcptAddr is the i-th recipient (0-based) of the recipient list both
// relays know.
func rcptAddr(i int) string { return fmt.Sprintf("user%02d@%s", i%recipients+1, rcptDomain) }

// gen writes into dir: zone.txt (the DNS data), text.eml and pdf.eml (the
// two messages, CRLF), their LF copies for smtp-source -F (*.lf.eml), and
// recipients.txt. The messages are DKIM-signed with a fresh RSA-2048 key
// whose record is in the zone; the content is the same at every run (a
// fixed seed), only the Date and the signature change.
func gen(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	pub, err := x509.MarshalPKIXPublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "zone.txt"), []byte(zone(base64.StdEncoding.EncodeToString(pub))), 0o644); err != nil {
		return err
	}
	rng := mrand.New(mrand.NewPCG(15, 2026))
	date := time.Now().UTC().Format(time.RFC1123Z)
	msgs := map[string]string{
		"text": textMessage(rng, date),
		"pdf":  pdfMessage(rng, date),
	}
	for name, m := range msgs {
		var signed bytes.Buffer
		err := dkim.Sign(&signed, strings.NewReader(m), &dkim.SignOptions{
			Domain: senderDomain, Selector: dkimSelector, Signer: key,
			HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed,
			// Not Message-ID: the load client varies it.
			HeaderKeys: []string{"From", "To", "Subject", "Date", "MIME-Version", "Content-Type", "Content-Transfer-Encoding"},
		})
		if err != nil {
			return fmt.Errorf("signing %s: %w", name, err)
		}
		if err := os.WriteFile(filepath.Join(dir, name+".eml"), signed.Bytes(), 0o644); err != nil {
			return err
		}
		lf := bytes.ReplaceAll(signed.Bytes(), []byte("\r\n"), []byte("\n"))
		if err := os.WriteFile(filepath.Join(dir, name+".lf.eml"), lf, 0o644); err != nil {
			return err
		}
	}
	var rl strings.Builder
	for i := range recipients {
		rl.WriteString(rcptAddr(i) + "\n")
	}
	return os.WriteFile(filepath.Join(dir, "recipients.txt"), []byte(rl.String()), 0o644)
}

// zone is the DNS data: the sender's domain, ours, the DNS blocklist
// (which lists only its RFC 5782 test address 127.0.0.2, so the client
// 127.0.0.1 passes) and the reverse zone. The SOA minimum of one hour is
// the negative TTL, which makes postscreen keep a "not listed" answer for
// an hour, like securerelay's cache_ttl.
func zone(dkimKey string) string {
	var txt []string
	rec := "v=DKIM1; k=rsa; p=" + dkimKey
	for len(rec) > 0 {
		n := min(len(rec), 250)
		txt = append(txt, `"`+rec[:n]+`"`)
		rec = rec[n:]
	}
	soa := func(z string) string {
		return z + ". 3600 IN SOA ns." + z + ". hostmaster." + z + ". 1 3600 600 86400 3600\n"
	}
	return "$TTL 3600\n" +
		soa(senderDomain) +
		senderDomain + ". MX 10 " + senderHost + ".\n" +
		senderDomain + `. TXT "v=spf1 ip4:127.0.0.0/8 -all"` + "\n" +
		senderHost + ". A 127.0.0.1\n" +
		dkimSelector + "._domainkey." + senderDomain + ". TXT " + strings.Join(txt, " ") + "\n" +
		"_dmarc." + senderDomain + `. TXT "v=DMARC1; p=reject; rua=mailto:dmarc@` + senderDomain + `"` + "\n" +
		soa(rcptDomain) +
		rcptDomain + ". MX 10 mx." + rcptDomain + ".\n" +
		"mx." + rcptDomain + ". A 127.0.0.1\n" +
		soa(dnsblZone) +
		"2.0.0.127." + dnsblZone + ". A 127.0.0.2\n" +
		"2.0.0.127." + dnsblZone + `. TXT "test entry (RFC 5782)"` + "\n" +
		soa("127.in-addr.arpa") +
		"1.0.0.127.in-addr.arpa. PTR " + senderHost + ".\n"
}

var words = strings.Fields(`the invoice for March is attached and the figures for the last quarter
are below revenue grew slightly while costs stayed flat we expect the new office to open
in spring please confirm the delivery dates with the warehouse team and let me know whether
the order numbers match your records our accounting closes the books on Friday so any
correction should reach us before then thank you for the quick answer regarding the contract
renewal the legal department has reviewed the draft and suggests two small changes in section
four concerning liability and the notice period`)

// paragraphs makes about n bytes of plain business prose, wrapped at 72
// columns, CRLF.
func paragraphs(rng *mrand.Rand, n int) string {
	var b strings.Builder
	line := 0
	for b.Len() < n {
		w := words[rng.IntN(len(words))]
		if line+len(w)+1 > 72 {
			b.WriteString("\r\n")
			line = 0
			if rng.IntN(6) == 0 {
				b.WriteString("\r\n")
			}
		}
		if line > 0 {
			b.WriteByte(' ')
			line++
		}
		b.WriteString(w)
		line += len(w)
	}
	b.WriteString("\r\n")
	return b.String()
}

// header is what a message from another organisation's MTA carries: its
// own Received fields (submission, then its outbound relay), the author
// fields, a Message-ID (replaced per message) and MIME fields.
func header(date, subject string, extra ...string) string {
	h := []string{
		"Received: from " + senderHost + " (" + senderHost + " [127.0.0.1])\r\n\tby relay.sender.example (Postfix) with ESMTPS id 4Qk2Lm0xYzz1\r\n\tfor <user01@" + rcptDomain + ">; " + date,
		"Received: from [10.20.30.40] (ws17.office.sender.example [10.20.30.40])\r\n\t(Authenticated sender: alice)\r\n\tby " + senderHost + " (Postfix) with ESMTPSA id 4Qk2Ll6Tr8z9\r\n\tfor <user01@" + rcptDomain + ">; " + date,
		"From: Alice Example <" + sender + ">",
		"To: Team Inbound <user01@" + rcptDomain + ">",
		"Subject: " + subject,
		"Date: " + date,
		"Message-ID: <" + midToken + "@" + senderHost + ">",
		"MIME-Version: 1.0",
		"User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:115.0) Gecko/20100101 Thunderbird/115.6.0",
		"Content-Language: en-US",
	}
	return strings.Join(append(h, extra...), "\r\n") + "\r\n\r\n"
}

// textMessage: about 4 KiB of text/plain, the everyday message.
func textMessage(rng *mrand.Rand, date string) string {
	return header(date, "Quarterly figures and the plan for March",
		"Content-Type: text/plain; charset=UTF-8; format=flowed",
		"Content-Transfer-Encoding: 7bit") +
		"Hello team,\r\n\r\n" + paragraphs(rng, 3500) + "\r\nBest regards,\r\nAlice\r\n"
}

// pdfMessage: a short text and an invoice PDF of about 100 KiB (three
// pages of compressed text and a compressed image), the attachment a
// scanner spends most of its time on.
func pdfMessage(rng *mrand.Rand, date string) string {
	pdf := makePDF(rng)
	enc := base64.StdEncoding.EncodeToString(pdf)
	var b64 strings.Builder
	for len(enc) > 76 {
		b64.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b64.WriteString(enc + "\r\n")
	return header(date, "Invoice 2026-0117",
		`Content-Type: multipart/mixed; boundary="------------0Kx8fIHkB1bQ2rKdL3c9vWzy"`) +
		"This is a multi-part message in MIME format.\r\n" +
		"--------------0Kx8fIHkB1bQ2rKdL3c9vWzy\r\n" +
		"Content-Type: text/plain; charset=UTF-8; format=flowed\r\nContent-Transfer-Encoding: 7bit\r\n\r\n" +
		"Hello,\r\n\r\n" + paragraphs(rng, 600) + "\r\nRegards,\r\nAlice\r\n\r\n" +
		"--------------0Kx8fIHkB1bQ2rKdL3c9vWzy\r\n" +
		"Content-Type: application/pdf; name=\"Invoice-2026-0117.pdf\"\r\n" +
		"Content-Disposition: attachment; filename=\"Invoice-2026-0117.pdf\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" +
		b64.String() + "\r\n" +
		"--------------0Kx8fIHkB1bQ2rKdL3c9vWzy--\r\n"
}

func deflate(p []byte) []byte {
	var b bytes.Buffer
	w := zlib.NewWriter(&b)
	w.Write(p) //nolint:errcheck // bytes.Buffer does not fail
	w.Close()
	return b.Bytes()
}

// makePDF builds a small valid PDF 1.4: catalog, three pages of
// Flate-compressed text in Helvetica, one Flate-compressed RGB image, and
// a cross-reference table with the real offsets, so that a scanner parses
// and inflates it like a real invoice.
func makePDF(rng *mrand.Rand) []byte {
	var b bytes.Buffer
	var offsets []int
	obj := func(body []byte) int {
		offsets = append(offsets, b.Len())
		fmt.Fprintf(&b, "%d 0 obj\n", len(offsets))
		b.Write(body)
		b.WriteString("\nendobj\n")
		return len(offsets)
	}
	stream := func(dict string, data []byte) []byte {
		return fmt.Appendf(nil, "<< %s /Filter /FlateDecode /Length %d >>\nstream\n%s\nendstream", dict, len(data), data)
	}
	b.WriteString("%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
	const pages = 3
	obj([]byte("<< /Type /Catalog /Pages 2 0 R >>"))
	kids := make([]string, pages)
	for i := range kids {
		kids[i] = fmt.Sprintf("%d 0 R", 6+2*i)
	}
	obj(fmt.Appendf(nil, "<< /Type /Pages /Kids [%s] /Count %d >>", strings.Join(kids, " "), pages))
	obj([]byte("<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>"))
	const w, h = 200, 150
	img := make([]byte, w*h*3)
	for i := range img {
		img[i] = byte(rng.Uint32())
	}
	obj(stream(fmt.Sprintf("/Type /XObject /Subtype /Image /Width %d /Height %d /ColorSpace /DeviceRGB /BitsPerComponent 8", w, h), deflate(img)))
	obj([]byte("<< /Producer (LibreOffice 7.4) /Title (Invoice 2026-0117) >>"))
	for p := range pages {
		var c strings.Builder
		c.WriteString("BT /F1 10 Tf 56 790 Td 13 TL\n")
		for _, line := range strings.Split(paragraphs(rng, 2500), "\r\n") {
			fmt.Fprintf(&c, "(%s) '\n", line)
		}
		c.WriteString("ET\n")
		if p == 0 {
			c.WriteString("q 200 0 0 150 360 620 cm /Im1 Do Q\n")
		}
		page := len(offsets) + 1
		obj(fmt.Appendf(nil, "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 595 842] /Resources << /Font << /F1 3 0 R >> /XObject << /Im1 4 0 R >> >> /Contents %d 0 R >>", page+1))
		obj(stream("", deflate([]byte(c.String()))))
	}
	xref := b.Len()
	fmt.Fprintf(&b, "xref\n0 %d\n0000000000 65535 f \n", len(offsets)+1)
	for _, o := range offsets {
		fmt.Fprintf(&b, "%010d 00000 n \n", o)
	}
	fmt.Fprintf(&b, "trailer\n<< /Size %d /Root 1 0 R /Info 5 0 R >>\nstartxref\n%d\n%%%%EOF\n", len(offsets)+1, xref)
	return b.Bytes()
}
