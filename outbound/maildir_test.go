package outbound_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"securerelay/outbound"
	"securerelay/queue"
)

func TestMaildir(t *testing.T) {
	base := t.TempDir()
	root := filepath.Join(base, "maildir")
	r := &outbound.Router{Local: map[string]outbound.Target{"local.test": target(t, "maildir:"+root)}}
	e := engine(t, r, nil)
	rcpts := []string{
		"alice@local.test",
		"../../escape@local.test",
		"..@local.test",
		".hidden@local.test",
		"a/b@local.test",
		"/abs@local.test",
		`..\..\win@local.test`,
	}
	res := deliver(t, e, newSpool(t).put("sender@remote.test", rcpts, message))
	for i, rs := range res {
		check(t, rcpts[i], rs, queue.Delivered, "2.0.0")
	}

	// alice's message, exactly.
	news, err := os.ReadDir(filepath.Join(root, "alice@local.test", "new"))
	if err != nil || len(news) != 1 {
		t.Fatalf("alice@local.test/new: %v, %v", news, err)
	}
	b, err := os.ReadFile(filepath.Join(root, "alice@local.test", "new", news[0].Name()))
	if err != nil {
		t.Fatal(err)
	}
	if want := "Delivered-To: alice@local.test\r\n" + message; string(b) != want {
		t.Errorf("maildir file:\n%q\nwant\n%q", b, want)
	}

	// Nothing outside the maildir root, nothing hidden inside it, one
	// mailbox per recipient, each with one message for that recipient.
	ents, err := os.ReadDir(base)
	if err != nil || len(ents) != 1 || ents[0].Name() != "maildir" {
		t.Fatalf("beside the maildir root: %v %v", ents, err)
	}
	boxes, err := os.ReadDir(root)
	if err != nil {
		t.Fatal(err)
	}
	if len(boxes) != len(rcpts) {
		t.Errorf("%d mailboxes for %d recipients: %v", len(boxes), len(rcpts), boxes)
	}
	seen := map[string]bool{}
	for _, bx := range boxes {
		if strings.HasPrefix(bx.Name(), ".") || !bx.IsDir() {
			t.Errorf("mailbox entry %q", bx.Name())
			continue
		}
		news, err := os.ReadDir(filepath.Join(root, bx.Name(), "new"))
		if err != nil || len(news) != 1 {
			t.Errorf("%s/new: %v %v", bx.Name(), news, err)
			continue
		}
		b, err := os.ReadFile(filepath.Join(root, bx.Name(), "new", news[0].Name()))
		if err != nil {
			t.Fatal(err)
		}
		first, _, _ := strings.Cut(string(b), "\r\n")
		seen[strings.TrimPrefix(first, "Delivered-To: ")] = true
		tmp, _ := os.ReadDir(filepath.Join(root, bx.Name(), "tmp"))
		if len(tmp) != 0 {
			t.Errorf("%s/tmp not empty: %v", bx.Name(), tmp)
		}
	}
	for _, rc := range rcpts {
		if !seen[rc] {
			t.Errorf("no message with Delivered-To: %s", rc)
		}
	}
	filepath.WalkDir(base, func(p string, de fs.DirEntry, err error) error {
		if err == nil && p != base && p != root && !strings.HasPrefix(p, root+string(filepath.Separator)) {
			t.Errorf("written outside the maildir root: %s", p)
		}
		return nil
	})
}

// Two deliveries to one mailbox do not overwrite each other.
func TestMaildirTwoMessages(t *testing.T) {
	root := t.TempDir()
	e := engine(t, &outbound.Router{Local: map[string]outbound.Target{"local.test": target(t, "maildir:"+root)}}, nil)
	sp := newSpool(t)
	for i := 0; i < 2; i++ {
		check(t, "alice", deliver(t, e, sp.put("s@remote.test", []string{"alice@local.test"}, message))[0], queue.Delivered, "2.0.0")
	}
	// Same recipient twice in one message: two copies, as the envelope says.
	d := sp.put("s@remote.test", []string{"bob@local.test", "Bob@local.test"}, message)
	for _, rs := range deliver(t, e, d) {
		check(t, "bob", rs, queue.Delivered, "2.0.0")
	}
	for box, n := range map[string]int{"alice@local.test": 2, "bob@local.test": 2} {
		news, err := os.ReadDir(filepath.Join(root, box, "new"))
		if err != nil || len(news) != n {
			t.Errorf("%s/new: %d files (%v), want %d", box, len(news), err, n)
		}
	}
}
