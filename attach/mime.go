package attach

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"net/url"
	"regexp"
	"slices"
	"strings"

	"github.com/emersion/go-message/textproto"
)

// maxMIMEDepth bounds multipart and message/rfc822 nesting: the walk
// keeps a reader per level.
const maxMIMEDepth = 32

// maxBadHeaderLines: past this many lines that are no header field, a
// header is taken to end (and the rest to be body).
const maxBadHeaderLines = 100

// mimeHeader holds the fields the walk reads, each with every value it
// has, in order: a part may repeat a field, and mail programs differ in
// which of the values they use, so every one counts.
type mimeHeader struct {
	types, disps, encodings []string
	ours                    int // HeaderField fields
}

func (h *mimeHeader) add(t textproto.Header) {
	h.types = append(h.types, t.Values("Content-Type")...)
	h.disps = append(h.disps, t.Values("Content-Disposition")...)
	h.encodings = append(h.encodings, t.Values("Content-Transfer-Encoding")...)
	h.ours += len(t.Values(HeaderField))
}

// isBadHeaderLine: go-message's error for a line that is no header field
// (no colon, a space in the name, a continuation first).
func isBadHeaderLine(err error) bool {
	return err != nil && strings.Contains(err.Error(), "malformed MIME header")
}

// readHeader reads a message's header as mail programs do: a line that
// is no header field is skipped, not taken as the end of the message's
// structure (go-message gives up on the whole message there).
func readHeader(br *bufio.Reader) (mimeHeader, error) {
	var h mimeHeader
	for i := 0; ; i++ {
		t, err := textproto.ReadHeader(br)
		h.add(t)
		if !isBadHeaderLine(err) || i == maxBadHeaderLines {
			return h, err
		}
	}
}

// mediaType is a Content-Type's type and parameters; a value that does
// not parse still gives its type, which mail programs go by.
func mediaType(v string) (string, map[string]string) {
	mt, params, err := mime.ParseMediaType(v)
	if err != nil {
		mt, _, _ = strings.Cut(v, ";")
		mt = strings.ToLower(strings.TrimSpace(mt))
		if !strings.Contains(mt, "/") {
			mt = ""
		}
	}
	return mt, params
}

// disposition is a Content-Disposition's type, also where its
// parameters do not parse.
func disposition(v string) string {
	d, _, err := mime.ParseMediaType(v)
	if err != nil {
		d, _, _ = strings.Cut(v, ";")
		d = strings.ToLower(strings.TrimSpace(d))
	}
	return d
}

// walkMessage reads a message (or a message/rfc822 part) as a stream.
func (in *inspector) walkMessage(r io.Reader, depth int) error {
	br := bufio.NewReader(r)
	h, err := readHeader(br)
	if depth == 0 {
		in.v.Forged = h.ours
	}
	if err != nil && err != io.EOF && !isBadHeaderLine(err) {
		return in.readErr("", err)
	}
	return in.walkPart(h, br, depth, false)
}

