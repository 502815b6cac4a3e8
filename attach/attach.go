// Package attach is the attachment policy: it walks the MIME structure of
// a spooled message as a stream, opens the archives it finds (ZIP, gzip,
// bzip2, tar, nested to a limit), and classifies every file by its
// declared names, its declared type and its first bytes, so that a
// program, a script or a disguised name is refused in the SMTP dialog
// before any content scanner is paid to look at it.
//
// It knows nothing of SMTP: Inspect returns a Verdict, and the inbound
// role turns it into a reply, a log line and a count.
package attach

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path"
	"strconv"
	"strings"
	"time"
)

// Class is what a finding is, by the name config uses for it.
type Class string

// The classes. The first eight are banned by default (DefaultBanned);
// Encrypted, Unopened and Limit have an action of their own in a Policy.
const (
	Executable    Class = "executable"     // PE/MZ, ELF, Mach-O, Java class; .exe, .dll, .scr, .com, .jar, …
	Script        Class = "script"         // .js, .jse, .vbs, .wsf, .ps1, .hta, .bat, .cmd, … and #! files
	Shortcut      Class = "shortcut"       // .lnk (by its header too), .url, .scf
	Installer     Class = "installer"      // .msi (an OLE file with the installer's class ID), .msp, .appx, …
	DiskImage     Class = "disk_image"     // .iso, .img, .vhd, .vhdx (ISO 9660, UDF, VHD, VHDX headers)
	OfficeMacro   Class = "office_macro"   // vbaProject.bin in OOXML, a VBA storage in OLE; .docm, .xlsm, …
	DeceptiveName Class = "deceptive_name" // double extension, direction controls, look-alikes, trailing dot/space
	NameMismatch  Class = "name_mismatch"  // two names for one file (MIME header vs MIME header, ZIP local header vs directory, gzip)
	BannedName    Class = "banned_name"    // a policy's banned_names pattern
	Encrypted     Class = "encrypted"      // an encrypted archive or entry: cannot be checked
	Unopened      Class = "unopened"       // 7z, RAR, CAB, … and damaged archives: recognised, not opened
	Limit         Class = "limit"          // size, entries, ratio, overlap, depth or time limit: a bomb
)

// BannableClasses are the classes a policy's banned list may name.
var BannableClasses = []Class{Executable, Script, Shortcut, Installer, DiskImage, OfficeMacro, DeceptiveName, NameMismatch}

// DefaultBanned is banned when a policy names no list: programs, scripts
// and everything that disguises one.
var DefaultBanned = BannableClasses

// Actions, most severe last.
const (
	Pass     = ""
	Accept   = "accept" // accepted, with a header saying what was found
	Tempfail = "tempfail"
	Reject   = "reject"
)

func severity(a string) int {
	switch a {
	case Accept:
		return 1
	case Tempfail:
		return 2
	case Reject:
		return 3
	}
	return 0
}

// Policy says what is banned and what each finding costs.
type Policy struct {
	Name string
	// Banned classes get Action.
	Banned map[Class]bool
	// BannedNames are path.Match patterns, matched against the lower-case
	// base name of every file (in archives too); a match gets Action.
	BannedNames []string
	// Action for banned classes and names; Encrypted, Unopened and Limits
	// for those classes. "" means nothing is done (the finding passes).
	Action, Encrypted, Unopened, Limits string
}

// DefaultPolicy is the policy with no configuration.
func DefaultPolicy() *Policy {
	p := &Policy{Name: "default", Banned: map[Class]bool{}, Action: Reject, Encrypted: Reject, Unopened: Reject, Limits: Reject}
	for _, c := range DefaultBanned {
		p.Banned[c] = true
	}
	return p
}

func (p *Policy) action(c Class) string {
	switch c {
	case Encrypted:
		return p.Encrypted
	case Unopened:
		return p.Unopened
	case Limit:
		return p.Limits
	case BannedName:
		return p.Action
	}
	if p.Banned[c] {
		return p.Action
	}
	return Pass
}

// Limits keep a hostile message from costing more than they allow.
// Exceeding one is a Limit finding, never an error.
type Limits struct {
	// MaxDepth: archives inside archives (a ZIP in the message is 1).
	MaxDepth int
	// MaxEntries: files in all archives of one message.
	MaxEntries int
	// MaxBytes: bytes decompressed from all archives of one message, and
	// the sum of their declared sizes.
	MaxBytes int64
	// MaxRatio: an entry over 1 MiB that declares more than MaxRatio
	// times its compressed size.
	MaxRatio int
	// Timeout for one message.
	Timeout time.Duration
	// TempDir holds archives larger than 1 MiB while they are read (an
	// unlinked file); "" is the system's.
	TempDir string
}

// DefaultLimits are the limits with no configuration.
func DefaultLimits() Limits {
	return Limits{MaxDepth: 5, MaxEntries: 10000, MaxBytes: 256 << 20, MaxRatio: 200, Timeout: 30 * time.Second}
}

// Finding is one thing found in one file.
type Finding struct {
	Class Class
	// File is the attachment's name as the message declares it ("" for a
	// part without one).
	File string
	// Path is where inside the attachment's archives ("docs/setup.exe",
	// "inner.zip/setup.exe"); "" for the attachment itself.
	Path string
	// Reason says what it is, in words a sender's admin understands.
	Reason string
	// Action is the policy's for this finding.
	Action string
}

