package attach

import (
	"fmt"
	"io"
	"mime"
	"net/url"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/text/encoding/charmap"
	"golang.org/x/text/encoding/htmlindex"
)

// byExtension classes a file by the extension Windows (or a desktop)
// opens it by. A declared name decides what happens on a double click,
// whatever the content is.
var byExtension = map[string]Class{}

func init() {
	for cls, list := range map[Class]string{
		Executable:  "exe dll scr com pif cpl sys drv ocx msc gadget jar class xll xbap efi",
		Script:      "js jse vbs vbe vb wsf wsh wsc ws ps1 ps1xml ps2 ps2xml psc1 psc2 psm1 psd1 msh msh1 msh2 mshxml hta bat cmd sct reg inf chm jnlp sh bash ksh csh settingcontent-ms py pyw pyz pyzw shb shs wsb",
		Shortcut:    "lnk url scf appref-ms search-ms searchconnector-ms library-ms website",
		Installer:   "msi msp mst msix msixbundle appx appxbundle application msu appinstaller diagcab",
		DiskImage:   "iso img vhd vhdx udf dmg",
		OfficeMacro: "docm dotm xlsm xltm xlam pptm potm ppam ppsm sldm accde mde ade adp",
	} {
		for _, e := range strings.Fields(list) {
			byExtension[e] = cls
		}
	}
}

// decoy extensions: what a double extension pretends the file is.
var decoys = map[string]bool{}

func init() {
	for _, e := range strings.Fields("pdf doc docx xls xlsx ppt pptx odt ods odp rtf txt csv xml htm html jpg jpeg png gif bmp tif tiff mp3 mp4 wav avi mov mpg zip rar 7z eml msg ics") {
		decoys[e] = true
	}
}

var classWords = map[Class]string{
	Executable:  "a program",
	Script:      "a script that Windows runs when it is opened",
	Shortcut:    "a shortcut that can start programs",
	Installer:   "a software installer package",
	DiskImage:   "a disk image, which Windows opens like a drive (its content is hidden from scanners)",
	OfficeMacro: "an Office document with macros",
}

type nameFinding struct {
	class  Class
	reason string
}

