package attach

import (
	"bytes"
	"encoding/binary"
	"io"
	"strings"
)

// sniffLen is how much of a file is looked at first: enough for the ISO
// 9660 and UDF descriptors at 32 KiB, and a multiple of 128 so that the
// OLE directory scan stays aligned across reads.
const sniffLen = 36 * 1024

// kind is what the first bytes say about how to go on.
type kind int

const (
	kindPlain kind = iota
	kindZip
	kindGzip
	kindBzip2
	kindTar
	kindOLE
	kindUnopened
)

// sniffed is what the first bytes of a file are.
type sniffed struct {
	kind   kind
	class  Class  // a class by content, "" if none
	what   string // in words: "a Windows program (PE)", "a 7-Zip archive"
	unopen string // for kindUnopened: the format
	// shebang: a script by its "#!" line only.
	shebang bool
}

var lnkHeader = []byte{0x4c, 0, 0, 0, 0x01, 0x14, 0x02, 0, 0, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x46}

func at(b []byte, off int, s string) bool {
	return len(b) >= off+len(s) && string(b[off:off+len(s)]) == s
}

// sniff classifies a file by its first bytes (head is up to sniffLen).
func sniff(head []byte) sniffed {
	switch {
	case at(head, 0, "MZ") && len(head) >= 64:
		e := int(binary.LittleEndian.Uint32(head[0x3c:]))
		if e >= 0 && e <= len(head)-4 && at(head, e, "PE\x00\x00") {
			return sniffed{class: Executable, what: "a Windows program (PE)"}
		}
		if bytes.IndexByte(head[2:64], 0) >= 0 {
			return sniffed{class: Executable, what: "a DOS or Windows program (MZ)"}
		}
	case at(head, 0, "\x7fELF"):
		return sniffed{class: Executable, what: "a Linux or Unix program (ELF)"}
	case at(head, 0, "\xfe\xed\xfa\xce"), at(head, 0, "\xfe\xed\xfa\xcf"), at(head, 0, "\xce\xfa\xed\xfe"), at(head, 0, "\xcf\xfa\xed\xfe"):
		return sniffed{class: Executable, what: "a macOS program (Mach-O)"}
	case at(head, 0, "\xca\xfe\xba\xbe") && len(head) >= 8:
		if binary.BigEndian.Uint32(head[4:]) < 0x20 {
			return sniffed{class: Executable, what: "a macOS program (universal Mach-O)"}
		}
		return sniffed{class: Executable, what: "a Java program (class file)"}
	case at(head, 0, "#!"):
		return sniffed{class: Script, what: "a script (#!)", shebang: true}
	case bytes.HasPrefix(head, lnkHeader):
		return sniffed{class: Shortcut, what: "a Windows shortcut (.lnk)"}
	case at(head, 0, "\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"):
		return sniffed{kind: kindOLE}
	case at(head, 0x8001, "CD001"):
		return sniffed{class: DiskImage, what: "a disk image (ISO 9660)"}
	case at(head, 0x8001, "BEA01"), at(head, 0x8001, "NSR0"):
		return sniffed{class: DiskImage, what: "a disk image (UDF)"}
	case at(head, 0, "vhdxfile"):
		return sniffed{class: DiskImage, what: "a virtual disk (VHDX)"}
	case at(head, 0, "conectix"):
		return sniffed{class: DiskImage, what: "a virtual disk (VHD)"}
	case at(head, 510, "\x55\xaa") && (at(head, 54, "FAT1") || at(head, 82, "FAT32") || at(head, 3, "NTFS    ")):
		return sniffed{class: DiskImage, what: "a disk image (FAT or NTFS file system)"}
	case at(head, 0, "PK\x03\x04"), at(head, 0, "PK\x05\x06"), at(head, 0, "PK\x07\x08PK\x03\x04"):
		return sniffed{kind: kindZip}
	case at(head, 0, "\x1f\x8b\x08"):
		return sniffed{kind: kindGzip}
	case at(head, 0, "BZh") && len(head) >= 10 && head[3] >= '1' && head[3] <= '9' && (at(head, 4, "\x31\x41\x59\x26\x53\x59") || at(head, 4, "\x17\x72\x45\x38\x50\x90")):
		return sniffed{kind: kindBzip2}
	case at(head, 257, "ustar"):
		return sniffed{kind: kindTar}
	case at(head, 0, "7z\xbc\xaf\x27\x1c"):
		return sniffed{kind: kindUnopened, unopen: "a 7-Zip archive"}
	case at(head, 0, "Rar!\x1a\x07\x00"), at(head, 0, "Rar!\x1a\x07\x01\x00"):
		return sniffed{kind: kindUnopened, unopen: "a RAR archive"}
	case at(head, 0, "MSCF\x00\x00\x00\x00"):
		return sniffed{kind: kindUnopened, unopen: "a Windows cabinet (CAB) archive"}
	case at(head, 7, "**ACE**"):
		return sniffed{kind: kindUnopened, unopen: "an ACE archive"}
	case at(head, 2, "-lh") && len(head) > 6 && head[6] == '-':
		return sniffed{kind: kindUnopened, unopen: "an LHA archive"}
	case at(head, 0, "\xfd7zXZ\x00"):
		return sniffed{kind: kindUnopened, unopen: "an xz-compressed file"}
	case at(head, 0, "\x28\xb5\x2f\xfd"):
		return sniffed{kind: kindUnopened, unopen: "a Zstandard-compressed file"}
	}
	return sniffed{}
}

