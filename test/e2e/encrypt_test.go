package e2e

// The encryption fallback (issue 12) end to end: the real relay, a test
// MX that records every byte it gets, recipients' keys made by gpg, and
// the encrypted message read back by gpg, Sequoia (sq) and RNP.
//
// Every MX here lies on 127.0.0.120-127 port 25, and the WKD hosts on
// 127.0.0.128-129 port 443: no other e2e test uses them.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/multipart"
	"net/mail"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	gomail "github.com/emersion/go-message/mail"

	"securerelay/dnsutil/dnstest"
	"securerelay/internal/testutil"
)

// ---------------------------------------------------------------------------
// gpg, as encrypt/helpers_test.go drives it: the recipients' keys.

// gpgHome is a GNUPGHOME of its own, on a short path (gpg-agent's socket
// lives in it, and socket paths are limited to about 100 bytes); its
// agent is stopped and the folder removed when the test ends.
type gpgHome struct {
	t   *testing.T
	dir string
}

func newGPGHome(t *testing.T) *gpgHome {
	t.Helper()
	requireTool(t, "gpg")
	dir, err := os.MkdirTemp("", "e2egpg")
	if err != nil {
		t.Fatal(err)
	}
	g := &gpgHome{t: t, dir: dir}
	t.Cleanup(func() {
		cmd := exec.Command("gpgconf", "--kill", "gpg-agent")
		cmd.Env = append(os.Environ(), "GNUPGHOME="+dir)
		_ = cmd.Run()
		os.RemoveAll(dir)
	})
	return g
}

// run runs gpg in batch mode without a passphrase.
func (g *gpgHome) run(stdin []byte, args ...string) (stdout, stderr []byte, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "gpg", append([]string{"--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+g.dir, "LC_ALL=C")
	cmd.Stdin = bytes.NewReader(stdin)
	var o, e bytes.Buffer
	cmd.Stdout, cmd.Stderr = &o, &e
	err = cmd.Run()
	return o.Bytes(), e.Bytes(), err
}

func (g *gpgHome) must(stdin []byte, args ...string) []byte {
	g.t.Helper()
	out, errOut, err := g.run(stdin, args...)
	if err != nil {
		g.t.Fatalf("gpg %s: %v\n%s", strings.Join(args, " "), err, errOut)
	}
	return out
}

// newKey makes a key for uid and returns its fingerprint: kind is
// "cv25519" (Ed25519 primary, Curve25519 encryption subkey), "rsa3072"
// (both RSA-3072) or "sign-only" (an Ed25519 key that cannot encrypt).
func (g *gpgHome) newKey(uid, kind string) string {
	g.t.Helper()
	prim, sub := "ed25519", "cv25519"
	if kind == "rsa3072" {
		prim, sub = "rsa3072", "rsa3072"
	}
	out := g.must(nil, "--status-fd", "1", "--quick-gen-key", uid, prim, "sign,cert", "never")
	var fpr string
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 4 && f[1] == "KEY_CREATED" {
			fpr = f[3]
		}
	}
	if fpr == "" {
		g.t.Fatalf("gpg made no key for %s:\n%s", uid, out)
	}
	if kind != "sign-only" {
		g.must(nil, "--quick-add-key", fpr, sub, "encr", "never")
	}
	return fpr
}

func (g *gpgHome) public(fpr string) []byte { return g.must(nil, "--armor", "--export", fpr) }
func (g *gpgHome) binary(fpr string) []byte { return g.must(nil, "--export", fpr) }
func (g *gpgHome) secret(fpr string) []byte {
	return g.must(nil, "--armor", "--export-secret-keys", fpr)
}

// decrypt runs gpg --decrypt and returns the plaintext with CRLF line
// ends restored (the inner part is text-mode literal data, which gpg
// writes out with LF, as RFC 4880 section 5.9 allows) and gpg's status
// lines.
func (g *gpgHome) decrypt(armored []byte) (plain []byte, status string) {
	g.t.Helper()
	out, st, err := g.run(armored, "--status-fd", "2", "--decrypt")
	if err != nil {
		g.t.Fatalf("gpg --decrypt: %v\n%s", err, st)
	}
	var crlf []byte
	for i, c := range out {
		if c == '\n' && (i == 0 || out[i-1] != '\r') {
			crlf = append(crlf, '\r')
		}
		crlf = append(crlf, c)
	}
	return crlf, string(st)
}

// wkdHash is the WKD hash of addr's local part, as gpg computes it.
func (g *gpgHome) wkdHash(addr string) string {
	g.t.Helper()
	out := g.must(nil, "--with-wkd-hash", "--list-keys", addr)
	dom := addr[strings.LastIndexByte(addr, '@')+1:]
	m := regexp.MustCompile(`(?m)^\s+([a-z0-9]{32})@` + regexp.QuoteMeta(dom) + `$`).FindStringSubmatch(string(out))
	if m == nil {
		g.t.Fatalf("gpg --with-wkd-hash printed no hash for %s:\n%s", addr, out)
	}
	return m[1]
}

// keyring writes the public keys of fprs into a new keyring folder.
func (g *gpgHome) keyring(fprs ...string) string {
	g.t.Helper()
	dir := g.t.TempDir()
	for _, f := range fprs {
		writeFile(g.t, filepath.Join(dir, f+".asc"), string(g.public(f)))
	}
	return dir
}

// ---------------------------------------------------------------------------
// The confidential message and what must become of it.

const (
	secretSubjectWord = "Jahresabschluss"
	secretBodyWord    = "Geheimzahl-4711"
	secretFileName    = "Bilanz-Müller-2026.pdf"
	secretBoundary    = "inner-Xq9-boundary"
	secretMailer      = "OTRS-secret-build"
)

// confidential is a message as an application submits it: a non-ASCII
// Subject, 8-bit UTF-8 text (with a line that is a lone dot), and a
// binary attachment whose file name is non-ASCII (RFC 2231).
type confidential struct {
	data    []byte // the whole message, CRLF
	header  []byte // up to the empty line
	body    []byte // after it
	text    string // the text part, decoded
	pdf     []byte // the attachment, decoded
	subject string // the Subject field's value as written
}

func newConfidential(t *testing.T, from, to, msgID string) confidential {
	t.Helper()
	pdf := make([]byte, 6000)
	rand.Read(pdf)
	b64 := base64.StdEncoding.EncodeToString(pdf)
	var lines strings.Builder
	for len(b64) > 76 {
		lines.WriteString(b64[:76] + "\r\n")
		b64 = b64[76:]
	}
	lines.WriteString(b64 + "\r\n")
	subject := mime.QEncoding.Encode("utf-8", "Vertraulich: "+secretSubjectWord+" für Müller")
	// The CRLF before a boundary belongs to the boundary (RFC 2046).
	text := "Grüße aus dem Büro, die " + secretBodyWord + " steht im Anhang.\r\n.\r\n..zwei Punkte am Zeilenanfang."
	c := confidential{pdf: pdf, text: text, subject: subject}
	c.header = []byte("From: " + mime.QEncoding.Encode("utf-8", "Steuerbüro Beispiel") + " <" + from + ">\r\n" +
		"To: <" + to + ">\r\n" +
		"Subject: " + subject + "\r\n" +
		"Date: Mon, 07 Dec 2026 10:00:00 +0100\r\n" +
		"Message-ID: <" + msgID + ">\r\n" +
		"X-Mailer: " + secretMailer + "\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed; boundary=\"" + secretBoundary + "\"\r\n")
	c.body = []byte("--" + secretBoundary + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n\r\n" +
		text + "\r\n" +
		"--" + secretBoundary + "\r\n" +
		"Content-Type: application/pdf; name*=UTF-8''" + rfc2231(secretFileName) + "\r\n" +
		"Content-Disposition: attachment; filename*=UTF-8''" + rfc2231(secretFileName) + "\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" +
		lines.String() +
		"--" + secretBoundary + "--\r\n")
	c.data = append(append(slices.Clone(c.header), "\r\n"...), c.body...)
	return c
}

// rfc2231 percent-encodes every octet outside attribute-char.
func rfc2231(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c < 0x80 && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0) {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// secrets are the spellings of what must not leave in clear.
func (c confidential) secrets() []string {
	return []string{secretSubjectWord, c.subject, "Vertraulich", secretBodyWord, "Grüße", "Gr\xc3\xbc", "Anhang",
		secretFileName, rfc2231(secretFileName), "Bilanz", "application/pdf", secretBoundary, secretMailer,
		base64.StdEncoding.EncodeToString(c.pdf[:48])}
}

// checkNoSecrets requires that none of c's secrets is in what.
func (c confidential) checkNoSecrets(t *testing.T, where, what string) {
	t.Helper()
	if what == "" {
		t.Errorf("%s: nothing recorded; the check proves nothing", where)
	}
	for _, s := range c.secrets() {
		if strings.Contains(what, s) {
			t.Errorf("%s contains %q in clear", where, s)
		}
	}
}

// send submits c with swaks as it is (--data) and returns the queue ID.
func (c confidential) send(t *testing.T, server, from string, to ...string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "message.eml")
	// swaks ends the data with a CRLF of its own before the final dot.
	if err := os.WriteFile(f, bytes.TrimSuffix(c.data, []byte("\r\n")), 0o600); err != nil {
		t.Fatal(err)
	}
	return mustSend(t, "--server", server, "--from", from, "--to", strings.Join(to, ","), "--data", "@"+f).QueueID()
}

// openPGPMIME checks that data is an RFC 3156 PGP/MIME message and
// returns its outer header and the armoured OpenPGP message.
func openPGPMIME(t *testing.T, data []byte) (mail.Header, []byte) {
	t.Helper()
	m, err := mail.ReadMessage(bytes.NewReader(data))
	if err != nil {
		t.Fatalf("received message: %v\n%s", err, data)
	}
	mt, params, err := mime.ParseMediaType(m.Header.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" {
		t.Fatalf("Content-Type %q, want multipart/encrypted; protocol=\"application/pgp-encrypted\":\n%s",
			m.Header.Get("Content-Type"), headerSection(data))
	}
	mr := multipart.NewReader(m.Body, params["boundary"])
	var types []string
	var parts [][]byte
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(p)
		if err != nil {
			t.Fatal(err)
		}
		types = append(types, p.Header.Get("Content-Type"))
		parts = append(parts, b)
	}
	if len(parts) != 2 || types[0] != "application/pgp-encrypted" || !strings.Contains(string(parts[0]), "Version: 1") ||
		types[1] != "application/octet-stream" || !bytes.HasPrefix(parts[1], []byte("-----BEGIN PGP MESSAGE-----")) {
		t.Fatalf("parts %q, want application/pgp-encrypted (Version: 1) and an armoured message:\n%s", types, data)
	}
	return m.Header, parts[1]
}

