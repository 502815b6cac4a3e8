package tlspolicy

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"sync"
	"time"

	"securerelay/internal/atomicfile"
)

// FileCache is a MemoryCache kept in a JSON file, so that a restart does
// not forget the enforce policies it holds: RFC 8461 §5 asks for policies
// to be cached in persistent storage, since a sender that forgets them
// can be made to skip MTA-STS by blocking the next fetch. Safe for
// concurrent use.
type FileCache struct {
	*MemoryCache
	path string
	mu   sync.Mutex // serialises writes of the file
}

// NewFileCache loads path (a missing file is an empty cache; expired
// entries are dropped) and keeps it up to date on every Put. A file that
// cannot be read or parsed is an error: the caller decides whether to
// start without it.
func NewFileCache(path string, max int, now time.Time) (*FileCache, error) {
	c := &FileCache{MemoryCache: NewMemoryCache(max), path: path}
	b, err := os.ReadFile(path)
	if os.IsNotExist(err) {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("mta-sts cache: %w", err)
	}
	var m map[string]STSPolicy
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("mta-sts cache %s: %w", path, err)
	}
	for d, p := range m {
		if p.Expires.After(now) {
			c.MemoryCache.Put(context.Background(), d, &p)
		}
	}
	return c, nil
}

// Put implements STSCache: the entry is in memory at once and in the file
// when Put returns nil.
func (c *FileCache) Put(ctx context.Context, domain string, p *STSPolicy) error {
	c.MemoryCache.Put(ctx, domain, p)
	c.mu.Lock()
	defer c.mu.Unlock()
	c.MemoryCache.mu.Lock()
	b, err := json.Marshal(c.MemoryCache.m)
	c.MemoryCache.mu.Unlock()
	if err != nil {
		return err
	}
	// Write and rename, so that a crash leaves the old file or the new
	// one, never half of one.
	if err := atomicfile.Write(c.path, b); err != nil {
		return fmt.Errorf("mta-sts cache: %w", err)
	}
	return nil
}
