package dkim

import (
	"bytes"
	"io"
	"strings"
)

// Canonicalization is a canonicalization algorithm.
type Canonicalization string

const (
	CanonicalizationSimple  Canonicalization = "simple"
	CanonicalizationRelaxed                  = "relaxed"
)

type canonicalizer interface {
	CanonicalizeHeader(s string) string
	CanonicalizeBody(w io.Writer) io.WriteCloser
}

var canonicalizers = map[Canonicalization]canonicalizer{
	CanonicalizationSimple:  new(simpleCanonicalizer),
	CanonicalizationRelaxed: new(relaxedCanonicalizer),
}

// crlfFixer fixes any lone LF without a preceding CR.
type crlfFixer struct {
	cr  bool   // the last byte of the previous Fix was CR
	buf []byte // reused by Fix, so that a Write allocates nothing
}

// Fix returns b with a CR inserted before every LF that does not follow a
// CR, also when that CR ended the previous call. It copies whole runs
// between such LFs, and returns b itself when there is none (the usual
// case); otherwise the result is only valid until the next call.
func (cf *crlfFixer) Fix(b []byte) []byte {
	if len(b) == 0 {
		return b
	}
	prevCR := cf.cr
	cf.cr = b[len(b)-1] == '\r'

	res, fixed := cf.buf[:0], false
	copied := 0 // b[copied:] is not in res yet
	for i := 0; ; i++ {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			break
		}
		i += j
		if (i == 0 && !prevCR) || (i > 0 && b[i-1] != '\r') {
			res = append(res, b[copied:i]...)
			res = append(res, '\r')
			copied, fixed = i, true
		}
	}
	if !fixed {
		return b
	}
	res = append(res, b[copied:]...)
	cf.buf = res
	return res
}

// maxCanonicalizeChunk bounds the buffers the body canonicalizers keep:
// a larger Write is taken in pieces of this size (the output is the same
// whatever the boundaries).
const maxCanonicalizeChunk = 32 * 1024

// crlfRun is (CRLF)* with a CR after any even prefix: crlfRun[:2n] is n
// CRLFs and crlfRun[:2n+1] is n CRLFs and a CR.
var crlfRun = []byte(strings.Repeat(crlf, 256))

// writeCRLFs writes n CRLFs, followed by a CR if cr.
func writeCRLFs(w io.Writer, n int, cr bool) error {
	for {
		k := n
		if k > len(crlfRun)/2-1 {
			k = len(crlfRun)/2 - 1
		}
		n -= k
		l := 2 * k
		if n > 0 {
			if _, err := w.Write(crlfRun[:l]); err != nil {
				return err
			}
			continue
		}
		if cr {
			l++
		}
		if l == 0 {
			return nil
		}
		_, err := w.Write(crlfRun[:l])
		return err
	}
}

type simpleCanonicalizer struct{}

func (c *simpleCanonicalizer) CanonicalizeHeader(s string) string {
	return s
}

// simpleBodyCanonicalizer holds back what may turn out to be the empty
// lines at the end of the body: the CRLFs at the end of what it was given
// so far, and a CR after them that the next Write may complete with its
// LF. They are written once something else follows; at Close, only a
// final lone CR (with the CRLFs before it) is. They are kept as counts,
// so that no Write copies them (v0.7.0 prepended them to every Write).
type simpleBodyCanonicalizer struct {
	w         io.Writer
	heldCRLFs int  // CRLFs held back
	heldCR    bool // and a CR after them
	crlfFixer crlfFixer
}

func (c *simpleBodyCanonicalizer) Write(b []byte) (int, error) {
	written := len(b)
	for len(b) > maxCanonicalizeChunk {
		if err := c.write(b[:maxCanonicalizeChunk]); err != nil {
			return written, err
		}
		b = b[maxCanonicalizeChunk:]
	}
	return written, c.write(b)
}

// write does what v0.7.0's Write did: in held+b (b with lone LFs fixed),
// keep back a final CR and then every CRLF before it, write the rest.
// held is (CRLF)*[CR], so the scan needs to look at b and at the joint.
func (c *simpleBodyCanonicalizer) write(b []byte) error {
	b = c.crlfFixer.Fix(b)
	held := 2 * c.heldCRLFs
	if c.heldCR {
		held++
	}
	total := held + len(b)
	end := total
	if len(b) > 0 {
		if b[len(b)-1] == '\r' {
			end--
		}
	} else if c.heldCR {
		end--
	}
	// CRLF pairs wholly inside b.
	for end-held >= 2 && b[end-held-2] == '\r' && b[end-held-1] == '\n' {
		end -= 2
	}
	// A pair across the joint: the held CR and an LF starting b.
	if end-held == 1 && c.heldCR && b[0] == '\n' {
		end -= 2
	}
	// Inside held, a pair starts at every even offset and at no odd one:
	// from an even end the scan goes down to 0, from an odd one (held
	// ends with its CR) it stops at once.
	if end <= held && end%2 == 0 {
		end = 0
	}

	if end > 0 {
		// end >= held here: all of held is written, then b up to end.
		if err := writeCRLFs(c.w, c.heldCRLFs, c.heldCR); err != nil {
			return err
		}
		if end > held {
			if _, err := c.w.Write(b[:end-held]); err != nil {
				return err
			}
		}
	}
	rest := total - end
	c.heldCRLFs, c.heldCR = rest/2, rest%2 == 1
	return nil
}

