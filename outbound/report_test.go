package outbound

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"securerelay/dkim"
	"securerelay/dsn"
)

// reportOf runs checkReport over a whole message as Submission.Data does.
func reportOf(msg []byte) error {
	br := bufio.NewReader(bytes.NewReader(msg))
	header, err := dkim.ReadHeader(br, dkim.MaxHeaderBytes)
	if err != nil {
		return err
	}
	return checkReport(header, br)
}

func crlf(b []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

// ownDSNs are reports as this relay's dsn package builds them.
func ownDSNs(t testing.TB) map[string][]byte {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	orig := []byte("From: app@example.test\r\nTo: x@partner.test\r\nSubject: hello\r\n\r\nhi\r\n")
	out := map[string][]byte{}
	for name, rcpts := range map[string][]dsn.Recipient{
		"dsn failed": {{Address: "x@partner.test", Action: "failed", Status: "5.1.1", RemoteMTA: "mx.partner.test",
			Diagnostic: "550 5.1.1 no such user", LastAttempt: now}},
		"dsn delayed, two": {{Address: "x@partner.test", Action: "delayed", Status: "4.4.1"},
			{Address: "y@partner.test", OriginalRecipient: "rfc822;Y@partner.test", Action: "delayed", Status: "4.7.5",
				Explanation: "the TLS policy for partner.test could not be met"}},
	} {
		b, err := dsn.Build(dsn.Report{ReportingMTA: "relay.example.test", Sender: "app@example.test", QueueID: "ABC",
			Arrival: now.Add(-time.Hour), Now: now, Recipients: rcpts, Original: orig})
		if err != nil {
			t.Fatal(err)
		}
		out[name] = b
	}
	return out
}

// fixtureReports are real reports: Postfix, Exim and Exchange bounces,
// Dovecot and Thunderbird MDNs (testdata/reports), with LF and CRLF.
func fixtureReports(t testing.TB) map[string][]byte {
	files, err := filepath.Glob("testdata/reports/*.eml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no report fixtures: %v", err)
	}
	out := map[string][]byte{}
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		out[filepath.Base(f)] = b
		out[filepath.Base(f)+" crlf"] = crlf(b)
	}
	return out
}

