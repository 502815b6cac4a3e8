package attach

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"mime"
	"net/url"
	"regexp"
	"strings"

	"github.com/emersion/go-message"
)

// maxMIMEDepth bounds multipart and message/rfc822 nesting: go-message
// keeps a reader per level.
const maxMIMEDepth = 32

// walkMessage reads a message (or a message/rfc822 part) as a stream.
func (in *inspector) walkMessage(r io.Reader, depth int) error {
	e, err := message.Read(r)
	if err != nil && !message.IsUnknownEncoding(err) && !message.IsUnknownCharset(err) {
		// No header to go by: nothing a mail program could show as an
		// attachment either (unless the deadline cut it short).
		return in.readErr("", err)
	}
	return in.walkEntity(e, depth)
}

func (in *inspector) walkEntity(e *message.Entity, depth int) error {
	if depth > maxMIMEDepth {
		return in.limit("", fmt.Sprintf("its MIME parts are nested deeper than %d levels", maxMIMEDepth))
	}
	mt, _, _ := mime.ParseMediaType(e.Header.Get("Content-Type"))
	if mr := e.MultipartReader(); mr != nil {
		for {
			p, err := mr.NextPart()
			if err == io.EOF {
				return nil
			}
			if err != nil && !message.IsUnknownEncoding(err) && !message.IsUnknownCharset(err) {
				// A broken boundary ends what can be told apart;
				// mail programs cannot show more parts either.
				return in.readErr("", err)
			}
			if err := in.walkEntity(p, depth+1); err != nil {
				return err
			}
		}
	}
	names := partNames(e.Header)
	if mt == "message/rfc822" || mt == "message/global" {
		return in.walkMessage(e.Body, depth+1)
	}
	disp, _, _ := mime.ParseMediaType(e.Header.Get("Content-Disposition"))
	if len(names) == 0 && disp != "attachment" && (mt == "" || strings.HasPrefix(mt, "text/") || strings.HasPrefix(mt, "multipart/")) {
		if mt == "" || mt == "text/plain" {
			// Body text is shown, never saved or run, unless it
			// holds uuencoded files, which Outlook shows as
			// attachments.
			return in.uuencoded(e.Body)
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
	if c := declaredType(mt); c != "" {
		if err := in.found(c, "", fmt.Sprintf("it is declared as %s (%s)", mt, classWords[c])); err != nil {
			return err
		}
	}
	return in.content("", e.Body, 0)
}

// looseName finds name and filename parameters where the header does not
// parse (a duplicate parameter, a stray quote): mail programs still read
// such headers, each its own way, so every name there counts.
var looseName = regexp.MustCompile(`(?i)(?:^|;)\s*(?:file)?name(?:\*[0-9]*)?\*?\s*=\s*("(?:[^"\\]|\\.)*"|[^;\s]*)`)

// partNames are the names a part declares: Content-Disposition filename
// first (what is saved), then Content-Type name, decoded (RFC 2231,
// RFC 2047 words), each once.
func partNames(h message.Header) []string {
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
	for _, f := range []struct{ field, param string }{{"Content-Disposition", "filename"}, {"Content-Type", "name"}} {
		raw := h.Get(f.field)
		if raw == "" {
			continue
		}
		_, params, err := mime.ParseMediaType(reencode2231(raw))
		if err == nil {
			add(params[f.param])
			continue
		}
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
	return out
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