func (c *simpleBodyCanonicalizer) Close() error {
	// Flush what is held if it ends with a single \r (without a matching \n)
	if c.heldCR {
		if err := writeCRLFs(c.w, c.heldCRLFs, true); err != nil {
			return err
		}
	}
	c.heldCRLFs, c.heldCR = 0, false

	if _, err := c.w.Write([]byte(crlf)); err != nil {
		return err
	}
	return nil
}

func (c *simpleCanonicalizer) CanonicalizeBody(w io.Writer) io.WriteCloser {
	return &simpleBodyCanonicalizer{w: w}
}

type relaxedCanonicalizer struct{}

func (c *relaxedCanonicalizer) CanonicalizeHeader(s string) string {
	k, v, ok := strings.Cut(s, ":")
	if !ok {
		return strings.TrimSpace(strings.ToLower(s)) + ":" + crlf
	}

	k = strings.TrimSpace(strings.ToLower(k))
	v = strings.Join(strings.FieldsFunc(v, func(r rune) bool {
		return r == ' ' || r == '\t' || r == '\n' || r == '\r'
	}), " ")
	return k + ":" + v + crlf
}

type relaxedBodyCanonicalizer struct {
	w         io.Writer
	crlfBuf   []byte
	wsp       bool
	written   bool
	crlfFixer crlfFixer // only its cr: Write fixes lone LFs itself
	buf       []byte    // the output of a Write, reused
}

// relaxedSpecial marks the octets relaxed body canonicalization looks at;
// runs of any other octet are copied as they are.
var relaxedSpecial = [256]bool{' ': true, '\t': true, '\r': true, '\n': true}

func (c *relaxedBodyCanonicalizer) Write(b []byte) (int, error) {
	written := len(b)
	for len(b) > maxCanonicalizeChunk {
		if err := c.write(b[:maxCanonicalizeChunk]); err != nil {
			return written, err
		}
		b = b[maxCanonicalizeChunk:]
	}
	return written, c.write(b)
}

// write does what v0.7.0's Write did byte by byte, a run at a time:
// white space is remembered as one space and written only before
// something else on the same line (so it disappears at the end of a
// line); CRs and LFs (lone LFs fixed to CRLF) are held in crlfBuf and
// written only before something else (so empty lines at the end
// disappear); everything else is copied.
func (c *relaxedBodyCanonicalizer) write(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	prevCR := c.crlfFixer.cr
	c.crlfFixer.cr = b[len(b)-1] == '\r'

	// Room for all but lone LFs (each grows by a CR): one allocation,
	// then none.
	if need := len(c.crlfBuf) + 1 + len(b); cap(c.buf) < need {
		c.buf = make([]byte, 0, need)
	}
	out := c.buf[:0]
	for i := 0; i < len(b); {
		switch b[i] {
		case ' ', '\t':
			c.wsp = true
			for i++; i < len(b) && (b[i] == ' ' || b[i] == '\t'); i++ {
			}
		case '\r', '\n':
			c.wsp = false
			for ; i < len(b) && (b[i] == '\r' || b[i] == '\n'); i++ {
				if b[i] == '\n' && ((i == 0 && !prevCR) || (i > 0 && b[i-1] != '\r')) {
					c.crlfBuf = append(c.crlfBuf, '\r')
				}
				c.crlfBuf = append(c.crlfBuf, b[i])
			}
		default:
			j := i + 1
			for j < len(b) && !relaxedSpecial[b[j]] {
				j++
			}
			if len(c.crlfBuf) > 0 {
				out = append(out, c.crlfBuf...)
				c.crlfBuf = c.crlfBuf[:0]
			}
			if c.wsp {
				out = append(out, ' ')
				c.wsp = false
			}
			out = append(out, b[i:j]...)
			i = j
		}
	}
	c.buf = out

	if len(out) == 0 {
		return nil
	}
	c.written = true
	_, err := c.w.Write(out)
	return err
}

func (c *relaxedBodyCanonicalizer) Close() error {
	if c.written {
		if _, err := c.w.Write([]byte(crlf)); err != nil {
			return err
		}
	}
	return nil
}

func (c *relaxedCanonicalizer) CanonicalizeBody(w io.Writer) io.WriteCloser {
	return &relaxedBodyCanonicalizer{w: w}
}

type limitedWriter struct {
	W io.Writer
	N int64
}

func (w *limitedWriter) Write(b []byte) (int, error) {
	if w.N <= 0 {
		return len(b), nil
	}

	skipped := 0
	if int64(len(b)) > w.N {
		b = b[:w.N]
		skipped = int(int64(len(b)) - w.N)
	}

	n, err := w.W.Write(b)
	w.N -= int64(n)
	return n + skipped, err
}
