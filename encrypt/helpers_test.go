package encrypt_test

import (
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/encrypt"
	"securerelay/internal/testutil"
)

// ---- real peer programs ----

func inCI() bool { return os.Getenv("CI") == "true" }

// requireTool skips the test when name is not on PATH, or fails it with
// CI=true (as test/e2e does): CI must prove what the test proves.
func requireTool(tb testing.TB, name, pkg string) {
	tb.Helper()
	if _, err := exec.LookPath(name); err != nil {
		if inCI() {
			tb.Fatalf("%s not found on PATH; install Debian package %s (see test.sh) (CI=true: this is a failure, not a skip)", name, pkg)
		}
		tb.Skipf("%s not found on PATH; install Debian package %s (see test.sh)", name, pkg)
	}
}

// ---- gpg: the keys of the recipients, made by the real program ----

// gpgHome is a GNUPGHOME of its own; its agent is stopped at the end.
type gpgHome struct{ dir string }

func newGPGHome(dir string) *gpgHome { return &gpgHome{dir: dir} }

func (g *gpgHome) cmd(stdin io.Reader, args ...string) *exec.Cmd {
	cmd := exec.Command("gpg", append([]string{"--batch", "--no-tty", "--pinentry-mode", "loopback", "--passphrase", ""}, args...)...)
	cmd.Env = append(os.Environ(), "GNUPGHOME="+g.dir, "LC_ALL=C")
	cmd.Stdin = stdin
	return cmd
}

