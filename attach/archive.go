package attach

import (
	"archive/tar"
	"archive/zip"
	"bufio"
	"bytes"
	"compress/bzip2"
	"compress/flate"
	"compress/gzip"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
)

var (
	errOverBudget = errors.New("attach: over the byte limit")
	errRatio      = errors.New("attach: over the compression ratio")
)

// ratioFloor: smaller entries may compress as well as they like (a page
// of spaces does); a bomb needs size.
const ratioFloor = 1 << 20

func join(dir, name string) string {
	if dir == "" {
		return name
	}
	return dir + "/" + name
}

func mb(n int64) string {
	if n < 10<<20 {
		return fmt.Sprintf("%d KiB", n>>10)
	}
	return fmt.Sprintf("%d MiB", n>>20)
}

// budget counts every byte decompressed from an archive against the
// message's limit, and checks the deadline on the way: the loops that
// decompress read from memory or a temp file, not from the network.
type budget struct {
	in *inspector
	r  io.Reader
}

func (b *budget) Read(p []byte) (int, error) {
	if err := b.in.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := b.r.Read(p)
	b.in.bytes += int64(n)
	if b.in.lim.MaxBytes > 0 && b.in.bytes > b.in.lim.MaxBytes {
		return n, errOverBudget
	}
	return n, err
}

func (in *inspector) budget(r io.Reader) io.Reader { return &budget{in: in, r: r} }

// counter counts what a decompressor consumed. It is an io.ByteReader,
// so that flate takes exactly what it needs and the count says where a
// deflate stream ended.
type counter struct {
	r *bufio.Reader
	n int64
}

func (c *counter) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	return n, err
}

func (c *counter) ReadByte() (byte, error) {
	b, err := c.r.ReadByte()
	if err == nil {
		c.n++
	}
	return b, err
}

// ratioCheck stops a compressed stream whose output outgrows its input
// by more than the ratio limit (a gzip bomb), as soon as it does.
type ratioCheck struct {
	in  *inspector
	src *counter
	r   io.Reader
	out int64
}

func (rc *ratioCheck) Read(p []byte) (int, error) {
	n, err := rc.r.Read(p)
	rc.out += int64(n)
	if m := int64(rc.in.lim.MaxRatio); m > 0 && rc.out > ratioFloor && rc.out > m*max(rc.src.n, 1) {
		return n, errRatio
	}
	return n, err
}

// readErr sorts the errors of reading a file: a limit becomes a finding,
// our own trouble and the deadline end the walk, and anything else (a
// damaged stream) ends only the reading of this file.
func (in *inspector) readErr(pathIn string, err error) error {
	var te *tempError
	switch {
	case err == nil:
		return nil
	case errors.Is(err, errStop), errors.Is(err, errLimit), errors.As(err, &te):
		return err
	case errors.Is(err, errOverBudget):
		return in.limit(pathIn, fmt.Sprintf("its archives expand to more than %s, the limit (a zip bomb?)", mb(in.lim.MaxBytes)))
	case errors.Is(err, errRatio):
		return in.limit(pathIn, fmt.Sprintf("it expands more than %d times its compressed size, the limit (a compression bomb?)", in.lim.MaxRatio))
	case in.ctx.Err() != nil:
		return in.ctx.Err()
	}
	return nil
}

// corrupt reports a decompressor's "this data is damaged".
func corrupt(err error) bool {
	var fe flate.CorruptInputError
	var be bzip2.StructuralError
	return errors.As(err, &fe) || errors.As(err, &be) || errors.Is(err, zip.ErrFormat) || errors.Is(err, zip.ErrChecksum) ||
		errors.Is(err, zip.ErrAlgorithm) || errors.Is(err, gzip.ErrHeader) || errors.Is(err, gzip.ErrChecksum)
}

// deeper refuses to open an archive whose entries would be nested
// deeper than the limit.
func (in *inspector) deeper(pathIn string, depth int) error {
	if in.lim.MaxDepth > 0 && depth+1 > in.lim.MaxDepth {
		return in.limit(pathIn, fmt.Sprintf("it holds archives nested deeper than %d levels, the limit", in.lim.MaxDepth))
	}
	return nil
}

