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
