// Package downgrade converts a message with 8-bit content into the 7-bit
// form a next hop without 8BITMIME (RFC 6152) can take, as Postfix does:
// each leaf body part with 8-bit octets is re-encoded quoted-printable
// (RFC 2045 §6.7), everything else stays byte for byte as it was, the MIME
// structure and its boundaries included.
//
// A message that cannot be converted without changing what it says is
// refused with an *Error (the delivery engine returns it with 5.6.3):
// 8-bit octets in a header field (only SMTPUTF8 may carry those, RFC 6532),
// inside a message/* part (RFC 2046 §5.2: its content cannot be encoded,
// and re-encoding the parts of an attached message would alter that
// message), or in a part that claims base64 or quoted-printable and is
// therefore broken already.
//
// The conversion reads the message twice: Analyze finds what must change
// (and whether anything must), Plan.Convert writes the converted copy.
// Both passes take the same walk over the same bytes, so that a header is
// written knowing whether its body will be re-encoded, without holding a
// part in memory.
package downgrade

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"mime"
	"mime/quotedprintable"
	"strings"
	"unicode/utf8"
)

// Limits of the walk: deeper nesting or a larger header block is not
// converted (refused with *Error), never guessed at.
const (
	maxDepth  = 50
	maxHeader = 4 << 20
	// readBuf is the line buffer; a longer line is handled in pieces
	// (it can be no boundary delimiter, which is at most 76 octets plus
	// transport padding).
	readBuf = 64 << 10
)

// Error says why a message cannot be converted to 7 bit; Reason is in
// words an end user can follow.
type Error struct {
	Reason string
}

func (e *Error) Error() string { return "message cannot be converted to 7 bit: " + e.Reason }

// ErrChanged: the message read for the conversion is not the one Analyze
// saw.
var ErrChanged = errors.New("downgrade: the message changed between analysis and conversion")

