package e2e

import (
	"fmt"
	"net/http"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"securerelay/dnsutil/dnstest"
	"securerelay/internal/testutil"
)

// TestMetrics scrapes /metrics, runs a scripted set of sessions, scrapes
// again and checks that each counter moved by exactly what the sessions
// did: on the MX listener one message accepted and delivered (maildir)
// and two refused at RCPT by two different checks (unknown_recipient,
// relay); on the submission listener one message the partner's server
// takes (DKIM-signed with example.test's one key), one it defers (451)
// and one it refuses (550), which is bounced, its DSN delivered to the
// sender's maildir. Then the delivery-delay histogram's
// count, the queue gauge (the deferred message is the only one left) and
// the TLS outcome of the configured rule for partner.test.
func TestMetrics(t *testing.T) {
	requireTool(t, "swaks")
	peer := testutil.StartPeer(t, testutil.PeerOptions{Rcpt: func(to string) error {
		switch {
		case strings.HasPrefix(to, "soft@"):
			return &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 2, 0}, Message: "mailbox busy, try later"}
		case strings.HasPrefix(to, "hard@"):
			return &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"}
		}
		return nil
	}})
	dir := t.TempDir()
	edKey, _ := keygen(t, dir, "e2026", "ed25519")
	dns := dnstest.NewServer(t, "example.org. A 192.0.2.1\n")
	mx, sub, metricsAddr := freeAddr(t), freeAddr(t), freeAddr(t)
	mail := filepath.Join(dir, "mail")
	cfg := filepath.Join(dir, "relay.yaml")
	writeFile(t, cfg, configHead(filepath.Join(dir, "state"), dns.Addr())+fmt.Sprintf(`metrics: {address: %q}
queue: {retry: [1h]}
listeners:
  - {name: mx, address: %q, role: inbound}
  - {name: submission, address: %q, role: outbound, trusted_networks: [127.0.0.0/8], auth: "off"}
domains:
  example.test:
    deliver_to: "maildir:%s"
    recipients: {list: [bob, alice]}
    dkim: [{selector: e2026, key: %q}]
outbound:
  routes:
    - {match: partner.test, next_hop: "smtp://%s"}
  tls:
    policies:
      - {match: partner.test, level: may}
%s`, metricsAddr, mx, sub, mail, edKey, peer.Addr, outboundTimeouts))
	r := startRelay(t, cfg, mx, sub, metricsAddr)

	before := scrape(t, metricsAddr)
	mark := r.Mark()

	mustSend(t, "--server", mx, "--from", "carol@elsewhere.test", "--to", "bob@example.test")
	for _, to := range []string{"nobody@example.test", "someone@foreign.test"} {
		if res := swaks(t, "--server", mx, "--from", "carol@elsewhere.test", "--to", to); res.Code == 0 {
			t.Fatalf("mail to %s accepted:\n%s", to, res.Out)
		}
	}
	mustSend(t, "--server", sub, "--from", "alice@example.test", "--to", "ok@partner.test")
	mustSend(t, "--server", sub, "--from", "alice@example.test", "--to", "soft@partner.test")
	mustSend(t, "--server", sub, "--from", "alice@example.test", "--to", "hard@partner.test")
	waitMaildir(t, mail, "bob@example.test", 1, 30*time.Second)
	waitMaildir(t, mail, "alice@example.test", 1, 30*time.Second) // the DSN
	r.WaitLog(mark, 30*time.Second, "msg=deferred", "to=soft@partner.test")
	r.WaitLog(mark, 30*time.Second, "msg=sent", "to=ok@partner.test")
	// The DSN's own delivery is logged after the file is in the maildir.
	r.WaitLog(mark, 30*time.Second, "msg=sent", "to=alice@example.test")

	after := scrape(t, metricsAddr)
	counters := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"securerelay_messages_accepted_total", map[string]string{"listener": "mx"}, 1},
		{"securerelay_messages_accepted_total", map[string]string{"listener": "submission"}, 3},
		{"securerelay_refusals_total", map[string]string{"listener": "mx", "check": "unknown_recipient", "code": "550"}, 1},
		{"securerelay_refusals_total", map[string]string{"listener": "mx", "check": "relay", "code": "554"}, 1},
		{"securerelay_refusals_total", map[string]string{"listener": "submission"}, 0},
		{"securerelay_sessions_total", map[string]string{"listener": "mx"}, 3},
		{"securerelay_sessions_total", map[string]string{"listener": "mx", "verdict": "pass"}, 1},
		{"securerelay_sessions_total", map[string]string{"listener": "mx", "verdict": "cached"}, 2},
		{"securerelay_sessions_total", map[string]string{"listener": "submission", "verdict": "pass"}, 3},
		{"securerelay_deliveries_total", map[string]string{"origin": "inbound", "status": "sent"}, 1},
		{"securerelay_deliveries_total", map[string]string{"origin": "outbound", "status": "sent"}, 1},
		{"securerelay_deliveries_total", map[string]string{"origin": "outbound", "status": "deferred"}, 1},
		{"securerelay_deliveries_total", map[string]string{"origin": "outbound", "status": "bounced"}, 1},
		{"securerelay_deliveries_total", map[string]string{"origin": "local", "status": "sent"}, 1},
		{"securerelay_deliveries_total", nil, 5},
		// Signed when a recipient was accepted: only ok@partner.test
		// (maildir and refused transactions are not signed).
		{"securerelay_dkim_signatures_total", nil, 1},
	}
	for _, c := range counters {
		if got := sum(after, c.name, c.labels) - sum(before, c.name, c.labels); got != c.want {
			t.Errorf("%s%v moved by %v, want %v\nbefore:\n%s\nafter:\n%s", c.name, c.labels, got, c.want,
				dump(before, c.name), dump(after, c.name))
		}
	}
	// A histogram: one observation per final result (not the deferral).
	hist := func(fams map[string]*dto.MetricFamily, labels map[string]string) uint64 {
		var n uint64
		for _, m := range matching(fams, "securerelay_delivery_delay_seconds", labels) {
			n += m.GetHistogram().GetSampleCount()
		}
		return n
	}
	for _, c := range []struct {
		labels map[string]string
		want   uint64
	}{
		{map[string]string{"origin": "outbound", "status": "bounced"}, 1},
		{map[string]string{"origin": "inbound", "status": "sent"}, 1},
		{nil, 4},
	} {
		if got := hist(after, c.labels) - hist(before, c.labels); got != c.want {
			t.Errorf("securerelay_delivery_delay_seconds%v count moved by %d, want %d\n%s", c.labels, got, c.want,
				dump(after, "securerelay_delivery_delay_seconds"))
		}
	}
	// Gauges: only the deferred message is left in the spool.
	if g := gauge(t, after, "securerelay_queue_messages"); g != 1 {
		t.Errorf("securerelay_queue_messages = %v, want 1 (the deferred message)", g)
	}
	if g := gauge(t, after, "securerelay_queue_oldest_age_seconds"); g <= 0 || g > 120 {
		t.Errorf("securerelay_queue_oldest_age_seconds = %v, want the deferred message's age", g)
	}
	// Every session to the partner was checked against its rule; how
	// many there were depends on the pool, so at least one per message.
	rule := map[string]string{"rule": "partner.test", "source": "rule", "required": "may", "achieved": "none", "result": "ok"}
	if got := sum(after, "securerelay_tls_sessions_total", rule) - sum(before, "securerelay_tls_sessions_total", rule); got < 1 {
		t.Errorf("securerelay_tls_sessions_total%v moved by %v, want at least 1\n%s", rule, got, dump(after, "securerelay_tls_sessions_total"))
	}
	// The Go and process collectors of the private registry.
	for _, name := range []string{"go_goroutines", "process_resident_memory_bytes"} {
		if after[name] == nil {
			t.Errorf("%s missing from /metrics", name)
		}
	}
}

