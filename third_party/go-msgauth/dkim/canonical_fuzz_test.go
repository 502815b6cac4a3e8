package dkim

import (
	"bytes"
	"io"
	"math/rand"
	"strings"
	"testing"
)

// canonicalizeBoth feeds the same writes to the rewritten body
// canonicalizer and to v0.7.0's (canonical_ref_test.go) and returns both
// outputs.
func canonicalizeBoth(t testing.TB, can Canonicalization, writes [][]byte) (got, want []byte) {
	t.Helper()
	var gotBuf, wantBuf bytes.Buffer
	var ref io.WriteCloser
	switch can {
	case CanonicalizationSimple:
		ref = &refSimpleBodyCanonicalizer{w: &wantBuf}
	case CanonicalizationRelaxed:
		ref = &refRelaxedBodyCanonicalizer{w: &wantBuf}
	}
	wc := canonicalizers[can].CanonicalizeBody(&gotBuf)
	for _, w := range writes {
		// Each side gets its own copy: neither may keep or change it.
		n, err := wc.Write(append([]byte(nil), w...))
		if n != len(w) || err != nil {
			t.Fatalf("%s: Write(%q) = %d, %v", can, w, n, err)
		}
		if _, err := ref.Write(append([]byte(nil), w...)); err != nil {
			t.Fatal(err)
		}
	}
	if err := wc.Close(); err != nil {
		t.Fatal(err)
	}
	if err := ref.Close(); err != nil {
		t.Fatal(err)
	}
	return gotBuf.Bytes(), wantBuf.Bytes()
}

// split cuts body into writes: each octet of cuts is the length of the
// next write (0 is an empty Write); the rest of body is the last one.
func split(body, cuts []byte) [][]byte {
	var writes [][]byte
	for _, c := range cuts {
		n := int(c)
		if n > len(body) {
			n = len(body)
		}
		writes = append(writes, body[:n])
		body = body[n:]
	}
	return append(writes, body)
}

// FuzzCanonicalizeBody: for any body and any write boundaries, the
// rewritten simple and relaxed body canonicalizers write exactly the
// octets v0.7.0's do.
func FuzzCanonicalizeBody(f *testing.F) {
	for _, seed := range []struct{ body, cuts string }{
		{"line 1\r\nline 2\r\n", ""},
		{"line 1\r\nline 2", "\x07"},                             // CR | LF
		{"Hey \t you!", "\x04"},                                  // white space split
		{"Hey \t \t you! \t", "\x04\x01\x01"},                    // and again, and at the end
		{"Hey\r\n \t \r\n \r\n", "\x05\x02"},                     // trailing empty lines
		{"Hey\r\n\r\n\r\n\r\nx", "\x05\x02\x02\x02"},             // empty lines, then text
		{"What about\nLF endings?\n\n", ""},                      // lone LF
		{"\n\n\n", "\x01\x01"},                                   // only lone LFs
		{"a\rb\r\rc\r\r\n\r", ""},                                // lone CRs
		{"\r\n\r\n", "\x02\x01"},                                 // simple: "\r\n", "\r", "\n"
		{"\r\n\r", "\x02"},                                       // simple: a final lone CR
		{"\r\n\r\nhey\n\n", "\x02\x01\x01\x04"},                  // simple: from canonical_test.go
		{"\r\r\n\r\n\r", "\x01\x01\x00\x01\x02"},                 // CRs, empty writes
		{"x\r\n\r\n\r\r\n\r\ny", "\x01\x02\x02\x01\x01\x00\x02"}, // held CRLFs, a CR between
		{"", ""},
		{" ", ""},
		{"\t\r\n", "\x01"},
	} {
		f.Add([]byte(seed.body), []byte(seed.cuts))
	}
	f.Fuzz(func(t *testing.T, body, cuts []byte) {
		writes := split(body, cuts)
		for _, can := range []Canonicalization{CanonicalizationSimple, CanonicalizationRelaxed} {
			if got, want := canonicalizeBoth(t, can, writes); !bytes.Equal(got, want) {
				t.Errorf("%s body canonicalization of %q written as %q:\n got %q\nwant %q", can, body, writes, got, want)
			}
		}
	})
}

// TestCanonicalizeBodyLarge covers what the fuzzer's small inputs do
// not: writes over maxCanonicalizeChunk, and long runs of empty lines
// and white space.
func TestCanonicalizeBodyLarge(t *testing.T) {
	rnd := rand.New(rand.NewSource(15))
	pieces := []string{"\r\n", "\n", "\r", " ", "\t", "  \t ", "word", "\r\n\r\n\r\n", strings.Repeat("\r\n", 300), strings.Repeat("A", 76)}
	for iter := 0; iter < 60; iter++ {
		var body []byte
		for size := rnd.Intn(200 << 10); len(body) < size; {
			body = append(body, pieces[rnd.Intn(len(pieces))]...)
		}
		var writes [][]byte
		for rest := body; len(rest) > 0; {
			n := rnd.Intn(3 * maxCanonicalizeChunk)
			if n > len(rest) {
				n = len(rest)
			}
			writes = append(writes, rest[:n])
			rest = rest[n:]
		}
		for _, can := range []Canonicalization{CanonicalizationSimple, CanonicalizationRelaxed} {
			if got, want := canonicalizeBoth(t, can, writes); !bytes.Equal(got, want) {
				t.Fatalf("%s body canonicalization of %d octets in %d writes differs (got %d octets, want %d)", can, len(body), len(writes), len(got), len(want))
			}
		}
	}
}
