package dkim

import (
	"bytes"
	"strings"
	"testing"
)

// benchMessage is a typical header and a body of bodySize octets in
// 76-octet lines (what base64 or quoted-printable MIME parts look like).
func benchMessage(bodySize int) []byte {
	var b bytes.Buffer
	b.WriteString(simpleMsg[:strings.Index(simpleMsg, "\r\n\r\n")+2])
	b.WriteString("MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	line := strings.Repeat("x", 74) + "\r\n"
	for b.Len() < bodySize {
		b.WriteString(line)
	}
	return b.Bytes()
}

func BenchmarkSign(b *testing.B) {
	rsaK, edK, _ := testKeys(b)
	for _, k := range []struct {
		name string
		key  Key
	}{{"rsa2048", rsaK}, {"ed25519", edK}} {
		for _, size := range []struct {
			name string
			n    int
		}{{"4KiB", 4 << 10}, {"1MiB", 1 << 20}} {
			msg := benchMessage(size.n)
			b.Run(k.name+"/"+size.name, func(b *testing.B) {
				b.SetBytes(int64(len(msg)))
				b.ReportAllocs()
				for b.Loop() {
					if _, err := Sign(bytes.NewReader(msg), []Key{k.key}, Options{}); err != nil {
						b.Fatal(err)
					}
				}
				b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "sigs/s")
			})
		}
	}
}
