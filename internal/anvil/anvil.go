// Package anvil counts what SMTP clients do (connections, messages,
// recipients, failed logins) per key in a sliding window, in memory, for
// the per-client limits of the listeners (Postfix's anvil). It implements
// smtpd.ClientCounter; a cluster of relays can share the counts through a
// store behind that interface instead.
//
// Each key keeps a fixed ring of counters, so a key costs the same few
// dozen bytes whether it saw one event or a million. The price is
// granularity: an event is counted for between window and window/12 more
// (never less than the window), which errs on the side of the limit.
//
// The counts live in memory only: a restart forgets them. They are
// protections against a client hammering now, not records.
package anvil

import (
	"sync"
	"time"
)

// slots is how many full slots make up a window; one more holds the
// current, partial slot.
const slots = 12

// DefaultMaxKeys bounds the keys kept: under a flood from many addresses
// the store stays at a few tens of MB.
const DefaultMaxKeys = 200_000

// Memory is the in-memory store. The zero value is not usable; call New.
type Memory struct {
	mu      sync.Mutex
	m       map[counted]*entry
	maxKeys int
	swept   time.Time
}

// counted names one count: a key has a count of its own per window.
// Callers that share a key may ask with different windows (the failed
// logins are counted across listeners, each with its own
// auth_failure_window): one caller's window must never reset the count
// another keeps, or alternating between them would keep every count at
// one.
type counted struct {
	key    string
	window time.Duration
}

type entry struct {
	window time.Duration
	head   int64 // index of the newest slot (time / slot width)
	n      [slots + 1]uint32
	last   time.Time
}

// New returns an empty store holding at most maxKeys keys (0: the default).
func New(maxKeys int) *Memory {
	if maxKeys <= 0 {
		maxKeys = DefaultMaxKeys
	}
	return &Memory{m: map[counted]*entry{}, maxKeys: maxKeys}
}

// Add records one event for key at now and returns the number of events
// of key within window, this one included. Each window has its own count
// of a key.
func (s *Memory) Add(key string, now time.Time, window time.Duration) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.sweep(now)
	k := counted{key, window}
	e := s.m[k]
	if e == nil {
		e = &entry{window: window}
		s.m[k] = e
	}
	i := e.advance(now)
	if e.n[i] < ^uint32(0) {
		e.n[i]++
	}
	e.last = now
	return e.sum(), nil
}

// Count returns the number of events of key within window, without adding
// one.
func (s *Memory) Count(key string, now time.Time, window time.Duration) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e := s.m[counted{key, window}]
	if e == nil {
		return 0, nil
	}
	e.advance(now)
	return e.sum(), nil
}

// Len is the number of counts held (keys, per window).
func (s *Memory) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.m)
}

func width(window time.Duration) int64 {
	return max(int64(window/slots), 1)
}

// advance moves the ring to now, clearing the slots that fell out of the
// window, and returns the index of now's slot. A clock that went back
// counts into the newest slot.
func (e *entry) advance(now time.Time) int {
	idx := now.UnixNano() / width(e.window)
	if e.head == 0 {
		e.head = idx
	}
	for e.head < idx {
		e.head++
		e.n[e.head%(slots+1)] = 0
		if idx-e.head > slots {
			// Everything is stale: no need to walk every slot between.
			e.n = [slots + 1]uint32{}
			e.head = idx
		}
	}
	return int(e.head % (slots + 1))
}

func (e *entry) sum() int {
	t := 0
	for _, v := range e.n {
		t += int(v)
	}
	return t
}

// sweep drops keys with nothing left in their window, once a minute, or
// at once when the store is full; if it is still full, it drops keys
// regardless (losing some counts beats growing without bound).
func (s *Memory) sweep(now time.Time) {
	if now.Sub(s.swept) < time.Minute && len(s.m) < s.maxKeys {
		return
	}
	s.swept = now
	for k, e := range s.m {
		if now.Sub(e.last) > e.window+time.Duration(width(e.window)) {
			delete(s.m, k)
		}
	}
	for k := range s.m {
		if len(s.m) < s.maxKeys {
			break
		}
		delete(s.m, k)
	}
}
