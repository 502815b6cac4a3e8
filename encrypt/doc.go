// Package encrypt finds recipients' OpenPGP keys and encrypts messages to
// them as PGP/MIME (RFC 3156), for the encryption fallback: when a
// partner's mandatory TLS cannot be had, the relay delivers the message
// encrypted end to end to each recipient's key, or not at all.
//
// # Keys
//
// A Directory (New) looks a recipient up along a rule's chain of sources
// (Query.Sources, in order; DefaultChain when nil; a source not listed is
// not trusted for that rule):
//
//   - SourcePinned: Query.Pins, keys pinned in the rule by fingerprint,
//     each in a file. A pin with an Address covers that recipient, one
//     without covers every recipient of the rule (a partner's gateway
//     key); address pins are tried first, then rule-wide ones, each in
//     configuration order. A pinned key need not carry the address in a
//     user ID. CheckPin tells check-config what is wrong with a pin.
//   - SourceKeyring: Options.KeyringDir, public keys (*.asc, *.gpg,
//     *.pgp, *.key; armoured or binary; several per file allowed),
//     rescanned at most every KeyringRescan (mtime, size, inode): changes
//     take effect without a restart. A folder that cannot be read is a
//     temporary failure, never "the keys we had". KeyringProblems lists
//     files that are not readable keys, and files holding secret keys
//     (their public part is used; the secret does not belong there).
//   - SourceWKD: Web Key Directory. The advanced method
//     (https://openpgpkey.<domain>/.well-known/openpgpkey/<domain>/hu/…)
//     when openpgpkey.<domain> exists in DNS, else the direct one
//     (https://<domain>/.well-known/openpgpkey/hu/…); a subdomain that
//     exists but answers 404 or fails is final, as the WKD draft says.
//     HTTPS only, certificate verified by the HTTPClient given, redirects
//     only to the same host over HTTPS (New refuses a client with
//     InsecureSkipVerify), answers up to 1 MiB, the whole
//     lookup bounded by RemoteTimeout. A domain with no address at all
//     has no WKD (no key, not a failure).
//   - SourceOPENPGPKEY: DNS OPENPGPKEY (RFC 7929), only from an answer
//     the resolver validated (AD bit); an unvalidated answer's keys are
//     refused and not cached.
//
// Never used, from any source: revoked keys, expired keys, keys without a
// valid encryption subkey (signing-only, subkey revoked or expired), RSA,
// DSA and ElGamal keys under 2048 bits, and (except pinned keys) keys
// without a valid user ID for the recipient's address (compared in lower
// case). Among several usable keys of one source the newest primary key
// wins (then the newest encryption subkey, then the fingerprint), so the
// choice never depends on file or answer order. Every key not used is in
// Result.Refused with its reason, for "securerelay encrypt lookup".
//
// The first source with a usable key ends the walk. A source that fails
// temporarily (DNS or HTTP trouble, an unreadable keyring folder) does not
// stop it; Result.Temporary is set only when no later source had a key.
// Result{Key: nil, Temporary: nil} means no key anywhere asked: the
// message waits (a key may be published) and finally bounces with "no
// key"; with Temporary set the DSN should say the lookup failed. An
// address that cannot have a key (no domain, an address literal) gives one
// Refused without a Source.
//
// WKD and OPENPGPKEY answers are cached (raw key bytes, judged again at
// each use) in memory and in Options.CacheFile, written at most once a
// minute while it changes and on Close: positive answers for PositiveTTL
// (6 h; an OPENPGPKEY answer no longer than its DNS TTL), negative ones
// for NegativeTTL (30 min), temporary failures for one minute in memory
// only (a WKD server that does not answer at all, or DNS trouble, for
// every address of its domain). Concurrent lookups of one address share
// one fetch.
//
// # Messages
//
// Encrypt streams a spooled message (CRLF) into an RFC 3156
// multipart/encrypted message through github.com/emersion/go-pgpmail: the
// header is read (up to 1 MiB), the body copied through the encrypting
// writer. Memory per message is the header plus fixed buffers, whatever
// the body's size (encrypting a 25 MiB message grows the peak RSS of a
// process by about 5 MiB). The inner part is the original MIME entity: its body byte for
// byte, and the original header fields (without Received, Return-Path,
// MIME-Version, DKIM and ARC signatures) as protected headers, with
// protected-headers="v1" added to its Content-Type (text/plain when it had
// none), as Thunderbird, K-9/FairEmail and others read them. The literal
// data is in text mode (go-pgpmail's choice, canonical CRLF): gpg writes
// it out with LF line ends, sq and rnp as it is.
//
// Outside stay only the fields that delivery, threading and automatic
// replies need before anyone decrypts: Received, Return-Path, Resent-*,
// From, Sender, To, Cc, Date, Message-ID, In-Reply-To, References,
// Auto-Submitted, Precedence, X-Auto-Response-Suppress and MIME-Version,
// unchanged, plus Subject replaced by MessageOptions.Subject ("..."). Not
// outside: the Subject, Reply-To, Content-* fields (attachment names,
// boundaries), X-* fields of the sending software, Bcc, List-*, Keywords,
// Comments, Organization, and of course the body. The outer message is
// 7-bit ASCII but for 8-bit text the original had in the fields kept
// outside (a raw UTF-8 display name in From, To or Cc), copied as it is.
//
// MessageOptions.Signer (LoadSigner: an unprotected secret key file) signs
// inside the encryption, so the recipient sees which organisation sent
// the message.
//
// Errors: ErrMalformed (errors.Is) for a header that cannot be read (a
// permanent failure: bounce); any other error is temporary (spool read,
// output write, a key that expired since the lookup).
//
// # Integration notes
//
// The output differs on every call (a fresh session key), so a DKIM
// signer that reads the message twice must read a stored copy: encrypt
// into a temporary file in state_dir (or memory up to a bound), sign that,
// send that. Encrypt before signing: DKIM must cover the bytes that
// leave.
//
// Options.HTTPClient should be built as MTA-STS's client is: a dialer that
// resolves through the relay's resolver (dnsutil), RootCAs from
// outbound.tls.ca_file (system roots otherwise), its own time-outs.
// Options.Resolver is the relay's dnsutil.Client; Options.DNSSEC the same
// client, set only when dns.dnssec_validating is true. Options.CacheFile
// belongs in state_dir; call Close at shutdown.
package encrypt
