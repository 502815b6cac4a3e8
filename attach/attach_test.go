package attach_test

import (
	"archive/zip"
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"strings"
	"testing"
	"time"

	"securerelay/attach"
	"securerelay/attach/attachtest"
)

const from, to = "alice@sender.example", "bob@example.test"

func limits(t *testing.T) attach.Limits {
	l := attach.DefaultLimits()
	l.TempDir = t.TempDir()
	return l
}

func inspect(t *testing.T, msg string, pol *attach.Policy) attach.Verdict {
	t.Helper()
	v, err := attach.Inspect(context.Background(), strings.NewReader(msg), limits(t), pol)
	if err != nil {
		t.Fatalf("Inspect: %v", err)
	}
	return v
}

func one(name string, data []byte) string {
	return attachtest.Message(from, to, "test", attachtest.Part{Name: name, Data: data})
}

// wantVerdict checks the verdict's action, class, file and path.
func wantVerdict(t *testing.T, v attach.Verdict, action string, class attach.Class, file, path string) {
	t.Helper()
	f := v.Finding
	if v.Action != action || f.Class != class || f.File != file || f.Path != path {
		t.Fatalf("verdict %q %s file=%q path=%q (%s), want %q %s file=%q path=%q\nall: %+v",
			v.Action, f.Class, f.File, f.Path, f.Reason, action, class, file, path, v.Findings)
	}
	if f.Reason == "" {
		t.Error("finding without a reason")
	}
}

func TestOrdinaryAttachmentsPass(t *testing.T) {
	msg := attachtest.Message(from, to, "ordinary",
		attachtest.Part{Name: "Angebot 2026.pdf", Type: "application/pdf", Data: attachtest.PDF()},
		attachtest.Part{Name: "Lebenslauf.docx", Type: "application/vnd.openxmlformats-officedocument.wordprocessingml.document", Data: attachtest.DOCX(t)},
		attachtest.Part{Name: "Foto.jpg", Type: "image/jpeg", Data: attachtest.JPEG()},
		attachtest.Part{Name: "invite.ics", Type: "text/calendar; method=REQUEST", Data: []byte(attachtest.ICS)},
		attachtest.Part{Name: "Übersicht März.pdf", Type: "application/pdf", Data: attachtest.PDF()},
		attachtest.Part{Name: "Заявление.pdf", Type: "application/pdf", Data: attachtest.PDF()},
		attachtest.Part{Name: "Col·legi d'Advocats.pdf", Type: "application/pdf", Data: attachtest.PDF()},
		attachtest.Part{Name: "گزارش\u200cها.pdf", Type: "application/pdf", Data: attachtest.PDF()},
		attachtest.Part{Name: "דוח\u200f 2026.pdf", Type: "application/pdf", Data: attachtest.PDF()},
		attachtest.Part{Name: "Scan 2026.01.15.pdf", Type: "application/pdf", Data: attachtest.PDF()},
		attachtest.Part{Name: "Unterlagen.zip", Type: "application/zip", Data: attachtest.Zip(t, map[string][]byte{"a.pdf": attachtest.PDF(), "b.jpg": attachtest.JPEG()})},
		attachtest.Part{Name: "logs.tar.gz", Type: "application/gzip", Data: attachtest.TarGz(t, map[string][]byte{"log/app.log": bytes.Repeat([]byte("ok\n"), 1000)})},
	)
	v := inspect(t, msg, nil)
	if v.Action != attach.Pass {
		t.Fatalf("ordinary attachments: %q %+v", v.Action, v.Findings)
	}
	if v.Files != 12 {
		t.Errorf("looked at %d files, want 12", v.Files)
	}
	// A message without attachments.
	if v := inspect(t, "From: <a@b.example>\r\nSubject: hi\r\n\r\nhello\r\n", nil); v.Action != attach.Pass || v.Files != 0 {
		t.Errorf("text message: %+v", v)
	}
}

