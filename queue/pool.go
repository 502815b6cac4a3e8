package queue

import (
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// pool keeps spool files created ahead of need, empty, with their directory
// entries already fsync'd: one directory fsync per batch instead of one per
// message. Measured on the reference machine (BenchmarkSpoolLayouts), the
// directory fsync is about 40% of the spool's time per message; with the
// pool, acknowledging a message costs one write and one file fsync.
//
// The pool is an optimisation only: when it is empty (a burst, a failing
// disk) NewWriter creates the file itself and fsyncs the directory as
// before, so durability never depends on it. An empty file in the spool is
// an unused pool entry (or a create that never got its header): it was
// never acknowledged, and recovery removes it.
type pool struct {
	s     *store
	now   func() time.Time
	log   *slog.Logger
	files chan *os.File
	batch int

	kick chan struct{}
	stop chan struct{}
	done chan struct{}
	once sync.Once
}

func newPool(s *store, size int, now func() time.Time, log *slog.Logger) *pool {
	p := &pool{
		s: s, now: now, log: log,
		files: make(chan *os.File, size),
		batch: max(1, min(64, size/2)),
		kick:  make(chan struct{}, 1),
		stop:  make(chan struct{}),
		done:  make(chan struct{}),
	}
	go p.run()
	return p
}

// take returns a pre-created file, or nil when none is ready.
func (p *pool) take() *os.File {
	select {
	case f := <-p.files:
		if len(p.files) < cap(p.files)/2 {
			select {
			case p.kick <- struct{}{}:
			default:
			}
		}
		return f
	default:
		select {
		case p.kick <- struct{}{}:
		default:
		}
		return nil
	}
}

func (p *pool) run() {
	defer close(p.done)
	shard := 0
	failing := false
	for {
		for len(p.files) < cap(p.files) {
			n := min(p.batch, cap(p.files)-len(p.files))
			made, err := p.fill(shard, n)
			shard = (shard + 1) % shards
			if err != nil {
				// Once per failure streak: a full disk must not also
				// flood the log every second.
				if !failing {
					p.log.Warn("spool: could not pre-create files; messages are spooled without the pool", "error", err)
					failing = true
				}
				select {
				case <-p.stop:
					return
				case <-time.After(time.Second):
				}
				break
			}
			if failing {
				p.log.Info("spool: pre-creating files works again")
				failing = false
			}
			for i, f := range made {
				select {
				case p.files <- f:
				case <-p.stop:
					discard(made[i:]) // the ones not handed over yet
					return
				}
			}
		}
		select {
		case <-p.stop:
			return
		case <-p.kick:
		}
	}
}

// fill creates n empty files in one shard and fsyncs its directory once.
func (p *pool) fill(shard, n int) ([]*os.File, error) {
	dir := filepath.Join(p.s.dir, fmt.Sprintf("%X", shard))
	var made []*os.File
	for len(made) < n {
		id := newIDInShard(p.now(), shard)
		f, err := os.OpenFile(filepath.Join(dir, id), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if os.IsExist(err) {
			continue
		}
		if err != nil {
			discard(made)
			return nil, err
		}
		made = append(made, f)
	}
	if err := p.s.dsync[shard].sync(); err != nil {
		discard(made)
		return nil, fmt.Errorf("fsync %s: %w", dir, err)
	}
	return made, nil
}

func discard(fs []*os.File) {
	for _, f := range fs {
		f.Close()
		os.Remove(f.Name())
	}
}

// close stops refilling and removes the files nobody took.
func (p *pool) close() {
	p.once.Do(func() {
		close(p.stop)
		<-p.done
		for {
			select {
			case f := <-p.files:
				discard([]*os.File{f})
			default:
				return
			}
		}
	})
}

// newIDInShard is newID with the shard digit chosen, so a batch of
// pre-created files shares one directory and one directory fsync.
func newIDInShard(now time.Time, shard int) string {
	c := idCounter.Add(1)
	return fmt.Sprintf("%011X%04X%X", uint64(now.UnixMicro())&0xFFFFFFFFFFF, c&0xFFFF, shard)
}
