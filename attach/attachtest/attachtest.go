// Package attachtest makes the files and messages that the attachment
// policy's tests send: archives made by the standard tools (zip, 7z, tar,
// gzip), a tiny PE file, ordinary attachments, and the two kinds of zip
// bomb. Nothing here is real malware: the PE file has headers and no
// code, the bombs expand to zeros.
package attachtest

import (
	"bytes"
	"compress/flate"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"image"
	"image/color"
	"image/jpeg"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// RequireTool makes sure a program is on PATH: without it the test is
// skipped, or fails under CI=true (test.sh installs pkg).
func RequireTool(t testing.TB, name, pkg string) {
	t.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s not found on PATH; install the Debian package %s (test.sh does) (CI=true: this is a failure, not a skip)", name, pkg)
		}
		t.Skipf("%s not found on PATH; install the Debian package %s (see test.sh)", name, pkg)
	}
}

// Run runs a program in dir and fails the test if it fails.
func Run(t testing.TB, dir, name string, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// writeFiles writes files (name → content; names may hold folders) into
// a new folder and returns it with the names in a stable order.
func writeFiles(t testing.TB, files map[string][]byte) (string, []string) {
	t.Helper()
	dir := t.TempDir()
	var names []string
	for n, data := range files {
		p := filepath.Join(dir, n)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		names = append(names, n)
	}
	sortStrings(names)
	return dir, names
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func readFile(t testing.TB, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// Zip makes a ZIP file with Info-ZIP's zip; args go before the archive
// name (e.g. "-P", "secret" to encrypt it).
func Zip(t testing.TB, files map[string][]byte, args ...string) []byte {
	t.Helper()
	RequireTool(t, "zip", "zip")
	dir, names := writeFiles(t, files)
	out := filepath.Join(t.TempDir(), "out.zip")
	Run(t, dir, "zip", append(append(append([]string{"-q", "-X"}, args...), out), names...)...)
	return readFile(t, out)
}

// SevenZip makes a 7z archive with 7-Zip.
func SevenZip(t testing.TB, files map[string][]byte) []byte {
	t.Helper()
	RequireTool(t, "7z", "p7zip-full")
	dir, names := writeFiles(t, files)
	out := filepath.Join(t.TempDir(), "out.7z")
	Run(t, dir, "7z", append([]string{"a", "-bd", "-bso0", "-t7z", out}, names...)...)
	return readFile(t, out)
}

// TarGz makes a .tar.gz with tar and gzip.
func TarGz(t testing.TB, files map[string][]byte) []byte {
	t.Helper()
	RequireTool(t, "tar", "tar")
	RequireTool(t, "gzip", "gzip")
	dir, names := writeFiles(t, files)
	out := filepath.Join(t.TempDir(), "out.tar.gz")
	Run(t, dir, "tar", append([]string{"-czf", out}, names...)...)
	return readFile(t, out)
}

// Gzip compresses one file with gzip, which records its name.
func Gzip(t testing.TB, name string, data []byte) []byte {
	t.Helper()
	RequireTool(t, "gzip", "gzip")
	dir, _ := writeFiles(t, map[string][]byte{name: data})
	Run(t, dir, "gzip", "-N", name)
	return readFile(t, filepath.Join(dir, name+".gz"))
}

// PE is a tiny Windows program image: DOS header, PE signature, COFF
// and optional header, one empty section; no code runs from it.
func PE() []byte {
	b := make([]byte, 0x200)
	copy(b, "MZ")
	binary.LittleEndian.PutUint32(b[0x3c:], 0x40)
	copy(b[0x40:], "PE\x00\x00")
	coff := b[0x44:]
	binary.LittleEndian.PutUint16(coff[0:], 0x14c) // i386
	binary.LittleEndian.PutUint16(coff[2:], 1)     // sections
	binary.LittleEndian.PutUint16(coff[16:], 0xe0) // optional header size
	binary.LittleEndian.PutUint16(coff[18:], 0x0102)
	opt := b[0x58:]
	binary.LittleEndian.PutUint16(opt[0:], 0x10b) // PE32
	binary.LittleEndian.PutUint32(opt[28:], 0x400000)
	binary.LittleEndian.PutUint32(opt[32:], 0x1000)
	binary.LittleEndian.PutUint32(opt[36:], 0x200)
	binary.LittleEndian.PutUint16(opt[68:], 2) // GUI subsystem
	copy(b[0x138:], ".text\x00\x00\x00")
	return b
}

// PDF is a small valid PDF.
func PDF() []byte {
	return []byte("%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n2 0 obj<</Type/Pages/Kids[3 0 R]/Count 1>>endobj\n" +
		"3 0 obj<</Type/Page/Parent 2 0 R/MediaBox[0 0 595 842]>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")
}

// JPEG is a small photo-like JPEG.
func JPEG() []byte {
	img := image.NewRGBA(image.Rect(0, 0, 64, 48))
	for y := 0; y < 48; y++ {
		for x := 0; x < 64; x++ {
			img.Set(x, y, color.RGBA{uint8(x * 4), uint8(y * 5), 128, 255})
		}
	}
	var b bytes.Buffer
	if err := jpeg.Encode(&b, img, nil); err != nil {
		panic(err)
	}
	return b.Bytes()
}

// ICS is a calendar invitation.
const ICS = "BEGIN:VCALENDAR\r\nVERSION:2.0\r\nPRODID:-//securerelay tests//EN\r\nMETHOD:REQUEST\r\nBEGIN:VEVENT\r\n" +
	"UID:1@example.test\r\nDTSTAMP:20260101T090000Z\r\nDTSTART:20260105T090000Z\r\nDTEND:20260105T100000Z\r\n" +
	"SUMMARY:Planning\r\nORGANIZER:mailto:alice@sender.example\r\nEND:VEVENT\r\nEND:VCALENDAR\r\n"

// ooxml are the parts of a minimal Word document.
func ooxml(macros bool) map[string][]byte {
	ct := `<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"><Default Extension="rels" ContentType="application/vnd.openxmlformats-package.relationships+xml"/><Default Extension="xml" ContentType="application/xml"/><Override PartName="/word/document.xml" ContentType="application/vnd.openxmlformats-officedocument.wordprocessingml.document.main+xml"/></Types>`
	files := map[string][]byte{
		"[Content_Types].xml": []byte(ct),
		"_rels/.rels": []byte(`<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<Relationships xmlns="http://schemas.openxmlformats.org/package/2006/relationships"><Relationship Id="rId1" Type="http://schemas.openxmlformats.org/officeDocument/2006/relationships/officeDocument" Target="word/document.xml"/></Relationships>`),
		"word/document.xml": []byte(`<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body><w:p><w:r><w:t>Bewerbung</w:t></w:r></w:p></w:body></w:document>`),
	}
	if macros {
		// The real thing is an OLE file; its name is what tells.
		files["word/vbaProject.bin"] = append([]byte("\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"), make([]byte, 1024)...)
	}
	return files
}

// DOCX is a Word document without macros, zipped by zip.
func DOCX(t testing.TB) []byte { t.Helper(); return Zip(t, ooxml(false)) }

// DOCM is one with a VBA project.
func DOCM(t testing.TB) []byte { t.Helper(); return Zip(t, ooxml(true)) }

// NestedBomb is a 42.zip-style bomb made by zip: a file of leaf zero
// bytes, zipped 16 times under different names, that ZIP zipped 16
// times, and so on for levels levels: it expands to 16^levels × leaf.
func NestedBomb(t testing.TB, levels int, leaf int64) []byte {
	t.Helper()
	RequireTool(t, "zip", "zip")
	dir := t.TempDir()
	cur := filepath.Join(dir, "zeros.bin")
	f, err := os.Create(cur)
	if err != nil {
		t.Fatal(err)
	}
	if err := f.Truncate(leaf); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for l := 1; l <= levels; l++ {
		ld := filepath.Join(dir, fmt.Sprint("l", l))
		if err := os.Mkdir(ld, 0o755); err != nil {
			t.Fatal(err)
		}
		ext := filepath.Ext(cur)
		var names []string
		for i := 0; i < 16; i++ {
			n := fmt.Sprintf("%x%s", i, ext)
			if err := os.Link(cur, filepath.Join(ld, n)); err != nil {
				t.Fatal(err)
			}
			names = append(names, n)
		}
		out := filepath.Join(dir, fmt.Sprintf("level%d.zip", l))
		Run(t, ld, "zip", append([]string{"-q", "-9", "-X", out}, names...)...)
		cur = out
	}
	return readFile(t, cur)
}

// OverlapBomb is David Fifield's overlapping-entry zip bomb ("A better
// zip bomb", 2019, full overlap with quoted local headers): n entries
// whose compressed data all end in one deflate kernel of kernel zero
// bytes; entry i's data quotes the local headers of the entries after
// it in stored blocks. Each entry is valid, and together they expand to
// about n × kernel bytes from a file of a few kilobytes.
func OverlapBomb(n, kernel int) []byte {
	var kc bytes.Buffer
	fw, _ := flate.NewWriter(&kc, flate.BestCompression)
	fw.Write(make([]byte, kernel))
	fw.Close()
	names := make([]string, n)
	for i := range names {
		names[i] = fmt.Sprintf("%04d.txt", i)
	}
	lh := make([][]byte, n) // local headers, built from the last
	zeros := make([]byte, kernel)
	for i := n - 1; i >= 0; i-- {
		// Entry i expands to the headers after it, then the kernel.
		crc := crc32.NewIEEE()
		csize, usize := kc.Len(), kernel
		for j := i + 1; j < n; j++ {
			crc.Write(lh[j])
			csize += 5 + len(lh[j])
			usize += len(lh[j])
		}
		crc.Write(zeros)
		h := make([]byte, 30+len(names[i]))
		binary.LittleEndian.PutUint32(h[0:], 0x04034b50)
		binary.LittleEndian.PutUint16(h[4:], 20)
		binary.LittleEndian.PutUint16(h[8:], 8)
		binary.LittleEndian.PutUint32(h[14:], crc.Sum32())
		binary.LittleEndian.PutUint32(h[18:], uint32(csize))
		binary.LittleEndian.PutUint32(h[22:], uint32(usize))
		binary.LittleEndian.PutUint16(h[26:], uint16(len(names[i])))
		copy(h[30:], names[i])
		lh[i] = h
	}
	var out bytes.Buffer
	offsets := make([]int, n)
	for i := 0; i < n; i++ {
		if i > 0 {
			// The stored block that quotes this header in the data of
			// every entry before it.
			l := len(lh[i])
			out.Write([]byte{0, byte(l), byte(l >> 8), ^byte(l), ^byte(l >> 8)})
		}
		offsets[i] = out.Len()
		out.Write(lh[i])
	}
	out.Write(kc.Bytes())
	cdStart := out.Len()
	for i := 0; i < n; i++ {
		h := lh[i]
		c := make([]byte, 46+len(names[i]))
		binary.LittleEndian.PutUint32(c[0:], 0x02014b50)
		binary.LittleEndian.PutUint16(c[4:], 20)
		binary.LittleEndian.PutUint16(c[6:], 20)
		binary.LittleEndian.PutUint16(c[10:], 8)
		copy(c[16:28], h[14:26]) // crc, sizes
		binary.LittleEndian.PutUint16(c[28:], uint16(len(names[i])))
		binary.LittleEndian.PutUint32(c[42:], uint32(offsets[i]))
		copy(c[46:], names[i])
		out.Write(c)
	}
	cdLen := out.Len() - cdStart
	e := make([]byte, 22)
	binary.LittleEndian.PutUint32(e[0:], 0x06054b50)
	binary.LittleEndian.PutUint16(e[8:], uint16(n))
	binary.LittleEndian.PutUint16(e[10:], uint16(n))
	binary.LittleEndian.PutUint32(e[12:], uint32(cdLen))
	binary.LittleEndian.PutUint32(e[16:], uint32(cdStart))
	out.Write(e)
	return out.Bytes()
}

// Part is one attachment of a test message.
type Part struct {
	// Name goes into Content-Disposition filename and Content-Type name,
	// as a quoted string (RFC 2231 for non-ASCII names).
	Name string
	// Type: default application/octet-stream.
	Type string
	// Header, if set, replaces the generated Content-Type and
	// Content-Disposition lines (CRLF-terminated), for tests of names
	// written in odd ways.
	Header string
	Data   []byte
}

// Message is a multipart/mixed message from → to with a short text and
// the parts, base64-encoded, CRLF line ends.
func Message(from, to, subject string, parts ...Part) string {
	var b strings.Builder
	fmt.Fprintf(&b, "From: <%s>\r\nTo: <%s>\r\nSubject: %s\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\nMessage-ID: <%d.attachtest@sender.example>\r\n"+
		"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"=_b0\"\r\n\r\n--=_b0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"+
		"Please find the file attached.\r\n", from, to, subject, time.Now().UnixNano())
	for _, p := range parts {
		b.WriteString("--=_b0\r\n")
		if p.Header != "" {
			b.WriteString(p.Header)
		} else {
			typ := p.Type
			if typ == "" {
				typ = "application/octet-stream"
			}
			fmt.Fprintf(&b, "Content-Type: %s; %s\r\nContent-Disposition: attachment; %s\r\n", typ, param("name", p.Name), param("filename", p.Name))
		}
		b.WriteString("Content-Transfer-Encoding: base64\r\n\r\n")
		enc := base64.StdEncoding.EncodeToString(p.Data)
		for len(enc) > 76 {
			b.WriteString(enc[:76] + "\r\n")
			enc = enc[76:]
		}
		b.WriteString(enc + "\r\n")
	}
	b.WriteString("--=_b0--\r\n")
	return b.String()
}

// param writes name="value", or the RFC 2231 extended form
// (name*=utf-8, two apostrophes, percent-encoded octets) for a value that
// is not plain ASCII.
func param(name, v string) string {
	for i := 0; i < len(v); i++ {
		if v[i] < 0x20 || v[i] > 0x7e || v[i] == '"' || v[i] == '\\' {
			var e strings.Builder
			for j := 0; j < len(v); j++ {
				c := v[j]
				if c > 0x20 && c < 0x7f && !strings.ContainsRune(`*'%;"()<>@,/:=?[]\`, rune(c)) {
					e.WriteByte(c)
				} else {
					fmt.Fprintf(&e, "%%%02X", c)
				}
			}
			return name + "*=utf-8''" + e.String()
		}
	}
	return name + "=\"" + v + "\""
}