func TestClasses(t *testing.T) {
	pe := attachtest.PE()
	elf := append([]byte("\x7fELF\x02\x01\x01"), make([]byte, 100)...)
	lnk := append([]byte{0x4c, 0, 0, 0, 0x01, 0x14, 0x02, 0, 0, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x46}, make([]byte, 60)...)
	iso := make([]byte, 0x9000)
	copy(iso[0x8001:], "CD001")
	tests := []struct {
		name, file string
		data       []byte
		class      attach.Class
		path       string
	}{
		{"PE by content", "invoice.pdf", pe, attach.Executable, ""},
		{"PE by name", "setup.exe", []byte("not really"), attach.Executable, ""},
		{"ELF", "tool", elf, attach.Executable, ""},
		{"script by name", "Rechnung.js", []byte("WScript.Echo(1)"), attach.Script, ""},
		{"shebang", "notes", []byte("#!/bin/sh\necho hi\n"), attach.Script, ""},
		{"hta", "page.HTA", []byte("<html>"), attach.Script, ""},
		{"lnk by content", "Bewerbung.pdf", lnk, attach.Shortcut, ""},
		{"iso by content", "photos.dat", iso, attach.DiskImage, ""},
		{"img by name", "disk.img", []byte{1, 2, 3}, attach.DiskImage, ""},
		{"double extension", "rechnung.pdf.exe", pe, attach.DeceptiveName, ""},
		{"padded double extension", "rechnung.pdf          .exe", pe, attach.DeceptiveName, ""},
		{"direction override", "invoice\u202efdp.exe", pe, attach.DeceptiveName, ""},
		{"direction override, harmless content", "photo\u202egpj.scr", attachtest.JPEG(), attach.DeceptiveName, ""},
		{"look-alike letters", "Invоice.pdf", attachtest.PDF(), attach.DeceptiveName, ""},
		{"dot look-alike", "invoice\u2024pdf", attachtest.PDF(), attach.DeceptiveName, ""},
		{"trailing dot", "setup.exe.", []byte("x"), attach.DeceptiveName, ""},
		{"trailing space", "run.bat ", []byte("x"), attach.DeceptiveName, ""},
		{"zip with exe", "docs.zip", attachtest.Zip(t, map[string][]byte{"readme.txt": []byte("hi"), "setup.exe": pe}), attach.Executable, "setup.exe"},
		{"zip with exe under a PDF name", "docs.zip", attachtest.Zip(t, map[string][]byte{"docs/Rechnung.pdf": pe}), attach.Executable, "docs/Rechnung.pdf"},
		{"nested zip", "outer.zip", attachtest.Zip(t, map[string][]byte{"inner.zip": attachtest.Zip(t, map[string][]byte{"Bewerbung.exe": pe})}), attach.Executable, "inner.zip/Bewerbung.exe"},
		{"zip with double extension", "a.zip", attachtest.Zip(t, map[string][]byte{"Bewerbung.pdf.exe": pe}), attach.DeceptiveName, "Bewerbung.pdf.exe"},
		{"zip with direction override", "a.zip", attachtest.Zip(t, map[string][]byte{"Lebenslauf\u202efdp.scr": pe}), attach.DeceptiveName, "Lebenslauf\u202efdp.scr"},
		{"tar.gz with exe", "a.tar.gz", attachtest.TarGz(t, map[string][]byte{"x/setup.exe": pe}), attach.Executable, "a.tar/x/setup.exe"},
		{"gzip with exe", "report.gz", attachtest.Gzip(t, "report", pe), attach.Executable, "report"},
		{"gzip name mismatch", "report.pdf.gz", attachtest.Gzip(t, "report.txt", []byte("x")), attach.NameMismatch, "report.txt"},
		{"docm content", "Bewerbung.docx", attachtest.DOCM(t), attach.OfficeMacro, "word/vbaProject.bin"},
		{"docm name", "Bewerbung.docm", attachtest.DOCX(t), attach.OfficeMacro, ""},
		{"encrypted zip", "secret.zip", attachtest.Zip(t, map[string][]byte{"a.pdf": attachtest.PDF()}, "-P", "secret"), attach.Encrypted, "a.pdf"},
		{"encrypted zip names an exe", "secret.zip", attachtest.Zip(t, map[string][]byte{"a.exe": pe}, "-P", "secret"), attach.Executable, "a.exe"},
		{"7z", "a.7z", attachtest.SevenZip(t, map[string][]byte{"a.pdf": attachtest.PDF()}), attach.Unopened, ""},
		{"path traversal", "a.zip", goZip(t, map[string][]byte{"../../evil.txt": []byte("x")}), attach.DeceptiveName, "../../evil.txt"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := inspect(t, one(tt.file, tt.data), nil)
			wantVerdict(t, v, attach.Reject, tt.class, tt.file, tt.path)
		})
	}
}