// Has8Bit reports whether p holds an octet above 0x7F.
func Has8Bit(p []byte) bool {
	for len(p) >= 8 {
		// Eight octets at a time: the high bit of any of them.
		if binary.LittleEndian.Uint64(p)&0x8080808080808080 != 0 {
			return true
		}
		p = p[8:]
	}
	for _, c := range p {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// Detector is an io.Writer that remembers whether anything written to it
// had an 8-bit octet: smtpd tees message data through it while spooling,
// so that the queue knows without reading the message again.
type Detector struct {
	EightBit bool
}

func (d *Detector) Write(p []byte) (int, error) {
	if !d.EightBit && Has8Bit(p) {
		d.EightBit = true
	}
	return len(p), nil
}

// entity is what the walk learns of one MIME entity (the message itself,
// then each body part in order of appearance).
type entity struct {
	typ      string // media type, lower case; "" when none was given
	boundary string // multipart/* with a usable boundary only
	cte      string // Content-Transfer-Encoding, lower case; "" when none
	mime     bool   // MIME-Version or Content-Type present (the top level only matters)
	hdr8     string // name of a header field with 8-bit octets ("?": one without a usable name)
	leaf     bool
}

// handler receives the walk's events.
type handler interface {
	// header is an entity's header block as read (its final empty line
	// included when there is one).
	header(i int, e *entity, raw []byte) error
	// body is a piece of a leaf entity's body: whole lines, or pieces of
	// a line longer than the read buffer.
	body(i int, p []byte) error
	// endLeaf ends a leaf's body (before a delimiter line, or at the end).
	endLeaf(i int) error
	// delimiter is a boundary delimiter line, CRLF included.
	delimiter(line []byte) error
	// filler is preamble or epilogue text, which MIME readers ignore.
	filler(p []byte) error
}

type frame struct {
	boundary string
}

// walk reads a message and reports its structure to h. It follows RFC
// 2046 §5.1: a delimiter line of any enclosing multipart ends the parts
// inside it, so a missing close delimiter does not swallow the rest.
func walk(r io.Reader, h handler) error {
	br := bufio.NewReaderSize(r, readBuf)
	var stack []frame
	idx := 0
	// Reading the top-level header first.
	inHeader, leaf := true, -1
	var hdr []byte
	lineStart := true
	for {
		line, err := br.ReadSlice('\n')
		if err != nil && err != bufio.ErrBufferFull && err != io.EOF {
			return err
		}
		full := err == nil
		if len(line) > 0 {
			// Only a whole line can be a delimiter; pieces of a long line
			// are text.
			var kind, depth int
			if lineStart && full && len(stack) > 0 {
				kind, depth = matchDelimiter(line, stack)
			}
			switch {
			case kind != 0:
				if inHeader {
					// A part that ended inside its header: it has no body.
					if _, err := startEntity(h, idx, hdr, &stack, &leaf); err != nil {
						return err
					}
					inHeader, hdr = false, nil
				}
				if leaf >= 0 {
					if err := h.endLeaf(leaf); err != nil {
						return err
					}
					leaf = -1
				}
				stack = stack[:depth+1]
				if err := h.delimiter(line); err != nil {
					return err
				}
				if kind == closeDelim {
					stack = stack[:depth]
				} else {
					idx++
					inHeader = true
				}
			case inHeader:
				if len(hdr)+len(line) > maxHeader {
					return &Error{Reason: "a header block is larger than this server converts"}
				}
				hdr = append(hdr, line...)
				if full && (string(line) == "\r\n" || string(line) == "\n") {
					if _, err := startEntity(h, idx, hdr, &stack, &leaf); err != nil {
						return err
					}
					inHeader, hdr = false, nil
				}
			case leaf >= 0:
				if err := h.body(leaf, line); err != nil {
					return err
				}
			default:
				if err := h.filler(line); err != nil {
					return err
				}
			}
		}
		lineStart = full
		if err == io.EOF {
			break
		}
	}
	if inHeader {
		if _, err := startEntity(h, idx, hdr, &stack, &leaf); err != nil {
			return err
		}
	}
	if leaf >= 0 {
		return h.endLeaf(leaf)
	}
	return nil
}

// startEntity parses a header block, reports it, and pushes a multipart's
// boundary or marks the entity as the current leaf.
func startEntity(h handler, idx int, raw []byte, stack *[]frame, leaf *int) (*entity, error) {
	e := parseEntity(raw)
	if e.boundary != "" && len(*stack) < maxDepth {
		*stack = append(*stack, frame{boundary: e.boundary})
	} else {
		e.leaf = true
		*leaf = idx
	}
	return e, h.header(idx, e, raw)
}

const (
	openDelim = iota + 1
	closeDelim
)

// matchDelimiter reports whether line is "--boundary" or "--boundary--"
// (with transport padding) of a frame on the stack, innermost first.
func matchDelimiter(line []byte, stack []frame) (kind, depth int) {
	if len(line) < 3 || line[0] != '-' || line[1] != '-' {
		return 0, 0
	}
	l := bytes.TrimRight(line, "\r\n")
	for d := len(stack) - 1; d >= 0; d-- {
		b := stack[d].boundary
		if !bytes.HasPrefix(l[2:], []byte(b)) {
			continue
		}
		rest := l[2+len(b):]
		k := openDelim
		if bytes.HasPrefix(rest, []byte("--")) {
			rest, k = rest[2:], closeDelim
		}
		if len(bytes.TrimRight(rest, " \t")) == 0 {
			return k, d
		}
	}
	return 0, 0
}

// field is one header field as read: its name and its raw lines.
type field struct {
	name string // as written, trimmed
	raw  []byte
}

// splitFields cuts a header block into fields (a line and the
// continuation lines that follow it); the empty line that ends the block
// is returned apart.
func splitFields(raw []byte) (fields []field, end []byte) {
	for len(raw) > 0 {
		n := bytes.IndexByte(raw, '\n') + 1
		if n == 0 {
			n = len(raw)
		}
		line := raw[:n]
		switch {
		case string(line) == "\r\n" || string(line) == "\n":
			return fields, raw
		case (line[0] == ' ' || line[0] == '\t') && len(fields) > 0:
			f := &fields[len(fields)-1]
			f.raw = append(f.raw, line...)
		default:
			name, _, _ := bytes.Cut(line, []byte(":"))
			fields = append(fields, field{name: string(bytes.TrimSpace(name)), raw: append([]byte(nil), line...)})
		}
		raw = raw[n:]
	}
	return fields, nil
}

// value is a field's unfolded value.
func (f field) value() string {
	_, v, _ := strings.Cut(string(f.raw), ":")
	return strings.TrimSpace(strings.NewReplacer("\r\n", "", "\n", "").Replace(v))
}

func parseEntity(raw []byte) *entity {
	e := &entity{}
	fields, _ := splitFields(raw)
	var ctype string
	seenType, seenCTE := false, false
	for _, f := range fields {
		if e.hdr8 == "" && Has8Bit(f.raw) {
			e.hdr8 = f.name
			if f.name == "" || Has8Bit([]byte(f.name)) {
				e.hdr8 = "?" // no name worth quoting
			}
		}
		switch {
		case strings.EqualFold(f.name, "Content-Type") && !seenType:
			seenType, ctype = true, f.value()
			e.mime = true
		case strings.EqualFold(f.name, "Content-Transfer-Encoding") && !seenCTE:
			seenCTE = true
			e.cte = strings.ToLower(f.value())
		case strings.EqualFold(f.name, "MIME-Version"):
			e.mime = true
		}
	}
	if ctype != "" {
		if mt, params, err := mime.ParseMediaType(ctype); err == nil {
			e.typ = mt
			if b := params["boundary"]; strings.HasPrefix(mt, "multipart/") && validBoundary(b) {
				e.boundary = b
			}
		} else if mt, _, _ := strings.Cut(ctype, ";"); mt != "" {
			// A type with broken parameters: the type still decides
			// what may be encoded (a multipart cannot be), but without
			// a boundary it is walked as one leaf.
			e.typ = strings.ToLower(strings.TrimSpace(mt))
		}
	}
	return e
}

// validBoundary: RFC 2046 §5.1.1, 1 to 70 characters.
func validBoundary(b string) bool {
	return len(b) > 0 && len(b) <= 70 && !strings.ContainsAny(b, "\r\n")
}

// Plan is what Analyze found: whether the message needs converting, and
// how each entity is treated.
type Plan struct {
	needed   bool
	entities []entityPlan
}

type entityPlan struct {
	recode  bool // body re-encoded quoted-printable
	relabel bool // Content-Transfer-Encoding becomes 7bit
	// addMIME: a message without MIME header fields gets MIME-Version,
	// Content-Type with this charset, and the new encoding.
	addMIME string
}

// Needed reports whether the message has 8-bit octets and must be
// converted for a next hop without 8BITMIME.
func (p *Plan) Needed() bool { return p.needed }

// Analyze reads the message and plans its conversion; it returns an
// *Error when the message has 8-bit octets and cannot be converted.
func Analyze(r io.Reader) (*Plan, error) {
	a := &analyzer{}
	if err := walk(r, a); err != nil {
		return nil, err
	}
	p := &Plan{needed: a.any8}
	if !p.needed {
		return p, nil
	}
	for i, e := range a.ents {
		if e.hdr8 != "" {
			which := fmt.Sprintf("the header field %q", e.hdr8)
			if e.hdr8 == "?" {
				which = "a header field"
			}
			return nil, &Error{Reason: which + " contains non-ASCII characters, which only servers with SMTPUTF8 accept"}
		}
		st := a.state[i]
		ep := entityPlan{}
		switch {
		case e.leaf && st.eight:
			switch {
			case strings.HasPrefix(e.typ, "message/"):
				return nil, &Error{Reason: fmt.Sprintf("an attached message (%s) contains 8-bit text; it cannot be re-encoded without changing it", e.typ)}
			case strings.HasPrefix(e.typ, "multipart/"):
				return nil, &Error{Reason: fmt.Sprintf("a %s part without a usable boundary contains 8-bit text", e.typ)}
			case e.cte == "base64" || e.cte == "quoted-printable":
				return nil, &Error{Reason: fmt.Sprintf("a part declared %s contains 8-bit octets, so it is damaged already", e.cte)}
			case e.cte != "" && e.cte != "7bit" && e.cte != "8bit" && e.cte != "binary":
				return nil, &Error{Reason: fmt.Sprintf("a part in the unknown encoding %q contains 8-bit octets", e.cte)}
			}
			ep.recode = true
			if i == 0 && !e.mime {
				ep.addMIME = "unknown-8bit" // RFC 1428: a character set nobody declared
				if st.utf8 {
					ep.addMIME = "utf-8"
				}
			}
		case e.cte == "8bit" || e.cte == "binary":
			// Nothing 8-bit left inside: say so, so that no reader
			// takes the 7-bit message for an 8-bit one.
			ep.relabel = true
		}
		p.entities = append(p.entities, ep)
	}
	return p, nil
}

// bodyState is what the analysis learns of a leaf's body.
type bodyState struct {
	eight bool
	utf8  bool
	carry []byte // an incomplete UTF-8 sequence at the end of a piece
}

type analyzer struct {
	ents  []*entity
	state []*bodyState
	any8  bool
}

func (a *analyzer) header(i int, e *entity, raw []byte) error {
	if i != len(a.ents) {
		return fmt.Errorf("downgrade: entity %d reported out of order", i)
	}
	a.ents = append(a.ents, e)
	a.state = append(a.state, &bodyState{utf8: true})
	if e.hdr8 != "" {
		a.any8 = true
	}
	return nil
}

func (a *analyzer) body(i int, p []byte) error {
	st := a.state[i]
	if !Has8Bit(p) {
		if len(st.carry) > 0 {
			st.utf8 = false // a sequence cut short by ASCII
			st.carry = nil
		}
		return nil
	}
	st.eight, a.any8 = true, true
	if st.utf8 {
		b := append(st.carry, p...)
		// Keep an incomplete sequence at the end for the next piece.
		cut := len(b)
		for k := 1; k <= 3 && k <= len(b); k++ {
			if utf8.RuneStart(b[len(b)-k]) {
				if !utf8.FullRune(b[len(b)-k:]) {
					cut = len(b) - k
				}
				break
			}
		}
		st.utf8 = utf8.Valid(b[:cut])
		st.carry = append([]byte(nil), b[cut:]...)
	}
	return nil
}

func (a *analyzer) endLeaf(i int) error {
	if len(a.state[i].carry) > 0 {
		a.state[i].utf8 = false
	}
	return nil
}

func (a *analyzer) delimiter([]byte) error { return nil }

func (a *analyzer) filler(p []byte) error {
	if Has8Bit(p) {
		a.any8 = true
	}
	return nil
}

// Convert writes the 7-bit form of the message src, which must be the
// message Analyze read.
func (p *Plan) Convert(dst io.Writer, src io.Reader) error {
	w := &rewriter{p: p, w: bufio.NewWriterSize(dst, 32<<10)}
	if err := walk(src, w); err != nil {
		return err
	}
	if w.n != len(p.entities) {
		return ErrChanged
	}
	return w.w.Flush()
}

type rewriter struct {
	p  *Plan
	w  *bufio.Writer
	n  int // entities seen
	qp *quotedprintable.Writer
}

func (r *rewriter) header(i int, e *entity, raw []byte) error {
	if i != r.n || i >= len(r.p.entities) {
		return ErrChanged
	}
	r.n++
	ep := r.p.entities[i]
	if !ep.recode && !ep.relabel {
		_, err := r.w.Write(raw)
		return err
	}
	cte := "Content-Transfer-Encoding: 7bit\r\n"
	if ep.recode {
		cte = "Content-Transfer-Encoding: quoted-printable\r\n"
	}
	fields, end := splitFields(raw)
	written := false
	for _, f := range fields {
		if strings.EqualFold(f.name, "Content-Transfer-Encoding") {
			// Every such field goes: one encoding, stated once.
			if !written {
				r.w.WriteString(cte)
				written = true
			}
			continue
		}
		r.w.Write(f.raw)
	}
	if ep.addMIME != "" {
		r.w.WriteString("MIME-Version: 1.0\r\n")
		r.w.WriteString("Content-Type: " + mime.FormatMediaType("text/plain", map[string]string{"charset": ep.addMIME}) + "\r\n")
	}
	if !written {
		r.w.WriteString(cte)
	}
	if end == nil {
		end = []byte("\r\n")
	}
	_, err := r.w.Write(end)
	if ep.recode {
		r.qp = quotedprintable.NewWriter(r.w)
	}
	return err
}

func (r *rewriter) body(i int, p []byte) error {
	if r.qp != nil {
		_, err := r.qp.Write(p)
		return err
	}
	_, err := r.w.Write(p)
	return err
}

func (r *rewriter) endLeaf(i int) error {
	if r.qp == nil {
		return nil
	}
	err := r.qp.Close()
	r.qp = nil
	return err
}

func (r *rewriter) delimiter(line []byte) error {
	_, err := r.w.Write(line)
	return err
}

// filler writes preamble and epilogue text with any 8-bit octet replaced
// by '?': MIME readers ignore this text (RFC 2046 §5.1.1), and it has no
// encoding that could carry it.
func (r *rewriter) filler(p []byte) error {
	if !Has8Bit(p) {
		_, err := r.w.Write(p)
		return err
	}
	for _, c := range p {
		if c >= 0x80 {
			c = '?'
		}
		r.w.WriteByte(c)
	}
	return nil
}
