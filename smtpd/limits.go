package smtpd

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"securerelay/internal/anvil"
	"securerelay/smtputil"
)

// The per-client limits, Postfix's anvil in spirit: one client (an IPv4
// address, or an IPv6 /64, which one site usually gets) may hold only so
// many sessions, open connections, send messages and recipients only so
// fast, and fail only so many logins, so that no single client takes the
// listener from everyone else or guesses passwords at the speed of
// parallel connections. Clients for which Options.LimitExempt is true
// (the outbound listeners' trusted_networks and
// limits.client_limit_exceptions: the groupware, one address with many
// sessions, must never be throttled into losing mail) are not counted.
//
// Concurrent sessions are counted per listener in memory (a relay can only
// count its own sockets); the rates and login failures go through a
// ClientCounter, which a cluster can share.

// ClientCounter keeps the counts of the per-client limits: events per key
// in a sliding window. internal/anvil keeps them in memory; a cluster can
// share them behind this interface, as Counter for the loop counts. A key
// asked for with two windows has two counts: the login failures are
// shared by listeners that may each have their own auth_failure_window,
// and one listener's window must not reset another's count.
type ClientCounter interface {
	Counter
	// Count is the number of events within window, without adding one:
	// a login lockout is looked up before the password is checked.
	Count(key string, now time.Time, window time.Duration) (int, error)
}

// stressPercent: at this share of max_connections a listener is under
// stress (Postfix's stress mode, which starts when every smtpd process is
// busy; here new clients would be refused soon): idle sessions get the
// shorter stress_command_timeout. It ends below stressEndPercent, so that
// a listener hovering at the threshold does not flap.
const (
	stressPercent    = 80
	stressEndPercent = 60
	// stressJunk caps max_junk_commands under stress, as Postfix lowers
	// smtpd_junk_command_limit then.
	stressJunk = 10
	// authWait bounds the wait for another login of the same client or
	// user to finish.
	authWait = 30 * time.Second
)

// clientKey names the client an address belongs to for the per-client
// limits: the address for IPv4, the /64 for IPv6.
func clientKey(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is6() {
		p, _ := ip.Prefix(64)
		return p.String()
	}
	return ip.String()
}

func (s *Server) now() time.Time {
	if s.opts.Now != nil {
		return s.opts.Now()
	}
	return time.Now()
}

func (s *Server) exempt(ip netip.Addr) bool {
	return s.opts.LimitExempt != nil && s.opts.LimitExempt(ip)
}

// refused counts a refusal by the name of the setting that fired, as
// inbound counts its checks, and by check and reply code for the metrics
// (Stats): one place, so that the log's count and the metric agree.
func (s *Server) refused(check string, code int) int64 {
	s.mu.Lock()
	v := s.refusals[check]
	if v == nil {
		v = &atomic.Int64{}
		s.refusals[check] = v
	}
	k := RefusalKey{Check: check, Code: code}
	c := s.byCode[k]
	if c == nil {
		c = &atomic.Int64{}
		s.byCode[k] = c
	}
	s.mu.Unlock()
	c.Add(1)
	return v.Add(1)
}

// Refusals returns how often each per-client limit (and max_connections)
// has refused so far, by setting name.
func (s *Server) Refusals() map[string]int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]int64{}
	for k, v := range s.refusals {
		out[k] = v.Load()
	}
	return out
}

// RefusalKey names a refusal count of Stats: the check (as logged and
// configured) and the reply code sent.
type RefusalKey struct {
	Check string
	Code  int
}

// Stats are a listener's counts since it started, for a metrics endpoint.
type Stats struct {
	// Sessions by screening verdict: State.Screen, "pass", or the check
	// that refused the client at EHLO/HELO.
	Sessions map[string]int64
	// Refusals by check and reply code: every refusal logged "reject".
	Refusals map[RefusalKey]int64
	// Accepted messages (250 after DATA) and their bytes as spooled.
	Accepted, AcceptedBytes int64
}

// Stats returns the listener's counts.
func (s *Server) Stats() Stats {
	st := Stats{Sessions: map[string]int64{}, Refusals: map[RefusalKey]int64{},
		Accepted: s.accepted.Load(), AcceptedBytes: s.acceptedBytes.Load()}
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.sessions {
		st.Sessions[k] = v.Load()
	}
	for k, v := range s.byCode {
		st.Refusals[k] = v.Load()
	}
	return st
}