// goZip makes a ZIP with archive/zip, for names the zip tool will not
// store.
func goZip(t *testing.T, files map[string][]byte) []byte {
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	for n, d := range files {
		f, err := w.CreateHeader(&zip.FileHeader{Name: n, Method: zip.Deflate})
		if err != nil {
			t.Fatal(err)
		}
		f.Write(d)
	}
	w.Close()
	return b.Bytes()
}

func TestDeclaredNames(t *testing.T) {
	pdf := attachtest.PDF()
	tests := []struct {
		name, header string
		class        attach.Class
		file         string
	}{
		{"RFC 2231 continuation", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment;\r\n filename*0=\"Rechnung_2026_\";\r\n filename*1=\"Mai.pdf.exe\"\r\n",
			attach.DeceptiveName, "Rechnung_2026_Mai.pdf.exe"},
		{"RFC 2231 UTF-8 encoded", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*=utf-8''invoice%E2%80%AEfdp.exe\r\n",
			attach.DeceptiveName, "invoice\u202efdp.exe"},
		{"RFC 2231 Latin-1 continued", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename*0*=iso-8859-1''R%E9sum%E9; filename*1*=.js\r\n",
			attach.Script, "Résumé.js"},
		{"RFC 2047 in a parameter", "Content-Type: application/octet-stream; name=\"=?UTF-8?B?UmVjaG51bmcucGRmLmV4ZQ==?=\"\r\n",
			attach.DeceptiveName, "Rechnung.pdf.exe"},
		{"Content-Type name only", "Content-Type: application/octet-stream; name=\"run.vbs\"\r\n", attach.Script, "run.vbs"},
		{"two names", "Content-Type: application/pdf; name=\"a.exe\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\n",
			attach.Executable, "a.pdf"},
		{"duplicate filename", "Content-Type: application/pdf\r\nContent-Disposition: attachment; filename=\"a.pdf\"; filename=\"a.cmd\"\r\n",
			attach.Script, "a.pdf"},
		{"raw UTF-8 (SMTPUTF8)", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=\"Lebenslauf\u202efdp.scr\"\r\n",
			attach.DeceptiveName, "Lebenslauf\u202efdp.scr"},
		{"unquoted", "Content-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=setup.exe\r\n", attach.Executable, "setup.exe"},
		{"declared type", "Content-Type: application/x-msdownload\r\nContent-Disposition: attachment\r\n", attach.Executable, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			msg := attachtest.Message(from, to, "names", attachtest.Part{Header: tt.header, Data: pdf})
			v := inspect(t, msg, nil)
			wantVerdict(t, v, attach.Reject, tt.class, tt.file, "")
		})
	}
	// The two names also count as a mismatch of their own.
	pol := attach.DefaultPolicy()
	delete(pol.Banned, attach.Executable)
	msg := attachtest.Message(from, to, "names", attachtest.Part{Header: tests[5].header, Data: pdf})
	wantVerdict(t, inspect(t, msg, pol), attach.Reject, attach.NameMismatch, "a.pdf", "")
}

