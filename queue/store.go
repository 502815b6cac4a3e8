package queue

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"hash/crc32"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// On-disk layout. Each message is ONE file, spool/<shard>/<id>:
//
//	SRQ1 <envelope-length>\n
//	<envelope JSON>\n
//	<message data, CRLF lines, as it will be sent>
//	\nSRQ-END <data-length %016x> <crc32c of envelope JSON and data %08x>\n
//
// A message whose envelope or header a content hook changed before it was
// committed (Writer.Amend: Authentication-Results on top, a milter's header
// changes, a new sender or added recipients) is not copied into a second
// file; an amend record goes between the data and the trailer instead:
//
//	SRQ2 <envelope-length>\n
//	<envelope JSON>\n
//	<message data as received>
//	\nSRQ-AMEND <envelope-length> <header-length> <body-offset>\n
//	<amended envelope JSON>\n
//	<header>
//	\nSRQ-END <data-length %016x> <amend-length %016x> <crc32c %08x>\n
//
// The message to deliver is then <header> followed by data[body-offset:]
// (the header replaces the data's first body-offset octets, which is how a
// prepended field, body-offset 0, and a rewritten header section, up to
// the empty line, are both said), under the amended envelope; the queue ID
// stays. The CRC covers the envelope JSON, the data and the whole amend
// record, so a damaged amend record is a damaged file. "SRQ2" is written
// over "SRQ1" by Amend, before the commit's fsync: the magic says which
// trailer to expect, so a file is never read as the other kind, a file
// without an amend record stays byte for byte what earlier versions write
// and read (a downgrade reads them; it quarantines, never deletes, an
// SRQ2 file), and SRQ1 files of earlier versions are read as before.
//
// Why one file and no rename: on ext4 the cost of a spool is in creating,
// renaming and unlinking directory entries and in directory lock contention,
// not in fsync (0.14 ms on the reference machine). Postfix needs one file per
// message, maddy three. We write the final name directly (O_EXCL) and make
// completeness self-describing instead: a file whose trailer is missing,
// whose lengths do not add up or whose CRC does not match was never
// acknowledged (the 250 is sent only after fsync of the file and of its
// directory), so recovery may discard it. The CRC guards against the case
// where a crash during writeback persisted the trailer but not an earlier
// block; it covers the envelope too, so a damaged recipient address is
// caught as well, and because the envelope holds the queue ID and arrival
// time, message content cannot carry a trailer that would validate a
// truncated copy.
//
// Delivery progress lives in an optional sidecar spool/<shard>/<id>.st,
// created only when a message is not fully delivered at the first attempt.
// It is appended without fsync: losing it can only cause a recipient to be
// tried again (a duplicate), never a loss, which is the at-least-once
// contract.
//
// shards spreads the files over directories so that concurrent creates and
// unlinks do not all queue on one directory's inode lock, and so that one
// directory fsync (group-committed, see dirSyncer) covers many messages.
const (
	shards      = 16
	magic       = "SRQ1 "
	magic2      = "SRQ2 "
	trailerFmt  = "\nSRQ-END %016x %08x\n"
	trailerLen  = 1 + 8 + 16 + 1 + 8 + 1
	trailer2Fmt = "\nSRQ-END %016x %016x %08x\n"
	trailer2Len = 1 + 8 + 16 + 1 + 16 + 1 + 8 + 1
	amendFmt    = "\nSRQ-AMEND %d %d %d\n"
	// maxAmendHeader bounds an amend record's header; smtpd's are below
	// dkim.MaxHeaderBytes (1 MiB).
	maxAmendHeader = 8 << 20
	statusExt      = ".st"
	brokenDir      = "quarantine"
	holdDir        = "hold"
	maxEnvelope    = 1 << 20
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// bufPool recycles the writers' buffers: a fresh 32 KiB per message was a
// tenth of the spool's CPU time in garbage.
var bufPool = sync.Pool{New: func() any { return bufio.NewWriterSize(nil, 32<<10) }}

// releaseBuf returns w's buffer to the pool once the file is closed.
func (w *Writer) releaseBuf() {
	if w.bw != nil {
		w.bw.Reset(nil)
		bufPool.Put(w.bw)
		w.bw = nil
	}
}

// Envelope is what the queue keeps about a message besides its data.
type Envelope struct {
	// From is the envelope sender; "" is the null sender <>.
	From string `json:"from"`
	// To lists the envelope recipients in the order received.
	To []string `json:"to"`
	// Origin says where the message came from: OriginInbound (MX; never
	// bounced), OriginOutbound (submission/smarthost) or OriginLocal
	// (generated here, e.g. a DSN).
	Origin string `json:"origin"`
	// Listener is the name of the listener that accepted the message.
	Listener string `json:"listener,omitempty"`
	// Client describes the sending client for logs ("helo [ip]").
	Client string `json:"client,omitempty"`
	// AuthUser is the SMTP AUTH identity, if any.
	AuthUser string `json:"auth_user,omitempty"`
	// Received is when the message was accepted; max_age counts from it.
	Received time.Time `json:"received"`
	// RequireTLS: the message arrived with REQUIRETLS (RFC 8689); it
	// leaves only over verified TLS, to next hops that offer REQUIRETLS.
	RequireTLS bool `json:"requiretls,omitempty"`
	// SMTPUTF8: the message arrived with SMTPUTF8 (RFC 6531) or has an
	// internationalised envelope address; it leaves with SMTPUTF8 to a
	// next hop that offers it, else downgraded or returned.
	SMTPUTF8 bool `json:"smtputf8,omitempty"`
	// Body is MAIL's BODY= parameter (RFC 6152): "7BIT", "8BITMIME", or
	// "" when the client declared nothing. What the data really holds is
	// Delivery.Content.
	Body string `json:"body,omitempty"`
	// Ret and EnvID are MAIL's DSN parameters (RFC 3461 §4.3, §4.4):
	// "FULL" or "HDRS", and the envelope identifier, xtext-decoded; ""
	// when not given.
	Ret   string `json:"ret,omitempty"`
	EnvID string `json:"envid,omitempty"`
	// RcptDSN holds each recipient's DSN parameters by its index in To;
	// it is shorter than To (nil in files written before DSN support)
	// where a recipient had none.
	RcptDSN []RcptDSN `json:"rcpt_dsn,omitempty"`
}

// RcptDSN are the DSN parameters (RFC 3461) of one RCPT.
type RcptDSN struct {
	// Notify is NOTIFY= (§4.1): "NEVER", or SUCCESS, FAILURE and DELAY
	// separated by commas; "" when not given.
	Notify string `json:"notify,omitempty"`
	// ORCPT is the original recipient (§4.2): its address type, ";" and
	// the xtext-decoded address ("rfc822;Bob@example.org"); "" when not
	// given.
	ORCPT string `json:"orcpt,omitempty"`
}

// DSN kinds a recipient may ask for (NOTIFY, RFC 3461 §4.1).
const (
	NotifySuccess = "SUCCESS"
	NotifyFailure = "FAILURE"
	NotifyDelay   = "DELAY"
)

// Wants reports whether the recipient asked for a DSN of this kind.
// Without NOTIFY the relay sends failures and, when delay warnings are
// on, delays (RFC 3461 §4.1 leaves it to the MTA; Postfix does the same);
// NOTIFY=NEVER asks for nothing at all.
func (r RcptDSN) Wants(kind string) bool {
	if r.Notify == "" {
		return kind == NotifyFailure || kind == NotifyDelay
	}
	for _, k := range strings.Split(r.Notify, ",") {
		if strings.EqualFold(strings.TrimSpace(k), kind) {
			return true
		}
	}
	return false
}

// DSN returns the DSN parameters of recipient i (none when it had none).
func (e *Envelope) DSN(i int) RcptDSN {
	if i >= 0 && i < len(e.RcptDSN) {
		return e.RcptDSN[i]
	}
	return RcptDSN{}
}

// Content is what the queue knows of a message's octets.
type Content uint8

const (
	// ContentUnknown: not looked at (recovered from the spool after a
	// restart, or spooled by a caller that did not say).
	ContentUnknown Content = iota
	// Content7Bit: no octet above 0x7F.
	Content7Bit
	// Content8Bit: some octet above 0x7F.
	Content8Bit
)

// Origins of a message.
const (
	OriginInbound  = "inbound"
	OriginOutbound = "outbound"
	OriginLocal    = "local"
)

var idCounter atomic.Uint32

// newID returns a queue ID: 11 hex digits of microseconds since the epoch and
// 5 of a counter, upper case like Postfix's. It sorts by arrival, stays
// unique across restarts (the clock moves on), and its last digit (from the
// counter) spreads consecutive messages over the shards.
func newID(now time.Time) string {
	c := idCounter.Add(1)
	return fmt.Sprintf("%011X%05X", uint64(now.UnixMicro())&0xFFFFFFFFFFF, c&0xFFFFF)
}

func shardOf(id string) string {
	return id[len(id)-1:]
}

// validID reports whether name is a queue ID (16 upper-case hex digits)
// that belongs in shard directory n.
func validID(name string, n int) bool {
	if len(name) != 16 || shardOf(name) != fmt.Sprintf("%X", n) {
		return false
	}
	for _, c := range name {
		if (c < '0' || c > '9') && (c < 'A' || c > 'F') {
			return false
		}
	}
	return true
}

// dirSyncer group-commits fsyncs of one directory: every caller needs a
// directory fsync that *started* after its own file was created; one fsync
// serves everybody who was waiting when it started.
type dirSyncer struct {
	path string
	// dir stays open: opening the directory for every fsync would cost an
	// openat and a close per message.
	dir *os.File

	mu        sync.Mutex
	cond      *sync.Cond
	started   uint64
	completed uint64
	running   bool
	// results of the last len(results) fsyncs, by sequence number modulo
	// the ring size; a waiter whose entry was already overwritten (it
	// slept through 256 fsyncs) cannot know its result and reports
	// failure: a needless 451 is safe, a false 250 is not.
	results [256]syncResult
}

type syncResult struct {
	seq uint64
	err error
}

func newDirSyncer(path string) (*dirSyncer, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	d := &dirSyncer{path: path, dir: f}
	d.cond = sync.NewCond(&d.mu)
	return d, nil
}

func (d *dirSyncer) sync() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	need := d.started + 1
	for d.completed < need {
		if d.running {
			d.cond.Wait()
			continue
		}
		d.running = true
		d.started++
		n := d.started
		d.mu.Unlock()
		err := d.dir.Sync()
		d.mu.Lock()
		d.running = false
		d.completed = n
		d.results[n%uint64(len(d.results))] = syncResult{seq: n, err: err}
		d.cond.Broadcast()
	}
	r := d.results[need%uint64(len(d.results))]
	if r.seq != need {
		return errors.New("directory fsync result lost (too many fsyncs while waiting)")
	}
	return r.err
}

