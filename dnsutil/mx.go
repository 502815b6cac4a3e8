package dnsutil

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
)

// ErrNullMX means the domain publishes a null MX (RFC 7505): it accepts no
// mail at all, so delivery must fail permanently without retries.
var ErrNullMX = errors.New("domain accepts no mail (null MX, RFC 7505)")

// ErrMXLoop means the best MX host is this relay (or the domain's
// implicit MX is): delivering would loop, and RFC
// 5321 §5.1 says the message MUST be returned (Postfix: "mail for … loops
// back to myself").
var ErrMXLoop = errors.New("the domain's best mail server is this relay: mail would loop back to it")

// IsMXLoop reports whether err comes from an MX list that points at us.
func IsMXLoop(err error) bool { return errors.Is(err, ErrMXLoop) }

// shuffle spreads load over equal-preference MX hosts (RFC 5321 §5.1).
// Tests replace it to get a fixed order.
var shuffle = rand.Shuffle

// IsNullMX reports whether err comes from a null MX.
func IsNullMX(err error) bool { return errors.Is(err, ErrNullMX) }

// IsPermanent reports whether err is a definitive DNS answer that retrying
// will not change: NXDOMAIN, NODATA (including no MX and no address), null
// MX, or a name that cannot exist. Everything else, including errors not
// from this package, is treated as temporary by the caller's default.
func IsPermanent(err error) bool {
	if IsNullMX(err) || IsMXLoop(err) {
		return true
	}
	k, ok := kindOf(err)
	return ok && k != Temporary
}

// MXTargets returns the hosts to try for mail to domain, in order (RFC 5321
// §5.1): MX hosts by preference, equal preferences shuffled. A domain with
// no MX records but with an address gets its implicit MX, the domain itself.
// Names are lower case without trailing dot.
func MXTargets(ctx context.Context, r Resolver, domain string) ([]string, error) {
	return MXTargetsExcept(ctx, r, domain, nil)
}

// AddrSelf is a MXTargetsExcept predicate for a relay that knows its own
// addresses (ours): it resolves an MX host and reports whether one of its
// addresses is ours, as Postfix compares MX addresses with its
// inet_interfaces. Names are not compared: a relay's host or HELO name
// may well be another machine's MX (a shared NAT address, a Postfix on
// the same host). A failed lookup counts as not ours; delivery then meets
// the same failure.
func AddrSelf(ctx context.Context, r Resolver, ours func(netip.Addr) bool) func(host string) bool {
	return func(host string) bool {
		addrs, err := r.LookupHost(ctx, host)
		if err != nil {
			return false
		}
		return slices.ContainsFunc(addrs, ours)
	}
}

// MXTargetsExcept is MXTargets for a relay that recognises itself among
// the MX hosts with self (nil: never): as RFC 5321 §5.1 requires, an MX
// host that is us is dropped together with every MX of equal or worse
// preference, since those would only hand the mail back to us or to a
// backup that relays to us. Nothing left is ErrMXLoop.
func MXTargetsExcept(ctx context.Context, r Resolver, domain string, self func(host string) bool) ([]string, error) {
	domain = strings.ToLower(strings.TrimSuffix(domain, "."))
	isSelf := func(h string) bool { return self != nil && self(strings.ToLower(strings.TrimSuffix(h, "."))) }
	mxs, err := r.LookupMX(ctx, domain)
	if err == nil && len(mxs) == 0 {
		// A Resolver may signal NODATA as an empty answer.
		err = &Error{Name: domain, Type: "MX", Kind: NoData}
	}
	switch {
	case err == nil:
	case IsNoData(err):
		if _, herr := r.LookupHost(ctx, domain); herr != nil {
			if IsTemporary(herr) {
				return nil, herr
			}
			return nil, fmt.Errorf("%s has no MX and no address records: %w", domain, herr)
		}
		if isSelf(domain) {
			return nil, fmt.Errorf("%s (implicit MX): %w", domain, ErrMXLoop)
		}
		return []string{domain}, nil
	default:
		return nil, err
	}

	mxs = slices.Clone(mxs)
	// A null MX mixed with real ones is a misconfiguration; the real ones
	// are still the only hosts that could take the mail.
	mxs = slices.DeleteFunc(mxs, func(m MX) bool { return m.Host == "." || m.Host == "" })
	if len(mxs) == 0 {
		return nil, fmt.Errorf("%s: %w", domain, ErrNullMX)
	}
	selfIdx := -1
	for i, m := range mxs {
		if isSelf(m.Host) && (selfIdx < 0 || m.Pref < mxs[selfIdx].Pref) {
			selfIdx = i
		}
	}
	if selfIdx >= 0 {
		me := mxs[selfIdx]
		mxs = slices.DeleteFunc(mxs, func(m MX) bool { return m.Pref >= me.Pref })
		if len(mxs) == 0 {
			return nil, fmt.Errorf("%s: MX %s (preference %d): %w", domain, strings.TrimSuffix(me.Host, "."), me.Pref, ErrMXLoop)
		}
	}
	shuffle(len(mxs), func(i, j int) { mxs[i], mxs[j] = mxs[j], mxs[i] })
	slices.SortStableFunc(mxs, func(a, b MX) int { return cmp.Compare(a.Pref, b.Pref) })

	hosts := make([]string, 0, len(mxs))
	seen := make(map[string]bool, len(mxs))
	for _, m := range mxs {
		h := strings.ToLower(strings.TrimSuffix(m.Host, "."))
		// A host listed twice is tried once, at its best preference.
		if !seen[h] {
			seen[h] = true
			hosts = append(hosts, h)
		}
	}
	return hosts, nil
}
