package smtputil

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// hasBare is the reference definition: a CR not followed by LF or an LF
// not preceded by CR.
func hasBare(b []byte) bool {
	for i, c := range b {
		if c == '\r' && (i+1 == len(b) || b[i+1] != '\n') {
			return true
		}
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

// normalizeRef is the reference normalisation.
func normalizeRef(b []byte) []byte {
	var out []byte
	for i := 0; i < len(b); i++ {
		switch c := b[i]; {
		case c == '\r' && i+1 < len(b) && b[i+1] == '\n':
			out = append(out, '\r', '\n')
			i++
		case c == '\r' || c == '\n':
			out = append(out, '\r', '\n')
		default:
			out = append(out, c)
		}
	}
	return out
}

var lineEndingCases = []struct {
	name, in, norm string
	bare           bool
}{
	{"empty", "", "", false},
	{"clean", "Subject: x\r\n\r\nbody\r\n", "Subject: x\r\n\r\nbody\r\n", false},
	{"no final CRLF", "a\r\nb", "a\r\nb", false},
	{"bare LF", "a\nb\r\n", "a\r\nb\r\n", true},
	{"bare LF first", "\na", "\r\na", true},
	{"bare CR", "a\rb\r\n", "a\r\nb\r\n", true},
	{"CR at EOF", "a\r", "a\r\n", true},
	{"CR CR LF", "a\r\r\nb", "a\r\n\r\nb", true},
	{"LF LF", "a\n\nb", "a\r\n\r\nb", true},
	{"LF CR", "a\n\rb", "a\r\n\r\nb", true},
	{"smuggling LF.CRLF", "x\r\n\n.\r\nMAIL FROM:<a@b>\r\n", "x\r\n\r\n.\r\nMAIL FROM:<a@b>\r\n", true},
	{"smuggling LF.LF", "x\n.\nRCPT", "x\r\n.\r\nRCPT", true},
	{"CR CR LF then a dot line", "a\r\r\n.\r\nMAIL FROM:<x@y>\r\n", "a\r\n\r\n.\r\nMAIL FROM:<x@y>\r\n", true},
	{"only CRs", "\r\r\r", "\r\n\r\n\r\n", true},
	{"only LFs", "\n\n", "\r\n\r\n", true},
	{"long clean", strings.Repeat("0123456789abcdef\r\n", 2000), strings.Repeat("0123456789abcdef\r\n", 2000), false},
	{"long then bare", strings.Repeat("x", 40000) + "\n", strings.Repeat("x", 40000) + "\r\n", true},
}

// wrappers present the same data with different Read boundaries; the CR
// of a CRLF pair ends up at the end of one Read and the LF at the start
// of the next.
var wrappers = map[string]func(io.Reader) io.Reader{
	"plain":   func(r io.Reader) io.Reader { return r },
	"onebyte": iotest.OneByteReader,
	"half":    iotest.HalfReader,
	"dataerr": iotest.DataErrReader,
	"chunk3":  func(r io.Reader) io.Reader { return &chunkReader{r: r, n: 3} },
}

type chunkReader struct {
	r io.Reader
	n int
}

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(p) > c.n {
		p = p[:c.n]
	}
	return c.r.Read(p)
}

// readAllSmall reads with an output buffer of size n, so that output
// boundaries fall everywhere too.
func readAllSmall(r io.Reader, n int) ([]byte, error) {
	var out []byte
	buf := make([]byte, n)
	for zero := 0; ; {
		k, err := r.Read(buf)
		out = append(out, buf[:k]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
		if k == 0 {
			if zero++; zero > 1000 {
				return out, io.ErrNoProgress
			}
		}
	}
}

func TestLineEndingReader(t *testing.T) {
	for _, tc := range lineEndingCases {
		if hasBare([]byte(tc.in)) != tc.bare || string(normalizeRef([]byte(tc.in))) != tc.norm {
			t.Fatalf("%s: test case disagrees with reference", tc.name)
		}
		for wname, wrap := range wrappers {
			for _, outSize := range []int{1, 2, 7, 4096} {
				if outSize < 7 && len(tc.in) > 1000 {
					continue // slow under -race and adds nothing
				}
				// Strict mode.
				got, err := readAllSmall(NewLineEndingReader(wrap(strings.NewReader(tc.in)), false), outSize)
				if tc.bare {
					if !errors.Is(err, ErrBareLineEnding) {
						t.Errorf("%s/%s/%d strict: err = %v, want ErrBareLineEnding", tc.name, wname, outSize, err)
					}
					if !strings.HasPrefix(tc.in, string(got)) || hasBare(got) && !strings.HasSuffix(string(got), "\r") {
						t.Errorf("%s/%s/%d strict: returned data %q is not a clean prefix", tc.name, wname, outSize, got)
					}
				} else if err != nil || string(got) != tc.in {
					t.Errorf("%s/%s/%d strict: got %q, %v", tc.name, wname, outSize, trunc(got), err)
				}

				// Normalising mode.
				got, err = readAllSmall(NewLineEndingReader(wrap(strings.NewReader(tc.in)), true), outSize)
				if err != nil || string(got) != tc.norm {
					t.Errorf("%s/%s/%d normalize: got %q, %v; want %q", tc.name, wname, outSize, trunc(got), err, trunc([]byte(tc.norm)))
				}
			}
		}
	}
}

func trunc(b []byte) string {
	if len(b) > 60 {
		return string(b[:60]) + "..."
	}
	return string(b)
}

func TestLineEndingReaderErrors(t *testing.T) {
	boom := errors.New("boom")
	for _, normalize := range []bool{false, true} {
		r := NewLineEndingReader(io.MultiReader(strings.NewReader("ok\r\n"), iotest.ErrReader(boom)), normalize)
		got, err := io.ReadAll(r)
		if string(got) != "ok\r\n" || !errors.Is(err, boom) {
			t.Errorf("normalize=%v: got %q, %v; want data then the source error", normalize, got, err)
		}
		// The error is sticky.
		if _, err := r.Read(make([]byte, 10)); !errors.Is(err, boom) {
			t.Errorf("normalize=%v: second read err = %v", normalize, err)
		}
	}
	// Strict errors are sticky too, and no data follows them.
	r := NewLineEndingReader(strings.NewReader("a\nb\r\n"), false)
	if _, err := io.ReadAll(r); err != ErrBareLineEnding {
		t.Fatalf("err = %v", err)
	}
	if n, err := r.Read(make([]byte, 10)); n != 0 || err != ErrBareLineEnding {
		t.Errorf("after error: %d, %v", n, err)
	}
	// Zero-length reads do nothing.
	for _, normalize := range []bool{false, true} {
		if n, err := NewLineEndingReader(strings.NewReader("a\n"), normalize).Read(nil); n != 0 || err != nil {
			t.Errorf("normalize=%v: Read(nil) = %d, %v", normalize, n, err)
		}
	}
}

func TestLineEndingReaderIotest(t *testing.T) {
	// iotest.TestReader checks the io.Reader contract on clean data.
	data := strings.Repeat("line of text\r\n", 500)
	for _, normalize := range []bool{false, true} {
		if err := iotest.TestReader(NewLineEndingReader(strings.NewReader(data), normalize), []byte(data)); err != nil {
			t.Errorf("normalize=%v: %v", normalize, err)
		}
	}
	if err := iotest.TestReader(NewLineEndingReader(strings.NewReader("a\nb\rc"), true), []byte("a\r\nb\r\nc")); err != nil {
		t.Errorf("normalize with bare endings: %v", err)
	}
}

func FuzzLineEndingReader(f *testing.F) {
	for _, tc := range lineEndingCases {
		if len(tc.in) < 200 {
			f.Add([]byte(tc.in), uint8(1), uint8(0))
			f.Add([]byte(tc.in), uint8(3), uint8(2))
		}
	}
	f.Fuzz(func(t *testing.T, data []byte, inChunk, outSize uint8) {
		wrap := func(b []byte) io.Reader {
			return &chunkReader{r: bytes.NewReader(b), n: int(inChunk)%16 + 1}
		}
		n := int(outSize)%32 + 1
		bare := hasBare(data)

		got, err := readAllSmall(NewLineEndingReader(wrap(data), false), n)
		if bare != errors.Is(err, ErrBareLineEnding) {
			t.Fatalf("strict: bare=%v but err=%v", bare, err)
		}
		if err != nil && !errors.Is(err, ErrBareLineEnding) {
			t.Fatalf("strict: unexpected error %v", err)
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatalf("strict: output is not a prefix of the input")
		}
		if !bare && !bytes.Equal(got, data) {
			t.Fatalf("strict: clean input changed")
		}

		got, err = readAllSmall(NewLineEndingReader(wrap(data), true), n)
		if err != nil {
			t.Fatalf("normalize: %v", err)
		}
		if hasBare(got) {
			t.Fatalf("normalize: output %q still has a bare CR or LF", got)
		}
		if want := normalizeRef(data); !bytes.Equal(got, want) {
			t.Fatalf("normalize: got %q, want %q", got, want)
		}
	})
}

func BenchmarkLineEndingReader(b *testing.B) {
	msg := []byte(strings.Repeat("This is a fairly ordinary line of an e-mail message body, 76 chars.\r\n", 15000))
	for _, normalize := range []bool{false, true} {
		name := "strict"
		if normalize {
			name = "normalize"
		}
		b.Run(name, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			buf := make([]byte, 32*1024)
			for i := 0; i < b.N; i++ {
				r := NewLineEndingReader(bytes.NewReader(msg), normalize)
				for {
					_, err := r.Read(buf)
					if err == io.EOF {
						break
					}
					if err != nil {
						b.Fatal(err)
					}
				}
			}
		})
	}
}

// A line of max octets (CRLF included) passes, one more fails, however the
// input is split; a last line without CRLF is measured too.
func TestLineLengthReader(t *testing.T) {
	for _, tc := range []struct {
		in string
		ok bool
	}{
		{"abc\r\n" + strings.Repeat("x", 8) + "\r\nz\r\n", true},
		{"abc\r\n" + strings.Repeat("x", 9) + "\r\nz\r\n", false},
		{strings.Repeat("x", 10), true},
		{strings.Repeat("x", 11), false},
		{"\r\n\r\n", true},
	} {
		for _, wrap := range []func(io.Reader) io.Reader{func(r io.Reader) io.Reader { return r }, iotest.OneByteReader, iotest.HalfReader} {
			_, err := io.ReadAll(NewLineLengthReader(wrap(strings.NewReader(tc.in)), 10))
			if tc.ok && err != nil || !tc.ok && !errors.Is(err, ErrLineTooLong) {
				t.Errorf("%q with max 10: %v, want ok %v", tc.in, err, tc.ok)
			}
		}
	}
}
