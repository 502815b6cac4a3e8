package tlspolicy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// STSMode is the mode of an MTA-STS policy (RFC 8461 §3.2).
type STSMode string

const (
	STSEnforce STSMode = "enforce"
	STSTesting STSMode = "testing"
	STSNone    STSMode = "none"
)

// stsMaxAge caps max_age at one year, as RFC 8461 §3.2 does.
const stsMaxAge = 31557600 * time.Second

// stsMaxBody bounds the policy we read; RFC 8461 §3.3 suggests 64 KiB.
const stsMaxBody = 64 << 10

// STSPolicy is a parsed MTA-STS policy plus what the cache needs. It is
// plain data so that an STSCache can store it anywhere.
type STSPolicy struct {
	Mode   STSMode       `json:"mode"`
	MX     []string      `json:"mx"` // patterns, lower case: "mx1.example.com", "*.example.net"
	MaxAge time.Duration `json:"max_age"`
	// ID is the id of the _mta-sts TXT record the policy was fetched for.
	ID      string    `json:"id"`
	Fetched time.Time `json:"fetched"`
	Expires time.Time `json:"expires"` // Fetched + MaxAge
}

// Match reports whether host is allowed by one of the mx patterns: an
// exact name, or "*.suffix" standing for exactly one more label (RFC 8461
// §4.1).
func (p *STSPolicy) Match(host string) bool {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	for _, pat := range p.MX {
		if suffix, ok := strings.CutPrefix(pat, "*."); ok {
			label, rest, found := strings.Cut(host, ".")
			if found && label != "" && rest == suffix {
				return true
			}
		} else if pat == host {
			return true
		}
	}
	return false
}

// String renders the policy in the policy file format.
func (p *STSPolicy) String() string {
	var b strings.Builder
	b.WriteString("version: STSv1\n")
	fmt.Fprintf(&b, "mode: %s\n", p.Mode)
	for _, mx := range p.MX {
		fmt.Fprintf(&b, "mx: %s\n", mx)
	}
	fmt.Fprintf(&b, "max_age: %d\n", int64(p.MaxAge/time.Second))
	return b.String()
}

// summary is the one-line form for Explain.
func (p *STSPolicy) summary() string {
	return fmt.Sprintf("mode %s, mx %s, max_age %d, id %s", p.Mode, strings.Join(p.MX, " "), int64(p.MaxAge/time.Second), p.ID)
}