func TestZipLocalHeaderDiffers(t *testing.T) {
	pe := attachtest.PE()
	z := goZip(t, map[string][]byte{"Rechnung.pdf": pe})
	// The local header says .exe; the directory, which Explorer lists,
	// says .pdf.
	i := bytes.Index(z, []byte("Rechnung.pdf"))
	copy(z[i:], "Rechnung.exe")
	v := inspect(t, one("a.zip", z), nil)
	wantVerdict(t, v, attach.Reject, attach.NameMismatch, "a.zip", "Rechnung.pdf")

	// A local entry the directory does not list: hidden from Explorer,
	// unpacked by streaming extractors.
	hidden := goZip(t, map[string][]byte{"a.txt": []byte("hello")})
	extra := goZip(t, map[string][]byte{"b.txt": []byte("hidden")})
	cd := bytes.Index(hidden, []byte("PK\x01\x02"))
	xcd := bytes.Index(extra, []byte("PK\x01\x02"))
	combined := append(append(append([]byte{}, hidden[:cd]...), extra[:xcd]...), hidden[cd:]...)
	// Move the directory's offset past the inserted entry.
	eocd := bytes.LastIndex(combined, []byte("PK\x05\x06"))
	binary.LittleEndian.PutUint32(combined[eocd+16:], uint32(cd+xcd))
	v = inspect(t, one("a.zip", combined), nil)
	wantVerdict(t, v, attach.Reject, attach.NameMismatch, "a.zip", "b.txt")
}

func TestZipWithoutDirectory(t *testing.T) {
	// A ZIP cut off before its directory (streamed, or truncated): what
	// the local headers hold is what an extractor gets.
	z := attachtest.Zip(t, map[string][]byte{"a.txt": []byte("hello"), "b.pdf": attachtest.PE()})
	cut := z[:bytes.Index(z, []byte("PK\x01\x02"))]
	wantVerdict(t, inspect(t, one("a.zip", cut), nil), attach.Reject, attach.Executable, "a.zip", "b.pdf")
	// Streamed: sizes in data descriptors (zip -fd, fd = from stdin).
	var b bytes.Buffer
	w := zip.NewWriter(&b)
	f, _ := w.Create("run.pdf")
	f.Write(attachtest.PE())
	w.Close()
	streamed := b.Bytes()
	streamed = streamed[:bytes.Index(streamed, []byte("PK\x01\x02"))]
	wantVerdict(t, inspect(t, one("a.zip", streamed), nil), attach.Reject, attach.Executable, "a.zip", "run.pdf")
	// Garbage that only starts like a ZIP.
	wantVerdict(t, inspect(t, one("a.zip", []byte("PK\x03\x04garbage")), nil), attach.Reject, attach.Unopened, "a.zip", "")
}

