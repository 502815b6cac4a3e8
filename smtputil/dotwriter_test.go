package smtputil

import (
	"bufio"
	"bytes"
	"io"
	"net/textproto"
	"strings"
	"testing"
)

// dotBoth writes the chunks through textproto's DotWriter and ours.
func dotBoth(chunks [][]byte) (want, got []byte) {
	var a, b bytes.Buffer
	tw := textproto.NewWriter(bufio.NewWriter(&a)).DotWriter()
	bw := bufio.NewWriter(&b)
	ow := NewDotWriter(bw)
	for _, c := range chunks {
		tw.Write(c)
		ow.Write(c)
	}
	tw.Close()
	ow.Close()
	return a.Bytes(), b.Bytes()
}

func TestDotWriterAsTextproto(t *testing.T) {
	for _, s := range []string{
		"", ".", "..", "a", "a\r\n", "a\n", ".a\r\n.\r\n..\r\n", "a\r", "a\rb", "a\r\r\n", "\r\n.\r\n",
		"\n.\n", "x\r\n.", "line\r\n.hidden\r\n", "\r", "\n", "\r\r", "\n\n.", ".\r\n\r\n.",
	} {
		// Whole, and cut at every place, so that a state crosses Write calls.
		for cut := 0; cut <= len(s); cut++ {
			want, got := dotBoth([][]byte{[]byte(s[:cut]), []byte(s[cut:])})
			if !bytes.Equal(want, got) {
				t.Errorf("%q cut at %d: got %q, textproto %q", s, cut, got, want)
			}
		}
	}
}

func FuzzDotWriter(f *testing.F) {
	f.Add([]byte("Subject: x\r\n\r\n.line\r\nbare\nlf\rcr\r\r\n."), uint8(7))
	f.Add([]byte(".\r\n"), uint8(1))
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		var chunks [][]byte
		k := int(step%16) + 1
		for len(data) > 0 {
			n := min(k, len(data))
			chunks = append(chunks, data[:n])
			data = data[n:]
		}
		want, got := dotBoth(chunks)
		if !bytes.Equal(want, got) {
			t.Fatalf("got %q, textproto %q", got, want)
		}
	})
}

func BenchmarkDotWriter(b *testing.B) {
	msg := strings.Repeat("Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\r\n", 110)
	for _, impl := range []string{"textproto", "securerelay"} {
		b.Run(impl, func(b *testing.B) {
			b.SetBytes(int64(len(msg)))
			bw := bufio.NewWriter(io.Discard)
			for b.Loop() {
				var w io.WriteCloser
				if impl == "textproto" {
					w = textproto.NewWriter(bw).DotWriter()
				} else {
					w = NewDotWriter(bw)
				}
				io.WriteString(w, msg)
				w.Close()
			}
		})
	}
}
