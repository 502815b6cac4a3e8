package inbound

import (
	"strings"

	"github.com/emersion/go-smtp"

	"securerelay/smtpd"
	"securerelay/smtputil"
)

// TLSFrom is one partner whose mail must arrive over TLS (Postfix's
// reject_plaintext_session in a restriction class; PMG's "inbound TLS
// domains"): a sender domain, or all subdomains with a leading dot.
type TLSFrom struct {
	Match string // "partner.example" or ".partner.example"
	// Action: ActionTempfail (450 4.7.0: the partner's MTA keeps the mail
	// and retries, so a passing STARTTLS outage loses nothing; also
	// ActionDefault), ActionReject (530 5.7.0) or ActionOff.
	Action Action
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

// tlsFromHost returns the first rule whose partner a client with this
// EHLO name is: a rule "partner.example" covers the host partner.example
// and every host under it (mx1.partner.example is the partner's
// machine), a rule ".partner.example" the hosts under it.
func tlsFromHost(rules []TLSFrom, helo string) *TLSFrom {
	for i := range rules {
		m := rules[i].Match
		if smtputil.MatchDomain(m, helo) || (!strings.HasPrefix(m, ".") && strings.HasSuffix(helo, "."+m)) {
			return &rules[i]
		}
	}
	return nil
}

// plaintextPartner refuses, in a session without TLS, mail from a
// partner that must use TLS. It runs at MAIL FROM, so nothing of the
// message is taken. The partner is recognised by the sender's domain or,
// whatever the sender (the null sender of its DSNs and MDNs included,
// which quote the original), by the EHLO name of its server.
//
// Why the EHLO name: a <> sender names nobody, the recipients are ours,
// and the From field of a report arrives only with the content, which is
// then already in clear (and refusing it with tempfail would send it in
// clear again at every retry). The client's address would need the
// partner's address list or SPF record evaluated for every plaintext
// null-sender session (DNS work any client could trigger), and its PTR
// name says what the address owner wants. The EHLO name is what the
// partner's own MTA says of itself; the rule guards against a path that
// strips STARTTLS from that MTA (a middlebox, a downgrade), not against
// someone posing as the partner, who can say any name but only gets
// himself refused. What it cannot cover: a partner whose MTAs use a
// provider's name (a hosted mail service); README.md says what the admin
// can do then.
func (r *Role) plaintextPartner(st *smtpd.State, domain, check string) error {
	if st.TLS != nil {
		return nil
	}
	rules := *r.tlsFrom.Load()
	if domain != "" {
		if rule := tlsFromRule(rules, domain); rule != nil && rule.Action != ActionOff {
			return smtpd.Refuse(check, partnerReply(rule, "mail from "+domain),
				"action", rule.action(), "domain", domain, "rule", rule.Rule)
		}
	}
	helo, err := smtputil.ParseDomain(st.Helo)
	if err != nil || strings.HasPrefix(helo, "[") {
		return nil
	}
	if rule := tlsFromHost(rules, helo); rule != nil && rule.Action != ActionOff {
		// The EHLO name is the session's helo key of the log line.
		return smtpd.Refuse(check, partnerReply(rule, "mail from the servers of "+strings.TrimPrefix(rule.Match, ".")+" (EHLO "+helo+")"),
			"action", rule.action(), "rule", rule.Rule)
	}
	return nil
}

// action is the rule's action as logged: the default is tempfail here.
func (t *TLSFrom) action() string { return t.Action.or(ActionTempfail).String() }

func partnerReply(rule *TLSFrom, what string) *smtp.SMTPError {
	if rule.Action == ActionReject {
		return smtputil.PartnerNeedsTLS(what, rule.Match)
	}
	return smtputil.PartnerNeedsTLSDefer(what, rule.Match)
}

// SetTLSFrom replaces the partner rules (SIGHUP).
func (r *Role) SetTLSFrom(rules []TLSFrom) {
	rules = append([]TLSFrom(nil), rules...)
	r.tlsFrom.Store(&rules)
}