// checkDecrypted checks a decrypted inner part against c: the original
// body byte for byte, the protected headers, and the text and attachment
// as a mail client reads them.
func (c confidential) checkDecrypted(t *testing.T, who string, plain []byte) {
	t.Helper()
	h, body, ok := bytes.Cut(plain, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("%s: no header in the decrypted part:\n%s", who, plain)
	}
	if !bytes.Equal(body, c.body) {
		t.Errorf("%s: body changed (%d bytes, want %d)", who, len(body), len(c.body))
	}
	hs := string(h) + "\r\n"
	for _, f := range []string{"Subject: " + c.subject + "\r\n", "Message-ID: <", "Date: Mon, 07 Dec 2026 10:00:00 +0100\r\n",
		"X-Mailer: " + secretMailer + "\r\n", "From: ", "To: "} {
		if !strings.Contains(hs, f) {
			t.Errorf("%s: protected header %q missing inside:\n%s", who, f, hs)
		}
	}
	if !strings.Contains(hs, "protected-headers=\"v1\"") {
		t.Errorf("%s: the inner Content-Type lacks protected-headers=\"v1\":\n%s", who, hs)
	}
	mr, err := gomail.CreateReader(bytes.NewReader(plain))
	if err != nil {
		t.Fatalf("%s: reading the decrypted part: %v", who, err)
	}
	if s, err := mr.Header.Subject(); err != nil || s != "Vertraulich: "+secretSubjectWord+" für Müller" {
		t.Errorf("%s: protected Subject %q (%v)", who, s, err)
	}
	var text string
	files := map[string][]byte{}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		b, err := io.ReadAll(p.Body)
		if err != nil {
			t.Fatalf("%s: %v", who, err)
		}
		switch ph := p.Header.(type) {
		case *gomail.InlineHeader:
			text = string(b)
		case *gomail.AttachmentHeader:
			name, err := ph.Filename()
			if err != nil {
				t.Fatalf("%s: attachment name: %v", who, err)
			}
			files[name] = b
		}
	}
	if text != c.text {
		t.Errorf("%s: text part %q, want %q", who, text, c.text)
	}
	if len(files) != 1 || !bytes.Equal(files[secretFileName], c.pdf) {
		var names []string
		for n := range files {
			names = append(names, n)
		}
		t.Errorf("%s: attachments %q, want %q with the original %d bytes", who, names, secretFileName, len(c.pdf))
	}
}

// decryptOthers decrypts armored with Sequoia (sq) and RNP, as
// independent implementations, with the secret key of fpr.
func (c confidential) decryptOthers(t *testing.T, g *gpgHome, fpr string, armored []byte) {
	t.Helper()
	dir := t.TempDir()
	in, keyFile := filepath.Join(dir, "msg.asc"), filepath.Join(dir, "key.sec")
	writeFile(t, in, string(armored))
	writeFile(t, keyFile, string(g.secret(fpr)))
	run := func(name string, args ...string) []byte {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var o, e bytes.Buffer
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Stdout, cmd.Stderr = &o, &e
		if err := cmd.Run(); err != nil {
			t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, e.String())
		}
		return o.Bytes()
	}
	t.Run("sq", func(t *testing.T) {
		requireTool(t, "sq")
		c.checkDecrypted(t, "sq", run("sq", "decrypt", "--recipient-key", keyFile, in))
	})
	t.Run("rnp", func(t *testing.T) {
		requireTool(t, "rnp")
		home := filepath.Join(dir, "rnphome")
		os.Mkdir(home, 0o700)
		c.checkDecrypted(t, "rnp", run("rnp", "--homedir", home, "--keyfile", keyFile, "--decrypt", in, "--output", "-"))
	})
}

