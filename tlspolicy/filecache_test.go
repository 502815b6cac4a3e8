package tlspolicy_test

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"securerelay/tlspolicy"
)

// Policies survive a restart (RFC 8461 §5: a sender that forgets them can
// be made to skip MTA-STS by blocking the next fetch); expired ones do
// not; a damaged file is an error, not an empty cache.
func TestFileCache(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "mta-sts.json")
	now := time.Now()
	c, err := tlspolicy.NewFileCache(path, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	live := &tlspolicy.STSPolicy{Mode: tlspolicy.STSEnforce, MX: []string{"mx1.bank.example", "*.bank.example"},
		MaxAge: 24 * time.Hour, ID: "20261201", Fetched: now, Expires: now.Add(24 * time.Hour)}
	old := &tlspolicy.STSPolicy{Mode: tlspolicy.STSEnforce, MX: []string{"mx.old.example"},
		MaxAge: time.Hour, ID: "1", Fetched: now.Add(-2 * time.Hour), Expires: now.Add(-time.Hour)}
	for d, p := range map[string]*tlspolicy.STSPolicy{"bank.example": live, "old.example": old} {
		if err := c.Put(ctx, d, p); err != nil {
			t.Fatal(err)
		}
	}

	again, err := tlspolicy.NewFileCache(path, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	got, err := again.Get(ctx, "bank.example")
	if err != nil || got == nil || got.Mode != tlspolicy.STSEnforce || got.ID != "20261201" || len(got.MX) != 2 ||
		!got.Expires.Equal(live.Expires) {
		t.Errorf("after reopening: %+v, %v; want %+v", got, err, live)
	}
	if got, _ := again.Get(ctx, "old.example"); got != nil {
		t.Errorf("an expired policy came back: %+v", got)
	}

	os.WriteFile(path, []byte("{not json"), 0o600)
	if _, err := tlspolicy.NewFileCache(path, 0, now); err == nil {
		t.Error("a damaged cache file loaded without error")
	}
}
