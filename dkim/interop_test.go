package dkim

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"

	"securerelay/dnsutil/dnstest"
	"securerelay/internal/nsresolv"
)

// The interop tests hand signed messages to verifiers that share no code
// with go-msgauth: dkimverify (python3-dkim, dkimpy) and opendkim-testmsg
// (libopendkim). Both look keys up in DNS through /etc/resolv.conf, so the
// test runs a DNS server on 127.53.0.x:53 (loopback only) serving the key
// records as a zone file would (ZoneEntry, parsed by miekg/dns) and runs
// the verifiers in a private mount namespace where /etc/resolv.conf is
// bind-mounted to point at it. Nothing leaves the machine.
//
// That needs root (port 53, unshare, mount). Without it, python3-dkim is
// still exercised through its library API with a dnsfunc serving the same
// records, and the OpenDKIM check is skipped (a failure under CI=true).

// interopJob is one verifier run on one file.
type interopJob struct {
	desc    string // case description for failures
	file    string
	index   int    // dkimverify --index: which signature (0 = top)
	valid   bool   // expected outcome
	wantOut string // if set, the output must contain it
}

type interopCase struct {
	name  string
	msg   []byte // with signatures
	sigs  []string
	body  string // the message without signatures
	valid bool
}

// interopCases signs every message variant with RSA, Ed25519 and both,
// in both canonicalizations, plus tampered messages that must fail (a
// second From, a second Subject: over-signed) and one that must pass (an
// added X-Foo, not signed).
func interopCases(t *testing.T) ([]interopCase, map[string]string) {
	rsaK, edK, _ := testKeys(t)
	z := zone(t, rsaK, edK)
	var cases []interopCase
	add := func(name string, keys []Key, o Options, msg, prefix string, valid bool) {
		sigs, err := Sign(strings.NewReader(msg), keys, o)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		// prefix is a field added after signing, between the signatures
		// and the original header, as a later hop would prepend it.
		cases = append(cases, interopCase{
			name: name, sigs: sigs, body: prefix + msg, valid: valid,
			msg: []byte(strings.Join(sigs, "") + prefix + msg),
		})
	}
	variants := messageVariants()
	names := make([]string, 0, len(variants))
	for n := range variants {
		names = append(names, n)
	}
	sort.Strings(names)
	keysets := map[string][]Key{"rsa": {rsaK}, "ed25519": {edK}, "dual": {rsaK, edK}}
	for _, can := range []string{"relaxed", "simple"} {
		o := Options{HeaderCanonicalization: can, BodyCanonicalization: can}
		for _, ks := range []string{"rsa", "ed25519", "dual"} {
			for _, n := range names {
				add(fmt.Sprintf("%s-%s-%s", ks, can, n), keysets[ks], o, variants[n], "", true)
			}
			add(fmt.Sprintf("%s-%s-tampered-from", ks, can), keysets[ks], o, simpleMsg, "From: mallory@evil.example\r\n", false)
			add(fmt.Sprintf("%s-%s-tampered-subject", ks, can), keysets[ks], o, simpleMsg, "Subject: Pay now\r\n", false)
			add(fmt.Sprintf("%s-%s-added-x-foo", ks, can), keysets[ks], o, simpleMsg, "X-Foo: bar\r\n", true)
		}
	}
	return cases, z
}

// writeCases writes each case, and for dual-signed cases each signature
// alone, to dir; it returns the jobs for a verifier that checks one
// signature index per run (dkimverify) and for one that checks the whole
// message per run (opendkim-testmsg, which reports one result for all
// signatures, so each signature also gets a file of its own).
//
// Two libopendkim behaviours shape the opendkim jobs, neither about the
// signatures: it refuses mixed line endings as a syntax error (the
// signature fields end in CRLF, the lf-only message in LF), so that
// message goes to it consistently in LF and in CRLF (as SMTP carries it);
// and it refuses a message with two To fields as violating RFC 5322 §3.6,
// which the test expects.
func writeCases(t *testing.T, dir string, cases []interopCase) (perIndex, perFile []interopJob) {
	write := func(name string, b []byte) string {
		f := filepath.Join(dir, name)
		if err := os.WriteFile(f, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return f
	}
	for i, c := range cases {
		base := fmt.Sprintf("%03d-%s", i, c.name)
		f := write(base+".eml", c.msg)
		for idx := range c.sigs {
			perIndex = append(perIndex, interopJob{desc: fmt.Sprintf("%s signature %d", c.name, idx), file: f, index: idx, valid: c.valid})
		}
		type variant struct {
			desc string
			msg  []byte
		}
		vs := []variant{{c.name, c.msg}}
		if len(c.sigs) > 1 {
			for idx, s := range c.sigs {
				vs = append(vs, variant{fmt.Sprintf("%s signature %d alone", c.name, idx), []byte(s + c.body)})
			}
		}
		for k, v := range vs {
			job := interopJob{desc: v.desc, valid: c.valid}
			if strings.Contains(c.name, "duplicate-to") {
				job.valid, job.wantOut = false, "Syntax error"
			}
			if hasBareLF(v.msg) {
				lf := bytes.ReplaceAll(v.msg, []byte("\r\n"), []byte("\n"))
				crlf := bytes.ReplaceAll(lf, []byte("\n"), []byte("\r\n"))
				j1, j2 := job, job
				j1.desc, j1.file = v.desc+" (all LF)", write(fmt.Sprintf("%s-%d-lf.eml", base, k), lf)
				j2.desc, j2.file = v.desc+" (all CRLF)", write(fmt.Sprintf("%s-%d-crlf.eml", base, k), crlf)
				perFile = append(perFile, j1, j2)
				continue
			}
			job.file = write(fmt.Sprintf("%s-%d.eml", base, k), v.msg)
			perFile = append(perFile, job)
		}
	}
	return perIndex, perFile
}

func hasBareLF(b []byte) bool {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return true
		}
	}
	return false
}

