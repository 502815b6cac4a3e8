package outbound_test

import (
	"context"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/emersion/go-smtp"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/encrypt"
	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/tlspolicy"
)

// utf8Msg has UTF-8 in its header (RFC 6532): it needs SMTPUTF8 at every
// hop. asciiMsg does not.
const (
	utf8Msg  = "From: Jörg <jörg@bücher.example>\r\nTo: <user@müller.example>\r\nSubject: Grüße\r\n\r\nHallo\r\n"
	asciiMsg = "From: <sender@xn--bcher-kva.example>\r\nTo: <user@xn--mller-kva.example>\r\nSubject: hello\r\n\r\nHallo\r\n"
)

func utf8Env(from string, to ...string) queue.Envelope {
	return queue.Envelope{From: from, To: to, Origin: queue.OriginOutbound, SMTPUTF8: true}
}

// TestSMTPUTF8PassedOn: a next hop that offers SMTPUTF8 gets the
// parameter and every address and header byte as the sender wrote them.
func TestSMTPUTF8PassedOn(t *testing.T) {
	for _, lmtp := range []bool{false, true} {
		h := newHop(t, hopOptions{SMTPUTF8: true, LMTP: lmtp})
		scheme := "smtp://"
		if lmtp {
			scheme = "lmtp://"
		}
		e := engine(t, everything(t, scheme+h.addr), nil)
		d := newSpool(t).putEnv(utf8Env("jörg@bücher.example", "jörg@müller.example", "user@müller.example"), utf8Msg)
		for i, r := range deliver(t, e, d) {
			check(t, d.Rcpts[i], r, queue.Delivered, "2.0.0")
		}
		m := h.next()
		if !m.UTF8 || m.From != "jörg@bücher.example" || strings.Join(m.To, " ") != "jörg@müller.example user@müller.example" || string(m.Data) != utf8Msg {
			t.Errorf("lmtp=%v: next hop got SMTPUTF8=%v MAIL FROM:<%s> RCPT TO:%v\n%s", lmtp, m.UTF8, m.From, m.To, m.Data)
		}
	}
}

// TestSMTPUTF8NotAskedWhenNotNeeded: RFC 6531 §3.4: a message that did
// not come with SMTPUTF8 goes without it, even where it is offered
// (net/smtp's Mail would add it to every message).
func TestSMTPUTF8NotAskedWhenNotNeeded(t *testing.T) {
	h := newHop(t, hopOptions{SMTPUTF8: true})
	e := engine(t, everything(t, "smtp://"+h.addr), nil)
	d := newSpool(t).put("sender@ours.test", []string{"a@remote.test"}, message)
	check(t, "ASCII message", deliver(t, e, d)[0], queue.Delivered, "2.0.0")
	if m := h.next(); m.UTF8 {
		t.Error("SMTPUTF8 sent for a message that does not need it")
	}
}

// TestSMTPUTF8Downgrade: to a next hop without SMTPUTF8, an address whose
// domain alone is non-ASCII goes in A-labels when the header is ASCII; a
// recipient with a UTF-8 local part is returned with 5.6.7 and a text for
// the sender, and nothing about it reaches the next hop. LMTP's
// per-recipient replies are matched to the downgraded addresses.
func TestSMTPUTF8Downgrade(t *testing.T) {
	for _, lmtp := range []bool{false, true} {
		h := newHop(t, hopOptions{LMTP: lmtp, Status: func(to string) error {
			if to == "full@xn--mller-kva.example" {
				return smtpErr(552, smtp.EnhancedCode{5, 2, 2}, "mailbox full")
			}
			return nil
		}})
		scheme := "smtp://"
		if lmtp {
			scheme = "lmtp://"
		}
		e := engine(t, everything(t, scheme+h.addr), nil)
		d := newSpool(t).putEnv(utf8Env("sender@bücher.example", "user@müller.example", "jörg@müller.example", "plain@example.com", "full@müller.example"), asciiMsg)
		res := deliver(t, e, d)
		check(t, "user@müller.example", res[0], queue.Delivered, "2.0.0")
		check(t, "jörg@müller.example", res[1], queue.PermFail, "5.6.7")
		check(t, "plain@example.com", res[2], queue.Delivered, "2.0.0")
		if lmtp {
			check(t, "full@müller.example", res[3], queue.PermFail, "5.2.2")
		} else {
			check(t, "full@müller.example", res[3], queue.Delivered, "2.0.0")
		}
		if !strings.Contains(res[1].Reply, "SMTPUTF8 is required, but was not offered by host") || !strings.Contains(res[1].Explanation, "jörg@müller.example") {
			t.Errorf("5.6.7 reply %q, explanation %q", res[1].Reply, res[1].Explanation)
		}
		m := h.next()
		want := "user@xn--mller-kva.example plain@example.com"
		if !lmtp {
			want += " full@xn--mller-kva.example"
		}
		if m.UTF8 || m.From != "sender@xn--bcher-kva.example" || strings.Join(m.To, " ") != want || string(m.Data) != asciiMsg {
			t.Errorf("lmtp=%v: next hop got SMTPUTF8=%v MAIL FROM:<%s> RCPT TO:%v", lmtp, m.UTF8, m.From, m.To)
		}
		h.none()
	}
}