// baseName is the last element of a name with / or \ separators (a ZIP
// entry written on Windows may use either).
func baseName(name string) string {
	if i := strings.LastIndexAny(name, `/\`); i >= 0 {
		return name[i+1:]
	}
	return name
}

// directionControls change how a name is shown (U+202E shows
// "invoice\u202Efdp.exe" as "invoiceexe.pdf"); invisible characters
// hide what separates words. Neither belongs in a file name.
// The marks (U+200E, U+200F, U+061C) and the joiners (U+200C, U+200D)
// are left alone: Hebrew, Arabic, Persian and Indic names use them, and
// they cannot reorder letters.
func isDirectionControl(r rune) bool {
	return r >= 0x202a && r <= 0x202e || r >= 0x2066 && r <= 0x2069
}

func isInvisible(r rune) bool {
	return r == 0x200b || r == 0x2060 || r == 0xfeff || r == 0x180e
}

// dotLookalikes are shown as a full stop but are none: "invoice\u2024pdf"
// looks like a PDF and has no extension at all, or another one. Some are
// ordinary punctuation in some languages (the Arabic full stop, the
// Catalan middle dot), so only one followed by a known extension counts
// (fakeExtension).
func isDotLookalike(r rune) bool {
	switch r {
	case 0x2024, 0xff0e, 0x3002, 0xfe52, 0x0701, 0x0702, 0x06d4, 0xa60e, 0x2027, 0x2e31, 0x00b7, 0x2219, 0x22c5, 0x1427:
		return true
	}
	return false
}

// fakeExtension finds a dot look-alike followed by an extension that
// mail programs and Windows know ("invoice\u2024pdf"), and returns it.
func fakeExtension(name string) (rune, string) {
	rs := []rune(name)
	for i, r := range rs {
		if !isDotLookalike(r) {
			continue
		}
		j := i + 1
		for j < len(rs) && (unicode.IsLetter(rs[j]) || unicode.IsDigit(rs[j])) {
			j++
		}
		ext := strings.ToLower(string(rs[i+1 : j]))
		if _, known := byExtension[ext]; known || decoys[ext] {
			return r, ext
		}
	}
	return 0, ""
}

// greekLookalikes are the Greek letters shown like Latin ones. The
// others are no disguise, and engineers write them next to Latin
// letters in ordinary names ("Filter 10μm", "4,7kΩ", "ΔT-Messung").
const greekLookalikes = "ΑΒΕΖΗΙΚΜΝΟΡΤΥΧϹͿαγικνορυχϲϳ"

// scriptOf names the alphabets whose letters look like Latin ones.
func scriptOf(r rune) string {
	switch {
	case r < 0x80 && unicode.IsLetter(r), unicode.In(r, unicode.Latin):
		return "Latin"
	case unicode.In(r, unicode.Cyrillic):
		return "Cyrillic"
	case unicode.In(r, unicode.Greek) && strings.ContainsRune(greekLookalikes, r):
		return "Greek"
	case unicode.In(r, unicode.Armenian):
		return "Armenian"
	case unicode.In(r, unicode.Cherokee):
		return "Cherokee"
	}
	return ""
}

// mixedScript finds a word mixing Latin with look-alike letters of
// another alphabet ("Invоice" with a Cyrillic о); a name wholly in one
// alphabet is an ordinary name.
func mixedScript(name string) (string, string) {
	first := ""
	for _, r := range name {
		if !unicode.IsLetter(r) {
			first = ""
			continue
		}
		if r >= 0xff21 && r <= 0xff5a {
			return "Latin", "fullwidth Latin"
		}
		s := scriptOf(r)
		if s == "" {
			continue
		}
		if first == "" {
			first = s
		} else if s != first && (s == "Latin" || first == "Latin") {
			return first, s
		}
	}
	return "", ""
}

// classifyName returns what a declared name says about a file: the class
// of its extension, and every way the name hides what it is.
func classifyName(name string) []nameFinding {
	if name == "" {
		return nil
	}
	var out []nameFinding
	base := baseName(name)
	var clean strings.Builder
	var control, invisible rune
	for _, r := range base {
		switch {
		case isDirectionControl(r):
			if control == 0 {
				control = r
			}
			continue
		case isInvisible(r):
			if invisible == 0 {
				invisible = r
			}
			continue
		}
		clean.WriteRune(r)
	}
	real := clean.String()
	dot, fake := fakeExtension(real)
	if control != 0 {
		out = append(out, nameFinding{DeceptiveName, fmt.Sprintf("its name contains the Unicode direction control U+%04X, which shows the name in another order than it is (the real name is %+q)", control, real)})
	}
	if invisible != 0 {
		out = append(out, nameFinding{DeceptiveName, fmt.Sprintf("its name contains the invisible character U+%04X", invisible)})
	}
	if dot != 0 {
		out = append(out, nameFinding{DeceptiveName, fmt.Sprintf("its name contains U+%04X, which looks like a dot and fakes the extension .%s", dot, fake)})
	}
	if a, b := mixedScript(real); a != "" {
		out = append(out, nameFinding{DeceptiveName, fmt.Sprintf("its name mixes look-alike letters (%s and %s) in one word", a, b)})
	}
	trimmed := strings.TrimRight(real, ". \t")
	ext := strings.ToLower(strings.TrimSpace(extension(trimmed)))
	cls, dangerous := byExtension[ext]
	if trimmed != real && trimmed != "" && dangerous {
		// Only where it hides a class: "Rechnung.pdf " is saved as
		// the PDF it is (banned_names are matched without the dots
		// and spaces too).
		out = append(out, nameFinding{DeceptiveName, "its name ends in a dot or a space, which Windows removes (the file really is " + extOf(trimmed) + ")"})
	}
	if dangerous {
		stem := strings.TrimSpace(trimmed[:strings.LastIndexByte(trimmed, '.')])
		prev := strings.ToLower(strings.TrimSpace(extension(stem)))
		if decoys[prev] && cls != OfficeMacro && cls != DiskImage {
			out = append(out, nameFinding{DeceptiveName, fmt.Sprintf("its name has a double extension: it looks like a .%s and is a .%s", prev, ext)})
		}
		out = append(out, nameFinding{cls, fmt.Sprintf("it is %s (.%s)", classWords[cls], ext)})
	}
	return out
}

// extension is what follows the last dot, "" if none.
func extension(name string) string {
	if i := strings.LastIndexByte(name, '.'); i >= 0 {
		return name[i+1:]
	}
	return ""
}

func extOf(name string) string {
	if e := extension(name); e != "" {
		return "." + e
	}
	return "without an extension"
}

// sameExtension: two names for one file differ in what matters, the
// extension that decides how it is opened.
func sameExtension(a, b string) bool {
	norm := func(s string) string {
		return strings.ToLower(strings.TrimSpace(extension(strings.TrimRight(baseName(s), ". \t"))))
	}
	return norm(a) == norm(b)
}

// charsetReader converts the charsets that names arrive in (names are
// short: the whole name is converted at once). An unknown charset is
// read as Latin-1: mail programs still show such a name, and what
// matters in it, the extension, is ASCII (a name dropped for its
// charset would be a name no check sees).
func charsetReader(cs string, r io.Reader) (io.Reader, error) {
	enc, err := htmlindex.Get(cs)
	if err != nil {
		enc = charmap.ISO8859_1
	}
	return enc.NewDecoder().Reader(r), nil
}

var wordDecoder = &mime.WordDecoder{CharsetReader: charsetReader}

// decodeName decodes RFC 2047 encoded words in a name: not allowed in a
// parameter, but Outlook and others write them, and mail programs show
// the decoded name.
func decodeName(s string) string {
	if !strings.Contains(s, "=?") {
		return s
	}
	if d, err := wordDecoder.DecodeHeader(s); err == nil {
		return d
	}
	return s
}

// ext2231 is an RFC 2231 extended parameter: name*=charset'lang'value or
// the first section name*0*=charset'lang'value.
var ext2231 = regexp.MustCompile(`(?i)([a-z0-9_-]+)\*(0\*)?=\s*([a-z0-9_.:-]+)'([^']*)'([^;\s]*)`)

