package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// clockTick is USER_HZ, the unit of /proc/PID/stat times: 100 on every
// Linux architecture Go runs on.
const clockTick = 100

// cgroupCPU is the CPU time, in seconds, that every process ever in the
// cgroup used (cgroup v1 cpuacct or v2 cpu.stat), exited children
// included: how Postfix's short-lived smtpd and cleanup processes are
// counted.
func cgroupCPU(dir string) float64 {
	if dir == "" {
		return 0
	}
	if b, err := os.ReadFile(filepath.Join(dir, "cpuacct.usage")); err == nil {
		ns, _ := strconv.ParseFloat(strings.TrimSpace(string(b)), 64)
		return ns / 1e9
	}
	f, err := os.Open(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "usage_usec "); ok {
			us, _ := strconv.ParseFloat(v, 64)
			return us / 1e6
		}
	}
	return 0
}

func cgroupPIDs(dir string) []int {
	if dir == "" {
		return nil
	}
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		return nil
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		if p, err := strconv.Atoi(f); err == nil {
			out = append(out, p)
		}
	}
	return out
}

// procStat returns a process's name and CPU seconds (all its threads,
// user and system), from /proc/PID/stat.
func procStat(pid int) (comm string, cpu float64, ok bool) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return "", 0, false
	}
	s := string(b)
	open, end := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || end < open {
		return "", 0, false
	}
	f := strings.Fields(s[end+1:])
	if len(f) < 13 {
		return "", 0, false
	}
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return s[open+1 : end], (ut + st) / clockTick, true
}

// procMem returns a process's RSS and PSS in KiB.
func procMem(pid int) (rss, pss int) {
	f, err := os.Open("/proc/" + strconv.Itoa(pid) + "/smaps_rollup")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if v, ok := strings.CutPrefix(line, "Rss:"); ok {
			rss, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		} else if v, ok := strings.CutPrefix(line, "Pss:"); ok {
			pss, _ = strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return rss, pss
}

func selfCPU() float64 {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()).Seconds()
}

// machineCPU returns total and idle (idle + iowait) jiffies from /proc/stat.
func machineCPU() (total, idle float64) {
	f, err := os.Open("/proc/stat")
	if err != nil {
		return 0, 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	if !sc.Scan() {
		return 0, 0
	}
	fs := strings.Fields(sc.Text())
	for i, v := range fs[1:] {
		x, _ := strconv.ParseFloat(v, 64)
		total += x
		if i == 3 || i == 4 {
			idle += x
		}
	}
	return total, idle
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}

// group is a set of processes counted together: a cgroup (all that ever
// ran in it) or fixed PIDs (long-lived daemons such as clamd).
type group struct {
	cgroup string
	pids   []int
}

func (g group) cpu() float64 {
	if g.cgroup != "" {
		return cgroupCPU(g.cgroup)
	}
	t := 0.0
	for _, p := range g.pids {
		_, c, _ := procStat(p)
		t += c
	}
	return t
}

func (g group) members() []int {
	if g.cgroup != "" {
		return cgroupPIDs(g.cgroup)
	}
	return g.pids
}

// sampler watches a relay's processes during a run: peak memory (sum of
// RSS and of PSS over its processes, the figure for Postfix's many
// processes being PSS) and each process's CPU, summed by process name at
// the end. A process that exits between two samples loses its last
// interval; the cgroup total does not, so the report gives the share the
// names cover.
type sampler struct {
	relay, scanners []group
	stop            chan struct{}
	done            chan struct{}

	mu        sync.Mutex
	base      map[int]float64 // CPU at the start (processes alive then)
	last      map[int]float64
	comm      map[int]string
	peakRSS   int
	peakPSS   int
	peakScan  int
	peakProcs int
}

func startSampler(relay, scanners []group, every time.Duration) *sampler {
	s := &sampler{relay: relay, scanners: scanners, stop: make(chan struct{}), done: make(chan struct{}),
		base: map[int]float64{}, last: map[int]float64{}, comm: map[int]string{}}
	for _, g := range relay {
		for _, p := range g.members() {
			if name, c, ok := procStat(p); ok {
				s.base[p], s.last[p], s.comm[p] = c, c, name
			}
		}
	}
	go func() {
		defer close(s.done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			s.sample()
			select {
			case <-s.stop:
				s.sample()
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) sample() {
	rss, pss, n := 0, 0, 0
	seen := map[int]float64{}
	names := map[int]string{}
	for _, g := range s.relay {
		for _, p := range g.members() {
			name, c, ok := procStat(p)
			if !ok {
				continue
			}
			seen[p], names[p] = c, name
			r, ps := procMem(p)
			rss, pss, n = rss+r, pss+ps, n+1
		}
	}
	scan := 0
	for _, g := range s.scanners {
		for _, p := range g.members() {
			r, _ := procMem(p)
			scan += r
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for p, c := range seen {
		s.last[p], s.comm[p] = c, names[p]
	}
	s.peakRSS, s.peakPSS = max(s.peakRSS, rss), max(s.peakPSS, pss)
	s.peakProcs, s.peakScan = max(s.peakProcs, n), max(s.peakScan, scan)
}

// finish stops sampling and returns CPU seconds by process name.
func (s *sampler) finish() map[string]float64 {
	close(s.stop)
	<-s.done
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]float64{}
	for p, c := range s.last {
		out[s.comm[p]] += c - s.base[p]
	}
	return out
}

// fsyncLatency writes 4 KiB and fsyncs it 200 times in dir and returns
// the median and the 90th percentile: the floor under every relay's
// end-of-data latency, since both fsync the message before their 250.
func fsyncLatency(dir string) (p50, p90 time.Duration, err error) {
	f, err := os.CreateTemp(dir, "fsync-probe.")
	if err != nil {
		return 0, 0, err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	buf := make([]byte, 4096)
	lat := make([]time.Duration, 0, 200)
	for range 200 {
		t := time.Now()
		if _, err := f.Write(buf); err != nil {
			return 0, 0, err
		}
		if err := f.Sync(); err != nil {
			return 0, 0, err
		}
		lat = append(lat, time.Since(t))
	}
	slices.Sort(lat)
	return lat[99], lat[179], nil
}
