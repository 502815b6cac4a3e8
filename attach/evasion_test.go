package attach_test

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"mime/quotedprintable"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"securerelay/attach"
	"securerelay/attach/attachtest"
)

// Evasions: messages written so that a strict reader sees no file, or
// another file, than the one a mail program shows. Each case is a way
// around the check that the walk once had.

// b64 is base64 in lines of 76, as mail programs write it.
func b64(d []byte) string {
	enc := base64.StdEncoding.EncodeToString(d)
	var b strings.Builder
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n")
	return b.String()
}

// rawMsg is a multipart/mixed message with a text part and the given
// parts, each its header, an empty line and its body.
func rawMsg(parts ...string) string {
	s := "From: <a@sender.example>\r\nTo: <b@example.test>\r\nSubject: x\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"BB\"\r\n\r\n--BB\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
	for _, p := range parts {
		s += "--BB\r\n" + p
	}
	return s + "--BB--\r\n"
}

type evasion struct {
	name   string
	msg    string
	pol    *attach.Policy
	action string
	class  attach.Class
	file   string
	path   string
}

func runEvasions(t *testing.T, cases []evasion) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			v := inspect(t, c.msg, c.pol)
			if c.action == attach.Pass {
				if v.Action != attach.Pass {
					t.Fatalf("verdict %q %s file=%q path=%q (%s), want it to pass", v.Action, v.Finding.Class, v.Finding.File, v.Finding.Path, v.Finding.Reason)
				}
				return
			}
			wantVerdict(t, v, c.action, c.class, c.file, c.path)
		})
	}
}