// reencode2231 rewrites RFC 2231 values in charsets other than UTF-8 and
// US-ASCII, which mime.ParseMediaType silently drops (a name it drops is
// a name no check would see), into UTF-8, together with their
// continuations (name*1*=…), so that ParseMediaType reads them.
func reencode2231(v string) string {
	if !strings.Contains(v, "*") || !strings.Contains(v, "'") {
		return v
	}
	converted := map[string]string{} // parameter name → charset
	v = ext2231.ReplaceAllStringFunc(v, func(m string) string {
		sm := ext2231.FindStringSubmatch(m)
		cs := strings.ToLower(sm[3])
		if cs == "utf-8" || cs == "us-ascii" || cs == "utf8" {
			return m
		}
		val, ok := convert2231(cs, sm[5])
		if !ok {
			return m
		}
		converted[strings.ToLower(sm[1])] = cs
		return sm[1] + "*" + sm[2] + "=utf-8'" + sm[4] + "'" + val
	})
	if len(converted) == 0 {
		return v
	}
	cont := regexp.MustCompile(`(?i)([a-z0-9_-]+)\*([1-9][0-9]*)\*=\s*([^;\s]*)`)
	return cont.ReplaceAllStringFunc(v, func(m string) string {
		sm := cont.FindStringSubmatch(m)
		cs, ok := converted[strings.ToLower(sm[1])]
		if !ok {
			return m
		}
		if val, ok := convert2231(cs, sm[3]); ok {
			return sm[1] + "*" + sm[2] + "*=" + val
		}
		return m
	})
}

// convert2231 turns a percent-encoded value in charset cs into a
// percent-encoded UTF-8 value.
func convert2231(cs, val string) (string, bool) {
	raw, err := url.PathUnescape(val)
	if err != nil {
		return "", false
	}
	r, err := charsetReader(cs, strings.NewReader(raw))
	if err != nil {
		return "", false
	}
	b, err := io.ReadAll(io.LimitReader(r, 4096))
	if err != nil || !utf8.Valid(b) {
		return "", false
	}
	var sb strings.Builder
	for _, c := range b {
		if c > 0x20 && c < 0x7f && !strings.ContainsRune(`*'%;"()<>@,/:=?[]\`, rune(c)) {
			sb.WriteByte(c)
		} else {
			fmt.Fprintf(&sb, "%%%02X", c)
		}
	}
	return sb.String(), true
}
