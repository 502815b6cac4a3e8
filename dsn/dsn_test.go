package dsn

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"net/textproto"
	"regexp"
	"strings"
	"testing"
	"time"

	"securerelay/smtputil"
)

var (
	arrival = time.Date(2026, 1, 2, 15, 4, 5, 0, time.UTC)
	now     = arrival.Add(26 * time.Hour)
)

const origMsg = "Received: from a by b; Fri, 2 Jan 2026 15:04:05 +0000\r\n" +
	"From: Alice <alice@example.org>\r\n" +
	"To: bob@example.net\r\n" +
	"Subject: quarterly report\r\n" +
	"Message-ID: <orig@example.org>\r\n" +
	"\r\n" +
	"secret body text\r\n"

func baseReport() Report {
	return Report{
		ReportingMTA: "mx1.example.com",
		Sender:       "alice@example.org",
		QueueID:      "0123ABCD",
		Arrival:      arrival,
		Now:          now,
		Recipients: []Recipient{{
			Address:           "bob@example.net",
			OriginalRecipient: "rfc822;Bob@Example.NET",
			Action:            "failed",
			Status:            "5.1.1",
			RemoteMTA:         "mx.example.net",
			Diagnostic:        "550-5.1.1 The email account that you tried to reach does not exist.\r\n550 5.1.1 Please try double-checking the recipient's email address.",
			LastAttempt:       now,
		}},
		Original: []byte(origMsg),
	}
}

// parsed is a DSN taken apart with net/mail and mime/multipart only.
type parsed struct {
	header mail.Header
	parts  []part
}

type part struct {
	header textproto.MIMEHeader
	body   []byte
}

func parseDSN(t testing.TB, b []byte) parsed {
	t.Helper()
	checkWire(t, b)
	msg, err := mail.ReadMessage(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("net/mail: %v", err)
	}
	mt, params, err := mime.ParseMediaType(msg.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/report" || params["report-type"] != "delivery-status" || params["boundary"] == "" {
		t.Fatalf("Content-Type %q: %v", msg.Header.Get("Content-Type"), err)
	}
	p := parsed{header: msg.Header}
	mr := multipart.NewReader(msg.Body, params["boundary"])
	for {
		pt, err := mr.NextPart()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("multipart: %v", err)
		}
		body, err := io.ReadAll(pt) // decodes quoted-printable
		if err != nil {
			t.Fatalf("part body: %v", err)
		}
		p.parts = append(p.parts, part{header: pt.Header, body: body})
	}
	return p
}

// checkWire: CRLF only, no line over 998 octets, 7-bit only (the DSN
// must be deliverable to a server without 8BITMIME).
func checkWire(t testing.TB, b []byte) {
	t.Helper()
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			t.Fatalf("bare LF at %d", i)
		}
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') {
			t.Fatalf("bare CR at %d", i)
		}
		if c >= 0x80 || c == 0 {
			t.Fatalf("octet 0x%02x at %d", c, i)
		}
	}
	for i, l := range bytes.Split(b, []byte("\r\n")) {
		if len(l) > 998 {
			t.Fatalf("line %d is %d octets", i, len(l))
		}
	}
}

// statusGroups splits a message/delivery-status body into its field groups.
func statusGroups(t testing.TB, body []byte) []textproto.MIMEHeader {
	t.Helper()
	r := textproto.NewReader(bufio.NewReader(bytes.NewReader(body)))
	var groups []textproto.MIMEHeader
	for {
		h, err := r.ReadMIMEHeader()
		if len(h) > 0 {
			groups = append(groups, h)
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("delivery-status: %v", err)
		}
	}
	return groups
}

