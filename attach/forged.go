package attach

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
)

// StripForged copies a message from r to w without the HeaderField
// fields in its header (up to the first empty line), which a sender
// wrote: only the relay's own may reach the recipient. It removes every
// field Inspect counts in Verdict.Forged, and any that a damaged header
// hid from the count. Streaming: it holds a line's first 16 KiB at most.
func StripForged(w io.Writer, r io.Reader) (removed int, err error) {
	br := bufio.NewReaderSize(r, 16<<10)
	dropping, atStart := false, true
	for {
		line, rerr := br.ReadSlice('\n')
		full := errors.Is(rerr, bufio.ErrBufferFull)
		if atStart {
			switch {
			case len(line) > 0 && (line[0] == ' ' || line[0] == '\t'):
				// A continuation line belongs to the field before it.
			case !full && len(bytes.TrimRight(line, "\r\n")) == 0 && rerr == nil:
				// The header ends; the body is copied as it is.
				if _, err := w.Write(line); err != nil {
					return removed, err
				}
				_, err := io.Copy(w, br)
				return removed, err
			default:
				dropping = isHeaderField(line)
				if dropping {
					removed++
				}
			}
		}
		if !dropping {
			if _, err := w.Write(line); err != nil {
				return removed, err
			}
		}
		atStart = !full
		switch {
		case full:
		case rerr == io.EOF:
			return removed, nil
		case rerr != nil:
			return removed, rerr
		}
	}
}

// isHeaderField: the line starts a HeaderField field, its name spelled
// in any case, blanks before the colon allowed (as go-message reads it).
func isHeaderField(line []byte) bool {
	name, _, ok := bytes.Cut(line, []byte{':'})
	return ok && strings.EqualFold(string(bytes.TrimRight(name, " \t")), HeaderField)
}
