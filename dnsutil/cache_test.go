package dnsutil_test

import (
	"sync"
	"testing"
	"time"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
)

// fakeClock is a settable clock for the cache.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (f *fakeClock) now() time.Time { f.mu.Lock(); defer f.mu.Unlock(); return f.t }
func (f *fakeClock) add(d time.Duration) {
	f.mu.Lock()
	f.t = f.t.Add(d)
	f.mu.Unlock()
}

const cacheZone = `
$ORIGIN example.org.
@        SOA   ns hostmaster 1 3600 600 86400 30
@        MX    10 mx1
mx1      A     192.0.2.10
short 5  TXT   "five seconds"
alias 20 CNAME txt
txt 300  TXT   "v=spf1 -all"
`

func cachedClient(t *testing.T, size int) (*dnstest.Server, *dnsutil.Client, *fakeClock) {
	t.Helper()
	srv := dnstest.NewServer(t, cacheZone)
	clk := &fakeClock{t: time.Unix(1_800_000_000, 0)}
	c := dnsutil.New(srv.Addr(), testTimeout)
	c.Cache = dnsutil.NewCache(size, clk.now)
	return srv, c, clk
}

func asked(srv *dnstest.Server, name, typ string) int {
	n := 0
	for _, q := range srv.Queries() {
		if q.Name == name && q.Type == typ {
			n++
		}
	}
	return n
}

func TestCacheKeepsAnswersForTheirTTL(t *testing.T) {
	srv, c, clk := cachedClient(t, 100)
	for range 3 {
		if txt, err := c.LookupTXT(t.Context(), "short.example.org"); err != nil || len(txt) != 1 || txt[0] != "five seconds" {
			t.Fatalf("TXT %q, %v", txt, err)
		}
	}
	if n := asked(srv, "short.example.org", "TXT"); n != 1 {
		t.Fatalf("asked %d times in the TTL, want 1", n)
	}
	// The answer changes at the server; the cache says the old one until
	// the TTL has run out, then asks again.
	srv.SetZone(`short.example.org. 5 TXT "changed"`)
	clk.add(4 * time.Second)
	if txt, _ := c.LookupTXT(t.Context(), "short.example.org"); len(txt) != 1 || txt[0] != "five seconds" {
		t.Errorf("within the TTL: %q", txt)
	}
	clk.add(time.Second)
	if txt, _ := c.LookupTXT(t.Context(), "short.example.org"); len(txt) != 1 || txt[0] != "changed" {
		t.Errorf("after the TTL: %q, want the new answer", txt)
	}
	if n := asked(srv, "short.example.org", "TXT"); n != 2 {
		t.Errorf("asked %d times, want 2", n)
	}
}

func TestCacheUsesTheSmallestTTLOfACNAMEChain(t *testing.T) {
	srv, c, clk := cachedClient(t, 100)
	for range 2 {
		if txt, err := c.LookupTXT(t.Context(), "alias.example.org"); err != nil || len(txt) != 1 {
			t.Fatalf("TXT %q, %v", txt, err)
		}
	}
	clk.add(20 * time.Second) // the CNAME's TTL, not the target's 300 s
	c.LookupTXT(t.Context(), "alias.example.org")
	if n := asked(srv, "alias.example.org", "TXT"); n != 2 {
		t.Errorf("asked %d times, want 2 (the CNAME's 20 s TTL ended)", n)
	}
}

func TestCacheNegativeAnswers(t *testing.T) {
	srv, c, clk := cachedClient(t, 100)
	for range 2 {
		if _, err := c.LookupTXT(t.Context(), "nothing.example.org"); !dnsutil.IsNotFound(err) {
			t.Fatalf("NXDOMAIN: %v", err)
		}
		if _, err := c.LookupTXT(t.Context(), "mx1.example.org"); !dnsutil.IsNoData(err) {
			t.Fatalf("NODATA: %v", err)
		}
	}
	if a, b := asked(srv, "nothing.example.org", "TXT"), asked(srv, "mx1.example.org", "TXT"); a != 1 || b != 1 {
		t.Errorf("asked %d and %d times, want once each", a, b)
	}
	// RFC 2308: min(SOA TTL 3600, MINIMUM 30).
	clk.add(30 * time.Second)
	c.LookupTXT(t.Context(), "nothing.example.org")
	if n := asked(srv, "nothing.example.org", "TXT"); n != 2 {
		t.Errorf("asked %d times after the negative TTL, want 2", n)
	}
}

func TestCacheKeepsNoTemporaryFailure(t *testing.T) {
	srv, c, _ := cachedClient(t, 100)
	srv.ServFail("broken.example.org")
	for range 2 {
		if _, err := c.LookupTXT(t.Context(), "broken.example.org"); !dnsutil.IsTemporary(err) {
			t.Fatalf("SERVFAIL: %v", err)
		}
	}
	if n := asked(srv, "broken.example.org", "TXT"); n != 2 {
		t.Errorf("asked %d times, want 2: a SERVFAIL must not be kept", n)
	}
}

func TestCacheKeepsSecureAnswersApart(t *testing.T) {
	srv, c, _ := cachedClient(t, 100)
	srv.Validate(dnstest.Signed("example.org"))
	if _, err := c.LookupTXT(t.Context(), "txt.example.org"); err != nil {
		t.Fatal(err)
	}
	// The plain answer (asked without DO) must not stand in for a
	// validated one, nor the other way round.
	for range 2 {
		_, ad, err := c.LookupSecure(t.Context(), "txt.example.org", 16)
		if err != nil || !ad {
			t.Fatalf("LookupSecure: ad=%v, %v", ad, err)
		}
	}
	srv.Validate(nil)
	if _, ad, _ := c.LookupSecure(t.Context(), "txt.example.org", 16); !ad {
		t.Errorf("the cached validated answer lost its AD bit")
	}
	if n := asked(srv, "txt.example.org", "TXT"); n != 2 {
		t.Errorf("asked %d times, want 2 (one plain, one secure)", n)
	}
}

func TestCacheIsBounded(t *testing.T) {
	_, c, _ := cachedClient(t, 10)
	for i := range 50 {
		c.LookupTXT(t.Context(), "txt.example.org")
		c.LookupTXT(t.Context(), "n"+string(rune('a'+i%26))+string(rune('a'+i/26))+".example.org")
	}
	if n := c.Cache.Len(); n > 10 {
		t.Errorf("%d answers held, want at most 10", n)
	}
}

func TestNewCacheZeroIsOff(t *testing.T) {
	if dnsutil.NewCache(0, nil) != nil {
		t.Error("size 0 made a cache")
	}
}
