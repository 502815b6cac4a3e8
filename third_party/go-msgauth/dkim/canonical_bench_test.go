package dkim

import (
	"encoding/base64"
	"io"
	"strings"
	"testing"
)

// benchBody is a body of about size octets as issue 15 of securerelay
// measured it: text lines (with some double and trailing white space),
// then a base64 attachment in 76-octet lines.
func benchBody(size int) []byte {
	var b strings.Builder
	for i := 0; i < 40 && b.Len() < size/4; i++ {
		b.WriteString("Lorem ipsum dolor sit amet,  consectetur adipiscing elit, sed do eiusmod. \r\n")
	}
	b.WriteString("\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	raw := make([]byte, size)
	for i := range raw {
		raw[i] = byte(i*7 + i>>8)
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	for b.Len()+78 <= size {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	return []byte(b.String())
}

// BenchmarkCanonicalizeBody compares the rewritten body canonicalizers
// ("new") with v0.7.0's ("ref"), fed in 32 KiB writes as io.Copy does.
func BenchmarkCanonicalizeBody(b *testing.B) {
	impls := []struct {
		name string
		make func(Canonicalization, io.Writer) io.WriteCloser
	}{
		{"ref", func(can Canonicalization, w io.Writer) io.WriteCloser {
			if can == CanonicalizationSimple {
				return &refSimpleBodyCanonicalizer{w: w}
			}
			return &refRelaxedBodyCanonicalizer{w: w}
		}},
		{"new", func(can Canonicalization, w io.Writer) io.WriteCloser {
			return canonicalizers[can].CanonicalizeBody(w)
		}},
	}
	for _, size := range []struct {
		name string
		n    int
	}{{"4K", 4 << 10}, {"136K", 136 << 10}} {
		body := benchBody(size.n)
		for _, can := range []Canonicalization{CanonicalizationRelaxed, CanonicalizationSimple} {
			for _, impl := range impls {
				b.Run(size.name+"/"+string(can)+"/"+impl.name, func(b *testing.B) {
					b.ReportAllocs()
					b.SetBytes(int64(len(body)))
					for i := 0; i < b.N; i++ {
						wc := impl.make(can, io.Discard)
						for rest := body; len(rest) > 0; {
							n := 32 << 10
							if n > len(rest) {
								n = len(rest)
							}
							if _, err := wc.Write(rest[:n]); err != nil {
								b.Fatal(err)
							}
							rest = rest[n:]
						}
						if err := wc.Close(); err != nil {
							b.Fatal(err)
						}
					}
				})
			}
		}
	}
}