// Name is the listener's name, as logged (listener=).
func (s *Server) Name() string { return s.opts.Name }

func (s *Server) countSession(verdict string) {
	s.mu.Lock()
	v := s.sessions[verdict]
	if v == nil {
		v = &atomic.Int64{}
		s.sessions[verdict] = v
	}
	s.mu.Unlock()
	v.Add(1)
}

// reject writes the one log line of a refusal ("reject", the vocabulary
// of Refusal) and counts it under check. log carries the listener and,
// once there is a connection, conn_id and client; known are the session's
// keys (helo, from, queue_id) as far as they are known.
func (s *Server) reject(log *slog.Logger, level slog.Level, stage, check string, se *smtp.SMTPError, known, attrs []any) {
	n := s.refused(check, se.Code)
	args := make([]any, 0, 12+len(known)+len(attrs))
	args = append(args, "stage", stage, "check", check, "code", se.Code, "dsn", dsnOf(se), "reply", se.Message)
	args = append(args, known...)
	args = append(args, "count", n)
	args = append(args, attrs...)
	log.Log(context.Background(), level, "reject", args...)
}

// rejectConn is reject outside a session (at connect, or a command
// go-smtp answers itself).
func (s *Server) rejectConn(tc *trackedConn, stage, check string, se *smtp.SMTPError) {
	level := slog.LevelInfo
	if check == "max_connections" {
		level = slog.LevelWarn // the listener is full: the admin must know
	}
	s.reject(s.log.With("conn_id", tc.id, "client", tc.remote.String()), level, stage, check, se, nil, nil)
}

// connectionRate counts a new connection and refuses it over the rate.
func (s *Server) connectionRate(tc *trackedConn) (*smtp.SMTPError, string) {
	o := &s.opts
	if o.MaxConnectionRate <= 0 || tc.exempt {
		return nil, ""
	}
	n, err := s.counts.Add("conn "+o.Name+" "+tc.client, s.now(), o.ClientRateWindow)
	if err != nil {
		s.log.Warn("client counts unavailable, connection rate not checked", "error", err)
		return nil, ""
	}
	if n > o.MaxConnectionRate {
		return smtputil.ConnectionRateExceeded(tc.client, o.MaxConnectionRate, o.ClientRateWindow), "max_connection_rate_per_client"
	}
	return nil, ""
}

// admit registers a connection unless the listener or the client holds
// too many; it also enters and leaves stress mode.
func (s *Server) admit(tc *trackedConn) (*smtp.SMTPError, string) {
	o := &s.opts
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.MaxConnections > 0 && len(s.conns) >= o.MaxConnections {
		return smtputil.TooManyConnections(), "max_connections"
	}
	if !tc.exempt && o.MaxConnectionsPerClient > 0 && s.perClient[tc.client] >= o.MaxConnectionsPerClient {
		return smtputil.TooManyConnectionsFromClient(tc.client, o.MaxConnectionsPerClient), "max_connections_per_client"
	}
	s.conns[tc] = struct{}{}
	s.perClient[tc.client]++
	s.checkStress()
	return nil, ""
}

// release is admit undone, when a connection closes.
func (s *Server) release(tc *trackedConn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.conns, tc)
	if s.perClient[tc.client]--; s.perClient[tc.client] <= 0 {
		delete(s.perClient, tc.client)
	}
	s.checkStress()
}

// checkStress enters or leaves stress mode; s.mu is held. Entering it
// shortens the wait of every idle session at once: those are what fill a
// listener.
func (s *Server) checkStress() {
	o := &s.opts
	if o.StressCommandTimeout <= 0 || o.MaxConnections <= 0 {
		return
	}
	n := len(s.conns)
	switch {
	case !s.stressed.Load() && n*100 >= o.MaxConnections*stressPercent:
		s.stressed.Store(true)
		s.log.Warn("listener under stress: idle sessions get the stress command time-out", "sessions", n,
			"max_connections", o.MaxConnections, "stress_command_timeout", o.StressCommandTimeout.String())
		limit := time.Now().Add(o.StressCommandTimeout)
		for c := range s.conns {
			if !c.inData.Load() {
				c.capDeadline(limit)
			}
		}
	case s.stressed.Load() && n*100 < o.MaxConnections*stressEndPercent:
		s.stressed.Store(false)
		s.log.Info("listener no longer under stress", "sessions", n, "max_connections", o.MaxConnections)
	}
}

