package downgrade

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/emersion/go-message"
)

// crlf turns a readable test message into the CRLF form the spool holds.
func crlf(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r\n", "\n"), "\n", "\r\n")
}

func convert(t *testing.T, msg string) (string, *Plan) {
	t.Helper()
	p, err := Analyze(strings.NewReader(msg))
	if err != nil {
		t.Fatalf("Analyze: %v", err)
	}
	if !p.Needed() {
		return msg, p
	}
	var out bytes.Buffer
	if err := p.Convert(&out, strings.NewReader(msg)); err != nil {
		t.Fatalf("Convert: %v", err)
	}
	return out.String(), p
}

// leafParts is the decoded content of every leaf part, in order, with its
// header fields, as go-message (a MIME library we do not own) reads it.
type leafPart struct {
	typ  string
	body string
}

func leafParts(t *testing.T, msg string) []leafPart {
	t.Helper()
	e, err := message.Read(strings.NewReader(msg))
	if err != nil && !message.IsUnknownCharset(err) {
		t.Fatalf("go-message cannot read the message: %v\n%s", err, msg)
	}
	var out []leafPart
	var visit func(e *message.Entity)
	visit = func(e *message.Entity) {
		if mr := e.MultipartReader(); mr != nil {
			for {
				p, err := mr.NextPart()
				if err == io.EOF {
					return
				}
				if err != nil {
					t.Fatalf("next part: %v", err)
				}
				visit(p)
			}
		}
		typ, _, _ := e.Header.ContentType()
		b, err := io.ReadAll(e.Body)
		if err != nil {
			t.Fatalf("reading a part: %v", err)
		}
		out = append(out, leafPart{typ: typ, body: string(b)})
	}
	visit(e)
	return out
}

func check7Bit(t *testing.T, msg string) {
	t.Helper()
	for i, line := range strings.Split(msg, "\r\n") {
		if Has8Bit([]byte(line)) {
			t.Fatalf("line %d has 8-bit octets: %q", i+1, line)
		}
		if len(line) > 998 {
			t.Fatalf("line %d is %d octets long", i+1, len(line))
		}
	}
}

const mixed = `Received: from a by b; Fri, 2 Jan 2026 15:04:05 +0000
From: Jörg <joerg@example.org>
To: bob@example.net
Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=
MIME-Version: 1.0
Content-Type: multipart/mixed; boundary="outer"
Content-Transfer-Encoding: 8bit

This is a multi-part message in MIME format.
--outer
Content-Type: multipart/alternative;
 boundary="inner"

--inner
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Grüße aus Köln = 100 €
A line with trailing space 
--inner
Content-Type: text/html; charset=utf-8
Content-Transfer-Encoding: 8BIT

<p>Grüße aus Köln</p>
--inner--

--outer
Content-Type: application/pdf; name="report.pdf"
Content-Transfer-Encoding: base64

JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K
--outer
Content-Type: text/plain; charset=us-ascii

plain ascii part
--outer--
epilogue
`

func TestConvertMultipart(t *testing.T) {
	// The From: display name above is raw UTF-8 in a header: refused, as
	// only SMTPUTF8 may carry it; the body conversion is tested with an
	// encoded-word instead.
	msg := crlf(strings.Replace(mixed, "From: Jörg", "From: =?utf-8?q?J=C3=B6rg?=", 1))
	out, p := convert(t, msg)
	if !p.Needed() {
		t.Fatal("Needed() = false for a message with 8-bit text")
	}
	check7Bit(t, out)
	want, got := leafParts(t, msg), leafParts(t, out)
	if len(got) != len(want) {
		t.Fatalf("converted message has %d leaf parts, want %d:\n%s", len(got), len(want), out)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("part %d decodes to %q (%s), want %q (%s)", i, got[i].body, got[i].typ, want[i].body, want[i].typ)
		}
	}
	// Structure and untouched parts stay byte for byte.
	for _, s := range []string{
		"This is a multi-part message in MIME format.\r\n--outer\r\n",
		"Content-Type: multipart/alternative;\r\n boundary=\"inner\"\r\n\r\n--inner\r\n",
		"--inner--\r\n\r\n--outer\r\n",
		"JVBERi0xLjQKJcfsj6IKNSAwIG9iago8PC9MZW5ndGggNiAwIFI+PgpzdHJlYW0K\r\n--outer\r\n",
		"Content-Type: text/plain; charset=us-ascii\r\n\r\nplain ascii part\r\n--outer--\r\nepilogue\r\n",
		"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n",
	} {
		if !strings.Contains(out, s) {
			t.Errorf("converted message lacks %q:\n%s", s, out)
		}
	}
	// The top level said 8bit for what is now 7-bit; the text parts are
	// quoted-printable, trailing white space encoded.
	if !strings.Contains(out, "Content-Type: multipart/mixed; boundary=\"outer\"\r\nContent-Transfer-Encoding: 7bit\r\n\r\n") {
		t.Errorf("the multipart's encoding was not relabelled 7bit:\n%s", out)
	}
	if !strings.Contains(out, "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe aus K=C3=B6ln =3D 100 =E2=82=AC\r\nA line with trailing space=20\r\n--inner\r\n") {
		t.Errorf("text part not encoded as expected:\n%s", out)
	}
	if strings.Count(out, "Content-Transfer-Encoding: quoted-printable") != 2 {
		t.Errorf("want exactly the two 8-bit text parts re-encoded:\n%s", out)
	}
}

