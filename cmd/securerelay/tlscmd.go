package main

// `securerelay tls-policy explain|probe`: what the TLS policy asks of a
// destination, and whether its servers would meet it. Both walk the path
// a delivery walks (outbound: Router.Route and Deliver's grouping in
// deliver.go, decideTLS in tlsdecide.go, connect and open in connect.go,
// establish in client.go) with the same
// tlspolicy calls, so that what they print is what a message would get,
// not a second opinion that could drift from it.

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	netsmtp "net/smtp"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	gosmtp "github.com/emersion/go-smtp"

	"securerelay/config"
	"securerelay/dnsutil"
	"securerelay/outbound"
	"securerelay/smtputil"
	"securerelay/tlspolicy"
)

// exitDNS: the MX hosts (or the DNSSEC records the decision depends on)
// could not be found. Not 2, which the command line keeps for usage
// errors, so that a script can tell a typo from an outage.
const exitDNS = 3

// lookupBudget bounds all DNS lookups and MTA-STS fetches of one command
// (a policy fetch alone may take 30s).
const lookupBudget = 2 * time.Minute

// tlsPolicyCmd is `securerelay tls-policy explain|probe`.
func tlsPolicyCmd(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return 2
	}
	switch args[0] {
	case "explain":
		return tlsExplain(args[1:], stdout, stderr)
	case "probe":
		return tlsProbe(args[1:], stdout, stderr)
	}
	fmt.Fprintf(stderr, "securerelay tls-policy: unknown subcommand %q\n%s", args[0], usage)
	return 2
}

type tlsCmdArgs struct {
	config        string
	domain        string
	requireTLS    bool
	tlsRequiredNo bool
	port          string
	timeout       time.Duration
}

// parseTLSArgs accepts flags before and after DOMAIN, as admins type them.
func parseTLSArgs(sub string, args []string, stderr io.Writer) (tlsCmdArgs, bool) {
	a := tlsCmdArgs{port: "25", timeout: 30 * time.Second}
	fs := flag.NewFlagSet("tls-policy "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(&a.config, "config", "", "configuration file (YAML)")
	fs.BoolVar(&a.requireTLS, "requiretls", false, "as for a message that arrived with REQUIRETLS (RFC 8689)")
	fs.BoolVar(&a.tlsRequiredNo, "tls-required-no", false, `as for a message with the header "TLS-Required: No"`)
	if sub == "probe" {
		fs.StringVar(&a.port, "port", a.port, "port of the MX hosts (delivery uses 25; configured next hops keep their own)")
		fs.DurationVar(&a.timeout, "timeout", a.timeout, "time allowed for each connection")
	}
	var pos []string
	for range len(args) + 1 {
		if err := fs.Parse(args); err != nil {
			return a, false
		}
		if fs.NArg() == 0 {
			break
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
	switch {
	case a.config == "":
		fmt.Fprintf(stderr, "securerelay tls-policy %s: --config FILE is required\n", sub)
		return a, false
	case len(pos) != 1:
		fmt.Fprintf(stderr, "securerelay tls-policy %s: want exactly one DOMAIN, got %d\n", sub, len(pos))
		return a, false
	case a.timeout <= 0:
		fmt.Fprintf(stderr, "securerelay tls-policy %s: --timeout must be positive\n", sub)
		return a, false
	}
	a.domain = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(pos[0]), "."))
	// Delivery decides for the A-label form (U-labels name the same
	// domain), and so does the explanation.
	if d, err := smtputil.DomainToASCII(a.domain); err == nil {
		a.domain = d
	}
	return a, true
}

// tlsEnv is what both subcommands build from the configuration, as serve
// builds it.
type tlsEnv struct {
	cfg *config.Config
	res *dnsutil.Client
	dec *tlspolicy.Decider
	rt  *outbound.Router
}

func newTLSEnv(path string, stderr io.Writer) (*tlsEnv, int) {
	cfg, code := load(path, stderr)
	if cfg == nil {
		return nil, code
	}
	res := dnsutil.New(cfg.DNS.Resolver, cfg.DNS.Timeout.D())
	dec, err := tlsDecider(cfg, res, quietLog, nil)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return nil, 1
	}
	rt, err := router(cfg)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", path, err)
		return nil, 1
	}
	return &tlsEnv{cfg: cfg, res: res, dec: dec, rt: rt}, 0
}

