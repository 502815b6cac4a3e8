package main

import (
	"fmt"
	"log"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// runLatency is the latency phase: n messages, each sent through every
// variant in turn (the order rotating from message to message) by
// `sessions` workers, so that every variant's i-th message meets the same
// machine: a neighbour's burst of CPU hits all of them alike, and the
// i-th message through a relay can be set against the i-th through the
// scanners alone. CPU is not measured here (the two Postfix variants
// share one instance); the load phase measures it.
func runLatency(o *options, vs []variantSpec, sc *scanners, sk *sink, msgs, smtpMsgs []*message, n, sessions, round int) []runResult {
	for _, v := range vs {
		if !waitQueueEmpty(v, 60*time.Second) {
			log.Printf("%s: queue not empty after 60 s before the latency phase", v.Name)
		}
	}
	befores := map[string]bool{}
	for _, v := range vs {
		if v.Before != "" && !befores[v.Before] {
			befores[v.Before] = true
			if err := sh(v.Before); err != nil {
				log.Printf("%s: %q: %v", v.Name, v.Before, err)
			}
		}
	}
	load := loadAvg()
	delivered0 := sk.count()
	samples := make([][]sample, len(vs))
	for j := range samples {
		samples[j] = make([]sample, n)
	}
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range sessions {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				for k := range vs {
					j := (i + k) % len(vs)
					v := vs[j]
					id := fmt.Sprintf("r%d-latency-%s.%d", round, v.Name, i)
					if v.Addr == "" {
						samples[j][i] = scanMilters(sc.addrs, msgs[i%len(msgs)], rcptAddr(i), id)
					} else {
						samples[j][i] = sendSMTP(v.Addr, smtpMsgs[i%len(smtpMsgs)], rcptAddr(i), id, o.timeout)
					}
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start).Seconds()
	accepted := 0
	out := make([]runResult, len(vs))
	for j, v := range vs {
		r := runResult{Variant: v.Name, Tag: fmt.Sprintf("r%d-latency-%s", round, v.Name), Round: round, Phase: "latency",
			Sessions: sessions, N: n, LoadAvg: load, Loader: "go, interleaved", AcceptS: wall}
		errs := map[string]int{}
		for _, s := range samples[j] {
			if s.err == "" {
				r.Accepted++
			} else {
				r.Failed++
				errs[s.err]++
			}
		}
		for e, c := range errs {
			if len(r.Errors) < 5 {
				r.Errors = append(r.Errors, fmt.Sprintf("%d× %s", c, e))
			}
		}
		if v.Addr != "" {
			accepted += r.Accepted
		}
		r.Latency = latencies(samples[j])
		out[j] = r
	}
	// Deliveries are counted together: the sink cannot tell the relays
	// apart. All of them, or the phase is flagged.
	for end := time.Now().Add(o.timeout); sk.count()-delivered0 < accepted && time.Now().Before(end); {
		time.Sleep(20 * time.Millisecond)
	}
	got := sk.count() - delivered0
	for j, v := range vs {
		out[j].Delivered = out[j].Accepted
		if v.Addr != "" && got < accepted {
			out[j].Errors = append(out[j].Errors, fmt.Sprintf("the sink got %d of the %d messages the relays accepted in this phase", got, accepted))
			out[j].Delivered = 0
		}
	}
	// The i-th message through a relay against the i-th through the
	// scanners alone.
	if m := slices.IndexFunc(vs, func(v variantSpec) bool { return v.Addr == "" }); m >= 0 {
		for j, v := range vs {
			if !v.Scans {
				continue // a relay without the milters against them: no meaning
			}
			by := map[string][]float64{}
			for i := range n {
				a, b := samples[j][i], samples[m][i]
				if a.err != "" || b.err != "" {
					continue
				}
				d := (a.eod - b.eod).Seconds() * 1000
				by["all"] = append(by["all"], d)
				by[a.kind] = append(by[a.kind], d)
			}
			out[j].Paired = map[string][3]float64{}
			for k, ds := range by {
				out[j].Paired[k] = floatPercentiles(ds)
			}
		}
	}
	return out
}

// floatPercentiles is percentiles for values that may be negative.
func floatPercentiles(xs []float64) [3]float64 {
	if len(xs) == 0 {
		return [3]float64{}
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	at := func(p float64) float64 {
		i := min(max(int(p*float64(len(s))+0.999999)-1, 0), len(s)-1)
		return s[i]
	}
	return [3]float64{at(0.50), at(0.90), at(0.99)}
}
