package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// spec is what run-inbound.sh started, for the driver: where each variant
// listens and where its CPU is counted.
type spec struct {
	Sink     string              `json:"sink"`
	DNS      string              `json:"dns"`
	DNSGroup string              `json:"dns_cgroup"`
	Scanners map[string]scanSpec `json:"scanners"` // "rspamd", "clamav"
	Variants []variantSpec       `json:"variants"`
}

type scanSpec struct {
	Info   string `json:"info"` // the scanner's scannerInfo file
	Cgroup string `json:"cgroup"`
}

type variantSpec struct {
	Name string `json:"name"`
	// Addr is the SMTP listener; empty for the scanners-only baseline
	// ("milters"), which talks milter to the scanners itself.
	Addr   string `json:"addr"`
	Cgroup string `json:"cgroup"`
	// QueueEmpty, a shell command, exits 0 when the relay's queue is
	// empty; Before runs before each run (Postfix: reload, which retires
	// the idle processes of the previous run).
	QueueEmpty string `json:"queue_empty"`
	Before     string `json:"before"`
	// Scans: the variant runs the milters (the verification checks their
	// headers); Auth: it records SPF/DKIM/DMARC (securerelay).
	Scans bool `json:"scans"`
	Auth  bool `json:"auth"`
}

type options struct {
	spec                       spec
	data, out                  string
	variants                   []string
	n, warmup, rounds, session int
	// The latency phase: latN messages over latSessions sessions, far
	// below saturation, so that the end-of-data latency is the work on
	// the path and not the time spent queueing for a busy scanner.
	latN, latSessions int
	timeout           time.Duration
	kinds             []string
	loader            string
}

// saved is what report needs of the options, kept in the results folder
// (options.json) so that `inboundbench report DIR` can write the summary
// again from runs.jsonl.
type saved struct {
	Variants                                       []string
	N, Warmup, Rounds, Sessions, LatN, LatSessions int
	Kinds                                          []string
	Loader                                         string
}