// destination is where delivery sends mail for a domain.
type destination struct {
	target outbound.Target
	// how says it in words, with the configuration key that decided it.
	how string
	// policyFor is the name the policy is decided for: the recipient
	// domain for MX delivery, the next-hop host for a configured one
	// (decideTLS, like Postfix's smtp_tls_policy_maps lookup).
	policyFor  string
	host, port string // configured next hop only
}

func (d destination) relay() bool {
	return d.target.Kind == outbound.KindSMTP || d.target.Kind == outbound.KindLMTP
}

func (e *tlsEnv) destination(domain string) (destination, error) {
	t := e.rt.Route(domain)
	d := destination{target: t, policyFor: domain}
	var key string
	if _, ok := e.rt.Local[domain]; ok {
		key = e.cfg.DomainPath(domain) + ".deliver_to"
	} else {
		// The first route that takes the domain on its own is the one
		// Route used: same matching code, no copy of it here.
		for i, r := range e.rt.Routes {
			if (&outbound.Router{Routes: []outbound.Route{r}}).Route(domain).Kind != outbound.KindMX {
				key = fmt.Sprintf("outbound.routes[%d] (match %s)", i, r.Match)
				break
			}
		}
	}
	switch t.Kind {
	case outbound.KindMX:
		d.how = "the MX hosts of " + domain + ", looked up through " + e.cfg.DNS.Resolver
		return d, nil
	case outbound.KindMaildir:
		d.how = "the local maildir " + t.Addr + " (" + key + "): nothing crosses a network, so no TLS policy applies, not even a rule naming " + domain
		return d, nil
	}
	h, p, err := net.SplitHostPort(t.Addr)
	if err != nil {
		return d, fmt.Errorf("%s: next hop %q: %w", key, t.Addr, err)
	}
	d.host, d.port, d.policyFor = h, p, strings.ToLower(h)
	if e.dec.HasDomainRule(domain) {
		// As delivery does (outbound Deliver, decideTLS): a partner's rule
		// travels with its recipients through any configured next hop.
		d.policyFor = domain
		d.how = fmt.Sprintf("%s://%s (%s); a rule names %s, so its policy is checked against this next hop, as delivery does", t.Kind, t.Addr, key, domain)
	} else {
		d.how = fmt.Sprintf("%s://%s (%s); the policy is decided for the next-hop host %s, as delivery does (no rule names %s)", t.Kind, t.Addr, key, d.policyFor, domain)
	}
	if t.Kind == outbound.KindLMTP {
		d.how += "; LMTP uses STARTTLS when offered and is checked like SMTP"
	}
	if a := t.Auth; a != nil {
		switch {
		case a.AllowInsecure:
			d.how += fmt.Sprintf("; credentials of %s go out over any session, clear text included (allow_insecure_auth)", a.Username)
		case a.TLS == tlspolicy.Encrypt:
			d.how += fmt.Sprintf("; credentials of %s go out over any TLS session, certificate unchecked (auth.tls: encrypt)", a.Username)
		default:
			d.how += fmt.Sprintf("; credentials of %s go out only inside TLS verified for %s (auth.tls: verify), else the mail waits", a.Username, h)
		}
	}
	return d, nil
}