// encryptionConfig is outbound.encryption with a keyring (or none) and
// WKD on or off.
func encryptionConfig(keyring string, wkd bool) string {
	s := fmt.Sprintf("  encryption:\n    wkd: %v\n", wkd)
	if keyring != "" {
		s += fmt.Sprintf("    keyring: %q\n", keyring)
	}
	return s
}

// mustContain reports each of subs missing from line.
func mustContain(t *testing.T, what, line string, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !strings.Contains(line, s) {
			t.Errorf("%s lacks %q:\n%s", what, s, line)
		}
	}
}

// ---------------------------------------------------------------------------
// The tests.

// TestEncryptFallbackPGPMIME: a partner whose rule requires verified TLS
// and falls back to encryption, an MX that offers no STARTTLS at all, and
// the recipient's RSA-3072 key in the keyring. The MX receives PGP/MIME
// in clear text; gpg, sq and rnp give back the original body and its
// attachment byte for byte and the protected headers; nothing of the
// subject, the text or the attachment name is in any byte the MX got.
func TestEncryptFallbackPGPMIME(t *testing.T) {
	requireTool(t, "swaks")
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "rsa3072")
	mx := startPolicyMX(t, listenMX(t, "127.0.0.120"), mxOptions{})
	dns := dnstest.NewServer(t, partnerZone("127.0.0.120"))
	keyring := g.keyring(bob)
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Outbound: encryptionConfig(keyring, false),
		TLS: "    policies:\n      - {match: partner.test, level: verify, fallback: encrypt}\n"})

	c := newConfidential(t, "sender@example.test", "bob@partner.test", "fallback-1@example.test")
	id := c.send(t, r.Sub, "sender@example.test", "bob@partner.test")
	a := r.waitAttempt(t, id, 30*time.Second)
	if a.Status != "sent" {
		t.Fatalf("%s, want sent (encrypted):\n%s", a.Status, a.Line)
	}
	mustContain(t, "the delivery log line", a.Line, "tls required=verify (policy rule 1 (match partner.test))", "achieved=none", "fallback=encrypt",
		`encryption="openpgp key=`+bob+" key_source=keyring ("+keyring)

	m := mx.waitMessage(t, 5*time.Second)
	if m.TLS || len(m.To) != 1 || m.To[0] != "bob@partner.test" || m.From != "sender@example.test" {
		t.Errorf("MX got <%s> to %v, TLS %v; want <sender@example.test> to bob@partner.test in clear text (no STARTTLS offered)", m.From, m.To, m.TLS)
	}
	outer, armored := openPGPMIME(t, m.Data)
	if s := outer.Get("Subject"); s != "..." {
		t.Errorf("outer Subject %q, want the placeholder \"...\"", s)
	}
	if outer.Get("Message-Id") != "<fallback-1@example.test>" || !strings.Contains(outer.Get("From"), "sender@example.test") {
		t.Errorf("outer From %q, Message-ID %q: delivery and threading need them", outer.Get("From"), outer.Get("Message-Id"))
	}
	c.checkNoSecrets(t, "the bytes the MX received", mx.Raw())
	c.checkNoSecrets(t, "the message the MX accepted", string(m.Data))

	plain, status := g.decrypt(armored)
	mustContain(t, "gpg status", status, "DECRYPTION_OKAY", "GOODMDC")
	c.checkDecrypted(t, "gpg", plain)
	c.decryptOthers(t, g, bob, armored)
}

// TestEncryptFallbackSigned: the same through an MX with a self-signed
// certificate (STARTTLS offered, level verify not met), from a domain with
// two DKIM keys and an OpenPGP signing key. The relaxed session uses the
// STARTTLS offered; the DKIM signatures cover the encrypted bytes and
// verify with dkimverify and opendkim-testmsg; gpg sees the organisation's
// signature inside.
func TestEncryptFallbackSigned(t *testing.T) {
	requireTool(t, "swaks")
	dir := t.TempDir()
	rsaKey, rsaZone := keygen(t, dir, "s2026", "rsa")
	edKey, edZone := keygen(t, dir, "e2026", "ed25519")
	g := newGPGHome(t)
	alice := g.newKey("Alice <alice@partner.test>", "cv25519")
	org := g.newKey("Example Org <relay@example.test>", "cv25519")
	orgKey := filepath.Join(dir, "org.sec.asc")
	writeFile(t, orgKey, string(g.secret(org)))
	mx := startPolicyMX(t, listenMX(t, "127.0.0.121"), mxOptions{TLS: testutil.ServerTLS(testutil.SelfSigned(t, "mx.partner.test"))})
	dns := dnstest.NewServer(t, partnerZone("127.0.0.121")+rsaZone+edZone)
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Outbound: encryptionConfig(g.keyring(alice), false),
		Domain: fmt.Sprintf("    dkim:\n      - {selector: s2026, key: %q}\n      - {selector: e2026, key: %q}\n    openpgp_signing_key: %q\n", rsaKey, edKey, orgKey),
		TLS:    "    policies:\n      - {match: partner.test, level: verify, fallback: encrypt}\n"})

	c := newConfidential(t, "otrs@example.test", "alice@partner.test", "signed-1@example.test")
	id := c.send(t, r.Sub, "otrs@example.test", "alice@partner.test")
	a := r.waitAttempt(t, id, 30*time.Second)
	if a.Status != "sent" {
		t.Fatalf("%s, want sent (encrypted):\n%s", a.Status, a.Line)
	}
	mustContain(t, "the delivery log line", a.Line, "required=verify", "fallback=encrypt", "key="+alice, "key_source=keyring")
	m := mx.waitMessage(t, 5*time.Second)
	if !m.TLS {
		t.Errorf("MX got the encrypted message in clear text, though it offered STARTTLS (the best session offered)")
	}
	_, armored := openPGPMIME(t, m.Data)
	c.checkNoSecrets(t, "the dialogue as the MX read it", mx.Transcript())

	if sels := verifiedSelectors(t, m.Data, dns.Addr()); strings.Join(sels, ",") != "e2026,s2026" {
		t.Errorf("go-msgauth verified selectors %v, want e2026 and s2026", sels)
	}
	verifyDKIMTools(t, dir, m.Data, rsaZone+edZone, "BEGIN PGP MESSAGE", "BEGIN PGP MESSAGF")

	plain, status := g.decrypt(armored)
	mustContain(t, "gpg status", status, "DECRYPTION_OKAY", "GOODSIG", "VALIDSIG "+org)
	c.checkDecrypted(t, "gpg", plain)

	// Larger than the encrypted copy kept in memory and than the DKIM
	// signer reads at once: the copy is read again from its file to sign.
	big := filepath.Join(dir, "big.txt")
	line := "A line of a large confidential message, " + secretBodyWord + ".\n"
	writeFile(t, big, strings.Repeat(line, (3<<20)/len(line)))
	mustSend(t, "--server", r.Sub, "--from", "otrs@example.test", "--to", "alice@partner.test",
		"--header", "Subject: large "+secretSubjectWord, "--body", "@"+big)
	bm := waitPolicyMessages(t, mx, 2, 30*time.Second)[1]
	if len(bm.Data) < 3<<20 {
		t.Fatalf("the large message arrived with %d bytes", len(bm.Data))
	}
	_, barmored := openPGPMIME(t, bm.Data)
	if sels := verifiedSelectors(t, bm.Data, dns.Addr()); strings.Join(sels, ",") != "e2026,s2026" {
		t.Errorf("large message: verified selectors %v, want e2026 and s2026", sels)
	}
	bplain, _ := g.decrypt(barmored)
	if n := bytes.Count(bplain, []byte(line[:len(line)-1]+"\r\n")); n != (3<<20)/len(line) {
		t.Errorf("the large message decrypts to %d of its %d lines", n, (3<<20)/len(line))
	}
	c.checkNoSecrets(t, "the large message", string(bm.Data))
}

