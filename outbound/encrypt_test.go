package outbound_test

// The OpenPGP stage of delivery (issue 12) where it is awkward end to end:
// which sessions an encrypted transaction may use and which it leaves
// behind in the pool, a key lookup that fails for now, several keys in
// one copy, encrypt: always, and what is never encrypted. The keys are
// made with go-crypto here (test/e2e drives gpg, sq and rnp), the
// ciphertext read with go-crypto's packet reader, independently of
// go-pgpmail.

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"mime"
	"mime/multipart"
	"net"
	"net/http"
	"net/mail"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/ProtonMail/go-crypto/openpgp/armor"
	"github.com/ProtonMail/go-crypto/openpgp/packet"
	"github.com/emersion/go-smtp"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/encrypt"
	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/tlspolicy"
)

// pgpKey makes a Curve25519 key (EdDSA primary, ECDH subkey) for addr.
func pgpKey(t *testing.T, addr string) *openpgp.Entity {
	t.Helper()
	e, err := openpgp.NewEntity("Test", "", addr, &packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Curve: packet.Curve25519})
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func fingerprint(e *openpgp.Entity) string { return encrypt.Fingerprint(e) }

// armoured is e's public key, ASCII-armoured.
func armoured(t *testing.T, e *openpgp.Entity) []byte {
	t.Helper()
	var b bytes.Buffer
	w, err := armor.Encode(&b, openpgp.PublicKeyType, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := e.Serialize(w); err != nil {
		t.Fatal(err)
	}
	w.Close()
	return b.Bytes()
}

// keyringOf is a keyring folder holding the public keys of es.
func keyringOf(t *testing.T, es ...*openpgp.Entity) string {
	t.Helper()
	dir := t.TempDir()
	for _, e := range es {
		if err := os.WriteFile(filepath.Join(dir, fingerprint(e)+".asc"), armoured(t, e), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func directory(t *testing.T, o encrypt.Options) *encrypt.Directory {
	t.Helper()
	d, err := encrypt.New(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// partnerMX makes the hop the MX of partner.test (and of every other
// domain the tests use): MX delivery as in real life, on the hop's port.
func partnerMX(h *hop) func(*outbound.EngineOptions) {
	lo := []netip.Addr{netip.MustParseAddr("127.0.0.1")}
	mx := map[string][]dnsutil.MX{}
	host := map[string][]netip.Addr{}
	for _, d := range []string{"partner.test", "lenient.test", "fallback.test", "nopolicy.test"} {
		mx[d] = []dnsutil.MX{{Host: "mx.partner.test", Pref: 10}}
	}
	host["mx.partner.test"] = lo
	return func(o *outbound.EngineOptions) {
		o.Resolver, o.MXPort = dnstest.Mock{MX: mx, Host: host}, h.port
	}
}

// encEngine is an engine whose TLS rules are rules, each encrypting as
// enc says for its match, with keys from dir; roots are trusted for
// verify; idle > 0 pools sessions.
func encEngine(t *testing.T, h *hop, dir *encrypt.Directory, rules []tlspolicy.Rule, enc map[string]*outbound.EncryptRule,
	roots *x509.CertPool, idle time.Duration, spill string) *outbound.Engine {
	t.Helper()
	dec, err := tlspolicy.New(tlspolicy.Options{RootCAs: roots, Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	return engine(t, &outbound.Router{}, func(o *outbound.EngineOptions) {
		partnerMX(h)(o)
		o.TLS, o.IdleTimeout = dec, idle
		o.Encryption = &outbound.Encryption{Dir: dir, Rules: enc, SpillDir: spill}
	})
}

// fallbackRule: partner.test at level, fallback: encrypt.
func fallbackRule(level tlspolicy.Level) []tlspolicy.Rule {
	return []tlspolicy.Rule{{Match: "partner.test", Level: level, Fallback: tlspolicy.FallbackEncrypt}}
}

// sealed checks that data is RFC 3156 PGP/MIME and returns its outer
// header, the OpenPGP message (armour removed) and the key IDs of its
// public-key encrypted session key packets, one per key it is for.
func sealed(t *testing.T, data []byte) (mail.Header, []byte, []uint64) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		t.Fatalf("Content-Type %q; want PGP/MIME:\n%s", m.Header.Get("Content-Type"), data)
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(p)
		parts = append(parts, b)
	}
	if len(parts) != 2 {
		t.Fatalf("%d parts, want 2", len(parts))
	}
	blk, err := armor.Decode(bytes.NewReader(parts[1]))
	if err != nil || blk.Type != "PGP MESSAGE" {
		t.Fatalf("second part is no armoured OpenPGP message: %v", err)
	}
	msg, err := io.ReadAll(blk.Body)
	if err != nil {
		t.Fatal(err)
	}
	var ids []uint64
	pr := packet.NewReader(bytes.NewReader(msg))
	for {
		p, err := pr.Next()
		if err != nil {
			t.Fatalf("reading the OpenPGP packets: %v", err)
		}
		ek, ok := p.(*packet.EncryptedKey)
		if !ok {
			break // the encrypted data follows the session keys
		}
		ids = append(ids, ek.KeyId)
	}
	return m.Header, msg, ids
}

// encryptionKeyID is the key ID of e's (only) encryption subkey.
func encryptionKeyID(e *openpgp.Entity) uint64 { return e.Subkeys[0].PublicKey.KeyId }

// decryptWith decrypts msg with e's secret key alone.
func decryptWith(t *testing.T, msg []byte, e *openpgp.Entity) []byte {
	t.Helper()
	md, err := openpgp.ReadMessage(bytes.NewReader(msg), openpgp.EntityList{e}, nil, nil)
	if err != nil {
		t.Fatalf("decrypting with %s: %v", fingerprint(e), err)
	}
	b, err := io.ReadAll(md.UnverifiedBody)
	if err != nil {
		t.Fatalf("decrypting with %s: %v", fingerprint(e), err)
	}
	return b
}

// countMails makes a hop count its MAIL commands.
func countMails(o *hopOptions) *atomic.Int32 {
	var n atomic.Int32
	o.Mail = func(string) error { n.Add(1); return nil }
	return &n
}

func isPGPMIME(data []byte) bool {
	return bytes.Contains(data, []byte("multipart/encrypted")) && bytes.Contains(data, []byte("-----BEGIN PGP MESSAGE-----"))
}

// Several recipients with keys get ONE transaction whose one copy is
// encrypted to each of their keys (one session key packet per key, each
// key decrypts it alone); a recipient without a key is left waiting, and
// the MX never hears of it. A gateway key pinned for the whole rule
// covers several recipients with one packet.
func TestEncryptOneCopyForSeveralKeys(t *testing.T) {
	alice, bob := pgpKey(t, "alice@partner.test"), pgpKey(t, "bob@partner.test")
	t.Run("keyring", func(t *testing.T) {
		h := newHop(t, hopOptions{})
		dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, alice, bob)})
		e := encEngine(t, h, dir, fallbackRule(tlspolicy.Verify),
			map[string]*outbound.EncryptRule{"partner.test": {Subject: "Encrypted message"}}, nil, 0, t.TempDir())
		d := newSpool(t).put("sender@ours.test", []string{"alice@partner.test", "carol@partner.test", "bob@partner.test"}, message)
		res := deliver(t, e, d)
		check(t, "alice", res[0], queue.Delivered, "2.0.0")
		check(t, "carol", res[1], queue.TempFail, "4.7.10")
		check(t, "bob", res[2], queue.Delivered, "2.0.0")
		for i, k := range map[int]*openpgp.Entity{0: alice, 2: bob} {
			if !strings.Contains(res[i].Encryption, "openpgp key="+fingerprint(k)+" key_source=keyring") ||
				!strings.Contains(res[i].TLSPolicy, "fallback=encrypt") {
				t.Errorf("%s: encryption %q, tls_policy %q", d.Rcpts[i], res[i].Encryption, res[i].TLSPolicy)
			}
		}
		if !strings.Contains(res[1].Reply, "no usable OpenPGP key for carol@partner.test") || !strings.HasPrefix(res[1].Encryption, "openpgp: no usable") {
			t.Errorf("carol: reply %q, encryption %q; want them to say there is no key", res[1].Reply, res[1].Encryption)
		}
		m := h.next()
		h.none()
		if strings.Join(m.To, ",") != "alice@partner.test,bob@partner.test" {
			t.Fatalf("the MX got a transaction for %v, want one for alice and bob", m.To)
		}
		outer, msg, ids := sealed(t, m.Data)
		if want := []uint64{encryptionKeyID(alice), encryptionKeyID(bob)}; !sameIDs(ids, want) {
			t.Errorf("session keys for key IDs %x, want %x (alice's and bob's encryption subkeys)", ids, want)
		}
		if s := outer.Get("Subject"); s != "Encrypted message" {
			t.Errorf("outer Subject %q, want the rule's encrypted_subject", s)
		}
		for _, k := range []*openpgp.Entity{alice, bob} {
			if p := decryptWith(t, msg, k); !bytes.Contains(p, []byte("Subject: test\r\n")) || !bytes.HasSuffix(p, []byte("\r\n\r\nline\r\n.\r\n..two dots\r\n.leading\r\nend\r\n")) {
				t.Errorf("decrypted with %s's key:\n%s", k.PrimaryIdentity().UserId.Email, p)
			}
		}
	})
	t.Run("gateway key pinned for the rule", func(t *testing.T) {
		h := newHop(t, hopOptions{})
		gw := pgpKey(t, "gateway@elsewhere.test")
		file := filepath.Join(t.TempDir(), "gateway.asc")
		os.WriteFile(file, armoured(t, gw), 0o600)
		dir := directory(t, encrypt.Options{})
		e := encEngine(t, h, dir, fallbackRule(tlspolicy.Verify), map[string]*outbound.EncryptRule{"partner.test": {
			Sources: []encrypt.Source{encrypt.SourcePinned}, Pins: []encrypt.Pin{{Fingerprint: fingerprint(gw), File: file}}}}, nil, 0, t.TempDir())
		res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"x@partner.test", "y@partner.test"}, message))
		for _, r := range res {
			check(t, "pinned", r, queue.Delivered, "2.0.0")
			if !strings.Contains(r.Encryption, "key_source=pinned") {
				t.Errorf("encryption %q, want key_source=pinned", r.Encryption)
			}
		}
		m := h.next()
		h.none()
		if _, _, ids := sealed(t, m.Data); !sameIDs(ids, []uint64{encryptionKeyID(gw)}) {
			t.Errorf("session keys for %x, want one, for the gateway key %x", ids, encryptionKeyID(gw))
		}
	})
}

