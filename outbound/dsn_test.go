package outbound_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"mime"
	"mime/quotedprintable"
	"net/mail"
	"reflect"
	"strings"
	"testing"

	msgauth "github.com/emersion/go-msgauth/dkim"
	"github.com/emersion/go-smtp"

	"securerelay/dkim"
	"securerelay/downgrade"
	"securerelay/outbound"
	"securerelay/queue"
)

func dsnEnvelope(to ...string) queue.Envelope {
	return queue.Envelope{From: "alice@ours.test", To: to, Origin: queue.OriginOutbound,
		Ret: "FULL", EnvID: "QQ 314+159",
		RcptDSN: []queue.RcptDSN{{Notify: "SUCCESS,FAILURE", ORCPT: "rfc822;Bob+tag@Partner.test"}, {}, {Notify: "NEVER", ORCPT: "utf-8;jörg@partner.test"}}}
}

// A next hop that offers DSN gets the request (RFC 3461 §5.2): RET and
// ENVID on MAIL, NOTIFY and ORCPT on each RCPT, as the sender gave them
// (a recipient without gets none); the notices are then the hop's, so no
// delivered result asks the queue for one. LMTP passes them through
// go-smtp's options the same way.
func TestDSNPassedToHopWithDSN(t *testing.T) {
	for _, lmtp := range []bool{false, true} {
		h := newHop(t, hopOptions{DSN: true, LMTP: lmtp})
		scheme := "smtp://"
		if lmtp {
			scheme = "lmtp://"
		}
		e := engine(t, everything(t, scheme+h.addr), nil)
		d := newSpool(t).putEnv(dsnEnvelope("bob@partner.test", "carol@partner.test", "joerg@partner.test"), "Subject: x\r\n\r\nhello\r\n")
		res := deliver(t, e, d)
		m := h.next()
		if m.MailOpts.Return != smtp.DSNReturnFull || m.MailOpts.EnvelopeID != "QQ 314+159" {
			t.Errorf("lmtp %v: MAIL RET %q ENVID %q", lmtp, m.MailOpts.Return, m.MailOpts.EnvelopeID)
		}
		bob := m.RcptOpts["bob@partner.test"]
		if !reflect.DeepEqual(bob.Notify, []smtp.DSNNotify{"SUCCESS", "FAILURE"}) || bob.OriginalRecipientType != "RFC822" || bob.OriginalRecipient != "Bob+tag@Partner.test" {
			t.Errorf("lmtp %v: RCPT bob %+v", lmtp, bob)
		}
		if c := m.RcptOpts["carol@partner.test"]; c.Notify != nil || c.OriginalRecipient != "" {
			t.Errorf("lmtp %v: carol got %+v", lmtp, c)
		}
		j := m.RcptOpts["joerg@partner.test"]
		if !reflect.DeepEqual(j.Notify, []smtp.DSNNotify{"NEVER"}) || j.OriginalRecipientType != "UTF-8" || j.OriginalRecipient != "jörg@partner.test" {
			t.Errorf("lmtp %v: RCPT joerg %+v", lmtp, j)
		}
		for i, r := range res {
			if r.Status != queue.Delivered || r.Success != "" {
				t.Errorf("lmtp %v: result %d %+v; want delivered, the notice the hop's", lmtp, i, r)
			}
		}
	}
}

// A next hop without DSN gets no DSN parameter (go-smtp's hop would refuse
// one), and each delivered result says what the relay's own success
// notice reports: relayed (SMTP), delivered (LMTP, maildir: final).
func TestSuccessActionWithoutDSN(t *testing.T) {
	for _, tc := range []struct {
		scheme, want string
	}{{"smtp://", queue.ActionRelayed}, {"lmtp://", queue.ActionDelivered}} {
		h := newHop(t, hopOptions{LMTP: tc.scheme == "lmtp://"})
		e := engine(t, everything(t, tc.scheme+h.addr), nil)
		d := newSpool(t).putEnv(dsnEnvelope("bob@partner.test"), "Subject: x\r\n\r\nhello\r\n")
		res := deliver(t, e, d)
		m := h.next()
		if m.MailOpts.Return != "" || m.MailOpts.EnvelopeID != "" || m.RcptOpts["bob@partner.test"].Notify != nil {
			t.Errorf("%s: DSN parameters sent to a hop without DSN: %+v %+v", tc.scheme, m.MailOpts, m.RcptOpts)
		}
		if res[0].Status != queue.Delivered || res[0].Success != tc.want {
			t.Errorf("%s: result %+v, want delivered with success action %s", tc.scheme, res[0], tc.want)
		}
	}
	root := t.TempDir()
	e := engine(t, everything(t, "maildir:"+root), nil)
	res := deliver(t, e, newSpool(t).putEnv(dsnEnvelope("bob@partner.test"), "Subject: x\r\n\r\nhello\r\n"))
	if res[0].Status != queue.Delivered || res[0].Success != queue.ActionDelivered {
		t.Errorf("maildir: %+v", res[0])
	}
}

