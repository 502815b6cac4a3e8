package main

import (
	"encoding/json"
	"os"
	"os/signal"
	"syscall"

	"securerelay/internal/milterpeers"
)

// scannerInfo is what a running scanner tells the driver and the relay
// configurations: the milter address and each daemon's PID.
type scannerInfo struct {
	Addr string         `json:"addr"`
	PIDs map[string]int `json:"pids"`
	Dir  string         `json:"dir"`
}

// runScanner starts rspamd or clamav (clamd + clamav-milter) with the
// offline configuration the tests use (internal/milterpeers), writes
// scannerInfo to out and runs until SIGTERM or SIGINT. The caller starts
// it in the cgroup the scanner's CPU is counted in: its daemons inherit
// it.
func runScanner(kind, out string) error {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM, syscall.SIGINT)
	in, err := milterpeers.Start(kind)
	if err != nil {
		return err
	}
	defer in.Stop()
	b, err := json.Marshal(scannerInfo{Addr: in.Addr, PIDs: in.PIDs(), Dir: in.Dir})
	if err != nil {
		return err
	}
	if err := os.WriteFile(out+".tmp", b, 0o644); err != nil {
		return err
	}
	if err := os.Rename(out+".tmp", out); err != nil {
		return err
	}
	<-sig
	return nil
}
