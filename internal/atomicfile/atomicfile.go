// Package atomicfile replaces a state file so that a crash leaves either
// the old content or the new, never a torn mix: the relay's caches and
// counters (MTA-STS policies, loop counters, screening passes) are read
// back at start and must not be half-written. Keeper does it periodically.
package atomicfile

import (
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Write writes data to a temporary file beside path, fsyncs it and
// renames it over path. On any error the temporary file is removed; a
// crash in between can leave one (".NAME-*"), which nothing reads.
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

// Keeper saves some state to a file every interval while it changed, and
// on Close: the loop counters and the screening cache, which are cheap to
// lose a minute of but should survive a restart.
type Keeper struct {
	path     string
	snapshot func(force bool) ([]byte, error)
	onError  func(error)

	mu    sync.Mutex // one save at a time; guards retry
	retry bool       // the last save failed: write even if nothing changed
	stop  chan struct{}
	done  chan struct{}
}

// Keep starts saving to path. snapshot returns the bytes to write, or nil
// when nothing changed since it last returned bytes (force asks for the
// bytes anyway, after a failed write). onError hears of failed periodic
// saves.
func Keep(path string, interval time.Duration, snapshot func(force bool) ([]byte, error), onError func(error)) *Keeper {
	k := &Keeper{path: path, snapshot: snapshot, onError: onError, stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		t := time.NewTicker(interval)
		defer t.Stop()
		for {
			select {
			case <-k.stop:
				return
			case <-t.C:
				if err := k.Save(); err != nil {
					k.onError(err)
				}
			}
		}
	}()
	return k
}

// Save writes the state now if it changed (or the last write failed).
func (k *Keeper) Save() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	b, err := k.snapshot(k.retry)
	if err != nil || b == nil {
		return err
	}
	err = Write(k.path, b)
	k.retry = err != nil
	return err
}

// Close stops the periodic saves and saves a last time.
func (k *Keeper) Close() error {
	close(k.stop)
	<-k.done
	return k.Save()
}