// ParseSTSPolicy parses a policy file (RFC 8461 §3.2). Field names and
// values are matched without regard to case, and lines may end in LF or
// CRLF: a sender that refused "Mode: enforce" would deliver in clear what
// the domain wanted protected. Unknown fields are ignored; of repeated
// fields other than mx the first counts. version, mode and max_age are
// required, and at least one mx unless the mode is none.
func ParseSTSPolicy(body string) (*STSPolicy, error) {
	p := &STSPolicy{}
	var haveVersion, haveMode, haveMaxAge bool
	for n, line := range strings.Split(body, "\n") {
		line = strings.TrimSuffix(line, "\r")
		if strings.TrimSpace(line) == "" {
			continue
		}
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("mta-sts policy line %d: no \"key: value\"", n+1)
		}
		key = strings.ToLower(strings.TrimSpace(key))
		val = strings.Trim(val, " \t")
		if !validExtName(key) {
			return nil, fmt.Errorf("mta-sts policy line %d: invalid field name %q", n+1, key)
		}
		switch key {
		case "version":
			if haveVersion {
				continue
			}
			if !strings.EqualFold(val, "STSv1") {
				return nil, fmt.Errorf("mta-sts policy: version %q is not STSv1", val)
			}
			haveVersion = true
		case "mode":
			if haveMode {
				continue
			}
			switch m := STSMode(strings.ToLower(val)); m {
			case STSEnforce, STSTesting, STSNone:
				p.Mode = m
			default:
				return nil, fmt.Errorf("mta-sts policy: unknown mode %q", val)
			}
			haveMode = true
		case "max_age":
			if haveMaxAge {
				continue
			}
			if len(val) == 0 || len(val) > 10 || strings.Trim(val, "0123456789") != "" {
				return nil, fmt.Errorf("mta-sts policy: max_age %q is not 1 to 10 digits", val)
			}
			secs, _ := strconv.ParseInt(val, 10, 64) // 10 digits always fit
			// Cap before converting: 10 digits of seconds overflow a Duration.
			p.MaxAge = time.Duration(min(secs, int64(stsMaxAge/time.Second))) * time.Second
			haveMaxAge = true
		case "mx":
			pat := strings.ToLower(strings.TrimSuffix(val, "."))
			if err := checkName(strings.TrimPrefix(pat, "*.")); err != nil || strings.Contains(strings.TrimPrefix(pat, "*."), "*") {
				return nil, fmt.Errorf("mta-sts policy: mx %q is not a host name or *.domain pattern", val)
			}
			p.MX = append(p.MX, pat)
		}
	}
	switch {
	case !haveVersion:
		return nil, errors.New("mta-sts policy: no version field")
	case !haveMode:
		return nil, errors.New("mta-sts policy: no mode field")
	case !haveMaxAge:
		return nil, errors.New("mta-sts policy: no max_age field")
	case len(p.MX) == 0 && p.Mode != STSNone:
		return nil, errors.New("mta-sts policy: no mx field")
	}
	return p, nil
}

// ParseSTSRecord parses one _mta-sts TXT record (RFC 8461 §3.1) and returns
// its id. The record must start with "v=STSv1" and carry exactly one id of
// 1 to 32 letters and digits; extension fields are checked for syntax and
// ignored.
func ParseSTSRecord(txt string) (id string, err error) {
	fields := strings.Split(txt, ";")
	if strings.TrimRight(fields[0], " \t") != "v=STSv1" {
		return "", fmt.Errorf("mta-sts record %q: does not start with v=STSv1", txt)
	}
	for i, f := range fields[1:] {
		f = strings.Trim(f, " \t")
		if f == "" && i == len(fields)-2 {
			break // one trailing separator is allowed
		}
		name, val, ok := strings.Cut(f, "=")
		if !ok || !validExtName(name) || val == "" {
			return "", fmt.Errorf("mta-sts record %q: bad field %q", txt, f)
		}
		if name == "id" {
			if id != "" {
				return "", fmt.Errorf("mta-sts record %q: more than one id", txt)
			}
			if len(val) > 32 || !isAlnum(val) {
				return "", fmt.Errorf("mta-sts record %q: id %q is not 1 to 32 letters and digits", txt, val)
			}
			id = val
			continue
		}
		for _, c := range []byte(val) {
			if c < 0x21 || c > 0x7e || c == ';' || c == '=' {
				return "", fmt.Errorf("mta-sts record %q: bad value in field %q", txt, f)
			}
		}
	}
	if id == "" {
		return "", fmt.Errorf("mta-sts record %q: no id", txt)
	}
	return id, nil
}

// validExtName follows sts-ext-name and sts-policy-ext-name (RFC 8461
// §3.1, §3.2), which are the same: a letter or digit, then up to 31
// letters, digits, '_', '-' or '.'.
func validExtName(s string) bool {
	if s == "" || len(s) > 32 {
		return false
	}
	for i, c := range []byte(s) {
		alnum := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
		if !alnum && (i == 0 || c != '_' && c != '-' && c != '.') {
			return false
		}
	}
	return true
}

func isAlnum(s string) bool {
	for _, c := range []byte(s) {
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9') {
			return false
		}
	}
	return s != ""
}