// scrape reads /metrics in the Prometheus text format.
func scrape(t *testing.T, addr string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("GET /metrics: %s", resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// matching returns the metrics of family name whose labels include all
// of labels.
func matching(fams map[string]*dto.MetricFamily, name string, labels map[string]string) []*dto.Metric {
	var out []*dto.Metric
	f := fams[name]
	if f == nil {
		return nil
	}
next:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, lp := range m.GetLabel() {
			have[lp.GetName()] = lp.GetValue()
		}
		for k, v := range labels {
			if have[k] != v {
				continue next
			}
		}
		out = append(out, m)
	}
	return out
}

// sum adds the counters of family name that carry labels.
func sum(fams map[string]*dto.MetricFamily, name string, labels map[string]string) float64 {
	var n float64
	for _, m := range matching(fams, name, labels) {
		n += m.GetCounter().GetValue()
	}
	return n
}

func gauge(t *testing.T, fams map[string]*dto.MetricFamily, name string) float64 {
	t.Helper()
	ms := matching(fams, name, nil)
	if len(ms) != 1 {
		t.Fatalf("%s: %d series, want 1", name, len(ms))
	}
	return ms[0].GetGauge().GetValue()
}

// dump prints a family for a failure message.
func dump(fams map[string]*dto.MetricFamily, name string) string {
	var lines []string
	for _, m := range matching(fams, name, nil) {
		var ls []string
		for _, lp := range m.GetLabel() {
			ls = append(ls, lp.GetName()+"="+lp.GetValue())
		}
		lines = append(lines, fmt.Sprintf("  {%s} counter=%v count=%d", strings.Join(ls, ","), m.GetCounter().GetValue(), m.GetHistogram().GetSampleCount()))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n")
}