func sameIDs(a, b []uint64) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// An encrypted transaction may use a session below the rule (clear text,
// or TLS with a certificate verify refuses); such a session, pooled,
// must never carry what the rule protects unencrypted: mail for a
// recipient without a key, inbound mail, a DSN, or a REQUIRETLS message.
// They wait (or return) and the MX gets nothing but encrypted copies.
func TestEncryptedSessionNeverCarriesClearText(t *testing.T) {
	for _, tc := range []struct {
		name string
		tls  bool // the hop offers STARTTLS with a self-signed certificate
	}{{"no STARTTLS", false}, {"self-signed certificate", true}} {
		t.Run(tc.name, func(t *testing.T) {
			bob := pgpKey(t, "bob@partner.test")
			ho := hopOptions{}
			if tc.tls {
				ho.TLS = selfSigned(t)
			}
			mails := countMails(&ho)
			h := newHop(t, ho)
			dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
			e := encEngine(t, h, dir, fallbackRule(tlspolicy.Verify), map[string]*outbound.EncryptRule{"partner.test": {}}, nil, time.Minute, t.TempDir())
			sp := newSpool(t)

			first := deliver(t, e, sp.put("sender@ours.test", []string{"bob@partner.test"}, message))[0]
			check(t, "bob, encrypted", first, queue.Delivered, "2.0.0")
			if tc.tls != (first.TLS != "") {
				t.Errorf("encrypted copy sent with TLS %q; want the best session offered", first.TLS)
			}
			if m := h.next(); !isPGPMIME(m.Data) {
				t.Fatalf("first message not encrypted:\n%s", m.Data)
			}
			// The relaxed session is pooled now. Each of these must get
			// a session of its own that meets verify, and fail.
			for _, c := range []struct {
				what   string
				rcpt   string
				origin string
				rtls   bool
			}{
				{"recipient without a key", "carol@partner.test", queue.OriginOutbound, false},
				{"inbound mail", "bob@partner.test", queue.OriginInbound, false},
				{"a DSN", "bob@partner.test", queue.OriginLocal, false},
				{"REQUIRETLS", "bob@partner.test", queue.OriginOutbound, true},
			} {
				d := sp.put("sender@ours.test", []string{c.rcpt}, message)
				d.Envelope.Origin, d.Envelope.RequireTLS = c.origin, c.rtls
				r := deliver(t, e, d)[0]
				if r.Status == queue.Delivered || !strings.HasPrefix(r.Code[1:], ".7.") {
					t.Errorf("%s: %s %s %q; want a TLS failure, nothing sent", c.what, statusName(r.Status), r.Code, r.Reply)
				}
				if c.rcpt == "bob@partner.test" && r.Encryption != "" {
					t.Errorf("%s was considered for encryption: %q", c.what, r.Encryption)
				}
				h.none()
			}
			again := deliver(t, e, sp.put("sender@ours.test", []string{"bob@partner.test"}, message))[0]
			check(t, "bob again, encrypted", again, queue.Delivered, "2.0.0")
			if m := h.next(); !isPGPMIME(m.Data) {
				t.Fatalf("second message not encrypted:\n%s", m.Data)
			}
			if n := mails.Load(); n != 2 {
				t.Errorf("the MX saw %d MAIL commands, want 2 (the two encrypted copies)", n)
			}
		})
	}
}

