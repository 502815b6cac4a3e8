package inbound_test

import (
	"errors"
	"io"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"

	"securerelay/attach"
	"securerelay/attach/attachtest"
	"securerelay/authres"
	"securerelay/dnsutil/dnstest"
	"securerelay/inbound"
	"securerelay/smtpd"
)

func attachRole(t *testing.T) *inbound.Role {
	r := inbound.New([]string{"a.test", "b.test", "c.test"})
	r.SetContent(attachContent(t))
	return r
}

// attachContent: the default attachment policy, and "lenient" (accept
// with a header) for b.test.
func attachContent(t *testing.T) *inbound.Content {
	lenient := attach.DefaultPolicy()
	lenient.Name, lenient.Action = "lenient", attach.Accept
	lim := attach.DefaultLimits()
	lim.TempDir = t.TempDir()
	return &inbound.Content{Attachments: &inbound.Attachments{
		Limits:       lim,
		Policies:     map[string]*attach.Policy{"default": attach.DefaultPolicy(), "lenient": lenient},
		DomainPolicy: map[string]string{"b.test": "lenient"},
	}}
}

func message(s string) *smtpd.Message {
	return &smtpd.Message{QueueID: "Q1", Size: int64(len(s)), Open: func() (io.Reader, error) { return strings.NewReader(s), nil }}
}

// The attachment stage answers with the catalogue's bare replies, counts
// per class, and keeps one attachment policy per transaction.
func TestAttachmentStage(t *testing.T) {
	r := attachRole(t)
	exe := attachtest.Message("a@sender.example", "x@a.test", "x", attachtest.Part{Name: "Bewerbung.zip",
		Data: attachtest.Zip(t, map[string][]byte{"Bewerbung.exe": attachtest.PE()})})

	st := &smtpd.State{}
	if _, err := r.Rcpt(st, "x@a.test", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := r.Rcpt(st, "y@c.test", nil); err != nil {
		t.Errorf("same policy: %v", err)
	}
	_, err := r.Rcpt(st, "z@b.test", nil)
	bare(t, "RCPT of another policy", err, 452, smtp.EnhancedCode{4, 5, 3})
	if c := smtpd.CheckOf(err); c != "attachment_policy" {
		t.Errorf("RCPT of another policy refused as %q, want attachment_policy", c)
	}
	err = r.Data(st, message(exe))
	bare(t, "DATA with a program", err, 554, smtp.EnhancedCode{5, 7, 1})
	if !strings.Contains(err.Error(), `"Bewerbung.zip", file "Bewerbung.exe" inside it`) {
		t.Errorf("reply %q", err)
	}
	// Counted (by smtpd) as attachment, logged with the class.
	var ref *smtpd.Refusal
	if !errors.As(err, &ref) || ref.Check != "attachment" || !slices.Contains(ref.Attrs, any("executable")) {
		t.Errorf("refusal %+v, want check attachment, class executable", ref)
	}

	// The lenient domain's transaction: accepted, with a header.
	st = &smtpd.State{}
	if _, err := r.Rcpt(st, "z@b.test", nil); err != nil {
		t.Fatal(err)
	}
	msg := message(exe)
	if err := r.Data(st, msg); err != nil {
		t.Fatalf("lenient: %v", err)
	}
	if !strings.HasPrefix(msg.AddHeader, "X-Securerelay-Attachment: executable; file=\"Bewerbung.zip\", file \"Bewerbung.exe\" inside it;") ||
		!strings.Contains(msg.AddHeader, "policy=lenient\r\n") || strings.Count(msg.AddHeader, "\n") != strings.Count(msg.AddHeader, "\r\n") {
		t.Errorf("header %q", msg.AddHeader)
	}

	// An ordinary message passes untouched.
	st = &smtpd.State{}
	r.Rcpt(st, "x@a.test", nil)
	msg = message(attachtest.Message("a@sender.example", "x@a.test", "x", attachtest.Part{Name: "a.pdf", Data: attachtest.PDF()}))
	if err := r.Data(st, msg); err != nil || msg.AddHeader != "" {
		t.Errorf("ordinary: %v %q", err, msg.AddHeader)
	}
}

// A sender's own X-Securerelay-Attachment fields are removed: only the
// relay's may reach the recipient, whom they tell what was found.
func TestAttachmentForgedHeader(t *testing.T) {
	r := attachRole(t)
	forged := "X-Securerelay-Attachment: none; policy=default\r\n" +
		attachtest.Message("a@sender.example", "x@b.test", "x", attachtest.Part{Name: "Bewerbung.zip",
			Data: attachtest.Zip(t, map[string][]byte{"Bewerbung.exe": attachtest.PE()})})
	for _, c := range []struct{ rcpt, ours string }{{"x@a.test", ""}, {"z@b.test", "X-Securerelay-Attachment: executable;"}} {
		st := &smtpd.State{}
		if _, err := r.Rcpt(st, c.rcpt, nil); err != nil {
			t.Fatal(err)
		}
		msg := message(forged)
		if c.ours == "" {
			// Refused messages reach nobody; check a clean one.
			msg = message("X-Securerelay-Attachment: executable\r\nSubject: hi\r\n\r\nhello\r\n")
		}
		if err := r.Data(st, msg); err != nil {
			t.Fatalf("%s: %v", c.rcpt, err)
		}
		if msg.Rewrite == nil || !strings.HasPrefix(msg.AddHeader, c.ours) {
			t.Fatalf("%s: rewrite %v, header %q", c.rcpt, msg.Rewrite != nil, msg.AddHeader)
		}
		var out strings.Builder
		src, _ := msg.Open()
		if err := msg.Rewrite(&out, src); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.ToLower(out.String()), "x-securerelay-attachment") || !strings.Contains(out.String(), "\r\n\r\n") {
			t.Errorf("%s: the sender's field reaches the recipient:\n%.400s", c.rcpt, out.String())
		}
	}
}