const eightBitMsg = "From: Alice <alice@ours.test>\r\nTo: bob@partner.test\r\nSubject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\r\n" +
	"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n" +
	"--b1\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nGrüße aus Köln, 8-bit body\r\n" +
	"--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--b1--\r\n"

// A next hop without 8BITMIME gets the message converted to 7 bit before
// the DKIM signer, so the signature covers what leaves and verifies; the
// text decodes to the original. A hop with 8BITMIME gets it unchanged,
// declared BODY=8BITMIME.
func TestDowngradeBeforeSigning(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(rand.Reader)
	txt, err := dkim.TXTRecord(pub)
	if err != nil {
		t.Fatal(err)
	}
	signer := outbound.NewSigner(outbound.DKIMKeys{"ours.test": {{Domain: "ours.test", Selector: "s1", Signer: priv}}}, dkim.Options{}, false, discard)
	for _, eight := range []bool{false, true} {
		o := hopOptions{}
		if !eight {
			o.Discard = []string{"8BITMIME"}
		}
		h := newHop(t, o)
		e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) {
			o.Transform = signer.Transform
			o.SpillDir = t.TempDir()
		})
		d := newSpool(t).put("alice@ours.test", []string{"bob@partner.test"}, eightBitMsg)
		if res := deliver(t, e, d); res[0].Status != queue.Delivered {
			t.Fatalf("8bitmime %v: %+v", eight, res[0])
		}
		m := h.next()
		vs, err := msgauth.VerifyWithOptions(bytes.NewReader(m.Data), &msgauth.VerifyOptions{
			LookupTXT: func(string) ([]string, error) { return []string{txt}, nil }})
		if err != nil || len(vs) != 1 || vs[0].Err != nil {
			t.Fatalf("8bitmime %v: DKIM of what the hop received: %v %+v", eight, err, vs)
		}
		body := m.Data[bytes.Index(m.Data, []byte("\r\n\r\n")):]
		if eight {
			if m.MailOpts.Body != smtp.Body8BitMIME || !bytes.HasSuffix(m.Data, []byte(eightBitMsg)) {
				t.Errorf("8BITMIME hop: BODY %q, message changed:\n%s", m.MailOpts.Body, m.Data)
			}
			continue
		}
		if m.MailOpts.Body != "" || downgrade.Has8Bit(m.Data) {
			t.Fatalf("7-bit hop: BODY %q, 8-bit octets sent:\n%s", m.MailOpts.Body, m.Data)
		}
		if !bytes.Contains(body, []byte("Content-Transfer-Encoding: quoted-printable\r\n\r\nGr=C3=BC=C3=9Fe aus K=C3=B6ln, 8-bit body\r\n--b1\r\n")) ||
			!bytes.Contains(body, []byte("--b1\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwQ=\r\n--b1--\r\n")) {
			t.Errorf("converted message:\n%s", m.Data)
		}
		text := decodedFirstPart(t, m.Data)
		if text != "Grüße aus Köln, 8-bit body" {
			t.Errorf("first part decodes to %q", text)
		}
	}
}

func decodedFirstPart(t *testing.T, msg []byte) string {
	t.Helper()
	mm, err := mail.ReadMessage(bytes.NewReader(msg))
	if err != nil {
		t.Fatal(err)
	}
	_, params, _ := mime.ParseMediaType(mm.Header.Get("Content-Type"))
	b, _ := io.ReadAll(mm.Body)
	parts := strings.Split(string(b), "--"+params["boundary"])
	p := parts[1]
	p = p[strings.Index(p, "\r\n\r\n")+4 : len(p)-2]
	dec, err := io.ReadAll(quotedprintable.NewReader(strings.NewReader(p)))
	if err != nil {
		t.Fatal(err)
	}
	return string(dec)
}

// A message that cannot be converted (8-bit in a header field) is returned
// at once with 5.6.3, without a transaction: the hop sees no MAIL. A
// message known to be 7-bit is sent without BODY=8BITMIME.
func TestDowngradeRefused(t *testing.T) {
	var mails int
	h := newHop(t, hopOptions{Discard: []string{"8BITMIME"}, Mail: func(string) error { mails++; return nil }})
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	d := newSpool(t).put("alice@ours.test", []string{"bob@partner.test", "carol@partner.test"}, "Subject: Grüße\r\n\r\nGrüße\r\n")
	res := deliver(t, e, d)
	for _, r := range res {
		if r.Status != queue.PermFail || r.Code != "5.6.3" || !strings.Contains(r.Reply, "does not offer 8BITMIME and the message cannot be converted to 7 bit") ||
			!strings.Contains(r.Explanation, `the header field "Subject" contains non-ASCII characters`) {
			t.Errorf("result %+v", r)
		}
	}
	// The session is still good for the next message.
	res = deliver(t, e, newSpool(t).put("alice@ours.test", []string{"bob@partner.test"}, "Subject: plain\r\n\r\nascii\r\n"))
	m := h.next()
	if res[0].Status != queue.Delivered || mails != 1 || m.MailOpts.Body != "" {
		t.Errorf("after the refusal: %+v, %d MAIL commands, BODY %q", res[0], mails, m.MailOpts.Body)
	}
}