// A key lookup that fails for now (the partner's WKD server is down) is
// no "no key": the recipient waits, and its reply says the lookup failed
// temporarily; RCPT under encrypt: always answers 450 4.7.1.
func TestEncryptKeyLookupFailsTemporarily(t *testing.T) {
	h := newHop(t, hopOptions{})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	down := ln.Addr().String()
	ln.Close() // the WKD server is down: connections are refused
	var dialer net.Dialer
	dir := directory(t, encrypt.Options{WKD: true,
		Resolver: dnstest.Mock{Host: map[string][]netip.Addr{"openpgpkey.partner.test": {netip.MustParseAddr("127.0.0.1")}}},
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, down)
		}}},
	})
	wkd := []encrypt.Source{encrypt.SourceWKD}
	t.Run("fallback: encrypt", func(t *testing.T) {
		e := encEngine(t, h, dir, fallbackRule(tlspolicy.Verify), map[string]*outbound.EncryptRule{"partner.test": {Sources: wkd}}, nil, 0, t.TempDir())
		r := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"bob@partner.test"}, message))[0]
		check(t, "bob", r, queue.TempFail, "4.7.10")
		if !strings.Contains(r.Reply, "no usable OpenPGP key for bob@partner.test (searched wkd)") || !strings.Contains(r.Reply, "lookup failed temporarily") {
			t.Errorf("reply %q; want it to say the key lookup failed temporarily", r.Reply)
		}
		h.none()
		saysLookupFailed(t, r)
	})
	t.Run("encrypt: always, at RCPT", func(t *testing.T) {
		e := encEngine(t, h, dir, []tlspolicy.Rule{{Match: "partner.test", Level: tlspolicy.Verify}},
			map[string]*outbound.EncryptRule{"partner.test": {Always: true, Sources: wkd}}, nil, 0, t.TempDir())
		se := e.RequiredKey(context.Background(), "bob@partner.test")
		if se == nil || se.Code != 450 || se.EnhancedCode != [3]int{4, 7, 1} || !strings.Contains(se.Message, "bob@partner.test") {
			t.Errorf("RequiredKey = %v, want 450 4.7.1 for bob@partner.test", se)
		}
		r := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"bob@partner.test"}, message))[0]
		if r.Status != queue.TempFail || !strings.Contains(r.Reply, "lookup failed temporarily") {
			t.Errorf("delivery: %s %s %q; want it to wait, saying the lookup failed temporarily", statusName(r.Status), r.Code, r.Reply)
		}
		h.none()
		saysLookupFailed(t, r)
	})
}

// saysLookupFailed: what the sender reads in the DSN, should it come to
// that. The partner's directory could not be asked, which is not "no key
// published": the advice to publish one would be wrong.
func saysLookupFailed(t *testing.T, r queue.Result) {
	t.Helper()
	ex := strings.ToLower(r.Explanation)
	if !strings.Contains(ex, "temporar") && !strings.Contains(ex, "could not be reached") && !strings.Contains(ex, "lookup failed") {
		t.Errorf("BUG (noKeyAdvice/noKeyResult ignore Result.Temporary): DSN explanation %q says no key was found; want it to say the key lookup failed", r.Explanation)
	}
}

// RCPT on outbound listeners: only a recipient under encrypt: always
// without a TLS-only fallback and without a key is refused (550 5.7.1,
// naming the policy).
func TestRequiredKeyAtRCPT(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	h := newHop(t, hopOptions{})
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
	rules := []tlspolicy.Rule{
		{Match: "partner.test", Level: tlspolicy.Verify},
		{Match: "lenient.test", Level: tlspolicy.Verify},
		{Match: "fallback.test", Level: tlspolicy.Verify, Fallback: tlspolicy.FallbackEncrypt},
	}
	e := encEngine(t, h, dir, rules, map[string]*outbound.EncryptRule{
		"partner.test":  {Always: true},
		"lenient.test":  {Always: true, WithoutKeyTLS: true},
		"fallback.test": {},
	}, nil, 0, t.TempDir())
	ctx := context.Background()
	se := e.RequiredKey(ctx, "carol@partner.test")
	if se == nil || se.Code != 550 || se.EnhancedCode != [3]int{5, 7, 1} {
		t.Fatalf("carol@partner.test: %v, want 550 5.7.1", se)
	}
	for _, s := range []string{"carol@partner.test", "partner.test", "encrypt: always", "WKD"} {
		if !strings.Contains(se.Message, s) {
			t.Errorf("refusal %q lacks %q", se.Message, s)
		}
	}
	for _, rc := range []string{"bob@partner.test", "BOB@partner.test", "carol@lenient.test", "carol@fallback.test", "carol@nopolicy.test"} {
		if se := e.RequiredKey(ctx, rc); se != nil {
			t.Errorf("%s refused: %v", rc, se)
		}
	}
}

