package main

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"
)

// health serves /healthz and /readyz on the metrics listener (loopback
// only, off unless metrics.address is set), for a load balancer, systemd
// or a monitoring check.
type health struct {
	ready     atomic.Bool // listeners bound and serving; false from shutdown on
	spoolDir  string
	minFree   int64
	freeSpace func() (int64, error)
	metrics   http.Handler // /metrics (metrics.go); nil: none
	srv       *http.Server
}

// problems lists why the relay is not ready to take mail, or nothing.
func (h *health) problems() []string {
	var out []string
	if !h.ready.Load() {
		out = append(out, "listeners not serving (starting or shutting down)")
	}
	// The spool must take a new file: what a message needs first.
	if f, err := os.CreateTemp(h.spoolDir, ".readyz-*"); err != nil {
		out = append(out, "spool not writable: "+err.Error())
	} else {
		f.Close()
		os.Remove(f.Name())
	}
	if h.minFree > 0 {
		free, err := h.freeSpace()
		switch {
		case err != nil:
			out = append(out, "free space unknown: "+err.Error())
		case free < h.minFree:
			out = append(out, fmt.Sprintf("free space %d bytes on the spool's file system, below queue.min_free_space %d: new mail gets 452 4.3.1", free, h.minFree))
		}
	}
	return out
}

func (h *health) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if p := h.problems(); len(p) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			fmt.Fprintln(w, "not ready: "+strings.Join(p, "; "))
			return
		}
		fmt.Fprintln(w, "ready")
	})
	if h.metrics != nil {
		mux.Handle("GET /metrics", h.metrics)
	}
	return mux
}

// start listens on addr; the error is the listener's.
func (h *health) start(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("metrics.address: %w", err)
	}
	h.srv = &http.Server{Handler: h.handler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := h.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "metrics listener:", err)
		}
	}()
	return nil
}

func (h *health) close() {
	h.ready.Store(false)
	if h.srv != nil {
		h.srv.Close()
	}
}
