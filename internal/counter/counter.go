// Package counter counts events per key in a sliding time window, in
// memory, saved to a file so that the counts survive a restart. It backs
// the auto-reply loop limit; a cluster can replace it with a shared store
// behind the same small interface (smtpd.Counter).
package counter

import (
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"securerelay/internal/atomicfile"
)

// maxPerKey bounds the timestamps kept for one key: only counts up to a
// limit matter, never the exact number beyond it.
const maxPerKey = 1000

// File is a Counter persisted to one JSON file.
type File struct {
	mu    sync.Mutex
	m     map[string][]time.Time
	dirty bool
	keep  *atomicfile.Keeper
}

// Open loads path (a missing file is an empty counter) and saves it every
// interval while there are changes, and on Close.
func Open(path string, interval time.Duration, log *slog.Logger) (*File, error) {
	f := &File{m: map[string][]time.Time{}}
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if err := json.Unmarshal(b, &f.m); err != nil {
			// A torn file after a crash: counts are a protection, not data;
			// start afresh and say so.
			log.Warn("loop counters unreadable, starting from zero", "file", path, "error", err)
			f.m = map[string][]time.Time{}
		}
	case os.IsNotExist(err):
	default:
		return nil, fmt.Errorf("loop counters: %w", err)
	}
	f.keep = atomicfile.Keep(path, interval, f.snapshot, func(err error) {
		log.Warn("loop counters not saved", "file", path, "error", err)
	})
	return f, nil
}

// Add records one event for key at now and returns how many events key
// had within window before now, this one included.
func (f *File) Add(key string, now time.Time, window time.Duration) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ts := f.m[key]
	keep := ts[:0]
	for _, t := range ts {
		if now.Sub(t) < window {
			keep = append(keep, t)
		}
	}
	keep = append(keep, now)
	if len(keep) > maxPerKey {
		keep = keep[len(keep)-maxPerKey:]
	}
	f.m[key] = keep
	f.dirty = true
	return len(keep), nil
}

// snapshot is the counts to save (dropping keys with nothing left in a
// day, the longest window that makes sense), or nil if nothing changed.
func (f *File) snapshot(force bool) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.dirty && !force {
		return nil, nil
	}
	now := time.Now()
	for k, ts := range f.m {
		if len(ts) == 0 || now.Sub(ts[len(ts)-1]) > 24*time.Hour {
			delete(f.m, k)
		}
	}
	f.dirty = false
	return json.Marshal(f.m)
}

// Close saves and stops the background saver.
func (f *File) Close() error { return f.keep.Close() }