// encrypt: always: a recipient with a key gets it encrypted whatever TLS
// achieves (the session that meets the level if there is one, else the
// best offered); one without waits (4.7.5), or with without_key: tls goes
// unencrypted, but only over a session that meets the level, never over
// the relaxed one the encrypted copy just used (sessions are pooled).
func TestEncryptAlways(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	const verified, selfsigned, clear = "verified", "self-signed", "clear"
	run := func(t *testing.T, hopTLS string, withoutKeyTLS bool) (*hop, []queue.Result) {
		t.Helper()
		var ho hopOptions
		var roots *x509.CertPool
		switch hopTLS {
		case verified:
			ho.TLS, roots = trustedTLS(t, "mx.partner.test")
		case selfsigned:
			ho.TLS = selfSigned(t)
		}
		h := newHop(t, ho)
		dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
		e := encEngine(t, h, dir, []tlspolicy.Rule{{Match: "partner.test", Level: tlspolicy.Verify}},
			map[string]*outbound.EncryptRule{"partner.test": {Always: true, WithoutKeyTLS: withoutKeyTLS}}, roots, time.Minute, t.TempDir())
		return h, deliver(t, e, newSpool(t).put("sender@ours.test", []string{"bob@partner.test", "carol@partner.test"}, message))
	}
	bobEncrypted := func(t *testing.T, h *hop, r queue.Result, achieved string) {
		t.Helper()
		check(t, "bob", r, queue.Delivered, "2.0.0")
		if !strings.Contains(r.TLSPolicy, "achieved="+achieved) || !strings.Contains(r.Encryption, "key="+fingerprint(bob)) {
			t.Errorf("bob: tls_policy %q, encryption %q; want achieved=%s and bob's key", r.TLSPolicy, r.Encryption, achieved)
		}
		m := h.next()
		if strings.Join(m.To, ",") != "bob@partner.test" {
			t.Fatalf("first transaction to %v, want bob alone", m.To)
		}
		if _, msg, _ := sealed(t, m.Data); !bytes.Contains(decryptWith(t, msg, bob), []byte("..two dots")) {
			t.Error("bob's copy does not decrypt to the message")
		}
	}
	t.Run("TLS met, no key waits", func(t *testing.T) {
		h, res := run(t, verified, false)
		bobEncrypted(t, h, res[0], "verify")
		if strings.Contains(res[0].TLSPolicy, "fallback=encrypt") {
			t.Errorf("bob: tls_policy %q; the level was met, no fallback", res[0].TLSPolicy)
		}
		check(t, "carol", res[1], queue.TempFail, "4.7.5")
		if !strings.Contains(res[1].Reply, "always encrypted") || !strings.Contains(res[1].Encryption, "no usable OpenPGP key for carol@partner.test") {
			t.Errorf("carol: reply %q, encryption %q", res[1].Reply, res[1].Encryption)
		}
		if !strings.Contains(res[1].Explanation, "carol@partner.test") || !strings.Contains(res[1].Explanation, "Web Key Directory (WKD)") {
			t.Errorf("carol: DSN explanation %q; want the recipient and what the partner can do", res[1].Explanation)
		}
		h.none()
	})
	t.Run("TLS met, without_key: tls", func(t *testing.T) {
		h, res := run(t, verified, true)
		bobEncrypted(t, h, res[0], "verify")
		check(t, "carol", res[1], queue.Delivered, "2.0.0")
		m := h.next()
		if strings.Join(m.To, ",") != "carol@partner.test" || !m.TLS || isPGPMIME(m.Data) || res[1].Encryption != "" {
			t.Errorf("carol's copy: to %v, TLS %v, encrypted %v, encryption %q; want plain over TLS", m.To, m.TLS, isPGPMIME(m.Data), res[1].Encryption)
		}
		h.none()
	})
	for _, tc := range []struct{ hop, achieved, code string }{{clear, "none", "4.7.10"}, {selfsigned, "encrypt", "4.7.5"}} {
		t.Run("TLS not met ("+tc.hop+"), without_key: tls", func(t *testing.T) {
			h, res := run(t, tc.hop, true)
			bobEncrypted(t, h, res[0], tc.achieved)
			if !strings.Contains(res[0].TLSPolicy, "fallback=encrypt") {
				t.Errorf("bob: tls_policy %q, want fallback=encrypt (relaxed session)", res[0].TLSPolicy)
			}
			// Without a key and without the TLS the rule asks: never
			// sent, neither in clear nor over the unverified session.
			check(t, "carol", res[1], queue.TempFail, tc.code)
			// What she lacked is both: the level, and a key. Her log
			// line and the DSN say so, and what the partner can do
			// (publish a key); they once spoke of TLS alone.
			if !strings.Contains(res[1].Encryption, "no usable OpenPGP key for carol@partner.test") ||
				!strings.Contains(res[1].Explanation, "No usable OpenPGP key was found for carol@partner.test") {
				t.Errorf("carol: encryption %q, DSN explanation %q; want them to say there is no key", res[1].Encryption, res[1].Explanation)
			}
			h.none()
		})
	}
}

// A copy larger than what is kept in memory goes through a file in the
// spill folder, which is empty again afterwards; the message arrives
// whole.
func TestEncryptLargeMessage(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	h := newHop(t, hopOptions{})
	spill := t.TempDir()
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
	e := encEngine(t, h, dir, fallbackRule(tlspolicy.Encrypt), map[string]*outbound.EncryptRule{"partner.test": {}}, nil, 0, spill)
	body := strings.Repeat("A line of a large confidential message, 64 bytes with its CRLF\r\n", 3<<20/64)
	msg := "From: <sender@ours.test>\r\nTo: <bob@partner.test>\r\nSubject: large\r\n\r\n" + body
	check(t, "bob", deliver(t, e, newSpool(t).put("sender@ours.test", []string{"bob@partner.test"}, msg))[0], queue.Delivered, "2.0.0")
	m := h.next()
	if len(m.Data) < len(body) {
		t.Fatalf("the MX got %d bytes for a %d-byte body", len(m.Data), len(body))
	}
	_, ct, _ := sealed(t, m.Data)
	if p := decryptWith(t, ct, bob); !bytes.HasSuffix(p, []byte("\r\n\r\n"+body)) {
		t.Errorf("decrypted %d bytes; the body is not whole", len(p))
	}
	if ents, _ := os.ReadDir(spill); len(ents) != 0 {
		t.Errorf("%d files left in the spill folder", len(ents))
	}
}

