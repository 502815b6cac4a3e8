package queue

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// BenchmarkSpoolLayouts compares our spool layout with the ones the brief
// measured elsewhere, on this machine's filesystem, with 20 concurrent
// writers (the harness's smtp-source sessions) and 4 KiB messages. Each
// variant does what it needs for a durable acknowledgement and then removes
// the message (as delivery would), so directory churn is included:
//
//   - securerelay: one file written in place, file fsync, group-committed
//     directory fsync over 16 shard directories; unlink.
//   - securerelay-preallocated: the same with Options.Preallocate: files
//     are created ahead in batches, one directory fsync per batch, so a
//     message costs one write and one file fsync.
//   - floor-one-fsync: not durable, the lower bound of one fsync.
//   - tmp-rename: chasquid/safeio style: temp file, fsync, rename into
//     place, directory fsync; unlink.
//   - three-files: maddy style: header and body files fsync'd, metadata
//     via temp+fsync+rename, directory fsync; three unlinks.
//
// go test -run XXX -bench SpoolLayouts -benchtime 5000x ./queue/
func BenchmarkSpoolLayouts(b *testing.B) {
	body := bytes.Repeat([]byte("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n"), 64)
	env := Envelope{From: "user@example.com", To: []string{"rcpt@partner.test"}, Origin: OriginOutbound, Received: time.Now()}

	for _, pre := range []int{0, 128} {
		name := "securerelay"
		if pre > 0 {
			name = "securerelay-preallocated"
		}
		b.Run(name, func(b *testing.B) { benchQueuePut(b, pre, env, body) })
	}

	b.Run("tmp-rename", func(b *testing.B) {
		dir := b.TempDir()
		tmp := filepath.Join(dir, "tmp")
		os.Mkdir(tmp, 0o700)
		d, _ := os.Open(dir)
		defer d.Close()
		var n atomic.Int64
		b.SetParallelism(10)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				name := fmt.Sprint(n.Add(1))
				t := filepath.Join(tmp, name)
				f, err := os.OpenFile(t, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					b.Error(err)
					return
				}
				f.Write(body)
				f.Sync()
				f.Close()
				os.Rename(t, filepath.Join(dir, name))
				d.Sync()
				os.Remove(filepath.Join(dir, name))
			}
		})
	})

	// Not a durable design (the directory entry may be lost): the floor
	// set by one file fsync per message, to show what the directory fsync
	// and the rest of our bookkeeping cost on top.
	b.Run("floor-one-fsync", func(b *testing.B) {
		dir := b.TempDir()
		var n atomic.Int64
		b.SetParallelism(10)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				p := filepath.Join(dir, fmt.Sprint(n.Add(1)))
				f, err := os.OpenFile(p, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				if err != nil {
					b.Error(err)
					return
				}
				f.Write(body)
				f.Sync()
				f.Close()
				os.Remove(p)
			}
		})
	})

	b.Run("three-files", func(b *testing.B) {
		dir := b.TempDir()
		d, _ := os.Open(dir)
		defer d.Close()
		var n atomic.Int64
		b.SetParallelism(10)
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				base := filepath.Join(dir, fmt.Sprint(n.Add(1)))
				for _, part := range []struct {
					ext  string
					data []byte
				}{{".header", body[:512]}, {".body", body}} {
					f, err := os.OpenFile(base+part.ext, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
					if err != nil {
						b.Error(err)
						return
					}
					f.Write(part.data)
					f.Sync()
					f.Close()
				}
				f, _ := os.OpenFile(base+".meta.tmp", os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
				f.Write([]byte(`{"from":"user@example.com","to":["rcpt@partner.test"]}`))
				f.Sync()
				f.Close()
				os.Rename(base+".meta.tmp", base+".meta")
				d.Sync()
				for _, ext := range []string{".header", ".body", ".meta"} {
					os.Remove(base + ext)
				}
			}
		})
	})
}

func benchQueuePut(b *testing.B, preallocate int, env Envelope, body []byte) {
	q, err := Open(Options{Dir: b.TempDir(), Preallocate: preallocate})
	if err != nil {
		b.Fatal(err)
	}
	defer q.Close()
	if preallocate > 0 {
		time.Sleep(200 * time.Millisecond) // let the pool fill once
	}
	b.SetParallelism(10) // 2 cores × 10 = 20 writers
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			id, err := q.Put(env, bytes.NewReader(body))
			if err != nil {
				b.Error(err)
				return
			}
			q.store.remove(id, false)
		}
	})
}
