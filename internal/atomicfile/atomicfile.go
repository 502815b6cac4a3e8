// Package atomicfile replaces a state file so that a crash leaves either
// the old content or the new, never a torn mix: the relay's caches and
// counters (MTA-STS policies, loop counters, screening passes) are read
// back at start and must not be half-written.
package atomicfile

import (
	"os"
	"path/filepath"
)

// Write writes data to a temporary file beside path, fsyncs it and
// renames it over path. The temporary file is gone whatever happens.
func Write(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+"-*")
	if err != nil {
		return err
	}
	_, err = tmp.Write(data)
	if err == nil {
		err = tmp.Sync()
	}
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp.Name(), path)
	}
	if err != nil {
		os.Remove(tmp.Name())
	}
	return err
}
