package milter

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"sync"
	"time"

	gomilter "github.com/d--j/go-milter"

	"securerelay/smtputil"
)

// OnError values: what a milter that cannot be reached, times out or
// breaks the protocol means for the message.
const (
	OnErrorTempfail = "tempfail" // 451 4.7.1: the sender retries later (default)
	OnErrorAccept   = "accept"   // skip this milter, logged
	OnErrorReject   = "reject"   // 554 5.7.1
)

// Default timeouts. Postfix uses 30 s to connect and per command and
// 300 s for the content; a scan of a large message by clamd can take tens
// of seconds, and the SMTP client waits up to 10 minutes for the reply to
// DATA (RFC 5321 §4.5.3.2.6). ReadTimeout restarts with every packet,
// including SMFIR_PROGRESS.
const (
	DefaultConnectTimeout = 10 * time.Second
	DefaultReadTimeout    = 120 * time.Second
	DefaultWriteTimeout   = 30 * time.Second
)

// Config describes one milter.
type Config struct {
	// Name appears in logs and in the reply texts the sender sees
	// ("content scanner rspamd ..."); default: Address.
	Name string
	// Address is "unix:/path", "inet:host:port" (or Sendmail's
	// "inet:port@host"), "host:port" or "/path".
	Address string
	// Zero means the Default… value.
	ConnectTimeout, ReadTimeout, WriteTimeout time.Duration
	// OnError is OnErrorTempfail (default, also for ""), OnErrorAccept or
	// OnErrorReject.
	OnError string
}

// Validate checks the address and OnError, for config loading.
func (c Config) Validate() error {
	if _, _, err := parseAddress(c.Address); err != nil {
		return err
	}
	switch c.OnError {
	case "", OnErrorTempfail, OnErrorAccept, OnErrorReject:
	default:
		return fmt.Errorf("milter %s: on_error %q: want tempfail, accept or reject", c.displayName(), c.OnError)
	}
	for i := 0; i < len(c.Name); i++ {
		// The name goes into SMTP replies.
		if c.Name[i] < ' ' || c.Name[i] >= 0x7f {
			return fmt.Errorf("milter %q: name must be printable ASCII", c.Name)
		}
	}
	if c.ConnectTimeout < 0 || c.ReadTimeout < 0 || c.WriteTimeout < 0 {
		return fmt.Errorf("milter %s: negative timeout", c.displayName())
	}
	return nil
}

func (c Config) displayName() string {
	if c.Name != "" {
		return c.Name
	}
	return c.Address
}

// Envelope is what the SMTP session knows about the message; it becomes
// the milter events (connect, HELO, MAIL, RCPT) and the macros.
type Envelope struct {
	QueueID    string // macro i
	Hostname   string // our host name: macro j
	DaemonName string // {daemon_name}: our host name, as Postfix sends it

	ClientAddr netip.Addr // invalid: the connect event has family "unknown"
	ClientPort int
	ClientName string // forward-confirmed PTR name, or "" ("unknown" is sent)
	ClientPTR  string // {client_ptr}: the PTR name, confirmed or not; "" ("unknown")
	// LocalAddr is the address the client connected to ({daemon_addr},
	// {daemon_port}, {if_addr}); optional.
	LocalAddr netip.AddrPort

	Helo       string
	AuthUser   string // {auth_authen}; "" when not authenticated
	AuthMech   string // {auth_type}, e.g. "PLAIN"
	TLSVersion string // {tls_version}, e.g. "TLSv1.3"; "" without TLS
	TLSCipher  string // {cipher}

	From  string   // envelope sender without <>, "" for the null sender
	Rcpts []string // accepted recipients without <>; at least one
}

// Chain runs the configured milters in order. It is safe for concurrent
// use; set the exported fields before the first Check.
type Chain struct {
	// Version is sent as macro v (the MTA's name and version).
	Version string
	// MaxBodyReplacement bounds a body a milter sends back with
	// SMFIR_REPLBODY; go-milter holds it in memory (see the package doc).
	// A milter that sends more has broken the protocol.
	MaxBodyReplacement int64
	// Observe, if set, gets each milter's verdict on a message ("accept",
	// "reject", "tempfail", or "error" when it failed and its on_error
	// applied) and the time from sending it the message to its answer,
	// for metrics. It must be quick.
	Observe func(milter, verdict string, took time.Duration)

	milters []*milterDef
	log     *slog.Logger
	// observe, if set (benchmarks), gets each conversation's byte counts.
	observe func(sent, received int64)
}

