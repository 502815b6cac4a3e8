package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
)

type EnhancedCode [3]int

// SMTPError specifies the error code, enhanced error code (if any) and
// message returned by the server.
type SMTPError struct {
	Code         int
	EnhancedCode EnhancedCode
	Message      string
}

// NoEnhancedCode is used to indicate that enhanced error code should not be
// included in response.
//
// Note that RFC 2034 requires an enhanced code to be included in all 2xx, 4xx
// and 5xx responses. This constant is exported for use by extensions, you
// should probably use EnhancedCodeNotSet instead.
var NoEnhancedCode = EnhancedCode{-1, -1, -1}

// EnhancedCodeNotSet is a nil value of EnhancedCode field in SMTPError, used
// to indicate that backend failed to provide enhanced status code. X.0.0 will
// be used (X is derived from error code).
var EnhancedCodeNotSet = EnhancedCode{0, 0, 0}

func (err *SMTPError) Error() string {
	s := fmt.Sprintf("SMTP error %03d", err.Code)
	if err.Message != "" {
		s += ": " + err.Message
	}
	return s
}

func (err *SMTPError) Temporary() bool {
	return err.Code/100 == 4
}

var ErrDataTooLarge = &SMTPError{
	Code:         552,
	EnhancedCode: EnhancedCode{5, 3, 4},
	Message:      "Maximum message size exceeded",
}

type dataReader struct {
	r     *bufio.Reader
	state int

	limited bool
	n       int64 // Maximum bytes remaining
}

func newDataReader(c *Conn) *dataReader {
	dr := &dataReader{
		r: c.text.R,
	}

	if c.server.MaxMessageBytes > 0 {
		dr.limited = true
		dr.n = int64(c.server.MaxMessageBytes)
	}

	return dr
}

// States of the DATA reader's machine (net/textproto's, with patch 3).
const (
	stateBeginLine = iota // beginning of line; initial state; must be zero
	stateDot              // read . at beginning of line
	stateDotCR            // read .\r at beginning of line
	stateCR               // read \r (possibly at end of line)
	stateData             // reading data in middle of line
	stateEOF              // reached .\r\n end marker line
)

func (r *dataReader) Read(b []byte) (n int, err error) {
	if r.limited {
		if r.n <= 0 {
			return 0, ErrDataTooLarge
		}
		if int64(len(b)) > r.n {
			b = b[0:r.n]
		}
	}

	// Code below is taken from net/textproto with only one modification to
	// not rewrite CRLF -> LF.

	// Run data through a simple state machine to
	// elide leading dots and detect End-of-Data (<CR><LF>.<CR><LF>) line.
	for n < len(b) && r.state != stateEOF {
		// Bytes already buffered go through the same machine without a
		// call per byte (securerelay patch 10, for the CPU per message):
		// readBuffered copies the middle of a line in one run.
		if r.state != stateDotCR {
			if k := r.r.Buffered(); k > 0 {
				n = r.readBuffered(b, n, k)
				continue
			}
		}
		// An empty buffer (ReadByte fills it, or reports the read error)
		// and the rare ".\r" not followed by "\n" (which needs
		// UnreadByte) take the original byte-wise step.
		var c byte
		c, err = r.r.ReadByte()
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			break
		}
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
				break
			}
			r.state = stateData
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateDotCR:
			if c == '\n' {
				r.state = stateEOF
				continue
			}
			// Not the end marker: the dot was the stuffed one, but the CR
			// after it is data. Emit it and look at c again (securerelay
			// patch; upstream dropped the CR).
			if uerr := r.r.UnreadByte(); uerr != nil {
				return n, uerr
			}
			c = '\r'
			r.state = stateCR
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
				break
			}
			// Another CR may still start the CRLF of a line end
			// (securerelay patch; upstream missed the end marker after
			// "\r\r\n" and read on until the time-out).
			if c != '\r' {
				r.state = stateData
			}
		case stateData:
			if c == '\r' {
				r.state = stateCR
			}
		}
		b[n] = c
		n++
	}
	if err == nil && r.state == stateEOF {
		err = io.EOF
	}

	if r.limited {
		r.n -= int64(n)
	}
	return
}

// readBuffered runs the k bytes buffered in r.r (k > 0) through the state
// machine of Read into b[n:], stopping where Read's loop would (b full, end
// marker) and before stateDotCR, which Read handles byte-wise. It returns
// the new n. It consumes exactly the bytes Read's byte-wise loop would and
// leaves the last of them unreadable with UnreadByte, as ReadByte does, so
// that output, errors and the reader's state stay what they were before
// patch 10 (FuzzDataReaderDiff holds it to the old code).
func (r *dataReader) readBuffered(b []byte, n, k int) int {
	buf, _ := r.r.Peek(k) // k <= Buffered: no read, no error
	i := 0
	for i < len(buf) && n < len(b) && r.state != stateDotCR && r.state != stateEOF {
		if r.state == stateData {
			// The middle of a line: only a CR changes the state (a bare LF
			// does not start a line), so copy up to and including it.
			run := buf[i:]
			if room := len(b) - n; len(run) > room {
				run = run[:room]
			}
			if j := bytes.IndexByte(run, '\r'); j >= 0 {
				run = run[:j+1]
				r.state = stateCR
			}
			n += copy(b[n:], run)
			i += len(run)
			continue
		}
		c := buf[i]
		i++
		switch r.state {
		case stateBeginLine:
			if c == '.' {
				r.state = stateDot
				continue
			}
			if c == '\r' {
				r.state = stateCR
			} else {
				r.state = stateData
			}
		case stateDot:
			if c == '\r' {
				r.state = stateDotCR
				continue
			}
			r.state = stateData
		case stateCR:
			if c == '\n' {
				r.state = stateBeginLine
			} else if c != '\r' {
				r.state = stateData
			}
		}
		b[n] = c
		n++
	}
	// i >= 1: the loop's conditions held on entry (Read checked them).
	r.r.Discard(i - 1)
	r.r.ReadByte()
	return n
}