// entry counts one archive entry against the limit.
func (in *inspector) entry(pathIn string) error {
	in.entries++
	if in.lim.MaxEntries > 0 && in.entries > in.lim.MaxEntries {
		return in.limit(pathIn, fmt.Sprintf("its archives hold more than %d files, the limit", in.lim.MaxEntries))
	}
	return nil
}

// head is the buffer for the first bytes of a file at depth: one per
// level, reused from entry to entry (a ZIP of 1,000 files would
// otherwise allocate 36 MiB), and never shared by a file and the
// entries inside it.
func (in *inspector) head(depth int) []byte {
	for len(in.heads) <= depth {
		in.heads = append(in.heads, make([]byte, sniffLen))
	}
	return in.heads[depth]
}

// content looks at one file: an attachment (depth 0) or an archive
// entry (depth 1 and more). It reads only as much of r as it needs: the
// first bytes, unless the file is an archive or an OLE file. The error
// is errStop, errLimit, a tempError or the deadline's; a damaged file is
// not an error.
func (in *inspector) content(pathIn string, r io.Reader, depth int) error {
	head := in.head(depth)
	n, err := io.ReadFull(r, head)
	head = head[:n]
	damaged := err != nil && err != io.EOF && err != io.ErrUnexpectedEOF
	s := sniff(head)
	name := baseName(pathIn)
	if pathIn == "" {
		name = baseName(in.file)
	}
	if s.shebang && extension(strings.TrimRight(name, ". ")) != "" {
		// Windows, macOS and Linux desktops open a file with an
		// extension by its extension, which the name check judges; a
		// "#!" line makes a script only of a file without one.
		s.class = ""
	}
	if s.class != "" {
		// Also when the file breaks off after its first bytes: an
		// extraction tool keeps what it could read.
		if err := in.found(s.class, pathIn, "it is "+s.what); err != nil {
			return err
		}
	}
	if damaged {
		if err := in.readErr(pathIn, err); err != nil {
			return err
		}
		if pathIn != "" && corrupt(err) {
			// What could not be unpacked is not known; an extraction
			// tool may still write the file.
			return in.found(Unopened, pathIn, "it is damaged (its data cannot be unpacked), so its content cannot be checked")
		}
		return nil
	}
	if s.kind == kindPlain && s.class == "" && isTar(head) {
		// A tar file without the ustar mark (the old V7 format),
		// which 7-Zip and Windows open as well.
		s.kind = kindTar
	}
	rest := io.MultiReader(bytes.NewReader(head), r)
	if s.kind == kindPlain && s.class == "" && strings.EqualFold(extension(name), "zip") {
		// Named .zip but not starting like one: a ZIP file behind
		// other data (a self-extractor's stub, junk, another file),
		// which 7-Zip, WinRAR and Windows open by the directory at
		// its end.
		return in.prefixedZip(rest, pathIn, depth)
	}
	switch s.kind {
	case kindZip:
		if err := in.deeper(pathIn, depth); err != nil {
			return err
		}
		sp, err := spill(rest, in.lim.TempDir)
		if err != nil {
			return in.readErr(pathIn, err)
		}
		defer sp.Close()
		return in.walkZip(sp, pathIn, depth+1)
	case kindGzip, kindBzip2:
		if err := in.deeper(pathIn, depth); err != nil {
			return err
		}
		return in.walkCompressed(s.kind, rest, pathIn, depth+1)
	case kindTar:
		if err := in.deeper(pathIn, depth); err != nil {
			return err
		}
		return in.walkTar(tar.NewReader(rest), pathIn, depth+1)
	case kindOLE:
		sc, err := scanOLE(head, r)
		if err != nil {
			if err := in.readErr(pathIn, err); err != nil {
				return err
			}
		}
		if sc.msi {
			if err := in.found(Installer, pathIn, "it is a Windows installer package (MSI)"); err != nil {
				return err
			}
		}
		if sc.vba {
			if err := in.found(OfficeMacro, pathIn, "it is an Office document with macros (a VBA project)"); err != nil {
				return err
			}
		}
		if sc.encrypted {
			return in.found(Encrypted, pathIn, "it is an encrypted Office document, whose content cannot be checked")
		}
	case kindUnopened:
		return in.found(Unopened, pathIn, "it is "+s.unopen+", a format this server recognises but does not open, so its content cannot be checked")
	}
	return nil
}

