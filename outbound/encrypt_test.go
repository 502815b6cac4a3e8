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