func TestNoConversionFor7Bit(t *testing.T) {
	msg := crlf("From: a@example.org\nContent-Type: text/plain\nContent-Transfer-Encoding: 8bit\n\nascii only\n")
	p, err := Analyze(strings.NewReader(msg))
	if err != nil || p.Needed() {
		t.Fatalf("Analyze = %v, %v; want no conversion for a message without 8-bit octets", p, err)
	}
}

func TestRefusals(t *testing.T) {
	for _, tc := range []struct {
		name, msg, reason string
	}{
		{"8-bit header", "From: a@example.org\nSubject: Grüße\n\nbody\n", `the header field "Subject" contains non-ASCII`},
		{"8-bit part header", "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Disposition: attachment; filename=\"Übersicht.txt\"\n\nx\n--b--\n", `"Content-Disposition"`},
		{"8-bit header, 7-bit body", "Subject: Grüße\n\nascii\n", "non-ASCII"},
		{"attached message", "MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: message/rfc822\n\nSubject: x\n\nGrüße\n--b--\n", "attached message (message/rfc822)"},
		{"base64 with 8-bit", "MIME-Version: 1.0\nContent-Type: text/plain\nContent-Transfer-Encoding: base64\n\nR3LDvMOfZQ==ü\n", "declared base64"},
		{"unknown encoding", "MIME-Version: 1.0\nContent-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\nü\n", `unknown encoding "x-uuencode"`},
		{"multipart without boundary", "MIME-Version: 1.0\nContent-Type: multipart/mixed\n\nü\n", "without a usable boundary"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Analyze(strings.NewReader(crlf(tc.msg)))
			var e *Error
			if !errors.As(err, &e) || !strings.Contains(e.Reason, tc.reason) {
				t.Fatalf("Analyze = %v; want *Error with %q", err, tc.reason)
			}
		})
	}
}

func TestNonMIMEMessage(t *testing.T) {
	for _, tc := range []struct{ body, charset string }{
		{"Grüße\n", "utf-8"},
		{"Gr\xfc\xdfe\n", "unknown-8bit"}, // Latin-1: no valid UTF-8
	} {
		msg := crlf("From: a@example.org\nSubject: test\n\n" + tc.body)
		out, _ := convert(t, msg)
		check7Bit(t, out)
		if !strings.Contains(out, "Subject: test\r\nMIME-Version: 1.0\r\nContent-Type: text/plain; charset="+tc.charset+"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n") {
			t.Errorf("MIME header fields not added as expected:\n%s", out)
		}
		if got := leafParts(t, out); tc.charset == "utf-8" && got[0].body != "Grüße\r\n" {
			t.Errorf("decodes to %q", got[0].body)
		}
	}
}

func TestConvertLongLineAndDuplicateEncoding(t *testing.T) {
	long := strings.Repeat("ä", 3000) // 6000 octets: longer than SMTP allows, and than one QP line
	msg := crlf("MIME-Version: 1.0\nContent-Transfer-Encoding: 8bit\nContent-Type: text/plain; charset=utf-8\nContent-Transfer-Encoding: binary\n\n" + long + "\nend\n")
	out, _ := convert(t, msg)
	check7Bit(t, out)
	if strings.Count(out, "Content-Transfer-Encoding") != 1 {
		t.Errorf("want one encoding field left:\n%.400s", out)
	}
	if got := leafParts(t, out); got[0].body != long+"\r\nend\r\n" {
		t.Errorf("long line does not survive the conversion")
	}
}

func TestPreambleWith8Bit(t *testing.T) {
	msg := crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\nPräambel\n--b\nContent-Type: text/plain\n\nü\n--b--\nEpilog ö\n")
	out, _ := convert(t, msg)
	check7Bit(t, out)
	if !strings.Contains(out, "\r\nPr??ambel\r\n--b\r\n") || !strings.Contains(out, "--b--\r\nEpilog ??\r\n") {
		t.Errorf("preamble and epilogue not kept as ASCII:\n%s", out)
	}
}

func TestChangedBetweenPasses(t *testing.T) {
	msg := crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nü\n--b--\n")
	p, err := Analyze(strings.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	other := crlf("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nü\n--b\n\nx\n--b--\n")
	if err := p.Convert(io.Discard, strings.NewReader(other)); !errors.Is(err, ErrChanged) {
		t.Fatalf("Convert of another message = %v, want ErrChanged", err)
	}
}

func TestDetector(t *testing.T) {
	var d Detector
	io.WriteString(&d, strings.Repeat("ascii ", 100))
	if d.EightBit {
		t.Fatal("8-bit reported for ASCII")
	}
	io.WriteString(&d, "x\xc3\xa4")
	if !d.EightBit {
		t.Fatal("8-bit octet not seen")
	}
}