// waitPolicyMessages waits until m accepted at least n messages.
func waitPolicyMessages(t *testing.T, m *policyMX, n int, timeout time.Duration) []received {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if msgs := m.Messages(); len(msgs) >= n {
			return msgs
		}
		if time.Now().After(deadline) {
			t.Fatalf("MX %s: %d messages after %v, want %d", m.Addr, len(m.Messages()), timeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestEncryptFallbackPartialKeys: one message to three recipients of the
// partner, one with a key and two without. The first gets the encrypted
// copy at once; the others wait (deferred, the log says why) and are
// tried again. Dave's key is added to the keyring meanwhile (no reload):
// a retry sends him his own encrypted copy. Carol's never appears: after
// queue.max_age she comes back to the sender in a DSN that names her,
// says that neither the encryption nor a key could be had, and what the
// partner can do. Nothing for her ever reaches the MX.
func TestEncryptFallbackPartialKeys(t *testing.T) {
	requireTool(t, "swaks")
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	dave := g.newKey("Dave <dave@partner.test>", "rsa3072")
	mx := startPolicyMX(t, listenMX(t, "127.0.0.122"), mxOptions{})
	dns := dnstest.NewServer(t, partnerZone("127.0.0.122"))
	keyring := g.keyring(bob)
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Outbound: encryptionConfig(keyring, false),
		Queue: "  retry: [1s]\n  max_age: 10s\n",
		TLS:   "    policies:\n      - {match: partner.test, level: verify, fallback: encrypt}\n"})

	c := newConfidential(t, "sender@example.test", "bob@partner.test", "partial-1@example.test")
	id := c.send(t, r.Sub, "sender@example.test", "bob@partner.test", "carol@partner.test", "dave@partner.test")
	sent := r.waitRcpt(t, id, "bob@partner.test", 30*time.Second)
	if sent.Status != "sent" {
		t.Fatalf("bob: %s, want sent:\n%s", sent.Status, sent.Line)
	}
	mustContain(t, "bob's log line", sent.Line, "fallback=encrypt", "key="+bob)
	wait := r.waitRcpt(t, id, "carol@partner.test", 30*time.Second)
	if wait.Status != "deferred" {
		t.Fatalf("carol: %s, want deferred (no key, and TLS not met):\n%s", wait.Status, wait.Line)
	}
	mustContain(t, "carol's log line", wait.Line, "dsn=4.7.10", "required=verify", "failure=no-starttls",
		"no usable OpenPGP key for carol@partner.test (searched keyring)", `encryption="openpgp: no usable OpenPGP key for carol@partner.test`)
	if a := r.waitRcpt(t, id, "dave@partner.test", 30*time.Second); a.Status != "deferred" {
		t.Fatalf("dave: %s, want deferred (no key yet):\n%s", a.Status, a.Line)
	}
	writeFile(t, filepath.Join(keyring, "dave.asc"), string(g.public(dave)))
	daveSent := r.waitLine(t, 20*time.Second, "msg=sent", "queue_id="+id, "to=dave@partner.test")
	mustContain(t, "dave's log line once his key is there", daveSent, "fallback=encrypt", "key="+dave)

	bounced := r.waitLine(t, 40*time.Second, "msg=bounced", "queue_id="+id, "to=carol@partner.test")
	mustContain(t, "carol's final log line", bounced, "no usable OpenPGP key for carol@partner.test")
	if n := len(r.LogLines("queue_id="+id, "to=carol@partner.test", "msg=deferred")); n < 2 {
		t.Errorf("carol was deferred %d times before the DSN, want at least 2 (retried)", n)
	}
	dsns := waitMaildir(t, r.Mail, "sender@example.test", 1, 15*time.Second)
	text, status := dsnParts(t, dsns[0])
	mustContain(t, "the DSN text", text, "carol@partner.test",
		"the partner's mail server (mx.partner.test) did not offer the encryption that your organisation requires for partner.test",
		"No usable OpenPGP key was found for carol@partner.test", "Web Key Directory (WKD)")
	if strings.Contains(status, "bob@partner.test") || strings.Contains(status, "dave@partner.test") || !strings.Contains(status, "carol@partner.test") {
		t.Errorf("DSN status part, want carol@partner.test alone:\n%s", status)
	}
	t.Run("DSN status code", func(t *testing.T) {
		// An expired deferral is a failure with status 5.4.7 (delivery
		// time expired): the queue once gave it 4.4.7, which the DSN could
		// only write as 5.0.0 "unspecified error", contradicting its own
		// explanation.
		if !regexp.MustCompile(`(?mi)^Status: 5\.(4\.7|7\.\d+)\r?$`).MatchString(status) || strings.Contains(text, "unspecified error") {
			t.Errorf("want Status 5.4.7 (expired) or the 5.7.x of the cause, and no \"unspecified error\":\n%s\n%s", status, text)
		}
	})

	msgs := mx.Messages()
	if len(msgs) != 2 || strings.Join(msgs[0].To, ",") != "bob@partner.test" || strings.Join(msgs[1].To, ",") != "dave@partner.test" {
		t.Fatalf("MX got %d messages, want two: to bob@partner.test, then to dave@partner.test", len(msgs))
	}
	for i, fpr := range []string{bob, dave} {
		_, armored := openPGPMIME(t, msgs[i].Data)
		plain, status := g.decrypt(armored)
		c.checkDecrypted(t, "gpg", plain)
		if m := regexp.MustCompile(`(?m)^\[GNUPG:\] ENC_TO ([0-9A-F]{16})`).FindAllStringSubmatch(status, -1); len(m) != 1 || !strings.Contains(string(g.must(nil, "--list-keys", "--with-subkey-fingerprints", fpr)), m[0][1]) {
			t.Errorf("copy %d: gpg says it is encrypted to %v, want one key, %s's", i, m, fpr)
		}
	}
	if rc := mx.Rcpts(); strings.Join(rc, ",") != "bob@partner.test,dave@partner.test" {
		t.Errorf("MX saw RCPT %v, want bob@partner.test and dave@partner.test", rc)
	}
	c.checkNoSecrets(t, "the bytes the MX received", mx.Raw())
}

// TestEncryptAlwaysRefusedAtRCPT: mail to a partner whose rule says it is
// always encrypted (encrypt: always, no TLS-only fallback) is refused at
// RCPT on the submission listener for a recipient without a key, with a
// reply that names the policy and what is missing; a recipient with a
// key, and one of a rule with without_key: tls, are accepted. Inbound
// mail is never encrypted, so the inbound listener does not refuse our
// own recipients under such a rule.
func TestEncryptAlwaysRefusedAtRCPT(t *testing.T) {
	requireTool(t, "swaks")
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	dns := dnstest.NewServer(t, partnerZone("127.0.0.123")+"mx.local.test. A 127.0.0.123\n")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Inbound: true, Outbound: encryptionConfig(g.keyring(bob), false),
		Domains: "  local.test:\n    deliver_to: smtp://mx.local.test:25\n    recipients: {list: [user]}\n",
		TLS: "    policies:\n" +
			"      - {match: partner.test, level: verify, encrypt: always}\n" +
			"      - {match: lenient.test, level: verify, encrypt: always, without_key: tls}\n" +
			"      - {match: local.test, level: verify, encrypt: always}\n"})
	mustSend(t, "--server", r.MX, "--from", "alice@example.org", "--to", "user@local.test")

	res := swaks(t, "--server", r.Sub, "--from", "sender@example.test", "--to", "carol@partner.test")
	errs := res.ErrorReplies()
	if res.Code == 0 || len(errs) == 0 || !strings.HasPrefix(errs[0], "550 5.7.1 ") {
		t.Fatalf("RCPT TO:<carol@partner.test>: exit %d, errors %q; want 550 5.7.1 at RCPT:\n%s", res.Code, errs, res.Out)
	}
	mustContain(t, "the refusal", errs[0], "carol@partner.test", "partner.test", "encrypt: always", "WKD")
	if n := len(r.LogLines("msg=reject", "stage=rcpt", "dsn=5.7.1", "carol@partner.test")); n != 1 {
		t.Errorf("%d log lines for the refusal, want 1", n)
	}
	mustSend(t, "--server", r.Sub, "--from", "sender@example.test", "--to", "bob@partner.test")
	mustSend(t, "--server", r.Sub, "--from", "sender@example.test", "--to", "carol@lenient.test")
}