func (g *gpgHome) run(stdin io.Reader, args ...string) ([]byte, error) {
	var out, errb bytes.Buffer
	cmd := g.cmd(stdin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errb
	if err := cmd.Run(); err != nil {
		return out.Bytes(), fmt.Errorf("gpg %s: %v\n%s", strings.Join(args, " "), err, errb.String())
	}
	return out.Bytes(), nil
}

// genKey makes a primary key and returns its fingerprint; extra options
// (--faked-system-time) go before the command.
func (g *gpgHome) genKey(uid, algo, usage, expire string, extra ...string) (string, error) {
	args := append(append([]string{"--status-fd", "1"}, extra...), "--quick-gen-key", uid, algo, usage, expire)
	out, err := g.run(nil, args...)
	if err != nil {
		return "", err
	}
	for _, l := range strings.Split(string(out), "\n") {
		if f := strings.Fields(l); len(f) == 4 && f[1] == "KEY_CREATED" {
			return f[3], nil
		}
	}
	return "", fmt.Errorf("gpg made no key for %s:\n%s", uid, out)
}

func (g *gpgHome) addKey(fpr, algo, usage, expire string, extra ...string) error {
	_, err := g.run(nil, append(extra, "--quick-add-key", fpr, algo, usage, expire)...)
	return err
}

func (g *gpgHome) export(fpr string) ([]byte, error) { return g.run(nil, "--armor", "--export", fpr) }

func (g *gpgHome) exportBinary(fpr string) ([]byte, error) { return g.run(nil, "--export", fpr) }

func (g *gpgHome) exportSecret(fpr string) ([]byte, error) {
	return g.run(nil, "--armor", "--export-secret-keys", fpr)
}

// revoke imports the revocation certificate gpg stored when it made the
// key, as a user revoking a lost key does.
func (g *gpgHome) revoke(fpr string) error {
	b, err := os.ReadFile(filepath.Join(g.dir, "openpgp-revocs.d", fpr+".rev"))
	if err != nil {
		return err
	}
	// gpg prefixes the armour line with ':' so that the file is not
	// imported by accident.
	cert := strings.Replace(string(b), ":-----BEGIN PGP PUBLIC KEY BLOCK-----", "-----BEGIN PGP PUBLIC KEY BLOCK-----", 1)
	_, err = g.run(strings.NewReader(cert), "--import")
	return err
}

// revokeSubkey revokes the first subkey through gpg's key editor.
func (g *gpgHome) revokeSubkey(fpr string) error {
	_, err := g.run(strings.NewReader("key 1\nrevkey\ny\n0\n\ny\nsave\n"), "--command-fd", "0", "--edit-key", fpr)
	return err
}

func (g *gpgHome) kill() {
	cmd := exec.Command("gpgconf", "--kill", "gpg-agent")
	cmd.Env = append(os.Environ(), "GNUPGHOME="+g.dir)
	_ = cmd.Run()
}

// testKeys are the recipients' keys every test shares, made once per test
// binary by gpg (an RSA-3072 key takes a few seconds).
type testKeys struct {
	home *gpgHome
	// fingerprints
	alice, aliceOld, bob, carol, dave, erin, frank, grace, heidi, org string
}

const (
	addrAlice = "alice@partner.example" // Curve25519 (ed25519 + cv25519)
	addrBob   = "bob@partner.example"   // RSA-3072 + RSA-3072
	addrCarol = "carol@partner.example" // revoked
	addrDave  = "dave@partner.example"  // expired in 2020
	addrErin  = "erin@partner.example"  // signing only
	addrFrank = "frank@other.example"   // valid, but not for partner.example
	addrGrace = "grace@partner.example" // encryption subkey revoked
	addrHeidi = "heidi@partner.example" // encryption subkey expired
	addrOrg   = "relay@sender.example"  // the organisation's signing key
)

var (
	keysOnce sync.Once
	keys     *testKeys
	keysErr  error
	keysDir  string
)

func TestMain(m *testing.M) {
	code := m.Run()
	if keys != nil {
		keys.home.kill()
	}
	if keysDir != "" {
		os.RemoveAll(keysDir)
	}
	os.Exit(code)
}

// getKeys makes (once) and returns the shared keys.
func getKeys(tb testing.TB) *testKeys {
	tb.Helper()
	requireTool(tb, "gpg", "gnupg")
	keysOnce.Do(func() {
		// A short path: gpg-agent's socket lives in the home and socket
		// paths are limited to about 100 bytes.
		keysDir, keysErr = os.MkdirTemp("", "srgpg")
		if keysErr != nil {
			return
		}
		keys, keysErr = makeKeys(newGPGHome(keysDir))
	})
	if keysErr != nil {
		tb.Fatalf("making test keys with gpg: %v", keysErr)
	}
	return keys
}

func makeKeys(g *gpgHome) (*testKeys, error) {
	k := &testKeys{home: g}
	var err error
	step := func(f func() error) {
		if err == nil {
			err = f()
		}
	}
	gen := func(dst *string, uid, algo, usage, expire string, extra ...string) {
		step(func() error {
			var e error
			*dst, e = g.genKey(uid, algo, usage, expire, extra...)
			return e
		})
	}
	past := "--faked-system-time=20200101T000000!"
	gen(&k.alice, "Alice <"+addrAlice+">", "ed25519", "sign,cert", "never")
	step(func() error { return g.addKey(k.alice, "cv25519", "encr", "never") })
	// An older key for the same address, still valid: the newer must win.
	gen(&k.aliceOld, "Alice (old) <"+addrAlice+">", "ed25519", "sign,cert", "never", "--faked-system-time=20230101T000000!")
	step(func() error {
		return g.addKey(k.aliceOld, "cv25519", "encr", "never", "--faked-system-time=20230101T000000!")
	})
	gen(&k.bob, "Bob <"+addrBob+">", "rsa3072", "sign,cert", "never")
	step(func() error { return g.addKey(k.bob, "rsa3072", "encr", "never") })
	gen(&k.carol, "Carol <"+addrCarol+">", "ed25519", "sign,cert", "never")
	step(func() error { return g.addKey(k.carol, "cv25519", "encr", "never") })
	step(func() error { return g.revoke(k.carol) })
	gen(&k.dave, "Dave <"+addrDave+">", "ed25519", "sign,cert", "1y", past)
	step(func() error { return g.addKey(k.dave, "cv25519", "encr", "1y", past) })
	gen(&k.erin, "Erin <"+addrErin+">", "ed25519", "sign,cert", "never")
	gen(&k.frank, "Frank <"+addrFrank+">", "ed25519", "sign,cert", "never")
	step(func() error { return g.addKey(k.frank, "cv25519", "encr", "never") })
	gen(&k.grace, "Grace <"+addrGrace+">", "ed25519", "sign,cert", "never")
	step(func() error { return g.addKey(k.grace, "cv25519", "encr", "never") })
	step(func() error { return g.revokeSubkey(k.grace) })
	gen(&k.heidi, "Heidi <"+addrHeidi+">", "ed25519", "sign,cert", "never", past)
	step(func() error { return g.addKey(k.heidi, "cv25519", "encr", "1y", past) })
	gen(&k.org, "Sender Org <"+addrOrg+">", "ed25519", "sign,cert", "never")
	return k, err
}

func (k *testKeys) armored(tb testing.TB, fpr string) []byte {
	tb.Helper()
	b, err := k.home.export(fpr)
	if err != nil || len(b) == 0 {
		tb.Fatalf("export %s: %v", fpr, err)
	}
	return b
}

func (k *testKeys) binary(tb testing.TB, fpr string) []byte {
	tb.Helper()
	b, err := k.home.exportBinary(fpr)
	if err != nil || len(b) == 0 {
		tb.Fatalf("export %s: %v", fpr, err)
	}
	return b
}

func (k *testKeys) secret(tb testing.TB, fpr string) []byte {
	tb.Helper()
	b, err := k.home.exportSecret(fpr)
	if err != nil || len(b) == 0 {
		tb.Fatalf("export secret %s: %v", fpr, err)
	}
	return b
}

// ---- files ----

func writeFile(tb testing.TB, path string, data []byte) {
	tb.Helper()
	if err := os.WriteFile(path, data, 0o644); err != nil {
		tb.Fatal(err)
	}
}

// ---- clock ----

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock() *clock { return &clock{t: time.Now()} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// ---- HTTPS: a test CA (internal/testutil) and one server for every WKD host ----

type wkdResponse struct {
	status int
	body   []byte
	delay  time.Duration
}

// wkdServer is one HTTPS server playing every host: the certificate is
// picked by SNI (issued by the CA, or self-signed for hosts in selfSigned),
// the answer by host and path.
type wkdServer struct {
	srv *httptest.Server
	ca  *testutil.CA

	mu         sync.Mutex
	answers    map[string]wkdResponse // "host/path"
	selfSigned map[string]bool
	requests   []string // "host/path?query"
}

func newWKDServer(tb testing.TB) *wkdServer {
	tb.Helper()
	w := &wkdServer{ca: testutil.NewCA(tb, "encrypt test CA"), answers: map[string]wkdResponse{}, selfSigned: map[string]bool{}}
	certs := map[string]*tls.Certificate{}
	w.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		w.mu.Lock()
		w.requests = append(w.requests, strings.ToLower(r.Host)+r.URL.RequestURI())
		a, ok := w.answers[strings.ToLower(r.Host)+r.URL.Path]
		w.mu.Unlock()
		if !ok {
			http.NotFound(rw, r)
			return
		}
		if a.delay > 0 {
			select {
			case <-time.After(a.delay):
			case <-r.Context().Done():
				return
			}
		}
		rw.Header().Set("Content-Type", "application/octet-stream")
		rw.WriteHeader(a.status)
		rw.Write(a.body)
	}))
	w.srv.TLS = &tls.Config{GetCertificate: func(h *tls.ClientHelloInfo) (*tls.Certificate, error) {
		name := strings.ToLower(h.ServerName)
		w.mu.Lock()
		defer w.mu.Unlock()
		if c, ok := certs[name]; ok {
			return c, nil
		}
		ca := w.ca
		if w.selfSigned[name] {
			ca = nil
		}
		c := ca.Issue(tb, testutil.CertSpec{Names: []string{name}, LeafOnly: true})
		certs[name] = &c
		return &c, nil
	}}
	w.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	w.srv.StartTLS()
	tb.Cleanup(w.srv.Close)
	return w
}