// walkPart looks at one MIME entity; raw is its body, not yet decoded.
// inDigest: a part of a multipart/digest, whose default type is
// message/rfc822 (RFC 2046 5.1.5).
func (in *inspector) walkPart(h mimeHeader, raw io.Reader, depth int, inDigest bool) error {
	if depth > maxMIMEDepth {
		return in.limit("", fmt.Sprintf("its MIME parts are nested deeper than %d levels", maxMIMEDepth))
	}
	mt, params := "", map[string]string(nil)
	if len(h.types) > 0 {
		mt, params = mediaType(h.types[0])
	} else if inDigest {
		mt = "message/rfc822"
	}
	if mixedKinds(h.types) {
		// A container by one Content-Type and a file by another:
		// what a mail program shows depends on the one it reads.
		in.file = ""
		if names := partNames(h); len(names) > 0 {
			in.file = names[0]
		}
		return in.found(Unopened, "", "one of its MIME parts declares two content types, one a container of parts and one not, which mail programs read in different ways, so what they show cannot be checked")
	}
	if strings.HasPrefix(mt, "multipart/") {
		return in.walkMultipart(raw, params["boundary"], depth, mt == "multipart/digest")
	}
	if encodings(h) > 1 {
		// Two decodings give two different files; which one a mail
		// program shows cannot be told.
		in.file = ""
		if names := partNames(h); len(names) > 0 {
			in.file = names[0]
		}
		return in.found(Unopened, "", "one of its MIME parts declares two different transfer encodings (base64, quoted-printable, uuencode), which mail programs decode in different ways, so what they show cannot be checked")
	}
	body := in.decoded(h, raw)
	if mt == "message/rfc822" || mt == "message/global" {
		return in.walkMessage(body, depth+1)
	}
	names := partNames(h)
	attachment, shown := false, true
	for _, d := range h.disps {
		if disposition(d) == "attachment" {
			attachment = true
		}
	}
	for _, t := range h.types {
		if t, _ := mediaType(t); t != "" && !strings.HasPrefix(t, "text/") && !strings.HasPrefix(t, "multipart/") {
			shown = false
		}
	}
	if len(names) == 0 && !attachment && shown {
		if mt == "" || mt == "text/plain" {
			// Body text is shown, never saved or run, unless it
			// holds uuencoded files, which Outlook shows as
			// attachments.
			return in.uuencoded(body)
		}
		return nil
	}
	in.v.Files++
	in.file = ""
	if len(names) > 0 {
		in.file = names[0]
	}
	for _, n := range names {
		if err := in.nameFindings("", n); err != nil {
			return err
		}
	}
	for _, n := range names[min(1, len(names)):] {
		if !sameExtension(names[0], n) {
			if err := in.found(NameMismatch, "", fmt.Sprintf("it has two names, %+q and %+q, in its MIME header; mail programs differ in which they show and which they save", names[0], n)); err != nil {
				return err
			}
			break
		}
	}
	for _, t := range h.types {
		t, _ := mediaType(t)
		if c := declaredType(t); c != "" {
			if err := in.found(c, "", fmt.Sprintf("it is declared as %s (%s)", t, classWords[c])); err != nil {
				return err
			}
		}
	}
	if transferEncoding(h) == "uuencode" {
		// Decoded by some mail programs, under the name in its
		// "begin" line.
		return in.uuencoded(body)
	}
	return in.content("", body, 0)
}

// walkMultipart walks the parts of a multipart body. A part whose
// header cannot be read is a finding of its own: mail programs read
// such headers each their own way, so what they show cannot be told,
// and the multipart reader cannot find the parts after it either.
func (in *inspector) walkMultipart(raw io.Reader, boundary string, depth int, digest bool) error {
	if boundary == "" {
		// No parts can be told apart; mail programs show the body as
		// text.
		return nil
	}
	mr := textproto.NewMultipartReader(raw, boundary)
	for {
		p, err := mr.NextPart()
		if err == io.EOF {
			return nil
		}
		if isBadHeaderLine(err) {
			in.file = ""
			if err := in.found(Unopened, "", "one of its MIME parts has a damaged header (a line that is no header field), which mail programs read in different ways, so that part and those after it cannot be checked"); err != nil {
				return err
			}
			// The reader cannot go on past the damaged header.
			return nil
		}
		if err != nil {
			// A broken boundary ends what can be told apart;
			// mail programs cannot show more parts either.
			return in.readErr("", err)
		}
		var h mimeHeader
		h.add(p.Header)
		if err := in.walkPart(h, p, depth+1, digest); err != nil {
			return err
		}
	}
}

// transferEncoding is the part's transfer encoding, as mail programs
// decode it: with comments and blanks removed, and, if the part has
// several, the one that decodes, since reading the encoded text as it
// is (7bit, 8bit, binary, unknown) hides nothing. Two that decode are
// refused before this is asked (encodings).
func transferEncoding(h mimeHeader) string {
	for _, v := range h.encodings {
		if v := decoding(v); v != "" {
			return v
		}
	}
	return ""
}

