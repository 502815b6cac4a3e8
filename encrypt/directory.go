package encrypt

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
	"github.com/miekg/dns"

	"securerelay/dnsutil"
)

// Source is where a key came from, and a link of a rule's lookup chain.
type Source string

const (
	SourcePinned     Source = "pinned"     // a key pinned in the TLS rule, by fingerprint
	SourceKeyring    Source = "keyring"    // the keyring folder
	SourceWKD        Source = "wkd"        // Web Key Directory
	SourceOPENPGPKEY Source = "openpgpkey" // DNS OPENPGPKEY (RFC 7929), DNSSEC-validated only
)

// DefaultChain is the chain of a rule that names none: local knowledge
// first (what the admin pinned or filed), then what the partner publishes.
var DefaultChain = []Source{SourcePinned, SourceKeyring, SourceWKD, SourceOPENPGPKEY}

// ParseSource checks a source name from the configuration.
func ParseSource(s string) (Source, error) {
	if src := Source(strings.ToLower(strings.TrimSpace(s))); slices.Contains(DefaultChain, src) {
		return src, nil
	}
	return "", fmt.Errorf("unknown key source %q (want pinned, keyring, wkd or openpgpkey)", s)
}

// DNSSECResolver asks DNS with the DO bit and reports the answer's AD bit;
// *dnsutil.Client implements it.
type DNSSECResolver interface {
	LookupSecure(ctx context.Context, name string, qtype uint16) (rrs []dns.RR, authenticated bool, err error)
}

// Defaults for the zero values of Options.
const (
	DefaultPositiveTTL    = 6 * time.Hour
	DefaultNegativeTTL    = 30 * time.Minute
	DefaultRemoteTimeout  = 15 * time.Second
	DefaultKeyringRescan  = 2 * time.Second
	DefaultOuterSubject   = "..."
	minRemoteAnswerTTLDNS = time.Minute
)

// Options configures a Directory. The zero value looks nowhere but in
// pinned keys.
type Options struct {
	// KeyringDir is a folder of public keys, one or more per file
	// (*.asc, *.gpg, *.pgp, *.key; ASCII-armoured or binary). It is
	// rescanned at most every KeyringRescan (default 2 s) when a lookup
	// needs it: changed, added and removed files take effect without a
	// restart. Empty: no keyring.
	KeyringDir    string
	KeyringRescan time.Duration

	// WKD turns Web Key Directory lookups on. They need HTTPClient (whose
	// certificate verification is what makes WKD trustworthy: never give
	// it InsecureSkipVerify) and Resolver (to learn whether the
	// openpgpkey subdomain exists, which picks the advanced or the direct
	// method).
	WKD        bool
	HTTPClient *http.Client
	Resolver   dnsutil.Resolver

	// DNSSEC, when set, turns OPENPGPKEY lookups on. Its AD bit is
	// believed, so it must be a validating resolver on a trusted path
	// (dns.dnssec_validating).
	DNSSEC DNSSECResolver

	// RemoteTimeout bounds one WKD or OPENPGPKEY lookup, DNS and HTTP
	// included (default 15 s).
	RemoteTimeout time.Duration

	// CacheFile keeps WKD and OPENPGPKEY answers across restarts (in
	// state_dir). Empty: in memory only. Answers with a key are kept for
	// PositiveTTL (default 6 h; an OPENPGPKEY answer no longer than its
	// DNS TTL), answers without one for NegativeTTL (default 30 min): a
	// partner who publishes a key is found within that time.
	CacheFile                string
	PositiveTTL, NegativeTTL time.Duration

	Now    func() time.Time // default time.Now
	Logger *slog.Logger     // default: discard
}

// Directory finds recipients' keys along a rule's chain of sources. It is
// safe for concurrent use; Close saves the cache.
type Directory struct {
	o       Options
	kr      *keyring
	pins    fileCache
	cache   *remoteCache
	httpc   *http.Client
	log     *slog.Logger
	fetchMu chan struct{} // bounds concurrent remote fetches
}