type milterDef struct {
	cfg           Config
	name          string
	network, addr string
	opts          []gomilter.Option
}

// DefaultMaxBodyReplacement is the default Chain.MaxBodyReplacement.
const DefaultMaxBodyReplacement = 64 << 20

// NewChain checks the configurations and returns a Chain that runs them in
// the given order. A nil log discards.
func NewChain(cfgs []Config, log *slog.Logger) (*Chain, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	c := &Chain{Version: "securerelay", MaxBodyReplacement: DefaultMaxBodyReplacement, log: log}
	for _, cfg := range cfgs {
		if err := cfg.Validate(); err != nil {
			return nil, err
		}
		network, addr, _ := parseAddress(cfg.Address)
		if cfg.OnError == "" {
			cfg.OnError = OnErrorTempfail
		}
		cfg.ConnectTimeout = orDefault(cfg.ConnectTimeout, DefaultConnectTimeout)
		cfg.ReadTimeout = orDefault(cfg.ReadTimeout, DefaultReadTimeout)
		cfg.WriteTimeout = orDefault(cfg.WriteTimeout, DefaultWriteTimeout)
		c.milters = append(c.milters, &milterDef{
			cfg: cfg, name: cfg.displayName(), network: network, addr: addr,
			opts: clientOptions(cfg),
		})
	}
	return c, nil
}

func orDefault(d, def time.Duration) time.Duration {
	if d == 0 {
		return def
	}
	return d
}

// Macros sent at each stage. They follow Postfix's defaults (connect: j
// {daemon_name} {daemon_addr} v _; MAIL: i {auth_type} {auth_authen}
// {mail_addr} {mail_host}; RCPT: {rcpt_addr} {rcpt_host}; DATA, end of
// header, end of message: i), plus what the milters we run read:
//   - rspamd: i, v, j or {daemon_name}, {client_name}, {auth_authen},
//     {tls_version}, {cipher}
//   - clamav-milter: i, {mail_addr}, {rcpt_addr} (log lines), {auth_authen}
//   - amavisd-milter: j, i (at MAIL or end of message), r, {auth_type},
//     {auth_authen}
//
// libmilter keeps the macros of earlier stages, so each is sent once.
// Macros without a value are not sent. A milter that asks for its own list
// (SMFIF_SETSYMLIST) gets only the stages it names (go-milter's rule).
var stageMacros = [...][]gomilter.MacroName{
	gomilter.StageConnect: {gomilter.MacroMTAFQDN, gomilter.MacroDaemonName, gomilter.MacroDaemonAddr,
		gomilter.MacroDaemonPort, gomilter.MacroIfAddr, gomilter.MacroMTAVersion, gomilter.MacroRFC1413AuthInfo,
		gomilter.MacroClientAddr, gomilter.MacroClientPort, gomilter.MacroClientName, gomilter.MacroClientPTR},
	gomilter.StageHelo: {gomilter.MacroTlsVersion, gomilter.MacroCipher},
	gomilter.StageMail: {gomilter.MacroQueueId, gomilter.MacroProtocolUsed, gomilter.MacroAuthType,
		gomilter.MacroAuthAuthen, gomilter.MacroMailAddr, gomilter.MacroMailHost},
	gomilter.StageRcpt: {gomilter.MacroRcptAddr, gomilter.MacroRcptHost},
	gomilter.StageData: {gomilter.MacroQueueId},
	gomilter.StageEOH:  {gomilter.MacroQueueId},
	gomilter.StageEOM:  {gomilter.MacroQueueId},
}

func clientOptions(cfg Config) []gomilter.Option {
	opts := []gomilter.Option{
		gomilter.WithReadTimeout(cfg.ReadTimeout),
		gomilter.WithWriteTimeout(cfg.WriteTimeout),
		// Offer every action and protocol step of version 6, as Postfix
		// does (actions 0x1ff); each milter narrows them.
		gomilter.WithActions(gomilter.AllClientSupportedActionMasks),
		gomilter.WithoutDefaultMacros(),
	}
	for stage, names := range stageMacros {
		opts = append(opts, gomilter.WithMacroRequest(gomilter.MacroStage(stage), names))
	}
	return opts
}

