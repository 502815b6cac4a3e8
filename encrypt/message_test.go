package encrypt_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"io"
	"maps"
	"mime"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	_ "github.com/emersion/go-message/charset" // the Latin-1 part
	"github.com/emersion/go-message/mail"
	"github.com/emersion/go-message/textproto"

	"securerelay/encrypt"
)

// Secrets of the test message: none of them may appear in what leaves.
const (
	secretSubjectWord = "Jahresabschluss"
	secretBodyWord    = "Geheimzahl-4711"
	secretAttachment  = "Bilanz-Müller-2026.pdf"
	secretAttachment2 = "Gehaltsliste.xlsx"
	secretMailer      = "OTRS-secret-build"
	secretBoundary    = "inner-boundary-Xq9"
)

// testMessage is a submitted message as the spool holds it (CRLF): a
// non-ASCII subject, 8-bit text, a base64 attachment with an RFC 2231
// encoded non-ASCII file name, another with a plain name, and raw Latin-1
// bytes in an 8-bit part. It returns the message and its body (all that
// follows the header).
func testMessage(t testing.TB) (msg, body []byte, files map[string][]byte) {
	t.Helper()
	pdf := make([]byte, 3000)
	rand.Read(pdf)
	xlsx := make([]byte, 500)
	rand.Read(xlsx)
	b64 := func(p []byte) string {
		s := base64.StdEncoding.EncodeToString(p)
		var out strings.Builder
		for len(s) > 76 {
			out.WriteString(s[:76] + "\r\n")
			s = s[76:]
		}
		return out.String() + s + "\r\n"
	}
	header := "Received: from otrs.internal (otrs.internal [10.0.0.7])\r\n\tby relay.sender.example with ESMTPS id 4711; Mon, 7 Dec 2026 10:00:00 +0100\r\n" +
		"Return-Path: <tickets@sender.example>\r\n" +
		"From: =?utf-8?q?Steuerb=C3=BCro?= <tickets@sender.example>\r\n" +
		"To: Alice <" + addrAlice + ">\r\n" +
		"Cc: " + addrBob + "\r\n" +
		"Reply-To: reply-hidden@sender.example\r\n" +
		"Subject: " + mime.QEncoding.Encode("utf-8", "Vertraulich: "+secretSubjectWord+" für Müller") + "\r\n" +
		"Date: Mon, 07 Dec 2026 10:00:00 +0100\r\n" +
		"Message-ID: <ticket-4711@sender.example>\r\n" +
		"In-Reply-To: <earlier@partner.example>\r\n" +
		"References: <start@partner.example> <earlier@partner.example>\r\n" +
		"X-Mailer: " + secretMailer + "\r\n" +
		"Auto-Submitted: auto-generated\r\n" +
		"MIME-Version: 1.0\r\n" +
		"Content-Type: multipart/mixed;\r\n boundary=\"" + secretBoundary + "\"\r\n"
	body = []byte("This is a multi-part message in MIME format.\r\n" +
		"--" + secretBoundary + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n\r\n" +
		"Grüße aus dem Büro, die " + secretBodyWord + " steht im Anhang.\r\n" +
		"From the start of a line, a dot:\r\n.\r\n..and two\r\n" +
		"--" + secretBoundary + "\r\n" +
		"Content-Type: text/plain; charset=iso-8859-1\r\n" +
		"Content-Transfer-Encoding: 8bit\r\n\r\n" +
		"Gr\xfc\xdfe \xe0 \xff\r\n" +
		"--" + secretBoundary + "\r\n" +
		"Content-Type: application/pdf; name*=UTF-8''" + strings.ReplaceAll(mimeEscape(secretAttachment), " ", "%20") + "\r\n" +
		"Content-Disposition: attachment; filename*=UTF-8''" + mimeEscape(secretAttachment) + "\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" +
		b64(pdf) +
		"--" + secretBoundary + "\r\n" +
		"Content-Type: application/vnd.openxmlformats-officedocument.spreadsheetml.sheet\r\n" +
		"Content-Disposition: attachment; filename=\"" + secretAttachment2 + "\"\r\n" +
		"Content-Transfer-Encoding: base64\r\n\r\n" +
		b64(xlsx) +
		"--" + secretBoundary + "--\r\n")
	return append([]byte(header+"\r\n"), body...), body, map[string][]byte{secretAttachment: pdf, secretAttachment2: xlsx}
}