func (o *options) save() error {
	b, err := json.MarshalIndent(saved{o.variants, o.n, o.warmup, o.rounds, o.session, o.latN, o.latSessions, o.kinds, o.loader}, "", " ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(o.out, "options.json"), b, 0o644)
}

// rereport writes the summary of the results folder dir again.
func rereport(dir string) error {
	b, err := os.ReadFile(filepath.Join(dir, "options.json"))
	if err != nil {
		return err
	}
	var sv saved
	if err := json.Unmarshal(b, &sv); err != nil {
		return err
	}
	o := &options{out: dir, variants: sv.Variants, n: sv.N, warmup: sv.Warmup, rounds: sv.Rounds, session: sv.Sessions,
		latN: sv.LatN, latSessions: sv.LatSessions, kinds: sv.Kinds, loader: sv.Loader}
	f, err := os.Open(filepath.Join(dir, "runs.jsonl"))
	if err != nil {
		return err
	}
	defer f.Close()
	var runs []runResult
	var problems []string
	dec := json.NewDecoder(f)
	for dec.More() {
		var r runResult
		if err := dec.Decode(&r); err != nil {
			return err
		}
		if r.Round > 0 {
			runs = append(runs, r)
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "results.json")); err == nil {
		var prev struct{ Problems []string }
		if json.Unmarshal(b, &prev) == nil {
			problems = prev.Problems
		}
	}
	return report(o, runs, problems)
}

// runResult is one run: one variant, N messages.
type runResult struct {
	Variant string `json:"variant"`
	Tag     string `json:"tag"`
	Round   int    `json:"round"`
	// Phase: "load" (the throughput run) or "latency" (few sessions).
	Phase     string   `json:"phase"`
	Sessions  int      `json:"sessions"`
	N         int      `json:"n"`
	Accepted  int      `json:"accepted"`
	Failed    int      `json:"failed"`
	Errors    []string `json:"errors,omitempty"`
	Delivered int      `json:"delivered"`
	LoadAvg   string   `json:"loadavg_at_start"`
	Loader    string   `json:"loader"`

	AcceptS     float64 `json:"accept_s"`
	DeliverS    float64 `json:"deliver_s"`
	AcceptRate  float64 `json:"accept_rate"`
	DeliverRate float64 `json:"deliver_rate"`

	RelayCPU    float64            `json:"relay_cpu_s"`
	ScannerCPU  map[string]float64 `json:"scanner_cpu_s"` // rspamd, clamd, clamav-milter
	DNSCPU      float64            `json:"dns_cpu_s"`
	SinkCPU     float64            `json:"sink_cpu_s"`
	ClientCPU   float64            `json:"client_cpu_s"`
	MachineBusy float64            `json:"machine_busy_pct"`
	ProcCPU     map[string]float64 `json:"relay_cpu_by_process_s"`

	PeakRSS    float64 `json:"peak_rss_mib"`
	PeakPSS    float64 `json:"peak_pss_mib"`
	PeakProcs  int     `json:"peak_procs"`
	ScannerRSS float64 `json:"scanner_peak_rss_mib"`

	// Latency percentiles in milliseconds: "eod", "greet", "session",
	// "setup" (milters only), each for "all" and per message kind.
	Latency map[string]map[string][3]float64 `json:"latency_ms"`
	// Paired (latency phase): percentiles, by message kind, of this
	// variant's end-of-data latency minus the scanners' alone for the
	// same message at the same moment.
	Paired map[string][3]float64 `json:"paired_on_top_ms,omitempty"`
	DNS    map[string]int        `json:"dns_queries"`
}

func (o *options) variant(name string) (variantSpec, error) {
	for _, v := range o.spec.Variants {
		if v.Name == name {
			return v, nil
		}
	}
	return variantSpec{}, fmt.Errorf("variant %q is not in the spec", name)
}

// sink is smtp-sink counting what the relays deliver. One runs for the
// whole benchmark: a sink restarted between runs would break the
// sessions a relay keeps open to it.
type sink struct {
	cmd  *exec.Cmd
	out  string
	file *os.File
}

var sinkCount = regexp.MustCompile(`mesg=(\d+)`)

func startSink(addr, out string, dump string) (*sink, error) {
	f, err := os.Create(out)
	if err != nil {
		return nil, err
	}
	args := []string{"-c", "-u", "nobody"}
	if dump != "" {
		args = append(args, "-d", dump+"/%H%M%S.")
	}
	args = append(args, addr, "1024")
	cmd := exec.Command("smtp-sink", args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		f.Close()
		return nil, err
	}
	s := &sink{cmd: cmd, out: out, file: f}
	if !waitDial(addr, 10*time.Second) {
		s.stop()
		return nil, fmt.Errorf("smtp-sink did not listen on %s", addr)
	}
	return s, nil
}

// count is the number of messages the sink received (its -c counter,
// the last one printed).
func (s *sink) count() int {
	f, err := os.Open(s.out)
	if err != nil {
		return 0
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0
	}
	off := max(0, st.Size()-256)
	b := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(b, off); err != nil && !errors.Is(err, io.EOF) {
		return 0
	}
	m := sinkCount.FindAllSubmatch(b, -1)
	if len(m) == 0 {
		return 0
	}
	n, _ := strconv.Atoi(string(m[len(m)-1][1]))
	return n
}

func (s *sink) cpu() float64 {
	_, c, _ := procStat(s.cmd.Process.Pid)
	return c
}

func (s *sink) stop() {
	s.cmd.Process.Signal(syscall.SIGTERM) //nolint:errcheck // it may be gone
	done := make(chan struct{})
	go func() { s.cmd.Wait(); close(done) }() //nolint:errcheck
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		s.cmd.Process.Kill() //nolint:errcheck
		<-done
	}
	s.file.Close()
}

func waitDial(addr string, d time.Duration) bool {
	end := time.Now().Add(d)
	for time.Now().Before(end) {
		if c, err := netDial(addr); err == nil {
			c.Close()
			return true
		}
		time.Sleep(50 * time.Millisecond)
	}
	return false
}

func sh(cmd string) error {
	if cmd == "" {
		return nil
	}
	c := exec.Command("sh", "-c", cmd)
	c.Stdout, c.Stderr = os.Stderr, os.Stderr
	return c.Run()
}

