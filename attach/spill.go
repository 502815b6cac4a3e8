package attach

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"os"
)

// spillAt: an archive up to this size is read from memory, a larger one
// from an unlinked temp file, so that a 25 MiB message never costs more
// than this per nesting level.
const spillAt = 1 << 20

// spilled is a file taken out of a stream so that it can be read at any
// offset (a ZIP's directory is at its end).
type spilled struct {
	buf  []byte
	f    *os.File
	size int64
}

// spill copies r into memory or, past spillAt, a temp file in dir.
func spill(r io.Reader, dir string) (*spilled, error) {
	var b bytes.Buffer
	n, err := io.CopyN(&b, r, spillAt+1)
	if err != nil && err != io.EOF {
		return nil, err
	}
	if n <= spillAt {
		return &spilled{buf: b.Bytes(), size: n}, nil
	}
	if dir == "" {
		dir = os.TempDir()
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, &tempError{err}
	}
	f, err := os.CreateTemp(dir, "attachment-*")
	if err != nil {
		return nil, &tempError{err}
	}
	// Unlinked at once: a crash leaves nothing behind.
	os.Remove(f.Name())
	if _, err := f.Write(b.Bytes()); err != nil {
		f.Close()
		return nil, &tempError{err}
	}
	// 256 KiB writes: a 9 MiB archive in 36 system calls, not 288.
	bw := bufio.NewWriterSize(fileWriter{f}, 256<<10)
	m, err := io.Copy(bw, r)
	if err == nil {
		err = bw.Flush()
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return &spilled{f: f, size: n + m}, nil
}

func (s *spilled) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		// A damaged ZIP directory can point before the file's start.
		return 0, errNegativeOffset
	}
	if s.f != nil {
		return s.f.ReadAt(p, off)
	}
	if off >= int64(len(s.buf)) {
		return 0, io.EOF
	}
	n := copy(p, s.buf[off:])
	if n < len(p) {
		return n, io.EOF
	}
	return n, nil
}

func (s *spilled) Close() {
	if s.f != nil {
		s.f.Close()
	}
}

// fileWriter marks the temp file's write errors as ours, apart from the
// errors of the stream being read (a limit, the deadline).
type fileWriter struct{ f *os.File }

func (w fileWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		err = &tempError{err}
	}
	return n, err
}

var errNegativeOffset = errors.New("attach: negative offset")

// tempError is our own trouble with the temp file: the message could not
// be checked, which the caller answers with a temporary failure.
type tempError struct{ err error }

func (e *tempError) Error() string { return "attachment temp file: " + e.err.Error() }
func (e *tempError) Unwrap() error { return e.err }
