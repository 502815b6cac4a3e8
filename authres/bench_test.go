package authres

import (
	"context"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/base64"
	"strings"
	"testing"

	"securerelay/dnsutil"
	"securerelay/dnsutil/dnstest"
)

// bench4K is a 4 KiB message (header about 250 octets, body text).
func bench4K() string {
	m := message("Alice <alice@example.com>")
	line := "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod.\r\n"
	var b strings.Builder
	b.WriteString(m)
	for b.Len()+len(line) <= 4096 {
		b.WriteString(line)
	}
	return b.String()
}

// bench136K is a 136 KiB message as issue 15 measured it: a text part
// and a PDF-sized attachment in base64 (76-octet lines), so that body
// canonicalization, not the signature, dominates.
func bench136K() string {
	m := message("Alice <alice@example.com>")
	hdr, _, _ := strings.Cut(m, "\r\n\r\n")
	var b strings.Builder
	b.WriteString(hdr + "\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n\r\n")
	b.WriteString("--b1\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n")
	for range 40 {
		b.WriteString("Lorem ipsum dolor sit amet,  consectetur adipiscing elit, sed do eiusmod. \r\n")
	}
	b.WriteString("\r\n--b1\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n")
	raw := make([]byte, 99*1024)
	for i := range raw {
		raw[i] = byte(i*7 + i>>8)
	}
	enc := base64.StdEncoding.EncodeToString(raw)
	for len(enc) > 76 {
		b.WriteString(enc[:76] + "\r\n")
		enc = enc[76:]
	}
	b.WriteString(enc + "\r\n--b1--\r\n")
	return b.String()
}

// memResolver answers from memory: the cost of Check itself, as with a
// warm resolver cache.
func memResolver(b *testing.B) dnsutil.Resolver {
	rk, ek := testKeys(b)
	der, err := x509.MarshalPKIXPublicKey(&rk.PublicKey)
	if err != nil {
		b.Fatal(err)
	}
	return dnstest.Mock{TXT: map[string][]string{
		"rsa._domainkey.example.com": {"v=DKIM1; k=rsa; p=" + base64.StdEncoding.EncodeToString(der)},
		"ed._domainkey.example.com":  {"v=DKIM1; k=ed25519; p=" + base64.StdEncoding.EncodeToString(ek.Public().(ed25519.PublicKey))},
		"_dmarc.example.com":         {"v=DMARC1; p=reject"},
		"esp.example.net":            {"v=spf1 ip4:192.0.2.0/24 -all"},
	}}
}

// BenchmarkCheck: DKIM verification and DMARC for a 4 KiB signed
// message, SPF already done (as at MAIL FROM). "mem" answers DNS from
// memory, "loopback" asks the test DNS server over UDP on 127.0.0.1
// (two queries: the key and the DMARC record). The "/136K" cases take
// bench136K's message instead.
func BenchmarkCheck(b *testing.B) {
	for _, size := range []struct{ suffix, msg string }{{"", bench4K()}, {"/136K", bench136K()}} {
		benchCheck(b, size.suffix, size.msg)
	}
}

func benchCheck(b *testing.B, suffix, msg string) {
	spf := SPFResult{Result: Pass, Identity: "bounce@esp.example.net", Domain: "esp.example.net"}
	srv := dnstest.NewServer(b, testZone(b))
	resolvers := []struct {
		name string
		r    dnsutil.Resolver
	}{{"mem", memResolver(b)}, {"loopback", dnsutil.New(srv.Addr(), 0)}}
	for _, res := range resolvers {
		for _, s := range []signer{rsaSigner(b, "example.com"), edSigner(b, "example.com")} {
			signed := sign(b, msg, s)
			c := New(Options{AuthServID: testID, Resolver: res.r})
			b.Run(res.name+"/"+s.selector+suffix, func(b *testing.B) {
				b.ReportAllocs()
				b.SetBytes(int64(len(signed)))
				for b.Loop() {
					v, err := c.Check(context.Background(), addr(ipIn), testHelo, "bounce@esp.example.net", &spf, strings.NewReader(signed))
					if err != nil || v.DMARC[0].Result != Pass {
						b.Fatalf("%v %+v", err, v)
					}
				}
			})
		}
	}
}

// BenchmarkSPF: one SPF evaluation with a single TXT lookup from memory.
func BenchmarkSPF(b *testing.B) {
	c := New(Options{AuthServID: testID, Resolver: memResolver(b)})
	b.ReportAllocs()
	for b.Loop() {
		if r := c.SPF(context.Background(), addr(ipIn), testHelo, "bounce@esp.example.net"); r.Result != Pass {
			b.Fatal(r)
		}
	}
}
