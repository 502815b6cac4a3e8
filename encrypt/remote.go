package encrypt

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/miekg/dns"

	"securerelay/dnsutil"
)

// remoteAnswer is what one WKD or OPENPGPKEY lookup found.
type remoteAnswer struct {
	origin  string        // URL or DNS name
	data    []byte        // binary (or, from WKD, armoured) keys
	none    bool          // definitively no key there
	note    string        // the answer is unusable: why (refused, no key taken from it)
	noCache bool          // do not remember this answer
	ttl     time.Duration // for an answer with data; 0: PositiveTTL
}

// lookupRemote asks a remote source through the cache.
func (d *Directory) lookupRemote(ctx context.Context, src Source, r recipient) (*Key, []Refused, error) {
	// WKD hashes the lower-cased local part, so case does not make
	// another answer; an OPENPGPKEY name hashes it as given.
	ck := string(src) + ":" + r.key
	if src == SourceOPENPGPKEY {
		ck = string(src) + ":" + r.String()
	}
	now := d.o.Now()
	e, ferr, hit := d.cache.get(ck, now)
	if hit && ferr != nil {
		return nil, nil, ferr
	}
	if !hit && src == SourceWKD {
		if _, derr, dhit := d.cache.get(wkdHostKey(r), now); dhit && derr != nil {
			return nil, nil, derr
		}
	}
	if !hit {
		var err error
		e, err = d.fetch(ctx, src, r, ck, now)
		if err != nil {
			return nil, nil, err
		}
	}
	return d.evaluate(src, r, e, now)
}

// fetch asks the source (once, however many lookups want the same answer
// at the same time) and caches what it said.
func (d *Directory) fetch(ctx context.Context, src Source, r recipient, ck string, now time.Time) (*cacheEntry, error) {
	ans, err := d.cache.once(ctx, ck, func() (remoteAnswer, error) {
		ctx, cancel := context.WithTimeout(ctx, d.o.RemoteTimeout)
		defer cancel()
		select {
		case d.fetchMu <- struct{}{}:
			defer func() { <-d.fetchMu }()
		case <-ctx.Done():
			return remoteAnswer{}, ctx.Err()
		}
		var ans remoteAnswer
		var err error
		if src == SourceWKD {
			ans, err = d.fetchWKD(ctx, r)
		} else {
			ans, err = d.fetchOPENPGPKEY(ctx, r)
		}
		if err != nil {
			until := now.Add(min(failTTL, d.o.NegativeTTL))
			d.cache.putFailure(ck, err, until)
			if src == SourceWKD && wkdHostFailure(err) {
				d.cache.putFailure(wkdHostKey(r), fmt.Errorf("the Web Key Directory of %s failed for another address less than %v ago (%v); not asked again yet",
					r.domain, failTTL, hostPart(err)), until)
			}
			return ans, err
		}
		if !ans.noCache {
			d.cache.put(ck, d.entry(ans, now))
		}
		return ans, nil
	})
	if err != nil {
		return nil, err
	}
	return d.entry(ans, now), nil
}

// wkdHostKey is where a failure of a domain's WKD server itself is
// remembered: once it did not answer (down, hanging, a certificate that
// does not verify, DNS trouble), the next address of that domain fails at
// once for failTTL instead of waiting RemoteTimeout again, so that a
// transaction with many recipients there does not hold the submitting
// client, nor a delivery its destination slot, RemoteTimeout per
// recipient.
func wkdHostKey(r recipient) string { return "wkd-host:" + r.domain }

// wkdHostFailure: err is the server's or the network's, not an answer
// about one address (an HTTP status may be per address: some servers
// answer 500 where they mean "no key", and that must not hold up the
// others), nor a lookup its caller gave up.
func wkdHostFailure(err error) bool {
	var ue *url.Error
	var de *dnsutil.Error
	return (errors.As(err, &ue) || errors.As(err, &de)) && !errors.Is(err, context.Canceled)
}

// hostPart is err without the URL of the address it was about (the
// local part is in it), for the other addresses' replies.
func hostPart(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func (d *Directory) entry(ans remoteAnswer, now time.Time) *cacheEntry {
	ttl := d.o.NegativeTTL
	if len(ans.data) > 0 && ans.note == "" {
		ttl = d.o.PositiveTTL
		if ans.ttl > 0 {
			ttl = min(ttl, ans.ttl)
		}
	}
	return &cacheEntry{Origin: ans.origin, Data: ans.data, None: ans.none, Note: ans.note, Fetched: now, Expires: now.Add(ttl)}
}

func (d *Directory) evaluate(src Source, r recipient, e *cacheEntry, now time.Time) (*Key, []Refused, error) {
	if e.None {
		return nil, nil, nil
	}
	var el []candidate
	keys, perr := parseKeys(e.Data, maxRemoteKeyData)
	for _, k := range keys {
		el = append(el, candidate{e: k, origin: e.Origin})
	}
	if e.Note != "" {
		if len(el) == 0 {
			return nil, []Refused{{Source: src, Origin: e.Origin, Reason: e.Note}}, nil
		}
		var refused []Refused
		for _, c := range el {
			refused = append(refused, Refused{Source: src, Origin: e.Origin, Fingerprint: Fingerprint(c.e), Reason: e.Note})
		}
		return nil, refused, nil
	}
	if perr != nil {
		return nil, []Refused{{Source: src, Origin: e.Origin, Reason: perr.Error()}}, nil
	}
	k, refused := pick(src, r, el, now)
	return k, refused, nil
}

// wkdClient is c with a redirect policy for WKD: HTTPS only and the same
// host, so that a redirect cannot move the lookup to a server the
// domain's certificate does not vouch for.
func wkdClient(c *http.Client) *http.Client {
	cc := *c
	cc.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= 5 {
			return errors.New("more than 5 redirects")
		}
		if req.URL.Scheme != "https" || !strings.EqualFold(req.URL.Host, via[0].URL.Host) {
			return fmt.Errorf("redirect to %s leaves %s over HTTPS", req.URL.Redacted(), via[0].URL.Host)
		}
		return nil
	}
	return &cc
}