// Through a smarthost route the partner's recipients keep their rule:
// their own transaction, encrypted to their key, while the other
// recipients of the same message go unencrypted, as their (absent) rule
// allows, in a transaction of their own.
func TestEncryptThroughRoute(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	h := newHop(t, hopOptions{})
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
	dec, err := tlspolicy.New(tlspolicy.Options{Rules: fallbackRule(tlspolicy.Verify)})
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, everything(t, "smtp://"+h.addr), func(o *outbound.EngineOptions) {
		o.TLS, o.IdleTimeout = dec, time.Minute
		o.Encryption = &outbound.Encryption{Dir: dir, Rules: map[string]*outbound.EncryptRule{"partner.test": {}}, SpillDir: t.TempDir()}
	})
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"x@other.test", "bob@partner.test", "y@other.test"}, message))
	for i, r := range res {
		check(t, []string{"x", "bob", "y"}[i], r, queue.Delivered, "2.0.0")
	}
	if !strings.Contains(res[1].Encryption, "key="+fingerprint(bob)) || res[0].Encryption != "" || res[2].Encryption != "" {
		t.Errorf("encryption notes %q, %q, %q; want bob's key for bob alone", res[0].Encryption, res[1].Encryption, res[2].Encryption)
	}
	got := map[string]bool{}
	for range 2 {
		m := h.next()
		to := strings.Join(m.To, ",")
		switch {
		case to == "bob@partner.test" && isPGPMIME(m.Data):
			if _, msg, _ := sealed(t, m.Data); !bytes.Contains(decryptWith(t, msg, bob), []byte("..two dots")) {
				t.Error("bob's copy does not decrypt to the message")
			}
		case to == "x@other.test,y@other.test" && !isPGPMIME(m.Data):
		default:
			t.Errorf("the smarthost got a message to %s, encrypted %v", to, isPGPMIME(m.Data))
		}
		got[to] = true
	}
	h.none()
	if len(got) != 2 {
		t.Errorf("transactions %v, want one for bob and one for x and y", got)
	}
}

// ---------------------------------------------------------------------------
// Review of the integration (issue 12): what the rule protects must not
// leave below its level whichever way the delivery turns.

// A message whose header cannot be parsed cannot be encrypted, now or at
// any later attempt: it is returned to its sender at once (5.6.x, saying
// why), not retried until queue.max_age, and nothing but MAIL, RCPT and
// RSET reaches the MX, in both modes. Without the fix the recipient was
// deferred (4.3.0) at every attempt for days.
func TestEncryptMalformedHeaderBounces(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	const msg = "From: <sender@ours.test>\r\nTo: <bob@partner.test>\r\nSubject: secret-subject\r\n" +
		"this line is no header field\r\n\r\nsecret-body\r\n"
	for _, tc := range []struct {
		name  string
		rules []tlspolicy.Rule
		enc   *outbound.EncryptRule
	}{
		{"fallback: encrypt", fallbackRule(tlspolicy.Verify), &outbound.EncryptRule{}},
		{"encrypt: always", []tlspolicy.Rule{{Match: "partner.test", Level: tlspolicy.Verify}}, &outbound.EncryptRule{Always: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := newHop(t, hopOptions{})
			dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
			e := encEngine(t, h, dir, tc.rules, map[string]*outbound.EncryptRule{"partner.test": tc.enc}, nil, 0, t.TempDir())
			r := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"bob@partner.test"}, msg))[0]
			if r.Status != queue.PermFail || !strings.HasPrefix(r.Code, "5.6.") {
				t.Errorf("%s %s %q; want a permanent 5.6.x failure (the message cannot be encrypted, ever)", statusName(r.Status), r.Code, r.Reply)
			}
			if !strings.Contains(r.Reply, "malformed") || !strings.Contains(r.Explanation, "header") {
				t.Errorf("reply %q, DSN explanation %q; want them to say the header is malformed", r.Reply, r.Explanation)
			}
			h.none()
		})
	}
}

// A key valid at the lookup that expires before DATA (the next hop is
// slow at RCPT) is not used: the OpenPGP library refuses it, the
// recipient waits (temporarily: the next lookup refuses the key and says
// so), and nothing is sent, neither encrypted to an expired key nor in
// clear.
func TestEncryptKeyExpiresBeforeData(t *testing.T) {
	const life = 2 // seconds
	bob, err := openpgp.NewEntity("Test", "", "bob@partner.test",
		&packet.Config{Algorithm: packet.PubKeyAlgoEdDSA, Curve: packet.Curve25519, KeyLifetimeSecs: life})
	if err != nil {
		t.Fatal(err)
	}
	expires := bob.PrimaryKey.CreationTime.Add(life * time.Second)
	h := newHop(t, hopOptions{Rcpt: func(string) error {
		// Until the key has expired (go-crypto compares whole
		// seconds), bounded by the test's time-out.
		time.Sleep(time.Until(expires) + 1500*time.Millisecond)
		return nil
	}})
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
	e := encEngine(t, h, dir, fallbackRule(tlspolicy.Verify), map[string]*outbound.EncryptRule{"partner.test": {}}, nil, 0, t.TempDir())
	sp := newSpool(t)
	r := deliver(t, e, sp.put("sender@ours.test", []string{"bob@partner.test"}, message))[0]
	if r.Status != queue.TempFail || !strings.Contains(r.Reply, "encrypting the message failed") {
		t.Errorf("%s %s %q; want a temporary failure of the encryption", statusName(r.Status), r.Code, r.Reply)
	}
	h.none()
	r = deliver(t, e, sp.put("sender@ours.test", []string{"bob@partner.test"}, message))[0]
	check(t, "next attempt", r, queue.TempFail, "4.7.10")
	if !strings.Contains(r.Reply, "no usable OpenPGP key for bob@partner.test") || !strings.Contains(r.Reply, "expired") {
		t.Errorf("next attempt: reply %q; want it to say bob's key expired", r.Reply)
	}
	h.none()
}

