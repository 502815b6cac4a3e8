package downgrade

import (
	"bytes"
	"io"
	"strings"
	"testing"
)

// The detector runs over every byte smtpd spools: its cost per MB.
func BenchmarkDetector(b *testing.B) {
	buf := bytes.Repeat([]byte("ASCII text of an ordinary message line, 72 octets or so, then CRLF.\r\n"), 1<<14)
	b.SetBytes(int64(len(buf)))
	for b.Loop() {
		var d Detector
		d.Write(buf)
	}
}

// Analysis and conversion of a 1 MB message with an 8-bit text part.
func BenchmarkConvert(b *testing.B) {
	body := strings.Repeat("Grüße aus Köln, eine Zeile mit Umlauten und etwas mehr Text darin.\r\n", 1<<14)
	msg := "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n" + body
	b.SetBytes(int64(len(msg)))
	for b.Loop() {
		p, err := Analyze(strings.NewReader(msg))
		if err != nil || !p.Needed() {
			b.Fatal(err)
		}
		if err := p.Convert(io.Discard, strings.NewReader(msg)); err != nil {
			b.Fatal(err)
		}
	}
}
