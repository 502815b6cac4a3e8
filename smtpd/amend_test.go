package smtpd_test

import (
	"bufio"
	"bytes"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"securerelay/queue"
	"securerelay/smtpd"
)

// stripXForged is a header-only rewrite like authres.StripForged: it drops
// X-Forged fields from the header and copies the empty line and the body.
func stripXForged(w io.Writer, r io.Reader) error {
	br := bufio.NewReader(r)
	for {
		line, err := br.ReadString('\n')
		if line == "\r\n" {
			io.WriteString(w, line)
			_, err := io.Copy(w, br)
			return err
		}
		if !strings.HasPrefix(line, "X-Forged:") {
			if _, werr := io.WriteString(w, line); werr != nil {
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

// spoolFile returns the raw spool file of id.
func spoolFile(t *testing.T, dir, id string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, id[len(id)-1:], id))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A content hook that adds a field, rewrites the header, changes the
// sender and adds a recipient (what the content stage does to every
// inbound message, in part) costs no second spool file: the message is
// queued under the ID it had during DATA (the one in our Received: and in
// the logs from the start), and delivery gets exactly the changed message.
func TestHeaderChangesKeepQueueID(t *testing.T) {
	body := "Body line one.\r\nX-Forged: in the body stays\r\n"
	cases := map[string]struct {
		data       string
		addHeader  string
		rewrite    bool
		newFrom    string
		addRcpts   []string
		wantHeader string // after our Received:
		wantBody   string
	}{
		"all": {
			data:      "From: a@example.org\r\nX-Forged: yes\r\nSubject: hi\r\n\r\n" + body,
			addHeader: "Authentication-Results: mx.ours.test; spf=pass\r\n", rewrite: true,
			newFrom: "new@example.org", addRcpts: []string{"added@ours.test"},
			wantHeader: "From: a@example.org\r\nSubject: hi\r\n\r\n", wantBody: body,
		},
		"add-header-only": {
			data:       "Subject: hi\r\n\r\n" + body,
			addHeader:  "Authentication-Results: mx.ours.test; none\r\n",
			wantHeader: "Subject: hi\r\n\r\n", wantBody: body,
		},
		"rewrite-no-body": {
			data:    "Subject: hi\r\nX-Forged: yes\r\n",
			rewrite: true, wantHeader: "Subject: hi\r\n",
		},
		// Larger than the first read of the header section.
		"big-header": {
			data:    strings.Repeat("X-Long: "+strings.Repeat("x", 900)+"\r\n", 40) + "X-Forged: yes\r\n\r\n" + body,
			rewrite: true, wantHeader: strings.Repeat("X-Long: "+strings.Repeat("x", 900)+"\r\n", 40) + "\r\n", wantBody: body,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var firstID string
			role := &fakeRole{data: func(st *smtpd.State, msg *smtpd.Message) error {
				mu.Lock()
				firstID = msg.QueueID
				mu.Unlock()
				msg.AddHeader = tc.addHeader
				if tc.rewrite {
					msg.Rewrite, msg.RewriteHeaderOnly = stripXForged, true
				}
				msg.NewFrom, msg.AddRcpts = tc.newFrom, tc.addRcpts
				return nil
			}}
			h := start(t, role, nil)
			c := simple(t, h.addr, "a@example.org", "b@ours.test")
			id := h.queueID(c.data(tc.data + ".\r\n"))
			mu.Lock()
			first := firstID
			mu.Unlock()
			if id != first {
				t.Fatalf("queued as %s, but the message was %s during DATA: spooled anew", id, first)
			}
			if ids := h.spooled(); len(ids) != 1 {
				t.Fatalf("spool holds %v, want one file", ids)
			}
			if raw := spoolFile(t, h.dir, id); !bytes.HasPrefix(raw, []byte("SRQ2 ")) {
				t.Fatalf("spool file is not amended: %.40q", raw)
			}
			d := h.next()
			if d.ID != id {
				t.Fatalf("delivered %s, queued %s", d.ID, id)
			}
			if !strings.HasPrefix(string(d.Data), tc.addHeader+"Received: ") {
				t.Fatalf("delivered data does not begin with the added field and our Received:\n%.300q", d.Data)
			}
			recv, rest := splitReceived(t, d.Data[len(tc.addHeader):])
			if !strings.Contains(recv, "id "+id) {
				t.Errorf("our Received: does not name the queue ID %s: %s", id, recv)
			}
			if want := tc.wantHeader + tc.wantBody; string(rest) != want {
				t.Fatalf("delivered after Received:\n got %q\nwant %q", rest, want)
			}
			wantFrom, wantTo := "a@example.org", append([]string{"b@ours.test"}, tc.addRcpts...)
			if tc.newFrom != "" {
				wantFrom = tc.newFrom
			}
			if d.Env.From != wantFrom || strings.Join(d.Env.To, ",") != strings.Join(wantTo, ",") {
				t.Fatalf("delivered envelope from %q to %v, want %q %v", d.Env.From, d.Env.To, wantFrom, wantTo)
			}
			if d.Content != queue.Content7Bit {
				t.Errorf("content %v, want 7-bit", d.Content)
			}
		})
	}
}

// A rewrite that may change the body (a milter's replaced body) still
// gets the whole message, spooled anew; an 8-bit added field makes an
// amended message 8-bit.
func TestBodyRewriteRespoolsAndEightBitHeader(t *testing.T) {
	t.Run("body", func(t *testing.T) {
		var mu sync.Mutex
		var first string
		role := &fakeRole{data: func(st *smtpd.State, msg *smtpd.Message) error {
			mu.Lock()
			first = msg.QueueID
			mu.Unlock()
			msg.Rewrite = func(w io.Writer, r io.Reader) error {
				b, err := io.ReadAll(r)
				if err != nil {
					return err
				}
				_, err = w.Write(bytes.Replace(b, []byte("secret"), []byte("[removed]"), 1))
				return err
			}
			return nil
		}}
		h := start(t, role, nil)
		c := simple(t, h.addr, "a@example.org", "b@ours.test")
		id := h.queueID(c.data("Subject: hi\r\n\r\nthe secret\r\n.\r\n"))
		d := h.next()
		if _, rest := splitReceived(t, d.Data); string(rest) != "Subject: hi\r\n\r\nthe [removed]\r\n" {
			t.Fatalf("delivered %q", rest)
		}
		mu.Lock()
		defer mu.Unlock()
		if id == first || d.ID != id {
			t.Fatalf("body rewrite: queued as %s, first %s, delivered %s", id, first, d.ID)
		}
	})
	t.Run("8bit", func(t *testing.T) {
		role := &fakeRole{data: func(st *smtpd.State, msg *smtpd.Message) error {
			msg.AddHeader = "X-Note: caf\xc3\xa9\r\n"
			return nil
		}}
		h := start(t, role, nil)
		c := simple(t, h.addr, "a@example.org", "b@ours.test")
		h.queueID(c.data("Subject: hi\r\n\r\nascii\r\n.\r\n"))
		if d := h.next(); d.Content != queue.Content8Bit {
			t.Fatalf("content %v with an 8-bit added field, want 8-bit", d.Content)
		}
	})
}