func TestCheckReportAcceptsRealReports(t *testing.T) {
	all := fixtureReports(t)
	for k, v := range ownDSNs(t) {
		all[k] = v
	}
	for name, msg := range all {
		if err := reportOf(msg); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// report builds a multipart/report (boundary "b") of the given type
// from parts, each a complete part (header, blank line, body).
func report(typ string, parts ...string) []byte {
	var b strings.Builder
	b.WriteString("From: MAILER-DAEMON@example.test\r\nMIME-Version: 1.0\r\n")
	b.WriteString("Content-Type: multipart/report; report-type=" + typ + "; boundary=\"b\"\r\n\r\n")
	for _, p := range parts {
		b.WriteString("--b\r\n" + p + "\r\n")
	}
	b.WriteString("--b--\r\n")
	return []byte(b.String())
}

const (
	textPart = "Content-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
	goodDSN  = "Reporting-MTA: dns; mx.example.test\r\n\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
	goodMDN  = "Final-Recipient: rfc822; x@example.org\r\nDisposition: automatic-action/MDN-sent-automatically; deleted\r\n"
)

func TestCheckReportVariants(t *testing.T) {
	ds := "Content-Type: message/delivery-status\r\n\r\n"
	dn := "Content-Type: message/disposition-notification\r\n\r\n"
	good := map[string][]byte{
		"report part first": report("delivery-status", ds+goodDSN, textPart),
		"status with comment, action upper case, extra fields": report("delivery-status", textPart,
			ds+"Reporting-MTA: dns; mx.example.test\r\nX-Postfix-Queue-ID: 1\r\n\r\n\r\nFinal-Recipient: RFC822; x@example.org\r\n"+
				"Action: FAILED\r\nStatus: 5.0.0 (permanent failure)\r\nDiagnostic-Code: smtp; 550 no\r\n    such user\r\n\r\n"),
		"two recipients": report("delivery-status", textPart, ds+goodDSN+"\r\nFinal-Recipient: rfc822; y@example.org\r\nAction: delayed\r\nStatus: 4.4.7\r\n"),
		"base64 status part": report("delivery-status", textPart,
			"Content-Type: message/global-delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n"+base64.StdEncoding.EncodeToString([]byte(goodDSN))),
		"global report-type": report("global-delivery-status", textPart,
			"Content-Type: message/global-delivery-status\r\n\r\n"+goodDSN),
		"unknown charset in the text part": report("delivery-status", "Content-Type: text/plain; charset=x-klingon\r\n\r\nQapla'\r\n", ds+goodDSN),
		"mdn without final newline":        report("disposition-notification", textPart, dn+strings.TrimSuffix(goodMDN, "\r\n")),
		"mdn folded disposition": report("disposition-notification", textPart,
			dn+"Final-Recipient: rfc822;x@example.org\r\nDisposition: manual-action/MDN-sent-manually;\r\n displayed\r\n"),
	}
	for name, msg := range good {
		if err := reportOf(msg); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
	var many []string
	for range maxReportParts {
		many = append(many, textPart)
	}
	bad := map[string][]byte{
		"header only": []byte("Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n" +
			"Your ticket 4711 was updated.\r\n"),
		"no multipart/report":  []byte("Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\n" + ds + goodDSN + "--b--\r\n"),
		"other report-type":    report("feedback-report", textPart, "Content-Type: message/feedback-report\r\n\r\nFeedback-Type: abuse\r\n"),
		"no boundary":          []byte("Content-Type: multipart/report; report-type=delivery-status\r\n\r\n" + goodDSN),
		"type and part differ": report("delivery-status", textPart, dn+goodMDN),
		"only a text part":     report("delivery-status", textPart),
		"nested report": report("delivery-status", textPart,
			"Content-Type: message/rfc822\r\n\r\nContent-Type: multipart/report; report-type=delivery-status; boundary=c\r\n\r\n--c\r\n"+ds+goodDSN+"--c--\r\n"),
		"prose in the status part": report("delivery-status", textPart, ds+"Your ticket was updated.\r\nRegards, the helpdesk\r\n"),
		"no per-recipient fields":  report("delivery-status", textPart, ds+"Reporting-MTA: dns; mx.example.test\r\n"),
		"merged groups": report("delivery-status", textPart,
			ds+"Reporting-MTA: dns; mx.example.test\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
		"no Reporting-MTA": report("delivery-status", textPart, ds+"Arrival-Date: today\r\n\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
		"no Status":        report("delivery-status", textPart, ds+"Reporting-MTA: dns; m.example.test\r\n\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: failed\r\n"),
		"bad Status":       report("delivery-status", textPart, ds+"Reporting-MTA: dns; m.example.test\r\n\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: failed\r\nStatus: failed\r\n"),
		"bad Action":       report("delivery-status", textPart, ds+"Reporting-MTA: dns; m.example.test\r\n\r\nFinal-Recipient: rfc822; x@example.org\r\nAction: updated\r\nStatus: 2.0.0\r\n"),
		"no address type":  report("delivery-status", textPart, ds+"Reporting-MTA: dns; m.example.test\r\n\r\nFinal-Recipient: x@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"),
		"second group bad": report("delivery-status", textPart, ds+goodDSN+"\r\nFinal-Recipient: rfc822; y@example.org\r\n"),
		"mdn without Disposition": report("disposition-notification", textPart,
			dn+"Final-Recipient: rfc822; x@example.org\r\n"),
		"mdn without Final-Recipient": report("disposition-notification", textPart,
			dn+"Disposition: manual-action/MDN-sent-manually; displayed\r\n"),
		"mdn bad disposition": report("disposition-notification", textPart,
			dn+"Final-Recipient: rfc822; x@example.org\r\nDisposition: read it\r\n"),
		"report part too late": report("delivery-status", append(many, ds+goodDSN)...),
		"unknown encoding of the report part": report("delivery-status", textPart,
			"Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: x-rot13\r\n\r\n"+goodDSN),
	}
	for name, msg := range bad {
		if err := reportOf(msg); err == nil {
			t.Errorf("%s: taken for a report", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

// countingReader counts what is read through it.
type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

// TestCheckReportBounded: a 50 MB "human-readable" part before the
// report part is not read to its end; the check gives up within its bound.
func TestCheckReportBounded(t *testing.T) {
	head := "Content-Type: multipart/report; report-type=delivery-status; boundary=\"b\"\r\n\r\n" +
		"--b\r\nContent-Type: text/plain\r\n\r\n"
	line := strings.Repeat("x", 998) + "\r\n"
	big := io.MultiReader(strings.NewReader(head),
		io.LimitReader(repeatReader(line), 50<<20),
		strings.NewReader("\r\n--b\r\nContent-Type: message/delivery-status\r\n\r\n"+goodDSN+"--b--\r\n"))
	cr := &countingReader{r: big}
	br := bufio.NewReader(cr)
	header, err := dkim.ReadHeader(br, dkim.MaxHeaderBytes)
	if err != nil {
		t.Fatal(err)
	}
	if err := checkReport(header, br); err == nil {
		t.Error("a report part after 50 MB was accepted")
	}
	if cr.n > maxReportBody+64<<10 {
		t.Errorf("read %d bytes of a 50 MB message, want at most about %d", cr.n, maxReportBody)
	}
}

func repeatReader(s string) io.Reader {
	return readerFunc(func(p []byte) (int, error) {
		n := 0
		for n < len(p) {
			n += copy(p[n:], s)
		}
		return n, nil
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(p []byte) (int, error) { return f(p) }

// FuzzCheckReport: the report parser sees network input (any client that
// may send from <>); it must neither panic nor read past its bound.
func FuzzCheckReport(f *testing.F) {
	for _, b := range fixtureReports(f) {
		f.Add(b)
	}
	for _, b := range ownDSNs(f) {
		f.Add(b)
	}
	f.Add(report("disposition-notification", textPart, "Content-Type: message/disposition-notification\r\n\r\n"+goodMDN))
	f.Add(report("delivery-status", textPart, "Content-Type: message/delivery-status\r\nContent-Transfer-Encoding: base64\r\n\r\n"+
		base64.StdEncoding.EncodeToString([]byte(goodDSN))))
	f.Fuzz(func(t *testing.T, msg []byte) {
		cr := &countingReader{r: bytes.NewReader(msg)}
		br := bufio.NewReader(cr)
		header, err := dkim.ReadHeader(br, dkim.MaxHeaderBytes)
		if err != nil {
			return
		}
		_ = checkReport(header, br)
		if cr.n > int64(len(header))+maxReportBody+int64(br.Size()) {
			t.Errorf("read %d bytes, header %d, bound %d", cr.n, len(header), maxReportBody)
		}
	})
}
