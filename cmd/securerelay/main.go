// Command securerelay is a mail relay: an inbound MX filter and an outbound
// smarthost in one binary. This file is the command line; wire.go builds
// the running relay from the configuration.
package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/debug"
	"strings"
	"text/tabwriter"
	"time"

	"securerelay/config"
	"securerelay/dnsutil"
	"securerelay/queue"
)

// version is set at build time with -ldflags "-X main.version=…".
var version = ""

const usage = `usage: securerelay <command> [flags]

commands:
  serve --config FILE          run the relay
  check-config --config FILE   validate FILE; print every problem as FILE:LINE: key: what is wrong
  dkim keygen --domain D --selector S [--algorithm rsa|ed25519] [--bits N] --out FILE
                               make a DKIM key (mode 0600) and print its DNS record
  dkim check --config FILE     look up every configured selector and compare it with its key
  dkim rotate --config FILE --domain D [--selector S] [--algorithm rsa|ed25519]
                               make the next key of D (not signing yet) and print the steps
  queue list|count --config FILE [--held] [--quarantined] [--from ADDR] [--to ADDR]
                     [--older-than D] [--json]
                               show the spool (list includes spool/hold and spool/quarantine,
                               each recipient's state; count only messages being delivered)
  queue show --config FILE ID [--body]
                               envelope, recipients' states, header (--body: the message)
  queue hold|release|retry --config FILE ID... (retry: or --all)
                               hold/release a message (release: to the recipients still owed);
                               retry: deliver now (needs the running relay)
  queue bounce --config FILE ID...
                               return to the sender with a failure DSN (status 5.0.0) for the
                               recipients still owed, then delete; refused for the null sender
                               <> and for inbound mail (delete those instead)
  queue delete --config FILE ID...|--from ADDR|--to ADDR [--yes]
                               delete for good and print the count; a filter needs --yes
  queue prune --config FILE [--held-older-than D] [--quarantined-older-than D]
                               delete what was held/quarantined longer than D
                               (changes go through the running relay's control socket
                               state_dir/control.sock, else to the stopped relay's spool)
  tls-policy explain --config FILE DOMAIN [--requiretls] [--tls-required-no]
                               print the TLS policy for mail to DOMAIN, where each part comes
                               from, per MX host; exit 3 if DNS gave no MX host
  tls-policy probe --config FILE DOMAIN [--port N] [--timeout D] [--requiretls] [--tls-required-no]
                               EHLO, STARTTLS, EHLO, QUIT to each MX address (no mail); report
                               what it offers; exit 1 unless every one meets the policy, 3 as above
  encrypt lookup --config FILE ADDRESS [--timeout D]
                               which OpenPGP key the encryption fallback would use for ADDRESS,
                               from where, and why the others were refused; exit 0 if a usable
                               key exists, 1 if none, 3 if a source failed temporarily
  version                      print the version
`

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "serve":
		path, ok := configFlag("serve", args, stderr)
		if !ok {
			return 2
		}
		cfg, code := load(path, stderr)
		if cfg == nil {
			return code
		}
		if err := serve(cfg, path, stderr); err != nil {
			fmt.Fprintf(stderr, "securerelay: %v\n", err)
			return 1
		}
		return 0
	case "check-config":
		path, ok := configFlag("check-config", args, stderr)
		if !ok {
			return 2
		}
		cfg, code := load(path, stderr)
		if cfg == nil {
			return code
		}
		fmt.Fprintf(stdout, "%s: OK (%d listeners, %d domains, %d routes)\n", path, len(cfg.Listeners), len(cfg.Domains), len(cfg.Outbound.Routes))
		return 0
	case "queue":
		return queueMain(args, stdout, stderr)
	case "dkim":
		return dkimCmd(args, stdout, stderr)
	case "tls-policy":
		return tlsPolicyCmd(args, stdout, stderr)
	case "encrypt":
		return encryptCmd(args, stdout, stderr)
	case "version", "--version", "-v":
		fmt.Fprintln(stdout, "securerelay", versionString())
		return 0
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return 0
	}
	fmt.Fprintf(stderr, "securerelay: unknown command %q\n%s", cmd, usage)
	return 2
}

func configFlag(name string, args []string, stderr io.Writer) (string, bool) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	path := fs.String("config", "", "configuration file (YAML)")
	if err := fs.Parse(args); err != nil {
		return "", false
	}
	if *path == "" {
		fmt.Fprintf(stderr, "securerelay %s: --config FILE is required\n", name)
		return "", false
	}
	return *path, true
}

