package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"path/filepath"
	"reflect"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"securerelay/config"
	"securerelay/dnsutil"
	"securerelay/encrypt"
	"securerelay/inbound"
	"securerelay/internal/anvil"
	"securerelay/internal/control"
	"securerelay/internal/counter"
	"securerelay/outbound"
	"securerelay/queue"
	"securerelay/smtpd"
	"securerelay/tlspolicy"
)

// shutdownGrace bounds how long SIGTERM waits for transactions and
// deliveries in flight; whatever is cut short was either never acknowledged
// (the client retries) or stays in the spool.
const shutdownGrace = 30 * time.Second

func spoolDir(cfg *config.Config) string { return filepath.Join(cfg.StateDir, "spool") }

func newLogger(cfg *config.Config, w io.Writer) *slog.Logger {
	var lvl slog.Level
	switch cfg.Log.Level {
	case "debug":
		lvl = slog.LevelDebug
	case "warn":
		lvl = slog.LevelWarn
	case "error":
		lvl = slog.LevelError
	}
	ho := &slog.HandlerOptions{Level: lvl}
	if cfg.Log.Format == "json" {
		return slog.New(slog.NewJSONHandler(w, ho))
	}
	return slog.New(slog.NewTextHandler(w, ho))
}

func router(cfg *config.Config) (*outbound.Router, error) {
	r := &outbound.Router{Local: map[string]outbound.Target{}}
	for name, d := range cfg.Domains {
		if d.DeliverTo == "" {
			continue // a domain we only send from
		}
		t, err := outbound.ParseTarget(d.DeliverTo)
		if err != nil {
			return nil, fmt.Errorf("domains.%s.deliver_to: %w", name, err)
		}
		r.Local[name] = t
	}
	for i, rt := range cfg.Outbound.Routes {
		t, err := outbound.ParseTarget(rt.NextHop)
		if err != nil || t.Kind == outbound.KindMaildir {
			return nil, fmt.Errorf("outbound.routes[%d].next_hop: %q is not smtp://host:port or lmtp://host:port", i, rt.NextHop)
		}
		if rt.Auth != nil {
			t.Auth = &outbound.RouteAuth{Username: rt.Auth.Username, Password: rt.Auth.Password, AllowInsecure: rt.Auth.AllowInsecureAuth}
			if rt.Auth.TLS == "encrypt" {
				t.Auth.TLS = tlspolicy.Encrypt
			}
		}
		r.Routes = append(r.Routes, outbound.Route{Match: strings.ToLower(rt.Match), Target: t})
	}
	return r, nil
}

// userAccounts are the AUTH users with their sender binding; the global
// outbound.sender_binding is resolved here, so a reload applies it too.
func userAccounts(cfg *config.Config) []outbound.Account {
	var out []outbound.Account
	for _, u := range cfg.Outbound.Users {
		a := outbound.Account{Name: u.Name, PasswordHash: u.PasswordHash}
		if len(u.Senders) > 0 {
			a.Senders = u.Senders
		}
		mode := u.SenderBinding
		if mode == "" {
			mode = cfg.Outbound.SenderBinding
		}
		a.LoginOnly = mode == "login"
		out = append(out, a)
	}
	return out
}

// domainList is the domains the inbound listeners accept mail for: those
// with a deliver_to (a domain we only sign for is not ours to receive).
func domainList(cfg *config.Config) []string {
	var ds []string
	for name, d := range cfg.Domains {
		if d.DeliverTo != "" {
			ds = append(ds, name)
		}
	}
	return ds
}

func trusted(l config.Listener) []netip.Prefix { return prefixes(l.TrustedNetworks) }

// limitExempt: the per-client limits spare a listener's trusted networks
// (the groupware: one address, many sessions, and mail that must not be
// throttled away) and its client_limit_exceptions; nil when there are none.
func limitExempt(l config.Listener) func(netip.Addr) bool {
	nets := append(trusted(l), prefixes(l.ClientLimitExceptions)...)
	if len(nets) == 0 {
		return nil
	}
	return func(ip netip.Addr) bool {
		ip = ip.Unmap()
		for _, p := range nets {
			if p.Contains(ip) {
				return true
			}
		}
		return false
	}
}

