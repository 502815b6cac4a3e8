package smtp

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"testing"
)

// benchMessage is a message as it arrives after DATA: CRLF lines of 76
// octets, every 40th starting with a stuffed dot, then the end marker and
// the next command, which the reader must leave alone.
func benchMessage(size int) (wire []byte, body int) {
	var buf bytes.Buffer
	for line := 0; body < size; line++ {
		if line%40 == 39 {
			buf.WriteByte('.') // stuffed: removed by the reader
		}
		s := fmt.Sprintf("%05d quoted-printable-ish body text of a message, wrapped like a mailer=\r\n", line)
		buf.WriteString(s)
		body += len(s)
	}
	buf.WriteString(".\r\nQUIT\r\n")
	return buf.Bytes(), body
}

// BenchmarkDataReader compares the DATA reader with its byte-wise
// predecessor (refDataReader) on a 4 KiB and a 136 KiB message, read as
// smtpd's spool copy reads it (32 KiB at a time, over go-smtp's 4 KiB
// bufio.Reader). MB/s counts the message's bytes.
func BenchmarkDataReader(b *testing.B) {
	for _, size := range []int{4 << 10, 136 << 10} {
		wire, body := benchMessage(size)
		for _, impl := range []string{"old", "new"} {
			b.Run(fmt.Sprintf("%dKiB/%s", size>>10, impl), func(b *testing.B) {
				src := bytes.NewReader(wire)
				br := bufio.NewReader(src)
				p := make([]byte, 32<<10)
				b.SetBytes(int64(body))
				b.ReportAllocs()
				cur, old := &dataReader{r: br}, &refDataReader{r: br}
				var r io.Reader = cur
				if impl == "old" {
					r = old
				}
				b.ResetTimer()
				for i := 0; i < b.N; i++ {
					src.Reset(wire)
					br.Reset(src)
					*cur = dataReader{r: br, limited: true, n: 10 << 20}
					*old = refDataReader{r: br, limited: true, n: 10 << 20}
					got := 0
					for {
						n, err := r.Read(p)
						got += n
						if err == io.EOF {
							break
						}
						if err != nil {
							b.Fatal(err)
						}
					}
					if got != body {
						b.Fatalf("read %d bytes, want %d", got, body)
					}
				}
			})
		}
	}
}
