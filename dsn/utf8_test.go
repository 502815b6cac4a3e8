package dsn

import (
	"bytes"
	"net/mail"
	"strings"
	"testing"
)

// TestBuildSMTPUTF8: a DSN about an internationalised message. The
// message/delivery-status part stays 7-bit (RFC 6533 §3): an address whose
// domain alone is non-ASCII is an rfc822 address in A-labels, one with a
// UTF-8 local part is of type utf-8 in utf-8-addr-xtext; the text part
// shows the addresses as the sender wrote them. A sender whose domain
// alone is non-ASCII gets a 7-bit DSN; one with a UTF-8 local part gets
// it in a UTF-8 To: (it travels with SMTPUTF8, outbound/bounce.go).
func TestBuildSMTPUTF8(t *testing.T) {
	r := baseReport()
	r.Sender = "user@bücher.example"
	r.Recipients = []Recipient{
		{Address: "jörg@müller.example", Action: "failed", Status: "5.6.7", Diagnostic: "SMTPUTF8 is required, but was not offered"},
		{Address: "anna@müller.example", Action: "failed", Status: "5.1.1"},
		{Address: "a+b=c@example.net", Action: "failed", Status: "5.1.1"},
	}
	b, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b) // 7-bit, CRLF, parts as MIME says
	if got := p.header.Get("To"); got != "<user@xn--bcher-kva.example>" {
		t.Errorf("To: %q", got)
	}
	groups := statusGroups(t, p.parts[1].body)
	if len(groups) != 4 {
		t.Fatalf("%d groups", len(groups))
	}
	for i, want := range []string{`utf-8; j\x{F6}rg@m\x{FC}ller.example`, "rfc822; anna@xn--mller-kva.example", "rfc822; a+b=c@example.net"} {
		if got := groups[i+1].Get("Final-Recipient"); got != want {
			t.Errorf("Final-Recipient %d: %q, want %q", i, got, want)
		}
	}
	if text := string(p.parts[0].body); !strings.Contains(text, "<jörg@müller.example>: could not be delivered") || !strings.Contains(text, "<anna@müller.example>") {
		t.Errorf("text part does not name the recipients as written:\n%s", text)
	}

	r.Sender = "jörg@bücher.example"
	b, err = Build(r)
	if err != nil {
		t.Fatal(err)
	}
	msg, err := mail.ReadMessage(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get("To"); got != "<jörg@bücher.example>" {
		t.Errorf("To: %q", got)
	}
}