// relay is the running process, kept so SIGHUP can update it in place.
type relay struct {
	cfg      *config.Config
	log      *slog.Logger
	certs    *smtpd.Certs
	q        *queue.Queue
	ctl      *control.Server // the queue commands' socket (queuecmd.go)
	engine   *outbound.Engine
	users    *outbound.Users
	signer   *outbound.Signer
	loops    *counter.File
	clients  *anvil.Memory      // per-client limit counts, shared by the listeners
	passed   *inbound.PassCache // nil: no inbound listener
	ours     *outbound.DomainSet
	inbound  []*inbound.Role
	servers  []*smtpd.Server
	cfgPath  string
	serveErr chan error
	stsCache tlspolicy.STSCache
	dnsCache *dnsutil.Cache // nil: dns.cache_size 0
	health   *health        // nil: metrics.address unset
	metrics  *metrics       // nil: metrics.address unset
	// keys is the OpenPGP key directory of the encryption fallback, one
	// for the process (its settings need a restart; keyring files are
	// read again when they change).
	keys *encrypt.Directory
}

// gcPercent is the garbage collector's target while serving, unless the
// GOGC environment variable says otherwise. The relay's live heap is
// small (a few MiB: messages are streamed from the spool), so Go's default
// of 100 collects very often: in the inbound benchmark 400 took 11% off
// the relay's CPU per message, for a peak RSS of 36 instead of 25 MiB
// under 20 concurrent sessions (Postfix's processes: 500 MiB).
const gcPercent = 400