// waitQueueEmpty polls the variant's probe (bounded).
func waitQueueEmpty(v variantSpec, d time.Duration) bool {
	if v.QueueEmpty == "" {
		return true
	}
	end := time.Now().Add(d)
	for {
		c := exec.Command("sh", "-c", v.QueueEmpty)
		if c.Run() == nil {
			return true
		}
		if time.Now().After(end) {
			return false
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// settle waits (at most d) until g uses under 5% of a core, so that the
// final CPU reading includes the work after the last delivery (removing
// queue files, closing sessions).
func settle(g group, d time.Duration) {
	end := time.Now().Add(d)
	prev := g.cpu()
	for time.Now().Before(end) {
		time.Sleep(250 * time.Millisecond)
		cur := g.cpu()
		if cur-prev < 0.0125 {
			return
		}
		prev = cur
	}
}

type scanners struct {
	addrs  []string // rspamd, clamav: the order both relays use
	groups map[string]group
}

func loadScanners(sp spec) (*scanners, error) {
	s := &scanners{groups: map[string]group{}}
	for _, kind := range []string{"rspamd", "clamav"} {
		ss, ok := sp.Scanners[kind]
		if !ok {
			return nil, fmt.Errorf("spec has no %s scanner", kind)
		}
		b, err := os.ReadFile(ss.Info)
		if err != nil {
			return nil, err
		}
		var info scannerInfo
		if err := json.Unmarshal(b, &info); err != nil {
			return nil, fmt.Errorf("%s: %w", ss.Info, err)
		}
		s.addrs = append(s.addrs, info.Addr)
		if kind == "rspamd" {
			// rspamd forks its workers: the cgroup has them all.
			s.groups["rspamd"] = group{cgroup: ss.Cgroup}
		} else {
			for name, pid := range info.PIDs {
				s.groups[name] = group{pids: []int{pid}}
			}
		}
	}
	return s, nil
}

func (s *scanners) cpu() map[string]float64 {
	out := map[string]float64{}
	for name, g := range s.groups {
		out[name] = g.cpu()
	}
	return out
}

func (s *scanners) all() []group {
	var gs []group
	for _, name := range []string{"rspamd", "clamd", "clamav-milter"} {
		if g, ok := s.groups[name]; ok {
			gs = append(gs, g)
		}
	}
	return gs
}

// runOnce sends n messages through variant v and measures it.
func runOnce(o *options, v variantSpec, sc *scanners, sk *sink, msgs, smtpMsgs []*message, n, sessions int, tag string) runResult {
	res := runResult{Variant: v.Name, Tag: tag, N: n, Sessions: sessions, Loader: o.loader}
	if v.Addr == "" {
		res.Loader = "milter client"
	}
	if !waitQueueEmpty(v, 60*time.Second) {
		log.Printf("%s: queue not empty after 60 s before the run", v.Name)
	}
	if v.Before != "" {
		if err := sh(v.Before); err != nil {
			log.Printf("%s: %q: %v", v.Name, v.Before, err)
		}
		// Let the retired processes go before the memory readings.
		relay := group{cgroup: v.Cgroup}
		for end := time.Now().Add(15 * time.Second); len(relay.members()) > 8 && time.Now().Before(end); {
			time.Sleep(100 * time.Millisecond)
		}
	}
	relay := group{cgroup: v.Cgroup}
	dnsG := group{cgroup: o.spec.DNSGroup}
	res.LoadAvg = loadAvg()
	dns0, _ := dnsCounts(o.spec.DNS)
	cpu0, scan0, dnsCPU0, sink0, self0 := relay.cpu(), sc.cpu(), dnsG.cpu(), sk.cpu(), selfCPU()
	tot0, idle0 := machineCPU()
	delivered0 := sk.count()
	var relayGroups []group
	if v.Cgroup != "" {
		relayGroups = []group{relay}
	}
	smp := startSampler(relayGroups, sc.all(), 250*time.Millisecond)

	start := time.Now()
	var samples []sample
	switch {
	case v.Addr == "":
		samples = runLoad(n, sessions, msgs, tag, func(m *message, rcpt, id string) sample {
			return scanMilters(sc.addrs, m, rcpt, id)
		})
	case o.loader == "smtp-source":
		samples = smtpSource(o, v.Addr, n, sessions)
	default:
		samples = runLoad(n, sessions, smtpMsgs, tag, func(m *message, rcpt, id string) sample {
			return sendSMTP(v.Addr, m, rcpt, id, o.timeout)
		})
	}
	res.AcceptS = time.Since(start).Seconds()
	errs := map[string]int{}
	for _, s := range samples {
		if s.err == "" {
			res.Accepted++
		} else {
			res.Failed++
			errs[s.err]++
		}
	}
	for e, c := range errs {
		if len(res.Errors) < 5 {
			res.Errors = append(res.Errors, fmt.Sprintf("%d× %s", c, e))
		}
	}
	if v.Addr == "" {
		res.DeliverS, res.Delivered = res.AcceptS, res.Accepted
	} else {
		deadline := start.Add(o.timeout)
		for sk.count()-delivered0 < res.Accepted && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		res.Delivered = sk.count() - delivered0
		res.DeliverS = time.Since(start).Seconds()
		if !waitQueueEmpty(v, 30*time.Second) {
			log.Printf("%s: queue not empty 30 s after the run", v.Name)
		}
		settle(relay, 5*time.Second)
	}
	procs := smp.finish()
	tot1, idle1 := machineCPU()
	res.RelayCPU = relay.cpu() - cpu0
	scan1 := sc.cpu()
	res.ScannerCPU = map[string]float64{}
	for k, c := range scan1 {
		res.ScannerCPU[k] = c - scan0[k]
	}
	res.DNSCPU = dnsG.cpu() - dnsCPU0
	res.SinkCPU = sk.cpu() - sink0
	res.ClientCPU = selfCPU() - self0
	if tot1 > tot0 {
		res.MachineBusy = 100 * (1 - (idle1-idle0)/(tot1-tot0))
	}
	res.ProcCPU = procs
	res.PeakRSS, res.PeakPSS = float64(smp.peakRSS)/1024, float64(smp.peakPSS)/1024
	res.PeakProcs, res.ScannerRSS = smp.peakProcs, float64(smp.peakScan)/1024
	if res.AcceptS > 0 {
		res.AcceptRate = float64(res.Accepted) / res.AcceptS
	}
	if res.DeliverS > 0 {
		res.DeliverRate = float64(res.Delivered) / res.DeliverS
	}
	res.Latency = latencies(samples)
	dns1, _ := dnsCounts(o.spec.DNS)
	res.DNS = map[string]int{}
	for k, c := range dns1 {
		if d := c - dns0[k]; d > 0 {
			res.DNS[k] = d
		}
	}
	return res
}

// smtpSource drives the relay with Postfix's smtp-source instead of the
// Go client: one process per message kind (-F file), the sessions split
// between them. It gives no per-message timing.
func smtpSource(o *options, addr string, n, sessions int) []sample {
	k := len(o.kinds)
	type out struct {
		kind string
		n    int
		err  error
		text string
	}
	ch := make(chan out, k)
	for i, kind := range o.kinds {
		cnt := n / k
		if i < n%k {
			cnt++
		}
		ses := max(1, sessions/k)
		go func() {
			cmd := exec.Command("smtp-source", "-s", strconv.Itoa(ses), "-m", strconv.Itoa(cnt),
				"-F", filepath.Join(o.data, kind+".lf.eml"), "-f", sender, "-t", rcptAddr(0),
				"-M", senderHost, addr)
			b, err := cmd.CombinedOutput()
			ch <- out{kind, cnt, err, strings.TrimSpace(string(b))}
		}()
	}
	var samples []sample
	for range k {
		r := <-ch
		s := sample{kind: r.kind}
		if r.err != nil {
			s.err = fmt.Sprintf("smtp-source %s: %v %s", r.kind, r.err, r.text)
		}
		for range r.n {
			samples = append(samples, s)
		}
	}
	return samples
}

func percentiles(ds []time.Duration) [3]float64 {
	if len(ds) == 0 {
		return [3]float64{}
	}
	slices.Sort(ds)
	at := func(p float64) float64 {
		i := int(p*float64(len(ds))+0.999999) - 1 // nearest rank
		i = min(max(i, 0), len(ds)-1)
		return float64(ds[i].Microseconds()) / 1000
	}
	return [3]float64{at(0.50), at(0.90), at(0.99)}
}

func latencies(samples []sample) map[string]map[string][3]float64 {
	out := map[string]map[string][3]float64{}
	pick := map[string]func(sample) time.Duration{
		"eod": func(s sample) time.Duration { return s.eod }, "greet": func(s sample) time.Duration { return s.greet },
		"session": func(s sample) time.Duration { return s.session }, "setup": func(s sample) time.Duration { return s.setup },
	}
	for metric, f := range pick {
		by := map[string][]time.Duration{}
		for _, s := range samples {
			if s.err != "" || f(s) == 0 {
				continue
			}
			by["all"] = append(by["all"], f(s))
			by[s.kind] = append(by[s.kind], f(s))
		}
		if len(by) == 0 {
			continue
		}
		out[metric] = map[string][3]float64{}
		for k, ds := range by {
			out[metric][k] = percentiles(ds)
		}
	}
	return out
}

// verify sends one message of each kind through every SMTP variant to a
// dumping sink and checks that what arrives went through the pipeline the
// variant claims: the scanners' headers (rspamd's X-Spamd-Result,
// clamav-milter's X-Virus-Status), and for securerelay
// Authentication-Results with spf, dkim and dmarc pass. A run that
// measured a pipeline that silently skipped a stage would be worthless.
func verify(o *options, smtpMsgs []*message) []string {
	dir := filepath.Join(o.out, "verify")
	os.MkdirAll(dir, 0o777) //nolint:errcheck // startSink reports a problem
	os.Chmod(dir, 0o777)    //nolint:errcheck // smtp-sink runs as nobody
	sk, err := startSink(o.spec.Sink, filepath.Join(o.out, "sink-verify.out"), dir)
	if err != nil {
		return []string{"verify: " + err.Error()}
	}
	defer sk.stop()
	var problems []string
	for _, name := range o.variants {
		v, _ := o.variant(name)
		if v.Addr == "" {
			continue
		}
		before, _ := filepath.Glob(filepath.Join(dir, "*"))
		for i, m := range smtpMsgs {
			s := sendSMTP(v.Addr, m, rcptAddr(i), "verify."+name+"."+strconv.Itoa(i), o.timeout)
			if s.err != "" {
				problems = append(problems, fmt.Sprintf("verify %s %s: %s", name, m.kind, s.err))
			}
		}
		var files []string
		for end := time.Now().Add(60 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
			all, _ := filepath.Glob(filepath.Join(dir, "*"))
			files = files[:0]
			complete := true
			for _, f := range all {
				if !slices.Contains(before, f) {
					files = append(files, f)
					// smtp-sink creates the file at MAIL and fills it
					// at the end of the data.
					if st, err := os.Stat(f); err != nil || st.Size() == 0 {
						complete = false
					}
				}
			}
			if len(files) >= len(smtpMsgs) && complete {
				break
			}
		}
		if len(files) < len(smtpMsgs) {
			problems = append(problems, fmt.Sprintf("verify %s: %d of %d messages arrived at the sink", name, len(files), len(smtpMsgs)))
		}
		for _, f := range files {
			b, _ := os.ReadFile(f)
			hdr, _, _ := strings.Cut(strings.ReplaceAll(string(b), "\r\n", "\n"), "\n\n")
			var want []string
			if v.Scans {
				want = append(want, "X-Spamd-Result:", "X-Virus-Status: Clean")
			}
			if v.Auth {
				want = append(want, "spf=pass", "dkim=pass", "dmarc=pass")
			}
			for _, w := range want {
				if !strings.Contains(hdr, w) {
					problems = append(problems, fmt.Sprintf("verify %s: %s lacks %q", name, filepath.Base(f), w))
				}
			}
			log.Printf("verify %s: %s has %v", name, filepath.Base(f), want)
		}
	}
	return problems
}

func writeJSONLine(w *bufio.Writer, v any) {
	b, _ := json.Marshal(v)
	w.Write(append(b, '\n')) //nolint:errcheck // flushed and checked by the caller
	w.Flush()                //nolint:errcheck
}

// drive runs the benchmark: verification, warm-up, then interleaved
// rounds (the order rotates each round, so that drifting load on the
// machine hits every variant alike), then the report.
func drive(o *options) error {
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	for _, name := range o.variants {
		if _, err := o.variant(name); err != nil {
			return err
		}
	}
	if err := o.save(); err != nil {
		return err
	}
	sc, err := loadScanners(o.spec)
	if err != nil {
		return err
	}
	msgs, err := loadMessages(o.data, o.kinds)
	if err != nil {
		return err
	}
	smtpMsgs := smtpForm(msgs)
	problems := verify(o, smtpMsgs)
	// Sessions the relays pooled to the verification sink must expire
	// (securerelay: idle_connection_timeout 5 s; Postfix 2 s) before the
	// counting sink takes the port.
	time.Sleep(6 * time.Second)
	sk, err := startSink(o.spec.Sink, filepath.Join(o.out, "sink.out"), "")
	if err != nil {
		return err
	}
	defer sk.stop()
	jf, err := os.Create(filepath.Join(o.out, "runs.jsonl"))
	if err != nil {
		return err
	}
	defer jf.Close()
	jw := bufio.NewWriter(jf)
	var runs []runResult
	if o.warmup > 0 {
		for _, name := range o.variants {
			v, _ := o.variant(name)
			r := runOnce(o, v, sc, sk, msgs, smtpMsgs, o.warmup, o.session, "warmup-"+name)
			writeJSONLine(jw, r)
			log.Printf("warm-up %-22s %d/%d accepted, %d delivered %v", name, r.Accepted, r.N, r.Delivered, r.Errors)
			if r.Failed > 0 || r.Delivered < r.Accepted {
				problems = append(problems, fmt.Sprintf("warm-up %s: %d failed, %d of %d delivered %v", name, r.Failed, r.Delivered, r.Accepted, r.Errors))
			}
		}
	}
	for round := 1; round <= o.rounds; round++ {
		k := (round - 1) % len(o.variants)
		order := append(slices.Clone(o.variants[k:]), o.variants[:k]...)
		for _, name := range order {
			v, _ := o.variant(name)
			r := runOnce(o, v, sc, sk, msgs, smtpMsgs, o.n, o.session, fmt.Sprintf("r%d-load-%s", round, name))
			r.Round, r.Phase = round, "load"
			runs = append(runs, r)
			writeJSONLine(jw, r)
			eod := r.Latency["eod"]["all"]
			log.Printf("round %d load %-20s delivered %6.1f msg/s (%d/%d)  relay %.2f ms/msg  scanners %.2f ms/msg  end-of-data p50/p90/p99 %.1f/%.1f/%.1f ms  load %s",
				round, name, r.DeliverRate, r.Delivered, r.N, perMsg(r.RelayCPU, r.N), perMsg(sum(r.ScannerCPU), r.N),
				eod[0], eod[1], eod[2], r.LoadAvg)
			if r.Failed > 0 || r.Delivered < r.Accepted {
				problems = append(problems, fmt.Sprintf("%s: %d failed, %d of %d delivered %v", r.Tag, r.Failed, r.Delivered, r.Accepted, r.Errors))
			}
		}
		if o.latN > 0 {
			var vs []variantSpec
			for _, name := range order {
				v, _ := o.variant(name)
				vs = append(vs, v)
			}
			for _, r := range runLatency(o, vs, sc, sk, msgs, smtpMsgs, o.latN, o.latSessions, round) {
				runs = append(runs, r)
				writeJSONLine(jw, r)
				eod := r.Latency["eod"]["all"]
				log.Printf("round %d latency %-17s end-of-data p50/p90/p99 %.2f/%.2f/%.2f ms, paired with the scanners alone p50/p90 %+.2f/%+.2f ms  load %s",
					round, r.Variant, eod[0], eod[1], eod[2], r.Paired["all"][0], r.Paired["all"][1], r.LoadAvg)
				if r.Failed > 0 || r.Delivered < r.Accepted {
					problems = append(problems, fmt.Sprintf("%s: %d failed, %d of %d delivered %v", r.Tag, r.Failed, r.Delivered, r.Accepted, r.Errors))
				}
			}
		}
	}
	return report(o, runs, problems)
}

func sum(m map[string]float64) float64 {
	t := 0.0
	for _, v := range m {
		t += v
	}
	return t
}
