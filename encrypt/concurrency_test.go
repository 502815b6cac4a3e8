package encrypt_test

import (
	"bytes"
	"strings"
	"sync"
	"testing"

	"securerelay/encrypt"
)

// Deliveries run in parallel and share keys and the Directory: lookups of
// one address ask the WKD server once, and one key encrypts many
// messages at the same time (run with -race).
func TestConcurrentLookupsAndEncryption(t *testing.T) {
	e := newWKDEnv(t)
	e.publish(t, addrAlice, "advanced", e.k.binary(t, e.k.alice))
	ring := keyringDir(t, e.k, map[string]string{"bob.asc": e.k.bob})
	e.o.KeyringDir = ring
	d := newDirectory(t, e.o)
	msg, body, _ := testMessage(t)

	var wg sync.WaitGroup
	outs := make([][]byte, 8)
	errs := make([]string, 8)
	for i := range 8 {
		wg.Go(func() {
			ra := d.Lookup(t.Context(), encrypt.Query{Address: addrAlice})
			rb := d.Lookup(t.Context(), encrypt.Query{Address: addrBob})
			if ra.Key == nil || rb.Key == nil {
				errs[i] = describe(ra) + " / " + describe(rb)
				return
			}
			var out bytes.Buffer
			if err := encrypt.Encrypt(&out, bytes.NewReader(msg), []*encrypt.Key{ra.Key, rb.Key}, encrypt.MessageOptions{}); err != nil {
				errs[i] = err.Error()
				return
			}
			outs[i] = out.Bytes()
		})
	}
	wg.Wait()
	if s := strings.Join(errs, ""); s != "" {
		t.Fatal(s)
	}
	if reqs := e.srv.requestLog(); len(reqs) != 1 {
		t.Errorf("%d WKD requests for one address looked up 8 times at once; want 1", len(reqs))
	}
	if bytes.Equal(outs[0], outs[1]) {
		t.Error("two encryptions gave the same bytes: no fresh session key?")
	}
	_, armored := pgpPart(t, outs[7])
	plain, _ := decryptGPG(t, e.k, armored)
	if !bytes.HasSuffix(plain, body) {
		t.Error("a concurrently encrypted message does not decrypt to the body")
	}
}