func syncDir(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// store owns the spool directory.
type store struct {
	dir   string
	dsync [shards]*dirSyncer
	pool  *pool // nil: no preallocation
}

func openStore(dir string) (*store, error) {
	s := &store{dir: dir}
	for i := 0; i < shards; i++ {
		p := filepath.Join(dir, fmt.Sprintf("%X", i))
		if err := os.MkdirAll(p, 0o700); err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		ds, err := newDirSyncer(p)
		if err != nil {
			return nil, fmt.Errorf("spool: %w", err)
		}
		s.dsync[i] = ds
	}
	if err := os.MkdirAll(filepath.Join(dir, holdDir), 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	if err := os.MkdirAll(filepath.Join(dir, brokenDir), 0o700); err != nil {
		return nil, fmt.Errorf("spool: %w", err)
	}
	// The shard directories themselves must survive a crash.
	if err := syncDir(dir); err != nil {
		return nil, fmt.Errorf("spool: fsync %s: %w", dir, err)
	}
	return s, nil
}

func (s *store) path(id string) string {
	return filepath.Join(s.dir, shardOf(id), id)
}

func (s *store) syncer(id string) *dirSyncer {
	n, _ := strconv.ParseUint(shardOf(id), 16, 8)
	return s.dsync[n]
}

// Writer streams one message into the spool. Nothing written through it is
// durable, nor will be delivered, until Commit returns nil.
type Writer struct {
	q      *Queue
	id     string
	env    Envelope
	f      *os.File
	bw     *bufio.Writer
	off    int64
	pooled bool
	crc    hash.Hash32
	n      int64
	err    error
	closed bool
	// content is what the writer was told of the data (SetContent).
	content Content
	// amend is where Amend put the replacement header (amend.amended),
	// amendLen the length of its record and hdr8 whether that header has
	// 8-bit octets.
	amend    extent
	amendLen int64
	hdr8     bool
}

// ID is the queue ID the message will have.
func (w *Writer) ID() string { return w.id }

// Envelope is the envelope the message is spooled with.
func (w *Writer) Envelope() Envelope { return w.env }

// Write appends message data.
func (w *Writer) Write(p []byte) (int, error) {
	if w.closed {
		return 0, errors.New("queue: write after Commit or Abort")
	}
	if w.amend.amended {
		return 0, errors.New("queue: write after Amend")
	}
	if w.err != nil {
		return 0, w.err
	}
	n, err := w.bw.Write(p)
	w.crc.Write(p[:n])
	w.n += int64(n)
	if err != nil {
		w.err = fmt.Errorf("spool write %s: %w", w.id, err)
	}
	return n, w.err
}

// SetContent records what the caller saw of the data while writing it
// (smtpd watches for 8-bit octets as it spools): delivery then knows
// without reading the message again. It is kept in memory only, since the
// envelope is on disk before the data; after a restart delivery looks
// again where it matters.
// A header given to Amend is looked at by the writer itself.
func (w *Writer) SetContent(c Content) { w.content = c }

// contentNow is SetContent's word, raised to 8-bit when an amended header
// has 8-bit octets: claiming 8-bit costs a conversion at worst, claiming
// 7-bit wrongly would send 8-bit octets to a next hop that cannot take
// them.
func (w *Writer) contentNow() Content {
	if w.hdr8 && w.content == Content7Bit {
		return Content8Bit
	}
	return w.content
}

// Size is the number of octets of the message as it will be delivered:
// the data written so far, or after Amend the amended message.
func (w *Writer) Size() int64 { return w.extent().size() }

// extent is where the message is in the file, as far as it is written.
func (w *Writer) extent() extent {
	e := w.amend
	e.dataOff, e.dataLen = w.off, w.n
	return e
}

// Amend changes the message without copying it to a new file: env, if not
// nil, replaces the envelope (a new sender, added recipients; the queue ID
// stays), and header replaces the first bodyOff octets of the data written
// (bodyOff 0: header goes on top; bodyOff at the end of the header section:
// a rewritten header). Readers of the committed message see header +
// data[bodyOff:] under the new envelope. Call it at most once, after the
// last Write and before Commit; an error leaves the writer failed (Commit
// then fails too), so a half-written amend is never acknowledged.
func (w *Writer) Amend(env *Envelope, header []byte, bodyOff int64) error {
	if w.closed {
		return errors.New("queue: Amend after Commit or Abort")
	}
	if w.err != nil {
		return w.err
	}
	if w.amend.amended {
		return errors.New("queue: Amend called twice")
	}
	if bodyOff < 0 || bodyOff > w.n {
		return fmt.Errorf("queue: Amend: body offset %d outside the data (%d octets)", bodyOff, w.n)
	}
	if len(header) > maxAmendHeader {
		return fmt.Errorf("queue: Amend: header of %d octets exceeds %d", len(header), maxAmendHeader)
	}
	e := w.env
	if env != nil {
		e = *env
		if len(e.To) == 0 {
			return errors.New("queue: Amend: message without recipients")
		}
		if e.Received.IsZero() {
			e.Received = w.env.Received
		}
	}
	ej, err := json.Marshal(&e)
	if err == nil && len(ej) > maxEnvelope {
		err = fmt.Errorf("envelope of %d octets exceeds %d", len(ej), maxEnvelope)
	}
	if err != nil {
		return fmt.Errorf("queue: Amend: %w", err)
	}
	// The magic goes in place of SRQ1 only once the header line is in the
	// file, or flushing the buffer would write SRQ1 over it again. No
	// fsync of its own: Commit's covers it, and a file whose new magic or
	// amend record did not reach the disk fails its own trailer's checks.
	if err := w.bw.Flush(); err != nil {
		w.err = fmt.Errorf("spool write %s: %w", w.id, err)
		return w.err
	}
	if _, err := w.f.WriteAt([]byte(magic2), 0); err != nil {
		w.err = fmt.Errorf("spool write %s: %w", w.id, err)
		return w.err
	}
	rec := fmt.Sprintf(amendFmt, len(ej), len(header), bodyOff)
	for _, p := range [][]byte{[]byte(rec), ej, {'\n'}, header} {
		n, err := w.bw.Write(p)
		w.crc.Write(p[:n])
		if err != nil {
			w.err = fmt.Errorf("spool write %s: %w", w.id, err)
			return w.err
		}
	}
	w.amendLen = int64(len(rec) + len(ej) + 1 + len(header))
	w.amend = extent{amended: true, hdrOff: w.off + w.n + w.amendLen - int64(len(header)), hdrLen: int64(len(header)), bodyOff: bodyOff}
	w.env = e
	w.hdr8 = has8Bit(header)
	return nil
}

func has8Bit(b []byte) bool {
	for _, c := range b {
		if c >= 0x80 {
			return true
		}
	}
	return false
}

// Abort discards the message. It is safe to call after Commit (then it does
// nothing) and more than once.
func (w *Writer) Abort() {
	if w.closed {
		return
	}
	w.closed = true
	w.releaseBuf()
	w.f.Close()
	os.Remove(w.f.Name())
}

func (w *Writer) finish() error {
	if w.err != nil {
		return w.err
	}
	var err error
	if w.amend.amended {
		_, err = fmt.Fprintf(w.bw, trailer2Fmt, w.n, w.amendLen, w.crc.Sum32())
	} else {
		_, err = fmt.Fprintf(w.bw, trailerFmt, w.n, w.crc.Sum32())
	}
	if err != nil {
		return err
	}
	if err := w.bw.Flush(); err != nil {
		return err
	}
	// The acknowledgement point: the file's data, then its directory
	// entry (already durable for a file from the pool).
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("fsync: %w", err)
	}
	if err := w.f.Close(); err != nil {
		return err
	}
	if w.pooled {
		return nil
	}
	if err := w.q.store.syncer(w.id).sync(); err != nil {
		return fmt.Errorf("fsync spool directory: %w", err)
	}
	return nil
}

// create starts a spool file and returns it with the offset of the data
// and the envelope JSON (the checksum starts with it).
func (s *store) create(id string, env *Envelope) (*os.File, *bufio.Writer, int64, []byte, error) {
	ej, err := json.Marshal(env)
	if err != nil {
		return nil, nil, 0, nil, err
	}
	f, err := os.OpenFile(s.path(id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return nil, nil, 0, nil, err
	}
	bw, off := startFile(f, ej)
	return f, bw, off, ej, nil
}

// startFile writes the header and envelope into a new, empty spool file.
func startFile(f *os.File, ej []byte) (*bufio.Writer, int64) {
	bw := bufPool.Get().(*bufio.Writer)
	bw.Reset(f)
	hdr := fmt.Sprintf("%s%d\n", magic, len(ej))
	bw.WriteString(hdr)
	bw.Write(ej)
	bw.WriteByte('\n')
	return bw, int64(len(hdr) + len(ej) + 1)
}

// extent says where a message's octets are in its spool file: the data as
// received and, in an amended file, the header that replaces its first
// bodyOff octets.
type extent struct {
	dataOff, dataLen int64
	amended          bool
	hdrOff, hdrLen   int64
	bodyOff          int64
}

// size is the length of the message as delivered.
func (e extent) size() int64 {
	if !e.amended {
		return e.dataLen
	}
	return e.hdrLen + e.dataLen - e.bodyOff
}

// reader returns the message as delivered, from its spool file f.
func (e extent) reader(f io.ReaderAt) io.Reader {
	data := io.NewSectionReader(f, e.dataOff, e.dataLen)
	if !e.amended {
		return data
	}
	return io.MultiReader(io.NewSectionReader(f, e.hdrOff, e.hdrLen),
		io.NewSectionReader(f, e.dataOff+e.bodyOff, e.dataLen-e.bodyOff))
}

// stored is a message as found in the spool.
type stored struct {
	env Envelope
	extent
	content Content
}

var errIncomplete = errors.New("incomplete or damaged spool file")

// readStored checks a spool file and returns its envelope and data extent.
func readStored(path string) (*stored, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	br := bufio.NewReader(f)
	line, err := br.ReadString('\n')
	if err != nil && err != io.EOF {
		return nil, err // an I/O error says nothing about the file
	}
	if err != nil || len(line) < len(magic)+2 || (line[:len(magic)] != magic && line[:len(magic2)] != magic2) {
		return nil, fmt.Errorf("%w: bad header", errIncomplete)
	}
	amended := line[:len(magic2)] == magic2
	elen, err := strconv.Atoi(line[len(magic) : len(line)-1])
	if err != nil || elen <= 0 || elen > maxEnvelope {
		return nil, fmt.Errorf("%w: bad envelope length", errIncomplete)
	}
	ej := make([]byte, elen+1)
	if _, err := io.ReadFull(br, ej); err != nil || ej[elen] != '\n' {
		if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF {
			return nil, err
		}
		return nil, fmt.Errorf("%w: short envelope", errIncomplete)
	}
	st := &stored{}
	st.dataOff = int64(len(line) + elen + 1)
	if err := json.Unmarshal(ej[:elen], &st.env); err != nil {
		return nil, fmt.Errorf("%w: envelope: %v", errIncomplete, err)
	}
	tlen := int64(trailerLen)
	if amended {
		tlen = trailer2Len
	}
	if fi.Size() < st.dataOff+tlen {
		return nil, fmt.Errorf("%w: no trailer", errIncomplete)
	}
	tr := make([]byte, tlen)
	if _, err := f.ReadAt(tr, fi.Size()-tlen); err != nil {
		return nil, err
	}
	var dlen, alen int64
	var sum uint32
	if amended {
		_, err = fmt.Sscanf(string(tr), trailer2Fmt, &dlen, &alen, &sum)
	} else {
		_, err = fmt.Sscanf(string(tr), trailerFmt, &dlen, &sum)
	}
	if err != nil {
		return nil, fmt.Errorf("%w: no trailer", errIncomplete)
	}
	// Each length alone within the file, so that their sum cannot wrap.
	if dlen < 0 || alen < 0 || dlen > fi.Size() || alen > fi.Size() || st.dataOff+dlen+alen+tlen != fi.Size() {
		return nil, fmt.Errorf("%w: length mismatch", errIncomplete)
	}
	st.dataLen = dlen
	h := crc32.New(castagnoli)
	h.Write(ej[:elen])
	if _, err := io.Copy(h, io.NewSectionReader(f, st.dataOff, dlen+alen)); err != nil {
		return nil, err
	}
	if h.Sum32() != sum {
		return nil, fmt.Errorf("%w: checksum mismatch", errIncomplete)
	}
	if amended {
		if err := readAmend(f, st, alen); err != nil {
			return nil, err
		}
	}
	if len(st.env.To) == 0 {
		return nil, fmt.Errorf("%w: no recipients", errIncomplete)
	}
	return st, nil
}

// readAmend reads the amend record of alen octets after st's data into
// st: its envelope replaces st.env, its header extent is recorded. The
// record's checksum has been checked by the caller (readEnvelope does
// without).
func readAmend(f io.ReaderAt, st *stored, alen int64) error {
	off := st.dataOff + st.dataLen
	if alen < 2 {
		return fmt.Errorf("%w: short amend record", errIncomplete)
	}
	// The record line is short: three decimal numbers.
	head := make([]byte, min(alen, 80))
	if _, err := f.ReadAt(head, off); err != nil {
		if err == io.EOF {
			return fmt.Errorf("%w: short amend record", errIncomplete)
		}
		return err
	}
	nl := bytes.IndexByte(head[1:], '\n')
	if nl < 0 {
		return fmt.Errorf("%w: bad amend record", errIncomplete)
	}
	recLine := string(head[:nl+2])
	var elen, hlen, bodyOff int64
	// Printed back: the record's spelling is exactly what Amend writes,
	// or it was not written by Amend.
	if _, err := fmt.Sscanf(recLine, amendFmt, &elen, &hlen, &bodyOff); err != nil ||
		fmt.Sprintf(amendFmt, elen, hlen, bodyOff) != recLine {
		return fmt.Errorf("%w: bad amend record", errIncomplete)
	}
	if elen <= 0 || elen > maxEnvelope || hlen < 0 || hlen > maxAmendHeader || bodyOff < 0 || bodyOff > st.dataLen ||
		int64(len(recLine))+elen+1+hlen != alen {
		return fmt.Errorf("%w: amend record lengths", errIncomplete)
	}
	ej := make([]byte, elen+1)
	if _, err := f.ReadAt(ej, off+int64(len(recLine))); err != nil {
		if err == io.EOF {
			return fmt.Errorf("%w: short amend record", errIncomplete)
		}
		return err
	}
	if ej[elen] != '\n' {
		return fmt.Errorf("%w: bad amend record", errIncomplete)
	}
	var env Envelope
	if err := json.Unmarshal(ej[:elen], &env); err != nil {
		return fmt.Errorf("%w: amended envelope: %v", errIncomplete, err)
	}
	st.env = env
	st.amended = true
	st.hdrOff, st.hdrLen, st.bodyOff = off+alen-hlen, hlen, bodyOff
	return nil
}

// status is one line of the sidecar.
type status struct {
	// ID names the message: on a filesystem that can show stale blocks
	// after a crash, a line from another (deleted) message's sidecar must
	// not count as this one's progress.
	ID string `json:"id"`
	// Done lists recipient indexes that need no more attempts (delivered
	// or failed permanently and reported).
	Done     []int     `json:"done,omitempty"`
	Attempts int       `json:"attempts"`
	Next     time.Time `json:"next"`
	// Held: some recipient failed permanently and no DSN could be sent
	// (inbound mail, null sender): keep the message in hold/ at the end
	// instead of removing it.
	Held bool `json:"held,omitempty"`
	// TLSPolicy is the last attempt's TLS decision and outcome, where one
	// was made and not met: what an admin asks first about a deferred
	// message for a partner with mandatory TLS.
	TLSPolicy string `json:"tls_policy,omitempty"`
	// Warned lists recipient indexes whose sender got a delay warning
	// (delay_warning_time), so that each gets one.
	Warned []int `json:"warned,omitempty"`
	// Rcpts are the results of this line's attempt (or operator action)
	// per recipient: what queue list and show report, and which
	// recipients a held message still owes (state "held"; they are not
	// in Done, so that a release delivers to them and only them).
	Rcpts []rcptNote `json:"rcpts,omitempty"`
	// Released: an operator released the message from hold/; every
	// recipient held until now is owed a delivery again.
	Released bool `json:"released,omitempty"`
}

// rcptNote is the last word about one recipient.
type rcptNote struct {
	I int `json:"i"`
	// State: "sent", "deferred", "bounced", "held" (owed, not being
	// tried: failed with no DSN possible, or held by an operator),
	// "released" (held before, owed and tried again).
	State string    `json:"state"`
	Code  string    `json:"code,omitempty"`
	Reply string    `json:"reply,omitempty"`
	At    time.Time `json:"at"`
}

// Recipient states in the sidecar and in Info.
const (
	RcptPending  = "pending"
	RcptSent     = "sent"
	RcptDeferred = "deferred"
	RcptBounced  = "bounced"
	RcptHeld     = "held"
	RcptReleased = "released"
)

func jsonLine(st status) ([]byte, error) {
	b, err := json.Marshal(st)
	return append(b, '\n'), err
}

func (s *store) appendStatus(id string, st status) error {
	st.ID = id
	b, err := jsonLine(st)
	if err != nil {
		return err
	}
	f, err := os.OpenFile(s.path(id)+statusExt, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// progress is a message's delivery state as its sidecar records it.
type progress struct {
	done      map[int]bool
	attempts  int
	next      time.Time
	held      bool
	tlsPolicy string
	warned    map[int]bool
	notes     map[int]rcptNote
}

// readStatus folds the sidecar's lines for message id; a torn last line
// (crash while appending) and lines of another message are ignored.
func readStatus(path, id string) progress {
	p := progress{done: map[int]bool{}, warned: map[int]bool{}, notes: map[int]rcptNote{}}
	b, err := os.ReadFile(path)
	if err != nil {
		return p
	}
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		var st status
		if len(line) == 0 || json.Unmarshal(line, &st) != nil || st.ID != id {
			continue
		}
		for _, i := range st.Done {
			p.done[i] = true
		}
		for _, i := range st.Warned {
			p.warned[i] = true
		}
		if st.Released {
			for i, n := range p.notes {
				if n.State == RcptHeld {
					n.State = RcptReleased
					p.notes[i] = n
				}
			}
			p.held = false
		}
		for _, n := range st.Rcpts {
			p.notes[n.I] = n
		}
		if st.Attempts != p.attempts {
			// A new attempt's TLS outcome (or none); an operator's line
			// (hold, release) records no attempt and keeps the last.
			p.tlsPolicy = st.TLSPolicy
		}
		p.attempts, p.next = st.Attempts, st.Next
		p.held = p.held || st.Held
	}
	return p
}

func (s *store) remove(id string, sidecar bool) error {
	p := s.path(id)
	if sidecar {
		os.Remove(p + statusExt)
	}
	return os.Remove(p)
}

// hold moves a finished message that could not be delivered to everyone,
// and could not be reported either, to hold/, for the admin (the log names
// each failed recipient and why); hold.go bounds how long it stays.
func (s *store) hold(id string) error {
	src := s.path(id)
	dst := filepath.Join(s.dir, holdDir, id)
	os.Rename(src+statusExt, dst+statusExt)
	return os.Rename(src, dst)
}

// quarantine moves dir/name (and its sidecar) to quarantine/.
// Its modification time becomes now: quarantine_max_age counts from here.
func (s *store) quarantine(dir, name string, now time.Time) error {
	src := filepath.Join(dir, name)
	dst := filepath.Join(s.dir, brokenDir, name)
	if os.Rename(src+statusExt, dst+statusExt) == nil {
		os.Chtimes(dst+statusExt, now, now)
	}
	if err := os.Rename(src, dst); err != nil {
		return err
	}
	os.Chtimes(dst, now, now)
	return nil
}

// Reader returns the data written so far, for content checks before
// Commit; after Amend, the amended message.
func (w *Writer) Reader() (io.Reader, error) {
	if w.closed {
		return nil, errors.New("queue: read after Commit or Abort")
	}
	if w.err != nil {
		return nil, w.err
	}
	if err := w.bw.Flush(); err != nil {
		w.err = err
		return nil, err
	}
	return w.extent().reader(w.f), nil
}

func (s *store) close() {
	if s.pool != nil {
		s.pool.close()
	}
	for _, d := range s.dsync {
		if d != nil {
			d.dir.Close()
		}
	}
}