// The encrypted copy is made for the recipients the next hop accepted at
// RCPT only: a refused recipient's key is not in it (its key ID would
// tell the next hop who else was meant), 5xx returns, 4xx waits.
func TestEncryptOnlyToAcceptedRecipients(t *testing.T) {
	alice, bob, carol := pgpKey(t, "alice@partner.test"), pgpKey(t, "bob@partner.test"), pgpKey(t, "carol@partner.test")
	h := newHop(t, hopOptions{Rcpt: func(to string) error {
		switch to {
		case "alice@partner.test":
			return smtpErr(550, smtp.EnhancedCode{5, 1, 1}, "no such user")
		case "carol@partner.test":
			return smtpErr(450, smtp.EnhancedCode{4, 2, 1}, "mailbox busy")
		}
		return nil
	}})
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, alice, bob, carol)})
	e := encEngine(t, h, dir, fallbackRule(tlspolicy.Verify), map[string]*outbound.EncryptRule{"partner.test": {}}, nil, 0, t.TempDir())
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"alice@partner.test", "bob@partner.test", "carol@partner.test"}, message))
	check(t, "alice", res[0], queue.PermFail, "5.1.1")
	check(t, "bob", res[1], queue.Delivered, "2.0.0")
	check(t, "carol", res[2], queue.TempFail, "4.2.1")
	m := h.next()
	h.none()
	if strings.Join(m.To, ",") != "bob@partner.test" {
		t.Fatalf("MX got the message for %v, want bob alone", m.To)
	}
	if _, _, ids := sealed(t, m.Data); !sameIDs(ids, []uint64{encryptionKeyID(bob)}) {
		t.Errorf("copy encrypted to key IDs %x, want bob's %x alone", ids, encryptionKeyID(bob))
	}
}

// The next hop goes away at the end of DATA: what it read is the
// encrypted copy, the recipient waits (4.4.2), the session is not pooled,
// and the next attempt encrypts afresh (a new session key) and is
// delivered.
func TestEncryptDroppedAtDataThenRetry(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	var calls atomic.Int32
	seen := make(chan []byte, 2)
	ho := hopOptions{Data: func(b []byte) error {
		seen <- b
		if calls.Add(1) == 1 {
			return errDrop
		}
		return nil
	}}
	h := newHop(t, ho)
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
	e := encEngine(t, h, dir, fallbackRule(tlspolicy.Verify), map[string]*outbound.EncryptRule{"partner.test": {}}, nil, time.Minute, t.TempDir())
	sp := newSpool(t)
	d := sp.put("sender@ours.test", []string{"bob@partner.test"}, message)
	check(t, "first attempt", deliver(t, e, d)[0], queue.TempFail, "4.4.2")
	first := <-seen
	if !isPGPMIME(first) || bytes.Contains(first, []byte("..two dots")) {
		t.Fatalf("what the MX read before it went away is not the encrypted copy:\n%s", first)
	}
	check(t, "retry", deliver(t, e, d)[0], queue.Delivered, "2.0.0")
	m := h.next()
	if !isPGPMIME(m.Data) || bytes.Equal(m.Data, first) {
		t.Errorf("retry: encrypted %v, same bytes as the first attempt %v; want a fresh encrypted copy", isPGPMIME(m.Data), bytes.Equal(m.Data, first))
	}
	// Each attempt: the session that fails the level, then the relaxed
	// one; the dropped session is not reused.
	if n := h.Conns(); n != 4 {
		t.Errorf("%d connections, want 4 (per attempt, one for the level, one relaxed)", n)
	}
}

