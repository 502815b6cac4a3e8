package smtputil

import (
	"bufio"
	"bytes"
)

// NewDotWriter returns a writer for the content of DATA: the output is
// exactly that of net/textproto's DotWriter (every LF becomes CRLF unless
// a CR precedes it, a line that starts with "." gets a second one, and
// Close writes the end marker ".\r\n" after a CRLF and flushes w).
// textproto's writer handles the stream one byte at a time, two calls per
// byte; in the inbound benchmark that was 8% of the relay's CPU for 4-40
// KiB messages. This one writes the runs between line endings whole. An
// equivalence fuzz test holds it to textproto's output.
func NewDotWriter(w *bufio.Writer) *DotWriter { return &DotWriter{w: w} }

// DotWriter is the writer NewDotWriter returns.
type DotWriter struct {
	w     *bufio.Writer
	state int
}

// The states of textproto's dotWriter: nothing written yet, at the start
// of a line, inside a line, and right after a CR. (Nothing written ends
// with an empty line: textproto's Close does so.)
const (
	dotBegin = iota
	dotLineStart
	dotData
	dotCR
)

func (d *DotWriter) Write(b []byte) (int, error) {
	n := 0
	for n < len(b) {
		switch d.state {
		case dotBegin, dotLineStart:
			if b[n] == '.' {
				if err := d.w.WriteByte('.'); err != nil {
					return n, err
				}
			}
			// The same byte is then data (textproto falls through).
			d.state = dotData
		case dotCR:
			// After a CR, any byte is written as it is; only an LF
			// starts a new line (a second CR does not count as a CR).
			c := b[n]
			if err := d.w.WriteByte(c); err != nil {
				return n, err
			}
			n++
			d.state = dotData
			if c == '\n' {
				d.state = dotLineStart
			}
		default:
			i := bytes.IndexAny(b[n:], "\r\n")
			if i < 0 {
				k, err := d.w.Write(b[n:])
				return n + k, err
			}
			if _, err := d.w.Write(b[n : n+i]); err != nil {
				return n, err
			}
			n += i
			if b[n] == '\r' {
				d.state = dotCR
				if err := d.w.WriteByte('\r'); err != nil {
					return n, err
				}
			} else {
				d.state = dotLineStart
				if _, err := d.w.WriteString("\r\n"); err != nil {
					return n, err
				}
			}
			n++
		}
	}
	return n, nil
}

// Close ends the data (CRLF if the last line lacks it, then ".\r\n") and
// flushes the underlying writer.
func (d *DotWriter) Close() error {
	var end string
	switch d.state {
	case dotLineStart:
		end = ".\r\n"
	case dotCR:
		end = "\n.\r\n"
	default:
		end = "\r\n.\r\n"
	}
	if _, err := d.w.WriteString(end); err != nil {
		return err
	}
	return d.w.Flush()
}