func (e *Envelope) macros(version string) *gomilter.MacroBag {
	m := gomilter.NewMacroBag()
	set := func(name, v string) {
		if v != "" {
			m.Set(name, v)
		}
	}
	clientName := e.ClientName
	if clientName == "" {
		clientName = "unknown"
	}
	set(gomilter.MacroQueueId, e.QueueID)
	set(gomilter.MacroMTAFQDN, e.Hostname)
	set(gomilter.MacroDaemonName, e.DaemonName)
	set(gomilter.MacroMTAVersion, version)
	if e.LocalAddr.IsValid() {
		set(gomilter.MacroDaemonAddr, e.LocalAddr.Addr().Unmap().String())
		set(gomilter.MacroIfAddr, e.LocalAddr.Addr().Unmap().String())
		set(gomilter.MacroDaemonPort, strconv.Itoa(int(e.LocalAddr.Port())))
	}
	if e.ClientAddr.IsValid() {
		a := e.ClientAddr.Unmap().String()
		set(gomilter.MacroClientAddr, a)
		set(gomilter.MacroClientPort, strconv.Itoa(e.ClientPort))
		set(gomilter.MacroRFC1413AuthInfo, clientName+" ["+a+"]")
	}
	set(gomilter.MacroClientName, clientName)
	ptr := e.ClientPTR
	if ptr == "" {
		ptr = clientName
	}
	set(gomilter.MacroClientPTR, ptr)
	set(gomilter.MacroTlsVersion, e.TLSVersion)
	set(gomilter.MacroCipher, e.TLSCipher)
	set(gomilter.MacroProtocolUsed, smtputil.ProtocolName(true, e.TLSVersion != "", e.AuthUser != ""))
	set(gomilter.MacroAuthAuthen, e.AuthUser)
	if e.AuthUser != "" {
		set(gomilter.MacroAuthType, e.AuthMech)
	}
	set(gomilter.MacroMailAddr, e.From)
	set(gomilter.MacroMailHost, domainOf(e.From))
	return m
}

func domainOf(addr string) string {
	for i := len(addr) - 1; i >= 0; i-- {
		if addr[i] == '@' {
			return addr[i+1:]
		}
	}
	return ""
}

// errSource marks failures of the message source (open() or reading it):
// the relay's own problem, never blamed on a milter.
type errSource struct{ err error }

func (e errSource) Error() string { return "milter: reading message: " + e.err.Error() }
func (e errSource) Unwrap() error { return e.err }

// Check runs the milter conversation (connect, HELO, MAIL, RCPT, DATA,
// header, body, end of message) for one message against each milter in
// order, stopping at the first that rejects or fails. Like Postfix, each
// milter gets the message with the header and body changes of the ones
// before it.
//
// open returns the raw message (RFC 5322, CRLF line ends); it is called
// once per milter that wants the content, and a returned io.Closer is
// closed. The body is streamed in chunks of at most 65535 bytes; only the
// header section (at most 1 MiB) is held in memory.
//
// A milter failure is not an error: it turns into the Result its OnError
// asks for. Check returns an error only when the message cannot be read,
// env has no recipient, or ctx ends.
func (c *Chain) Check(ctx context.Context, env *Envelope, open func() (io.Reader, error)) (*Result, error) {
	r := c.Begin(ctx, env)
	defer r.Close()
	return r.Check(open)
}

// Run is a check begun by Begin: every milter's conversation on its way
// through the envelope while the caller does other work.
type Run struct {
	c       *Chain
	ctx     context.Context
	env     *Envelope
	err     error // from Begin: nothing was started
	begun   []chan *pending
	next    int // the first of begun not yet taken
	unlink  func() bool
	bcancel context.CancelFunc
	closed  bool
	feed    *rcptFeed // nil: nothing was started
	queueID string    // from EndEnvelope
}

// Begin starts the check of a message with envelope env: it opens every
// milter's conversation at once and takes each through connect, HELO,
// MAIL, RCPT and DATA (as Postfix sends each envelope event to every
// milter), so that this overlaps whatever the caller does before Check.
// ctx bounds the whole check. Close must follow, after Check or instead
// of it (the caller refused the message on its own).
func (c *Chain) Begin(ctx context.Context, env *Envelope) *Run {
	r := c.BeginTransaction(ctx, env)
	r.EndEnvelope(env.QueueID)
	return r
}

