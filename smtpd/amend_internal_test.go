package smtpd

import (
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

// headerSection ends where every header-only rewrite ends the header: at
// the first empty line, whatever the reads' sizes; a message without one
// is all header; more than the limit is refused, not read on.
func TestHeaderSection(t *testing.T) {
	long := strings.Repeat("X-Long: "+strings.Repeat("y", 1000)+"\r\n", 20)
	for _, tc := range []struct{ data, want string }{
		{"A: 1\r\nB: 2\r\n\r\nbody\r\n\r\nmore\r\n", "A: 1\r\nB: 2\r\n\r\n"},
		{"\r\nbody\r\n", "\r\n"},
		{"A: 1\r\n", "A: 1\r\n"},
		{"A: 1", "A: 1"},
		{"", ""},
		{"A: 1\r\n\r\n", "A: 1\r\n\r\n"},
		{long + "\r\n" + long, long + "\r\n"},
	} {
		for _, one := range []bool{false, true} {
			r := iotestReader(tc.data, one)
			got, err := headerSection(nil, r, 1<<20)
			if err != nil || string(got) != tc.want {
				t.Errorf("headerSection(%.40q, one byte reads %v) = %.40q, %v; want %.40q", tc.data, one, got, err, tc.want)
			}
		}
	}
	if _, err := headerSection(nil, strings.NewReader(long+"\r\nbody"), 10<<10); !errors.Is(err, errHeaderSection) {
		t.Errorf("header over the limit: %v, want errHeaderSection", err)
	}
}

func iotestReader(s string, oneByte bool) io.Reader {
	if oneByte {
		return iotest.OneByteReader(strings.NewReader(s))
	}
	return strings.NewReader(s)
}