// SetReadDeadline is go-smtp's (and TLS's) way to set the command
// time-out; under stress it is capped at the stress time-out, except for
// message data.
func (c *trackedConn) SetReadDeadline(t time.Time) error {
	c.deadline.Store(t.UnixNano())
	if d := c.s.opts.StressCommandTimeout; d > 0 && !t.IsZero() && c.s.stressed.Load() && !c.inData.Load() {
		if limit := time.Now().Add(d); t.After(limit) {
			t = limit
		}
	}
	return c.Conn.SetReadDeadline(t)
}

// capDeadline brings a session's read deadline forward to limit.
func (c *trackedConn) capDeadline(limit time.Time) {
	if d := c.deadline.Load(); d == 0 || d > limit.UnixNano() {
		c.Conn.SetReadDeadline(limit)
	}
}

// junk lists the commands that make no progress towards a message
// (Postfix's junk commands: NOOP, VRFY, ETRN, RSET, and HELP and EXPN,
// which go-smtp refuses anyway).
var junk = map[string]bool{"NOOP": true, "RSET": true, "VRFY": true, "EXPN": true, "HELP": true, "ETRN": true}

// command is go-smtp's CommandHook (third_party patch 7): it sees the
// commands go-smtp answers itself.
func (s *Server) command(c *smtp.Conn, cmd string) error {
	tc := trackedOf(c.Conn())
	if tc == nil {
		return nil
	}
	o := &s.opts
	if cmd == "BDAT" && o.DataTimeout > 0 {
		// The chunk follows the command line at once, under the time-out
		// go-smtp set for the line: give it the data time-out, as DATA
		// has, also under stress.
		tc.Conn.SetReadDeadline(time.Now().Add(o.DataTimeout))
		return nil
	}
	// Not for exempt clients, as the other per-client limits: the
	// groupware may check its pooled sessions with NOOP or RSET.
	if !junk[cmd] || o.MaxJunkCommands <= 0 || tc.exempt {
		return nil
	}
	limit := o.MaxJunkCommands
	if s.stressed.Load() {
		limit = min(limit, stressJunk)
	}
	if tc.junk.Add(1) <= int64(limit) {
		return nil
	}
	se := smtputil.TooManyJunkCommands(limit)
	s.rejectConn(tc, "command", "max_junk_commands", se)
	tc.closeAfterWrite.Store(true)
	return se
}

// rate counts one event of a client and refuses it over limit per
// ClientRateWindow; what names the event in the key and the reply.
func (s *session) rate(what string, limit int) *smtp.SMTPError {
	o := &s.srv.opts
	if limit <= 0 || s.tc.exempt {
		return nil
	}
	n, err := s.srv.counts.Add(what+" "+o.Name+" "+s.tc.client, s.srv.now(), o.ClientRateWindow)
	if err != nil {
		s.st.Log.Warn("client counts unavailable, rate not checked", "counter", what, "error", err)
		return nil
	}
	if n <= limit {
		return nil
	}
	if what == "msg" {
		return smtputil.MessageRateExceeded(s.tc.client, limit, o.ClientRateWindow)
	}
	return smtputil.RecipientRateExceeded(s.tc.client, limit, o.ClientRateWindow)
}

// Keys of the login failure counts; not per listener: the accounts are
// shared by every outbound listener, and so is a guesser.
func authClientKey(client string) string { return "authfail client " + client }
func authUserKey(user string) string     { return "authfail user " + strings.ToLower(user) }

// authKnownKey counts the successful logins of a user from a client.
func authKnownKey(user, client string) string {
	return "authok " + client + " " + strings.ToLower(user)
}

// familiarFor is how long a client that logged in as a user stays exempt
// from that user's failure count (not from its own). The per-user lockout
// is what an outsider can aim at a real account from anywhere: without
// this, ten wrong guesses would lock the groupware out of its own account,
// window after window. A groupware logs in many times a day, a person's
// mail program at least weekly; a month covers a holiday. In memory, as
// the other counts: after a restart a client is familiar again from its
// next successful login.
const familiarFor = 30 * 24 * time.Hour