// TestEncryptWKD: no keyring; recipients' keys are published in their
// domains' Web Key Directories on HTTPS hosts. partner.test uses the
// advanced method (openpgpkey.partner.test), direct.test the direct one,
// both with certificates from the test CA (outbound.tls.ca_file): the
// relay finds the keys there and the MX gets copies encrypted to them.
// untrusted.test's WKD host has a self-signed certificate: its key is not
// used, and the message waits.
func TestEncryptWKD(t *testing.T) {
	requireTool(t, "swaks")
	ca := newTestCA(t)
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	dave := g.newKey("Dave <dave@direct.test>", "rsa3072")
	eve := g.newKey("Eve <eve@untrusted.test>", "cv25519")
	advanced := "openpgpkey.partner.test/.well-known/openpgpkey/partner.test/hu/" + g.wkdHash("bob@partner.test")
	direct := "direct.test/.well-known/openpgpkey/hu/" + g.wkdHash("dave@direct.test")
	untrusted := "openpgpkey.untrusted.test/.well-known/openpgpkey/untrusted.test/hu/" + g.wkdHash("eve@untrusted.test")
	web := startHTTPSHost(t, listenOn(t, "127.0.0.128", "443"), ca, nil, map[string][]byte{advanced: g.binary(bob), direct: g.binary(dave)})
	var selfSignedCA *testCA // nil: the host's certificate is self-signed
	bad := startHTTPSHost(t, listenOn(t, "127.0.0.129", "443"), selfSignedCA, nil, map[string][]byte{untrusted: g.binary(eve)})
	mx := startPolicyMX(t, listenMX(t, "127.0.0.124"), mxOptions{})
	dns := dnstest.NewServer(t, partnerZone("127.0.0.124")+`openpgpkey.partner.test. A 127.0.0.128
direct.test. MX 10 mx.partner.test.
direct.test. A 127.0.0.128
untrusted.test. MX 10 mx.partner.test.
openpgpkey.untrusted.test. A 127.0.0.129
`)
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Outbound: encryptionConfig("", true),
		TLS: fmt.Sprintf("    ca_file: %q\n    policies:\n"+
			"      - {match: partner.test, level: verify, fallback: encrypt}\n"+
			"      - {match: direct.test, level: verify, fallback: encrypt}\n"+
			"      - {match: untrusted.test, level: verify, fallback: encrypt}\n", ca.pemFile)})

	n := 0
	for _, tc := range []struct{ rcpt, fpr, file string }{{"bob@partner.test", bob, advanced}, {"dave@direct.test", dave, direct}} {
		t.Run(tc.rcpt, func(t *testing.T) {
			c := newConfidential(t, "sender@example.test", tc.rcpt, "wkd-"+tc.rcpt)
			id := c.send(t, r.Sub, "sender@example.test", tc.rcpt)
			a := r.waitAttempt(t, id, 30*time.Second)
			if a.Status != "sent" {
				t.Fatalf("%s, want sent (encrypted to the key from WKD):\n%s", a.Status, a.Line)
			}
			mustContain(t, "the delivery log line", a.Line, "fallback=encrypt", "key="+tc.fpr, "key_source=wkd (https://"+tc.file)
			if n := web.Gets(tc.file); n < 1 {
				t.Errorf("the WKD host served the key %d times", n)
			}
			n++
			m := waitPolicyMessages(t, mx, n, 10*time.Second)[n-1]
			if strings.Join(m.To, ",") != tc.rcpt {
				t.Fatalf("MX got a message to %v, want %s", m.To, tc.rcpt)
			}
			_, armored := openPGPMIME(t, m.Data)
			c.checkNoSecrets(t, "the message the MX received", string(m.Data))
			plain, _ := g.decrypt(armored)
			c.checkDecrypted(t, "gpg", plain)
		})
	}
	t.Run("untrusted certificate", func(t *testing.T) {
		c := newConfidential(t, "sender@example.test", "eve@untrusted.test", "wkd-eve@example.test")
		id := c.send(t, r.Sub, "sender@example.test", "eve@untrusted.test")
		a := r.waitAttempt(t, id, 30*time.Second)
		if a.Status != "deferred" {
			t.Fatalf("%s, want deferred (the WKD host's certificate is not trusted):\n%s", a.Status, a.Line)
		}
		mustContain(t, "the log line", a.Line, "no usable OpenPGP key for eve@untrusted.test (searched wkd)")
		if bad.Gets(untrusted) != 0 {
			t.Errorf("the relay fetched the key over TLS with an untrusted certificate")
		}
		for _, m := range mx.Messages() {
			if slices.Contains(m.To, "eve@untrusted.test") {
				t.Errorf("MX got a message to eve@untrusted.test")
			}
		}
	})
	// Every message carried the same secret words.
	newConfidential(t, "", "", "").checkNoSecrets(t, "the bytes the MX received", mx.Raw())
}