func TestBombs(t *testing.T) {
	t.Run("42-style nested", func(t *testing.T) {
		bomb := attachtest.NestedBomb(t, 3, 8<<20)
		t.Logf("nested bomb: %d bytes, expands to %d GiB", len(bomb), (16*16*16*8)>>10)
		v := inspect(t, one("42.zip", bomb), nil)
		wantVerdict(t, v, attach.Reject, attach.Limit, "42.zip", "0.zip/0.zip/0.bin")
		if v.Bytes > 64<<20 {
			t.Errorf("decompressed %d bytes to find it", v.Bytes)
		}
	})
	t.Run("overlapping entries", func(t *testing.T) {
		bomb := attachtest.OverlapBomb(100, 4<<20)
		// The bomb is a valid ZIP: every entry reads back.
		zr, err := zip.NewReader(bytes.NewReader(bomb), int64(len(bomb)))
		if err != nil {
			t.Fatal(err)
		}
		for _, f := range zr.File[:3] {
			rc, err := f.Open()
			if err != nil {
				t.Fatal(err)
			}
			n, err := io.Copy(io.Discard, rc)
			if err != nil || uint64(n) != f.UncompressedSize64 {
				t.Fatalf("%s: %d bytes, %v", f.Name, n, err)
			}
		}
		t.Logf("overlap bomb: %d bytes, %d entries, expands to %d MiB", len(bomb), len(zr.File), 100*4)
		v := inspect(t, one("overlap.zip", bomb), nil)
		wantVerdict(t, v, attach.Reject, attach.Limit, "overlap.zip", "0001.txt")
		if !strings.Contains(v.Finding.Reason, "overlap") {
			t.Errorf("reason %q", v.Finding.Reason)
		}
		if v.Bytes > 1<<20 {
			t.Errorf("decompressed %d bytes to find it", v.Bytes)
		}
	})
	t.Run("gzip bomb in tar", func(t *testing.T) {
		v := inspect(t, one("big.tar.gz", attachtest.TarGz(t, map[string][]byte{"a": make([]byte, 64<<20), "setup.exe": attachtest.PE()})), nil)
		wantVerdict(t, v, attach.Reject, attach.Limit, "big.tar.gz", "big.tar")
	})
	t.Run("depth", func(t *testing.T) {
		z := attachtest.Zip(t, map[string][]byte{"a.txt": []byte("x")})
		for i := 0; i < 6; i++ {
			z = attachtest.Zip(t, map[string][]byte{"n.zip": z})
		}
		v := inspect(t, one("deep.zip", z), nil)
		wantVerdict(t, v, attach.Reject, attach.Limit, "deep.zip", "n.zip/n.zip/n.zip/n.zip/n.zip")
	})
	t.Run("entries", func(t *testing.T) {
		files := map[string][]byte{}
		for i := 0; i < 50; i++ {
			files[string(rune('a'+i%26))+strings.Repeat("x", i/26)+".txt"] = []byte("x")
		}
		l := limits(t)
		l.MaxEntries = 20
		v, err := attach.Inspect(context.Background(), strings.NewReader(one("many.zip", attachtest.Zip(t, files))), l, nil)
		if err != nil {
			t.Fatal(err)
		}
		wantVerdict(t, v, attach.Reject, attach.Limit, "many.zip", "")
	})
	t.Run("time", func(t *testing.T) {
		l := limits(t)
		l.Timeout = time.Nanosecond
		msg := one("a.zip", attachtest.Zip(t, map[string][]byte{"a.txt": []byte("x")}))
		v, err := attach.Inspect(context.Background(), strings.NewReader(msg), l, nil)
		if err != nil {
			t.Fatal(err)
		}
		// The time a check takes depends on the server's load: the
		// limit defers (451), never refuses for good.
		wantVerdict(t, v, attach.Tempfail, attach.Limit, "", "")
		// A policy that accepts over a limit accepts here too.
		pol := attach.DefaultPolicy()
		pol.Limits = attach.Accept
		v, err = attach.Inspect(context.Background(), strings.NewReader(msg), l, pol)
		if err != nil {
			t.Fatal(err)
		}
		wantVerdict(t, v, attach.Accept, attach.Limit, "", "")
	})
}