// New checks o and returns a Directory. The keyring folder must exist
// (a typo in the configuration should stop the start, not silently find
// no keys).
func New(o Options) (*Directory, error) {
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.KeyringRescan <= 0 {
		o.KeyringRescan = DefaultKeyringRescan
	}
	if o.RemoteTimeout <= 0 {
		o.RemoteTimeout = DefaultRemoteTimeout
	}
	if o.PositiveTTL <= 0 {
		o.PositiveTTL = DefaultPositiveTTL
	}
	if o.NegativeTTL <= 0 {
		o.NegativeTTL = DefaultNegativeTTL
	}
	d := &Directory{o: o, log: o.Logger, fetchMu: make(chan struct{}, 16)}
	if o.KeyringDir != "" {
		fi, err := os.Stat(o.KeyringDir)
		if err != nil {
			return nil, fmt.Errorf("encrypt: keyring: %w", err)
		}
		if !fi.IsDir() {
			return nil, fmt.Errorf("encrypt: keyring %s is not a folder", o.KeyringDir)
		}
		d.kr = &keyring{dir: o.KeyringDir, interval: o.KeyringRescan, log: o.Logger}
	}
	if o.WKD {
		if o.HTTPClient == nil || o.Resolver == nil {
			return nil, errors.New("encrypt: WKD needs an HTTP client and a resolver")
		}
		// WKD's only authentication is the web server's certificate.
		if t, ok := o.HTTPClient.Transport.(*http.Transport); ok && t.TLSClientConfig != nil && t.TLSClientConfig.InsecureSkipVerify {
			return nil, errors.New("encrypt: the WKD HTTP client does not verify certificates; WKD keys would be anybody's")
		}
		d.httpc = wkdClient(o.HTTPClient)
	}
	d.cache = newRemoteCache(o.CacheFile, o.Now(), o.Logger)
	return d, nil
}

// Close writes the cache file one last time.
func (d *Directory) Close() error { return d.cache.close() }

// Pin is a key pinned in a rule: the key with Fingerprint in File.
// Address, when set, limits the pin to that recipient; without it the pin
// covers every recipient of the rule (a partner's gateway key). A pinned
// key need not carry the recipient's address in a user ID: the admin
// vouched for it.
type Pin struct {
	Fingerprint string
	File        string
	Address     string
}

// Query asks for the key of one recipient under one rule. Sources is the
// rule's chain in order (nil: DefaultChain); a source that is not listed
// is not trusted for this rule and not asked. Pins are the rule's pinned
// keys, used when SourcePinned is in the chain.
type Query struct {
	Address string
	Sources []Source
	Pins    []Pin
}

// Key is a usable key: not expired, not revoked, with a valid encryption
// subkey, and (unless pinned) a user ID with the recipient's address.
type Key struct {
	Entity      *openpgp.Entity
	Fingerprint string // primary key, upper-case hex
	Source      Source
	Origin      string // file, URL or DNS name it came from
}

// Refused is a candidate key that was not used, or a source answer that
// could not be used, and why.
type Refused struct {
	Source      Source
	Origin      string
	Fingerprint string // empty when no key could be read
	Reason      string
}

func (r Refused) String() string {
	s := string(r.Source) + " " + r.Origin
	if r.Fingerprint != "" {
		s += " key " + r.Fingerprint
	}
	return s + ": " + r.Reason
}

// Result is the outcome of a lookup. With Key nil and Temporary nil there
// is no usable key in any source asked (Searched): the message waits for
// one to appear, as it does on a Temporary error, but a DSN may say "no
// key" rather than "lookup failed".
type Result struct {
	Key      *Key
	Refused  []Refused
	Searched []Source // the sources asked, in order
	// Temporary is set when a source could not be asked (DNS or HTTP
	// trouble, an unreadable keyring folder) and no later source had a
	// key: the answer might have been a key.
	Temporary error
}

