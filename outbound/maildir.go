package outbound

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"securerelay/queue"
	"securerelay/smtputil"
)

var maildirSeq atomic.Uint64

// deliverMaildir writes one copy per recipient into DIR/<address>/new, the
// Maildir way (tmp, fsync, rename, fsync dir), so a crash never leaves a
// half message in new/.
func deliverMaildir(dir, hostname string, d *queue.Delivery, rcpts []string) []queue.Result {
	res := make([]queue.Result, len(rcpts))
	for i, rcpt := range rcpts {
		// Final delivery: a success DSN, if asked for, says "delivered".
		res[i] = queue.Result{Status: queue.Delivered, Code: "2.0.0", Reply: "delivered to maildir", Relay: "maildir", Success: queue.ActionDelivered}
		if err := maildirOne(dir, hostname, d, rcpt); err != nil {
			res[i] = queue.Result{Status: queue.TempFail, Code: "4.3.0", Reply: "maildir: " + err.Error(), Relay: "maildir"}
		}
	}
	return res
}

// mailboxName makes a recipient address safe as one directory name: '/' is
// legal in a local part and ".." must not climb out of the maildir root.
// The domain is in A-labels, so that "jörg@müller.example" and
// "jörg@xn--mller-kva.example" are one mailbox (and mailboxes made before
// SMTPUTF8, which could only be named in A-labels, stay where they are);
// a UTF-8 local part is kept, lower-cased.
func mailboxName(rcpt string) string {
	box := strings.ToLower(rcpt)
	if at := strings.LastIndexByte(rcpt, '@'); at >= 0 {
		box = strings.ToLower(rcpt[:at]) + "@" + smtputil.AddressDomain(rcpt)
	}
	n := strings.Map(func(r rune) rune {
		if r == '/' || r == 0 || r == '\\' {
			return '_'
		}
		return r
	}, box)
	if strings.HasPrefix(n, ".") {
		n = "_" + n
	}
	return n
}

func maildirOne(root, hostname string, d *queue.Delivery, rcpt string) error {
	box := filepath.Join(root, mailboxName(rcpt))
	for _, sub := range []string{"tmp", "new", "cur"} {
		if err := os.MkdirAll(filepath.Join(box, sub), 0o700); err != nil {
			return err
		}
	}
	name := fmt.Sprintf("%d.%s_%d.%s", time.Now().Unix(), d.ID, maildirSeq.Add(1), hostname)
	tmp := filepath.Join(box, "tmp", name)
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	r, err := d.Open()
	if err != nil {
		f.Close()
		return err
	}
	defer r.Close()
	fmt.Fprintf(f, "Delivered-To: %s\r\n", rcpt)
	if _, err := io.Copy(f, r); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(box, "new", name)); err != nil {
		return err
	}
	df, err := os.Open(filepath.Join(box, "new"))
	if err != nil {
		return err
	}
	defer df.Close()
	return df.Sync()
}