func TestBuildFailed(t *testing.T) {
	b, err := Build(baseReport())
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)

	h := p.header
	for field, want := range map[string]string{
		"Subject":        "Undelivered Mail Returned to Sender",
		"Auto-Submitted": "auto-replied",
		"Mime-Version":   "1.0",
		"Date":           "Sat, 3 Jan 2026 17:04:05 +0000",
	} {
		if got := h.Get(field); got != want {
			t.Errorf("%s = %q, want %q", field, got, want)
		}
	}
	from, err := h.AddressList("From")
	if err != nil || len(from) != 1 || from[0].Address != "MAILER-DAEMON@mx1.example.com" {
		t.Errorf("From = %v, %v", from, err)
	}
	to, err := h.AddressList("To")
	if err != nil || len(to) != 1 || to[0].Address != "alice@example.org" {
		t.Errorf("To = %v, %v", to, err)
	}
	if id := h.Get("Message-Id"); !strings.HasPrefix(id, "<") || !strings.HasSuffix(id, "@mx1.example.com>") || !strings.Contains(id, "0123ABCD") {
		t.Errorf("Message-ID = %q", id)
	}
	if len(p.parts) != 3 {
		t.Fatalf("%d parts, want 3", len(p.parts))
	}

	// Part 1: human text.
	mt, params, _ := mime.ParseMediaType(p.parts[0].header.Get("Content-Type"))
	if mt != "text/plain" || params["charset"] != "utf-8" {
		t.Errorf("part 1 type %q", p.parts[0].header.Get("Content-Type"))
	}
	text := string(p.parts[0].body)
	for _, s := range []string{
		"mx1.example.com", "<bob@example.net>: could not be delivered",
		"the mailbox does not exist", "status 5.1.1", "Details (receiving server mx.example.net)",
		"550-5.1.1 The email account that you tried to reach does not exist.",
		"550 5.1.1 Please try double-checking", "0123ABCD", "will not\r\ntry again",
	} {
		if !strings.Contains(text, s) {
			t.Errorf("text part lacks %q:\n%s", s, text)
		}
	}

	// Part 2: delivery-status.
	if got := p.parts[1].header.Get("Content-Type"); got != "message/delivery-status" {
		t.Errorf("part 2 type %q", got)
	}
	g := statusGroups(t, p.parts[1].body)
	if len(g) != 2 {
		t.Fatalf("%d groups, want per-message + 1 recipient", len(g))
	}
	for field, want := range map[string]string{
		"Reporting-Mta": "dns; mx1.example.com",
		"Arrival-Date":  "Fri, 2 Jan 2026 15:04:05 +0000",
	} {
		if got := g[0].Get(field); got != want {
			t.Errorf("per-message %s = %q, want %q", field, got, want)
		}
	}
	for field, want := range map[string]string{
		"Original-Recipient": "rfc822; Bob@example.net",
		"Final-Recipient":    "rfc822; bob@example.net",
		"Action":             "failed",
		"Status":             "5.1.1",
		"Remote-Mta":         "dns; mx.example.net",
		"Diagnostic-Code":    "smtp; 550-5.1.1 The email account that you tried to reach does not exist. 550 5.1.1 Please try double-checking the recipient's email address.",
		"Last-Attempt-Date":  "Sat, 3 Jan 2026 17:04:05 +0000",
	} {
		if got := g[1].Get(field); got != want {
			t.Errorf("recipient %s = %q, want %q", field, got, want)
		}
	}

	// Part 3: the original header, and nothing of the body.
	if got := p.parts[2].header.Get("Content-Type"); got != "text/rfc822-headers" {
		t.Errorf("part 3 type %q", got)
	}
	wantHdr := origMsg[:strings.Index(origMsg, "\r\n\r\n")+2]
	if string(p.parts[2].body) != wantHdr {
		t.Errorf("part 3 = %q, want %q", p.parts[2].body, wantHdr)
	}
	if bytes.Contains(b, []byte("secret body text")) {
		t.Error("the original body must not be returned")
	}
}

func TestBuildDelayedAndMixed(t *testing.T) {
	r := baseReport()
	r.Recipients = []Recipient{{Address: "carol@example.net", Action: "Delayed", Status: "4.4.1", RemoteMTA: "mx.example.net"}}
	b, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	if got := p.header.Get("Subject"); got != "Delayed Mail (still being retried)" {
		t.Errorf("Subject %q", got)
	}
	if !strings.Contains(string(p.parts[0].body), "you do not need to send the message\r\nagain") {
		t.Errorf("delayed text:\n%s", p.parts[0].body)
	}
	g := statusGroups(t, p.parts[1].body)
	if g[1].Get("Action") != "delayed" || g[1].Get("Status") != "4.4.1" || g[1].Get("Diagnostic-Code") != "" {
		t.Errorf("delayed group %v", g[1])
	}

	r.Recipients = append(r.Recipients, Recipient{Address: "dave@example.net", Action: "failed"})
	b, err = Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p = parseDSN(t, b)
	if got := p.header.Get("Subject"); got != "Undelivered Mail Returned to Sender" {
		t.Errorf("mixed Subject %q", got)
	}
	g = statusGroups(t, p.parts[1].body)
	if len(g) != 3 || g[2].Get("Status") != "5.0.0" || g[2].Get("Final-Recipient") != "rfc822; dave@example.net" {
		t.Errorf("mixed groups %v", g)
	}
	text := string(p.parts[0].body)
	if !strings.Contains(text, "Delivery failed permanently for:") || !strings.Contains(text, "Delivery is delayed") {
		t.Errorf("mixed text:\n%s", text)
	}
}

