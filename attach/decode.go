package attach

import (
	"bufio"
	"encoding/base64"
	"io"
)

// The transfer encodings are decoded as mail programs decode them, which
// is more leniently than go-message and the standard library's readers
// do: those stop at the first octet that breaks the rules (a "!" in
// base64, a control character in quoted-printable), while Outlook and
// Thunderbird skip it and show the file. A decoder that stops where
// they go on would let the file they show pass unchecked: a ZIP holding
// a program, made unreadable to the check by one stray character. Both
// readers below never fail (only the source's errors are passed on) and
// hold a fixed amount of memory.

// b64Alphabet: the octets base64 text is made of; every other octet
// (line ends, blanks, stray characters) is skipped, as mail programs do.
var b64Alphabet = func() (t [256]bool) {
	const alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
	for i := 0; i < len(alphabet); i++ {
		t[alphabet[i]] = true
	}
	return t
}()

// b64Reader filters base64 text down to its alphabet and decodes it
// with encoding/base64. Padding ends a group early, after which
// decoding goes on (base64 texts written one after another, "QQ==QUJD"),
// which encoding/base64 alone takes for corrupt input.
type b64Reader struct {
	r   io.Reader
	in  []byte // read from r
	enc []byte // alphabet octets not yet decoded: fewer than 4 between reads
	out []byte // decoded, not yet returned (a slice of dec)
	dec []byte
	err error
}

const b64Chunk = 16 * 1024

func newB64Reader(r io.Reader) *b64Reader {
	return &b64Reader{r: r, in: make([]byte, b64Chunk), enc: make([]byte, 0, b64Chunk+4),
		dec: make([]byte, 0, base64.RawStdEncoding.DecodedLen(b64Chunk+4))}
}

// decode decodes the whole groups of enc, and with tail the rest too (a
// group of two or three is one or two octets; one alone is none).
func (b *b64Reader) decode(tail bool) {
	n := len(b.enc) &^ 3
	if tail {
		n = len(b.enc)
		if n%4 == 1 {
			n--
		}
	}
	// Cannot fail: only alphabet octets, never a group of one.
	m, _ := base64.RawStdEncoding.Decode(b.dec[len(b.dec):cap(b.dec)], b.enc[:n])
	b.dec = b.dec[:len(b.dec)+m]
	if tail {
		n = len(b.enc)
	}
	b.enc = b.enc[:copy(b.enc, b.enc[n:])]
}

func (b *b64Reader) Read(p []byte) (int, error) {
	for len(b.out) == 0 {
		if b.err != nil {
			return 0, b.err
		}
		b.dec = b.dec[:0]
		n, err := b.r.Read(b.in)
		for _, c := range b.in[:n] {
			switch {
			case c == '=':
				b.decode(true)
			case b64Alphabet[c]:
				b.enc = append(b.enc, c)
			}
		}
		b.decode(err != nil)
		b.err = err
		b.out = b.dec
	}
	n := copy(p, b.out)
	b.out = b.out[n:]
	return n, nil
}

// qpReader decodes quoted-printable leniently: "=" and two hex digits is
// an octet, "=" at the end of a line (trailing blanks allowed) joins
// lines, any other "=" is itself, and every other octet, control
// characters included, is itself.
//
// Written here, not mime/quotedprintable behind a filter: that reader
// fails on a control character, on a line longer than its 4 KiB
// buffer, on "==" at the end of a line and on a lone "=" that ends the
// data, and fails for good (it cannot be resumed). A filter that made
// all of those safe for it would have to find every escape and soft
// line break itself, which is all there is to decoding.
type qpReader struct {
	r *bufio.Reader
}

func newQPReader(r io.Reader) *qpReader { return &qpReader{r: bufio.NewReaderSize(r, 16*1024)} }

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	}
	return 0, false
}

func (q *qpReader) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) {
		// Within the buffer; a read from the source only when it is
		// empty, so that a Read never blocks with bytes to return.
		if n > 0 && q.r.Buffered() < 3 {
			return n, nil
		}
		c, err := q.r.ReadByte()
		if err != nil {
			return n, err
		}
		if c != '=' {
			p[n] = c
			n++
			continue
		}
		next, _ := q.r.Peek(2)
		if len(next) == 2 {
			if hi, ok := unhex(next[0]); ok {
				if lo, ok := unhex(next[1]); ok {
					q.r.Discard(2)
					p[n] = hi<<4 | lo
					n++
					continue
				}
			}
		}
		if q.softBreak() {
			continue
		}
		p[n] = '='
		n++
	}
	return n, nil
}

// maxSoftBreakBlanks: blanks allowed between "=" and the line end of a
// soft line break (more, and the "=" is itself).
const maxSoftBreakBlanks = 80

// softBreak consumes blanks and a line end after "=", if that is what
// follows (or the end of the data).
func (q *qpReader) softBreak() bool {
	for i := 1; i <= maxSoftBreakBlanks; i++ {
		b, err := q.r.Peek(i)
		if len(b) < i {
			// The end of the data: a trailing "=" is dropped.
			if err != nil && len(b) == i-1 {
				q.r.Discard(len(b))
				return true
			}
			return false
		}
		switch b[i-1] {
		case ' ', '\t':
			continue
		case '\n':
			q.r.Discard(i)
			return true
		case '\r':
			if nb, _ := q.r.Peek(i + 1); len(nb) == i+1 && nb[i] == '\n' {
				q.r.Discard(i + 1)
				return true
			}
			q.r.Discard(i)
			return true
		}
		return false
	}
	return false
}
