package smtputil

import (
	"bytes"
	"errors"
	"io"
)

// ErrBareLineEnding is returned by a strict NewLineEndingReader when the
// message contains a CR not followed by LF or an LF not preceded by CR.
var ErrBareLineEnding = errors.New("message contains a bare CR or LF")

// NewLineEndingReader guards against SMTP smuggling (CVE-2023-51764/5/6).
//
// RFC 5321 §2.3.8 allows CR and LF only as the CRLF pair. go-smtp ends DATA
// only on CRLF.CRLF, but it passes bare CR and LF through, and a
// downstream MTA that treats "LF.LF" or "LF.CRLF" as end-of-data would
// split the message there when we relay it and read the rest as new SMTP
// commands: a second, forged message that inherits our authentication
// and reputation. Every line ending therefore has to be CRLF before the
// message is stored.
//
// r is the DATA stream from go-smtp (dot-unstuffed, end marker removed).
// With normalize false the reader returns ErrBareLineEnding at the first
// bare CR or LF (the data before it is returned first); with normalize
// true it rewrites each bare CR and each bare LF to CRLF (Postfix'
// smtpd_forbid_bare_newline = normalize does this for LF). A last line
// without any
// line ending is left alone (BDAT content need not end in CRLF); a CR as
// the very last byte is a bare CR.
//
// The DATA reader before this one is our patched go-smtp (patch 3 in
// third_party/README.md): upstream v0.25 dropped the CR of a line starting
// ".\r" and missed the end of DATA after "\r\r\n", so bare CRs vanished
// or a "." line became content. Both are fixed there, but in normalize
// mode a stored message may still hold a line that starts with "." (from a
// bare line ending turned into CRLF): never write stored messages to an
// SMTP or LMTP stream without dot-stuffing (go-smtp's client does it).
func NewLineEndingReader(r io.Reader, normalize bool) io.Reader {
	if normalize {
		return &normalizingReader{r: r}
	}
	return &strictReader{r: r}
}

// strictReader checks in place: the caller's buffer is filled directly and
// scanned with IndexAny, so the clean path costs one pass and no copy.
type strictReader struct {
	r         io.Reader
	pendingCR bool // the last byte returned was CR; the next must be LF
	err       error
}

func (s *strictReader) Read(p []byte) (int, error) {
	if s.err != nil {
		return 0, s.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	n, err := s.r.Read(p)
	b := p[:n]
	i := 0
	if s.pendingCR && n > 0 {
		if b[0] != '\n' {
			s.err = ErrBareLineEnding
			return 0, s.err
		}
		s.pendingCR = false
		i = 1
	}
	for i < n {
		j := bytes.IndexAny(b[i:], "\r\n")
		if j < 0 {
			break
		}
		j += i
		if b[j] == '\n' { // an LF not consumed as part of CRLF
			s.err = ErrBareLineEnding
			return j, s.err
		}
		if j+1 == n { // CR at the end of this chunk: decide on the next
			s.pendingCR = true
			break
		}
		if b[j+1] != '\n' {
			s.err = ErrBareLineEnding
			return j, s.err
		}
		i = j + 2
	}
	if err != nil {
		if err == io.EOF && s.pendingCR {
			// CR as the very last byte of the message.
			s.err = ErrBareLineEnding
			return n, s.err
		}
		s.err = err
	}
	return n, err
}

// normalizingReader may have to insert bytes, so it reads into its own
// buffer and copies the runs between line endings with copy(). It never
// needs more than one byte of room in p to make progress, so it works
// with one-byte reads too.
type normalizingReader struct {
	r      io.Reader
	buf    []byte
	in     []byte // unconsumed input, a window into buf
	needLF bool   // a CR was emitted; its LF did not fit into p yet
	skipLF bool   // a CR from the input was emitted as CRLF; drop a following LF
	err    error  // from r, returned once in is drained
}

const normBufSize = 32 * 1024

func (z *normalizingReader) Read(p []byte) (int, error) {
	out := 0
	empty := 0
	for out < len(p) {
		if z.needLF {
			p[out] = '\n'
			out++
			z.needLF = false
			continue
		}
		if len(z.in) == 0 {
			if z.err != nil || out > 0 {
				break // do not block on the source when we have data
			}
			if z.buf == nil {
				z.buf = make([]byte, normBufSize)
			}
			n, err := z.r.Read(z.buf)
			z.in, z.err = z.buf[:n], err
			if n == 0 && err == nil {
				if empty++; empty >= 100 {
					z.err = io.ErrNoProgress
				}
			}
			continue
		}
		if z.skipLF {
			z.skipLF = false
			if z.in[0] == '\n' {
				z.in = z.in[1:]
				continue
			}
		}
		j := bytes.IndexAny(z.in, "\r\n")
		if j != 0 {
			if j < 0 {
				j = len(z.in)
			}
			c := copy(p[out:], z.in[:j])
			out += c
			z.in = z.in[c:]
			continue
		}
		// A line ending starts here. A CR may be followed by its LF (then
		// it is dropped via skipLF) or not (bare CR); an LF seen here was
		// not preceded by CR (bare LF). Either way the output gets CRLF.
		z.skipLF = z.in[0] == '\r'
		z.in = z.in[1:]
		p[out] = '\r'
		out++
		z.needLF = true
	}
	if out == 0 && len(z.in) == 0 && !z.needLF && z.err != nil {
		return 0, z.err
	}
	return out, nil
}

// ErrLineTooLong is returned by a NewLineLengthReader at the first line
// longer than its limit.
var ErrLineTooLong = errors.New("message contains a line longer than the limit")

// NewLineLengthReader returns ErrLineTooLong once a line of r, its line
// ending included, exceeds max octets (RFC 5321 section 4.5.3.1.6 limits a
// text line to 1000; limits.max_line_length is what this server accepts).
// A line may not be refolded by a relay without breaking signatures, so a
// longer one is refused rather than split. It reads after a
// NewLineEndingReader, where every line ends in CRLF.
func NewLineLengthReader(r io.Reader, max int) io.Reader {
	return &lineLengthReader{r: r, max: max}
}

type lineLengthReader struct {
	r   io.Reader
	max int
	cur int // octets of the current line so far
	err error
}

func (l *lineLengthReader) Read(p []byte) (int, error) {
	if l.err != nil {
		return 0, l.err
	}
	n, err := l.r.Read(p)
	b := p[:n]
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			l.cur += len(b)
			break
		}
		if l.cur+i+1 > l.max {
			l.err = ErrLineTooLong
			return 0, l.err
		}
		l.cur = 0
		b = b[i+1:]
	}
	if l.cur > l.max {
		l.err = ErrLineTooLong
		return 0, l.err
	}
	return n, err
}