// startDNS serves the key records, as ZoneEntry writes them, with the
// shared test DNS server (dnsutil/dnstest, which truncates UDP answers as
// a real server does) on 127.53.0.x:53, UDP and TCP: the tools find a
// resolver only through /etc/resolv.conf, which has no port.
func startDNS(t *testing.T, z map[string]string) (string, *dnstest.Server, error) {
	var zone strings.Builder
	for name, txt := range z {
		sel, domain, _ := strings.Cut(name, "._domainkey.")
		zone.WriteString(ZoneEntry(domain, sel, txt) + "\n")
	}
	for i := 1; i <= 20; i++ {
		ip := fmt.Sprintf("127.53.0.%d", i)
		if s, ok := dnstest.NewServerPort53(t, ip, zone.String()); ok {
			return ip, s, nil
		}
	}
	return "", nil, errors.New("none of 127.53.0.1-20 has port 53 free (UDP and TCP), or binding it needs root")
}

// errNoNamespace: this host cannot run a private mount namespace (not
// root, unshare forbidden by a seccomp profile, …).
var errNoNamespace = nsresolv.ErrNoNamespace

// inNamespace runs script with sh in a private mount namespace whose
// /etc/resolv.conf names the test DNS server at ip.
func inNamespace(t *testing.T, dir, ip, script string) error {
	out, err := nsresolv.Run(dir, ip, script)
	if err != nil && !errors.Is(err, nsresolv.ErrNoNamespace) {
		return fmt.Errorf("namespace script: %v: %s", err, out)
	}
	return err
}

// runJobs writes one shell line per job (command < file, exit status to
// a file), runs them all in one namespace, and checks the statuses.
func runJobs(t *testing.T, dir, ip string, jobs []interopJob, command func(interopJob) string) {
	// Eight at a time: python startup dominates dkimverify's run time.
	var script strings.Builder
	for i, j := range jobs {
		fmt.Fprintf(&script, "(%s < %q > %q 2>&1; echo $? > %q) &\n",
			command(j), j.file, filepath.Join(dir, fmt.Sprintf("job%d.out", i)), filepath.Join(dir, fmt.Sprintf("job%d.rc", i)))
		if i%8 == 7 {
			script.WriteString("wait\n")
		}
	}
	script.WriteString("wait\n")
	if err := inNamespace(t, dir, ip, script.String()); err != nil {
		if errors.Is(err, errNoNamespace) {
			if os.Getenv("CI") == "true" {
				t.Fatalf("%v (CI runs as root and must be able to)", err)
			}
			t.Skipf("%v; skipping", err)
		}
		t.Fatal(err)
	}
	passed, failed := 0, 0
	for i, j := range jobs {
		rcText, err := os.ReadFile(filepath.Join(dir, fmt.Sprintf("job%d.rc", i)))
		if err != nil {
			t.Fatalf("%s: no exit status: %v", j.desc, err)
		}
		out, _ := os.ReadFile(filepath.Join(dir, fmt.Sprintf("job%d.out", i)))
		rc, _ := strconv.Atoi(strings.TrimSpace(string(rcText)))
		if (rc == 0) != j.valid || !strings.Contains(string(out), j.wantOut) {
			failed++
			t.Errorf("%s: exit %d, want valid=%v: %s", j.desc, rc, j.valid, strings.TrimSpace(string(out)))
		} else {
			passed++
		}
	}
	t.Logf("%d runs as expected, %d not", passed, failed)
}

func interopSetup(t *testing.T) (dir string, cases []interopCase, z map[string]string) {
	cases, z = interopCases(t)
	return t.TempDir(), cases, z
}