func serve(cfg *config.Config, path string, stderr io.Writer) error {
	log := newLogger(cfg, stderr)
	slog.SetDefault(log)
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}
	// For measuring where the CPU goes under load (bench/); written when
	// the relay stops.
	if f := os.Getenv("SECURERELAY_CPUPROFILE"); f != "" {
		out, err := os.Create(f)
		if err != nil {
			return fmt.Errorf("SECURERELAY_CPUPROFILE: %w", err)
		}
		if err := pprof.StartCPUProfile(out); err != nil {
			return fmt.Errorf("SECURERELAY_CPUPROFILE: %w", err)
		}
		defer func() { pprof.StopCPUProfile(); out.Close() }()
		log.Info("writing a CPU profile", "file", f)
	}
	// Caught from the start, not only once the loop runs: a SIGHUP
	// (systemctl reload) right after READY=1, or while starting, must
	// not kill the relay with the signal's default action.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return fmt.Errorf("state_dir: %w", err)
	}
	certs, err := smtpd.LoadCerts(cfg.TLS.Cert, cfg.TLS.Key, cfg.StateDir, cfg.Hostname, log)
	if err != nil {
		return err
	}
	rt, err := router(cfg)
	if err != nil {
		return err
	}
	if cfg.DNS.Resolver == "" {
		log.Warn("no dns.resolver configured and none found in /etc/resolv.conf: MX delivery will be deferred")
	}
	// One answer cache for the process: a reload keeps what it knows.
	dnsCache := dnsutil.NewCache(cfg.DNS.CacheSize, nil)
	res := dnsutil.New(cfg.DNS.Resolver, cfg.DNS.Timeout.D())
	res.Cache = dnsCache
	keys, warnings, err := loadDKIM(cfg)
	if err != nil {
		return err
	}
	for _, w := range warnings {
		log.Warn("dkim: weak key", "detail", w)
	}
	idle := 5 * time.Second
	if cfg.Outbound.IdleConnectionTimeout != nil {
		idle = cfg.Outbound.IdleConnectionTimeout.D()
	}
	r := &relay{cfg: cfg, log: log, certs: certs, cfgPath: path, serveErr: make(chan error, len(cfg.Listeners)), dnsCache: dnsCache}
	r.signer = outbound.NewSigner(keys, dkimOptions(cfg), cfg.Outbound.DKIM.UseEnvelopeSender, log)
	if cfg.Metrics.Address != "" {
		r.metrics = newMetrics()
		r.metrics.signer = r.signer
	}
	r.ours = outbound.NewDomainSet(ourDomains(cfg))
	// One MTA-STS cache for the process, kept in state_dir: neither a
	// reload nor a restart may forget the enforce policies an attacker
	// could then block the refresh of (RFC 8461 section 5).
	stsPath := filepath.Join(cfg.StateDir, "mta-sts-cache.json")
	if fc, err := tlspolicy.NewFileCache(stsPath, 0, time.Now()); err == nil {
		r.stsCache = fc
	} else {
		log.Error("MTA-STS cache unreadable; moved aside, policies will be fetched again", "error", err, "moved_to", stsPath+".damaged")
		r.stsCache = tlspolicy.NewMemoryCache(0)
		if os.Rename(stsPath, stsPath+".damaged") == nil {
			if fc, err := tlspolicy.NewFileCache(stsPath, 0, time.Now()); err == nil {
				r.stsCache = fc
			}
		}
	}
	tlsPol, err := tlsDeciderObserved(cfg, res, log, r.stsCache, r.metrics.tlsHook())
	if err != nil {
		return err
	}
	if r.keys, err = keyDirectory(cfg, res, log, true); err != nil {
		return err
	}
	enc, err := encryption(cfg, r.keys)
	if err != nil {
		return err
	}
	for _, p := range r.keys.KeyringProblems() {
		log.Warn("encryption: keyring file not used", "error", p)
	}
	r.engine = outbound.NewEngine(outbound.EngineOptions{
		Helo:                cfg.Outbound.Helo,
		Self:                selfAddrs(cfg),
		Resolver:            res,
		MaxPerDestination:   cfg.Outbound.MaxConnectionsPerDestination,
		ConnectTimeout:      cfg.Outbound.ConnectTimeout.D(),
		CommandTimeout:      cfg.Outbound.CommandTimeout.D(),
		IdleTimeout:         idle,
		StartTLS:            cfg.Outbound.StartTLS != "off",
		TLS:                 tlsPol,
		HonourTLSRequiredNo: cfg.Outbound.TLS.TLSRequiredNo == "honour",
		Transform:           r.signer.Transform,
		Encryption:          enc,
		SpillDir:            filepath.Join(cfg.StateDir, "tmp"),
		Logger:              log,
	}, rt)
	var retry []time.Duration
	for _, d := range cfg.Queue.Retry {
		retry = append(retry, d.D())
	}
	// One process owns the spool: a second relay on the same state_dir,
	// or a queue command working on the files, would race deliveries.
	// A queue command working on the stopped relay's spool holds the
	// lock for a moment: wait for it rather than fail the start.
	unlock, err := lockSpool(cfg, 10*time.Second)
	if err != nil {
		return err
	}
	defer unlock()
	r.q, err = queue.Open(queue.Options{
		Dir:       spoolDir(cfg),
		Retry:     retry,
		MaxAge:    cfg.Queue.MaxAge.D(),
		Workers:   cfg.Queue.Workers,
		Logger:    log,
		Deliverer: r.engine,
		Bouncer: outbound.NewBouncer(func() *queue.Queue { return r.q }, outbound.BouncerOptions{
			Hostname: cfg.Hostname, Postmaster: cfg.Postmaster, MaxReturnSize: int64(cfg.Queue.DSNReturnMaxSize)}),
		DelayWarning: cfg.Queue.DelayWarningTime.D(),
		Observe:      r.metrics.queueHook(),
		// Pre-created spool files take file creation and the directory
		// fsync off the path to the 250 (see queue/pool.go): +15%
		// delivered msg/s and -10% CPU in paired runs of smtp-source →
		// relay → smtp-sink on the reference machine. 128 empty files
		// cost nothing but inodes.
		Preallocate: 128,

		// spool/hold and spool/quarantine are bounded (queue/hold.go).
		HoldMaxAge:       cfg.Queue.HoldMaxAge.D(),
		HoldMaxSize:      int64(cfg.Queue.HoldMaxSize),
		QuarantineMaxAge: cfg.Queue.QuarantineMaxAge.D(),
	})
	if err != nil {
		return err
	}
	r.users = outbound.NewAccounts(userAccounts(cfg))
	recips, err := loadRecipients(cfg, log)
	if err != nil {
		return err
	}
	r.loops, err = counter.Open(filepath.Join(cfg.StateDir, "loop-counters.json"), 10*time.Second, log)
	if err != nil {
		return err
	}
	r.clients = anvil.New(0)
	if hasInbound(cfg) {
		// In state_dir, so that a restart does not screen (and, with the
		// deep protocol test, 450) every regular sender again. Entries
		// live at most cache_ttl, or 1h for a deep-protocol pass.
		maxTTL := max(cfg.Inbound.Screen.CacheTTL.D(), time.Hour)
		r.passed = inbound.OpenPassCache(filepath.Join(cfg.StateDir, "screen-cache.json"), time.Minute, maxTTL, log)
	}
	tlsConf := certs.Config()
	content, err := inboundContent(cfg, res, log)
	if err != nil {
		return err
	}
	r.metrics.watchMilters(content)
	if hasInbound(cfg) && servedPostmaster(cfg) == "" {
		log.Warn("postmaster is not in a domain with deliver_to: inbound listeners refuse RCPT TO:<Postmaster>", "postmaster", cfg.Postmaster)
	}
	for _, l := range cfg.Listeners {
		var role smtpd.Role
		if l.Role == "inbound" {
			ir := inbound.NewWithOptions(inbound.Options{
				Domains: domainList(cfg), Recipients: recips, Resolver: res, Log: log,
				Checks: inboundChecks(cfg), Screen: inboundScreen(cfg), Verifiers: verifiers(cfg),
				Postmaster: servedPostmaster(cfg), TLSFrom: tlsFrom(cfg), PassCache: r.passed,
				MaxMailPerSession: cfg.Inbound.MaxMailPerSession,
			})
			ir.SetContent(content)
			r.inbound = append(r.inbound, ir)
			role = ir
		} else {
			role = outbound.NewSubmission(outbound.SubmissionOptions{
				Trusted: trusted(l), Auth: authMode(l.Auth), ForeignFrom: foreignFrom(l.ForeignFrom), Ours: r.ours,
				NullSender: nullSender(l.NullSender), NullSenderAddress: l.NullSenderAddress,
				RecipientKey: r.engine.RequiredKey,
			}, r.users)
		}
		lim := l.Limits
		var pregreet time.Duration
		var pregreetSkip func(netip.Addr) bool
		if ir, ok := role.(*inbound.Role); ok {
			pregreet, pregreetSkip = cfg.Inbound.Screen.Pregreet.D(), ir.Allowed
		}
		s := smtpd.New(smtpd.Options{
			Name: l.Name, Address: l.Address, Hostname: cfg.Hostname, TLS: tlsConf,
			MaxMessageSize: int64(lim.MaxMessageSize), MaxRecipients: lim.MaxRecipients,
			MaxLineLength: lim.MaxLineLength, MaxErrors: lim.MaxErrors, MaxConnections: lim.MaxConnections, MaxHops: lim.MaxHops,
			MinFreeSpace: int64(cfg.Queue.MinFreeSpace), FreeSpace: freeSpace(cfg.StateDir),
			CommandTimeout: lim.CommandTimeout.D(), DataTimeout: lim.DataTimeout.D(),
			NormalizeLineEndings: lim.BareLineEndings == "normalize",
			AllowInsecureAuth:    l.AllowInsecureAuth, RequireTLS: l.RequireTLS,
			DSN:   l.DSN != nil && *l.DSN,
			Queue: r.q, Role: role, Logger: log,
			AutoReplies: r.loops, MaxAutoReplies: lim.MaxAutoReplies, AutoReplyWindow: lim.AutoReplyWindow.D(),
			AutomaticSenders: cfg.Outbound.AutomaticSenders,
			Pregreet:         pregreet, PregreetSkip: pregreetSkip,
			RefuseNonSMTP: l.Role == "inbound" && (cfg.Inbound.Screen.ProtocolTests == nil || *cfg.Inbound.Screen.ProtocolTests),

			MaxConnectionsPerClient: lim.MaxConnectionsPerClient, MaxConnectionRate: lim.MaxConnectionRatePerClient,
			MaxMessageRate: lim.MaxMessageRatePerClient, MaxRecipientRate: lim.MaxRecipientRatePerClient,
			ClientRateWindow:         lim.ClientRateWindow.D(),
			MaxAuthFailuresPerClient: lim.MaxAuthFailuresPerClient, MaxAuthFailuresPerUser: lim.MaxAuthFailuresPerUser,
			AuthFailureWindow: lim.AuthFailureWindow.D(), ClientCounts: r.clients,
			LimitExempt:     limitExempt(l),
			MaxJunkCommands: lim.MaxJunkCommands, StressCommandTimeout: lim.StressCommandTimeout.D(),
		})
		// Bind everything before accepting anything: a port conflict must
		// fail the start, not leave a half-running relay.
		if err := s.Listen(); err != nil {
			return err
		}
		r.servers = append(r.servers, s)
	}
	r.q.Start()
	// The queue commands that change the spool come through here while
	// the relay runs (queuecmd.go).
	if r.ctl, err = listenControl(cfg, r.controlHandler); err != nil {
		return err
	}
	for _, s := range r.servers {
		go func(s *smtpd.Server) { r.serveErr <- s.Serve() }(s)
	}
	if cfg.Metrics.Address != "" {
		r.metrics.servers, r.metrics.q = r.servers, r.q
		r.health = &health{spoolDir: spoolDir(cfg), minFree: int64(cfg.Queue.MinFreeSpace), freeSpace: freeSpace(cfg.StateDir),
			metrics: r.metrics.handler()}
		if err := r.health.start(cfg.Metrics.Address); err != nil {
			r.shutdown()
			return err
		}
		// Bound: every listener's Listen succeeded above.
		r.health.ready.Store(true)
		log.Info("listening", "listener", "metrics", "address", cfg.Metrics.Address, "paths", "/healthz /readyz /metrics")
	}
	log.Info("securerelay started", "version", versionString(), "config", path, "hostname", cfg.Hostname,
		"state_dir", cfg.StateDir, "spooled", r.q.Len(), "screened_clients", passedLen(r.passed), "pid", os.Getpid())
	// Every listener is bound and the control socket is up: under
	// systemd's Type=notify this is when `systemctl start` returns.
	r.notify("READY=1\nSTATUS=serving")
	return r.loop(sigs)
}