// The pipeline's order decides what the client is told when both the
// attachment stage and DMARC would refuse: a banned file is refused as
// such (the cheaper check, and the one the sender's admin can act on),
// DMARC refuses a message whose attachments pass, and the fields both add
// keep their order (the attachment verdict, then Authentication-Results).
func TestAttachmentThenDMARC(t *testing.T) {
	r := inbound.New([]string{"a.test", "b.test", "c.test"})
	c := attachContent(t)
	c.Auth = authres.New(authres.Options{AuthServID: "mx.a.test", Resolver: dnstest.Mock{TXT: map[string][]string{
		"_dmarc.sender.example":  {"v=DMARC1; p=reject"},
		"_dmarc.relaxed.example": {"v=DMARC1; p=none"},
	}}})
	r.SetContent(c)
	exe := attachtest.Part{Name: "Bewerbung.zip", Data: attachtest.Zip(t, map[string][]byte{"Bewerbung.exe": attachtest.PE()})}
	pdf := attachtest.Part{Name: "a.pdf", Data: attachtest.PDF()}
	for _, tc := range []struct {
		name, from, rcpt string
		part             attachtest.Part
		check            string // the refusing check; "" accepted
		header           []string
	}{
		{"banned file, DMARC reject", "a@sender.example", "x@a.test", exe, "attachment", nil},
		{"clean file, DMARC reject", "a@sender.example", "x@a.test", pdf, "dmarc", nil},
		{"clean file, DMARC none", "a@relaxed.example", "x@a.test", pdf, "", []string{"Authentication-Results: mx.a.test;"}},
		{"file accepted with a header, DMARC none", "a@relaxed.example", "z@b.test", exe, "",
			[]string{"X-Securerelay-Attachment: executable;", "Authentication-Results: mx.a.test;"}},
	} {
		st := &smtpd.State{RemoteIP: netip.MustParseAddr("192.0.2.1"), Helo: "mail.example", From: tc.from}
		if _, err := r.Rcpt(st, tc.rcpt, nil); err != nil {
			t.Fatalf("%s: RCPT: %v", tc.name, err)
		}
		msg := message(attachtest.Message(tc.from, tc.rcpt, "x", tc.part))
		err := r.Data(st, msg)
		if got := smtpd.CheckOf(err); got != tc.check {
			t.Fatalf("%s: refused by %q (%v), want %q", tc.name, got, err, tc.check)
		}
		if tc.check != "" {
			continue
		}
		var at []int
		for _, h := range tc.header {
			at = append(at, strings.Index(msg.AddHeader, h))
		}
		if len(at) == 0 || slices.Contains(at, -1) || !slices.IsSorted(at) || at[0] != 0 {
			t.Fatalf("%s: fields %q, want %q in that order on top", tc.name, msg.AddHeader, tc.header)
		}
	}
}
