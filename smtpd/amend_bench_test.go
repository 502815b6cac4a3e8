package smtpd

import (
	"bufio"
	"bytes"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"securerelay/queue"
)

// stripHeaderField is a header-only rewrite shaped like
// authres.StripForged: line by line through the header, then a copy.
func stripHeaderField(w io.Writer, r io.Reader) error {
	br := bufio.NewReaderSize(r, 16<<10)
	for {
		line, err := br.ReadSlice('\n')
		if len(line) == 2 && line[0] == '\r' {
			w.Write(line)
			_, err := io.Copy(w, br)
			return err
		}
		if !bytes.HasPrefix(line, []byte("X-Forged:")) {
			if _, werr := w.Write(line); werr != nil {
				return werr
			}
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// BenchmarkHeaderChange4K is smtpd's cost, between the content stage and
// the 250, of a 4 KiB inbound message that got Authentication-Results
// and a header-only rewrite (forged-field stripping), fsync of Commit
// included, one session at a time, with the relay's pool of pre-created
// files: "respool" copies it into a new file (what smtpd did for every
// such message), "amend" rewrites the stored header section and amends
// the file.
func BenchmarkHeaderChange4K(b *testing.B) {
	hdr := "Received: from client.example.org ([192.0.2.1])\r\n\tby mx.example.com (securerelay) with ESMTPS id 0123456789ABCDEF\r\n\tfor <rcpt@example.com>; Tue, 8 Dec 2026 00:00:00 +0000\r\n" +
		"From: a@example.org\r\nTo: rcpt@example.com\r\nSubject: report\r\nDate: Tue, 8 Dec 2026 00:00:00 +0000\r\nMessage-ID: <x@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n"
	data := []byte(hdr + strings.Repeat("0123456789abcd\r\n", 256-len(hdr)/16))
	ar := "Authentication-Results: mx.example.com;\r\n\tspf=pass smtp.mailfrom=example.org;\r\n\tdkim=none; dmarc=none\r\n"
	for _, mode := range []string{"respool", "amend"} {
		b.Run(mode, func(b *testing.B) {
			q, err := queue.Open(queue.Options{Dir: b.TempDir(), Now: time.Now, Preallocate: 128, Logger: slog.New(slog.DiscardHandler),
				Deliverer: nil})
			if err != nil {
				b.Fatal(err)
			}
			defer q.Close()
			s := &session{srv: &Server{opts: Options{Queue: q}}}
			env := queue.Envelope{From: "a@example.org", To: []string{"rcpt@example.com"}, Origin: queue.OriginInbound}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w, err := q.NewWriter(env)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := w.Write(data); err != nil {
					b.Fatal(err)
				}
				msg := &Message{AddHeader: ar, Rewrite: stripHeaderField, RewriteHeaderOnly: mode == "amend"}
				if mode == "amend" {
					if _, ok, err := s.amend(w, env, msg); err != nil || !ok {
						b.Fatal(ok, err)
					}
				} else {
					w2, err := s.respool(w, env, msg)
					if err != nil {
						b.Fatal(err)
					}
					w = w2
				}
				if err := w.Commit(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
