package main

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"securerelay/inbound"
	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/smtpd"
	"securerelay/tlspolicy"
)

// metrics is /metrics on the metrics listener: a registry of its own
// (nothing a library registers globally leaks in). The packages keep no
// Prometheus types: what they count already (smtpd's refusals, the hold
// spool's removals, the DKIM signer) is read at scrape time, so a count
// and its log line come from one place; events the packages only log
// (each recipient's result in queue.logResult, each TLS check, each
// milter's answer) come through their Observe hooks. Labels stay bounded:
// listener, check and milter names from the configuration, fixed words,
// reply codes, and the match of a configured TLS rule; never an address
// or a queue ID.
type metrics struct {
	reg *prometheus.Registry

	deliveries *prometheus.CounterVec
	delay      *prometheus.HistogramVec
	encryption *prometheus.CounterVec
	tls        *prometheus.CounterVec
	milter     *prometheus.CounterVec
	milterTime *prometheus.HistogramVec

	// Read at scrape time; set before the listener starts.
	servers []*smtpd.Server
	q       *queue.Queue
	signer  *outbound.Signer
	now     func() time.Time
}

func newMetrics() *metrics {
	m := &metrics{reg: prometheus.NewRegistry(), now: time.Now}
	m.deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "securerelay_deliveries_total",
		Help: "Delivery attempts per recipient, by the message's origin and the recipient's status after it, as logged (sent, deferred, bounced, held).",
	}, []string{"origin", "status"})
	m.delay = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "securerelay_delivery_delay_seconds",
		Help:    "Time from a message's arrival to a recipient's final result (sent, bounced, held), by origin and status.",
		Buckets: []float64{0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 5 * 24 * 3600},
	}, []string{"origin", "status"})
	m.encryption = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "securerelay_encryption_fallback_total",
		Help: "Recipient attempts under an encrypting TLS rule (OpenPGP fallback or encrypt: always), by status: sent means delivered encrypted, deferred mostly no key yet.",
	}, []string{"status"})
	m.tls = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "securerelay_tls_sessions_total",
		Help: "Outbound sessions checked against their TLS policy (a new connection, or a pooled one for a new transaction), by level required and achieved, what decided the level, the matching policy rule (\"\" when none), and result (ok, failed, encrypt_fallback).",
	}, []string{"required", "achieved", "source", "rule", "result"})
	m.milter = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "securerelay_milter_verdicts_total",
		Help: "Milter answers on inbound messages, by milter and verdict (accept, reject, tempfail, error).",
	}, []string{"milter", "verdict"})
	m.milterTime = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "securerelay_milter_duration_seconds",
		Help:    "Time from sending a milter the message to its answer.",
		Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
	}, []string{"milter"})
	m.reg.MustRegister(m.deliveries, m.delay, m.encryption, m.tls, m.milter, m.milterTime,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		scraped{m})
	return m
}

func (m *metrics) handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{Registry: m.reg})
}

// The hooks for the packages' options: nil when metrics are off, so that
// the packages skip the call.
func (m *metrics) queueHook() func(queue.Outcome) {
	if m == nil {
		return nil
	}
	return m.observeQueue
}

func (m *metrics) tlsHook() func(tlspolicy.Outcome) {
	if m == nil {
		return nil
	}
	return m.observeTLS
}

// watchMilters sets the hook of every milter chain of the content stage
// (at start and at each reload, which builds them anew).
func (m *metrics) watchMilters(c *inbound.Content) {
	if m == nil || c == nil {
		return
	}
	for _, ch := range c.Chains {
		ch.Observe = m.observeMilter
	}
}

// observeQueue is queue.Options.Observe: called where each recipient's
// result is logged.
func (m *metrics) observeQueue(o queue.Outcome) {
	m.deliveries.WithLabelValues(o.Origin, o.State).Inc()
	if o.State != queue.RcptDeferred {
		m.delay.WithLabelValues(o.Origin, o.State).Observe(o.Delay.Seconds())
	}
	if o.Result.Encryption != "" {
		m.encryption.WithLabelValues(o.State).Inc()
	}
}

// observeTLS is tlspolicy.Options.Observe.
func (m *metrics) observeTLS(o tlspolicy.Outcome) {
	result := "ok"
	switch {
	case o.EncryptFallback:
		result = "encrypt_fallback"
	case o.Failure != nil:
		result = "failed"
	}
	m.tls.WithLabelValues(o.Required.String(), o.Achieved.String(), o.Origin, o.Rule, result).Inc()
}

// observeMilter is milter.Chain.Observe.
func (m *metrics) observeMilter(name, verdict string, took time.Duration) {
	m.milter.WithLabelValues(name, verdict).Inc()
	m.milterTime.WithLabelValues(name).Observe(took.Seconds())
}