func TestBuildStatusFallback(t *testing.T) {
	for _, tt := range []struct{ action, status, want string }{
		{"failed", "", "5.0.0"},
		{"failed", "4.2.2", "5.0.0"}, // class contradicts the action
		{"failed", "5.1", "5.0.0"},
		{"failed", "5.1.1\r\nX: y", "5.0.0"},
		{"failed", "5.7.26", "5.7.26"},
		{"delayed", "5.1.1", "4.0.0"},
		{"delayed", "4.4.7", "4.4.7"},
	} {
		r := baseReport()
		r.Recipients[0].Action, r.Recipients[0].Status = tt.action, tt.status
		b, err := Build(r)
		if err != nil {
			t.Fatal(err)
		}
		g := statusGroups(t, parseDSN(t, b).parts[1].body)
		if got := g[1].Get("Status"); got != tt.want {
			t.Errorf("%s %q: Status %q, want %q", tt.action, tt.status, got, tt.want)
		}
	}
}

func TestBuildRefuses(t *testing.T) {
	tests := []struct {
		name   string
		modify func(*Report)
		want   error
	}{
		{"null sender", func(r *Report) { r.Sender = "" }, ErrNullSender},
		{"null sender brackets", func(r *Report) { r.Sender = "<>" }, ErrNullSender},
		{"no recipients", func(r *Report) { r.Recipients = nil }, ErrNoRecipients},
		{"bad sender", func(r *Report) { r.Sender = "alice\r\nBcc: x@evil.example" }, smtputil.ErrBadSyntax},
		{"unqualified sender", func(r *Report) { r.Sender = "alice@localhost" }, smtputil.ErrNotFQDN},
		{"bad action", func(r *Report) { r.Recipients[0].Action = "expanded" }, nil},
		{"empty recipient", func(r *Report) { r.Recipients[0].Address = " \r\n" }, nil},
		{"no reporting MTA", func(r *Report) { r.ReportingMTA = "" }, nil},
		{"bad reporting MTA", func(r *Report) { r.ReportingMTA = "mx1.example.com\r\nX: y" }, nil},
	}
	for _, tt := range tests {
		r := baseReport()
		tt.modify(&r)
		b, err := Build(r)
		if err == nil {
			t.Errorf("%s: built a DSN:\n%s", tt.name, b)
			continue
		}
		if tt.want != nil && !errors.Is(err, tt.want) {
			t.Errorf("%s: error %v, want %v", tt.name, err, tt.want)
		}
	}
}

func TestBuildNoHeaderInjection(t *testing.T) {
	r := baseReport()
	r.Sender = "<alice@example.org>"
	r.QueueID = "Q1\r\nX-Injected-Queue: 1"
	r.MessageID = "<x@y>\r\nX-Injected-MID: 1"
	r.Recipients = []Recipient{{
		Address:           "bob@example.net\r\nBcc: victim@example.com",
		OriginalRecipient: "x-evil\r\nX-Injected-Type: 1;bob@example.net\r\nX-Injected-Orig: 1",
		Action:            "failed",
		Status:            "5.1.1",
		RemoteMTA:         "mx.example.net\r\nX-Injected-MTA: 1",
		Diagnostic:        "550 no\r\nX-Injected-Diag: 1\r\n\r\n--boundary\r\nContent-Type: text/html\r\n\r\n<b>hi</b>\n\u202eevil\x00",
	}}
	b, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	for name := range p.header {
		if strings.HasPrefix(name, "X-Injected") || name == "Bcc" {
			t.Errorf("injected top-level field %s", name)
		}
	}
	if len(p.parts) != 3 {
		t.Fatalf("%d parts", len(p.parts))
	}
	for i, pt := range p.parts[:2] {
		for name := range pt.header {
			if strings.HasPrefix(name, "X-Injected") {
				t.Errorf("part %d: injected field %s", i, name)
			}
		}
	}
	for _, g := range statusGroups(t, p.parts[1].body) {
		for name := range g {
			if strings.HasPrefix(name, "X-Injected") || name == "Bcc" || name == "Content-Type" {
				t.Errorf("injected delivery-status field %s: %v", name, g)
			}
		}
	}
	for _, line := range strings.Split(string(p.parts[0].body), "\r\n") {
		if strings.HasPrefix(line, "X-Injected") || strings.HasPrefix(line, "--") || strings.HasPrefix(line, "Bcc:") {
			t.Errorf("text part line starts with injected text: %q", line)
		}
		if strings.ContainsRune(line, '\u202e') || strings.ContainsRune(line, 0) {
			t.Errorf("control/format character survived: %q", line)
		}
	}
	if id := p.header.Get("Message-Id"); strings.HasPrefix(id, "<x@y>") || strings.ContainsAny(id, " :") {
		t.Errorf("Message-ID %q", id)
	}
}