func load(path string, stderr io.Writer) (*config.Config, int) {
	cfg, err := config.Load(path)
	if err == nil {
		for _, w := range cfg.Warnings() {
			fmt.Fprintln(stderr, "warning:", w.Error())
		}
		// Key files are part of the configuration: a broken one is
		// reported like any other mistake, with its position.
		var warnings []string
		_, warnings, err = loadDKIM(cfg)
		for _, w := range warnings {
			fmt.Fprintln(stderr, "warning:", w)
		}
		if err == nil {
			_, err = loadRecipients(cfg, quietLog)
		}
		res := dnsutil.New(cfg.DNS.Resolver, cfg.DNS.Timeout.D())
		if err == nil {
			dec, derr := tlsDecider(cfg, res, quietLog, nil)
			for _, w := range routeAuthWarnings(cfg, dec) {
				fmt.Fprintln(stderr, "warning:", w)
			}
			err = derr
		}
		if err == nil {
			_, err = inboundContent(cfg, res, quietLog)
		}
		if err == nil {
			// Pinned keys and signing keys are checked here, with their
			// position; keyring files that cannot be used are warnings.
			_, err = encryption(cfg, nil)
		}
		if err == nil && cfg.Outbound.Encryption.Keyring != "" {
			if dir, derr := keyDirectory(cfg, res, quietLog, false); derr == nil {
				for _, p := range dir.KeyringProblems() {
					fmt.Fprintf(stderr, "warning: %v\n", cfg.KeyError("outbound.encryption.keyring", p))
				}
				dir.Close()
			}
		}
		if err == nil && hasInbound(cfg) && servedPostmaster(cfg) == "" {
			// A defaulted postmaster has no line: FILE: postmaster: ….
			fmt.Fprintf(stderr, "warning: %v\n", cfg.KeyError("postmaster", fmt.Errorf("%s is not in a domain with deliver_to, so inbound listeners refuse RCPT TO:<Postmaster> (RFC 5321 requires it); use an address in one of your domains", cfg.Postmaster)))
		}
	}
	if err != nil {
		var errs config.Errors
		var one *config.Error
		switch {
		case errors.As(err, &errs):
			for _, e := range errs {
				fmt.Fprintln(stderr, e.Error())
			}
		case errors.As(err, &one):
			// Already FILE:LINE: key: what.
			fmt.Fprintln(stderr, one.Error())
		default:
			fmt.Fprintf(stderr, "%s: %v\n", path, err)
		}
		return nil, 1
	}
	return cfg, 0
}

func versionString() string {
	if version != "" {
		return version
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		rev, dirty := "", ""
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = "+dirty"
				}
			}
		}
		if rev != "" {
			return "dev-" + rev[:min(12, len(rev))] + dirty + " (" + bi.GoVersion + ")"
		}
		return "dev (" + bi.GoVersion + ")"
	}
	return "dev"
}

// printList prints list's table: one row per message, followed by the
// lines of its recipients still owed.
func printList(items []queue.Info, stdout io.Writer) int {
	return printListAt(items, time.Now(), stdout)
}

// printListAt is printList with the clock for the ages.
func printListAt(items []queue.Info, now time.Time, stdout io.Writer) int {
	// The rows are aligned as a table; each is followed by the lines of
	// its recipients still owed (like mailq), outside the table.
	var rows bytes.Buffer
	var details [][]string
	tw := tabwriter.NewWriter(&rows, 2, 8, 2, ' ', 0)
	fmt.Fprintln(tw, "QUEUE ID\tSIZE\tARRIVAL\tAGE\tATTEMPTS\tNEXT\tSENDER\tRECIPIENTS")
	details = append(details, nil)
	for _, it := range items {
		if it.Err != nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t(%v)\t\n", it.ID, it.Err)
			details = append(details, nil)
			continue
		}
		from := it.Envelope.From
		if from == "" {
			from = "<>"
		}
		next := "-"
		if !it.Next.IsZero() {
			next = it.Next.Format(time.DateTime)
		}
		if it.Held || it.Quarantined {
			next = messageState(&it)
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%d\t%s\t%s\t%s\n", it.ID, it.Size,
			it.Envelope.Received.Format(time.DateTime), age(now.Sub(it.Envelope.Received)), it.Attempts, next, from, rcptSummary(&it))
		var d []string
		if it.TLSPolicy != "" {
			// Postfix's mailq shows the last error under the entry; the TLS
			// decision is what an admin asks first about a deferred partner.
			d = append(d, "  tls: "+it.TLSPolicy)
		}
		for _, r := range it.Rcpts {
			if r.State == queue.RcptSent || r.State == queue.RcptBounced || r.State == "done" {
				continue
			}
			if r.Code == "" && r.Reply == "" {
				// Owed and not tried yet: listed too, as mailq lists
				// every recipient still to be delivered.
				d = append(d, fmt.Sprintf("  [%s] %s", r.State, r.Addr))
				continue
			}
			d = append(d, fmt.Sprintf("  [%s] %s: %s %s", r.State, r.Addr, r.Code, r.Reply))
		}
		details = append(details, d)
	}
	tw.Flush()
	for i, line := range strings.Split(strings.TrimSuffix(rows.String(), "\n"), "\n") {
		fmt.Fprintln(stdout, line)
		if i < len(details) {
			for _, d := range details[i] {
				fmt.Fprintln(stdout, d)
			}
		}
	}
	return 0
}

// age is how long a message has been queued, in the two largest units
// ("45s", "12m", "3h05m", "2d04h").
func age(d time.Duration) string {
	switch {
	case d < 0:
		return "0s"
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 24*time.Hour:
		return fmt.Sprintf("%dh%02dm", int(d.Hours()), int(d.Minutes())%60)
	}
	return fmt.Sprintf("%dd%02dh", int(d.Hours())/24, int(d.Hours())%24)
}

// rcptSummary counts a message's recipients by state: "2 of 3 pending",
// or for a held message "1 of 3 held, 2 done".
func rcptSummary(it *queue.Info) string {
	pending, held, done := it.Count()
	n := len(it.Envelope.To)
	if held == 0 {
		return fmt.Sprintf("%d of %d pending", pending, n)
	}
	s := fmt.Sprintf("%d of %d held, %d done", held, n, done)
	if pending > 0 {
		s += fmt.Sprintf(", %d pending", pending)
	}
	return s
}

func hasInbound(cfg *config.Config) bool {
	for _, l := range cfg.Listeners {
		if l.Role == "inbound" {
			return true
		}
	}
	return false
}