// authGate runs before a password is checked: it waits until no other
// login of the same client or user is being checked (so that parallel
// connections see each other's failures: the count is read before
// bcrypt, not after 300 of them), and refuses while the client or the
// user is locked out, even the right password. A client that logged in
// as the user within familiarFor is held to its own count only.
// release must be called once the outcome is recorded (authFailed,
// authSucceeded).
func (s *session) authGate(user string) (release func(), se *smtp.SMTPError, check string) {
	o := &s.srv.opts
	type gate struct {
		key, check, who string
		limit           int
	}
	var gates []gate
	if o.MaxAuthFailuresPerClient > 0 {
		gates = append(gates, gate{authClientKey(s.tc.client), "max_auth_failures_per_client", "from " + s.tc.client, o.MaxAuthFailuresPerClient})
	}
	if o.MaxAuthFailuresPerUser > 0 && !s.tc.exempt && !s.familiar(user) {
		gates = append(gates, gate{authUserKey(user), "max_auth_failures_per_user", "for this user", o.MaxAuthFailuresPerUser})
	}
	var held []func()
	release = func() {
		for i := len(held) - 1; i >= 0; i-- {
			held[i]()
		}
	}
	if s.tc.exempt {
		return release, nil, ""
	}
	// Always client before user: no two logins wait for each other.
	for _, g := range gates {
		unlock, ok := s.srv.authLocks.lock(g.key, authWait)
		if !ok {
			release()
			return nil, smtputil.AuthBusy(), g.check
		}
		held = append(held, unlock)
	}
	now := s.srv.now()
	for _, g := range gates {
		n, err := s.srv.counts.Count(g.key, now, o.AuthFailureWindow)
		if err != nil {
			s.st.Log.Warn("client counts unavailable, login failures not checked", "error", err)
			continue
		}
		if n >= g.limit {
			release()
			return nil, smtputil.AuthLockedOut(g.who, g.limit, o.AuthFailureWindow), g.check
		}
	}
	return release, nil, ""
}

// familiar reports whether this client logged in as user within
// familiarFor.
func (s *session) familiar(user string) bool {
	n, err := s.srv.counts.Count(authKnownKey(user, s.tc.client), s.srv.now(), familiarFor)
	return err == nil && n > 0
}

// authSucceeded records a successful login, which makes the client
// familiar for the user (authGate).
func (s *session) authSucceeded(user string) {
	if s.tc.exempt || s.srv.opts.MaxAuthFailuresPerUser <= 0 {
		return
	}
	if _, err := s.srv.counts.Add(authKnownKey(user, s.tc.client), s.srv.now(), familiarFor); err != nil {
		s.st.Log.Warn("client counts unavailable, successful login not recorded", "error", err)
	}
}

// authFailed records a failed login for the client and the user.
func (s *session) authFailed(user string) {
	o := &s.srv.opts
	if s.tc.exempt {
		return
	}
	now := s.srv.now()
	var keys []string
	if o.MaxAuthFailuresPerClient > 0 {
		keys = append(keys, authClientKey(s.tc.client))
	}
	if o.MaxAuthFailuresPerUser > 0 {
		keys = append(keys, authUserKey(user))
	}
	for _, k := range keys {
		if _, err := s.srv.counts.Add(k, now, o.AuthFailureWindow); err != nil {
			s.st.Log.Warn("client counts unavailable, login failure not counted", "error", err)
		}
	}
}

// isCredentialFailure tells a wrong password (counted) from a temporary
// problem (not the client's fault).
func isCredentialFailure(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code == 535
}

// keyedLocks are mutexes by name, created on demand and dropped when
// nobody holds or waits for them.
type keyedLocks struct {
	mu sync.Mutex
	m  map[string]*keyLock
}

type keyLock struct {
	ch   chan struct{}
	refs int
}

// lock waits at most wait for key; it returns the unlock function, or
// false when the wait ran out.
func (k *keyedLocks) lock(key string, wait time.Duration) (func(), bool) {
	k.mu.Lock()
	if k.m == nil {
		k.m = map[string]*keyLock{}
	}
	l := k.m[key]
	if l == nil {
		l = &keyLock{ch: make(chan struct{}, 1)}
		k.m[key] = l
	}
	l.refs++
	k.mu.Unlock()
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case l.ch <- struct{}{}:
		return func() { <-l.ch; k.put(key, l) }, true
	case <-t.C:
		k.put(key, l)
		return nil, false
	}
}

func (k *keyedLocks) put(key string, l *keyLock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l.refs--; l.refs == 0 {
		delete(k.m, key)
	}
}

// newCounts is the store when Options.ClientCounts is nil.
func newCounts() ClientCounter { return anvil.New(0) }