// Where names the file for a reply or a header: the attachment, and the
// path inside it, quoted in ASCII (a direction control shows as \u202e).
func (f Finding) Where() string {
	name := "(an unnamed part)"
	if f.File != "" {
		name = strconv.QuoteToASCII(f.File)
	}
	if f.Path != "" {
		return name + ", file " + strconv.QuoteToASCII(f.Path) + " inside it"
	}
	return name
}

// Verdict is the outcome for a message.
type Verdict struct {
	// Action is the most severe of the findings' (Pass when none counts).
	Action string
	// Finding is the first finding with that action: the one a reply
	// names. Zero when Action is Pass.
	Finding Finding
	// Findings that counted, in the order found (at most maxFindings).
	Findings []Finding
	// Files and Entries: how many MIME parts and archive entries were
	// looked at; Bytes: bytes decompressed from archives.
	Files, Entries int
	Bytes          int64
	// Forged counts the HeaderField fields the message came with: a
	// sender may write one, and only ours may reach the recipient.
	Forged int
}

// HeaderField is the header field an Accept verdict adds, one per
// finding.
const HeaderField = "X-Securerelay-Attachment"

const maxFindings = 32

// errStop ends a walk early: the verdict cannot get any worse.
var errStop = errors.New("attach: verdict reached")

// errLimit ends a walk at a limit; the finding is already recorded.
var errLimit = errors.New("attach: limit reached")

// inspector is one message's walk.
type inspector struct {
	ctx     context.Context
	lim     Limits
	pol     *Policy
	v       Verdict
	file    string // the current attachment's name, for findings
	entries int
	bytes   int64
	// declared is the sum of declared sizes of the entries seen.
	declared int64
	heads    [][]byte
	timedOut bool
}

// Inspect walks the message in r (header and body, as spooled) and
// returns the policy's verdict. The error is for our own trouble (a temp
// file that cannot be written); a malformed message or archive is never
// an error: what cannot be parsed is not looked at further, and what
// cannot be opened is a finding.
func Inspect(ctx context.Context, r io.Reader, lim Limits, pol *Policy) (Verdict, error) {
	if pol == nil {
		pol = DefaultPolicy()
	}
	if lim.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, lim.Timeout)
		defer cancel()
	}
	in := &inspector{ctx: ctx, lim: lim, pol: pol}
	err := in.walkMessage(&ctxReader{ctx: ctx, r: r}, 0)
	switch {
	case err == nil, errors.Is(err, errStop), errors.Is(err, errLimit):
	case ctx.Err() != nil:
		// Time depends on the server's load as much as on the
		// message: a refusal would be permanent for a message that
		// may pass when the server is idle, so the time limit defers
		// at most (451); a bomb is caught by the other limits.
		in.timedOut = true
		in.limit("", fmt.Sprintf("checking the attachments took longer than %s; try again later", lim.Timeout))
	default:
		return in.v, err
	}
	in.v.Entries, in.v.Bytes = in.entries, in.bytes
	return in.v, nil
}

// found records a finding; errStop when the verdict is now a reject,
// which no later finding can make worse.
func (in *inspector) found(c Class, pathIn, reason string) error {
	a := in.pol.action(c)
	if a == Pass {
		return nil
	}
	if in.timedOut && a == Reject {
		a = Tempfail
	}
	f := Finding{Class: c, File: in.file, Path: pathIn, Reason: reason, Action: a}
	for _, o := range in.v.Findings {
		if o.Class == c && o.File == f.File && o.Path == pathIn {
			// The same file by name and by content: said once.
			return nil
		}
	}
	if len(in.v.Findings) < maxFindings {
		in.v.Findings = append(in.v.Findings, f)
	}
	if severity(a) > severity(in.v.Action) {
		in.v.Action, in.v.Finding = a, f
	}
	if a == Reject {
		return errStop
	}
	return nil
}

// limit records a Limit finding and returns errLimit (or errStop), which
// ends the walk: past a limit nothing more is read.
func (in *inspector) limit(pathIn, reason string) error {
	if err := in.found(Limit, pathIn, reason); err != nil {
		return err
	}
	return errLimit
}

// nameFindings checks one declared name of a file.
func (in *inspector) nameFindings(pathIn, name string) error {
	for _, f := range classifyName(name) {
		if err := in.found(f.class, pathIn, f.reason); err != nil {
			return err
		}
	}
	if len(in.pol.BannedNames) > 0 {
		base := strings.ToLower(baseName(name))
		// Also as Windows saves it: "report.one." is a .one.
		saved := strings.TrimRight(base, ". \t")
		for _, pat := range in.pol.BannedNames {
			ok, _ := path.Match(pat, base)
			if !ok && saved != base {
				ok, _ = path.Match(pat, saved)
			}
			if ok {
				if err := in.found(BannedName, pathIn, fmt.Sprintf("its name matches the banned pattern %+q", pat)); err != nil {
					return err
				}
				break
			}
		}
	}
	return nil
}

// ctxReader ends a read at the deadline: a stalled walk over a hostile
// archive stops within one read of the time limit.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
