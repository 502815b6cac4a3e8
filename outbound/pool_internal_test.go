package outbound

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"testing"
	"time"

	"securerelay/internal/testutil"
	"securerelay/tlspolicy"
)

// handshake runs a real TLS handshake over loopback with a server whose
// certificate names only name, and returns the client's view of it and
// roots that trust that certificate.
func handshake(t *testing.T, name string) (*tls.ConnectionState, *x509.CertPool) {
	t.Helper()
	cert := testutil.SelfSigned(t, name)
	srvCfg := testutil.ServerTLS(cert)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	done := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		done <- tls.Server(c, srvCfg).Handshake()
	}()
	conn, err := net.DialTimeout("tcp", ln.Addr().String(), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	tc := tls.Client(conn, &tls.Config{InsecureSkipVerify: true})
	if err := tc.Handshake(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	cs := tc.ConnectionState()
	roots := x509.NewCertPool()
	roots.AddCert(cert.Leaf)
	return &cs, roots
}

// reuse checks the live session, not only the key: a session whose key
// matches a transaction (as if a field the check depends on were missing
// from policyKey) is still refused when its certificate does not meet
// that transaction's host policy, and stays pooled for the ones it does.
func TestReuseChecksTheLiveSession(t *testing.T) {
	cs, roots := handshake(t, "a.corp.test")
	d, err := tlspolicy.New(tlspolicy.Options{RootCAs: roots,
		Rules: []tlspolicy.Rule{{Match: ".corp.test", Level: tlspolicy.Secure}}})
	if err != nil {
		t.Fatal(err)
	}
	e := NewEngine(EngineOptions{IdleTimeout: time.Minute, TLS: d}, &Router{})
	defer e.Close()
	ctx := context.Background()
	tg := Target{Kind: KindSMTP, Addr: "127.0.0.1:25"}
	ds := e.dest(tg.Key())
	defer e.releaseDest(ds)
	const key = "the same key for both"
	p := &pooled{cl: nopClient{quits: make(chan struct{}, 1)}, relay: "gw", host: "127.0.0.1", key: key,
		tls: sessionTLS{offered: true, cs: cs, info: "TLS"}}
	e.release(ds, p)

	polB, err := d.DecideRelay(ctx, "b.corp.test", false, false)
	if err != nil {
		t.Fatal(err)
	}
	if got := e.reuse(ctx, ds, tg, polB, key, false); got != nil {
		t.Fatalf("a session whose certificate names only a.corp.test was handed out for b.corp.test (outcome %q)", got.outcome)
	}
	polA, err := d.DecideRelay(ctx, "a.corp.test", false, false)
	if err != nil {
		t.Fatal(err)
	}
	got := e.reuse(ctx, ds, tg, polA, key, false)
	if got != p {
		t.Fatal("the session was lost for a.corp.test, which it meets")
	}
	if got.hp == nil || got.hp.Domain != "a.corp.test" {
		t.Errorf("reused with host policy %+v, want a.corp.test's", got.hp)
	}
}

// A session in clear text is not reused where a new one would use
// STARTTLS, unless it is in clear text because the handshake failed.
func TestReuseKeepsOpportunisticTLS(t *testing.T) {
	e := NewEngine(EngineOptions{IdleTimeout: time.Minute, StartTLS: true}, &Router{})
	defer e.Close()
	ctx := context.Background()
	tg := Target{Kind: KindSMTP, Addr: "127.0.0.1:25"}
	ds := e.dest(tg.Key())
	defer e.releaseDest(ds)
	pol, err := e.tls.Load().d.DecideRelay(ctx, "127.0.0.1", false, false)
	if err != nil {
		t.Fatal(err)
	}
	clear := &pooled{cl: nopClient{quits: make(chan struct{}, 1)}, relay: "gw", host: "127.0.0.1", key: "k",
		tls: sessionTLS{offered: true}}
	e.release(ds, clear)
	if got := e.reuse(ctx, ds, tg, pol, "k", false); got != nil {
		t.Fatal("a clear-text session was reused at level may although the server offers STARTTLS")
	}
	clear.tls.clearByFallback = true
	if got := e.reuse(ctx, ds, tg, pol, "k", false); got != clear {
		t.Fatal("a session in clear text after a failed handshake was not reused")
	}
}
