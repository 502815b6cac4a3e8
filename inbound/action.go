package inbound

import "fmt"

// Action is what a check does when it fails. The configuration spells it
// as a string (reject, tempfail, off); cmd converts it once, when it
// builds the role (ParseAction), so that no check compares strings.
type Action uint8

const (
	// ActionDefault: not set; the check's default applies (reject;
	// helo_fqdn: off).
	ActionDefault Action = iota
	// ActionReject answers with the check's permanent reply.
	ActionReject
	// ActionTempfail answers with its temporary twin (smtputil.Deferred):
	// an admin can try a check out without losing mail.
	ActionTempfail
	// ActionOff skips the check.
	ActionOff
)

// ParseAction reads an action as the configuration spells it; "" is
// ActionDefault.
func ParseAction(s string) (Action, error) {
	switch s {
	case "":
		return ActionDefault, nil
	case "reject":
		return ActionReject, nil
	case "tempfail":
		return ActionTempfail, nil
	case "off":
		return ActionOff, nil
	}
	return ActionDefault, fmt.Errorf("action %q: want reject, tempfail or off", s)
}

// String is the configuration's spelling, as logged (action=); the
// default is logged as what it does where it refuses: reject.
func (a Action) String() string {
	switch a {
	case ActionTempfail:
		return "tempfail"
	case ActionOff:
		return "off"
	}
	return "reject"
}

// or is a, or def when a is not set.
func (a Action) or(def Action) Action {
	if a == ActionDefault {
		return def
	}
	return a
}