// BeginTransaction starts the check while the SMTP transaction is still
// going on, as Postfix's smtpd does: at the first accepted recipient
// (env.Rcpts, env.QueueID unused), every milter's conversation opens and
// goes through connect, HELO, MAIL and RCPT; AddRcpt passes on each
// recipient accepted later, EndEnvelope the queue ID and DATA, once the
// client's DATA is accepted. Their round trips then cost the client
// nothing at the end of data. Check after EndEnvelope; Close in any case
// (a transaction that ends without DATA gets ABORT).
func (c *Chain) BeginTransaction(ctx context.Context, env *Envelope) *Run {
	r := &Run{c: c, ctx: ctx, env: env}
	if len(c.milters) == 0 {
		return r
	}
	if len(env.Rcpts) == 0 {
		r.err = errors.New("milter: check: envelope without recipients")
		return r
	}
	r.feed = newRcptFeed(env.Rcpts)
	macros := env.macros(c.Version)
	// The conversations live on a context of their own, which ctx ends
	// until Close; after that, the ones not reached end with ABORT and
	// QUIT rather than a dropped connection (bounded by the milters' own
	// time-outs).
	bctx, bcancel := context.WithCancel(context.WithoutCancel(ctx))
	r.bcancel, r.unlink = bcancel, context.AfterFunc(ctx, bcancel)
	r.begun = make([]chan *pending, len(c.milters))
	for i, m := range c.milters {
		r.begun[i] = make(chan *pending, 1)
		bag := macros.Copy()
		go func() { r.begun[i] <- c.begin(bctx, m, env, bag, r.feed) }()
	}
	return r
}

// AddRcpt passes a recipient accepted after BeginTransaction on to every
// milter (in order, after the ones before it).
func (r *Run) AddRcpt(rcpt string) {
	if r.feed != nil {
		r.feed.add(rcpt)
	}
}

// EndEnvelope ends the recipients: the milters get the queue ID and DATA.
func (r *Run) EndEnvelope(queueID string) {
	r.queueID = queueID
	if r.feed != nil {
		r.feed.end(queueID, false)
	}
}

// rcptFeed hands the transaction's recipients, as they are accepted, to
// every milter's conversation; each reads them at its own pace.
type rcptFeed struct {
	mu      sync.Mutex
	rcpts   []string
	done    bool // no more recipients
	aborted bool // done without DATA: the transaction ended (Close)
	queueID string
	changed chan struct{} // closed and replaced on every change
}

// open reports whether recipients may still come.
func (f *rcptFeed) open() bool {
	if f == nil {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return !f.done
}

func newRcptFeed(rcpts []string) *rcptFeed {
	return &rcptFeed{rcpts: slices.Clone(rcpts), changed: make(chan struct{})}
}

func (f *rcptFeed) add(rcpt string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return
	}
	f.rcpts = append(f.rcpts, rcpt)
	close(f.changed)
	f.changed = make(chan struct{})
}

func (f *rcptFeed) end(queueID string, aborted bool) {
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.done {
		return
	}
	f.done, f.aborted, f.queueID = true, aborted, queueID
	close(f.changed)
	f.changed = make(chan struct{})
}

// next is the i-th recipient; ok false once the recipients ended (data:
// with DATA to follow, and the queue ID) or ctx did.
func (f *rcptFeed) next(ctx context.Context, i int) (rcpt string, ok, data bool, queueID string) {
	for {
		f.mu.Lock()
		if i < len(f.rcpts) {
			rcpt := f.rcpts[i]
			f.mu.Unlock()
			return rcpt, true, false, ""
		}
		if f.done {
			data, queueID := !f.aborted, f.queueID
			f.mu.Unlock()
			return "", false, data, queueID
		}
		ch := f.changed
		f.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return "", false, false, ""
		}
	}
}

// Close ends the conversations Check did not finish, in the background:
// the milters not reached get ABORT and QUIT, never the message. It may
// be called more than once.
func (r *Run) Close() {
	if r.closed || r.begun == nil {
		r.closed = true
		return
	}
	r.closed = true
	// Conversations still waiting for recipients go no further.
	r.feed.end("", true)
	r.unlink()
	go func(rest []chan *pending, cancel context.CancelFunc) {
		for _, ch := range rest {
			(<-ch).close()
		}
		cancel()
	}(r.begun[r.next:], r.bcancel)
}