// selfAddrs reports whether an address is one of our listeners on port
// 25, where MX delivery connects, or one of proxy_addresses: delivery and
// tls-policy explain drop MX hosts with such an address (RFC 5321 §5.1),
// as Postfix compares MX addresses with inet_interfaces and
// proxy_interfaces. A listener on all addresses makes every local
// interface address (and all of 127.0.0.0/8 and ::1) ours. nil when there
// is neither: MX delivery cannot reach us then.
func selfAddrs(cfg *config.Config) func(netip.Addr) bool {
	var ips []netip.Addr
	all := false
	for _, l := range cfg.Listeners {
		host, port, err := net.SplitHostPort(l.Address)
		if err != nil || port != "25" {
			continue
		}
		ip, err := netip.ParseAddr(host)
		switch {
		case host == "" || err == nil && ip.IsUnspecified():
			all = true
		case err == nil:
			ips = append(ips, ip.Unmap())
		}
	}
	if all {
		if ifas, err := net.InterfaceAddrs(); err == nil {
			for _, a := range ifas {
				if p, err := netip.ParsePrefix(a.String()); err == nil {
					ips = append(ips, p.Addr().Unmap())
				}
			}
		}
	}
	for _, a := range cfg.ProxyAddresses {
		// Mail to these reaches us whatever port our listener uses.
		if ip, err := netip.ParseAddr(a); err == nil {
			ips = append(ips, ip.Unmap())
		}
	}
	if len(ips) == 0 && !all {
		return nil
	}
	return func(a netip.Addr) bool {
		a = a.Unmap()
		return (all && a.IsLoopback()) || slices.Contains(ips, a)
	}
}