// decide runs Decide and prints its steps; ok false means the command
// ends with the returned exit status.
func (e *tlsEnv) decide(ctx context.Context, w io.Writer, a tlsCmdArgs, d destination) (*tlspolicy.Policy, int, bool) {
	fmt.Fprintf(w, "destination: %s\n", a.domain)
	fmt.Fprintf(w, "next hop:    %s\n", d.how)
	msg := fmt.Sprintf("message:     REQUIRETLS %s, TLS-Required: No %s", yesNo(a.requireTLS), yesNo(a.tlsRequiredNo))
	if a.requireTLS && d.relay() {
		msg += " (as for submitted mail: inbound mail keeps REQUIRETLS only to MX hosts)"
	}
	fmt.Fprintln(w, msg)
	if d.target.Kind == outbound.KindMaildir {
		return nil, 0, false
	}
	decide := e.dec.Decide
	if d.relay() {
		decide = e.dec.DecideRelay // as delivery does
	}
	pol, err := decide(ctx, d.policyFor, a.requireTLS, a.tlsRequiredNo)
	if err != nil {
		var f *tlspolicy.Failure
		if !errors.As(err, &f) {
			fmt.Fprintf(w, "\nno policy: %v\n", err)
			return nil, 2, false
		}
		fmt.Fprintf(w, "\npolicy for %s:\n", d.policyFor)
		printLines(w, "  ", f.Explain)
		// f's level is not decided yet; its reason is the news.
		fmt.Fprintf(w, "no policy for %s (%s): %s\n", d.policyFor, f.Code, f.Reason)
		if f.Temporary {
			fmt.Fprintln(w, "delivery would be deferred until the lookup succeeds")
			return nil, exitDNS, false
		}
		return nil, 1, false
	}
	fmt.Fprintf(w, "\npolicy for %s:\n", d.policyFor)
	printLines(w, "  ", pol.Explain)
	return pol, 0, true
}

// hosts are the next hops in the order delivery tries them; ok false
// means DNS gave none (and says why).
func (e *tlsEnv) hosts(ctx context.Context, w io.Writer, domain string, d destination) ([]string, bool) {
	if d.relay() {
		return []string{d.host}, true
	}
	if e.cfg.DNS.Resolver == "" {
		fmt.Fprintln(w, "\nMX lookup: no dns.resolver configured and none in /etc/resolv.conf")
		return nil, false
	}
	var self func(string) bool
	if ours := selfAddrs(e.cfg); ours != nil {
		self = dnsutil.AddrSelf(ctx, e.res, ours)
	}
	hosts, err := dnsutil.MXTargetsExcept(ctx, e.res, domain, self)
	if err != nil {
		what := "failed (delivery would retry)"
		if dnsutil.IsMXLoop(err) {
			what = "leads back to this relay (delivery would return the message, 5.4.6)"
		} else if dnsutil.IsPermanent(err) {
			what = "found no mail server (delivery would bounce)"
		}
		fmt.Fprintf(w, "\nMX lookup of %s %s: %v\n", domain, what, err)
		return nil, false
	}
	fmt.Fprintf(w, "\nMX hosts in the order delivery tries them (equal preferences shuffled): %s\n", strings.Join(hosts, " "))
	return hosts, true
}

func forHost(ctx context.Context, pol *tlspolicy.Policy, d destination, host string) (*tlspolicy.HostPolicy, error) {
	if d.relay() {
		return pol.ForRelay(ctx, host)
	}
	return pol.ForMX(ctx, host)
}

// tlsSetup is what explain and probe share: arguments, configuration,
// and where mail for the domain goes; code is the exit status when !ok.
func tlsSetup(sub string, args []string, stderr io.Writer) (a tlsCmdArgs, e *tlsEnv, d destination, code int, ok bool) {
	if a, ok = parseTLSArgs(sub, args, stderr); !ok {
		return a, nil, d, 2, false
	}
	if e, code = newTLSEnv(a.config, stderr); e == nil {
		return a, nil, d, code, false
	}
	d, err := e.destination(a.domain)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return a, nil, d, 1, false
	}
	return a, e, d, 0, true
}

func tlsExplain(args []string, stdout, stderr io.Writer) int {
	a, e, d, code, ok := tlsSetup("explain", args, stderr)
	if !ok {
		return code
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupBudget)
	defer cancel()
	pol, code, ok := e.decide(ctx, stdout, a, d)
	if !ok {
		return code
	}
	e.explainEncryption(stdout, a.domain)
	hosts, ok := e.hosts(ctx, stdout, a.domain, d)
	if !ok {
		return exitDNS
	}
	var summary []string
	for _, h := range hosts {
		hp, err := forHost(ctx, pol, d, h)
		var f *tlspolicy.Failure
		switch {
		case err == nil:
			printLines(stdout, "  ", afterPrefix(hp.Explain, pol.Explain))
			summary = append(summary, hostSummary(hp))
		case errors.As(err, &f):
			printLines(stdout, "  ", afterPrefix(f.Explain, pol.Explain))
			fmt.Fprintf(stdout, "    the sender would be told: %s\n", f.UserText())
			summary = append(summary, fmt.Sprintf("%s: refused (%s): %s; fallback %s", h, f.Code, f.Reason, fallback(f.Fallback)))
		default:
			fmt.Fprintf(stdout, "  %s: %v\n", h, err)
			summary = append(summary, fmt.Sprintf("%s: %v", h, err))
		}
	}
	fmt.Fprintln(stdout, "\nsummary:")
	printLines(stdout, "  ", summary)
	return 0
}