func TestBuildMessageID(t *testing.T) {
	r := baseReport()
	b1, _ := Build(r)
	b2, _ := Build(r)
	id1 := parseDSN(t, b1).header.Get("Message-Id")
	id2 := parseDSN(t, b2).header.Get("Message-Id")
	if id1 == id2 {
		t.Errorf("two DSNs for one message share Message-ID %s", id1)
	}
	r.MessageID = "fixed@mx1.example.com"
	b, _ := Build(r)
	if got := parseDSN(t, b).header.Get("Message-Id"); got != "<fixed@mx1.example.com>" {
		t.Errorf("Message-ID %q", got)
	}
}

func TestOriginalHeader(t *testing.T) {
	big := strings.Repeat("X-Filler: "+strings.Repeat("f", 60)+"\r\n", 2000) // ~146 KiB
	tests := []struct {
		name, in, want string
	}{
		{"CRLF", "A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n"},
		{"LF", "A: 1\nB: 2\n\nbody\n", "A: 1\r\nB: 2\r\n"},
		{"mixed", "A: 1\r\nB: 2\n\r\nbody", "A: 1\r\nB: 2\r\n"},
		{"no body separator", "A: 1\r\nB: 2", "A: 1\r\nB: 2\r\n"},
		{"header only with CRLF", "A: 1\r\n", "A: 1\r\n"},
		{"empty header", "\r\nbody\r\n", ""},
		{"empty", "", ""},
		{"bare CR inside", "A: 1\rB\r\n\r\n", "A: 1\r\nB\r\n"},
		{"CR only", "\r\r0", ""},
		{"CR line endings", "A: 1\rB: 2\r\rbody", "A: 1\r\nB: 2\r\n"},
		{"trailing CR", "A: 1\r", "A: 1\r\n"},
	}
	for _, tt := range tests {
		if got := string(originalHeader([]byte(tt.in))); got != tt.want {
			t.Errorf("%s: %q, want %q", tt.name, got, tt.want)
		}
	}
	got := originalHeader([]byte(big + "\r\nbody"))
	if len(got) > MaxOriginalHeader || len(got) < MaxOriginalHeader-100 || !bytes.HasSuffix(got, []byte("f\r\n")) {
		t.Errorf("capped header: %d octets, ends %q", len(got), got[len(got)-10:])
	}
	// One giant line without any line break is cut hard.
	got = originalHeader([]byte(strings.Repeat("x", 3*MaxOriginalHeader)))
	if len(got) != MaxOriginalHeader || !bytes.HasSuffix(got, []byte("x\r\n")) {
		t.Errorf("giant line: %d octets", len(got))
	}
}

func TestBuildEightBitOriginal(t *testing.T) {
	r := baseReport()
	r.Original = []byte("Subject: Grüße\r\nX-Long: " + strings.Repeat("z", 2000) + "\r\n\r\nbody")
	b, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b) // checkWire: still 7-bit, lines <= 998
	if got, want := string(p.parts[2].body), "Subject: Grüße\r\nX-Long: "+strings.Repeat("z", 2000)+"\r\n"; got != want {
		t.Errorf("decoded header part differs: %q", got[:40])
	}
}

func TestBuildWithoutOriginal(t *testing.T) {
	r := baseReport()
	r.Original = nil
	b, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	if p := parseDSN(t, b); len(p.parts) != 2 {
		t.Errorf("%d parts, want 2 without an original", len(p.parts))
	}
}

func TestBuildQuotedAddresses(t *testing.T) {
	r := baseReport()
	r.Sender = "john doe@example.org" // as go-smtp hands over "john doe"@example.org
	r.Recipients[0].Address = `"bob smith"@example.net`
	b, err := Build(r)
	if err != nil {
		t.Fatal(err)
	}
	p := parseDSN(t, b)
	to, err := p.header.AddressList("To")
	if err != nil || to[0].Address != "john doe@example.org" {
		t.Errorf("To = %v, %v (raw %q)", to, err, p.header.Get("To"))
	}
	g := statusGroups(t, p.parts[1].body)
	if got := g[1].Get("Final-Recipient"); got != `rfc822; "bob smith"@example.net` {
		t.Errorf("Final-Recipient %q", got)
	}
}