// isTar: the first bytes are a tar header with a valid checksum.
func isTar(head []byte) bool {
	if len(head) < 512 || !octalField(head[148:156]) {
		return false
	}
	_, err := tar.NewReader(bytes.NewReader(head)).Next()
	return err == nil || err == io.ErrUnexpectedEOF
}

// octalField: a tar header's number field (octal digits, blanks, NULs),
// a cheap look before archive/tar is asked, for the many files that
// are no tar file.
func octalField(f []byte) bool {
	digits := 0
	for _, c := range f {
		switch {
		case c >= '0' && c <= '7':
			digits++
		case c != ' ' && c != 0:
			return false
		}
	}
	return digits > 0
}

// prefixedZip opens a file named .zip whose ZIP directory is behind
// other data; a file that is no ZIP at all passes (no tool opens it).
func (in *inspector) prefixedZip(rest io.Reader, pathIn string, depth int) error {
	sp, err := spill(rest, in.lim.TempDir)
	if err != nil {
		return in.readErr(pathIn, err)
	}
	defer sp.Close()
	if zr, err := zip.NewReader(sp, sp.size); (err != nil && !errors.Is(err, zip.ErrInsecurePath)) || len(zr.File) == 0 {
		return nil
	}
	if err := in.deeper(pathIn, depth); err != nil {
		return err
	}
	return in.walkZip(sp, pathIn, depth+1)
}

// walkCompressed opens a gzip or bzip2 stream: one file, whose name is
// in the gzip header or is the outer name without its suffix.
func (in *inspector) walkCompressed(k kind, rest io.Reader, pathIn string, depth int) error {
	src := &counter{r: bufio.NewReader(rest)}
	var dr io.Reader
	stored := ""
	outer := baseName(pathIn)
	if outer == "" {
		outer = baseName(in.file)
	}
	derived := outer
	if k == kindGzip {
		zr, err := gzip.NewReader(src)
		if err != nil {
			return in.found(Unopened, pathIn, "it is a damaged gzip file that cannot be checked")
		}
		stored, dr = zr.Name, zr
		lower := strings.ToLower(outer)
		switch {
		case strings.HasSuffix(lower, ".tgz"):
			derived = outer[:len(outer)-4] + ".tar"
		case strings.HasSuffix(lower, ".gz"):
			derived = outer[:len(outer)-3]
		}
	} else {
		dr = bzip2.NewReader(src)
		lower := strings.ToLower(outer)
		switch {
		case strings.HasSuffix(lower, ".tbz2"), strings.HasSuffix(lower, ".tbz"):
			derived = outer[:strings.LastIndexByte(outer, '.')] + ".tar"
		case strings.HasSuffix(lower, ".bz2"):
			derived = outer[:len(outer)-4]
		}
	}
	name := stored
	if name == "" {
		name = derived
	}
	p := join(pathIn, baseName(name))
	if err := in.entry(p); err != nil {
		return err
	}
	if stored != "" {
		if err := in.nameFindings(p, stored); err != nil {
			return err
		}
		if derived != outer && extension(derived) != "" && !sameExtension(stored, derived) {
			if err := in.found(NameMismatch, p, fmt.Sprintf("it is named %+q inside the compressed file, but the outer name says %+q", stored, derived)); err != nil {
				return err
			}
		}
	}
	return in.content(p, in.budget(&ratioCheck{in: in, src: src, r: dr}), depth)
}

func (in *inspector) walkTar(tr *tar.Reader, pathIn string, depth int) error {
	for {
		h, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return in.readErr(pathIn, err)
		}
		p := join(pathIn, h.Name)
		if err := in.entry(p); err != nil {
			return err
		}
		if err := in.nameFindings(p, h.Name); err != nil {
			return err
		}
		if err := in.pathFindings(p, h.Name); err != nil {
			return err
		}
		if h.Typeflag != tar.TypeReg {
			continue
		}
		if err := in.content(p, tr, depth); err != nil {
			return err
		}
	}
}