// explainEncryption says what the OpenPGP fallback does for domain: the
// rule, whether it encrypts always or as the fallback, the key sources in
// order and the pinned keys.
func (e *tlsEnv) explainEncryption(w io.Writer, domain string) {
	match := e.dec.DomainRule(domain)
	rules, err := encryptionRules(e.cfg, time.Now())
	if err != nil {
		fmt.Fprintf(w, "encryption: %v\n", err)
		return
	}
	r := rules[match]
	if r == nil {
		fmt.Fprintln(w, "encryption: none (no rule for this domain says fallback: encrypt or encrypt: always)")
		return
	}
	fmt.Fprintf(w, "encryption: %s\n", describeEncryptRule(e.cfg, match, r))
	fmt.Fprintf(w, "  key sources, in order: %s\n", joinSources(r.Sources))
	for _, p := range r.Pins {
		who := "every recipient of the rule"
		if p.Address != "" {
			who = p.Address
		}
		fmt.Fprintf(w, "  pinned: %s (%s) for %s\n", p.Fingerprint, p.File, who)
	}
	fmt.Fprintln(w, "  only mail from outbound listeners; inbound mail and DSNs are never encrypted, REQUIRETLS messages never leave below the level")
}

// afterPrefix drops the Decide steps that ForMX copies in front of its own.
func afterPrefix(lines, prefix []string) []string {
	if len(lines) >= len(prefix) && slices.Equal(lines[:len(prefix)], prefix) {
		return lines[len(prefix):]
	}
	return lines
}

func hostSummary(hp *tlspolicy.HostPolicy) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: level %s (%s)", hp.Host, hp.Level, hp.Source)
	switch {
	case hp.Level == tlspolicy.None:
		b.WriteString(", clear text")
	case hp.RequiresTLS():
		fmt.Fprintf(&b, ", min %s, fallback %s", tls.VersionName(hp.MinVersion), fallback(hp.Fallback))
	default:
		fmt.Fprintf(&b, ", min %s, clear text when STARTTLS is missing or fails", tls.VersionName(hp.MinVersion))
	}
	if hp.RequireTLS {
		b.WriteString(", REQUIRETLS passed on")
	}
	if hp.STSTesting {
		b.WriteString(", MTA-STS testing (failures reported, not enforced)")
	}
	return b.String()
}

