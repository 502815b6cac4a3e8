package e2e

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	msgauth "github.com/emersion/go-msgauth/dkim"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
	"securerelay/internal/nsresolv"
)

// keygen runs `securerelay dkim keygen` and returns the zone entry it
// printed (the line(s) not starting with ';').
func keygen(t *testing.T, dir, selector, alg string) (keyPath, zone string) {
	t.Helper()
	keyPath = filepath.Join(dir, "keys", selector+".key")
	out, errOut, code := runRelayCmd(t, "dkim", "keygen", "--domain", "example.test", "--selector", selector,
		"--algorithm", alg, "--out", keyPath)
	if code != 0 {
		t.Fatalf("dkim keygen %s: exit %d: %s", alg, code, errOut)
	}
	fi, err := os.Stat(keyPath)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("key file %s: %v, mode %v; want 0600", keyPath, err, fi.Mode())
	}
	var lines []string
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasPrefix(l, ";") {
			lines = append(lines, l)
		}
	}
	return keyPath, strings.Join(lines, "\n") + "\n"
}

var txtChunk = regexp.MustCompile(`"([^"]*)"`)

// TestDKIMSigning: keys made with `securerelay dkim keygen` and published
// (as printed) in the test DNS sign mail from an authenticated user to a
// partner's MX with RSA and Ed25519 at once; both signatures verify with
// go-msgauth and with python3-dkim against that DNS. `dkim check` says ok,
// then missing once a record is gone. Mail whose From: is not ours is
// refused; inbound mail is never signed.
func TestDKIMSigning(t *testing.T) {
	requireTool(t, "swaks")
	dir := t.TempDir()
	rsaKey, rsaZone := keygen(t, dir, "s2026", "rsa")
	edKey, edZone := keygen(t, dir, "e2026", "ed25519")
	zone := partnerZone("127.0.0.6") + rsaZone + edZone
	dns := dnstest.NewServer(t, zone)
	mxDown := startTestServer(t, listenMX(t, "127.0.0.6"), serverOptions{})

	mx, sub := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
  - {name: submission, address: %q, role: outbound, trusted_networks: [10.0.0.0/8], auth: optional, allow_insecure_auth: true}
domains:
  example.test:
    deliver_to: "maildir:%s"
    dkim:
      - {selector: s2026, key: %q}
      - {selector: e2026, key: %q}
outbound:
  users: [{name: otrs, password_hash: %q}]
%s`, mx, sub, filepath.Join(dir, "mail"), rsaKey, edKey, bcryptHash(t, "pw"), outboundTimeouts))
	if out, errOut, code := runRelayCmd(t, "check-config", "--config", cfg); code != 0 {
		t.Fatalf("check-config: %s %s", out, errOut)
	}
	r := startRelay(t, cfg, mx, sub)

	res := mustSend(t, "--server", sub, "--auth", "PLAIN", "--auth-user", "otrs", "--auth-password", "pw",
		"--from", "otrs@example.test", "--to", "user@partner.test",
		"--header", "Subject: signed with two keys", "--body", "Gr\xc3\xbc\xc3\x9fe, 8-bit body\n.leading dot\nlast line without newline")
	m := mxDown.WaitMessages(t, 1, 10*time.Second)[0]
	if n := strings.Count(headerSection(m.Data), "DKIM-Signature:"); n != 2 {
		t.Fatalf("%d DKIM-Signature fields, want 2 (RSA and Ed25519):\n%s", n, headerSection(m.Data))
	}

	res2 := dnsutil.New(dns.Addr(), 2*time.Second)
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(m.Data), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) {
			return res2.LookupTXT(context.Background(), name)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, v := range vs {
		if v.Err != nil {
			t.Errorf("go-msgauth: signature by %s failed: %v", v.Domain, v.Err)
			continue
		}
		seen[v.Domain] = true
	}
	if len(vs) != 2 || !seen["example.test"] {
		t.Errorf("go-msgauth verified %d signatures (%v), want 2 for example.test", len(vs), seen)
	}

	// python3-dkim, the verifier the shared harness and many MTAs use.
	if _, err := os.Stat("/usr/bin/python3"); err == nil {
		txt := map[string]string{}
		for sel, z := range map[string]string{"s2026": rsaZone, "e2026": edZone} {
			var parts []string
			for _, c := range txtChunk.FindAllStringSubmatch(z, -1) {
				parts = append(parts, c[1])
			}
			txt[sel+"._domainkey.example.test."] = strings.Join(parts, "")
		}
		msgFile := filepath.Join(dir, "signed.eml")
		os.WriteFile(msgFile, m.Data, 0o600)
		script := `
import sys, dkim
recs = {k.encode(): v.encode() for k, v in (a.split("=", 1) for a in sys.argv[2:])}
def dnsfunc(name, timeout=5):
    return recs.get(name)
msg = open(sys.argv[1], "rb").read()
d = dkim.DKIM(msg)
n = msg.split(b"\r\n\r\n")[0].lower().count(b"\r\ndkim-signature:") + msg.lower().startswith(b"dkim-signature:")
ok = [d.verify(idx=i, dnsfunc=dnsfunc) for i in range(n)]
print(n, ok)
sys.exit(0 if n == 2 and all(ok) else 1)
`
		args := []string{"-c", script, msgFile}
		for k, v := range txt {
			args = append(args, k+"="+v)
		}
		out, err := exec.Command("/usr/bin/python3", args...).CombinedOutput()
		if err != nil {
			if strings.Contains(string(out), "No module named") && !inCI() {
				t.Logf("python3-dkim (or python3-nacl) missing, skipping that verifier: %s", out)
			} else {
				t.Errorf("python3-dkim does not verify both signatures: %v\n%s", err, out)
			}
		}
	} else if inCI() {
		t.Error("/usr/bin/python3 missing")
	}
	verifyWithTools(t, dir, m.Data, rsaZone+edZone)
	r.WaitLog(0, 5*time.Second, "msg=sent", "queue_id="+res.QueueID())

	// A message larger than the signer keeps in memory (256 KiB) is read
	// from the spool a second time to sign it: it must verify just as well.
	big := filepath.Join(dir, "big.txt")
	writeFile(t, big, strings.Repeat("A line of a large message, to be signed from the spool file.\n", 10000))
	mustSend(t, "--server", sub, "--auth", "PLAIN", "--auth-user", "otrs", "--auth-password", "pw",
		"--from", "otrs@example.test", "--to", "user@partner.test",
		"--header", "Subject: large", "--body", "@"+big)
	bm := mxDown.WaitMessages(t, 2, 10*time.Second)[1]
	if len(bm.Data) < 600<<10 {
		t.Fatalf("large message arrived with %d bytes", len(bm.Data))
	}
	if sels := verifiedSelectors(t, bm.Data, dns.Addr()); strings.Join(sels, ",") != "e2026,s2026" {
		t.Errorf("large message: verified selectors %v, want e2026 and s2026", sels)
	}

	// dkim check: both records published and matching; then one missing.
	out, errOut, code := runRelayCmd(t, "dkim", "check", "--config", cfg)
	if code != 0 || strings.Count(out, " ok ") != 2 {
		t.Errorf("dkim check: exit %d\n%s%s", code, out, errOut)
	}
	dns.SetZone(partnerZone("127.0.0.6") + rsaZone)
	out, _, code = runRelayCmd(t, "dkim", "check", "--config", cfg)
	if code == 0 || !regexp.MustCompile(`e2026\s.*\smissing\s`).MatchString(out) {
		t.Errorf("dkim check with the Ed25519 record gone: exit %d\n%s", code, out)
	}

	// From: another domain, authenticated: refused (foreign_from: reject).
	bad := swaks(t, "--server", sub, "--auth", "PLAIN", "--auth-user", "otrs", "--auth-password", "pw",
		"--from", "otrs@example.test", "--to", "user@partner.test", "--header", "From: someone@elsewhere.test")
	if errs := bad.ErrorReplies(); len(errs) == 0 || !strings.HasPrefix(errs[0], "553 5.7.1 ") || !strings.Contains(errs[0], "elsewhere.test") {
		t.Errorf("foreign From: refusals %q, want 553 5.7.1 naming elsewhere.test:\n%s", errs, bad.Out)
	}

	// Inbound mail is not ours to sign.
	in := mustSend(t, "--server", mx, "--from", "alice@example.org", "--to", "bob@example.test")
	r.WaitLog(0, 5*time.Second, "msg=sent", "queue_id="+in.QueueID())
	msgs, _ := filepath.Glob(filepath.Join(dir, "mail", "bob@example.test", "new", "*"))
	if len(msgs) != 1 {
		t.Fatalf("%d messages for bob", len(msgs))
	}
	if b, _ := os.ReadFile(msgs[0]); bytes.Contains(b, []byte("DKIM-Signature:")) {
		t.Errorf("inbound mail was DKIM-signed:\n%s", b)
	}
}

// selectorsOf returns the s= of every DKIM-Signature that verifies.
func verifiedSelectors(t *testing.T, data []byte, dnsAddr string) []string {
	t.Helper()
	res := dnsutil.New(dnsAddr, 2*time.Second)
	vs, err := msgauth.VerifyWithOptions(bytes.NewReader(data), &msgauth.VerifyOptions{
		LookupTXT: func(name string) ([]string, error) { return res.LookupTXT(context.Background(), name) },
	})
	if err != nil {
		t.Fatal(err)
	}
	// go-msgauth reports in header order without the selector: take s=
	// from the DKIM-Signature fields, in the same order.
	hdr := strings.ReplaceAll(strings.ReplaceAll(headerSection(data), "\n\t", " "), "\n ", " ")
	var all []string
	for _, m := range regexp.MustCompile(`(?mi)^DKIM-Signature:.*?;\s*s=([^;\s]+)`).FindAllStringSubmatch(hdr, -1) {
		all = append(all, m[1])
	}
	if len(all) != len(vs) {
		t.Fatalf("%d signatures, %d selectors found in:\n%s", len(vs), len(all), hdr)
	}
	var sels []string
	for i, v := range vs {
		if v.Err != nil {
			t.Errorf("signature %s failed: %v", all[i], v.Err)
			continue
		}
		sels = append(sels, all[i])
	}
	sort.Strings(sels)
	return sels
}

// TestDKIMRotation follows the README's rotation steps: `dkim rotate` makes
// the next key, which signs nothing while inactive; `dkim check` reports
// it once its record is published; after the switch (and a reload, no
// restart) the new selector signs and the old one no longer does.
func TestDKIMRotation(t *testing.T) {
	requireTool(t, "swaks")
	dir := t.TempDir()
	oldKey, oldZone := keygen(t, dir, "old", "rsa")
	dns := dnstest.NewServer(t, partnerZone("127.0.0.6")+oldZone)
	mxDown := startTestServer(t, listenMX(t, "127.0.0.6"), serverOptions{})
	mx, sub := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "relay.yaml")
	write := func(keys string) {
		writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`listeners:
  - {name: mx, address: %q, role: inbound}
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8]}
domains:
  example.test:
    dkim:
