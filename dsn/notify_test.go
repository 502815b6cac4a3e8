package dsn

import (
	"bytes"
	"os"
	"os/exec"
	"strings"
	"testing"
)

func successReport(action string) Report {
	r := baseReport()
	r.EnvID = "QQ 314159"
	r.Recipients = []Recipient{{
		Address:           "bob@example.net",
		OriginalRecipient: "rfc822;Bob.Smith@Example.NET",
		Action:            action,
		Status:            "2.0.0",
		RemoteMTA:         "mx.example.net",
		LastAttempt:       now,
	}}
	return r
}

func TestBuildSuccess(t *testing.T) {
	for _, tc := range []struct{ action, line, explain string }{
		{"delivered", "<bob@example.net>: delivered", "Delivered to the mailbox of:"},
		{"relayed", "<bob@example.net>: passed on to the next mail server", "does not send delivery confirmations"},
	} {
		t.Run(tc.action, func(t *testing.T) {
			r := successReport(tc.action)
			r.ReturnFull = true // never for a success: the header only (RFC 3461 §4.3)
			b, err := Build(r)
			if err != nil {
				t.Fatal(err)
			}
			p := parseDSN(t, b)
			if got := p.header.Get("Subject"); got != "Successful Mail Delivery Report" {
				t.Errorf("Subject %q", got)
			}
			text := string(p.parts[0].body)
			for _, s := range []string{tc.line, tc.explain, "You asked to be told when your message was delivered", "(you wrote to <Bob.Smith@example.net>)"} {
				if !strings.Contains(text, s) {
					t.Errorf("text lacks %q:\n%s", s, text)
				}
			}
			for _, s := range []string{"could not be delivered", "Reason:", "permanent"} {
				if strings.Contains(text, s) {
					t.Errorf("success text says %q:\n%s", s, text)
				}
			}
			g := statusGroups(t, p.parts[1].body)
			if got := g[0].Get("Original-Envelope-Id"); got != "QQ 314159" {
				t.Errorf("Original-Envelope-Id %q", got)
			}
			if !bytes.HasPrefix(p.parts[1].body, []byte("Original-Envelope-Id: QQ 314159\r\nReporting-MTA:")) {
				t.Errorf("Original-Envelope-Id not first and exact:\n%s", p.parts[1].body)
			}
			if g[1].Get("Action") != tc.action || g[1].Get("Status") != "2.0.0" || g[1].Get("Original-Recipient") != "rfc822; Bob.Smith@example.net" {
				t.Errorf("recipient group %v", g[1])
			}
			if len(p.parts) != 3 || p.parts[2].header.Get("Content-Type") != "text/rfc822-headers" || p.parts[2].header.Get("Content-Description") != "Message Headers" {
				t.Fatalf("third part: %v", p.parts[len(p.parts)-1].header)
			}
			if bytes.Contains(b, []byte("secret body text")) {
				t.Error("a success notice returned the body")
			}
		})
	}
}

func TestBuildUTF8OriginalRecipient(t *testing.T) {
	r := baseReport()
	r.Recipients[0].OriginalRecipient = "utf-8;jörg@müller.example"
	b, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	g := statusGroups(t, parseDSN(t, b).parts[1].body)
	if got := g[1].Get("Original-Recipient"); got != `utf-8; j\x{F6}rg@m\x{FC}ller.example` {
		t.Errorf("Original-Recipient %q", got)
	}
}

func TestBuildEnvIDNotPrintable(t *testing.T) {
	r := baseReport()
	r.EnvID = "a\r\nX-Injected: 1"
	b, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(b, []byte("X-Injected")) || bytes.Contains(b, []byte("Original-Envelope-Id")) {
		t.Errorf("bad ENVID written:\n%s", b)
	}
}

