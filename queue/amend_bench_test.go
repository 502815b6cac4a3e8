package queue

import (
	"io"
	"testing"
	"time"
)

// BenchmarkChangedMessage4K is the spool's cost of a 4 KiB message that a
// content hook changed before the 250 (Authentication-Results on top, as
// for every inbound message), one session at a time, with the relay's
// pool of pre-created files: "respool" copies it into a second file and
// removes the first (smtpd before the amend record), "amend" records the
// change in the same file, "unchanged" is the message without a change.
// Each includes the fsync of Commit.
func BenchmarkChangedMessage4K(b *testing.B) {
	ar := []byte("Authentication-Results: mx.example.com;\r\n\tspf=pass smtp.mailfrom=example.org;\r\n\tdkim=none; dmarc=none\r\n")
	for _, mode := range []string{"unchanged", "respool", "amend"} {
		b.Run(mode, func(b *testing.B) {
			q := open(b, "", Options{Now: time.Now, Preallocate: 128}, nil)
			e := benchEnv()
			b.SetBytes(int64(len(data4K)))
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				w, err := q.NewWriter(e)
				if err != nil {
					b.Fatal(err)
				}
				if _, err := w.Write(data4K); err != nil {
					b.Fatal(err)
				}
				switch mode {
				case "respool":
					w2, err := q.NewWriter(w.Envelope())
					if err != nil {
						b.Fatal(err)
					}
					r, err := w.Reader()
					if err == nil {
						_, err = w2.Write(ar)
					}
					if err == nil {
						_, err = io.Copy(w2, r)
					}
					if err != nil {
						b.Fatal(err)
					}
					w.Abort()
					w = w2
				case "amend":
					if err := w.Amend(nil, ar, 0); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Commit(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			if n := q.Len(); n != b.N {
				b.Fatalf("%d messages queued, want %d", n, b.N)
			}
		})
	}
}