func TestExplainStatus(t *testing.T) {
	for code, want := range map[string]string{
		"5.1.1":  "does not exist",
		"4.4.7":  "maximum time",
		"5.7.99": "security or policy",
		"4.9.9":  "unspecified",
		"x":      "unspecified",
	} {
		if got := explainStatus(code); !strings.Contains(got, want) {
			t.Errorf("explainStatus(%q) = %q", code, got)
		}
	}
}

var toField = regexp.MustCompile(`(?m)^To: [^\r\n]*\r\n`)

func FuzzBuild(f *testing.F) {
	f.Add("alice@example.org", "bob@example.net", "550 5.1.1 user unknown", "mx.example.net", "5.1.1", "failed", []byte(origMsg))
	f.Add("a b@example.org", "x\r\nBcc: y", "550 a\r\n\r\n--b\r\nX: y\x00\xff", "h\r\nX: 1", "5.1.1\r\n", "delayed", []byte("A\nB: c\n\nbody"))
	f.Add("<>", "", "", "", "", "failed", []byte{})
	f.Add("u@[192.0.2.1]", `"q@x"@example.net`, strings.Repeat("long ", 400), "[192.0.2.1]", "4.4.1", "delayed", []byte(strings.Repeat("H: v\r\n", 100)))
	f.Add("user@bücher.example", "jörg@müller.example", "553 5.6.7 no SMTPUTF8", "mx.example.net", "5.6.7", "failed", []byte(origMsg))
	f.Add("jörg@bücher.example", `"jö rg"@müller.example`, "", "", "5.6.7", "failed", []byte("Subject: Grüße\r\n\r\n"))
	f.Fuzz(func(t *testing.T, sender, rcpt, diag, remote, status, action string, original []byte) {
		r := Report{
			ReportingMTA: "mx1.example.com",
			Sender:       sender,
			QueueID:      "Q1",
			Arrival:      arrival,
			Now:          now,
			Recipients: []Recipient{{
				Address: rcpt, Action: action, Status: status, RemoteMTA: remote,
				Diagnostic: diag, LastAttempt: now, OriginalRecipient: rcpt,
			}},
			Original: original,
		}
		b, err := Build(r)
		if err != nil {
			return
		}
		// The one 8-bit field: To: for a sender with a UTF-8 local
		// part, which has no ASCII form (RFC 6532; such a DSN travels
		// with SMTPUTF8, outbound/bounce.go). The rest stays 7-bit.
		if to := toField.Find(b); bytes.ContainsFunc(to, func(r rune) bool { return r >= 0x80 }) {
			a, err := smtputil.ParseMailbox(strings.Trim(strings.TrimSpace(sender), "<>"), true)
			if _, ascii := a.ASCII(); err != nil || ascii {
				t.Fatalf("8-bit %q for sender %q", to, sender)
			}
			b = toField.ReplaceAll(b, []byte("To: <utf8@example.org>\r\n"))
		}
		p := parseDSN(t, b)
		allowed := map[string]bool{
			"From": true, "To": true, "Subject": true, "Date": true, "Message-Id": true,
			"Auto-Submitted": true, "Mime-Version": true, "Content-Type": true,
		}
		for name, v := range p.header {
			if !allowed[name] || len(v) != 1 {
				t.Fatalf("unexpected top-level field %s: %q", name, v)
			}
		}
		if n := len(p.parts); n < 2 || n > 3 {
			t.Fatalf("%d parts", n)
		}
		g := statusGroups(t, p.parts[1].body)
		if len(g) != 2 {
			t.Fatalf("%d delivery-status groups: %v", len(g), g)
		}
		okFields := map[string]bool{
			"Original-Recipient": true, "Final-Recipient": true, "Action": true, "Status": true,
			"Remote-Mta": true, "Diagnostic-Code": true, "Last-Attempt-Date": true,
		}
		for name := range g[1] {
			if !okFields[name] {
				t.Fatalf("unexpected recipient field %s", name)
			}
		}
		if len(p.parts) == 3 && (len(p.parts[2].body) > MaxOriginalHeader || bytes.HasPrefix(p.parts[2].body, []byte("\r\n"))) {
			t.Fatalf("returned header part is empty-first or too long: %d octets", len(p.parts[2].body))
		}
		if len(p.parts) == 3 && bytes.Contains(p.parts[2].body, []byte("\r\n\r\n")) {
			t.Fatalf("returned header contains an empty line: %q", p.parts[2].body)
		}
	})
}
