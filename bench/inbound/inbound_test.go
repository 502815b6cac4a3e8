package main

import (
	"bytes"
	"context"
	"fmt"
	mrand "math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	gomilter "github.com/d--j/go-milter"
	"github.com/emersion/go-msgauth/dkim"
	"github.com/miekg/dns"

	"securerelay/dnsutil"
)

// startZone serves dir's zone.txt on a free loopback port for the test,
// with the tool's own zone server rather than dnsutil/dnstest: the
// benchmark runs that server outside go test, and this checks the zone as
// the benchmark serves it.
func startZone(t *testing.T, dir string) string {
	t.Helper()
	text, err := os.ReadFile(filepath.Join(dir, "zone.txt"))
	if err != nil {
		t.Fatal(err)
	}
	s, err := newZoneServer(string(text))
	if err != nil {
		t.Fatal(err)
	}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", pc.LocalAddr().String())
	if err != nil {
		t.Skipf("no TCP port beside UDP %s: %v", pc.LocalAddr(), err)
	}
	for _, srv := range []*dns.Server{{PacketConn: pc, Handler: s}, {Listener: l, Handler: s}} {
		go srv.ActivateAndServe() //nolint:errcheck // ends with Shutdown
		t.Cleanup(func() { srv.Shutdown() })
	}
	return pc.LocalAddr().String()
}

// The generated messages must pass DKIM against the generated zone, and
// the zone must make both relays' checks pass: what the benchmark's
// verification step then confirms end to end.
func TestGeneratedMessagesVerify(t *testing.T) {
	dir := t.TempDir()
	if err := gen(dir); err != nil {
		t.Fatal(err)
	}
	addr := startZone(t, dir)
	res := dnsutil.New(addr, 2*time.Second)
	ctx := context.Background()
	msgs, err := loadMessages(dir, []string{"text", "pdf"})
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		raw := append(append(append([]byte{}, m.pre...), "test.1"...), m.post...)
		vs, err := dkim.VerifyWithOptions(bytes.NewReader(raw), &dkim.VerifyOptions{
			LookupTXT: func(name string) ([]string, error) { return res.LookupTXT(ctx, name) },
		})
		if err != nil || len(vs) != 1 || vs[0].Err != nil || vs[0].Domain != senderDomain {
			t.Errorf("%s: DKIM %v %+v", m.kind, err, vs)
		}
		if bytes.Contains(raw, []byte("\n.")) || bytes.Contains(bytes.ReplaceAll(raw, []byte("\r\n"), nil), []byte("\n")) {
			t.Errorf("%s: a line starts with a dot or ends in a bare LF", m.kind)
		}
	}
	if len(msgs[0].pre)+len(msgs[0].post) > 6000 || len(msgs[1].pre)+len(msgs[1].post) < 100000 {
		t.Errorf("sizes %d and %d: want about 5 KB and 130 KB", len(msgs[0].pre)+len(msgs[0].post), len(msgs[1].pre)+len(msgs[1].post))
	}

	if mx, err := res.LookupMX(ctx, senderDomain); err != nil || len(mx) != 1 || mx[0].Host != senderHost {
		t.Errorf("MX %v %v", mx, err)
	}
	for name, want := range map[string]string{senderDomain: "v=spf1 ip4:127.0.0.0/8 -all", "_dmarc." + senderDomain: "v=DMARC1; p=reject"} {
		if txt, err := res.LookupTXT(ctx, name); err != nil || len(txt) != 1 || !strings.HasPrefix(txt[0], want) {
			t.Errorf("TXT %s: %q %v", name, txt, err)
		}
	}
	// The client is not listed; the RFC 5782 test address is.
	if _, err := res.LookupHost(ctx, "1.0.0.127."+dnsblZone); !dnsutil.IsNotFound(err) {
		t.Errorf("client on the DNSBL: %v", err)
	}
	if a, err := res.LookupHost(ctx, "2.0.0.127."+dnsblZone); err != nil || len(a) != 1 || a[0].String() != "127.0.0.2" {
		t.Errorf("test entry %v %v", a, err)
	}
	// NXDOMAIN carries the SOA whose minimum (1 h) postscreen caches.
	m := new(dns.Msg)
	m.SetQuestion("1.0.0.127."+dnsblZone+".", dns.TypeA)
	r, err := dns.Exchange(m, addr)
	if err != nil || r.Rcode != dns.RcodeNameError || len(r.Ns) != 1 || r.Ns[0].(*dns.SOA).Minttl != 3600 {
		t.Errorf("negative answer %v %v", r, err)
	}
	counts, err := dnsCounts(addr)
	if err != nil || counts["dkim/TXT"] != 2 || counts["dnsbl/A"] < 2 || counts["sender/MX"] != 1 {
		t.Errorf("counts %v %v", counts, err)
	}
}

