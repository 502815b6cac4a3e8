// Command inboundbench is the Go side of the inbound benchmark
// (bench/run-inbound.sh): securerelay's whole inbound pipeline beside
// Postfix with postscreen, the same restrictions and the same two milters.
//
//	inboundbench gen DIR                       keys, DNS zone, messages
//	inboundbench dns ADDR ZONEFILE             the local DNS server
//	inboundbench scanner rspamd|clamav INFO    a scanner, until SIGTERM
//	inboundbench fsync DIR                     fsync latency of DIR's file system
//	inboundbench run -spec FILE -data DIR -out DIR [flags]   the measurement
//	inboundbench report DIR                    the summary again, from DIR/runs.jsonl
//
// The shell script starts the daemons, each in its own cgroup, and writes
// the spec; see the README's Benchmark section.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"strings"
	"time"
)

func netDial(addr string) (net.Conn, error) { return net.DialTimeout("tcp", addr, time.Second) }

func main() {
	log.SetFlags(log.Ltime)
	log.SetPrefix("[inboundbench] ")
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch a := os.Args[2:]; os.Args[1] {
	case "gen":
		if len(a) != 1 {
			usage()
		}
		err = gen(a[0])
	case "dns":
		if len(a) != 2 {
			usage()
		}
		err = serveDNS(a[0], a[1])
	case "scanner":
		if len(a) != 2 {
			usage()
		}
		err = runScanner(a[0], a[1])
	case "fsync":
		if len(a) != 1 {
			usage()
		}
		var p50, p90 time.Duration
		if p50, p90, err = fsyncLatency(a[0]); err == nil {
			fmt.Printf("median %.2f ms, p90 %.2f ms (200 × 4 KiB write + fsync in %s)\n", p50.Seconds()*1000, p90.Seconds()*1000, a[0])
		}
	case "run":
		err = runCmd(a)
	case "report":
		if len(a) != 1 {
			usage()
		}
		err = rereport(a[0])
	default:
		usage()
	}
	if err != nil {
		log.Fatal(err)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: inboundbench gen DIR | dns ADDR ZONEFILE | scanner rspamd|clamav INFOFILE | fsync DIR | run -spec FILE -data DIR -out DIR [flags] | report DIR")
	os.Exit(2)
}

func runCmd(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	specFile := fs.String("spec", "", "the spec run-inbound.sh wrote (JSON)")
	o := &options{}
	fs.StringVar(&o.data, "data", "", "folder with the generated messages")
	fs.StringVar(&o.out, "out", "", "results folder")
	variants := fs.String("variants", "postfix,securerelay,milters,postfix-nomilter,securerelay-nomilter", "variants, comma-separated")
	fs.IntVar(&o.n, "n", 3000, "messages per run")
	fs.IntVar(&o.warmup, "warmup", 200, "unrecorded messages per variant before the rounds")
	fs.IntVar(&o.rounds, "rounds", 3, "rounds")
	fs.IntVar(&o.session, "sessions", 20, "parallel sessions")
	fs.IntVar(&o.latN, "latency-n", 400, "messages per latency run (0: no latency phase)")
	fs.IntVar(&o.latSessions, "latency-sessions", 1, "parallel sessions in the latency phase")
	fs.DurationVar(&o.timeout, "timeout", 10*time.Minute, "limit per run")
	kinds := fs.String("messages", "text,pdf", "message kinds sent in turn")
	fs.StringVar(&o.loader, "loader", "go", "go (the timing client) or smtp-source (no latency figures)")
	fs.Parse(args) //nolint:errcheck // ExitOnError
	if *specFile == "" || o.data == "" || o.out == "" {
		return fmt.Errorf("run needs -spec, -data and -out")
	}
	b, err := os.ReadFile(*specFile)
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, &o.spec); err != nil {
		return fmt.Errorf("%s: %w", *specFile, err)
	}
	o.variants = strings.Split(*variants, ",")
	o.kinds = strings.Split(*kinds, ",")
	if o.loader != "go" && o.loader != "smtp-source" {
		return fmt.Errorf("-loader %q: go or smtp-source", o.loader)
	}
	return drive(o)
}