// pathFindings: an entry that would be extracted outside the folder
// chosen for it.
func (in *inspector) pathFindings(p, name string) error {
	n := strings.ReplaceAll(name, `\`, "/")
	if strings.HasPrefix(n, "/") || (len(n) > 1 && n[1] == ':') || n == ".." || strings.HasPrefix(n, "../") || strings.Contains(n, "/../") || strings.HasSuffix(n, "/..") {
		return in.found(DeceptiveName, p, "its path leads out of the folder it is extracted to")
	}
	return nil
}

// localEntry is a ZIP local file header, as a streaming extractor reads
// it.
type localEntry struct {
	name    string
	flags   uint16
	method  uint16
	dataOff int64
	csize   int64 // -1: unknown
}

// localHeaders walks the local file headers from the start of a ZIP
// file, as streaming extractors (and some scanners) do, without its
// central directory. cdSize gives the compressed size of the entries the
// directory knows, by data offset, for entries whose local header leaves
// the size to a data descriptor. The walk ends at the directory, at
// anything that is not a local header, or at an entry whose end cannot
// be found.
func (in *inspector) localHeaders(ra io.ReaderAt, size int64, cdSize map[int64]int64) []localEntry {
	var out []localEntry
	var off int64
	hdr := make([]byte, 30)
	for len(out) <= in.lim.MaxEntries {
		if _, err := ra.ReadAt(hdr, off); err != nil || !at(hdr, 0, "PK\x03\x04") {
			break
		}
		le := localEntry{flags: binary.LittleEndian.Uint16(hdr[6:]), method: binary.LittleEndian.Uint16(hdr[8:])}
		csize := int64(binary.LittleEndian.Uint32(hdr[18:]))
		nlen, elen := int64(binary.LittleEndian.Uint16(hdr[26:])), int64(binary.LittleEndian.Uint16(hdr[28:]))
		ne := make([]byte, nlen+elen)
		if _, err := ra.ReadAt(ne, off+30); err != nil {
			break
		}
		le.name = string(ne[:nlen])
		if csize == 0xffffffff {
			csize = zip64Size(ne[nlen:])
		}
		le.dataOff = off + 30 + nlen + elen
		le.csize = csize
		if le.flags&8 != 0 {
			le.csize = -1
			if s, ok := cdSize[le.dataOff]; ok {
				le.csize = s
			} else if csize > 0 {
				le.csize = csize
			} else if le.method == zip.Deflate {
				le.csize = in.deflateLength(ra, le.dataOff, size)
			}
		}
		out = append(out, le)
		if le.csize < 0 || le.dataOff+le.csize > size {
			break
		}
		off = le.dataOff + le.csize
		if le.flags&8 != 0 {
			off += descriptorLength(ra, off)
		}
	}
	return out
}

func slashes(name string) string { return strings.ReplaceAll(name, `\`, "/") }

// unicodePath is the name in an Info-ZIP Unicode Path extra field
// (0x7075: version, CRC-32 of the header's name, the UTF-8 name), "" if
// none.
func unicodePath(extra []byte) string {
	for len(extra) >= 4 {
		id, n := binary.LittleEndian.Uint16(extra), int(binary.LittleEndian.Uint16(extra[2:]))
		if n > len(extra)-4 {
			break
		}
		if id == 0x7075 && n > 5 {
			return string(extra[4+5 : 4+n])
		}
		extra = extra[4+n:]
	}
	return ""
}

// zip64Size is the compressed size from a local header's ZIP64 extra
// field, -1 if none.
func zip64Size(extra []byte) int64 {
	for len(extra) >= 4 {
		id, n := binary.LittleEndian.Uint16(extra), int(binary.LittleEndian.Uint16(extra[2:]))
		if n > len(extra)-4 {
			break
		}
		if id == 1 && n >= 16 {
			return int64(binary.LittleEndian.Uint64(extra[4+8:]))
		}
		extra = extra[4+n:]
	}
	return -1
}

// deflateLength inflates a deflate stream only to learn where it ends
// (counted against the byte limit); -1 if it does not end.
func (in *inspector) deflateLength(ra io.ReaderAt, off, size int64) int64 {
	src := &counter{r: bufio.NewReader(io.NewSectionReader(ra, off, size-off))}
	fr := flate.NewReader(src)
	defer fr.Close()
	if _, err := io.Copy(io.Discard, in.budget(fr)); err != nil {
		return -1
	}
	return src.n
}

// descriptorLength is the length of the data descriptor at off: 12 or
// 16 bytes (with its optional signature), 20 or 24 with ZIP64 sizes;
// the one after which a header signature follows.
func descriptorLength(ra io.ReaderAt, off int64) int64 {
	sig := make([]byte, 4)
	for _, n := range []int64{16, 12, 24, 20} {
		if _, err := ra.ReadAt(sig, off+n); err == nil && (at(sig, 0, "PK\x03\x04") || at(sig, 0, "PK\x01\x02") || at(sig, 0, "PK\x05\x06") || at(sig, 0, "PK\x06\x06")) {
			return n
		}
	}
	return 16
}

// walkZip looks at a ZIP file twice: through its central directory, as
// Windows Explorer and 7-Zip list it, and through its local headers, as
// streaming extractors read it. What differs between the two (a name, an
// entry only one of them has, entries sharing their data) is itself a
// finding: no tool that writes ZIP files makes such a file.
func (in *inspector) walkZip(sp *spilled, pathIn string, depth int) error {
	zr, zerr := zip.NewReader(sp, sp.size)
	if zerr != nil && !errors.Is(zerr, zip.ErrInsecurePath) {
		zr = nil
	}
	cdSize := map[int64]int64{}
	dataOff := map[*zip.File]int64{}
	if zr != nil {
		if in.lim.MaxEntries > 0 && len(zr.File) > in.lim.MaxEntries-in.entries {
			return in.limit(pathIn, fmt.Sprintf("its archives hold more than %d files, the limit", in.lim.MaxEntries))
		}
		type span struct {
			start, end int64
			name       string
		}
		spans := make([]span, 0, len(zr.File))
		for _, f := range zr.File {
			off, err := f.DataOffset()
			if err != nil {
				continue
			}
			dataOff[f] = off
			cdSize[off] = int64(f.CompressedSize64)
			spans = append(spans, span{off, off + int64(f.CompressedSize64), f.Name})
			if f.UncompressedSize64 > 1<<50 {
				in.declared = 1 << 50
			} else {
				in.declared += int64(f.UncompressedSize64)
			}
		}
		sort.Slice(spans, func(i, j int) bool { return spans[i].start < spans[j].start })
		var end int64
		for i, s := range spans {
			if i > 0 && s.start < end {
				return in.limit(join(pathIn, s.name), "its entries overlap inside the ZIP file, as only a zip bomb's do (one piece of compressed data counted as many files)")
			}
			end = max(end, s.end)
		}
		if in.lim.MaxBytes > 0 && in.declared > in.lim.MaxBytes {
			return in.limit(pathIn, fmt.Sprintf("its archives declare more than %s uncompressed, the limit (a zip bomb?)", mb(in.lim.MaxBytes)))
		}
	}
	locals := in.localHeaders(sp, sp.size, cdSize)
	if zr == nil {
		return in.walkLocal(sp, locals, pathIn, depth)
	}
	byOff := make(map[int64]localEntry, len(locals))
	for _, le := range locals {
		byOff[le.dataOff] = le
	}
	seen := map[int64]bool{}
	encrypted := false
	for _, f := range zr.File {
		p := join(pathIn, f.Name)
		if err := in.entry(p); err != nil {
			return err
		}
		if err := in.nameFindings(p, f.Name); err != nil {
			return err
		}
		if err := in.pathFindings(p, f.Name); err != nil {
			return err
		}
		if off, ok := dataOff[f]; ok {
			if le, ok := byOff[off]; ok {
				seen[off] = true
				// Some Windows tools write "\\" in one header and
				// "/" in the other: one name.
				if slashes(le.name) != slashes(f.Name) {
					if err := in.found(NameMismatch, p, fmt.Sprintf("it is named %+q in the ZIP file's directory but %+q in its local header; extraction tools differ in which name they use", f.Name, le.name)); err != nil {
						return err
					}
					if err := in.nameFindings(join(pathIn, le.name), le.name); err != nil {
						return err
					}
				}
			}
		}
		if u := unicodePath(f.Extra); u != "" && slashes(u) != slashes(f.Name) {
			// 7-Zip and libarchive (Windows 11) extract under this
			// name, Explorer and archive/zip show the other.
			if err := in.nameFindings(join(pathIn, u), u); err != nil {
				return err
			}
			if !sameExtension(u, f.Name) {
				if err := in.found(NameMismatch, p, fmt.Sprintf("it is named %+q in the ZIP file's directory but %+q in its Unicode path field; extraction tools differ in which name they use", f.Name, u)); err != nil {
					return err
				}
			}
		}
		if strings.EqualFold(baseName(f.Name), "vbaProject.bin") {
			if err := in.found(OfficeMacro, p, "it holds the macros of an Office document (vbaProject.bin)"); err != nil {
				return err
			}
		}
		if f.FileInfo().IsDir() {
			continue
		}
		if f.Flags&1 != 0 || f.Method == 99 {
			if !encrypted {
				encrypted = true
				if err := in.found(Encrypted, p, "it is encrypted (a password-protected archive), so its content cannot be checked"); err != nil {
					return err
				}
			}
			continue
		}
		if m := uint64(in.lim.MaxRatio); m > 0 && f.UncompressedSize64 > ratioFloor && f.UncompressedSize64 > m*max(f.CompressedSize64, 1) {
			return in.limit(p, fmt.Sprintf("it expands %d times (%s from %s), more than the limit of %d (a zip bomb?)",
				f.UncompressedSize64/max(f.CompressedSize64, 1), mb(int64(f.UncompressedSize64)), mb(int64(f.CompressedSize64)), in.lim.MaxRatio))
		}
		rc, err := f.Open()
		if err != nil {
			if err := in.found(Unopened, p, fmt.Sprintf("it is compressed with a method this server does not open (ZIP method %d), so its content cannot be checked", f.Method)); err != nil {
				return err
			}
			continue
		}
		err = in.content(p, in.budget(rc), depth)
		rc.Close()
		if err != nil {
			return err
		}
	}
	for _, le := range locals {
		if seen[le.dataOff] {
			continue
		}
		p := join(pathIn, le.name)
		if err := in.found(NameMismatch, p, "it is in the ZIP file's local headers but not in its directory, hidden from some extraction tools and shown by others"); err != nil {
			return err
		}
		if err := in.nameFindings(p, le.name); err != nil {
			return err
		}
	}
	return nil
}

// walkLocal looks at a ZIP file without a readable central directory
// (cut off, or streamed): its local headers are all there is, and they
// are what a streaming extractor would unpack.
func (in *inspector) walkLocal(sp *spilled, locals []localEntry, pathIn string, depth int) error {
	if len(locals) == 0 {
		return in.found(Unopened, pathIn, "it is a damaged ZIP file that cannot be checked")
	}
	encrypted := false
	for _, le := range locals {
		p := join(pathIn, le.name)
		if err := in.entry(p); err != nil {
			return err
		}
		if err := in.nameFindings(p, le.name); err != nil {
			return err
		}
		if err := in.pathFindings(p, le.name); err != nil {
			return err
		}
		if le.flags&1 != 0 || le.method == 99 {
			if !encrypted {
				encrypted = true
				if err := in.found(Encrypted, p, "it is encrypted (a password-protected archive), so its content cannot be checked"); err != nil {
					return err
				}
			}
			continue
		}
		if le.csize < 0 || strings.HasSuffix(le.name, "/") {
			continue
		}
		var r io.ReadCloser = io.NopCloser(io.NewSectionReader(sp, le.dataOff, le.csize))
		switch le.method {
		case zip.Store:
		case zip.Deflate:
			r = flate.NewReader(r)
		default:
			continue
		}
		err := in.content(p, in.budget(r), depth)
		r.Close()
		if err != nil {
			return err
		}
	}
	return nil
}