// Lookup walks q's chain and returns the first usable key. A source that
// fails temporarily does not stop the walk: a later source's key is used.
func (d *Directory) Lookup(ctx context.Context, q Query) Result {
	var res Result
	r, err := parseRecipient(q.Address)
	if err != nil {
		res.Refused = append(res.Refused, Refused{Reason: err.Error()})
		return res
	}
	chain := q.Sources
	if chain == nil {
		chain = DefaultChain
	}
	var temps []error
	for _, src := range slices.Compact(slices.Clone(chain)) {
		var (
			key     *Key
			refused []Refused
			err     error
		)
		switch src {
		case SourcePinned:
			if len(q.Pins) == 0 {
				continue
			}
			key, refused = d.lookupPinned(r, q.Pins)
		case SourceKeyring:
			if d.kr == nil {
				continue
			}
			key, refused, err = d.lookupKeyring(r)
		case SourceWKD:
			if !d.o.WKD {
				continue
			}
			key, refused, err = d.lookupRemote(ctx, SourceWKD, r)
		case SourceOPENPGPKEY:
			if d.o.DNSSEC == nil {
				continue
			}
			key, refused, err = d.lookupRemote(ctx, SourceOPENPGPKEY, r)
		default:
			d.log.Warn("encrypt: unknown key source in chain", "source", src)
			continue
		}
		res.Searched = append(res.Searched, src)
		res.Refused = append(res.Refused, refused...)
		if err != nil {
			temps = append(temps, fmt.Errorf("%s: %w", src, err))
		}
		if key != nil {
			res.Key = key
			return res
		}
	}
	res.Temporary = errors.Join(temps...)
	return res
}

// candidate is a key read from one origin.
type candidate struct {
	e      *openpgp.Entity
	origin string
}

// pick returns the newest usable candidate for r and a refusal for every
// other one.
func pick(src Source, r recipient, cands []candidate, now time.Time) (*Key, []Refused) {
	var ok []candidate
	var refused []Refused
	for _, c := range cands {
		if why := unusable(c.e, r.key, true, now); why != "" {
			refused = append(refused, Refused{Source: src, Origin: c.origin, Fingerprint: Fingerprint(c.e), Reason: why})
			continue
		}
		ok = append(ok, c)
	}
	if len(ok) == 0 {
		return nil, refused
	}
	slices.SortStableFunc(ok, func(a, b candidate) int { return newer(a.e, b.e, now) })
	best := ok[0]
	for _, c := range ok[1:] {
		if Fingerprint(c.e) == Fingerprint(best.e) {
			continue // the same key filed twice
		}
		refused = append(refused, Refused{Source: src, Origin: c.origin, Fingerprint: Fingerprint(c.e),
			Reason: "usable, but " + Fingerprint(best.e) + " is newer"})
	}
	return &Key{Entity: best.e, Fingerprint: Fingerprint(best.e), Source: src, Origin: best.origin}, refused
}

func (d *Directory) lookupKeyring(r recipient) (*Key, []Refused, error) {
	now := d.o.Now()
	if err := d.kr.refresh(now); err != nil {
		return nil, nil, err
	}
	var cands []candidate
	for _, e := range d.kr.candidates(r.key) {
		cands = append(cands, candidate{e: e.e, origin: e.file})
	}
	k, refused := pick(SourceKeyring, r, cands, now)
	return k, refused, nil
}

// KeyringProblems rescans the keyring folder and returns the files in it
// that could not be read as keys (for check-config and "encrypt lookup").
func (d *Directory) KeyringProblems() []error {
	if d.kr == nil {
		return nil
	}
	if err := d.kr.refresh(d.o.Now()); err != nil {
		return []error{err}
	}
	d.kr.mu.Lock()
	defer d.kr.mu.Unlock()
	return slices.Clone(d.kr.problems)
}
