package milterpeers

import (
	"bytes"
	"encoding/base64"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"strings"
	"testing"
)

func parse(t *testing.T, raw string) *mail.Message {
	t.Helper()
	if strings.Contains(strings.ReplaceAll(raw, "\r\n", ""), "\n") || !strings.HasSuffix(raw, "\r\n") {
		t.Fatalf("not CRLF throughout, or no final CRLF: %q", raw)
	}
	m, err := mail.ReadMessage(strings.NewReader(raw))
	if err != nil {
		t.Fatalf("net/mail: %v\n%s", err, raw)
	}
	for _, h := range []string{"Date", "From", "To", "Subject", "Message-Id", "Mime-Version"} {
		if m.Header.Get(h) == "" {
			t.Errorf("no %s field:\n%s", h, raw)
		}
	}
	if _, err := m.Header.Date(); err != nil {
		t.Errorf("Date: %v", err)
	}
	if a, err := m.Header.AddressList("From"); err != nil || len(a) != 1 || a[0].Address != "alice@sender.example" {
		t.Errorf("From %v, %v", a, err)
	}
	// rspamd's MID_CONTAINS_FROM fires when the Message-ID contains the
	// sender's address.
	if id := m.Header.Get("Message-Id"); strings.Contains(id, "alice@sender.example") || !strings.HasSuffix(id, "@check.sender.example>") {
		t.Errorf("Message-ID %q", id)
	}
	return m
}

func TestMessages(t *testing.T) {
	clean := CleanMessage("alice@sender.example", "bob@example.net")
	m := parse(t, clean)
	if body, _ := io.ReadAll(m.Body); strings.Contains(string(body), GTUBE) || strings.Contains(string(body), EICAR) {
		t.Error("the clean message carries a test pattern")
	}

	g := parse(t, GTUBEMessage("alice@sender.example", "bob@example.net"))
	body, _ := io.ReadAll(g.Body)
	// rspamd 3.4 ignores GTUBE in text parts larger than 8 KiB.
	if !bytes.Contains(body, []byte(GTUBE)) || len(body) > 8<<10 {
		t.Errorf("GTUBE body (%d bytes) lacks the pattern or is too large", len(body))
	}

	e := parse(t, EICARMessage("alice@sender.example", "bob@example.net"))
	mt, params, err := mime.ParseMediaType(e.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/mixed" {
		t.Fatalf("Content-Type %q: %v", e.Header.Get("Content-Type"), err)
	}
	mr := multipart.NewReader(e.Body, params["boundary"])
	var attached []byte
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if p.FileName() == "invoice.com" {
			raw, _ := io.ReadAll(p)
			if attached, err = base64.StdEncoding.DecodeString(strings.TrimSpace(string(raw))); err != nil {
				t.Fatal(err)
			}
		}
	}
	// The exact 68 bytes: the .hdb signature is their MD5.
	if string(attached) != EICAR || len(attached) != 68 {
		t.Errorf("attachment %q, want the 68-byte EICAR file", attached)
	}

	if a, b := CleanMessage("a@x.example", "b@y.example"), CleanMessage("a@x.example", "b@y.example"); a == b {
		t.Error("two messages share a Message-ID")
	}
}