// fallback names what the delivery engine does when the level is not met;
// a rule without one defers (config: outbound.tls.policies[].fallback).
func fallback(f string) string {
	if f == "" {
		return "defer"
	}
	return f
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func printLines(w io.Writer, indent string, lines []string) {
	for _, l := range lines {
		fmt.Fprintln(w, indent+l)
	}
}

func tlsProbe(args []string, stdout, stderr io.Writer) int {
	a, e, d, code, ok := tlsSetup("probe", args, stderr)
	if !ok {
		return code
	}
	// The roots tlsDecider built (ca_file read once): the probe reports
	// the chain apart from the name, so that "untrusted" and "wrong name"
	// are told apart; the verdict itself is Evaluate's.
	roots, rootsDesc := e.dec.RootCAs(), "the system's roots"
	if f := e.cfg.Outbound.TLS.CAFile; f != "" {
		rootsDesc += " and " + f
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupBudget)
	defer cancel()
	pol, code, ok := e.decide(ctx, stdout, a, d)
	if !ok {
		return code
	}
	hosts, ok := e.hosts(ctx, stdout, a.domain, d)
	if !ok {
		return exitDNS
	}
	port := a.port
	if d.relay() {
		port = d.port
	}
	p := prober{helo: e.cfg.Outbound.Helo, timeout: a.timeout, roots: roots, rootsDesc: rootsDesc}
	total, failed := 0, 0
	for _, h := range hosts {
		fmt.Fprintln(stdout)
		hp, err := forHost(ctx, pol, d, h)
		if err != nil {
			total++
			failed++
			r := &probeReport{title: h + " (not contacted)"}
			r.add("result", "policy NOT met: delivery would not use this host: "+err.Error())
			r.print(stdout)
			continue
		}
		addrs, err := outbound.NextHopAddrs(ctx, e.res, h, d.relay())
		if err != nil {
			total++
			failed++
			r := &probeReport{title: h + " (not contacted)"}
			r.add("policy", policyLine(hp))
			r.add("result", "policy NOT met: no address: "+err.Error())
			r.print(stdout)
			continue
		}
		for i, ad := range addrs {
			if i > 0 {
				fmt.Fprintln(stdout)
			}
			total++
			r := p.probe(ctx, hp, h, ad, port, d.target.Kind == outbound.KindLMTP)
			r.print(stdout)
			if !r.met {
				failed++
			}
		}
	}
	fmt.Fprintln(stdout)
	if failed > 0 {
		fmt.Fprintf(stdout, "%d of %d next-hop addresses do NOT meet the policy\n", failed, total)
		return 1
	}
	fmt.Fprintf(stdout, "all %d next-hop addresses meet the policy\n", total)
	return 0
}

type probeReport struct {
	title string
	rows  [][2]string
	met   bool
}

func (r *probeReport) add(k, v string) { r.rows = append(r.rows, [2]string{k, v}) }

func (r *probeReport) print(w io.Writer) {
	fmt.Fprintln(w, r.title)
	tw := tabwriter.NewWriter(w, 2, 8, 2, ' ', 0)
	for _, row := range r.rows {
		fmt.Fprintf(tw, "  %s\t%s\n", row[0], row[1])
	}
	tw.Flush()
}

func policyLine(hp *tlspolicy.HostPolicy) string {
	s := fmt.Sprintf("level %s from %s", hp.Level, hp.Source)
	if hp.Level != tlspolicy.None {
		s += ", min " + tls.VersionName(hp.MinVersion)
	}
	if len(hp.Names) > 0 {
		s += ", names " + strings.Join(hp.Names, " ")
	}
	if hp.RequireTLS {
		s += ", REQUIRETLS"
	}
	return s
}

type prober struct {
	helo      string
	timeout   time.Duration
	roots     *x509.CertPool
	rootsDesc string
}

// probeClient is what the probe asks of net/smtp (SMTP) and go-smtp
// (LMTP), the clients delivery uses.
type probeClient interface {
	Hello(string) error
	Extension(string) (bool, string)
	StartTLS(*tls.Config) error
	TLSConnectionState() (tls.ConnectionState, bool)
	Quit() error
	Close() error
}

// probe runs the session establish runs, EHLO (LHLO), STARTTLS, EHLO
// (LHLO), and judges it with the same calls (TLSConfig, Evaluate,
// CheckRequireTLS); then QUIT. It never sends MAIL FROM.
func (p prober) probe(ctx context.Context, hp *tlspolicy.HostPolicy, host string, addr netip.Addr, port string, lmtp bool) *probeReport {
	r := &probeReport{title: fmt.Sprintf("%s [%s]:%s", host, addr, port)}
	if lmtp {
		r.title += " (LMTP)"
	}
	r.add("policy", policyLine(hp))
	dctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", net.JoinHostPort(addr.String(), port))
	if err != nil {
		r.add("result", "policy NOT met: cannot connect: "+err.Error())
		return r
	}
	defer conn.Close()
	stop := context.AfterFunc(dctx, func() { conn.Close() })
	defer stop()
	conn.SetDeadline(time.Now().Add(p.timeout))
	var c probeClient
	hello := "EHLO"
	if lmtp {
		gc := gosmtp.NewClientLMTP(conn)
		gc.CommandTimeout = p.timeout
		c, hello = gc, "LHLO"
	} else {
		nc, err := netsmtp.NewClient(conn, host)
		if err != nil {
			r.add("result", "policy NOT met: no SMTP greeting: "+err.Error())
			return r
		}
		c = nc
	}
	defer c.Close()
	if err := c.Hello(p.helo); err != nil {
		r.add("result", "policy NOT met: "+hello+": "+err.Error())
		return r
	}
	offered, _ := c.Extension("STARTTLS")
	var tlsCfg *tls.Config
	if hp.UseSTARTTLS() {
		tlsCfg = hp.TLSConfig(nil)
	}
	switch {
	case offered && tlsCfg == nil:
		r.add("STARTTLS", "offered; not used (level none)")
	case offered:
		r.add("STARTTLS", "offered")
	default:
		r.add("STARTTLS", "NOT offered")
	}
	var cs *tls.ConnectionState
	if offered && tlsCfg != nil {
		// The certificate is wanted in the report even when the policy's
		// own check rejects it and ends the handshake.
		var seen *tls.ConnectionState
		check := tlsCfg.VerifyConnection
		tlsCfg.VerifyConnection = func(st tls.ConnectionState) error {
			seen = &st
			if check != nil {
				return check(st)
			}
			return nil
		}
		if herr := c.StartTLS(tlsCfg); herr != nil {
			if f := (*tlspolicy.Failure)(nil); errors.As(herr, &f) {
				r.add("TLS", "handshake ended by the policy's certificate check (see result)")
			} else {
				r.add("TLS", "handshake failed: "+herr.Error())
			}
			out := hp.Evaluate(offered, nil, herr)
			p.certRows(r, hp, seen, out.Failure)
			if out.Failure != nil {
				r.add("result", "policy NOT met: "+out.Failure.Reason)
				p.reportRow(r, out)
				return r
			}
			r.met = true
			r.add("result", fmt.Sprintf("policy met (level %s): delivery would reconnect and send in clear text", hp.Level))
			p.reportRow(r, out)
			return r
		}
		if st, ok := c.TLSConnectionState(); ok {
			cs = &st
		}
	}
	out := hp.Evaluate(offered, cs, nil)
	if out.TLS != "" {
		r.add("TLS", out.TLS)
	} else {
		r.add("TLS", "none: the session stays in clear text")
	}
	p.certRows(r, hp, cs, out.Failure)
	adv, _ := c.Extension("REQUIRETLS")
	r.add("REQUIRETLS", advertised(adv))
	switch {
	case out.Failure != nil:
		r.add("result", "policy NOT met: "+out.Failure.Reason)
	default:
		if err := hp.CheckRequireTLS(adv); err != nil {
			var f *tlspolicy.Failure
			reason := err.Error()
			if errors.As(err, &f) {
				reason = f.Reason
			}
			r.add("result", "policy NOT met: "+reason)
			break
		}
		r.met = true
		r.add("result", fmt.Sprintf("policy met (required %s, achieved %s)", out.Required, out.Achieved))
	}
	p.reportRow(r, out)
	conn.SetDeadline(time.Now().Add(5 * time.Second))
	if err := c.Quit(); err != nil {
		r.add("QUIT", err.Error())
	}
	return r
}

func advertised(b bool) string {
	if b {
		return "advertised"
	}
	return "not advertised"
}

func (p prober) reportRow(r *probeReport, out tlspolicy.Outcome) {
	if out.Report != nil {
		r.add("MTA-STS", fmt.Sprintf("testing mode; enforce would refuse: %s (%s)", out.Report.Reason, out.Report.Code))
	}
}

// certRows describes what the server presented and how it fares on its
// own against the roots and the MX name; the policy's verdict is Evaluate's
// (fail), which alone says whether a TLSA record matched.
func (p prober) certRows(r *probeReport, hp *tlspolicy.HostPolicy, cs *tls.ConnectionState, fail *tlspolicy.Failure) {
	if cs == nil {
		return
	}
	if len(cs.PeerCertificates) == 0 {
		r.add("certificate", "none sent")
		return
	}
	leaf := cs.PeerCertificates[0]
	r.add("subject", leaf.Subject.String())
	var sans []string
	for _, n := range leaf.DNSNames {
		sans = append(sans, "DNS:"+n)
	}
	for _, ip := range leaf.IPAddresses {
		sans = append(sans, "IP:"+ip.String())
	}
	if len(sans) == 0 {
		sans = []string{"none"}
	}
	r.add("SANs", strings.Join(sans, " "))
	r.add("issuer", leaf.Issuer.String())
	now := time.Now()
	validity := fmt.Sprintf("%s to %s", leaf.NotBefore.UTC().Format(time.DateTime), leaf.NotAfter.UTC().Format(time.DateTime))
	switch {
	case now.After(leaf.NotAfter):
		validity += " (EXPIRED)"
	case now.Before(leaf.NotBefore):
		validity += " (NOT YET VALID)"
	default:
		validity += fmt.Sprintf(" (%d days left)", int(leaf.NotAfter.Sub(now).Hours()/24))
	}
	r.add("valid", validity)
	// For a fingerprint rule: either digest can be pinned.
	r.add("sha256 cert", fmt.Sprintf("%X", sha256.Sum256(leaf.Raw)))
	r.add("sha256 pubkey", fmt.Sprintf("%X", sha256.Sum256(leaf.RawSubjectPublicKeyInfo)))
	inter := x509.NewCertPool()
	for _, c := range cs.PeerCertificates[1:] {
		inter.AddCert(c)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: p.roots, Intermediates: inter, CurrentTime: now}); err != nil {
		r.add("chain", "does NOT verify against "+p.rootsDesc+": "+err.Error())
	} else {
		r.add("chain", "verifies against "+p.rootsDesc)
	}
	if leaf.VerifyHostname(hp.Host) == nil {
		r.add("host name", "certificate names "+hp.Host)
	} else {
		r.add("host name", "certificate does NOT name "+hp.Host)
	}
	if len(hp.TLSA) == 0 {
		return
	}
	recs := make([]string, len(hp.TLSA))
	for i, t := range hp.TLSA {
		recs[i] = fmt.Sprintf("%d %d %d", t.Usage, t.Selector, t.MatchingType)
	}
	verdict := "a record matches"
	switch {
	case fail != nil && fail.Code == tlspolicy.CodeTLSAMismatch:
		verdict = "NO record matches"
	case fail != nil:
		verdict = "not confirmed (the session failed with " + string(fail.Code) + ")"
	}
	r.add("TLSA", fmt.Sprintf("%s: %s", strings.Join(recs, ", "), verdict))
}

