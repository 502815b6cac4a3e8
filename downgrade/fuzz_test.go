package downgrade

import (
	"bytes"
	"errors"
	"io"
	"mime/quotedprintable"
	"regexp"
	"testing"
)

// collector records a walk: each entity's header and leaf body.
type collector struct {
	headers [][]byte
	bodies  map[int][]byte
}

func (c *collector) header(i int, _ *entity, raw []byte) error {
	c.headers = append(c.headers, append([]byte(nil), raw...))
	return nil
}
func (c *collector) body(i int, p []byte) error {
	c.bodies[i] = append(c.bodies[i], p...)
	return nil
}
func (c *collector) endLeaf(int) error      { return nil }
func (c *collector) delimiter([]byte) error { return nil }
func (c *collector) filler([]byte) error    { return nil }

func collect(t *testing.T, msg []byte) *collector {
	c := &collector{bodies: map[int][]byte{}}
	if err := walk(bytes.NewReader(msg), c); err != nil {
		t.Fatalf("walk: %v", err)
	}
	return c
}

var bareEnding = regexp.MustCompile("\r\n|\r|\n")

// FuzzConvert: whatever the message, a conversion either is refused with
// an *Error or yields a 7-bit message with the same structure, in which
// every re-encoded part decodes to exactly what it was.
func FuzzConvert(f *testing.F) {
	f.Add([]byte(mixed))
	f.Add([]byte("Subject: x\n\nGrüße\n"))
	f.Add([]byte("MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=b\n\npre ü\n--b\nContent-Type: text/plain\n\nä=\n--b\n--b--\nepi\n"))
	f.Add([]byte("Content-Type: multipart/mixed; boundary=a\n\n--a\nContent-Type: multipart/mixed; boundary=b\n\n--b\n\nö\n--a--\n"))
	f.Add([]byte("Content-Type: message/rfc822\n\nSubject: x\n\nö\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		// The spool holds CRLF lines only (smtpd refuses or normalises
		// bare CR and LF).
		msg := bareEnding.ReplaceAll(in, []byte("\r\n"))
		p, err := Analyze(bytes.NewReader(msg))
		var de *Error
		if errors.As(err, &de) {
			return
		}
		if err != nil {
			t.Fatalf("Analyze: unexpected error %v", err)
		}
		if !p.Needed() {
			if Has8Bit(msg) {
				t.Fatalf("no conversion planned for a message with 8-bit octets")
			}
			return
		}
		var out bytes.Buffer
		if err := p.Convert(&out, bytes.NewReader(msg)); err != nil {
			t.Fatalf("Convert: %v", err)
		}
		if Has8Bit(out.Bytes()) {
			t.Fatalf("converted message has 8-bit octets:\n%q", out.Bytes())
		}
		if p2, err := Analyze(bytes.NewReader(out.Bytes())); err != nil || p2.Needed() {
			t.Fatalf("converted message analysed again: %v, %v", p2, err)
		}
		a, b := collect(t, msg), collect(t, out.Bytes())
		if len(a.headers) != len(b.headers) {
			t.Fatalf("%d entities before, %d after:\n%q\n%q", len(a.headers), len(b.headers), msg, out.Bytes())
		}
		for i, ep := range p.entities {
			want, got := a.bodies[i], b.bodies[i]
			if ep.recode {
				dec, err := io.ReadAll(quotedprintable.NewReader(bytes.NewReader(got)))
				if err != nil {
					t.Fatalf("part %d: quoted-printable does not decode: %v", i, err)
				}
				got = dec
			}
			if !bytes.Equal(got, want) {
				t.Fatalf("part %d: body %q became %q", i, want, got)
			}
			if !ep.recode && !ep.relabel && !bytes.Equal(a.headers[i], b.headers[i]) {
				t.Fatalf("part %d: untouched header changed: %q → %q", i, a.headers[i], b.headers[i])
			}
		}
	})
}