// dnsKind is the Kind of a dnsutil error; Temporary for anything else.
func dnsKind(err error) dnsutil.Kind {
	var de *dnsutil.Error
	if errors.As(err, &de) {
		return de.Kind
	}
	return dnsutil.Temporary
}

// fetchWKD asks the partner's Web Key Directory. The advanced method is
// used when openpgpkey.<domain> exists in DNS; only when it does not (no
// such name, or no address) the direct method is, as the WKD draft
// (section 3.1) says: a subdomain that exists but fails must not be
// bypassed.
func (d *Directory) fetchWKD(ctx context.Context, r recipient) (remoteAnswer, error) {
	advanced, direct := wkdURLs(r)
	u := advanced
	if _, err := d.o.Resolver.LookupHost(ctx, "openpgpkey."+r.domain); err != nil {
		switch dnsKind(err) {
		case dnsutil.NotFound, dnsutil.NoData, dnsutil.Invalid:
			u = direct
		default:
			return remoteAnswer{}, err
		}
		if _, err := d.o.Resolver.LookupHost(ctx, r.domain); err != nil {
			if dnsKind(err) == dnsutil.Temporary {
				return remoteAnswer{}, err
			}
			// A mail domain without a web server: no WKD, definitively.
			return remoteAnswer{origin: direct, none: true}, nil
		}
	}
	return d.getWKD(ctx, u)
}

func (d *Directory) getWKD(ctx context.Context, u string) (remoteAnswer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return remoteAnswer{origin: u, note: err.Error()}, nil
	}
	req.Header.Set("User-Agent", "securerelay-wkd")
	resp, err := d.httpc.Do(req)
	if err != nil {
		return remoteAnswer{}, err // the *url.Error names the URL
	}
	defer resp.Body.Close()
	switch resp.StatusCode {
	case http.StatusOK:
	case http.StatusNotFound, http.StatusGone:
		return remoteAnswer{origin: u, none: true}, nil
	default:
		return remoteAnswer{}, fmt.Errorf("GET %s: HTTP %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxRemoteKeyData+1))
	if err != nil {
		return remoteAnswer{}, fmt.Errorf("GET %s: reading the answer: %w", u, err)
	}
	switch {
	case len(body) > maxRemoteKeyData:
		return remoteAnswer{origin: u, note: fmt.Sprintf("answer larger than %d bytes", maxRemoteKeyData)}, nil
	case len(body) == 0:
		return remoteAnswer{origin: u, note: "empty answer"}, nil
	}
	return remoteAnswer{origin: u, data: body}, nil
}

// fetchOPENPGPKEY asks DNS for r's OPENPGPKEY records (RFC 7929). The
// local part is hashed as given; when that name does not exist and the
// local part has upper-case letters, the lower-cased one is tried too
// (RFC 7929 section 3 leaves case to the domain; most publish lower case).
// Keys are taken only from an answer the resolver validated (AD bit): an
// unsigned or forged answer could hand us an attacker's key.
func (d *Directory) fetchOPENPGPKEY(ctx context.Context, r recipient) (remoteAnswer, error) {
	names := []string{openpgpkeyName(r.local, r.domain)}
	if l := asciiLower(r.local); l != r.local {
		names = append(names, openpgpkeyName(l, r.domain))
	}
	for i, name := range names {
		rrs, ad, err := d.o.DNSSEC.LookupSecure(ctx, name, dns.TypeOPENPGPKEY)
		if err != nil {
			if dnsKind(err) == dnsutil.Temporary {
				return remoteAnswer{}, err
			}
			if i+1 < len(names) {
				continue
			}
			return remoteAnswer{origin: name, none: true}, nil
		}
		data, ttl, bad := openpgpkeyData(rrs)
		ans := remoteAnswer{origin: name, data: data, ttl: max(ttl, minRemoteAnswerTTLDNS)}
		switch {
		case !ad:
			ans.note = "answer not DNSSEC-validated (the resolver did not set the AD bit); OPENPGPKEY is used only from a validated answer"
			ans.noCache = true
		case len(data) == 0:
			ans.note = "no readable key in the OPENPGPKEY records: " + bad
		}
		return ans, nil
	}
	return remoteAnswer{}, errors.New("unreachable")
}

// openpgpkeyData concatenates the keys of OPENPGPKEY records (each one
// transferable public key, binary) and returns the smallest TTL.
func openpgpkeyData(rrs []dns.RR) (data []byte, ttl time.Duration, bad string) {
	minTTL := uint32(math.MaxUint32)
	for _, rr := range rrs {
		k, ok := rr.(*dns.OPENPGPKEY)
		if !ok {
			continue
		}
		raw, err := base64.StdEncoding.DecodeString(k.PublicKey)
		if err != nil || len(raw) == 0 {
			bad = "record not base64"
			continue
		}
		if len(data)+len(raw) > maxRemoteKeyData {
			bad = "records too large"
			break
		}
		data = append(data, raw...)
		minTTL = min(minTTL, k.Hdr.Ttl)
	}
	if len(data) == 0 {
		return nil, 0, bad
	}
	return data, time.Duration(minTTL) * time.Second, bad
}
