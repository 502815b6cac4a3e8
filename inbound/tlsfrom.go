package inbound

import "securerelay/smtputil"

// TLSFrom is one partner whose mail must arrive over TLS (Postfix's
// reject_plaintext_session in a restriction class; PMG's "inbound TLS
// domains"): a sender domain, or all subdomains with a leading dot.
type TLSFrom struct {
	Match string // "partner.example" or ".partner.example"
	// Action: "tempfail" (450 4.7.0: the partner's MTA keeps the mail and
	// retries, so a passing STARTTLS outage loses nothing) or "reject"
	// (530 5.7.0).
	Action string
	// Rule names the policy in replies and logs ("outbound.tls.policies[2]").
	Rule string
}

// tlsFromRule returns the first rule that covers domain.
func tlsFromRule(rules []TLSFrom, domain string) *TLSFrom {
	for i := range rules {
		if smtputil.MatchDomain(rules[i].Match, domain) {
			return &rules[i]
		}
	}
	return nil
}

// plaintextPartner refuses mail from a partner domain that must use TLS
// when this session has none. It runs at MAIL FROM, so nothing of the
// message is taken.
func (r *Role) plaintextPartner(tlsActive bool, domain string) error {
	if tlsActive {
		return nil
	}
	rule := tlsFromRule(*r.tlsFrom.Load(), domain)
	if rule == nil || rule.Action == "off" {
		return nil
	}
	r.count.inc("plaintext_partner")
	if r.log != nil {
		r.log.Info("inbound check refused", "check", "plaintext_partner", "action", rule.Action, "domain", domain, "rule", rule.Rule)
	}
	const text = "mail from %s must arrive over TLS (this site's TLS policy for %s); your server must use STARTTLS before MAIL FROM"
	if rule.Action == "reject" {
		return smtputil.Reply(530, 5, 7, 0, text, domain, rule.Match)
	}
	return smtputil.Reply(450, 4, 7, 0, text+"; try again with TLS", domain, rule.Match)
}

// SetTLSFrom replaces the partner rules (SIGHUP).
func (r *Role) SetTLSFrom(rules []TLSFrom) {
	rules = append([]TLSFrom(nil), rules...)
	r.tlsFrom.Store(&rules)
}