// selectSTSRecord applies the discovery rule of RFC 8461 §3.1: records not
// starting with "v=STSv1" are not ours; of the rest there must be exactly
// one, and it must parse.
func selectSTSRecord(txts []string) (string, error) {
	var ours []string
	for _, t := range txts {
		first, _, _ := strings.Cut(t, ";")
		if strings.TrimRight(first, " \t") == "v=STSv1" {
			ours = append(ours, t)
		}
	}
	switch len(ours) {
	case 0:
		return "", errors.New("no TXT record starting with v=STSv1")
	case 1:
		return ParseSTSRecord(ours[0])
	}
	return "", fmt.Errorf("%d TXT records start with v=STSv1; exactly one is allowed", len(ours))
}

// STSCache keeps MTA-STS policies between deliveries, for their max_age.
// It is an interface so that a cluster can share it (Redis, planned);
// MemoryCache is the embedded one. Get returns nil, nil when it has no
// entry; the Decider itself ignores expired entries.
type STSCache interface {
	Get(ctx context.Context, domain string) (*STSPolicy, error)
	Put(ctx context.Context, domain string, p *STSPolicy) error
}

// MemoryCache is an STSCache in memory, bounded in size. Safe for
// concurrent use.
type MemoryCache struct {
	mu  sync.Mutex
	max int
	m   map[string]STSPolicy
}

// NewMemoryCache holds up to max domains (10000 when max <= 0). When full,
// the entry that expires first makes room.
func NewMemoryCache(max int) *MemoryCache {
	if max <= 0 {
		max = 10000
	}
	return &MemoryCache{max: max, m: make(map[string]STSPolicy)}
}

// Get implements STSCache.
func (c *MemoryCache) Get(_ context.Context, domain string) (*STSPolicy, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	p, ok := c.m[domain]
	if !ok {
		return nil, nil
	}
	p.MX = append([]string(nil), p.MX...)
	return &p, nil
}

// Put implements STSCache.
func (c *MemoryCache) Put(_ context.Context, domain string, p *STSPolicy) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[domain]; !ok && len(c.m) >= c.max {
		var victim string
		var first time.Time
		for d, e := range c.m {
			if victim == "" || e.Expires.Before(first) {
				victim, first = d, e.Expires
			}
		}
		delete(c.m, victim)
	}
	v := *p
	v.MX = append([]string(nil), p.MX...)
	c.m[domain] = v
	return nil
}

// Len is the number of cached domains.
func (c *MemoryCache) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

var errRedirect = errors.New("redirects are not followed for MTA-STS policies (RFC 8461 §3.3)")

// fetchSTS gets and parses https://mta-sts.<domain>/.well-known/mta-sts.txt.
// The certificate must be valid for mta-sts.<domain>; the HTTP client's
// TLS settings decide the roots (the system's in production).
func (d *Decider) fetchSTS(ctx context.Context, domain string) (*STSPolicy, error) {
	ctx, cancel := context.WithTimeout(ctx, d.o.STSFetchTimeout)
	defer cancel()
	url := "https://mta-sts." + domain + "/.well-known/mta-sts.txt"
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	resp, err := d.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("fetch %s: HTTP status %s", url, resp.Status)
	}
	// RFC 8461 §3.2: senders SHOULD check the media type, so that a web
	// host that lets users upload files cannot be made to serve a policy.
	if mt, _, err := mime.ParseMediaType(resp.Header.Get("Content-Type")); err != nil || mt != "text/plain" {
		return nil, fmt.Errorf("fetch %s: Content-Type %q is not text/plain", url, resp.Header.Get("Content-Type"))
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, stsMaxBody+1))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	if len(body) > stsMaxBody {
		return nil, fmt.Errorf("fetch %s: policy larger than %d bytes", url, stsMaxBody)
	}
	p, err := ParseSTSPolicy(string(body))
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", url, err)
	}
	return p, nil
}

// stsFlight lets concurrent deliveries to one domain share a fetch.
type stsFlight struct {
	done chan struct{}
	p    *STSPolicy
	err  error
}

