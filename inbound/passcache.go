package inbound

import (
	"encoding/json"
	"log/slog"
	"net/netip"
	"os"
	"sync"
	"time"

	"securerelay/internal/atomicfile"
)

// maxPassed bounds the clients remembered: a flood of distinct addresses
// must not grow memory (or the file) without end.
const maxPassed = 100000

// PassCache remembers clients that passed screening (postscreen's cache)
// until their time runs out. One serves every inbound listener. Opened
// with a file, it survives restarts as postscreen_cache_map does: with the
// deep protocol test on, a cache lost at each restart would answer 450 to
// every regular sender again.
type PassCache struct {
	mu    sync.Mutex
	m     map[netip.Addr]time.Time
	dirty bool
	keep  *atomicfile.Keeper // nil: in memory only
}

// NewPassCache returns a cache in memory only.
func NewPassCache() *PassCache {
	return &PassCache{m: map[netip.Addr]time.Time{}}
}

// OpenPassCache loads path and saves it every interval while it changed,
// and on Close. A missing file is an empty cache; a damaged one is moved
// aside to path.damaged, and one that cannot be read is left alone, both
// with a warning and an empty cache: the cache only saves work. A loaded
// pass lasts at most maxTTL from now, whatever the file says (a clock
// that was ahead, a cache_ttl since shortened).
func OpenPassCache(path string, interval, maxTTL time.Duration, log *slog.Logger) *PassCache {
	p := NewPassCache()
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		var saved map[netip.Addr]time.Time
		if err := json.Unmarshal(b, &saved); err != nil {
			log.Warn("screening cache unreadable, moved aside; clients are screened again", "file", path, "error", err)
			if rerr := os.Rename(path, path+".damaged"); rerr != nil {
				log.Warn("screening cache not moved aside", "file", path, "error", rerr)
			}
			break
		}
		now := time.Now()
		for ip, until := range saved {
			if until.After(now) && len(p.m) < maxPassed {
				if limit := now.Add(maxTTL); until.After(limit) {
					until = limit
				}
				p.m[ip] = until
			}
		}
	case os.IsNotExist(err):
	default:
		// Permissions, a folder in the way: the cache only saves work, so
		// the relay runs with an empty one; saving will fail and say so.
		log.Warn("screening cache not readable, starting empty; check state_dir", "file", path, "error", err)
	}
	p.keep = atomicfile.Keep(path, interval, p.snapshot, func(err error) {
		log.Warn("screening cache not saved", "file", path, "error", err)
	})
	return p
}

// Len is the number of clients remembered (expired ones included until
// they are next looked at or saved).
func (p *PassCache) Len() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.m)
}

func (p *PassCache) has(ip netip.Addr, now time.Time) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	until, ok := p.m[ip]
	if ok && now.After(until) {
		delete(p.m, ip)
		p.dirty = true
		return false
	}
	return ok
}

func (p *PassCache) add(ip netip.Addr, until time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, known := p.m[ip]; !known && len(p.m) >= maxPassed {
		// Full: make room from expired passes only. Emptying the cache
		// would let a flood of fresh addresses (one IPv6 /64 has plenty)
		// push every regular sender back through screening; a client
		// that finds no room is simply screened again next time.
		now := time.Now()
		for a, u := range p.m {
			if !u.After(now) {
				delete(p.m, a)
			}
		}
		if len(p.m) >= maxPassed {
			return
		}
	}
	p.m[ip] = until
	p.dirty = true
}

// snapshot is the unexpired entries to save, or nil if nothing changed.
func (p *PassCache) snapshot(force bool) ([]byte, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.dirty && !force {
		return nil, nil
	}
	now := time.Now()
	for ip, until := range p.m {
		if !until.After(now) {
			delete(p.m, ip)
		}
	}
	p.dirty = false
	return json.Marshal(p.m)
}

// Close stops the saver and saves; a cache without a file does nothing.
func (p *PassCache) Close() error {
	if p.keep == nil {
		return nil
	}
	return p.keep.Close()
}
