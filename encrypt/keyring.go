package encrypt

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp"
)

// keyFileExts are the names a key file in the keyring folder may have;
// anything else there (README, editor backups "x.asc~", ".x.asc.swp") is
// not read.
var keyFileExts = []string{".asc", ".gpg", ".pgp", ".key"}

// stamp tells whether a file changed since it was read: an edit in place
// changes the modification time (nanoseconds on current file systems) or
// the size, a replacement by rename changes the inode.
type stamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

func stampOf(fi os.FileInfo) stamp {
	s := stamp{mod: fi.ModTime(), size: fi.Size()}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		s.ino = st.Ino
	}
	return s
}

// keyFile is one parsed key file.
type keyFile struct {
	path  string
	stamp stamp
	keys  openpgp.EntityList
	err   error // unreadable or unparseable; keys is empty then
	// secret is set when the file holds secret key material: only the
	// public parts are used, but such a file does not belong in a
	// keyring of recipients (or in a rule).
	secret bool
}

func readKeyFile(path string) *keyFile {
	kf := &keyFile{path: path}
	f, err := os.Open(path)
	if err != nil {
		kf.err = err
		return kf
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		kf.err = err
		return kf
	}
	kf.stamp = stampOf(fi)
	if !fi.Mode().IsRegular() {
		kf.err = fmt.Errorf("%s: not a regular file", path)
		return kf
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileKeyData+1))
	if err != nil {
		kf.err = err
		return kf
	}
	kf.keys, kf.err = parseKeys(data, maxFileKeyData)
	if kf.err != nil {
		kf.err = fmt.Errorf("%s: %w", path, kf.err)
	}
	for _, e := range kf.keys {
		kf.secret = kf.secret || e.PrivateKey != nil
	}
	return kf
}

// fileCache keeps parsed key files (pinned keys) and reads a file again
// when its stamp changed, so that a replaced key file takes effect at the
// next lookup without a restart.
type fileCache struct {
	mu    sync.Mutex
	files map[string]*keyFile
}

func (c *fileCache) get(path string) *keyFile {
	fi, err := os.Stat(path)
	if err != nil {
		return &keyFile{path: path, err: err}
	}
	st := stampOf(fi)
	c.mu.Lock()
	kf, ok := c.files[path]
	c.mu.Unlock()
	if ok && kf.stamp == st {
		return kf
	}
	kf = readKeyFile(path)
	c.mu.Lock()
	if c.files == nil {
		c.files = map[string]*keyFile{}
	}
	c.files[path] = kf
	c.mu.Unlock()
	return kf
}

// keyring is the keyring folder: every key file in it, indexed by the
// addresses in the keys' user IDs and by file names that are addresses
// ("alice@example.com.asc"), so that a key filed under an address it does
// not carry is reported rather than silently not found.
type keyring struct {
	dir      string
	interval time.Duration
	log      *slog.Logger

	mu       sync.Mutex
	scanned  time.Time
	scanErr  error
	files    map[string]*keyFile // by base name
	index    map[string][]keyringEntry
	problems []error // files that could not be read, as of the last scan
}

type keyringEntry struct {
	e    *openpgp.Entity
	file string
}

// refresh rescans the folder when interval has passed since the last
// scan: one ReadDir and one stat per file; only changed files are read.
func (k *keyring) refresh(now time.Time) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if d := now.Sub(k.scanned); !k.scanned.IsZero() && k.scanErr == nil && d >= 0 && d < k.interval {
		return nil
	}
	k.scanned = now
	ents, err := os.ReadDir(k.dir)
	if err != nil {
		// Keep nothing: a key the admin removed must not stay in use
		// because the folder cannot be read right now.
		k.scanErr = fmt.Errorf("keyring %s: %w", k.dir, err)
		k.files, k.index = nil, nil
		return k.scanErr
	}
	k.scanErr = nil
	files := make(map[string]*keyFile, len(ents))
	changed := len(k.files) == 0
	var problems []error
	for _, de := range ents {
		name := de.Name()
		if strings.HasPrefix(name, ".") || !slices.Contains(keyFileExts, strings.ToLower(filepath.Ext(name))) {
			continue
		}
		path := filepath.Join(k.dir, name)
		fi, err := os.Stat(path) // follows symlinks, as an admin linking keys in expects
		if err != nil {
			if errors.Is(err, os.ErrNotExist) {
				continue // removed since ReadDir
			}
			problems = append(problems, err)
			continue
		}
		if fi.IsDir() {
			continue
		}
		old := k.files[name]
		if old != nil && old.stamp == stampOf(fi) {
			files[name] = old
		} else {
			kf := readKeyFile(path)
			files[name] = kf
			changed = true
			switch {
			case kf.err != nil:
				k.log.Warn("encrypt: keyring file unusable", "file", path, "error", kf.err)
			case kf.secret:
				k.log.Warn("encrypt: keyring file holds a secret key; only its public part is used, remove the secret", "file", path)
			default:
				k.log.Info("encrypt: keyring file loaded", "file", path, "keys", len(kf.keys))
			}
		}
		if kf := files[name]; kf.err != nil {
			problems = append(problems, kf.err)
		} else if kf.secret {
			problems = append(problems, fmt.Errorf("%s: holds secret key material; a keyring of recipients needs public keys only", path))
		}
	}
	if len(files) != len(k.files) {
		changed = true
	}
	k.files, k.problems = files, problems
	if changed {
		k.index = buildIndex(files)
	}
	return nil
}

func buildIndex(files map[string]*keyFile) map[string][]keyringEntry {
	idx := map[string][]keyringEntry{}
	for name, kf := range files {
		stem := strings.ToLower(strings.TrimSuffix(name, filepath.Ext(name)))
		for _, e := range kf.keys {
			addrs := entityAddresses(e)
			if strings.Contains(stem, "@") && !slices.Contains(addrs, stem) {
				addrs = append(addrs, stem)
			}
			for _, a := range addrs {
				idx[a] = append(idx[a], keyringEntry{e: e, file: kf.path})
			}
		}
	}
	return idx
}

// candidates returns the keys filed under addrKey.
func (k *keyring) candidates(addrKey string) []keyringEntry {
	k.mu.Lock()
	defer k.mu.Unlock()
	return slices.Clone(k.index[addrKey])
}