// Every cross-reference offset of the PDF points at its object, as a
// scanner that parses the file expects.
func TestPDFStructure(t *testing.T) {
	pdf := makePDF(mrand.New(mrand.NewPCG(1, 2)))
	m := regexp.MustCompile(`startxref\n(\d+)\n%%EOF\n$`).FindSubmatch(pdf)
	if m == nil {
		t.Fatalf("no startxref at the end: %q", pdf[len(pdf)-60:])
	}
	off, _ := strconv.Atoi(string(m[1]))
	xref := string(pdf[off:])
	if !strings.HasPrefix(xref, "xref\n0 12\n") {
		t.Fatalf("xref %q", xref[:20])
	}
	for i, line := range strings.Split(xref, "\n")[3:14] {
		o, _ := strconv.Atoi(line[:10])
		if want := fmt.Sprintf("%d 0 obj\n", i+1); !bytes.HasPrefix(pdf[o:], []byte(want)) {
			t.Errorf("object %d at %d: %q", i+1, o, pdf[o:o+12])
		}
	}
}

func TestDotStuff(t *testing.T) {
	for _, c := range []struct {
		in    string
		start bool
		want  string
	}{
		{".a\r\nb\r\n.c\r\n", true, "..a\r\nb\r\n..c\r\n"},
		{".a\r\n", false, ".a\r\n"}, // the middle of a line
		{"a.b\r\n..\r\n", true, "a.b\r\n...\r\n"},
	} {
		if got := string(dotStuff([]byte(c.in), c.start)); got != c.want {
			t.Errorf("dotStuff(%q, %v) = %q, want %q", c.in, c.start, got, c.want)
		}
	}
}

func TestPercentiles(t *testing.T) {
	var ds []time.Duration
	for i := 100; i >= 1; i-- {
		ds = append(ds, time.Duration(i)*time.Millisecond)
	}
	if got := percentiles(ds); got != [3]float64{50, 90, 99} {
		t.Errorf("percentiles of 1..100 ms = %v", got)
	}
	if got := percentiles([]time.Duration{7 * time.Millisecond}); got != [3]float64{7, 7, 7} {
		t.Errorf("one sample: %v", got)
	}
}

func TestMilterForm(t *testing.T) {
	dir := t.TempDir()
	if err := gen(dir); err != nil {
		t.Fatal(err)
	}
	msgs, err := loadMessages(dir, []string{"text"})
	if err != nil {
		t.Fatal(err)
	}
	mm, err := milterForm(msgs[0], rcptAddr(3), "r1.42")
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, f := range mm.fields {
		names[f[0]] = f[1]
		if strings.Contains(f[1], "\r") {
			t.Errorf("%s: CR in a milter header value %q", f[0], f[1])
		}
	}
	if mm.fields[0][0] != "Received" || !strings.Contains(mm.fields[0][1], "for <user04@"+rcptDomain+">") {
		t.Errorf("first field %q", mm.fields[0])
	}
	if names["Message-ID"] != "<r1.42@"+senderHost+">" || !strings.HasPrefix(names["DKIM-Signature"], "a=rsa-sha256") ||
		!strings.Contains(names["DKIM-Signature"], "\n ") {
		t.Errorf("fields %q", names)
	}
	if !bytes.HasPrefix(mm.body, []byte("Hello team,\r\n")) {
		t.Errorf("body starts %q", mm.body[:20])
	}
}

// The scanners-alone client hands each milter the header as the milters
// before it left it, as an MTA's chain does.
func TestApplyHeaderMods(t *testing.T) {
	fields := [][2]string{{"Received", "a"}, {"Subject", "hi"}, {"X-A", "1"}, {"x-a", "2"}}
	got := applyHeaderMods(fields, []gomilter.ModifyAction{
		{Type: gomilter.ActionAddHeader, HeaderName: "X-Spam-Status", HeaderValue: " No,\r\n\tscore=1"},
		{Type: gomilter.ActionInsertHeader, HeaderIndex: 0, HeaderName: "X-First", HeaderValue: "f"},
		{Type: gomilter.ActionChangeHeader, HeaderIndex: 2, HeaderName: "X-A", HeaderValue: ""},
		{Type: gomilter.ActionChangeHeader, HeaderIndex: 1, HeaderName: "subject", HeaderValue: "[SPAM] hi"},
	})
	want := [][2]string{{"X-First", "f"}, {"Received", "a"}, {"Subject", "[SPAM] hi"}, {"X-A", "1"}, {"X-Spam-Status", "No,\n\tscore=1"}}
	if !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if len(fields) != 4 || fields[1][1] != "hi" {
		t.Errorf("the message's own fields changed: %q", fields)
	}
}