// OLE compound files (.doc, .xls, .msi, .msg) keep a directory of
// 128-byte entries, each starting with its UTF-16 name. Macros live in a
// VBA storage that always holds a _VBA_PROJECT stream (MS-OVBA 2.2);
// an encrypted Office document is one EncryptedPackage stream; an
// installer's root entry has the MSI class ID.
var (
	oleVBA       = utf16le("_VBA_PROJECT")
	oleEncrypted = utf16le("EncryptedPackage")
	msiCLSID     = []byte{0x84, 0x10, 0x0c, 0x00, 0, 0, 0, 0, 0xc0, 0, 0, 0, 0, 0, 0, 0x46}
)

func utf16le(s string) []byte {
	b := make([]byte, 0, 2*len(s))
	for i := 0; i < len(s); i++ {
		b = append(b, s[i], 0)
	}
	return b
}

// oleScan reads an OLE file to its end (bounded by the caller) and says
// what its directory holds. Names are matched only at offsets where a
// directory entry can start (multiples of 128), so that text in a
// document that happens to spell _VBA_PROJECT in UTF-16 does not count.
type oleScan struct {
	off       int64
	rootCLSID int64 // file offset of the root entry's class ID, -1 unknown
	vba, msi  bool
	encrypted bool
}

func newOLEScan(head []byte) *oleScan {
	s := &oleScan{rootCLSID: -1}
	if len(head) >= 512 {
		shift := uint(binary.LittleEndian.Uint16(head[0x1e:]))
		first := int64(binary.LittleEndian.Uint32(head[0x30:]))
		if (shift == 9 || shift == 12) && first < 1<<31 {
			s.rootCLSID = (first+1)<<shift + 0x50
		}
	}
	return s
}

// feed takes the next block; blocks are multiples of 128 bytes but the
// last.
func (s *oleScan) feed(b []byte) {
	for i := 0; i+len(oleVBA) <= len(b); i += 128 {
		if bytes.HasPrefix(b[i:], oleVBA) {
			s.vba = true
		}
		if bytes.HasPrefix(b[i:], oleEncrypted) {
			s.encrypted = true
		}
	}
	if r := s.rootCLSID - s.off; r >= 0 && r+16 <= int64(len(b)) && bytes.Equal(b[r:r+16], msiCLSID) {
		s.msi = true
	}
	s.off += int64(len(b))
}

// scanOLE feeds head and the rest of r, in blocks that keep the 128-byte
// alignment.
func scanOLE(head []byte, r io.Reader) (*oleScan, error) {
	s := newOLEScan(head)
	s.feed(head)
	if len(head) < sniffLen {
		return s, nil
	}
	buf := make([]byte, 64*1024)
	for {
		n, err := io.ReadFull(r, buf)
		s.feed(buf[:n])
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return s, nil
		}
		if err != nil {
			return s, err
		}
	}
}

// declaredTypes classes a part by its Content-Type.
func declaredType(mt string) Class {
	switch mt {
	case "application/x-msdownload", "application/x-msdos-program", "application/x-dosexec", "application/x-executable",
		"application/vnd.microsoft.portable-executable", "application/x-ms-dos-executable", "application/x-elf",
		"application/x-mach-binary", "application/java-archive", "application/x-java-archive", "application/java-vm":
		return Executable
	case "application/javascript", "application/x-javascript", "text/javascript", "application/ecmascript",
		"application/x-sh", "application/x-shellscript", "text/x-sh", "application/x-csh", "application/hta",
		"application/x-bat", "application/vbscript", "text/vbscript", "application/x-powershell", "application/x-ms-wsf":
		return Script
	case "application/x-ms-shortcut", "application/x-mswinurl":
		return Shortcut
	case "application/x-msi", "application/x-ms-installer", "application/x-msdownload-installer", "application/msix", "application/appx":
		return Installer
	case "application/x-iso9660-image", "application/x-cd-image", "application/x-raw-disk-image", "application/x-apple-diskimage", "application/x-vhd":
		return DiskImage
	}
	if strings.Contains(mt, "macroenabled") {
		return OfficeMacro
	}
	return ""
}