// TestSMTPUTF8NotDowngradable: a UTF-8 header or a sender with a UTF-8
// local part cannot reach a next hop without SMTPUTF8 at all: every
// recipient is returned with 5.6.7, nothing is sent (not even MAIL), and
// the session stays usable for the next message.
func TestSMTPUTF8NotDowngradable(t *testing.T) {
	var mails atomic.Int32
	h := newHop(t, hopOptions{Mail: func(string) error { mails.Add(1); return nil }})
	e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) { o.IdleTimeout = testTimeout })
	sp := newSpool(t)
	for name, d := range map[string]*queue.Delivery{
		"UTF-8 header": sp.putEnv(utf8Env("sender@bücher.example", "user@müller.example"), utf8Msg),
		"UTF-8 sender": sp.putEnv(utf8Env("jörg@bücher.example", "user@müller.example", "b@example.com"), asciiMsg),
	} {
		for i, r := range deliver(t, e, d) {
			check(t, name+" "+d.Rcpts[i], r, queue.PermFail, "5.6.7")
			if r.Explanation == "" || !strings.Contains(r.Reply, "not sent") {
				t.Errorf("%s: reply %q explanation %q", name, r.Reply, r.Explanation)
			}
		}
	}
	h.none()
	if n := mails.Load(); n != 0 {
		t.Errorf("%d MAIL commands reached the next hop", n)
	}
	check(t, "then an ASCII message", deliver(t, e, sp.put("a@ours.test", []string{"b@remote.test"}, message))[0], queue.Delivered, "2.0.0")
	h.next()
	if n := h.Conns(); n != 1 {
		t.Errorf("%d connections, want 1 (the session is reused)", n)
	}
}

// TestSMTPUTF8MXInALabels: the MX of a U-label domain is looked up in
// A-labels, and recipients in both spellings are one transaction.
func TestSMTPUTF8MXInALabels(t *testing.T) {
	h := newHop(t, hopOptions{SMTPUTF8: true})
	e := engine(t, &outbound.Router{}, func(o *outbound.EngineOptions) {
		o.Resolver = dnstest.Mock{
			MX:   map[string][]dnsutil.MX{"xn--mller-kva.example": {{Host: "mx.xn--mller-kva.example", Pref: 10}}},
			Host: map[string][]netip.Addr{"mx.xn--mller-kva.example": {netip.MustParseAddr("127.0.0.1")}},
		}
		o.MXPort = h.port
	})
	d := newSpool(t).putEnv(utf8Env("a@ours.test", "jörg@müller.example", "anna@xn--mller-kva.example"), asciiMsg)
	for i, r := range deliver(t, e, d) {
		check(t, d.Rcpts[i], r, queue.Delivered, "2.0.0")
		if !strings.HasPrefix(r.Relay, "mx.xn--mller-kva.example[") {
			t.Errorf("relay %q", r.Relay)
		}
	}
	if m := h.next(); len(m.To) != 2 {
		t.Errorf("one transaction for both spellings, got RCPT TO:%v", m.To)
	}
}

// TestMaildirSMTPUTF8: a UTF-8 recipient gets a mailbox named with its
// local part as written (lower-cased) and its domain in A-labels, so that
// both spellings of the domain are one mailbox.
func TestMaildirSMTPUTF8(t *testing.T) {
	root := filepath.Join(t.TempDir(), "maildir")
	r := &outbound.Router{Local: map[string]outbound.Target{"xn--mller-kva.example": target(t, "maildir:"+root)}}
	e := engine(t, r, nil)
	d := newSpool(t).putEnv(utf8Env("a@remote.test", "Jörg@müller.example", "jörg@xn--mller-kva.example", "user@müller.example"), utf8Msg)
	for i, res := range deliver(t, e, d) {
		check(t, d.Rcpts[i], res, queue.Delivered, "2.0.0")
	}
	boxes, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, b := range boxes {
		names = append(names, b.Name())
	}
	if strings.Join(names, " ") != "jörg@xn--mller-kva.example user@xn--mller-kva.example" {
		t.Fatalf("mailboxes %q", names)
	}
	news, err := os.ReadDir(filepath.Join(root, "jörg@xn--mller-kva.example", "new"))
	if err != nil || len(news) != 2 {
		t.Fatalf("jörg's new/: %v, %v", news, err)
	}
	b, err := os.ReadFile(filepath.Join(root, "jörg@xn--mller-kva.example", "new", news[0].Name()))
	if err != nil || !strings.HasSuffix(string(b), utf8Msg) || !strings.HasPrefix(string(b), "Delivered-To: ") {
		t.Errorf("message %q, %v", b, err)
	}
}

// TestRequiredKeyIDN: a partner rule (kept in A-labels, as the
// configuration writes every domain) that always encrypts refuses a
// recipient without a key at RCPT in either spelling of its domain; a
// U-label recipient must not slip past the rule.
func TestRequiredKeyIDN(t *testing.T) {
	h := newHop(t, hopOptions{})
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, pgpKey(t, "bob@partner.test"))})
	e := encEngine(t, h, dir, []tlspolicy.Rule{{Match: "xn--mller-kva.example", Level: tlspolicy.Verify}},
		map[string]*outbound.EncryptRule{"xn--mller-kva.example": {Always: true}}, nil, 0, t.TempDir())
	for _, rc := range []string{"carol@müller.example", "jörg@müller.example", "carol@xn--mller-kva.example"} {
		if se := e.RequiredKey(context.Background(), rc); se == nil || se.Code != 550 || se.EnhancedCode != [3]int{5, 7, 1} {
			t.Errorf("%s: %v, want 550 5.7.1", rc, se)
		}
	}
}