// RET=FULL: a failure returns the whole message as message/rfc822 (8-bit
// body text unencoded, as message/rfc822 must be); what cannot travel
// intact, or is too large, comes back as its header with a word why.
func TestBuildReturnFull(t *testing.T) {
	t.Run("whole", func(t *testing.T) {
		r := baseReport()
		r.ReturnFull = true
		b, err := Build(r)
		if err != nil {
			t.Fatal(err)
		}
		p := parseDSN(t, b)
		if len(p.parts) != 3 || p.parts[2].header.Get("Content-Type") != "message/rfc822" ||
			p.parts[2].header.Get("Content-Transfer-Encoding") != "7bit" || string(p.parts[2].body) != origMsg {
			t.Fatalf("third part %v: %q", p.parts[2].header, p.parts[2].body)
		}
		if !strings.Contains(string(p.parts[0].body), "followed by your original\r\nmessage.") {
			t.Errorf("text:\n%s", p.parts[0].body)
		}
	})
	t.Run("8-bit body", func(t *testing.T) {
		r := baseReport()
		r.ReturnFull = true
		r.Original = []byte(strings.Replace(origMsg, "secret body text", "Grüße", 1))
		b, err := Build(r)
		if err != nil {
			t.Fatal(err)
		}
		// Returned whole, its text converted to quoted-printable, so that
		// the report is 7 bit and passes a hop without 8BITMIME.
		if !bytes.Contains(b, []byte("Content-Type: message/rfc822\r\n")) || !bytes.Contains(b, []byte("Content-Transfer-Encoding: 7bit\r\n")) ||
			!bytes.Contains(b, []byte("Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe\r\n")) || needsEncoding(b) {
			t.Fatalf("8-bit original not returned as 7-bit message/rfc822:\n%s", b)
		}
	})
	t.Run("8-bit attached message", func(t *testing.T) {
		// A message/rfc822 part with 8-bit text cannot be re-encoded: the
		// header only, never an 8-bit report.
		r := baseReport()
		r.ReturnFull = true
		r.Original = []byte("From: a@example.org\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n" +
			"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: x\r\n\r\nGrüße\r\n--b--\r\n")
		b, err := Build(r)
		if err != nil {
			t.Fatal(err)
		}
		p := parseDSN(t, b)
		if p.parts[2].header.Get("Content-Type") != "text/rfc822-headers" || needsEncoding(b) {
			t.Fatalf("want the header only, 7 bit:\n%s", b)
		}
	})
	t.Run("8-bit header", func(t *testing.T) {
		r := baseReport()
		r.ReturnFull = true
		r.Original = []byte("Subject: Grüße\r\n\r\nbody\r\n")
		b, err := Build(r)
		if err != nil {
			t.Fatal(err)
		}
		p := parseDSN(t, b)
		if p.parts[2].header.Get("Content-Type") != "text/rfc822-headers" || !strings.Contains(string(p.parts[0].body), "cannot be\r\nattached unchanged") {
			t.Fatalf("want the header only, with a word why:\n%s", b)
		}
	})
	t.Run("too large", func(t *testing.T) {
		r := baseReport()
		r.ReturnFull = true
		r.TooLargeToReturn = 12 << 20
		b, err := Build(r)
		if err != nil {
			t.Fatal(err)
		}
		p := parseDSN(t, b)
		if p.parts[2].header.Get("Content-Type") != "text/rfc822-headers" || !strings.Contains(string(p.parts[0].body), "at 12.0 MB it\r\nis larger than this system returns") {
			t.Fatalf("want the header only, with the size:\n%s", p.parts[0].body)
		}
	})
}

// The notices as Python's email package, which MUAs and scripts use, reads
// them: a multipart/report with a delivery-status part whose groups carry
// the fields.
func TestBuildSuccessReadByPython(t *testing.T) {
	if _, err := exec.LookPath("python3"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatal("python3 missing (CI=true)")
		}
		t.Skip("python3 not installed")
	}
	b, err := Build(successReport("relayed"))
	if err != nil {
		t.Fatal(err)
	}
	script := `
import email, sys
from email import policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=policy.default)
assert m.get_content_type() == "multipart/report", m.get_content_type()
assert m.get_param("report-type") == "delivery-status"
parts = list(m.iter_parts())
ds = parts[1]
assert ds.get_content_type() == "message/delivery-status"
groups = ds.get_payload()
print(groups[0]["Original-Envelope-Id"])
print(groups[1]["Action"], groups[1]["Status"], groups[1]["Original-Recipient"], groups[1]["Final-Recipient"])
print(parts[2].get_content_type())
`
	cmd := exec.Command("python3", "-c", script)
	cmd.Stdin = bytes.NewReader(b)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python: %v\n%s", err, out)
	}
	want := "QQ 314159\nrelayed 2.0.0 rfc822; Bob.Smith@example.net rfc822; bob@example.net\ntext/rfc822-headers\n"
	if string(out) != want {
		t.Fatalf("python read:\n%s\nwant:\n%s", out, want)
	}
}
