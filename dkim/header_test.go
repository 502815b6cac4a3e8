package dkim

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadHeader(t *testing.T) {
	for _, tc := range []struct {
		name, in, header, rest string
		max                    int
		err                    error
	}{
		{"crlf", "A: 1\r\nB: 2\r\n\r\nbody\r\n", "A: 1\r\nB: 2\r\n\r\n", "body\r\n", 100, nil},
		{"lf", "A: 1\nB: 2\n\nbody\n", "A: 1\nB: 2\n\n", "body\n", 100, nil},
		{"header only", "A: 1\r\nB: 2\r\n", "A: 1\r\nB: 2\r\n", "", 100, nil},
		{"header only, no newline", "A: 1", "A: 1", "", 100, nil},
		{"empty", "", "", "", 100, nil},
		{"empty header", "\r\nbody", "\r\n", "body", 100, nil},
		{"folded", "A: 1\r\n 2\r\n\r\nb", "A: 1\r\n 2\r\n\r\n", "b", 100, nil},
		{"exactly max", "A: 1\r\n\r\nb", "A: 1\r\n\r\n", "b", 8, nil},
		{"too large", "A: 1\r\n\r\nb", "", "", 7, ErrHeaderTooLarge},
		{"long line too large", strings.Repeat("x", 10000) + "\r\n\r\n", "", "", 9000, ErrHeaderTooLarge},
		{"long line", "X: " + strings.Repeat("x", 10000) + "\r\n\r\nb", "X: " + strings.Repeat("x", 10000) + "\r\n\r\n", "b", 20000, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tc.in), 16)
			h, err := ReadHeader(br, tc.max)
			if !errors.Is(err, tc.err) {
				t.Fatalf("err = %v, want %v", err, tc.err)
			}
			if err != nil {
				return
			}
			if string(h) != tc.header {
				t.Errorf("header %q, want %q", h, tc.header)
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != tc.rest {
				t.Errorf("rest %q, want %q", rest, tc.rest)
			}
		})
	}
}

func TestFromDomain(t *testing.T) {
	for _, tc := range []struct {
		header, want string
		ok           bool
	}{
		{"From: alice@Example.COM\r\n\r\n", "example.com", true},
		{"To: b@x\r\nfrom: \"Alice, A.\" <alice@Sub.Example.com>\r\nSubject: x\r\n\r\n", "sub.example.com", true},
		{"From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.com>\n\n", "example.com", true},
		{"From: =?x-unknown?Q?abc?= <j@example.com>\r\n\r\n", "example.com", true},
		{"From: Alice\r\n <alice@example.org>\r\n\r\n", "example.org", true},
		{"From: alice@example.com (comment)\r\n", "example.com", true},
		{"From : alice@example.com\r\n", "example.com", true},
		// RFC 8616 §4: d= and the key's DNS name use A-labels.
		{"From: jörg@bücher.example\r\n", "xn--bcher-kva.example", true},
		{"From: Jörg <jörg@BÜCHER.example>\r\n", "xn--bcher-kva.example", true},
		{"From: a@xn--bcher-kva.example\r\n", "xn--bcher-kva.example", true},
		{"From: a@b\u00fccher..example\r\n", "", false},
		{"Subject: no from\r\n\r\n", "", false},
		{"From: a@example.com\r\nFrom: b@example.com\r\n\r\n", "", false},
		{"From: a@example.com, b@example.org\r\n\r\n", "", false},
		{"From: not an address\r\n\r\n", "", false},
		{"From: <@>\r\n\r\n", "", false},
		{"From: group: a@example.com;\r\n\r\n", "example.com", true}, // group syntax is not allowed in From, but net/mail accepts it and the domain is unambiguous
		{"Subject: x\r\n\r\nFrom: body@example.com\r\n", "", false},  // body is not header
		{"", "", false},
	} {
		got, err := FromDomain([]byte(tc.header))
		if (err == nil) != tc.ok || got != tc.want {
			t.Errorf("FromDomain(%q) = %q, %v; want %q, ok=%v", tc.header, got, err, tc.want, tc.ok)
		}
	}
}

// FuzzReadHeader: ReadHeader parses network input. It must not panic,
// must respect the bound, and must return a prefix of the input after
// which the rest is unread.
func FuzzReadHeader(f *testing.F) {
	f.Add([]byte("From: a@example.com\r\n\r\nbody"), 64)
	f.Add([]byte("A: 1\n 2\n\nb"), 5)
	f.Add([]byte("\r\n"), 0)
	f.Add([]byte("x\r\r\n\r"), 100)
	f.Fuzz(func(t *testing.T, data []byte, max int) {
		if max < 0 || max > 1<<16 {
			return
		}
		br := bufio.NewReaderSize(bytes.NewReader(data), 16)
		h, err := ReadHeader(br, max)
		if err != nil {
			if !errors.Is(err, ErrHeaderTooLarge) {
				t.Fatalf("unexpected error %v", err)
			}
			return
		}
		if len(h) > max {
			t.Fatalf("header of %d bytes exceeds max %d", len(h), max)
		}
		rest, _ := io.ReadAll(br)
		if !bytes.Equal(append(append([]byte(nil), h...), rest...), data) {
			t.Fatalf("header+rest differs from input")
		}
		_, _ = FromDomain(h)
	})
}

// FuzzFromDomain: From: parsing of arbitrary headers must not panic and
// must only return lower-case, @-free, non-empty domains.
func FuzzFromDomain(f *testing.F) {
	f.Add([]byte("From: alice@example.com\r\n\r\n"))
	f.Add([]byte("From: \"A\" <a@B.example>\r\n (c)\r\n\r\n"))
	f.Add([]byte("From: =?utf-8?b?w7w=?= <x@y>\n"))
	f.Add([]byte("from:a@b,c@d\r\n"))
	f.Fuzz(func(t *testing.T, header []byte) {
		d, err := FromDomain(header)
		if err != nil {
			return
		}
		if d == "" || strings.Contains(d, "@") || d != strings.ToLower(d) {
			t.Fatalf("FromDomain returned %q", d)
		}
	})
}

// FuzzSign: whatever the message, Sign returns an error or signatures
// without over-long lines, and never panics or hangs (go-msgauth runs a
// goroutine per key that must always be released).
func FuzzSign(f *testing.F) {
	f.Add([]byte(simpleMsg))
	f.Add([]byte("From: a@b\n\nx"))
	f.Add([]byte("From: a@b\r\nList-;: x\r\n\r\n"))
	_, edK, _ := testKeys(f)
	f.Fuzz(func(t *testing.T, msg []byte) {
		sigs, err := Sign(bytes.NewReader(msg), []Key{edK}, Options{})
		if err != nil {
			return
		}
		for _, l := range strings.Split(sigs[0], "\r\n") {
			if len(l) > 998 {
				t.Fatalf("line of %d octets", len(l))
			}
		}
	})
}
