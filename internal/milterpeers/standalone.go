package milterpeers

import "fmt"

// Start starts a scanner outside a test: kind "rspamd", or "clamav" (clamd
// and clamav-milter). It is the instance the tests get, so that the inbound
// benchmark (bench/inbound) measures Postfix and securerelay against the
// same offline configuration the tests verified. The caller stops it with
// Stop; the daemons also get SIGKILL when the calling process dies.
func Start(kind string) (*Instance, error) {
	switch kind {
	case "rspamd":
		bin, err := lookPath("rspamd")
		if err != nil {
			return nil, err
		}
		return startRspamd(bin)
	case "clamav":
		clamd, err := lookPath("clamd")
		if err != nil {
			return nil, err
		}
		milter, err := lookPath("clamav-milter")
		if err != nil {
			return nil, err
		}
		return startClamav(clamd, milter)
	}
	return nil, fmt.Errorf("milterpeers: unknown scanner %q (rspamd or clamav)", kind)
}

// PIDs maps each daemon of the instance ("rspamd", "clamd",
// "clamav-milter") to its process ID, so that a benchmark can count each
// one's CPU apart.
func (in *Instance) PIDs() map[string]int {
	m := make(map[string]int, len(in.procs))
	for _, d := range in.procs {
		m[d.name] = d.cmd.Process.Pid
	}
	return m
}