var (
	descSessions = prometheus.NewDesc("securerelay_sessions_total",
		"SMTP sessions by listener and screening verdict (pass, allow, cached, listed, or the check that refused the client).",
		[]string{"listener", "verdict"}, nil)
	descRefusals = prometheus.NewDesc("securerelay_refusals_total",
		"Refusals by listener, check (the setting's name, as logged check=) and reply code.",
		[]string{"listener", "check", "code"}, nil)
	descAccepted = prometheus.NewDesc("securerelay_messages_accepted_total",
		"Messages accepted (250 after DATA, spooled) by listener.", []string{"listener"}, nil)
	descAcceptedBytes = prometheus.NewDesc("securerelay_messages_accepted_bytes_total",
		"Bytes of the messages accepted, as spooled, by listener.", []string{"listener"}, nil)
	descQueue = prometheus.NewDesc("securerelay_queue_messages",
		"Messages in the active spool (not hold/ or quarantine/).", nil, nil)
	descOldest = prometheus.NewDesc("securerelay_queue_oldest_age_seconds",
		"Age of the oldest message in the active spool; 0 when empty.", nil, nil)
	descHold = prometheus.NewDesc("securerelay_hold_messages",
		"Messages in spool/hold.", nil, nil)
	descHoldBytes = prometheus.NewDesc("securerelay_hold_bytes",
		"Bytes in spool/hold.", nil, nil)
	descPruned = prometheus.NewDesc("securerelay_hold_pruned_total",
		"Files removed from spool/hold and spool/quarantine by the limit that removed them.", []string{"limit"}, nil)
	descDKIM = prometheus.NewDesc("securerelay_dkim_signatures_total",
		"DKIM signatures made on outgoing mail (each key, each attempt).", nil, nil)
	descDKIMUnsigned = prometheus.NewDesc("securerelay_dkim_unsigned_total",
		"Outgoing messages sent unsigned: no DKIM key for their domain.", nil, nil)
	descDKIMFailed = prometheus.NewDesc("securerelay_dkim_failures_total",
		"DKIM signings that failed (the delivery was deferred).", nil, nil)
)

// scraped reads, at scrape time, what the packages count themselves.
type scraped struct{ m *metrics }

func (s scraped) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descSessions, descRefusals, descAccepted, descAcceptedBytes,
		descQueue, descOldest, descHold, descHoldBytes, descPruned, descDKIM, descDKIMUnsigned, descDKIMFailed} {
		ch <- d
	}
}

func (s scraped) Collect(ch chan<- prometheus.Metric) {
	m := s.m
	for _, srv := range m.servers {
		st, name := srv.Stats(), srv.Name()
		for v, n := range st.Sessions {
			ch <- prometheus.MustNewConstMetric(descSessions, prometheus.CounterValue, float64(n), name, v)
		}
		for k, n := range st.Refusals {
			ch <- prometheus.MustNewConstMetric(descRefusals, prometheus.CounterValue, float64(n), name, k.Check, strconv.Itoa(k.Code))
		}
		ch <- prometheus.MustNewConstMetric(descAccepted, prometheus.CounterValue, float64(st.Accepted), name)
		ch <- prometheus.MustNewConstMetric(descAcceptedBytes, prometheus.CounterValue, float64(st.AcceptedBytes), name)
	}
	if m.q != nil {
		n, oldest := m.q.Oldest()
		age := 0.0
		if !oldest.IsZero() {
			age = max(0, m.now().Sub(oldest).Seconds())
		}
		ch <- prometheus.MustNewConstMetric(descQueue, prometheus.GaugeValue, float64(n))
		ch <- prometheus.MustNewConstMetric(descOldest, prometheus.GaugeValue, age)
		hn, hb := m.q.HoldUsage()
		ch <- prometheus.MustNewConstMetric(descHold, prometheus.GaugeValue, float64(hn))
		ch <- prometheus.MustNewConstMetric(descHoldBytes, prometheus.GaugeValue, float64(hb))
		for limit, n := range m.q.Pruned() {
			ch <- prometheus.MustNewConstMetric(descPruned, prometheus.CounterValue, float64(n), limit)
		}
	}
	if m.signer != nil {
		sigs, unsigned, failed := m.signer.Counts()
		ch <- prometheus.MustNewConstMetric(descDKIM, prometheus.CounterValue, float64(sigs))
		ch <- prometheus.MustNewConstMetric(descDKIMUnsigned, prometheus.CounterValue, float64(unsigned))
		ch <- prometheus.MustNewConstMetric(descDKIMFailed, prometheus.CounterValue, float64(failed))
	}
}