%s
outbound:
%s`, mx, sub, keys, outboundTimeouts))
	}
	write(fmt.Sprintf("      - {selector: old, key: %q}", oldKey))
	r := startRelay(t, cfg, mx, sub)
	n := 0
	send := func() []string {
		t.Helper()
		mustSend(t, "--server", sub, "--from", "otrs@example.test", "--to", "user@partner.test")
		n++
		return verifiedSelectors(t, mxDown.WaitMessages(t, n, 10*time.Second)[n-1].Data, dns.Addr())
	}
	if got := send(); strings.Join(got, ",") != "old" {
		t.Fatalf("before rotation: signed by %v", got)
	}

	out, errOut, code := runRelayCmd(t, "dkim", "rotate", "--config", cfg, "--domain", "example.test", "--selector", "new")
	if code != 0 {
		t.Fatalf("dkim rotate: exit %d: %s", code, errOut)
	}
	newKey := filepath.Join(filepath.Dir(oldKey), "example.test.new.key")
	if _, err := os.Stat(newKey); err != nil || !strings.Contains(out, "active: false") {
		t.Fatalf("dkim rotate did not make %s or print the steps: %v\n%s", newKey, err, out)
	}
	var zone []string
	for _, l := range strings.Split(out, "\n") {
		if l != "" && !strings.HasPrefix(l, ";") {
			zone = append(zone, l)
		}
	}
	// Step 2: known but inactive; not published yet, then published.
	write(fmt.Sprintf("      - {selector: old, key: %q}\n      - {selector: new, key: %q, active: false}", oldKey, newKey))
	mark := r.Mark()
	r.Signal(syscall.SIGHUP)
	r.WaitLog(mark, 5*time.Second, "configuration reloaded")
	if out, _, code := runRelayCmd(t, "dkim", "check", "--config", cfg); code == 0 || !regexp.MustCompile(`new\s+rsa-sha256\s+no\s.*missing`).MatchString(out) {
		t.Errorf("dkim check before publishing: exit %d\n%s", code, out)
	}
	dns.SetZone(partnerZone("127.0.0.6") + oldZone + strings.Join(zone, "\n") + "\n")
	if out, _, code := runRelayCmd(t, "dkim", "check", "--config", cfg); code != 0 || !regexp.MustCompile(`new\s+rsa-sha256\s+no\s.*\sok\s`).MatchString(out) {
		t.Errorf("dkim check after publishing: exit %d\n%s", code, out)
	}
	if got := send(); strings.Join(got, ",") != "old" {
		t.Errorf("inactive key signed: %v", got)
	}
	// Step 3: switch, reload.
	write(fmt.Sprintf("      - {selector: old, key: %q, active: false}\n      - {selector: new, key: %q}", oldKey, newKey))
	mark = r.Mark()
	r.Signal(syscall.SIGHUP)
	r.WaitLog(mark, 5*time.Second, "configuration reloaded")
	if got := send(); strings.Join(got, ",") != "new" {
		t.Errorf("after the switch: signed by %v, want new", got)
	}
}

// verifyWithTools checks each signature of a message the test MX received
// with the real dkimverify (python3-dkim) and opendkim-testmsg (OpenDKIM),
// which find the keys through /etc/resolv.conf: they run in a private mount
// namespace whose resolv.conf names a test DNS server on 127.53.1.1:53.
func verifyWithTools(t *testing.T, dir string, msg []byte, zone string) {
	t.Helper()
	verifyDKIMTools(t, dir, msg, zone, "8-bit body", "8-bit b0dy")
}

// verifyDKIMTools is verifyWithTools whose negative control replaces
// the body text old with new (same length) and must then fail.
func verifyDKIMTools(t *testing.T, dir string, msg []byte, zone, old, new string) {
	t.Helper()
	if !bytes.Contains(msg, []byte(old)) {
		t.Fatalf("%q is not in the message: the negative control would prove nothing", old)
	}
	for _, tool := range []string{"dkimverify", "opendkim-testmsg", "unshare"} {
		requireTool(t, tool)
	}
	if _, ok := dnstest.NewServerPort53(t, "127.53.1.1", zone); !ok {
		skipOrFail(t, "cannot bind 127.53.1.1:53 for the DNS the verifiers use (not root?)")
		return
	}
	// opendkim-testmsg reports one verdict per message: give it one
	// signature at a time (a DKIM-Signature field is not covered by the
	// other signature, so removing one leaves the other intact).
	sigRe := regexp.MustCompile(`(?m)^DKIM-Signature:.*\r\n(?:[ \t].*\r\n)*`)
	sigs := sigRe.FindAll(msg, -1)
	if len(sigs) != 2 {
		t.Fatalf("%d DKIM-Signature fields", len(sigs))
	}
	var script strings.Builder
	script.WriteString("set -e\n")
	whole := filepath.Join(dir, "tools-whole.eml")
	os.WriteFile(whole, msg, 0o600)
	for i := range sigs {
		fmt.Fprintf(&script, "dkimverify --index %d < %q\n", i, whole)
		only := bytes.Replace(msg, sigs[1-i], nil, 1)
		f := filepath.Join(dir, fmt.Sprintf("tools-only%d.eml", i))
		os.WriteFile(f, only, 0o600)
		fmt.Fprintf(&script, "opendkim-testmsg < %q\n", f)
	}
	// A negative control: one body byte changed must fail.
	bad := bytes.Replace(msg, []byte(old), []byte(new), 1)
	badFile := filepath.Join(dir, "tools-bad.eml")
	os.WriteFile(badFile, bad, 0o600)
	fmt.Fprintf(&script, "if dkimverify --index 0 < %q; then echo 'tampered copy verified'; exit 1; fi\n", badFile)
	out, err := nsresolv.Run(dir, "127.53.1.1", script.String())
	if errors.Is(err, nsresolv.ErrNoNamespace) {
		skipOrFail(t, "%v", err)
		return
	}
	if err != nil {
		t.Errorf("dkimverify/opendkim-testmsg on the message received at the MX: %v\n%s", err, out)
	}
	if n := strings.Count(string(out), "signature ok"); n != 2 {
		t.Errorf("dkimverify said \"signature ok\" %d times, want 2:\n%s", n, out)
	}
}