// TestInteropDkimverify: python3-dkim's dkimverify CLI, each signature by
// --index, key records from the test DNS server.
func TestInteropDkimverify(t *testing.T) {
	dkimverify := requireTool(t, "dkimverify")
	dir, cases, z := interopSetup(t)
	perIndex, _ := writeCases(t, dir, cases)
	ip, dnsSrv, err := startDNS(t, z)
	if err != nil {
		t.Logf("cannot serve DNS on port 53 (%v); using the python3-dkim library with a dnsfunc instead", err)
		dkimpyLibrary(t, dir, perIndex, z)
		return
	}
	if err := inNamespace(t, dir, ip, "true\n"); errors.Is(err, errNoNamespace) {
		t.Logf("%v; using the python3-dkim library with a dnsfunc instead", err)
		dkimpyLibrary(t, dir, perIndex, z)
		return
	}
	runJobs(t, dir, ip, perIndex, func(j interopJob) string {
		return fmt.Sprintf("%s --index %d", dkimverify, j.index)
	})
	checkQueries(t, dnsSrv)
}

// checkQueries shows the verifiers really looked the keys up.
func checkQueries(t *testing.T, s *dnstest.Server) {
	var udp, tcp int
	for _, q := range s.Queries() {
		if q.Net == "udp" {
			udp++
		} else {
			tcp++
		}
	}
	t.Logf("DNS queries: %d UDP, %d TCP", udp, tcp)
	if udp == 0 {
		t.Error("no DNS query reached the test server")
	}
}

// TestInteropDkimpyLibrary runs python3-dkim's library API with a dnsfunc
// on every signature, so the no-root fallback of TestInteropDkimverify is
// itself tested.
func TestInteropDkimpyLibrary(t *testing.T) {
	requireTool(t, "dkimverify") // same package, python3-dkim
	dir, cases, z := interopSetup(t)
	perIndex, _ := writeCases(t, dir, cases)
	dkimpyLibrary(t, dir, perIndex, z)
}

// dkimpyLibrary is the fallback without root: dkim.verify from the same
// python3-dkim, DNS answered by a dnsfunc from the zone.
func dkimpyLibrary(t *testing.T, dir string, jobs []interopJob, z map[string]string) {
	type pyJob struct {
		File  string `json:"file"`
		Index int    `json:"index"`
	}
	var pj []pyJob
	for _, j := range jobs {
		pj = append(pj, pyJob{j.file, j.index})
	}
	in, _ := json.Marshal(map[string]any{"zone": z, "jobs": pj})
	const py = `
import json, sys, dkim
d = json.load(sys.stdin)
zone = {k.lower(): v.encode() for k, v in d["zone"].items()}
def dnsfunc(name, timeout=5):
    n = name.decode() if isinstance(name, bytes) else name
    return zone.get(n.rstrip(".").lower())
res = []
for j in d["jobs"]:
    msg = open(j["file"], "rb").read()
    try:
        res.append(bool(dkim.DKIM(msg).verify(idx=j["index"], dnsfunc=dnsfunc)))
    except Exception as e:
        res.append(False)
print(json.dumps(res))
`
	// /usr/bin/python3: python3-dkim is a Debian package, not visible to
	// a python3 from pyenv or a venv earlier in PATH.
	cmd := exec.Command("/usr/bin/python3", "-c", py)
	cmd.Stdin = strings.NewReader(string(in))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("python3-dkim: %v", err)
	}
	var res []bool
	if err := json.Unmarshal(out, &res); err != nil || len(res) != len(jobs) {
		t.Fatalf("python3-dkim output %q: %v", out, err)
	}
	for i, j := range jobs {
		if res[i] != j.valid {
			t.Errorf("%s: verified=%v, want %v", j.desc, res[i], j.valid)
		}
	}
}

// TestInteropOpenDKIM: libopendkim through opendkim-testmsg (no output and
// exit 0 when the message verifies), per message and per signature.
func TestInteropOpenDKIM(t *testing.T) {
	testmsg := requireTool(t, "opendkim-testmsg")
	if out, err := exec.Command(requireTool(t, "opendkim"), "-V").CombinedOutput(); err != nil || !strings.Contains(string(out), "ed25519-sha256") {
		t.Errorf("opendkim -V does not list ed25519-sha256 (%v): %s", err, out)
	}
	dir, cases, z := interopSetup(t)
	_, perFile := writeCases(t, dir, cases)
	ip, dnsSrv, err := startDNS(t, z)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("cannot serve DNS on port 53: %v", err)
		}
		t.Skipf("cannot serve DNS on port 53 (%v); skipping", err)
	}
	runJobs(t, dir, ip, perFile, func(interopJob) string {
		return fmt.Sprintf("%s -t %q", testmsg, dir)
	})
	checkQueries(t, dnsSrv)
}
