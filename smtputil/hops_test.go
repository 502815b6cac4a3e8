package smtputil

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func countHops(t *testing.T, msg string, oneByte bool) int {
	t.Helper()
	h := &HopCounter{}
	var r io.Reader = strings.NewReader(msg)
	if oneByte {
		r = iotest.OneByteReader(r)
	}
	if _, err := io.Copy(h, r); err != nil {
		t.Fatal(err)
	}
	return h.N
}

func TestHopCounter(t *testing.T) {
	for _, tc := range []struct {
		name string
		msg  string
		want int
	}{
		{"none", "Subject: x\r\n\r\nbody\r\n", 0},
		{"three", "Received: a\r\nRECEIVED: b\r\n\tcontinued\r\nreceived:c\r\nSubject: x\r\n\r\nbody\r\n", 3},
		{"body does not count", "Subject: x\r\n\r\nReceived: in the body\r\nReceived: again\r\n", 0},
		{"not a prefix match", "Received-SPF: pass\r\nX-Received: a\r\nReceive: b\r\n\r\n", 0},
		{"continuation line is not a field", "Subject: x\r\n Received: folded\r\n\r\n", 0},
		{"LF only", "Received: a\nReceived: b\n\nReceived: c\n", 2},
		{"no body", "Received: a\r\nReceived: b\r\n", 2},
		{"empty header", "\r\nReceived: body\r\n", 0},
		// RFC 5322 section 4.5.3 obs-received: white space before the colon.
		{"obsolete syntax", "Received : a\r\nReceived\t: b\r\nRECEIVED \t : c\r\nReceived x: no\r\nReceivedx: no\r\n\r\n", 3},
	} {
		for _, oneByte := range []bool{false, true} {
			if got := countHops(t, tc.msg, oneByte); got != tc.want {
				t.Errorf("%s (one byte at a time: %v): %d hops, want %d", tc.name, oneByte, got, tc.want)
			}
		}
	}
}

// With Max set, a header over it fails the write; the body does not count.
func TestHopCounterMax(t *testing.T) {
	h := &HopCounter{Max: 20}
	if _, err := io.Copy(h, strings.NewReader("Subject: 1234567\r\n\r\n"+strings.Repeat("body\r\n", 100))); err != nil {
		t.Fatalf("header of 20 bytes (with the empty line), Max 20: %v", err)
	}
	h = &HopCounter{Max: 20}
	if _, err := io.Copy(h, iotest.OneByteReader(strings.NewReader("Subject: 1234567890\r\n\r\n"))); !errors.Is(err, ErrHeaderTooLarge) {
		t.Fatalf("header of 24 bytes with Max 20: %v, want ErrHeaderTooLarge", err)
	}
}

func FuzzHopCounter(f *testing.F) {
	f.Add("Received : a\r\nX: b\r\n\r\n", 2)
	f.Add("Received: a\r\nSubject: b\r\n\r\nReceived: c\r\n", 3)
	f.Add("received:\n\n", 1)
	f.Fuzz(func(t *testing.T, msg string, split int) {
		// Any split of the input gives the same count as one write.
		whole := &HopCounter{}
		whole.Write([]byte(msg))
		parts := &HopCounter{}
		if split < 0 {
			split = -split
		}
		if len(msg) > 0 {
			split %= len(msg) + 1
		} else {
			split = 0
		}
		parts.Write([]byte(msg[:split]))
		parts.Write([]byte(msg[split:]))
		if whole.N != parts.N {
			t.Fatalf("split at %d: %d vs %d", split, parts.N, whole.N)
		}
		// The same count as HeaderFields, the one header field reader,
		// for input without bare CRs (smtpd refuses those earlier).
		if !strings.Contains(strings.ReplaceAll(msg, "\r\n", ""), "\r") {
			if n := len(HeaderFields([]byte(msg), "Received")); n != whole.N && len(msg) < MaxHeader {
				t.Fatalf("%q: HopCounter counts %d, HeaderFields finds %d", msg, whole.N, n)
			}
		}
		// Never more than the number of lines in the header.
		if hdr, _, _ := strings.Cut(strings.ReplaceAll(msg, "\r", ""), "\n\n"); whole.N > strings.Count(hdr, "\n")+1 {
			t.Fatalf("%d hops in %d lines", whole.N, strings.Count(hdr, "\n")+1)
		}
	})
}
