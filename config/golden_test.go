package config

import (
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/bad/*.expected from the current output (review the diff!)")

// TestBadConfigs loads every testdata/bad/NN-name.yaml and compares the
// complete error output with NN-name.expected, line for line: the messages
// are the user interface of check-config, so any change must be deliberate.
func TestBadConfigs(t *testing.T) {
	// The defaults that come from the machine must not leak into the output.
	withMachine(t, "golden.example.net", "/nonexistent/resolv.conf")

	files, err := filepath.Glob("testdata/bad/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no test files in testdata/bad")
	}
	for _, file := range files {
		name := strings.TrimSuffix(filepath.Base(file), ".yaml")
		t.Run(name, func(t *testing.T) {
			cfg, err := Load(file)
			if err == nil {
				t.Fatalf("Load(%s) succeeded, want errors; config: %+v", file, cfg)
			}
			if cfg != nil {
				t.Errorf("Load returned a config together with errors")
			}
			var errs Errors
			if !errors.As(err, &errs) {
				t.Fatalf("Load error is %T, want Errors: %v", err, err)
			}
			for _, e := range errs {
				if e.File != file {
					t.Errorf("error names file %q, want %q as passed to Load", e.File, file)
				}
			}
			got := err.Error() + "\n"
			expFile := strings.TrimSuffix(file, ".yaml") + ".expected"
			if *update {
				if err := os.WriteFile(expFile, []byte(got), 0o644); err != nil {
					t.Fatal(err)
				}
				return
			}
			want, err := os.ReadFile(expFile)
			if err != nil {
				t.Fatalf("%v (run go test -run TestBadConfigs -update to create it)", err)
			}
			if got != string(want) {
				t.Errorf("Load(%s) errors differ\n--- got:\n%s--- want:\n%s", file, got, want)
			}
		})
	}
}

// withMachine pins what the defaults read from the machine. Tests using it
// must not run in parallel.
func withMachine(t *testing.T, hostname, resolvConf string) {
	t.Helper()
	oldHost, oldResolv := osHostname, resolvConfPath
	osHostname = func() (string, error) {
		if hostname == "" {
			return "", errors.New("no hostname")
		}
		return hostname, nil
	}
	resolvConfPath = resolvConf
	t.Cleanup(func() { osHostname, resolvConfPath = oldHost, oldResolv })
}
