package outbound

import (
	"crypto/tls"
	"io"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
)

type nopClient struct{ quits chan struct{} }

func (c nopClient) extension(string) (bool, string)           { return false, "" }
func (c nopClient) startTLS(*tls.Config) error                { return nil }
func (c nopClient) tlsState() *tls.ConnectionState            { return nil }
func (c nopClient) auth(sasl.Client) error                    { return nil }
func (c nopClient) mail(string, mailParams) error             { return nil }
func (c nopClient) rcpt(string, rcptParams) error             { return nil }
func (c nopClient) data(io.Reader, []string) ([]error, error) { return nil, nil }
func (c nopClient) reset() error                              { return nil }
func (c nopClient) quit()                                     { c.quits <- struct{}{} }
func (c nopClient) abort()                                    {}

// A destination is forgotten once nobody delivers to it and its last idle
// session has been closed, so the table does not grow with every domain
// ever written to.
func TestDestinationsAreForgotten(t *testing.T) {
	e := NewEngine(EngineOptions{IdleTimeout: 20 * time.Millisecond}, &Router{})
	d := e.dest("smtp:a.test:25")
	e.releaseDest(d)
	if len(e.dests) != 0 {
		t.Fatalf("unused destination kept: %v", e.dests)
	}

	d = e.dest("smtp:b.test:25")
	c := nopClient{quits: make(chan struct{}, 1)}
	e.release(d, &pooled{cl: c, relay: "b"})
	e.releaseDest(d)
	e.mu.Lock()
	n := len(e.dests)
	e.mu.Unlock()
	if n != 1 {
		t.Fatalf("destination with an idle session dropped early: %d entries", n)
	}
	select {
	case <-c.quits:
	case <-time.After(5 * time.Second):
		t.Fatal("idle session never closed")
	}
	e.mu.Lock()
	n = len(e.dests)
	e.mu.Unlock()
	if n != 0 {
		t.Fatalf("destination kept after its idle session closed: %d entries", n)
	}
}