// fetchShared is fetchSTS with one fetch per domain at a time; callers
// that join an ongoing fetch wait for it or for their own context.
func (d *Decider) fetchShared(ctx context.Context, domain string) (*STSPolicy, error) {
	d.mu.Lock()
	f, ok := d.flights[domain]
	if !ok {
		f = &stsFlight{done: make(chan struct{})}
		d.flights[domain] = f
		d.mu.Unlock()
		// The fetch outlives a caller that gives up, so that the others
		// still get its result; it has its own timeout.
		go func() {
			f.p, f.err = d.fetchSTS(context.WithoutCancel(ctx), domain)
			d.mu.Lock()
			delete(d.flights, domain)
			d.mu.Unlock()
			close(f.done)
		}()
	} else {
		d.mu.Unlock()
	}
	select {
	case <-f.done:
		if f.p == nil {
			return nil, f.err
		}
		p := *f.p
		p.MX = append([]string(nil), f.p.MX...)
		return &p, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("fetch MTA-STS policy of %s: %w", domain, ctx.Err())
	}
}

// discoverSTS finds the MTA-STS policy for domain (RFC 8461 §3 and §5.1):
// the cached one while its id matches the TXT record, a fresh one when the
// id changed, and the cached one again when the TXT record or the fetch
// fails, since an attacker who can block those must not be able to turn
// the policy off. It returns nil when there is no usable policy, and
// whether the policy was fetched just now.
func (d *Decider) discoverSTS(ctx context.Context, domain string, ex *explainer) (p *STSPolicy, fresh bool) {
	now := d.o.Now()
	cached, err := d.o.Cache.Get(ctx, domain)
	if err != nil {
		ex.add("MTA-STS: cache unavailable (%v)", err)
		cached = nil
	}
	if cached != nil && !now.Before(cached.Expires) {
		ex.add("MTA-STS: cached policy (id %s) expired at %s", cached.ID, cached.Expires.UTC().Format(time.RFC3339))
		cached = nil
	}
	useCached := func(why string) (*STSPolicy, bool) {
		if cached == nil {
			ex.add("MTA-STS: %s; no cached policy, so no MTA-STS policy applies", why)
			return nil, false
		}
		ex.add("MTA-STS: %s; using the cached policy (%s, valid until %s)", why, cached.summary(), cached.Expires.UTC().Format(time.RFC3339))
		return cached, false
	}

	name := "_mta-sts." + domain
	txts, err := d.o.Resolver.LookupTXT(ctx, name)
	if err != nil {
		return useCached(fmt.Sprintf("TXT %s: %s", name, dnsReason(err)))
	}
	id, err := selectSTSRecord(txts)
	if err != nil {
		return useCached(fmt.Sprintf("TXT %s: %v", name, err))
	}
	if cached != nil && cached.ID == id {
		ex.add("MTA-STS: TXT %s id %s unchanged; cached policy (%s, valid until %s)", name, id, cached.summary(), cached.Expires.UTC().Format(time.RFC3339))
		return cached, false
	}
	p, err = d.fetchShared(ctx, domain)
	if err != nil {
		return useCached(fmt.Sprintf("TXT %s id %s, but %v", name, id, err))
	}
	d.stamp(ctx, domain, p, id, now)
	ex.add("MTA-STS: TXT %s id %s; fetched policy: %s", name, id, p.summary())
	return p, true
}

// stamp fills the cache fields of a freshly fetched policy and caches it.
func (d *Decider) stamp(ctx context.Context, domain string, p *STSPolicy, id string, now time.Time) {
	p.ID, p.Fetched, p.Expires = id, now, now.Add(p.MaxAge)
	if err := d.o.Cache.Put(ctx, domain, p); err != nil {
		d.o.Logger.Warn("tlspolicy: caching MTA-STS policy failed", "domain", domain, "error", err)
	}
}