// serve answers GET https://host+path with status and body.
func (w *wkdServer) serve(host, path string, status int, body []byte) {
	w.mu.Lock()
	w.answers[host+path] = wkdResponse{status: status, body: body}
	w.mu.Unlock()
}

func (w *wkdServer) serveSlow(host, path string, delay time.Duration) {
	w.mu.Lock()
	w.answers[host+path] = wkdResponse{status: 200, delay: delay}
	w.mu.Unlock()
}

func (w *wkdServer) requestLog() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.requests...)
}

// client trusts the test CA and reaches every host at the test server, as
// the relay's client (its resolver, ca_file) reaches the real ones.
func (w *wkdServer) client() *http.Client {
	addr := w.srv.Listener.Addr().String()
	var d net.Dialer
	return &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		TLSClientConfig:   &tls.Config{RootCAs: w.ca.Pool},
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return d.DialContext(ctx, network, addr)
		},
	}}
}

// ---- DNS ----

func newDNS(tb testing.TB, zone string) (*dnstest.Server, *dnsutil.Client) {
	tb.Helper()
	s := dnstest.NewServer(tb, zone)
	return s, dnsutil.New(s.Addr(), 2*time.Second)
}

// ---- directory ----

func newDirectory(tb testing.TB, o encrypt.Options) *encrypt.Directory {
	tb.Helper()
	d, err := encrypt.New(o)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { d.Close() })
	return d
}

// refusedFor returns the reasons given for fingerprint fpr.
func refusedFor(res encrypt.Result, fpr string) []string {
	var out []string
	for _, r := range res.Refused {
		if r.Fingerprint == fpr {
			out = append(out, r.Reason)
		}
	}
	return out
}

func describe(res encrypt.Result) string {
	var b strings.Builder
	if res.Key != nil {
		fmt.Fprintf(&b, "key %s from %s %s; ", res.Key.Fingerprint, res.Key.Source, res.Key.Origin)
	} else {
		b.WriteString("no key; ")
	}
	fmt.Fprintf(&b, "searched %v; temporary %v", res.Searched, res.Temporary)
	for _, r := range res.Refused {
		b.WriteString("\n  refused " + r.String())
	}
	return b.String()
}