// mimeEscape percent-encodes s as RFC 2231 wants (every octet outside
// attribute-char).
func mimeEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if c < 0x80 && (c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$&+-.^_`|~", c) >= 0) {
			b.WriteByte(c)
		} else {
			b.WriteString("%" + strings.ToUpper(string("0123456789abcdef"[c>>4])+string("0123456789abcdef"[c&15])))
		}
	}
	return b.String()
}

// keyFor returns a usable Key for fpr, as Lookup would.
func keyFor(t testing.TB, k *testKeys, fpr string) *encrypt.Key {
	t.Helper()
	el, err := openpgp.ReadArmoredKeyRing(bytes.NewReader(k.armored(t, fpr)))
	if err != nil || len(el) != 1 {
		t.Fatalf("reading %s: %v", fpr, err)
	}
	return &encrypt.Key{Entity: el[0], Fingerprint: fpr, Source: encrypt.SourceKeyring, Origin: "test"}
}

// pgpPart splits an encrypted message into its outer header and the
// armoured OpenPGP message of its second part, checking the RFC 3156
// structure on the way.
func pgpPart(t *testing.T, out []byte) (textproto.Header, []byte) {
	t.Helper()
	br := bufio.NewReader(bytes.NewReader(out))
	h, err := textproto.ReadHeader(br)
	if err != nil {
		t.Fatal(err)
	}
	mt, params, err := mime.ParseMediaType(h.Get("Content-Type"))
	if err != nil || mt != "multipart/encrypted" || params["protocol"] != "application/pgp-encrypted" || params["boundary"] == "" {
		t.Fatalf("outer Content-Type %q; want multipart/encrypted; protocol=\"application/pgp-encrypted\"", h.Get("Content-Type"))
	}
	mr := textproto.NewMultipartReader(br, params["boundary"])
	var parts [][]byte
	var types []string
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
		types = append(types, p.Header.Get("Content-Type"))
	}
	if len(parts) != 2 || types[0] != "application/pgp-encrypted" || types[1] != "application/octet-stream" ||
		!strings.Contains(string(parts[0]), "Version: 1") || !bytes.HasPrefix(parts[1], []byte("-----BEGIN PGP MESSAGE-----")) {
		t.Fatalf("parts %q:\n%s", types, out)
	}
	return h, parts[1]
}

// decryptGPG runs gpg --decrypt; status holds gpg's status lines.
func decryptGPG(t *testing.T, k *testKeys, armored []byte) (plain []byte, status string) {
	t.Helper()
	var out, st bytes.Buffer
	cmd := k.home.cmd(bytes.NewReader(armored), "--status-fd", "2", "--decrypt")
	cmd.Stdout, cmd.Stderr = &out, &st
	if err := cmd.Run(); err != nil {
		t.Fatalf("gpg --decrypt: %v\n%s", err, st.String())
	}
	return crlf(out.Bytes()), st.String()
}

// crlf undoes gpg's output conversion: go-pgpmail writes the inner part
// as text-mode literal data (canonical CRLF, RFC 3156 section 3), which
// gpg, as RFC 4880 section 5.9 allows, hands out with local (LF) line
// ends. sq and rnp hand out the bytes as they are, and their tests compare
// without this.
func crlf(b []byte) []byte {
	var out []byte
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, c)
	}
	return out
}

// checkInner checks a decrypted inner part: the protected headers, and the
// body byte for byte.
func checkInner(t *testing.T, who string, plain, msg, body []byte, files map[string][]byte) {
	t.Helper()
	innerHeader, innerBody, ok := bytes.Cut(plain, []byte("\r\n\r\n"))
	if !ok {
		t.Fatalf("%s: no header in the decrypted part:\n%s", who, plain)
	}
	if !bytes.Equal(innerBody, body) {
		t.Errorf("%s: body changed (%d bytes, want %d)", who, len(innerBody), len(body))
	}
	if files != nil {
		if got := attachments(t, plain); !maps.EqualFunc(got, files, bytes.Equal) {
			t.Errorf("%s: attachments %v differ from the originals", who, slices.Collect(maps.Keys(got)))
		}
	}
	h := string(innerHeader) + "\r\n"
	origHeader, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	// Every original field but the trace fields and MIME-Version is inside
	// exactly as it was; Content-Type carries protected-headers="v1".
	for _, f := range splitFields(string(origHeader) + "\r\n") {
		name := strings.ToLower(f[:strings.IndexByte(f, ':')])
		switch name {
		case "received", "return-path", "mime-version":
			if strings.Contains(h, f) {
				t.Errorf("%s: %s inside", who, name)
			}
		case "content-type":
			if !strings.Contains(h, strings.TrimSuffix(f, "\r\n")+";\r\n protected-headers=\"v1\"\r\n") {
				t.Errorf("%s: Content-Type without protected-headers=\"v1\":\n%s", who, h)
			}
		default:
			if !strings.Contains(h, f) {
				t.Errorf("%s: protected header %q missing:\n%s", who, f, h)
			}
		}
	}
}

// attachments reads the decrypted part as a mail client does and returns
// its attachments by (decoded) file name.
func attachments(t *testing.T, entity []byte) map[string][]byte {
	t.Helper()
	mr, err := mail.CreateReader(bytes.NewReader(entity))
	if err != nil {
		t.Fatalf("reading the decrypted part: %v", err)
	}
	out := map[string][]byte{}
	for {
		p, err := mr.NextPart()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if ah, ok := p.Header.(*mail.AttachmentHeader); ok {
			name, err := ah.Filename()
			if err != nil {
				t.Fatal(err)
			}
			out[name], _ = io.ReadAll(p.Body)
		}
	}
	return out
}

// splitFields splits a header into its fields (with continuation lines).
func splitFields(h string) []string {
	var out []string
	for _, l := range strings.SplitAfter(h, "\r\n") {
		if l == "" {
			continue
		}
		if (l[0] == ' ' || l[0] == '\t') && len(out) > 0 {
			out[len(out)-1] += l
			continue
		}
		out = append(out, l)
	}
	return out
}

func TestEncryptDecryptsWithGPG(t *testing.T) {
	k := getKeys(t)
	msg, body, files := testMessage(t)
	var out bytes.Buffer
	to := []*encrypt.Key{keyFor(t, k, k.alice), keyFor(t, k, k.bob)}
	if err := encrypt.Encrypt(&out, bytes.NewReader(msg), to, encrypt.MessageOptions{}); err != nil {
		t.Fatal(err)
	}
	outer, armored := pgpPart(t, out.Bytes())

	// Outside: only what delivery and threading need, and "..." as Subject;
	// the trace fields on top (RFC 5321 section 4.4).
	var names []string
	for f := outer.Fields(); f.Next(); {
		names = append(names, f.Key())
	}
	want := []string{"Received", "Return-Path", "Content-Type", "From", "To", "Cc", "Date", "Message-Id", "In-Reply-To", "References", "Auto-Submitted", "Mime-Version", "Subject"}
	if !slices.Equal(names, want) {
		t.Errorf("outer fields %q\n want %q", names, want)
	}
	if s := outer.Get("Subject"); s != "..." {
		t.Errorf("outer Subject %q", s)
	}
	origHeader, _, _ := bytes.Cut(msg, []byte("\r\n\r\n"))
	for _, f := range splitFields(string(origHeader) + "\r\n") {
		if n := strings.ToLower(f[:strings.IndexByte(f, ':')]); slices.Contains([]string{"from", "to", "cc", "date", "message-id", "received"}, n) && !bytes.Contains(out.Bytes(), []byte(f)) {
			t.Errorf("outer %s changed or missing: %q", n, f)
		}
	}

	// Nothing secret leaves in clear, in any spelling the message had.
	for _, s := range []string{secretSubjectWord, mime.QEncoding.Encode("utf-8", "Vertraulich: "+secretSubjectWord+" für Müller"), "Vertraulich",
		secretBodyWord, "Grüße", secretAttachment, mimeEscape(secretAttachment), "Bilanz", secretAttachment2, secretMailer,
		"reply-hidden", "application/pdf", secretBoundary} {
		if bytes.Contains(out.Bytes(), []byte(s)) {
			t.Errorf("%q appears in the encrypted message", s)
		}
	}

	// gpg, with either recipient's key.
	plain, status := decryptGPG(t, k, armored)
	checkInner(t, "gpg", plain, msg, body, files)
	if !strings.Contains(status, "DECRYPTION_OKAY") || !strings.Contains(status, "GOODMDC") {
		t.Errorf("gpg status lacks DECRYPTION_OKAY/GOODMDC:\n%s", status)
	}
}

// A second, independent implementation must read it too: Sequoia (sq)
// with the RSA-3072 recipient, RNP with the Curve25519 one.
func TestEncryptDecryptsWithSequoiaAndRNP(t *testing.T) {
	k := getKeys(t)
	msg, body, files := testMessage(t)
	var out bytes.Buffer
	to := []*encrypt.Key{keyFor(t, k, k.alice), keyFor(t, k, k.bob)}
	if err := encrypt.Encrypt(&out, bytes.NewReader(msg), to, encrypt.MessageOptions{Subject: "Encrypted message"}); err != nil {
		t.Fatal(err)
	}
	outer, armored := pgpPart(t, out.Bytes())
	if outer.Get("Subject") != "Encrypted message" {
		t.Errorf("outer Subject %q; want the configured placeholder", outer.Get("Subject"))
	}
	dir := t.TempDir()
	in := filepath.Join(dir, "msg.asc")
	writeFile(t, in, armored)

	t.Run("sq", func(t *testing.T) {
		requireTool(t, "sq", "sq")
		keyFile := filepath.Join(dir, "bob.sec")
		writeFile(t, keyFile, k.secret(t, k.bob))
		plain, err := exec.Command("sq", "decrypt", "--recipient-key", keyFile, in).Output()
		if err != nil {
			t.Fatalf("sq decrypt: %v %s", err, stderr(err))
		}
		checkInner(t, "sq", plain, msg, body, files)
	})
	t.Run("rnp", func(t *testing.T) {
		requireTool(t, "rnp", "rnp")
		keyFile := filepath.Join(dir, "alice.sec")
		writeFile(t, keyFile, k.secret(t, k.alice))
		home := filepath.Join(dir, "rnphome")
		os.Mkdir(home, 0o700)
		plain, err := exec.Command("rnp", "--homedir", home, "--keyfile", keyFile, "--decrypt", in, "--output", "-").Output()
		if err != nil {
			t.Fatalf("rnp --decrypt: %v %s", err, stderr(err))
		}
		checkInner(t, "rnp", plain, msg, body, files)
	})
}

func stderr(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return string(ee.Stderr)
	}
	return ""
}

// Signed with the organisation's key: gpg verifies the signature inside.
func TestEncryptSigned(t *testing.T) {
	k := getKeys(t)
	keyFile := filepath.Join(t.TempDir(), "org.sec")
	writeFile(t, keyFile, k.secret(t, k.org))
	signer, err := encrypt.LoadSigner(keyFile, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	msg, body, files := testMessage(t)
	var out bytes.Buffer
	if err := encrypt.Encrypt(&out, bytes.NewReader(msg), []*encrypt.Key{keyFor(t, k, k.bob)}, encrypt.MessageOptions{Signer: signer}); err != nil {
		t.Fatal(err)
	}
	_, armored := pgpPart(t, out.Bytes())
	plain, status := decryptGPG(t, k, armored)
	checkInner(t, "gpg", plain, msg, body, files)
	if !strings.Contains(status, "GOODSIG") || !strings.Contains(status, "VALIDSIG "+k.org) {
		t.Errorf("no good signature by %s:\n%s", k.org, status)
	}

	// A public key, or a key that cannot sign, is not a signer.
	pub := filepath.Join(t.TempDir(), "org.asc")
	writeFile(t, pub, k.armored(t, k.org))
	if _, err := encrypt.LoadSigner(pub, time.Now()); err == nil || !strings.Contains(err.Error(), "exactly one secret key") {
		t.Errorf("LoadSigner(public key) = %v", err)
	}
}

// Headers without Content-Type, 8-bit text in a plain message, no body.
func TestEncryptSimpleMessages(t *testing.T) {
	k := getKeys(t)
	for name, msg := range map[string]string{
		"no MIME":   "From: a@sender.example\r\nTo: " + addrAlice + "\r\nSubject: Grüße geheim\r\n\r\nKäse und Brot\r\n",
		"no body":   "From: a@sender.example\r\nSubject: only a header\r\n\r\n",
		"no header": "\r\nbody without header\r\n",
	} {
		t.Run(name, func(t *testing.T) {
			var out bytes.Buffer
			if err := encrypt.Encrypt(&out, strings.NewReader(msg), []*encrypt.Key{keyFor(t, k, k.alice)}, encrypt.MessageOptions{}); err != nil {
				t.Fatal(err)
			}
			_, armored := pgpPart(t, out.Bytes())
			plain, _ := decryptGPG(t, k, armored)
			hdr, b, _ := strings.Cut(msg, "\r\n\r\n")
			if rest, ok := strings.CutPrefix(msg, "\r\n"); ok {
				hdr, b = "", rest
			}
			ih, ib, ok := bytes.Cut(plain, []byte("\r\n\r\n"))
			if !ok || string(ib) != b || !strings.Contains(string(ih), "Content-Type: text/plain; protected-headers=\"v1\"") {
				t.Errorf("decrypted:\n%q", plain)
			}
			if hdr != "" && !strings.Contains(string(ih), hdr) {
				t.Errorf("original header not inside:\n%q", plain)
			}
		})
	}
}

func TestEncryptMalformed(t *testing.T) {
	k := getKeys(t)
	to := []*encrypt.Key{keyFor(t, k, k.alice)}
	for name, msg := range map[string]string{
		"mbox From line":  "From someone Mon Dec  7 10:00:00 2026\r\nSubject: x\r\n\r\nbody\r\n",
		"header too long": "Subject: x\r\n" + strings.Repeat("X-Pad: "+strings.Repeat("y", 990)+"\r\n", 1100) + "\r\nbody\r\n",
	} {
		err := encrypt.Encrypt(io.Discard, strings.NewReader(msg), to, encrypt.MessageOptions{})
		if !errors.Is(err, encrypt.ErrMalformed) {
			t.Errorf("%s: %v; want ErrMalformed", name, err)
		}
	}
	// A read error is not a malformed message.
	err := encrypt.Encrypt(io.Discard, io.MultiReader(strings.NewReader("Subj"), errReader{}), to, encrypt.MessageOptions{})
	if err == nil || errors.Is(err, encrypt.ErrMalformed) {
		t.Errorf("read error: %v; want an I/O error, not ErrMalformed", err)
	}
	if err := encrypt.Encrypt(io.Discard, strings.NewReader("Subject: x\r\n\r\n"), nil, encrypt.MessageOptions{}); err == nil {
		t.Error("no recipients: no error")
	}
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("disk on fire") }

// The trace fields stay at the top of the encrypted message, in their
// order (RFC 5321 section 4.4), above the MIME fields go-pgpmail sets;
// hop counting and header analysis read them there.
func TestEncryptTraceFieldsFirst(t *testing.T) {
	k := getKeys(t)
	msg := "Return-Path: <a@sender.example>\r\nReceived: from b by c; Mon, 7 Dec 2026 10:00:01 +0000\r\n" +
		"Received: from a by b; Mon, 7 Dec 2026 10:00:00 +0000\r\nFrom: a@sender.example\r\nTo: " + addrAlice +
		"\r\nSubject: trace\r\n\r\nbody\r\n"
	var out bytes.Buffer
	if err := encrypt.Encrypt(&out, strings.NewReader(msg), []*encrypt.Key{keyFor(t, k, k.alice)}, encrypt.MessageOptions{}); err != nil {
		t.Fatal(err)
	}
	want := "Return-Path: <a@sender.example>\r\nReceived: from b by c; Mon, 7 Dec 2026 10:00:01 +0000\r\n" +
		"Received: from a by b; Mon, 7 Dec 2026 10:00:00 +0000\r\n"
	if !strings.HasPrefix(out.String(), want) {
		hdr, _, _ := strings.Cut(out.String(), "\r\n\r\n")
		t.Errorf("the encrypted message does not start with the trace fields:\n%s", hdr)
	}
	if n := strings.Count(out.String(), "Received: "); n != 2 {
		t.Errorf("%d Received fields, want 2", n)
	}
}
