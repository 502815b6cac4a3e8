package encrypt

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"securerelay/internal/atomicfile"
)

// cacheSaveInterval is how often a changed cache is written to its file.
// Losing the last minute of answers in a crash costs a few lookups again.
const cacheSaveInterval = time.Minute

// maxCacheEntries bounds the cache; the entries expiring first go when it
// is full.
const maxCacheEntries = 20000

// failTTL is how long a temporary failure of a remote source is
// remembered in memory, so that a burst of messages to a partner whose
// WKD server hangs does not wait for it once per message.
const failTTL = time.Minute

// cacheEntry is one remote answer. The raw key bytes are kept rather than
// a verdict, so that a key that expires or a clock that moves on is judged
// again at every use.
type cacheEntry struct {
	Origin  string    `json:"origin"`
	Data    []byte    `json:"data,omitempty"` // binary transferable public keys
	None    bool      `json:"none,omitempty"` // a definitive "no key here"
	Note    string    `json:"note,omitempty"` // why the answer was unusable, for Refused
	Fetched time.Time `json:"fetched"`
	Expires time.Time `json:"expires"`
}

type cacheFile struct {
	Version int                    `json:"version"`
	Entries map[string]*cacheEntry `json:"entries"`
}

// remoteCache holds WKD and OPENPGPKEY answers in memory and, with a
// path, in a JSON file that a Keeper rewrites while it changes, so that
// answers survive a restart (the relay does not hammer a partner's WKD
// server after each deploy, and a key found yesterday is still found when
// the server is down today).
type remoteCache struct {
	mu      sync.Mutex
	m       map[string]*cacheEntry
	fail    map[string]failure
	dirty   bool
	keeper  *atomicfile.Keeper
	flights map[string]*flight

	closeOnce sync.Once
	closeErr  error
}

type failure struct {
	err   error
	until time.Time
}

type flight struct {
	done chan struct{}
	ans  remoteAnswer
	err  error
}

func newRemoteCache(path string, now time.Time, log *slog.Logger) *remoteCache {
	c := &remoteCache{m: map[string]*cacheEntry{}, fail: map[string]failure{}, flights: map[string]*flight{}}
	if path == "" {
		return c
	}
	if b, err := os.ReadFile(path); err == nil {
		var f cacheFile
		if err := json.Unmarshal(b, &f); err != nil || f.Version != 1 {
			// A cache is not worth refusing to start over; the Keeper
			// writes a good file over it.
			log.Warn("encrypt: key cache unreadable, starting empty", "file", path, "error", err)
		} else {
			for k, e := range f.Entries {
				if e != nil && e.Expires.After(now) {
					c.m[k] = e
				}
			}
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		log.Warn("encrypt: key cache unreadable, starting empty", "file", path, "error", err)
	}
	c.keeper = atomicfile.Keep(path, cacheSaveInterval, c.snapshot, func(err error) {
		log.Warn("encrypt: saving key cache failed", "file", path, "error", err)
	})
	return c
}

func (c *remoteCache) snapshot(force bool) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.dirty && !force {
		return nil, nil
	}
	b, err := json.Marshal(cacheFile{Version: 1, Entries: c.m})
	if err != nil {
		return nil, fmt.Errorf("encrypt: key cache: %w", err)
	}
	c.dirty = false
	return b, nil
}

func (c *remoteCache) get(key string, now time.Time) (*cacheEntry, error, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.m[key]; ok {
		if e.Expires.After(now) && !e.Fetched.After(now) {
			return e, nil, true
		}
		delete(c.m, key)
		c.dirty = true
	}
	if f, ok := c.fail[key]; ok {
		if f.until.After(now) {
			return nil, f.err, true
		}
		delete(c.fail, key)
	}
	return nil, nil, false
}

func (c *remoteCache) put(key string, e *cacheEntry) {
	c.mu.Lock()
	defer c.mu.Unlock()
	delete(c.fail, key)
	if len(c.m) >= maxCacheEntries {
		c.evict()
	}
	c.m[key] = e
	c.dirty = true
}

func (c *remoteCache) putFailure(key string, err error, until time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if len(c.fail) >= maxCacheEntries {
		clear(c.fail)
	}
	c.fail[key] = failure{err: err, until: until}
}

// evict drops the tenth of the entries that expire first; c.mu is held.
// It runs once per maxCacheEntries/10 new entries at most.
func (c *remoteCache) evict() {
	keys := slices.Collect(maps.Keys(c.m))
	slices.SortFunc(keys, func(a, b string) int { return c.m[a].Expires.Compare(c.m[b].Expires) })
	for _, k := range keys[:len(keys)/10+1] {
		delete(c.m, k)
	}
}

// once runs fetch for key unless a fetch for it is under way, in which
// case it waits for that one: a burst of messages to one recipient asks
// the partner's server once.
func (c *remoteCache) once(ctx context.Context, key string, fetch func() (remoteAnswer, error)) (remoteAnswer, error) {
	c.mu.Lock()
	if f, ok := c.flights[key]; ok {
		c.mu.Unlock()
		select {
		case <-f.done:
			return f.ans, f.err
		case <-ctx.Done():
			return remoteAnswer{}, ctx.Err()
		}
	}
	f := &flight{done: make(chan struct{})}
	c.flights[key] = f
	c.mu.Unlock()
	f.ans, f.err = fetch()
	c.mu.Lock()
	delete(c.flights, key)
	c.mu.Unlock()
	close(f.done)
	return f.ans, f.err
}

// close saves the cache; later calls do nothing.
func (c *remoteCache) close() error {
	c.closeOnce.Do(func() {
		if c.keeper != nil {
			c.closeErr = c.keeper.Close()
		}
	})
	return c.closeErr
}