// Check sends the message to the milters begun, one after another, each
// seeing the header and body changes of the ones before it, and stops at
// the first that rejects or fails. open is as for Chain.Check. Check is
// called at most once.
func (r *Run) Check(open func() (io.Reader, error)) (*Result, error) {
	c, ctx, queueID := r.c, r.ctx, r.queueID
	res := &Result{Action: Accept}
	if r.err != nil {
		return nil, r.err
	}
	if r.begun == nil {
		return res, nil
	}
	if r.closed {
		return nil, errors.New("milter: check after close")
	}
	if r.feed.open() {
		return nil, errors.New("milter: check before EndEnvelope")
	}
	cnt := &content{open: open}
	defer cnt.close()
	for i, m := range c.milters {
		p := <-r.begun[i]
		r.next = i + 1
		if err := ctx.Err(); err != nil {
			p.close()
			return nil, err
		}
		start := time.Now()
		out, err := p.finish(ctx, c, cnt)
		if c.Observe != nil && err == nil {
			verdict := out.action.String()
			if out.failure != nil {
				verdict = "error"
			}
			c.Observe(m.name, verdict, time.Since(start))
		}
		if err != nil {
			if errors.Is(err, errHeaderTooLarge) {
				return result(Reject, smtputil.ScannerHeaderTooLarge(maxHeaderBytes, maxHeaderFields), "", nil), nil
			}
			return nil, err
		}
		if c.observe != nil {
			c.observe(out.written, out.read)
		}
		if out.failure != nil {
			c.log.Warn("milter failed", "milter", m.name, "queue_id", queueID, "err", out.failure,
				"on_error", m.cfg.OnError, "bytes_sent", out.written, "bytes_received", out.read)
			switch m.cfg.OnError {
			case OnErrorAccept:
				continue
			case OnErrorReject:
				return result(Reject, smtputil.ScannerFailed(m.name), m.name, res.Mods), nil
			default:
				return result(Tempfail, smtputil.ScannerUnavailable(m.name), m.name, res.Mods), nil
			}
		}
		if out.action != Accept {
			// Not logged here: the caller returns the refusal, and smtpd
			// logs every refusal once (with Result.Milter).
			return &Result{Action: out.action, Code: out.code, Enhanced: out.enhanced, Text: out.text,
				Milter: m.name, Mods: res.Mods}, nil
		}
		if c.log.Enabled(ctx, slog.LevelDebug) {
			c.log.Debug("milter accepted message", "milter", m.name, "queue_id", queueID,
				"modifications", len(out.mods), "bytes_sent", out.written, "bytes_received", out.read)
		}
		res.Mods = append(res.Mods, out.mods...)
		cnt.mods = res.Mods
	}
	return res, nil
}

// content gives each milter the header and body it should see.
type content struct {
	open func() (io.Reader, error)
	hdr  *header
	// br is the first open's reader (from bufioPool), positioned at the
	// body until a milter has streamed it (firstUsed).
	br        *bufio.Reader
	firstUsed bool
	closers   []io.Closer
	mods      []Modification // of the milters that accepted so far
}

var bufioPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 16<<10) }}

func (c *content) load() error {
	if c.hdr != nil {
		return nil
	}
	r, err := c.open()
	if err != nil {
		return errSource{err}
	}
	if cl, ok := r.(io.Closer); ok {
		c.closers = append(c.closers, cl)
	}
	br := bufioPool.Get().(*bufio.Reader)
	br.Reset(r)
	c.br = br
	h, err := readHeader(br)
	if err != nil {
		if errors.Is(err, errHeaderTooLarge) {
			return err
		}
		return errSource{err}
	}
	c.hdr = h
	return nil
}

// fields returns the header as the next milter sees it.
func (c *content) fields() []field {
	if len(c.mods) == 0 {
		return c.hdr.fields
	}
	f, _ := applyMods(c.hdr.fields, c.mods)
	return f
}

// body returns the body as the next milter sees it.
func (c *content) body() (io.Reader, error) {
	if repl := replacedBody(c.mods); repl != nil {
		return bytes.NewReader(repl), nil
	}
	if !c.firstUsed {
		c.firstUsed = true
		if len(c.hdr.bodyStart) > 0 {
			return io.MultiReader(bytes.NewReader(c.hdr.bodyStart), c.br), nil
		}
		return c.br, nil
	}
	r, err := c.open()
	if err != nil {
		return nil, errSource{err}
	}
	if cl, ok := r.(io.Closer); ok {
		c.closers = append(c.closers, cl)
	}
	if _, err := io.CopyN(io.Discard, r, c.hdr.size); err != nil {
		return nil, errSource{fmt.Errorf("skipping header on re-read: %w", err)}
	}
	return r, nil
}

func (c *content) close() {
	if c.br != nil {
		c.br.Reset(nil)
		bufioPool.Put(c.br)
		c.br = nil
	}
	for _, cl := range c.closers {
		cl.Close()
	}
}
