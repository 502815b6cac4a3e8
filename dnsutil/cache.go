package dnsutil

import (
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"
)

// MaxCacheTTL caps how long an answer is kept, whatever its TTL says: a
// record an admin fixes (a DKIM key, an SPF or DMARC record) is seen
// within the hour, as with common resolvers' defaults.
const MaxCacheTTL = time.Hour

// Cache keeps the answers of a Client for their TTL (RFC 1035 §3.2.1),
// negative answers for the SOA's negative TTL (RFC 2308 §5), so that the
// DKIM key, DMARC and SPF records of a sender who writes every minute are
// asked once, not once per message. Postfix leaves this to a local
// caching resolver; here it also saves the relay a socket, a goroutine
// and a round trip per question (in the inbound benchmark, 7% of the
// relay's CPU and two round trips per message). Temporary failures are
// never kept, and an answer with the AD bit is kept apart from one
// without (LookupSecure asks with DO and AD set). Safe for concurrent
// use.
type Cache struct {
	max int
	now func() time.Time

	mu sync.Mutex
	m  map[cacheKey]cacheEntry
}

type cacheKey struct {
	name   string // lower case, fully qualified
	qtype  uint16
	secure bool
}

type cacheEntry struct {
	rrs     []dns.RR // nil for a negative answer
	kind    Kind     // NotFound, NoData, or Temporary for an answer
	ad      bool
	expires time.Time
}

// NewCache returns a cache of at most size answers (size ≤ 0: nil, no
// cache); now is the clock (nil: time.Now).
func NewCache(size int, now func() time.Time) *Cache {
	if size <= 0 {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	return &Cache{max: size, now: now, m: make(map[cacheKey]cacheEntry)}
}

// Len is the number of answers held (expired ones included until they
// are pushed out).
func (c *Cache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

func (c *Cache) get(k cacheKey) (cacheEntry, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.m[k]
	if ok && !c.now().Before(e.expires) {
		delete(c.m, k)
		return e, false
	}
	return e, ok
}

// put keeps the answer to k from r for ttl (0: not at all).
func (c *Cache) put(k cacheKey, e cacheEntry, ttl time.Duration) {
	if ttl <= 0 {
		return
	}
	now := c.now()
	e.expires = now.Add(min(ttl, MaxCacheTTL))
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		// Full: drop what has expired; if that is not a tenth, drop
		// others (map order is random) until a tenth is free. The cost
		// is spread over a tenth of the size in later insertions.
		for key, old := range c.m {
			if !now.Before(old.expires) {
				delete(c.m, key)
			}
		}
		for key := range c.m {
			if len(c.m) < c.max-c.max/10 {
				break
			}
			delete(c.m, key)
		}
	}
	c.m[k] = e
}

func keyOf(fqdn string, qtype uint16, secure bool) cacheKey {
	return cacheKey{name: strings.ToLower(fqdn), qtype: qtype, secure: secure}
}

// answerTTL is how long the answer rrs may be kept: the smallest TTL of
// the records used, the CNAMEs that led to them included.
func answerTTL(r *dns.Msg, rrs []dns.RR) time.Duration {
	ttl := ^uint32(0)
	for _, rr := range r.Answer {
		if h := rr.Header(); h.Rrtype == dns.TypeCNAME || h.Rrtype == rrs[0].Header().Rrtype {
			ttl = min(ttl, h.Ttl)
		}
	}
	return time.Duration(ttl) * time.Second
}

// negativeTTL is how long a NXDOMAIN or NODATA answer may be kept: the
// smaller of the SOA record's TTL and its MINIMUM field (RFC 2308 §5);
// without a SOA in the authority section, not at all.
func negativeTTL(r *dns.Msg) time.Duration {
	for _, rr := range r.Ns {
		if soa, ok := rr.(*dns.SOA); ok {
			return time.Duration(min(soa.Hdr.Ttl, soa.Minttl)) * time.Second
		}
	}
	return 0
}
