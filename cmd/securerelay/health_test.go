package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
)

func TestReadyz(t *testing.T) {
	free := int64(10 << 20)
	h := &health{spoolDir: t.TempDir(), minFree: 5 << 20, freeSpace: func() (int64, error) { return free, nil }}
	get := func(path string) (int, string) {
		rec := httptest.NewRecorder()
		h.handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		b, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(b)
	}
	if code, body := get("/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz: %d %q", code, body)
	}
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "listeners not serving") {
		t.Errorf("/readyz before the listeners serve: %d %q", code, body)
	}
	h.ready.Store(true)
	if code, body := get("/readyz"); code != 200 || body != "ready\n" {
		t.Errorf("/readyz: %d %q", code, body)
	}
	free = 1 << 20
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "below queue.min_free_space") {
		t.Errorf("/readyz with the disk nearly full: %d %q", code, body)
	}
	free = 10 << 20
	h.spoolDir = filepath.Join(t.TempDir(), "gone")
	if code, body := get("/readyz"); code != 503 || !strings.Contains(body, "spool not writable") {
		t.Errorf("/readyz without a writable spool: %d %q", code, body)
	}
	h.close()
	h.spoolDir = t.TempDir()
	if code, _ := get("/readyz"); code != 503 {
		t.Errorf("/readyz after close: %d", code)
	}
}

// /metrics is served beside the health paths when metrics are on, from a
// registry of our own (with the Go and process collectors), and only then.
func TestMetricsPath(t *testing.T) {
	m := newMetrics()
	m.observeMilter("rspamd", "accept", 0)
	for _, tc := range []struct {
		h    http.Handler
		code int
	}{{m.handler(), 200}, {nil, 404}} {
		h := &health{spoolDir: t.TempDir(), metrics: tc.h}
		rec := httptest.NewRecorder()
		h.handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
		b, _ := io.ReadAll(rec.Result().Body)
		if rec.Code != tc.code {
			t.Fatalf("GET /metrics: %d, want %d", rec.Code, tc.code)
		}
		if tc.code != 200 {
			continue
		}
		for _, want := range []string{`securerelay_milter_verdicts_total{milter="rspamd",verdict="accept"} 1`, "go_goroutines", "process_"} {
			if !strings.Contains(string(b), want) {
				t.Errorf("/metrics lacks %q", want)
			}
		}
	}
}