func TestPolicy(t *testing.T) {
	msg := one("setup.exe", attachtest.PE())
	pol := attach.DefaultPolicy()
	pol.Action = attach.Accept
	v := inspect(t, msg, pol)
	wantVerdict(t, v, attach.Accept, attach.Executable, "setup.exe", "")

	pol.Action = attach.Tempfail
	wantVerdict(t, inspect(t, msg, pol), attach.Tempfail, attach.Executable, "setup.exe", "")

	pol = attach.DefaultPolicy()
	pol.Banned = map[attach.Class]bool{}
	if v := inspect(t, msg, pol); v.Action != attach.Pass {
		t.Errorf("nothing banned: %+v", v)
	}
	pol.BannedNames = []string{"*.pdf"}
	wantVerdict(t, inspect(t, one("a.zip", attachtest.Zip(t, map[string][]byte{"Rechnung.PDF": attachtest.PDF()})), pol), attach.Reject, attach.BannedName, "a.zip", "Rechnung.PDF")

	// A reject outranks an accept found first.
	pol = attach.DefaultPolicy()
	pol.Encrypted = attach.Accept
	two := attachtest.Message(from, to, "two",
		attachtest.Part{Name: "secret.zip", Data: attachtest.Zip(t, map[string][]byte{"a.pdf": attachtest.PDF()}, "-P", "pw")},
		attachtest.Part{Name: "run.bat", Data: []byte("echo")})
	v = inspect(t, two, pol)
	wantVerdict(t, v, attach.Reject, attach.Script, "run.bat", "")
	if len(v.Findings) != 2 {
		t.Errorf("findings %+v", v.Findings)
	}
}

func TestOLE(t *testing.T) {
	// An OLE file whose directory (sector 1, at 1024) holds a root entry
	// with the MSI class ID, and one whose second entry is _VBA_PROJECT.
	ole := func(root []byte, second string) []byte {
		b := make([]byte, 4096)
		copy(b, "\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1")
		binary.LittleEndian.PutUint16(b[0x1e:], 9)
		binary.LittleEndian.PutUint32(b[0x30:], 1)
		copy(b[1024:], "R\x00o\x00o\x00t\x00")
		copy(b[1024+0x50:], root)
		for i, c := range second {
			b[1024+128+2*i] = byte(c)
		}
		return b
	}
	msi := []byte{0x84, 0x10, 0x0c, 0x00, 0, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x46}
	wantVerdict(t, inspect(t, one("update.bin", ole(msi, "x")), nil), attach.Reject, attach.Installer, "update.bin", "")
	wantVerdict(t, inspect(t, one("Rechnung.doc", ole(nil, "_VBA_PROJECT")), nil), attach.Reject, attach.OfficeMacro, "Rechnung.doc", "")
	if v := inspect(t, one("Rechnung.doc", ole(nil, "WordDocument")), nil); v.Action != attach.Pass {
		t.Errorf("a .doc without macros: %+v", v)
	}
	// The name at an offset no directory entry starts at is text.
	b := ole(nil, "x")
	for i, c := range "_VBA_PROJECT" {
		b[2048+64+2*i] = byte(c)
	}
	if v := inspect(t, one("Text.doc", b), nil); v.Action != attach.Pass {
		t.Errorf("_VBA_PROJECT in text: %+v", v)
	}
}

func TestForwardedMessage(t *testing.T) {
	inner := one("setup.exe", attachtest.PE())
	msg := "From: <a@b.example>\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=x\r\n\r\n--x\r\nContent-Type: text/plain\r\n\r\nsee below\r\n" +
		"--x\r\nContent-Type: message/rfc822\r\n\r\n" + inner + "\r\n--x--\r\n"
	wantVerdict(t, inspect(t, msg, nil), attach.Reject, attach.Executable, "setup.exe", "")
}

func TestUuencodedInText(t *testing.T) {
	msg := "From: <a@b.example>\r\nSubject: x\r\n\r\nsee attached\r\n\r\nbegin 644 Rechnung.pdf.exe\r\nM35H`\r\n`\r\nend\r\n"
	wantVerdict(t, inspect(t, msg, nil), attach.Reject, attach.DeceptiveName, "Rechnung.pdf.exe", "")
	if v := inspect(t, "From: <a@b.example>\r\n\r\nbegin 644 Bericht.pdf\r\nend\r\nbeginning of the text\r\n", nil); v.Action != attach.Pass {
		t.Errorf("a uuencoded PDF: %+v", v)
	}
}
