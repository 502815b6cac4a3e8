// The tests here keep docs/flow.md (the newcomer's map) and internal/README.md
// in step with the code, and hold the import rules flow.md states. They live
// beside the file they check, in a package of tests only, so that no runtime
// or helper package exists just for them; test.sh runs them with ./....
package docs

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// goPackage is what the tests read of `go list -json`: Imports and Deps
// are those of the package's non-test files.
type goPackage struct {
	ImportPath string
	GoFiles    []string
	Imports    []string
	Deps       []string
	Module     *struct{ Path string }
}

// listPackages runs `go list -json ./...` at the module root (the parent
// of docs/) and returns the packages by their path inside the module
// ("inbound", "internal/anvil"), and the module path.
func listPackages(t *testing.T) (map[string]goPackage, string) {
	t.Helper()
	cmd := exec.Command("go", "list", "-json", "./...")
	cmd.Dir = ".."
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -json ./...: %v\n%s", err, stderr.String())
	}
	pkgs := map[string]goPackage{}
	module := ""
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p goPackage
		if err := dec.Decode(&p); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			t.Fatalf("reading go list output: %v", err)
		}
		if p.Module == nil {
			t.Fatalf("go list: %s has no module", p.ImportPath)
		}
		module = p.Module.Path
		pkgs[rel(module, p.ImportPath)] = p
	}
	if len(pkgs) == 0 {
		t.Fatal("go list found no package")
	}
	return pkgs, module
}

// rel is path inside the module, or "" for a package outside it.
func rel(module, path string) string {
	if path == module {
		return "."
	}
	if r, ok := strings.CutPrefix(path, module+"/"); ok {
		return r
	}
	return ""
}

func under(path, dir string) bool { return path == dir || strings.HasPrefix(path, dir+"/") }

// tableNames returns the first backquoted word of each table row in the
// section of a Markdown file that starts with heading.
func tableNames(t *testing.T, file, heading string) []string {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	row := regexp.MustCompile("^\\|\\s*`([^`]+)`")
	var names []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") {
			in = strings.TrimSpace(line) == heading
			continue
		}
		if m := row.FindStringSubmatch(line); in && m != nil {
			names = append(names, m[1])
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(names) == 0 {
		t.Fatalf("%s: no table rows under %q", file, heading)
	}
	return names
}

// TestFlowNamesEveryPackage: every package with non-test Go files outside
// test/ has a row in flow.md's package table, no row names a package that
// is gone, and every copied module in third_party/ has its row too.
func TestFlowNamesEveryPackage(t *testing.T) {
	pkgs, _ := listPackages(t)
	rows := tableNames(t, "flow.md", "## Packages")
	for path, p := range pkgs {
		if len(p.GoFiles) == 0 || under(path, "test") {
			continue // tests only (docs/, test/e2e, …): nothing to find one's way in
		}
		if !slices.Contains(rows, path) {
			t.Errorf("docs/flow.md: package %s has no row in the table under \"## Packages\"", path)
		}
	}
	third, err := os.ReadDir("../third_party")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range third {
		if e.IsDir() && !slices.Contains(rows, "third_party/"+e.Name()) {
			t.Errorf("docs/flow.md: third_party/%s has no row in the package table", e.Name())
		}
	}
	for _, r := range rows {
		if _, ok := pkgs[r]; !ok && !under(r, "third_party") {
			t.Errorf("docs/flow.md: the package table names %s, which is no package of the module", r)
		}
	}
}

// roles are the packages that decide what a listener accepts and deliver
// it, with the command above them and the SMTP plumbing they share.
func isRole(path string) bool {
	return path == "inbound" || path == "outbound" || path == "smtpd" || under(path, "cmd")
}

// TestImportRules holds the layering flow.md describes ("Layers"), on the
// non-test imports of every package.
func TestImportRules(t *testing.T) {
	pkgs, module := listPackages(t)
	ours := func(deps []string) []string {
		var out []string
		for _, d := range deps {
			if r := rel(module, d); r != "" {
				out = append(out, r)
			}
		}
		return out
	}
	for path, p := range pkgs {
		imports := ours(p.Imports)
		// The two roles share only what lies below them: a change to
		// one must never change what the other accepts or sends. Deps
		// (transitive), so that no third package carries one into the
		// other.
		for a, b := range map[string]string{"inbound": "outbound", "outbound": "inbound"} {
			if path == a && slices.Contains(ours(p.Deps), b) {
				t.Errorf("%s depends on %s: the roles never import each other (docs/flow.md, Layers)", a, b)
			}
		}
		for _, imp := range imports {
			// The command turns the configuration into options; below it
			// nothing reads YAML structs, so every package can be built
			// and tested from plain values. Commands outside cmd/ (a Go
			// tool under bench/, none today) and test helpers under test/
			// may do as cmd does.
			if imp == "config" && !under(path, "cmd") && !under(path, "bench") && !under(path, "test") {
				t.Errorf("%s imports config: only cmd/... does (docs/flow.md, Layers)", path)
			}
			// Nothing below the roles knows them: policy leaves
			// (tlspolicy, dkim, encrypt, attach, downgrade, dsn, dnsutil,
			// smtputil, authres, milter), queue, config and internal/*
			// return verdicts and values, and the roles turn them into
			// replies and deliveries.
			if isRole(imp) && !isRole(path) {
				t.Errorf("%s imports %s: nothing below the roles imports cmd, inbound, outbound or smtpd (docs/flow.md, Layers)", path, imp)
			}
			// smtpd is the plumbing both roles stand on; it reaches a role
			// only through the smtpd.Role interface.
			if path == "smtpd" && (imp == "inbound" || imp == "outbound") {
				t.Errorf("smtpd imports %s: the plumbing knows the roles only as smtpd.Role (docs/flow.md, Layers)", imp)
			}
		}
		// The spool is the one thing that must never lose a message; it
		// stands alone so that nothing else's change can reach it.
		if path == "queue" && len(imports) > 0 {
			t.Errorf("queue imports %s: queue imports no package of this module (docs/flow.md, Layers)", strings.Join(imports, ", "))
		}
	}
}

// TestInternalREADME: internal/README.md says of every internal package
// whether it is runtime code or a test helper, and the relay binary links
// no test helper (nor the testing package they use).
func TestInternalREADME(t *testing.T) {
	pkgs, module := listPackages(t)
	f, err := os.ReadFile("../internal/README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\|\\s*`([^`]+)`\\s*\\|\\s*(runtime|test helper)\\s*\\|")
	kind := map[string]string{}
	for _, m := range row.FindAllStringSubmatch(string(f), -1) {
		kind[m[1]] = m[2]
	}
	for path := range pkgs {
		if under(path, "internal") && kind[path] == "" {
			t.Errorf("internal/README.md: %s has no row saying \"runtime\" or \"test helper\"", path)
		}
	}
	for path := range kind {
		if _, ok := pkgs[path]; !ok {
			t.Errorf("internal/README.md names %s, which is no package of the module", path)
		}
	}
	bin, ok := pkgs["cmd/securerelay"]
	if !ok {
		t.Fatal("no cmd/securerelay package")
	}
	for _, d := range bin.Deps {
		if kind[rel(module, d)] == "test helper" || d == "testing" {
			t.Errorf("cmd/securerelay links %s, which is test code (internal/README.md)", d)
		}
	}
}