// A relaxed session (pooled after an encrypted delivery) outlives a
// SIGHUP that changes the rule to defer, or drops the recipient's key:
// the next delivery under the new rules must not use it, and sends
// nothing; back to the old rules, a fresh session carries a fresh
// encrypted copy.
func TestEncryptPooledSessionAcrossReload(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	ho := hopOptions{}
	mails := countMails(&ho)
	h := newHop(t, ho)
	withKey := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
	noKey := directory(t, encrypt.Options{KeyringDir: keyringOf(t)})
	e := encEngine(t, h, withKey, fallbackRule(tlspolicy.Verify), map[string]*outbound.EncryptRule{"partner.test": {}}, nil, time.Minute, t.TempDir())
	decider := func(rules []tlspolicy.Rule) *tlspolicy.Decider {
		d, err := tlspolicy.New(tlspolicy.Options{Rules: rules})
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	sp := newSpool(t)
	check(t, "encrypted", deliver(t, e, sp.put("sender@ours.test", []string{"bob@partner.test"}, message))[0], queue.Delivered, "2.0.0")
	if !isPGPMIME(h.next().Data) {
		t.Fatal("first message not encrypted")
	}
	for _, c := range []struct {
		what  string
		rules []tlspolicy.Rule
		enc   *outbound.Encryption
	}{
		{"rule changed to defer", []tlspolicy.Rule{{Match: "partner.test", Level: tlspolicy.Verify, Fallback: tlspolicy.FallbackDefer}}, nil},
		{"key removed", fallbackRule(tlspolicy.Verify), &outbound.Encryption{Dir: noKey, Rules: map[string]*outbound.EncryptRule{"partner.test": {}}}},
	} {
		e.SetTLS(decider(c.rules), false, c.enc)
		r := deliver(t, e, sp.put("sender@ours.test", []string{"bob@partner.test"}, message))[0]
		check(t, c.what, r, queue.TempFail, "4.7.10")
		h.none()
	}
	e.SetTLS(decider(fallbackRule(tlspolicy.Verify)), false, &outbound.Encryption{Dir: withKey, Rules: map[string]*outbound.EncryptRule{"partner.test": {}}, SpillDir: t.TempDir()})
	check(t, "encrypted again", deliver(t, e, sp.put("sender@ours.test", []string{"bob@partner.test"}, message))[0], queue.Delivered, "2.0.0")
	if !isPGPMIME(h.next().Data) {
		t.Fatal("third message not encrypted")
	}
	if n := mails.Load(); n != 2 {
		t.Errorf("MX saw %d MAIL commands, want 2 (the encrypted copies)", n)
	}
}

// Through a smarthost route with credentials, under a partner rule that
// the smarthost does not meet: the encrypted copy may take a relaxed
// session, but the credentials still go only to a smarthost whose
// certificate proves its name (auth.tls: verify, the default). A
// self-signed one gets neither the credentials nor the message; a
// verified one (that fails the partner's rule on another point) gets
// both, the message encrypted.
func TestEncryptRouteCredentialsOverRelaxedSession(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	run := func(t *testing.T, hopTLS *tls.Config, roots *x509.CertPool, level tlspolicy.Level) (*hop, queue.Result) {
		h := newHop(t, hopOptions{TLS: hopTLS, Users: map[string]string{"relay": "s3cret"}})
		dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
		dec, err := tlspolicy.New(tlspolicy.Options{RootCAs: roots, Rules: []tlspolicy.Rule{{Match: "partner.test", Level: level, Fallback: tlspolicy.FallbackEncrypt}}})
		if err != nil {
			t.Fatal(err)
		}
		tg := target(t, "smtp://localhost:"+h.port)
		tg.Auth = &outbound.RouteAuth{Username: "relay", Password: "s3cret"}
		e := engine(t, &outbound.Router{Routes: []outbound.Route{{Match: "*", Target: tg}}}, func(o *outbound.EngineOptions) {
			o.TLS = dec
			o.Encryption = &outbound.Encryption{Dir: dir, Rules: map[string]*outbound.EncryptRule{"partner.test": {}}, SpillDir: t.TempDir()}
		})
		return h, deliver(t, e, newSpool(t).put("sender@ours.test", []string{"bob@partner.test"}, message))[0]
	}
	t.Run("self-signed smarthost", func(t *testing.T) {
		h, r := run(t, selfSigned(t), nil, tlspolicy.Verify)
		if r.Status != queue.TempFail || !strings.HasPrefix(r.Code, "4.7.") || !strings.Contains(r.Reply, "credentials not sent") {
			t.Errorf("%s %s %q; want it deferred, the credentials not sent", statusName(r.Status), r.Code, r.Reply)
		}
		if n := h.AuthTries(); n != 0 {
			t.Errorf("the smarthost saw %d AUTH commands over a session that does not prove its name", n)
		}
		h.none()
	})
	t.Run("verified smarthost, partner rule not met", func(t *testing.T) {
		hopTLS, roots := trustedTLS(t, "localhost")
		// secure asks for a certificate naming partner.test, which the
		// smarthost's does not.
		h, r := run(t, hopTLS, roots, tlspolicy.Secure)
		check(t, "bob", r, queue.Delivered, "2.0.0")
		if !strings.Contains(r.TLSPolicy, "fallback=encrypt") {
			t.Errorf("tls_policy %q, want fallback=encrypt", r.TLSPolicy)
		}
		m := h.next()
		if m.Auth != "relay" || !m.TLS || !isPGPMIME(m.Data) {
			t.Errorf("smarthost got auth %q, TLS %v, encrypted %v; want the route's login, TLS, and the encrypted copy", m.Auth, m.TLS, isPGPMIME(m.Data))
		}
	})
}

// encrypt: always and REQUIRETLS: the recipient with a key gets the
// encrypted copy only over a session that meets the level (RFC 8689: TLS
// on every hop); without one, the message is returned, not sent over the
// relaxed session.
func TestEncryptAlwaysRequireTLS(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	h := newHop(t, hopOptions{})
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
	e := encEngine(t, h, dir, []tlspolicy.Rule{{Match: "partner.test", Level: tlspolicy.Verify}},
		map[string]*outbound.EncryptRule{"partner.test": {Always: true}}, nil, 0, t.TempDir())
	d := newSpool(t).put("sender@ours.test", []string{"bob@partner.test"}, message)
	d.Envelope.RequireTLS = true
	r := deliver(t, e, d)[0]
	if r.Status != queue.PermFail || !strings.HasPrefix(r.Code, "5.7.") || strings.Contains(r.TLSPolicy, "fallback=encrypt") {
		t.Errorf("%s %s %q (tls_policy %q); want returned with 5.7.x, never the relaxed session", statusName(r.Status), r.Code, r.Reply, r.TLSPolicy)
	}
	h.none()
}

// Header fields that carry what the encryption protects, in odd shapes
// (folded, encoded-words, raw UTF-8, duplicated, obsolete "Name :"
// syntax, lower case, the attachment's name in the top-level header of a
// single-part message, fields of Outlook and mailers): none of it is in
// what the MX receives, all of it is inside.
func TestEncryptOddHeadersStayInside(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	secrets := []string{"SECRET-FOLDED", "SECRET-Q", "U0VDUkVULUI=", "SECRET-B", "SECRET-UTF8", "SECRET-DUP", "SECRET-OBS",
		"SECRET-LOWER", "SECRET-FILE", "SECRET-TOPIC", "SECRET-KEYWORD", "SECRET-MAILER", "SECRET-DESC", "SECRET-ORG", "SECRET-BODY",
		"SECRET-REPLYTO", "SECRET-COMMENT"}
	msg := "From: <sender@ours.test>\r\n" +
		"To: <bob@partner.test>\r\n" +
		"Subject: a folded\r\n SECRET-FOLDED subject\r\n" +
		"Subject: =?utf-8?q?SECRET-Q?= =?UTF-8?B?U0VDUkVULUI=?=\r\n" +
		"subject: Gehälter SECRET-UTF8 SECRET-LOWER\r\n" +
		"Subject: SECRET-DUP\r\n" +
		"Subject : SECRET-OBS\r\n" +
		"Thread-Topic: SECRET-TOPIC\r\n" +
		"Keywords: SECRET-KEYWORD\r\n" +
		"Comments: SECRET-COMMENT\r\n" +
		"X-Mailer: SECRET-MAILER\r\n" +
		"Organization: SECRET-ORG\r\n" +
		"Reply-To: <SECRET-REPLYTO@ours.test>\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: application/pdf; name=\"SECRET-FILE.pdf\"\r\n" +
		"Content-Disposition: attachment;\r\n filename=\"SECRET-FILE.pdf\"\r\n" +
		"Content-Description: SECRET-DESC\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n" +
		"\r\n" +
		"SECRET-BODY Grüße\r\n"
	h := newHop(t, hopOptions{})
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
	e := encEngine(t, h, dir, fallbackRule(tlspolicy.Verify), map[string]*outbound.EncryptRule{"partner.test": {}}, nil, 0, t.TempDir())
	check(t, "bob", deliver(t, e, newSpool(t).put("sender@ours.test", []string{"bob@partner.test"}, msg))[0], queue.Delivered, "2.0.0")
	m := h.next()
	for _, s := range secrets {
		if bytes.Contains(m.Data, []byte(s)) {
			t.Errorf("%q left in clear", s)
		}
	}
	if bytes.IndexFunc(m.Data, func(r rune) bool { return r > 0x7e }) >= 0 {
		t.Errorf("the encrypted message has 8-bit bytes outside")
	}
	_, ct, _ := sealed(t, m.Data)
	p := decryptWith(t, ct, bob)
	for _, s := range secrets {
		if !bytes.Contains(p, []byte(s)) {
			t.Errorf("%q missing inside", s)
		}
	}
}

// A partner whose WKD server accepts connections and never answers: an
// RCPT under encrypt: always waits for the lookup (450 4.7.1 after
// RemoteTimeout, 15 s by default). The next addresses of that domain must
// not wait as long again, one after the other: the hung server is asked
// once, and they fail at once, for now. (The failure was remembered per
// address only, so a transaction with many recipients there held its
// client RemoteTimeout per RCPT, and a delivery its destination slot.)
// Their reply must not name the first address.
func TestEncryptHungWKDAtRCPT(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var accepted atomic.Int32
	done := make(chan struct{})
	go func() {
		defer close(done)
		var held []net.Conn // never answered
		for {
			c, err := ln.Accept()
			if err != nil {
				for _, c := range held {
					c.Close()
				}
				return
			}
			accepted.Add(1)
			held = append(held, c)
		}
	}()
	t.Cleanup(func() { ln.Close(); <-done })
	var dialer net.Dialer
	dir := directory(t, encrypt.Options{WKD: true, RemoteTimeout: 300 * time.Millisecond,
		Resolver: dnstest.Mock{Host: map[string][]netip.Addr{"openpgpkey.partner.test": {netip.MustParseAddr("127.0.0.1")}}},
		HTTPClient: &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, network, ln.Addr().String())
		}}},
	})
	h := newHop(t, hopOptions{})
	e := encEngine(t, h, dir, []tlspolicy.Rule{{Match: "partner.test", Level: tlspolicy.Verify}},
		map[string]*outbound.EncryptRule{"partner.test": {Always: true, Sources: []encrypt.Source{encrypt.SourceWKD}}}, nil, 0, t.TempDir())
	for _, rc := range []string{"anna@partner.test", "bert@partner.test", "cleo@partner.test"} {
		se := e.RequiredKey(context.Background(), rc)
		if se == nil || se.Code != 450 || !strings.Contains(se.Message, rc) {
			t.Fatalf("%s: %v, want 450 naming it (lookup failed for now)", rc, se)
		}
		if rc != "anna@partner.test" && strings.Contains(se.Message, "anna") {
			t.Errorf("%s: reply %q names the address looked up before", rc, se.Message)
		}
	}
	if n := accepted.Load(); n != 1 {
		t.Errorf("the hung WKD server was asked %d times for 3 addresses of its domain, want once", n)
	}
}

