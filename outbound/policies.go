package outbound

import "fmt"

// The submission role's policies. The configuration spells them as
// strings; cmd converts them once, when it builds the role, so that no
// check compares strings.

// AuthMode is a listener's auth setting.
type AuthMode uint8

const (
	// AuthOptional: AUTH is offered; trusted_networks relay without it.
	AuthOptional AuthMode = iota
	// AuthRequired: every client must log in, trusted or not.
	AuthRequired
	// AuthOff: no AUTH; only trusted_networks relay.
	AuthOff
)

// ParseAuthMode reads required, optional ("" too) or off.
func ParseAuthMode(s string) (AuthMode, error) {
	switch s {
	case "", "optional":
		return AuthOptional, nil
	case "required":
		return AuthRequired, nil
	case "off":
		return AuthOff, nil
	}
	return AuthOptional, fmt.Errorf("auth %q: want required, optional or off", s)
}

// ForeignFrom is what happens to an authenticated user's mail whose From:
// domain is not one of ours.
type ForeignFrom uint8

const (
	// ForeignFromReject refuses it (553 5.7.1): it could not be signed.
	ForeignFromReject ForeignFrom = iota
	// ForeignFromUnsigned sends it unsigned.
	ForeignFromUnsigned
)

// ParseForeignFrom reads reject ("" too) or unsigned.
func ParseForeignFrom(s string) (ForeignFrom, error) {
	switch s {
	case "", "reject":
		return ForeignFromReject, nil
	case "unsigned":
		return ForeignFromUnsigned, nil
	}
	return ForeignFromReject, fmt.Errorf("foreign_from %q: want reject or unsigned", s)
}

// NullSender is what happens to mail from <> that is not a delivery
// status or disposition notification.
type NullSender uint8

const (
	// NullSenderAny applies no policy.
	NullSenderAny NullSender = iota
	// NullSenderReject refuses it (550 5.7.1).
	NullSenderReject
	// NullSenderRewrite sends it from NullSenderAddress instead.
	NullSenderRewrite
)

// ParseNullSender reads reject, rewrite or "" (no policy).
func ParseNullSender(s string) (NullSender, error) {
	switch s {
	case "":
		return NullSenderAny, nil
	case "reject":
		return NullSenderReject, nil
	case "rewrite":
		return NullSenderRewrite, nil
	}
	return NullSenderAny, fmt.Errorf("null_sender %q: want reject or rewrite", s)
}
