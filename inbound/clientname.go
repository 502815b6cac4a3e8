package inbound

import (
	"context"

	"securerelay/dnsutil"
	"securerelay/smtpd"
)

// nameLookup is the reverse DNS of one session's client: what its milters
// are told in the connect event, {client_name} and {client_ptr}, as
// Postfix's smtpd tells them. Without it every client is "unknown" to
// them, and a scanner reads that as a client without reverse DNS: rspamd's
// hfilter scores HFILTER_HOSTNAME_UNKNOWN (2.5 by default) on every
// message.
type nameLookup struct {
	done chan struct{}
	cn   dnsutil.ClientName
}

// beginClientName starts the lookup once the client passed the EHLO
// stages (no DNS work for a refused one), in the background: it is over
// long before the first recipient, when the milters' conversations begin
// (milterRcpt), and no reply waits for it. Only a role with milters asks;
// each answer is in the DNS cache for the next session.
func (r *Role) beginClientName(st *smtpd.State) {
	c := r.content.Load()
	if st == nil || c == nil || len(c.Chains) == 0 || r.resolver == nil || !st.RemoteIP.IsValid() {
		return
	}
	s := sessionOf(st)
	if s.name != nil {
		return // a second EHLO
	}
	l := &nameLookup{done: make(chan struct{})}
	s.name = l
	res, ip, timeout := r.resolver, st.RemoteIP, r.screen.DNSBL.Timeout
	go func() {
		defer close(l.done)
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		l.cn = dnsutil.LookupClientName(ctx, res, ip)
	}()
}

// clientName is the session's lookup, waited for (its own time-out bounds
// the wait); empty when none was begun.
func clientName(st *smtpd.State) dnsutil.ClientName {
	if st == nil {
		return dnsutil.ClientName{}
	}
	s, ok := st.Data.(*session)
	if !ok || s.name == nil {
		return dnsutil.ClientName{}
	}
	<-s.name.done
	return s.name.cn
}