// passedLen is how many clients the screening cache remembers at start.
func passedLen(p *inbound.PassCache) int {
	if p == nil {
		return 0
	}
	return p.Len()
}

func (r *relay) loop(sigs <-chan os.Signal) error {
	for {
		select {
		case err := <-r.serveErr:
			if err != nil {
				r.log.Error("listener failed, shutting down", "error", err)
				r.shutdown()
				return err
			}
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				// systemctl reload waits between the two (Type=notify).
				r.notify("RELOADING=1")
				r.reload()
				r.notify("READY=1")
				continue
			}
			r.log.Info("shutting down", "signal", sig.String())
			r.notify("STOPPING=1")
			r.shutdown()
			return nil
		}
	}
}

// notify passes state to systemd (notify.go); a failure is only logged.
func (r *relay) notify(state string) {
	if err := sdNotify(state); err != nil {
		r.log.Warn("could not notify the service manager", "error", err)
	}
}

func (r *relay) shutdown() {
	if r.health != nil {
		// Not ready from the first moment of shutdown on.
		r.health.close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	var wg sync.WaitGroup
	for _, s := range r.servers {
		wg.Add(1)
		go func(s *smtpd.Server) { defer wg.Done(); s.Shutdown(ctx) }(s)
	}
	wg.Wait()
	r.ctl.Close()
	r.q.Stop(ctx)
	r.engine.Close()
	if err := r.loops.Close(); err != nil {
		r.log.Warn("loop counters not saved", "error", err)
	}
	if r.passed != nil {
		if err := r.passed.Close(); err != nil {
			r.log.Warn("screening cache not saved", "error", err)
		}
	}
	if err := r.keys.Close(); err != nil {
		r.log.Warn("OpenPGP key cache not saved", "error", err)
	}
	r.log.Info("stopped", "spooled", r.q.Len())
	r.q.Close()
}

// reload applies what can change safely while sessions run: the
// certificate, domains (deliver_to, recipients, DKIM keys, content,
// attachment and OpenPGP signing settings), outbound routes, users, dkim
// and tls (the TLS policy with its encryption and inbound partner rules),
// and inbound content, auth, attachments and verify. listeners, state_dir,
// queue, metrics, log, dns, hostname, postmaster, proxy_addresses and the
// other inbound and outbound settings need a restart; a change to them is
// logged (once the new configuration is applied) and not applied anywhere:
// the parts rebuilt here get their running values. README.md ("Reload")
// lists the same.
func (r *relay) reload() {
	cfg, err := config.Load(r.cfgPath)
	if err != nil {
		r.log.Error("reload failed, keeping the running configuration", "error", strings.ReplaceAll(err.Error(), "\n", "; "))
		return
	}
	// What needs a restart keeps its running value in everything built
	// below: the resolver, the host name (HELO, authserv-id, milter
	// macros), the spool's place, the postmaster. Applying such a key in
	// some places and not others would be worse than not at all. One list
	// both notes the change and pins the running value, so the two cannot
	// drift apart.
	var restart []string
	keepRunning(&restart, "listeners", r.cfg.Listeners, &cfg.Listeners)
	keepRunning(&restart, "state_dir", r.cfg.StateDir, &cfg.StateDir)
	keepRunning(&restart, "queue", r.cfg.Queue, &cfg.Queue)
	keepRunning(&restart, "metrics", r.cfg.Metrics, &cfg.Metrics)
	keepRunning(&restart, "log", r.cfg.Log, &cfg.Log)
	keepRunning(&restart, "dns", r.cfg.DNS, &cfg.DNS)
	keepRunning(&restart, "hostname", r.cfg.Hostname, &cfg.Hostname)
	keepRunning(&restart, "proxy_addresses", r.cfg.ProxyAddresses, &cfg.ProxyAddresses)
	keepRunning(&restart, "postmaster", r.cfg.Postmaster, &cfg.Postmaster)
	// The rest of inbound and outbound is read only at start: compared
	// (what a reload swaps stripped), not pinned.
	for _, k := range []struct {
		name     string
		old, new any
	}{
		{"inbound (checks and screening)", stripInbound(r.cfg.Inbound), stripInbound(cfg.Inbound)},
		{"outbound (except users, routes and dkim)", stripOutbound(r.cfg.Outbound), stripOutbound(cfg.Outbound)},
	} {
		if !reflect.DeepEqual(k.old, k.new) {
			restart = append(restart, k.name)
		}
	}
	rt, err := router(cfg)
	if err != nil {
		r.log.Error("reload failed, keeping the running configuration", "error", err)
		return
	}
	keys, warnings, err := loadDKIM(cfg)
	if err != nil {
		r.log.Error("reload failed, keeping the running configuration", "error", strings.ReplaceAll(err.Error(), "\n", "; "))
		return
	}
	res := dnsutil.New(cfg.DNS.Resolver, cfg.DNS.Timeout.D())
	res.Cache = r.dnsCache
	tlsPol, err := tlsDeciderObserved(cfg, res, r.log, r.stsCache, r.metrics.tlsHook())
	if err != nil {
		r.log.Error("reload failed, keeping the running configuration", "error", err)
		return
	}
	content, err := inboundContent(cfg, res, r.log)
	if err != nil {
		r.log.Error("reload failed, keeping the running configuration", "error", err)
		return
	}
	r.metrics.watchMilters(content)
	enc, err := encryption(cfg, r.keys)
	if err != nil {
		r.log.Error("reload failed, keeping the running configuration", "error", err)
		return
	}
	for _, k := range restart {
		r.log.Warn("reload: this setting changed but needs a restart; not applied", "key", k)
	}
	for _, w := range warnings {
		r.log.Warn("dkim: weak key", "detail", w)
	}
	if err := r.certs.Reload(cfg.TLS.Cert, cfg.TLS.Key, r.cfg.StateDir, r.cfg.Hostname, r.log); err != nil {
		r.log.Error("reload: certificate not reloaded, keeping the old one", "error", err)
	}
	recips, err := loadRecipients(cfg, r.log)
	if err != nil {
		r.log.Error("reload: recipients not reloaded, keeping the running ones", "error", strings.ReplaceAll(err.Error(), "\n", "; "))
	}
	for _, ir := range r.inbound {
		ir.SetDomains(domainList(cfg))
		ir.SetVerifiers(verifiers(cfg))
		ir.SetTLSFrom(tlsFrom(cfg))
		ir.SetContent(content)
		if err == nil {
			ir.SetRecipients(recips)
		}
	}
	r.users.SetAccounts(userAccounts(cfg))
	r.engine.SetRouter(rt)
	r.engine.SetTLS(tlsPol, cfg.Outbound.TLS.TLSRequiredNo == "honour", enc)
	r.signer.Set(keys, dkimOptions(cfg), cfg.Outbound.DKIM.UseEnvelopeSender)
	r.ours.Set(ourDomains(cfg))
	r.log.Info("configuration reloaded", "domains", len(cfg.Domains), "routes", len(cfg.Outbound.Routes), "users", len(cfg.Outbound.Users))
}

// keepRunning notes name in restart when the loaded value differs from
// the running one, and puts the running one back.
func keepRunning[T any](restart *[]string, name string, running T, loaded *T) {
	if !reflect.DeepEqual(running, *loaded) {
		*restart = append(*restart, name)
	}
	*loaded = running
}

// stripInbound leaves what a reload cannot apply: content scanning,
// authentication and the attachment policy are swapped whole on SIGHUP
// (inboundContent), the recipient verifiers too (verifiers).
func stripInbound(i config.Inbound) config.Inbound {
	i.Content, i.Auth, i.Attachments, i.Verify = config.Content{}, config.Auth{}, config.Attachments{}, config.Verify{}
	return i
}

func stripOutbound(o config.Outbound) config.Outbound {
	o.Users, o.Routes, o.DKIM, o.TLS = nil, nil, config.DKIMOptions{}, config.OutboundTLS{}
	o.SenderBinding = "" // applied per user with the users
	return o
}

// tlsFrom are the partner rules that also require TLS for mail from them.
func tlsFrom(cfg *config.Config) []inbound.TLSFrom {
	var out []inbound.TLSFrom
	for i, p := range cfg.Outbound.TLS.Policies {
		if p.Inbound != "" && p.Inbound != "off" {
			out = append(out, inbound.TLSFrom{Match: p.Match, Action: action(p.Inbound), Rule: fmt.Sprintf("outbound.tls.policies[%d]", i)})
		}
	}
	return out
}

func inboundChecks(cfg *config.Config) inbound.Checks {
	c := cfg.Inbound.Checks
	return inbound.Checks{SenderFQDN: action(c.SenderFQDN), RecipientFQDN: action(c.RecipientFQDN),
		SenderDomain: action(c.SenderDomain), UnknownRecipient: action(c.UnknownRecipient), HeloFQDN: action(c.HeloFQDN)}
}

// authMode, foreignFrom and nullSender convert a listener's settings, as
// validated, once, when the role is built. Should anything else slip
// through, the strict choice is taken: AUTH required, refusal.
func authMode(s string) outbound.AuthMode {
	a, err := outbound.ParseAuthMode(s)
	if err != nil {
		return outbound.AuthRequired
	}
	return a
}

func foreignFrom(s string) outbound.ForeignFrom {
	f, _ := outbound.ParseForeignFrom(s) // on error: ForeignFromReject
	return f
}

func nullSender(s string) outbound.NullSender {
	n, err := outbound.ParseNullSender(s)
	if err != nil {
		return outbound.NullSenderReject
	}
	return n
}

// action converts a check's action, as validated (validate.go allows
// reject, tempfail and off), once, when the role is built. Should anything
// else slip through, tempfail loses no mail and lets nothing through.
func action(s string) inbound.Action {
	a, err := inbound.ParseAction(s)
	if err != nil {
		return inbound.ActionTempfail
	}
	return a
}

func prefixes(list []string) []netip.Prefix {
	var out []netip.Prefix
	for _, s := range list {
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
		} else if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

func inboundScreen(cfg *config.Config) inbound.Screen {
	sc := cfg.Inbound.Screen
	s := inbound.Screen{Allow: prefixes(sc.Allow), Deny: prefixes(sc.Deny), CacheTTL: sc.CacheTTL.D(),
		Tarpit: sc.Tarpit.D(), DeepProtocol: sc.DeepProtocolTest,
		DNSBL: inbound.DNSBL{Threshold: sc.DNSBL.Threshold, Timeout: sc.DNSBL.Timeout.D()}}
	for _, z := range sc.DNSBL.Lists {
		l := inbound.DNSBLList{Zone: z.Zone, Weight: z.Weight}
		for _, c := range z.Codes {
			if a, err := netip.ParseAddr(c); err == nil {
				l.Codes = append(l.Codes, a)
			}
		}
		s.DNSBL.Lists = append(s.DNSBL.Lists, l)
	}
	return s
}

// quietLog is for loading done by check-config, which reports by exit
// status and stderr lines, not log records.
var quietLog = slog.New(slog.NewTextHandler(io.Discard, nil))

// verifiers builds a recipient probe for every domain that asks for one.
func verifiers(cfg *config.Config) map[string]*inbound.Verifier {
	out := map[string]*inbound.Verifier{}
	v := cfg.Inbound.Verify
	for name, d := range cfg.Domains {
		if !d.Recipients.Verify {
			continue
		}
		scheme, target, err := config.ParseDeliverTo(d.DeliverTo)
		if err != nil {
			continue
		}
		out[name] = &inbound.Verifier{LMTP: scheme == "lmtp", Addr: target, Helo: cfg.Hostname,
			Timeout: v.Timeout.D(), PositiveTTL: v.PositiveTTL.D(), NegativeTTL: v.NegativeTTL.D()}
	}
	return out
}

// servedPostmaster is the address RCPT TO:<Postmaster> goes to on inbound
// listeners: the configured postmaster when one of our domains delivers
// it, else "" (the bare form is then refused): accepting it for a domain
// we do not deliver would hold it forever or relay it.
func servedPostmaster(cfg *config.Config) string {
	pm := strings.ToLower(cfg.Postmaster)
	d, ok := cfg.Domains[pm[strings.LastIndexByte(pm, '@')+1:]]
	if !ok || d.DeliverTo == "" {
		return ""
	}
	return cfg.Postmaster
}

// freeSpace reports the bytes an unprivileged process may still write on
// the file system of dir (the spool's), for smtpd's MinFreeSpace check.
func freeSpace(dir string) func() (int64, error) {
	return func() (int64, error) {
		var st syscall.Statfs_t
		if err := syscall.Statfs(dir, &st); err != nil {
			return 0, err
		}
		return int64(st.Bavail) * int64(st.Bsize), nil
	}
}