// TestEncryptOPENPGPKEY: keys published as DNS OPENPGPKEY records (RFC
// 7929, the zone lines gpg --export-options export-dane prints), with
// openpgpkey: true and a validating resolver. partner.test's answer
// carries the AD bit: its key is used. unsigned.test's does not: its key
// is not trusted, and the message waits.
func TestEncryptOPENPGPKEY(t *testing.T) {
	requireTool(t, "swaks")
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	eve := g.newKey("Eve <eve@unsigned.test>", "cv25519")
	mx := startPolicyMX(t, listenMX(t, "127.0.0.127"), mxOptions{})
	zone := partnerZone("127.0.0.127") + "unsigned.test. MX 10 mx.partner.test.\n"
	// Each export ends with its own $ORIGIN in force: it goes last.
	for _, f := range []string{bob, eve} {
		zone += string(g.must(nil, "--export-options", "export-dane", "--export", f)) + "$ORIGIN .\n"
	}
	dns := newADDNS(t, zone, "unsigned.test")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), DNSSEC: true,
		Outbound: "  encryption:\n    wkd: false\n    openpgpkey: true\n",
		TLS: "    policies:\n" +
			"      - {match: partner.test, level: verify, fallback: encrypt}\n" +
			"      - {match: unsigned.test, level: verify, fallback: encrypt}\n"})

	c := newConfidential(t, "sender@example.test", "bob@partner.test", "dane-1@example.test")
	id := c.send(t, r.Sub, "sender@example.test", "bob@partner.test", "eve@unsigned.test")
	a := r.waitRcpt(t, id, "bob@partner.test", 30*time.Second)
	if a.Status != "sent" {
		t.Fatalf("bob: %s, want sent (encrypted to the key from OPENPGPKEY):\n%s", a.Status, a.Line)
	}
	mustContain(t, "bob's log line", a.Line, "fallback=encrypt", "key="+bob, "key_source=openpgpkey")
	e := r.waitRcpt(t, id, "eve@unsigned.test", 30*time.Second)
	if e.Status != "deferred" {
		t.Fatalf("eve: %s, want deferred (OPENPGPKEY answer not validated):\n%s", e.Status, e.Line)
	}
	mustContain(t, "eve's log line", e.Line, "no usable OpenPGP key for eve@unsigned.test")
	m := mx.waitMessage(t, 5*time.Second)
	if strings.Join(m.To, ",") != "bob@partner.test" || len(mx.Messages()) != 1 {
		t.Fatalf("MX got %d messages, the first to %v; want one, to bob@partner.test", len(mx.Messages()), m.To)
	}
	_, armored := openPGPMIME(t, m.Data)
	plain, _ := g.decrypt(armored)
	c.checkDecrypted(t, "gpg", plain)
	c.checkNoSecrets(t, "the bytes the MX received", mx.Raw())
}

// TestEncryptNeverInboundOrRequireTLS: inbound mail for one of our own
// domains, whose rule would encrypt, is never encrypted: it waits for the
// TLS the rule asks. A REQUIRETLS message to a partner with a key and a
// rule with fallback: encrypt is not eligible for the fallback (RFC 8689:
// TLS on every hop): it is returned as without the rule. The MX gets
// neither.
func TestEncryptNeverInboundOrRequireTLS(t *testing.T) {
	requireTool(t, "swaks")
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	user := g.newKey("User <user@local.test>", "cv25519")
	mx := startPolicyMX(t, listenMX(t, "127.0.0.125"), mxOptions{})
	// A validating resolver: the MX host is authenticated, as REQUIRETLS
	// asks, so the one thing it lacks is STARTTLS.
	dns := newADDNS(t, partnerZone("127.0.0.125")+"mx.local.test. A 127.0.0.125\n")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), DNSSEC: true, Inbound: true, Outbound: encryptionConfig(g.keyring(bob, user), false),
		Domains: "  local.test:\n    deliver_to: smtp://mx.local.test:25\n    recipients: {list: [user]}\n",
		TLS: "    policies:\n" +
			"      - {match: partner.test, level: verify, fallback: encrypt}\n" +
			"      - {match: local.test, level: verify, fallback: encrypt}\n"})

	t.Run("inbound", func(t *testing.T) {
		id := mustSend(t, "--server", r.MX, "--from", "alice@example.org", "--to", "user@local.test",
			"--header", "Subject: marker-inbound").QueueID()
		a := r.waitAttempt(t, id, 30*time.Second)
		if a.Status != "deferred" {
			t.Fatalf("%s, want deferred (TLS not met; inbound mail is not encrypted):\n%s", a.Status, a.Line)
		}
		mustContain(t, "the log line", a.Line, "required=verify", "failure=no-starttls")
		if strings.Contains(a.Line, "encryption=") || strings.Contains(a.Line, "fallback=encrypt") {
			t.Errorf("inbound mail was considered for encryption:\n%s", a.Line)
		}
	})
	t.Run("REQUIRETLS", func(t *testing.T) {
		cl := dialSMTP(t, r.Sub)
		cl.Expect("EHLO client.e2e.test", 250)
		cl.startTLS()
		if ehlo := cl.Expect("EHLO client.e2e.test", 250); !strings.Contains(ehlo, "REQUIRETLS") {
			t.Fatalf("REQUIRETLS not advertised after STARTTLS:\n%s", ehlo)
		}
		cl.Expect("MAIL FROM:<rtls@example.test> REQUIRETLS", 250)
		cl.Expect("RCPT TO:<bob@partner.test>", 250)
		cl.Expect("DATA", 354)
		cl.Write("From: <rtls@example.test>\r\nTo: <bob@partner.test>\r\nSubject: marker-requiretls\r\n\r\nconfidential\r\n.\r\n")
		code, text := cl.Reply()
		m := regexp.MustCompile(`queued as ([A-Za-z0-9]+)`).FindStringSubmatch(text)
		if code != 250 || m == nil {
			t.Fatalf("end of DATA: %q", text)
		}
		cl.Cmd("QUIT")
		a := r.waitAttempt(t, m[1], 30*time.Second)
		if a.Status != "bounced" || !regexp.MustCompile(`dsn=5\.7\.\d+`).MatchString(a.Line) {
			t.Fatalf("%s, want bounced with 5.7.x (REQUIRETLS, no TLS: as without the rule):\n%s", a.Status, a.Line)
		}
		mustContain(t, "the log line", a.Line, "failure=no-starttls")
		if strings.Contains(a.Line, "encryption=") || strings.Contains(a.Line, "fallback=encrypt") {
			t.Errorf("a REQUIRETLS message was considered for encryption:\n%s", a.Line)
		}
		dsns := waitMaildir(t, r.Mail, "rtls@example.test", 1, 10*time.Second)
		if text, _ := dsnParts(t, dsns[0]); !strings.Contains(text, "bob@partner.test") {
			t.Errorf("DSN text does not name bob@partner.test:\n%s", text)
		}
	})
	mx.checkUntouched(t, "marker-", true)
}