func TestMIMEEvasions(t *testing.T) {
	pe := attachtest.PE()
	zipPE := attachtest.Zip(t, map[string][]byte{"Rechnung.exe": pe})
	zb64 := b64(zipPE)
	zipPart := "Content-Type: application/zip; name=\"b.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + zb64
	js := []byte("var s=new ActiveXObject('WScript.Shell');s.Run('calc');\r\n")
	inner := attachtest.Message("a@b.example", "c@d.example", "inner", attachtest.Part{Name: "setup.zip", Data: zipPE})

	// Quoted-printable with a raw control character where the encoder
	// wrote an escape: mail programs decode it as the octet it is.
	var qp bytes.Buffer
	w := quotedprintable.NewWriter(&qp)
	w.Binary = true
	w.Write(zipPE)
	w.Close()
	loc := regexp.MustCompile(`=(0[1-8BCEF]|1[0-9A-F])`).FindIndex(qp.Bytes()[100:])
	if loc == nil {
		t.Fatal("no escaped control character in the quoted-printable ZIP")
	}
	ctl, _ := strconv.ParseUint(string(qp.Bytes()[100+loc[0]+1:100+loc[1]]), 16, 8)
	qpRaw := string(qp.Bytes()[:100+loc[0]]) + string(rune(ctl)) + string(qp.Bytes()[100+loc[1]:])

	onlyUnopenedAccepted := attach.DefaultPolicy()
	onlyUnopenedAccepted.Unopened = attach.Accept

	runEvasions(t, []evasion{
		// A line that is no header field in the message's header:
		// mail programs skip it; go-message gave up on the message.
		{name: "bad line in the message header", msg: strings.Replace(rawMsg(zipPart), "Subject: x\r\n", "Subject: x\r\nthis is no header field\r\n", 1),
			action: attach.Reject, class: attach.Executable, file: "b.zip", path: "Rechnung.exe"},
		{name: "bad field name in the message header", msg: strings.Replace(rawMsg(zipPart), "Subject: x\r\n", "Subject: x\r\nX Bad Key: 1\r\n", 1),
			action: attach.Reject, class: attach.Executable, file: "b.zip", path: "Rechnung.exe"},
		// A damaged part header: what a mail program shows of it and of
		// the parts after it cannot be told, so it is a finding.
		{name: "part header with a bad line", msg: rawMsg("Content-Type: application/pdf; name=\"a.pdf\"\r\nthis is no header field\r\nContent-Transfer-Encoding: base64\r\n\r\n"+b64(attachtest.PDF()), zipPart),
			action: attach.Reject, class: attach.Unopened},
		{name: "part header starting with a blank", msg: rawMsg(" Content-Type: application/pdf\r\n\r\nx\r\n", zipPart),
			action: attach.Reject, class: attach.Unopened},
		{name: "part header with a bad line, unopened accepted", msg: rawMsg("Content-Type: application/pdf\r\nno header field\r\n\r\nx\r\n", zipPart), pol: onlyUnopenedAccepted,
			action: attach.Accept, class: attach.Unopened},
		// Transfer encodings as mail programs read them.
		{name: "two CTE", msg: rawMsg("Content-Type: application/zip; name=\"a.zip\"\r\nContent-Transfer-Encoding: 7bit\r\nContent-Transfer-Encoding: base64\r\n\r\n" + zb64),
			action: attach.Reject, class: attach.Executable, file: "a.zip", path: "Rechnung.exe"},
		{name: "two CTE that decode differently", msg: rawMsg("Content-Type: application/zip; name=\"a.zip\"\r\nContent-Transfer-Encoding: quoted-printable\r\nContent-Transfer-Encoding: base64\r\n\r\n" + zb64),
			action: attach.Reject, class: attach.Unopened, file: "a.zip"},
		{name: "CTE upper case with a blank", msg: rawMsg("Content-Type: application/zip; name=\"a.zip\"\r\nContent-Transfer-Encoding: BASE64 \r\n\r\n" + zb64),
			action: attach.Reject, class: attach.Executable, file: "a.zip", path: "Rechnung.exe"},
		{name: "CTE with a comment", msg: rawMsg("Content-Type: application/zip; name=\"a.zip\"\r\nContent-Transfer-Encoding: base64 (x)\r\n\r\n" + zb64),
			action: attach.Reject, class: attach.Executable, file: "a.zip", path: "Rechnung.exe"},
		{name: "x-uuencode", msg: rawMsg("Content-Type: application/octet-stream; name=\"a.pdf\"\r\nContent-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 setup.exe\r\nM35H`\r\n`\r\nend\r\n"),
			action: attach.Reject, class: attach.Executable, file: "setup.exe"},
		{name: "base64 with a stray octet", msg: rawMsg("Content-Type: application/zip; name=\"a.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + zb64[:20] + "!" + zb64[20:]),
			action: attach.Reject, class: attach.Executable, file: "a.zip", path: "Rechnung.exe"},
		{name: "base64 PE with a stray octet", msg: rawMsg("Content-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(pe)[:20] + "*" + b64(pe)[20:]),
			action: attach.Reject, class: attach.Executable, file: "a.pdf"},
		// Each piece encoded on its own, padding and all: mail
		// programs decode one after the other.
		{name: "base64 with padding in the middle", msg: rawMsg("Content-Type: application/pdf; name=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(pe[:10]) + b64(pe[10:])),
			action: attach.Reject, class: attach.Executable, file: "a.pdf"},
		{name: "base64 texts one after another", msg: rawMsg("Content-Type: application/octet-stream; name=\"a.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + zb64 + "QQ==\r\n"),
			action: attach.Reject, class: attach.Executable, file: "a.zip", path: "Rechnung.exe"},
		{name: "qp with a raw control character", msg: rawMsg("Content-Type: application/octet-stream; name=\"a.zip\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n" + qpRaw + "\r\n"),
			action: attach.Reject, class: attach.Executable, file: "a.zip", path: "Rechnung.exe"},
		// "=ZZ" is itself: the file starts "=ZZ#!", no script (and a
		// .txt is opened as text anyway).
		{name: "qp garbage js", msg: rawMsg("Content-Type: text/plain\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ#!/bin/sh\r\n"),
			action: attach.Pass},
		{name: "qp script with garbage after the #! line", msg: rawMsg("Content-Type: application/octet-stream\r\nContent-Disposition: attachment\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n#!/bin/sh\r\necho \x01=ZZ ==\r\n=\r\n"),
			action: attach.Reject, class: attach.Script},
		// Repeated fields: mail programs differ in which they use.
		{name: "two Content-Types", msg: rawMsg("Content-Type: text/plain\r\nContent-Type: application/zip; name=\"a.zip\"\r\nContent-Transfer-Encoding: base64\r\n\r\n" + zb64),
			action: attach.Reject, class: attach.Executable, file: "a.zip", path: "Rechnung.exe"},
		{name: "two Content-Dispositions", msg: rawMsg("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"a.txt\"\r\nContent-Disposition: attachment; filename=\"a.js\"\r\n\r\n" + string(js)),
			action: attach.Reject, class: attach.Script, file: "a.txt"},
		{name: "a container and a file by two Content-Types", msg: rawMsg("Content-Type: multipart/mixed; boundary=\"CC\"\r\nContent-Type: application/zip; name=\"a.zip\"\r\n\r\n--CC\r\n\r\nx\r\n--CC--\r\n"),
			action: attach.Reject, class: attach.Unopened, file: "a.zip"},
		{name: "Content-Type that does not parse", msg: rawMsg("Content-Type: application/zip;;; =\r\nContent-Transfer-Encoding: base64\r\n\r\n" + zb64),
			action: attach.Reject, class: attach.Executable, path: "Rechnung.exe"},
		{name: "no CT, CD attachment exe name", msg: rawMsg("Content-Disposition: attachment; filename=a.exe\r\n\r\nxx\r\n"),
			action: attach.Reject, class: attach.Executable, file: "a.exe"},
		// Body text is shown as text, never saved or run.
		{name: "text/plain PE without name", msg: rawMsg("Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64(pe)),
			action: attach.Pass},
		{name: "inline text/plain holding a ZIP", msg: rawMsg("Content-Type: text/plain\r\nContent-Disposition: inline\r\nContent-Transfer-Encoding: base64\r\n\r\n" + zb64),
			action: attach.Pass},
		// multipart/digest parts are messages by default (RFC 2046).
		{name: "digest", msg: "From: <a@b.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/digest; boundary=\"DD\"\r\n\r\n--DD\r\n\r\n" + inner + "\r\n--DD--\r\n",
			action: attach.Reject, class: attach.Executable, file: "setup.zip", path: "Rechnung.exe"},
		{name: "message/rfc822 in base64", msg: rawMsg("Content-Type: message/rfc822\r\nContent-Transfer-Encoding: base64\r\n\r\n" + b64([]byte(inner))),
			action: attach.Reject, class: attach.Executable, file: "setup.zip", path: "Rechnung.exe"},
	})
}

// The sender's own X-Securerelay-Attachment fields are counted, so that
// the inbound role can remove them: only ours may reach the recipient.
func TestForgedHeaderCounted(t *testing.T) {
	msg := attachtest.Message(from, to, "x", attachtest.Part{Name: "a.pdf", Data: attachtest.PDF()})
	v := inspect(t, "X-Securerelay-Attachment: executable; file=\"a.pdf\"; policy=default\r\nx-securerelay-attachment : none\r\n"+msg, nil)
	if v.Action != attach.Pass || v.Forged != 2 {
		t.Errorf("verdict %q, forged %d; want a pass and 2", v.Action, v.Forged)
	}
	// In an attached message it is that message's business.
	v = inspect(t, rawMsg("Content-Type: message/rfc822\r\n\r\nX-Securerelay-Attachment: x\r\nSubject: fw\r\n\r\nhi\r\n"), nil)
	if v.Forged != 0 {
		t.Errorf("forged %d in an attached message", v.Forged)
	}
}

func TestNameEvasions(t *testing.T) {
	js := []byte("var s=new ActiveXObject('WScript.Shell');s.Run('calc');\r\n")
	named := func(name string) string {
		return attachtest.Message(from, to, "x", attachtest.Part{Name: name, Data: attachtest.PDF()})
	}
	onlyNames := attach.DefaultPolicy()
	onlyNames.Banned = map[attach.Class]bool{attach.DeceptiveName: true}
	oneNote := attach.DefaultPolicy()
	oneNote.BannedNames = []string{"*.one"}
	cases := []evasion{
		// Names in one alphabet, or with Greek letters that look like
		// no Latin one, are ordinary names.
		{name: "Greek", msg: named("Τιμολόγιο Μαρτίου.pdf"), action: attach.Pass},
		{name: "Greek mu next to Latin", msg: named("Filter_10μm.pdf"), action: attach.Pass},
		{name: "Greek omega next to Latin", msg: named("Widerstand 4,7kΩ.pdf"), action: attach.Pass},
		{name: "Greek delta next to Latin", msg: named("ΔT-Messung.pdf"), action: attach.Pass},
		{name: "Hebrew", msg: named("חשבונית.pdf"), action: attach.Pass},
		{name: "Arabic", msg: named("فاتورة.pdf"), action: attach.Pass},
		{name: "Chinese", msg: named("发票.pdf"), action: attach.Pass},
		{name: "Turkish", msg: named("Fatura_İstanbul_ığüşöç.pdf"), action: attach.Pass},
		// Greek and Cyrillic look-alikes mixed into a Latin word still are.
		{name: "Greek omicron in a Latin word", msg: named("Invοice.pdf"), action: attach.Reject, class: attach.DeceptiveName, file: "Invοice.pdf"},
		{name: "Cyrillic o in a Latin word", msg: named("Invоice.pdf"), action: attach.Reject, class: attach.DeceptiveName, file: "Invоice.pdf"},
		// A trailing dot or space that hides nothing.
		{name: "trailing dot on a PDF", msg: named("Rechnung.pdf."), action: attach.Pass},
		{name: "trailing space on a PDF", msg: named("Rechnung.pdf "), action: attach.Pass},
		{name: "trailing dot on a program", msg: named("Rechnung.exe."), action: attach.Reject, class: attach.DeceptiveName, file: "Rechnung.exe."},
		{name: "trailing dot on a script, names only", msg: named("Rechnung.js. ."), pol: onlyNames, action: attach.Reject, class: attach.DeceptiveName, file: "Rechnung.js. ."},
		{name: "trailing dot on a banned name", msg: named("Notizen.one."), pol: oneNote, action: attach.Reject, class: attach.BannedName, file: "Notizen.one."},
		// Names in a charset nobody knows: the extension is ASCII.
		{name: "unknown charset, RFC 2231", msg: rawMsg("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=x-unknown''invoice.js\r\n\r\n" + string(js)),
			action: attach.Reject, class: attach.Script, file: "invoice.js"},
		{name: "unknown charset, RFC 2047", msg: rawMsg("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"=?x-unknown?Q?invoice.js?=\"\r\n\r\n" + string(js)),
			action: attach.Reject, class: attach.Script, file: "invoice.js"},
		{name: "unknown charset, RFC 2047 unquoted", msg: rawMsg("Content-Type: application/octet-stream; name==?x-unknown?Q?invoice.js?=\r\n\r\n" + string(js)),
			action: attach.Reject, class: attach.Script, file: "invoice.js"},
		{name: "RFC 2231 continuation, Latin-1", msg: rawMsg("Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*0*=iso-8859-1''R%E9sum%E9; filename*1=\".js\"\r\n\r\n" + string(js)),
			action: attach.Reject, class: attach.Script, file: "Résumé.js"},
		// Extensions Windows runs or installs.
		{name: "Python", msg: named("deploy.py"), action: attach.Reject, class: attach.Script, file: "deploy.py"},
		{name: "Windows update package", msg: named("setup.msu"), action: attach.Reject, class: attach.Installer, file: "setup.msu"},
		{name: "App installer", msg: named("x.appinstaller"), action: attach.Reject, class: attach.Installer, file: "x.appinstaller"},
		{name: "Access database", msg: named("daten.accde"), action: attach.Reject, class: attach.OfficeMacro, file: "daten.accde"},
		{name: "not in Content-Description", msg: rawMsg("Content-Type: application/octet-stream\r\nContent-Description: setup.js\r\n\r\n" + string(attachtest.PDF())), action: attach.Pass},
	}
	runEvasions(t, cases)
}

// upathZip is a ZIP whose entry is called name in its headers and uname
// in an Info-ZIP Unicode Path extra field (0x7075), which 7-Zip and
// libarchive extract under.
func upathZip(t *testing.T, name, uname string, data []byte) []byte {
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	ex := []byte{0x75, 0x70, 0, 0, 1}
	ex = binary.LittleEndian.AppendUint32(ex, crc32.ChecksumIEEE([]byte(name)))
	ex = append(ex, uname...)
	binary.LittleEndian.PutUint16(ex[2:], uint16(len(ex)-4))
	f, err := w.CreateHeader(&zip.FileHeader{Name: name, Method: zip.Deflate, Extra: ex})
	if err != nil {
		t.Fatal(err)
	}
	f.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

// v7Tar is a tar file in the old V7 format (no "ustar" mark), as
// archive/tar writes no such file: a USTAR file with the mark removed.
func v7Tar(t *testing.T, name string, data []byte) []byte {
	var b bytes.Buffer
	tw := tar.NewWriter(&b)
	if err := tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(data)), Format: tar.FormatUSTAR}); err != nil {
		t.Fatal(err)
	}
	tw.Write(data)
	tw.Close()
	h := b.Bytes()[:512]
	clear(h[257:265]) // magic and version
	clear(h[265:345]) // user and group names, USTAR only
	clear(h[345:500]) // prefix
	copy(h[148:156], "        ")
	sum := 0
	for _, c := range h {
		sum += int(c)
	}
	copy(h[148:156], fmt.Sprintf("%06o\x00 ", sum))
	if hdr, err := tar.NewReader(bytes.NewReader(b.Bytes())).Next(); err != nil || hdr.Name != name || bytes.Contains(h, []byte("ustar")) {
		t.Fatalf("not a V7 tar: %v %v", hdr, err)
	}
	return b.Bytes()
}

func TestArchiveEvasions(t *testing.T) {
	pe := attachtest.PE()
	js := []byte("var s=new ActiveXObject('WScript.Shell');s.Run('calc');\r\n")
	zipPE := attachtest.Zip(t, map[string][]byte{"Rechnung.exe": pe})
	junk := append(append([]byte("%PDF-1.4\n% junk junk\n"), make([]byte, 100)...), zipPE...)

	// A directory name with "\" in the local header: one name.
	bs := goZip(t, map[string][]byte{"docs/a.pdf": attachtest.PDF()})
	copy(bs[bytes.Index(bs, []byte("docs/a.pdf")):], `docs\a.pdf`)

	// An entry whose data breaks off after the program's first bytes.
	var cut bytes.Buffer
	zw := zip.NewWriter(&cut)
	f, _ := zw.CreateHeader(&zip.FileHeader{Name: "Rechnung.pdf", Method: zip.Deflate})
	noise := make([]byte, 200000)
	for i := range noise {
		noise[i] = byte(i*7919 ^ i>>3)
	}
	f.Write(append(append([]byte{}, pe...), noise...))
	zw.Close()
	broken := cut.Bytes()
	at := bytes.Index(broken, []byte("Rechnung.pdf")) + len("Rechnung.pdf")
	for j := at + 400; j < at+500; j++ {
		broken[j] ^= 0xff
	}

	// An entry whose compressed data is damaged from its first byte: no
	// byte of it can be read, so nothing can be told about it; an
	// extraction tool may still write a file, and mail programs show it.
	var bad bytes.Buffer
	zw = zip.NewWriter(&bad)
	f, _ = zw.CreateHeader(&zip.FileHeader{Name: "Rechnung.pdf", Method: zip.Deflate})
	f.Write(append(append([]byte{}, pe...), noise...))
	zw.Close()
	corrupt := bad.Bytes()
	at = bytes.Index(corrupt, []byte("Rechnung.pdf")) + len("Rechnung.pdf")
	corrupt[at] = 0xff // BTYPE 11: a reserved block type, refused by every inflater

	// A ZIP declaring an entry of 4 GiB that holds five bytes.
	var small bytes.Buffer
	zw = zip.NewWriter(&small)
	f, _ = zw.CreateHeader(&zip.FileHeader{Name: "a.txt", Method: zip.Store})
	f.Write([]byte("hello"))
	zw.Close()
	huge := small.Bytes()
	binary.LittleEndian.PutUint32(huge[bytes.Index(huge, []byte("PK\x01\x02"))+24:], 0xfffffff0)

	// Two ZIP files one after the other: the directory is the second's,
	// a streaming extractor reads the first's entries.
	pdfZip := attachtest.Zip(t, map[string][]byte{"Rechnung.pdf": attachtest.PDF()})
	concat := append(attachtest.Zip(t, map[string][]byte{"Rechnung.pdf": pe}), pdfZip...)

	runEvasions(t, []evasion{
		{name: "declared huge", msg: one("a.zip", huge),
			action: attach.Reject, class: attach.Limit, file: "a.zip"},
		{name: "two ZIPs one after the other", msg: one("a.zip", concat),
			action: attach.Reject, class: attach.NameMismatch, file: "a.zip", path: "Rechnung.pdf"},
		{name: "unicode path extra field", msg: one("a.zip", upathZip(t, "invoice.txt", "invoice.js", js)),
			action: attach.Reject, class: attach.Script, file: "a.zip", path: "invoice.js"},
		{name: "unicode path extra field, same name", msg: one("a.zip", upathZip(t, "Übersicht.txt", "Übersicht.txt", []byte("hallo"))),
			action: attach.Pass},
		{name: "V7 tar", msg: one("a.tar", v7Tar(t, "invoice.js", js)),
			action: attach.Reject, class: attach.Script, file: "a.tar", path: "invoice.js"},
		{name: "V7 tar of a PDF", msg: one("a.tar", v7Tar(t, "Rechnung.pdf", attachtest.PDF())),
			action: attach.Pass},
		{name: "prefixed ZIP", msg: one("invoice.zip", junk),
			action: attach.Reject, class: attach.Executable, file: "invoice.zip", path: "Rechnung.exe"},
		{name: "named .zip, no ZIP at all", msg: one("invoice.zip", attachtest.PDF()),
			action: attach.Pass},
		{name: "backslash in the local header", msg: one("a.zip", bs),
			action: attach.Pass},
		{name: "entry broken after its first bytes", msg: one("a.zip", broken),
			action: attach.Reject, class: attach.Executable, file: "a.zip", path: "Rechnung.pdf"},
		{name: "entry damaged from its first byte", msg: one("a.zip", corrupt),
			action: attach.Reject, class: attach.Unopened, file: "a.zip", path: "Rechnung.pdf"},
		// "#!" makes a script only of a file without an extension:
		// desktops open the others by their extension.
		{name: "shebang without a name", msg: rawMsg("Content-Type: application/octet-stream\r\nContent-Disposition: attachment\r\n\r\n#!/bin/sh\r\nrm -rf ~\r\n"),
			action: attach.Reject, class: attach.Script},
		{name: "shebang named without an extension", msg: one("install", []byte("#!/bin/sh\nrm -rf ~\n")),
			action: attach.Reject, class: attach.Script, file: "install"},
		{name: "shebang in a .txt", msg: one("notes.txt", []byte("#!/usr/bin/env python3\nprint(1)\n")),
			action: attach.Pass},
		{name: "shebang in a .txt in a ZIP", msg: one("a.zip", attachtest.Zip(t, map[string][]byte{"docs/notes.txt": []byte("#!/bin/sh\n")})),
			action: attach.Pass},
	})
}

func TestStripForged(t *testing.T) {
	head := "Received: from x\r\n\tby y\r\nX-Securerelay-Attachment: executable;\r\n file=\"a.exe\"\r\nSubject: hi\r\n" +
		"x-securerelay-attachment\t: none\r\n" + strings.Repeat("X-Long: "+strings.Repeat("y", 40000)+"\r\n", 2) +
		"X-Securerelay-Attachments: not ours\r\n\r\n"
	body := "X-Securerelay-Attachment: in the body, kept\r\n"
	var out strings.Builder
	n, err := attach.StripForged(&out, strings.NewReader(head+body))
	if err != nil || n != 2 {
		t.Fatalf("removed %d, %v", n, err)
	}
	want := "Received: from x\r\n\tby y\r\nSubject: hi\r\n" + strings.Repeat("X-Long: "+strings.Repeat("y", 40000)+"\r\n", 2) +
		"X-Securerelay-Attachments: not ours\r\n\r\n" + body
	if out.String() != want {
		t.Errorf("got\n%.300q\nwant\n%.300q", out.String(), want)
	}
	// What Inspect counts, StripForged removes.
	if v := inspect(t, head+body, nil); v.Forged != n {
		t.Errorf("Inspect counts %d, StripForged removes %d", v.Forged, n)
	}
}