// decoding is the decoding a Content-Transfer-Encoding value asks for,
// "" for none (or one no mail program knows).
func decoding(v string) string {
	if i := strings.IndexByte(v, '('); i >= 0 {
		v = v[:i]
	}
	switch v = strings.ToLower(strings.Trim(v, " \t\"'")); v {
	case "base64", "quoted-printable":
		return v
	case "uuencode", "x-uuencode", "x-uue", "uue":
		return "uuencode"
	}
	return ""
}

// encodings counts the different decodings a part's header asks for.
func encodings(h mimeHeader) int {
	var seen []string
	for _, v := range h.encodings {
		if d := decoding(v); d != "" && !slices.Contains(seen, d) {
			seen = append(seen, d)
		}
	}
	return len(seen)
}

// mixedKinds: a part's Content-Type values disagree on whether it is a
// container of parts (multipart, message) or a file.
func mixedKinds(types []string) bool {
	var container, leaf bool
	for _, t := range types {
		mt, _ := mediaType(t)
		if strings.HasPrefix(mt, "multipart/") || mt == "message/rfc822" || mt == "message/global" {
			container = true
		} else {
			leaf = true
		}
	}
	return container && leaf
}

// decoded is a part's body, transfer decoding done (decode.go).
func (in *inspector) decoded(h mimeHeader, raw io.Reader) io.Reader {
	switch transferEncoding(h) {
	case "base64":
		return newB64Reader(raw)
	case "quoted-printable":
		return newQPReader(raw)
	}
	return raw
}

// looseName finds name and filename parameters where the header does not
// parse (a duplicate parameter, a stray quote): mail programs still read
// such headers, each its own way, so every name there counts.
var looseName = regexp.MustCompile(`(?i)(?:^|;)\s*(?:file)?name(?:\*[0-9]*)?\*?\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)`)

// partNames are the names a part declares: Content-Disposition filename
// first (what is saved), then Content-Type name, decoded (RFC 2231,
// RFC 2047 words), each once.
func partNames(h mimeHeader) []string {
	var out []string
	add := func(n string) {
		n = decodeName(n)
		if strings.TrimSpace(n) == "" {
			return
		}
		for _, o := range out {
			if o == n {
				return
			}
		}
		out = append(out, n)
	}
	for _, f := range []struct {
		values []string
		param  string
	}{{h.disps, "filename"}, {h.types, "name"}} {
		for _, raw := range f.values {
			addNames(raw, f.param, add)
		}
	}
	return out
}

// addNames adds the names one field declares.
func addNames(raw, param string, add func(string)) {
	_, params, err := mime.ParseMediaType(reencode2231(raw))
	if err == nil && params[param] != "" {
		add(params[param])
		return
	}
	// A header that does not parse (a duplicate parameter, a stray
	// quote) or whose name the parser dropped (an unknown charset).
	for _, m := range looseName.FindAllStringSubmatch(raw, -1) {
		v := m[1]
		if len(v) >= 2 && v[0] == '"' {
			v = strings.ReplaceAll(v[1:len(v)-1], `\`, "")
		}
		if strings.Contains(m[0], "*") {
			if i := strings.LastIndexByte(v, '\''); i >= 0 {
				v = v[i+1:]
			}
			if u, err := url.PathUnescape(v); err == nil {
				v = u
			}
		}
		add(v)
	}
}

// uuBegin is the first line of a uuencoded file: "begin 644 name".
var uuBegin = regexp.MustCompile(`^begin(?:-base64)? [0-7]{3,4} (.+)$`)

// uuencoded checks the names of uuencoded files in a text part. Only
// lines starting with "begin " are looked at; the text is read line by
// line and never kept.
func (in *inspector) uuencoded(r io.Reader) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 64*1024)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) < 10 || line[0] != 'b' || !bytes.HasPrefix(line, []byte("begin")) {
			continue
		}
		m := uuBegin.FindSubmatch(bytes.TrimRight(line, "\r"))
		if m == nil {
			continue
		}
		in.v.Files++
		in.file = string(m[1])
		if err := in.nameFindings("", in.file); err != nil {
			return err
		}
	}
	if err := sc.Err(); err != nil && err != bufio.ErrTooLong {
		return in.readErr("", err)
	}
	return nil
}
