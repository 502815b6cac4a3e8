package atomicfile

import (
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

func TestWrite(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	for _, want := range []string{"first", "second, longer than the first"} {
		if err := Write(p, []byte(want)); err != nil {
			t.Fatal(err)
		}
		if got, err := os.ReadFile(p); err != nil || string(got) != want {
			t.Fatalf("read back %q, %v; want %q", got, err, want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 1 {
		t.Errorf("%d files in the folder, want 1 (temporary files left behind)", len(ents))
	}
	// A folder that does not exist: an error, nothing written.
	if err := Write(filepath.Join(dir, "missing", "x"), []byte("x")); err == nil {
		t.Error("write into a missing folder succeeded")
	}
	// A path that is a folder: the rename fails and the temporary file goes.
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Write(filepath.Join(dir, "sub"), []byte("x")); err == nil {
		t.Error("write over a folder succeeded")
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 2 {
		t.Errorf("%d entries after failed writes, want 2", len(ents))
	}
}

// Keeper writes only what changed, writes again after a failed write even
// if nothing changed since, and saves on its own every interval.
func TestKeeper(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "state.json")
	var mu sync.Mutex
	changed, version := true, 0
	snap := func(force bool) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		if !changed && !force {
			return nil, nil
		}
		changed = false
		version++
		return []byte(fmt.Sprint("v", version)), nil
	}
	k := Keep(p, time.Hour, snap, func(err error) { t.Errorf("periodic save: %v", err) })
	if err := os.Mkdir(p, 0o755); err != nil { // the write cannot succeed
		t.Fatal(err)
	}
	if err := k.Save(); err == nil {
		t.Fatal("save over a folder succeeded")
	}
	os.Remove(p)
	if err := k.Save(); err != nil { // nothing changed, but the last write failed
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "v2" {
		t.Fatalf("after the retry the file holds %q, want v2", b)
	}
	os.WriteFile(p, []byte("untouched"), 0o644)
	if err := k.Close(); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(p); string(b) != "untouched" {
		t.Errorf("unchanged state written again: %q", b)
	}

	mu.Lock()
	changed = true
	mu.Unlock()
	k = Keep(p, 10*time.Millisecond, snap, func(err error) { t.Errorf("periodic save: %v", err) })
	defer k.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		if b, _ := os.ReadFile(p); string(b) == "v3" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("no periodic save within 5s")
		}
		time.Sleep(5 * time.Millisecond)
	}
}