// routeAuthWarnings are check-config's warnings (and serve's, at start)
// about route credentials: one per route whose credentials need a next
// hop verified as its host (auth.tls: verify, written or by default)
// while the TLS policy for that host does not authenticate the server
// (its level is none, may or encrypt). Delivery then waits whenever the
// certificate cannot be verified, yet tls-policy explain and probe judge
// the host by the weaker level. A route that accepts less on purpose
// (auth.tls: encrypt, allow_insecure_auth) has said so and gets no
// warning. nil dec (a policy that did not load) warns about nothing.
func routeAuthWarnings(cfg *config.Config, dec *tlspolicy.Decider) []string {
	if dec == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), lookupBudget)
	defer cancel()
	var out []string
	for i, r := range cfg.Outbound.Routes {
		a := r.Auth
		if a == nil || a.AllowInsecureAuth || a.TLS == "encrypt" {
			continue
		}
		_, hostport, err := config.ParseNextHop(r.NextHop)
		if err != nil {
			continue
		}
		host, _, err := net.SplitHostPort(hostport)
		if err != nil {
			continue
		}
		// As delivery decides it for mail whose domain no rule names
		// (decideTLS): DecideRelay asks no DNS.
		pol, err := dec.DecideRelay(ctx, host, false, false)
		if err != nil {
			continue
		}
		hp, err := pol.ForRelay(ctx, host)
		if err != nil || hp.Authenticates() {
			continue
		}
		fix := fmt.Sprintf("add {match: \"[%s]\", level: verify} to outbound.tls.policies", host)
		if strings.HasPrefix(hp.Source, "policy rule") {
			fix = "raise " + hp.Source + " to level: verify"
		}
		key := fmt.Sprintf("outbound.routes[%d].auth", i)
		out = append(out, fmt.Sprintf("%s:%d: %s: the credentials go out only inside TLS verified for %s (auth.tls: verify), "+
			"but the TLS policy for %s is %s (%s), which does not check who the server is: mail through this route waits "+
			"whenever the certificate cannot be verified, and tls-policy probe does not test it; %s, "+
			"or accept an unverified server with auth.tls: encrypt (a man in the middle can then read the password)",
			cfg.Path, cfg.Line(key), key, host, host, hp.Level, hp.Source, fix))
	}
	return out
}