// TestEncryptAlwaysTLSMet: encrypt: always with an MX that meets the TLS
// level (a certificate from the test CA, level verify): the recipient
// with a key still gets the message encrypted; with without_key: tls the
// one without a key gets it unencrypted, over the verified session.
func TestEncryptAlwaysTLSMet(t *testing.T) {
	requireTool(t, "swaks")
	ca := newTestCA(t)
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	mx := startPolicyMX(t, listenMX(t, "127.0.0.126"), mxOptions{TLS: testutil.ServerTLS(ca.issue(t, testutil.CertSpec{Names: []string{"mx.partner.test"}}))})
	dns := dnstest.NewServer(t, partnerZone("127.0.0.126"))
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Outbound: encryptionConfig(g.keyring(bob), false),
		TLS: fmt.Sprintf("    ca_file: %q\n    policies:\n      - {match: partner.test, level: verify, encrypt: always, without_key: tls}\n", ca.pemFile)})

	c := newConfidential(t, "sender@example.test", "bob@partner.test", "always-1@example.test")
	id := c.send(t, r.Sub, "sender@example.test", "bob@partner.test", "carol@partner.test")
	ab := r.waitRcpt(t, id, "bob@partner.test", 30*time.Second)
	ac := r.waitRcpt(t, id, "carol@partner.test", 30*time.Second)
	if ab.Status != "sent" || ac.Status != "sent" {
		t.Fatalf("bob %s, carol %s; want both sent:\n%s\n%s", ab.Status, ac.Status, ab.Line, ac.Line)
	}
	mustContain(t, "bob's log line", ab.Line, "required=verify", "achieved=verify", `encryption="openpgp key=`+bob)
	mustContain(t, "carol's log line", ac.Line, "required=verify", "achieved=verify")
	if strings.Contains(ab.Line, "fallback=encrypt") {
		t.Errorf("bob's session met the level; the log says the fallback was used:\n%s", ab.Line)
	}
	if strings.Contains(ac.Line, "encryption=") {
		t.Errorf("carol has no key; the log says encrypted:\n%s", ac.Line)
	}
	msgs := mx.Messages()
	if len(msgs) != 2 {
		t.Fatalf("MX got %d messages, want 2 (bob encrypted, carol plain)", len(msgs))
	}
	for _, m := range msgs {
		if !m.TLS {
			t.Errorf("MX got the message to %v without TLS", m.To)
		}
		switch strings.Join(m.To, ",") {
		case "bob@partner.test":
			_, armored := openPGPMIME(t, m.Data)
			c.checkNoSecrets(t, "bob's copy", string(m.Data))
			plain, _ := g.decrypt(armored)
			c.checkDecrypted(t, "gpg", plain)
		case "carol@partner.test":
			if !bytes.Contains(m.Data, c.body) || !bytes.Contains(m.Data, []byte("Subject: "+c.subject)) {
				t.Errorf("carol's copy is not the original message:\n%s", headerSection(m.Data))
			}
		default:
			t.Errorf("MX got a message to %v, want one to bob and one to carol", m.To)
		}
	}
}

// TestEncryptCheckConfigPins: check-config refuses a pinned key whose
// fingerprint is not that of the key in its file, and a pinned key that
// cannot encrypt, each with FILE:LINE; the same pin done right passes.
func TestEncryptCheckConfigPins(t *testing.T) {
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	other := g.newKey("Other <other@partner.test>", "cv25519")
	erin := g.newKey("Erin <erin@signonly.test>", "sign-only")
	dir := t.TempDir()
	bobFile, erinFile := filepath.Join(dir, "bob.asc"), filepath.Join(dir, "erin.asc")
	writeFile(t, bobFile, string(g.public(bob)))
	writeFile(t, erinFile, string(g.public(erin)))
	dns := dnstest.NewServer(t, "")

	write := func(bobFpr string) (cfg, text string) {
		cfg = filepath.Join(dir, "relay.yaml")
		text = configHead(filepath.Join(dir, "state"), dns.Addr()) + fmt.Sprintf(`listeners:
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8]}
outbound:
  encryption:
    wkd: false
  tls:
    policies:
      - match: partner.test
        level: verify
        fallback: encrypt
        keys:
          - fingerprint: %q
            file: %q
      - match: signonly.test
        level: verify
        fallback: encrypt
        keys:
          - fingerprint: %q
            file: %q
`, freeAddr(t), bobFpr, bobFile, erin, erinFile)
		writeFile(t, cfg, text)
		return cfg, text
	}
	lineOf := func(text, sub string) int {
		for i, l := range strings.Split(text, "\n") {
			if strings.Contains(l, sub) {
				return i + 1
			}
		}
		t.Fatalf("%q not in the configuration", sub)
		return 0
	}

	cfg, text := write(other)
	out, errOut, code := runRelayCmd(t, "check-config", "--config", cfg)
	all := out + errOut
	if code == 0 {
		t.Errorf("check-config: exit 0 for a wrong pinned fingerprint and a signing-only pinned key:\n%s", all)
	}
	wrong := fmt.Sprintf("%s:%d: outbound.tls.policies[0].keys[0]", cfg, lineOf(text, "fingerprint: \""+other))
	signOnly := fmt.Sprintf("%s:%d: outbound.tls.policies[1].keys[0]", cfg, lineOf(text, "fingerprint: \""+erin))
	var gotWrong, gotSign string
	for _, l := range strings.Split(all, "\n") {
		if strings.HasPrefix(l, wrong) {
			gotWrong = l
		}
		if strings.HasPrefix(l, signOnly) {
			gotSign = l
		}
	}
	if gotWrong == "" || !strings.Contains(gotWrong, other) || !strings.Contains(gotWrong, bob) {
		t.Errorf("no line %q… naming the pinned fingerprint %s and the key the file holds (%s):\n%s", wrong, other, bob, all)
	}
	if gotSign == "" || !strings.Contains(gotSign, erin) || !strings.Contains(strings.ToLower(gotSign), "encrypt") {
		t.Errorf("no line %q… saying that key %s cannot encrypt:\n%s", signOnly, erin, all)
	}

	// The partner.test pin done right passes (the signing-only one left out).
	cfg, text = write(bob)
	text = text[:strings.Index(text, "      - match: signonly.test")]
	writeFile(t, cfg, text)
	if out, errOut, code := runRelayCmd(t, "check-config", "--config", cfg); code != 0 {
		t.Errorf("check-config with a correct pin: exit %d\n%s%s", code, out, errOut)
	}
}

// ---------------------------------------------------------------------------
// Review of the integration (issue 12).

