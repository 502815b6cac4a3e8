package inbound

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The pipeline table is the one list of the inbound checks: each name
// once per step, and every check a refusal of this package names is a
// row's name or one of its also names, so that a new check cannot run
// without a row saying where.
func TestPipelineNamesEveryCheck(t *testing.T) {
	known := map[string]bool{
		// Our own failure during the content stages, no check.
		"local_error": true,
	}
	for step, stages := range map[string][]stage{"EHLO": ehloStages, "MAIL": mailStages, "RCPT": rcptStages, "DATA": dataStages} {
		seen := map[string]bool{}
		for _, s := range stages {
			for _, n := range append([]string{s.name}, s.also...) {
				if seen[n] {
					t.Errorf("%s: %q named twice", step, n)
				}
				seen[n], known[n] = true, true
			}
		}
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	literal := regexp.MustCompile(`(?:smtpd\.Refuse|r\.act)\("([a-z_]+)"`)
	found := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range literal.FindAllStringSubmatch(string(b), -1) {
			found++
			if !known[m[1]] {
				t.Errorf("%s: refusal under check %q, which no row of pipeline.go names", f, m[1])
			}
		}
	}
	if found == 0 {
		t.Fatal("no refusal found: the pattern no longer matches the code")
	}
}
