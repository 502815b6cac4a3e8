package queue

import (
	"bytes"
	"context"
	"io"
	"testing"
	"time"
)

var data4K = bytes.Repeat([]byte("0123456789abcd\r\n"), 256)

func benchEnv() Envelope {
	e := env("rcpt@example.com")
	e.Received = time.Time{} // set by NewWriter from the clock
	return e
}

// dirSyncs is the number of directory fsyncs done so far.
func dirSyncs(q *Queue) uint64 {
	var n uint64
	for _, d := range q.store.dsync {
		d.mu.Lock()
		n += d.started
		d.mu.Unlock()
	}
	return n
}

// BenchmarkPut4K is the cost of accepting one 4 KiB message: create, write,
// fsync the file, group-committed fsync of its directory. The scheduler is
// not started. 10 goroutines per CPU stand for concurrent SMTP sessions;
// dirsyncs/op below 1 shows the group commit at work.
func BenchmarkPut4K(b *testing.B) {
	q := open(b, "", Options{Now: time.Now}, nil)
	e := benchEnv()
	b.SetParallelism(10) // 20 writers on 2 cores, like the SMTP load tests
	b.SetBytes(int64(len(data4K)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := q.Put(e, bytes.NewReader(data4K)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	b.StopTimer()
	b.ReportMetric(float64(dirSyncs(q.Queue))/float64(b.N), "dirsyncs/op")
}

// BenchmarkPutDeliverRemove adds the delivery (the Deliverer opens and
// reads the data, then reports Delivered) and the removal from the spool:
// the timer stops when every message is gone.
func BenchmarkPutDeliverRemove(b *testing.B) {
	q := open(b, "", Options{Now: time.Now, Deliverer: deliverFunc(func(ctx context.Context, d *Delivery) []Result {
		rc, err := d.Open()
		if err != nil {
			b.Error(err)
			return all(len(d.Rcpts), tempFail)
		}
		io.Copy(io.Discard, rc)
		rc.Close()
		return all(len(d.Rcpts), Result{Status: Delivered})
	})}, nil)
	q.Start()
	e := benchEnv()
	b.SetParallelism(10) // 20 writers on 2 cores, like the SMTP load tests
	b.SetBytes(int64(len(data4K)))
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := q.Put(e, bytes.NewReader(data4K)); err != nil {
				b.Error(err)
				return
			}
		}
	})
	waitFor(b, time.Minute, "all delivered", func() bool { return q.Len() == 0 })
	q.stop() // waits for the removals in flight
	b.StopTimer()
	b.ReportMetric(float64(dirSyncs(q.Queue))/float64(b.N), "dirsyncs/op")
	if n := len(spoolFiles(b, q.dir)); n != 0 {
		b.Fatalf("%d files left in the spool", n)
	}
}