// TestEncryptReloadKeepsNoRelaxedSession: partner mail goes through a
// route to a gateway without STARTTLS; the first message leaves
// encrypted over a relaxed session, which stays pooled (idle 5m). A
// SIGHUP makes the rule fallback: defer: the next message must not take
// that session, nor any: it waits, and the gateway sees no envelope for
// it. Another SIGHUP restores fallback: encrypt but no longer trusts the
// keyring for the partner (key_sources: [pinned], none pinned): it waits
// again, for a key. Nothing but the first encrypted copy ever reaches the
// gateway.
func TestEncryptReloadKeepsNoRelaxedSession(t *testing.T) {
	requireTool(t, "swaks")
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	gw := startPolicyMX(t, listenLoopback(t), mxOptions{})
	keyring := g.keyring(bob)
	dns := dnstest.NewServer(t, "")
	rule := func(fallback string) string {
		return "    policies:\n      - {match: partner.test, level: verify, fallback: " + fallback + "}\n"
	}
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), IdleTimeout: "5m", Outbound: encryptionConfig(keyring, false),
		Routes: fmt.Sprintf("    - {match: partner.test, next_hop: \"smtp://%s\"}\n", gw.Addr), TLS: rule("encrypt")})

	c := newConfidential(t, "sender@example.test", "bob@partner.test", "reload-1@example.test")
	id := c.send(t, r.Sub, "sender@example.test", "bob@partner.test")
	if a := r.waitAttempt(t, id, 30*time.Second); a.Status != "sent" || !strings.Contains(a.Line, "fallback=encrypt") {
		t.Fatalf("before the reload: %s, want sent encrypted:\n%s", a.Status, a.Line)
	}
	openPGPMIME(t, gw.waitMessage(t, 5*time.Second).Data)

	reload := func(text string) {
		t.Helper()
		writeFile(t, r.Cfg, text)
		mark := r.Mark()
		r.Signal(syscall.SIGHUP)
		r.WaitLog(mark, 10*time.Second, "configuration reloaded")
	}
	cfg := readFile(t, r.Cfg)
	reload(strings.Replace(cfg, rule("encrypt"), rule("defer"), 1))
	id = r.send(t, "sender@example.test", "bob@partner.test", "marker-after-defer")
	if a := r.waitAttempt(t, id, 30*time.Second); a.Status != "deferred" || !strings.Contains(a.Line, "dsn=4.7.10") || strings.Contains(a.Line, "encryption=") {
		t.Errorf("after the reload to defer: %s, want deferred 4.7.10, not encrypted:\n%s", a.Status, a.Line)
	}

	// The keyring is no longer trusted for the partner: only pinned
	// keys, and there are none.
	reload(strings.Replace(cfg, rule("encrypt"), "    policies:\n      - {match: partner.test, level: verify, fallback: encrypt, key_sources: [pinned]}\n", 1))
	id = r.send(t, "sender@example.test", "bob@partner.test", "marker-after-key-removed")
	if a := r.waitAttempt(t, id, 30*time.Second); a.Status != "deferred" || !strings.Contains(a.Line, "no usable OpenPGP key for bob@partner.test") {
		t.Errorf("after the key was removed: %s, want deferred for want of a key:\n%s", a.Status, a.Line)
	}
	if n := len(gw.Mails()); n != 1 {
		t.Errorf("the gateway saw %d MAIL commands, want 1 (the encrypted copy before the reload)", n)
	}
	if strings.Contains(gw.Raw(), "marker-after") {
		t.Errorf("a message sent after a reload reached the gateway:\n%s", gw.Transcript())
	}
	c.checkNoSecrets(t, "the bytes the gateway received", gw.Raw())
}

// TestEncryptDSNToPartnerNeverEncryptedNorClear: an application sends
// from an address at the partner (trusted network, no sender binding) to
// two recipients there; bob has a key, carol none. Carol's DSN goes back
// to the sender at the partner: it is the relay's own mail (never
// encrypted), it carries the original header (the real Subject), and the
// partner's rule asks for verified TLS, which the gateway lacks: it
// waits, and the gateway only ever gets bob's encrypted copy.
func TestEncryptDSNToPartnerNeverEncryptedNorClear(t *testing.T) {
	requireTool(t, "swaks")
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	app := g.newKey("App <app@partner.test>", "cv25519") // a key would be there: still not encrypted
	gw := startPolicyMX(t, listenLoopback(t), mxOptions{})
	dns := dnstest.NewServer(t, "")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Outbound: encryptionConfig(g.keyring(bob, app), false),
		Queue:  "  retry: [1s]\n  max_age: 3s\n",
		Routes: fmt.Sprintf("    - {match: partner.test, next_hop: \"smtp://%s\"}\n", gw.Addr),
		TLS:    "    policies:\n      - {match: partner.test, level: verify, fallback: encrypt}\n"})

	c := newConfidential(t, "app@partner.test", "bob@partner.test", "dsn-1@example.test")
	id := c.send(t, r.Sub, "app@partner.test", "bob@partner.test", "carol@partner.test")
	if a := r.waitRcpt(t, id, "bob@partner.test", 30*time.Second); a.Status != "sent" {
		t.Fatalf("bob: %s, want sent encrypted:\n%s", a.Status, a.Line)
	}
	r.waitLine(t, 30*time.Second, "msg=bounced", "queue_id="+id, "to=carol@partner.test")
	line := r.waitLine(t, 30*time.Second, "sender non-delivery notification", "queue_id="+id)
	m := regexp.MustCompile(`dsn_queue_id=(\S+)`).FindStringSubmatch(line)
	if m == nil {
		t.Fatalf("no DSN queue ID in %q", line)
	}
	a := r.waitAttempt(t, m[1], 30*time.Second)
	if a.Status != "deferred" || !strings.Contains(a.Line, "required=verify") || strings.Contains(a.Line, "encryption=") || strings.Contains(a.Line, "fallback=encrypt") {
		t.Errorf("the DSN to app@partner.test: %s, want deferred for the partner's TLS level, not encrypted:\n%s", a.Status, a.Line)
	}
	if msgs := gw.Messages(); len(msgs) != 1 || strings.Join(msgs[0].To, ",") != "bob@partner.test" {
		t.Errorf("the gateway got %d messages, want bob's encrypted copy alone", len(msgs))
	}
	c.checkNoSecrets(t, "the bytes the gateway received", gw.Raw())
}

// TestEncryptMalformedHeaderReturned: a message whose header the
// encryption cannot read (a line that is no field) is accepted on
// submission as any relay would, then returned at the first attempt with
// 5.6.0 and a DSN that says why, not retried until queue.max_age; the
// partner's server gets no DATA and no byte of it.
func TestEncryptMalformedHeaderReturned(t *testing.T) {
	requireTool(t, "swaks")
	g := newGPGHome(t)
	bob := g.newKey("Bob <bob@partner.test>", "cv25519")
	gw := startPolicyMX(t, listenLoopback(t), mxOptions{})
	dns := dnstest.NewServer(t, "")
	r := startPolicyRelay(t, policyRelayOpts{Resolver: dns.Addr(), Outbound: encryptionConfig(g.keyring(bob), false),
		Routes: fmt.Sprintf("    - {match: partner.test, next_hop: \"smtp://%s\"}\n", gw.Addr),
		TLS:    "    policies:\n      - {match: partner.test, level: verify, fallback: encrypt}\n"})
	f := filepath.Join(t.TempDir(), "bad.eml")
	writeFile(t, f, "From: <sender@example.test>\r\nTo: <bob@partner.test>\r\nSubject: marker-malformed\r\nthis line is no header field\r\n\r\nsecret body")
	id := mustSend(t, "--server", r.Sub, "--from", "sender@example.test", "--to", "bob@partner.test", "--data", "@"+f).QueueID()
	a := r.waitAttempt(t, id, 30*time.Second)
	if a.Status != "bounced" || !strings.Contains(a.Line, "dsn=5.6.0") {
		t.Fatalf("%s, want bounced at once with 5.6.0:\n%s", a.Status, a.Line)
	}
	dsns := waitMaildir(t, r.Mail, "sender@example.test", 1, 15*time.Second)
	text, _ := dsnParts(t, dsns[0])
	mustContain(t, "the DSN text", text, "bob@partner.test", "header is malformed", "this line is no header field")
	if len(gw.Messages()) != 0 || strings.Contains(gw.Raw(), "marker-malformed") || strings.Contains(gw.Raw(), "secret body") {
		t.Errorf("the gateway got the message or a byte of it:\n%s", gw.Transcript())
	}
}