// One message to three domains on one MX host without STARTTLS: the
// partner with a key and a fallback: encrypt rule gets the encrypted
// copy; a second partner under the same kind of rule, without a key,
// waits and gets nothing; a domain without a rule gets the message as
// the default (may) allows, plain, in a transaction of its own that
// never carries the partners' recipients.
func TestEncryptSeveralDomainsOneMessage(t *testing.T) {
	bob := pgpKey(t, "bob@partner.test")
	h := newHop(t, hopOptions{})
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, bob)})
	rules := []tlspolicy.Rule{
		{Match: "partner.test", Level: tlspolicy.Verify, Fallback: tlspolicy.FallbackEncrypt},
		{Match: "fallback.test", Level: tlspolicy.Verify, Fallback: tlspolicy.FallbackEncrypt},
	}
	e := encEngine(t, h, dir, rules, map[string]*outbound.EncryptRule{"partner.test": {}, "fallback.test": {}}, nil, time.Minute, t.TempDir())
	res := deliver(t, e, newSpool(t).put("sender@ours.test",
		[]string{"x@nopolicy.test", "bob@partner.test", "carol@fallback.test", "y@nopolicy.test"}, message))
	check(t, "x", res[0], queue.Delivered, "2.0.0")
	check(t, "bob", res[1], queue.Delivered, "2.0.0")
	check(t, "carol", res[2], queue.TempFail, "4.7.10")
	check(t, "y", res[3], queue.Delivered, "2.0.0")
	for range 2 {
		m := h.next()
		switch to := strings.Join(m.To, ","); {
		case to == "bob@partner.test" && isPGPMIME(m.Data):
		case to == "x@nopolicy.test,y@nopolicy.test" && !isPGPMIME(m.Data):
		default:
			t.Errorf("MX got a message to %s, encrypted %v", to, isPGPMIME(m.Data))
		}
	}
	h.none()
}

// LMTP to a partner's gateway (a route) under fallback: encrypt: one
// encrypted copy for the recipients accepted at RCPT, and the gateway's
// per-recipient replies after DATA apply to each.
func TestEncryptLMTPRoute(t *testing.T) {
	alice, bob := pgpKey(t, "alice@partner.test"), pgpKey(t, "bob@partner.test")
	h := newHop(t, hopOptions{LMTP: true, Status: func(to string) error {
		if to == "alice@partner.test" {
			return smtpErr(552, smtp.EnhancedCode{5, 2, 2}, "mailbox full")
		}
		return nil
	}})
	dir := directory(t, encrypt.Options{KeyringDir: keyringOf(t, alice, bob)})
	dec, err := tlspolicy.New(tlspolicy.Options{Rules: fallbackRule(tlspolicy.Verify)})
	if err != nil {
		t.Fatal(err)
	}
	e := engine(t, &outbound.Router{Routes: []outbound.Route{{Match: "partner.test", Target: target(t, "lmtp://"+h.addr)}}}, func(o *outbound.EngineOptions) {
		o.TLS = dec
		o.Encryption = &outbound.Encryption{Dir: dir, Rules: map[string]*outbound.EncryptRule{"partner.test": {}}, SpillDir: t.TempDir()}
	})
	res := deliver(t, e, newSpool(t).put("sender@ours.test", []string{"alice@partner.test", "bob@partner.test"}, message))
	check(t, "alice", res[0], queue.PermFail, "5.2.2")
	check(t, "bob", res[1], queue.Delivered, "2.0.0")
	if !strings.Contains(res[1].TLSPolicy, "fallback=encrypt") || !strings.Contains(res[1].Encryption, "key="+fingerprint(bob)) {
		t.Errorf("bob: tls_policy %q, encryption %q", res[1].TLSPolicy, res[1].Encryption)
	}
	m := h.next()
	h.none()
	if _, msg, _ := sealed(t, m.Data); !bytes.Contains(decryptWith(t, msg, bob), []byte("..two dots")) {
		t.Error("bob's copy does not decrypt to the message")
	}
}
