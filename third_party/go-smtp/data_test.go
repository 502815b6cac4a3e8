package smtp

import (
	"bufio"
	"bytes"
	"io"
	"strings"
	"testing"
)

// The DATA reader against RFC 5321 4.5.2 (one leading dot removed from any
// line that starts with one) and the end marker CRLF.CRLF, including bare
// CRs next to them, which the upstream state machine mishandled: a CR
// before CRLF hid the end marker (the session hung until its time-out)
// and the CR after a leading dot was dropped.
func TestDataReader(t *testing.T) {
	for _, c := range []struct{ in, want, rest string }{
		{"a\r\n.\r\nNEXT", "a\r\n", "NEXT"},
		{"a\r\n..b\r\n.\r\n", "a\r\n.b\r\n", ""},
		{"a\r\r\n.\r\nNEXT", "a\r\r\n", "NEXT"},
		{"a\r\r\r\n.\r\n", "a\r\r\r\n", ""},
		{"a\r\r\n..b\r\n.\r\n", "a\r\r\n.b\r\n", ""},
		{".\rX\r\n.\r\n", "\rX\r\n", ""},
		{".\r\r\n.\r\n", "\r\r\n", ""},
		{"a\r\n.\r.\r\n.\r\n", "a\r\n\r.\r\n", ""},
		{"a\n.\r\nb\r\n.\r\n", "a\n.\r\nb\r\n", ""}, // bare LF: not a line start
		{"\r\n.\r\n", "\r\n", ""},
		{".\r\n", "", ""},
	} {
		br := bufio.NewReader(strings.NewReader(c.in))
		got, err := io.ReadAll(&dataReader{r: br})
		if err != nil || string(got) != c.want {
			t.Errorf("%q: read %q, %v; want %q", c.in, got, err, c.want)
			continue
		}
		if rest, _ := io.ReadAll(br); string(rest) != c.rest {
			t.Errorf("%q: left %q after the end marker, want %q", c.in, rest, c.rest)
		}
	}
	// No end marker: an error, never a silent end.
	if _, err := io.ReadAll(&dataReader{r: bufio.NewReader(strings.NewReader("a\r\r\n"))}); err != io.ErrUnexpectedEOF {
		t.Errorf("no end marker: %v, want unexpected EOF", err)
	}
}

// dataRef is RFC 5321 4.5.2 written out plainly, as the reference for the
// fuzzer: lines start at the beginning and after each CRLF; a line that
// is exactly "." ends the data; one leading dot is removed from others.
func dataRef(in []byte) (data []byte, consumed int, ok bool) {
	i := 0
	for i < len(in) {
		if bytes.HasPrefix(in[i:], []byte(".\r\n")) {
			return data, i + 3, true
		}
		if in[i] == '.' {
			i++
		}
		end := bytes.Index(in[i:], []byte("\r\n"))
		if end < 0 {
			return append(data, in[i:]...), len(in), false
		}
		data = append(data, in[i:i+end+2]...)
		i += end + 2
	}
	return data, i, false
}

func FuzzDataReader(f *testing.F) {
	for _, s := range []string{"a\r\n.\r\n", "a\r\r\n.\r\nX", ".\rX\r\n.\r\n", "..\r\n.\r\n", "a\n.\nb\r\n.\r\n", "\r\r\r\n.\r\n"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		br := bufio.NewReader(bytes.NewReader(in))
		got, err := io.ReadAll(&dataReader{r: br})
		want, consumed, ok := dataRef(in)
		if ok != (err == nil) {
			t.Fatalf("%q: end found %v, reader error %v", in, ok, err)
		}
		if ok {
			if !bytes.Equal(got, want) {
				t.Fatalf("%q: read %q, want %q", in, got, want)
			}
			if rest, _ := io.ReadAll(br); !bytes.Equal(rest, in[consumed:]) {
				t.Fatalf("%q: left %q after the end, want %q", in, rest, in[consumed:])
			}
		}
	})
}
