package smtputil

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// catalogueFile is the one file that builds replies.
const catalogueFile = "codes.go"

// tableRow is a row of the tables in codes.go: "//\tName  code  enhanced  why".
var tableRow = regexp.MustCompile(`^\t([A-Z][A-Za-z0-9]*)\s+(\S+)\s+(\S+)`)

// TestCatalogueTable keeps the tables in codes.go complete and true:
// every catalogue function has a row, every row names a function, and
// every reply code a function builds with Reply (or replyNoCode) is in
// one of its rows.
func TestCatalogueTable(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, catalogueFile, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	rows := map[string][]string{} // function → "code enhanced"
	for _, cg := range f.Comments {
		for _, c := range cg.List {
			if m := tableRow.FindStringSubmatch(strings.TrimPrefix(c.Text, "//")); m != nil {
				rows[m[1]] = append(rows[m[1]], m[2]+" "+m[3])
			}
		}
	}
	funcs := map[string]bool{}
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		// Reply is the builder, not a reply.
		if !ok || fd.Recv != nil || !fd.Name.IsExported() || !returnsReply(fd) || fd.Name.Name == "Reply" {
			continue
		}
		name := fd.Name.Name
		funcs[name] = true
		if len(rows[name]) == 0 {
			t.Errorf("%s builds replies but has no row in the tables of %s", name, catalogueFile)
			continue
		}
		ast.Inspect(fd.Body, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			id, ok := call.Fun.(*ast.Ident)
			if !ok || (id.Name != "Reply" && id.Name != "replyNoCode") {
				return true
			}
			var code string
			if id.Name == "replyNoCode" {
				code = intLit(call.Args[0]) + " -"
			} else {
				code = fmt.Sprintf("%s %s.%s.%s", intLit(call.Args[0]), intLit(call.Args[1]), intLit(call.Args[2]), intLit(call.Args[3]))
			}
			found := false
			for _, r := range rows[name] {
				found = found || r == code
			}
			if !found {
				t.Errorf("%s (%s) sends %s, but its rows say %q", name, fset.Position(call.Pos()), code, rows[name])
			}
			return true
		})
	}
	for name := range rows {
		if !funcs[name] {
			t.Errorf("the tables in %s name %s, which is not a catalogue function", catalogueFile, name)
		}
	}
}

func returnsReply(fd *ast.FuncDecl) bool {
	if fd.Type.Results == nil || len(fd.Type.Results.List) != 1 {
		return false
	}
	star, ok := fd.Type.Results.List[0].Type.(*ast.StarExpr)
	if !ok {
		return false
	}
	sel, ok := star.X.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "SMTPError"
}

func intLit(e ast.Expr) string {
	if b, ok := e.(*ast.BasicLit); ok && b.Kind == token.INT {
		return b.Value
	}
	return "?"
}

// replyLiteral matches a string that is (the start of) a reply line or a
// format for one: "554 5.5.1 …", "220-%s", "%d %d.%d.%d".
var replyLiteral = regexp.MustCompile(`^[2-5][0-9][0-9][ -]|%d[ -]%d\.%d\.%d`)

// goSMTPReplies are go-smtp's own reply values; sending one bypasses the
// catalogue.
var goSMTPReplies = map[string]bool{"ErrAuthFailed": true, "ErrAuthRequired": true, "ErrAuthUnsupported": true, "ErrAuthUnknownMechanism": true}

// TestRepliesOnlyHere fails when a reply is built outside codes.go: an
// *smtp.SMTPError literal, a call of Reply, one of go-smtp's reply values,
// or a reply line written as a string, anywhere in the project's code
// (tests and third_party aside). A reply is added to the catalogue, with
// its row, instead.
func TestRepliesOnlyHere(t *testing.T) {
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	self, err := filepath.Abs(catalogueFile)
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case "third_party", "testdata", ".git", "vendor":
				return filepath.SkipDir
			}
			// The test peer plays the other side of the dialog: its
			// replies are a next hop's, not the relay's.
			if rel, _ := filepath.Rel(root, path); rel == filepath.Join("internal", "testutil") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || path == self {
			return nil
		}
		checked++
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, path)
		smtpNames := map[string]bool{}
		for _, im := range f.Imports {
			if p, _ := strconv.Unquote(im.Path.Value); p == "github.com/emersion/go-smtp" {
				name := "smtp"
				if im.Name != nil {
					name = im.Name.Name
				}
				smtpNames[name] = true
			}
		}
		inSmtputil := f.Name.Name == "smtputil"
		ast.Inspect(f, func(n ast.Node) bool {
			where := func() string { return fmt.Sprintf("%s:%d", rel, fset.Position(n.Pos()).Line) }
			switch n := n.(type) {
			case *ast.CompositeLit:
				if sel, ok := n.Type.(*ast.SelectorExpr); ok && sel.Sel.Name == "SMTPError" {
					t.Errorf("%s: an smtp.SMTPError literal; add a function to smtputil/codes.go", where())
				}
			case *ast.CallExpr:
				switch fn := n.Fun.(type) {
				case *ast.SelectorExpr:
					if x, ok := fn.X.(*ast.Ident); ok && x.Name == "smtputil" && fn.Sel.Name == "Reply" {
						t.Errorf("%s: smtputil.Reply outside the catalogue; add a function to smtputil/codes.go", where())
					}
				case *ast.Ident:
					if inSmtputil && fn.Name == "Reply" {
						t.Errorf("%s: Reply outside %s", where(), catalogueFile)
					}
				}
			case *ast.SelectorExpr:
				if x, ok := n.X.(*ast.Ident); ok && smtpNames[x.Name] && goSMTPReplies[n.Sel.Name] {
					t.Errorf("%s: go-smtp's %s is a reply of the library; use the catalogue's", where(), n.Sel.Name)
				}
			case *ast.BasicLit:
				if n.Kind != token.STRING {
					return true
				}
				if s, err := strconv.Unquote(n.Value); err == nil && replyLiteral.MatchString(s) {
					t.Errorf("%s: %q looks like a reply line; build it in smtputil/codes.go (Line writes one outside go-smtp)", where(), s)
				}
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked < 50 {
		t.Fatalf("only %d files checked under %s: the walk is not looking at the project", checked, root)
	}
}

// TestBuiltinComplete: every situation go-smtp answers itself has its
// reply in the catalogue, with a code that fits it.
func TestBuiltinComplete(t *testing.T) {
	srv := smtp.NewServer(nil)
	srv.Domain = "mx.example.test"
	srv.MaxMessageBytes = 1000
	srv.MaxRecipients = 10
	noCode := map[smtp.Reply]bool{smtp.ReplyGreeting: true, smtp.ReplyHelo: true, smtp.ReplyEhlo: true, smtp.ReplyDataStart: true}
	fallback := LocalError().Message
	for r := smtp.Reply(0); r < smtp.ReplyCount; r++ {
		se := Builtin(srv, r, "ARG")
		if se == nil {
			t.Errorf("Reply %d: nil (go-smtp's own text would go out)", r)
			continue
		}
		if se.Message == fallback && r != smtp.ReplyLocalError {
			t.Errorf("Reply %d is not mapped: it gets the fallback", r)
		}
		if se.Code < 200 || se.Code > 599 || se.Message == "" {
			t.Errorf("Reply %d: %d %q", r, se.Code, se.Message)
		}
		switch {
		case noCode[r]:
			if se.EnhancedCode != smtp.NoEnhancedCode {
				t.Errorf("Reply %d: %d has an enhanced code %v (RFC 2034 section 3)", r, se.Code, se.EnhancedCode)
			}
		case se.EnhancedCode[0] != se.Code/100:
			t.Errorf("Reply %d: enhanced class %v does not match %d", r, se.EnhancedCode, se.Code)
		}
	}
}

// TestMilterReply: a milter's reply goes out as the milter said it,
// checked.
func TestMilterReply(t *testing.T) {
	for _, tt := range []struct {
		code      int
		enh, text string
		want      string // code, enhanced code, text as sent
	}{
		{554, "5.7.1", "Spam message rejected", "554 5.7.1 Spam message rejected"},
		{451, "4.7.1", "Try again later", "451 4.7.1 Try again later"},
		{550, "4.7.1", "class differs", "550 5.7.1 class differs"},
		{550, "5.7.1234", "bad enhanced code", "550 5.7.1 bad enhanced code"},
		{550, "", "no enhanced code", "550 5.7.1 no enhanced code"},
		{553, "5.1.8", "first line\nsecond line", "553 5.1.8 first line\nsecond line"},
		{550, "5.7.1", "evil\r250 OK", "550 5.7.1 evil?250 OK"},
		{550, "5.7.1", "", "550 5.7.1 Message rejected by content scanner rspamd"},
		{450, "", " ", "451 4.7.1 Message deferred by content scanner rspamd, try again later"},
		{250, "2.0.0", "a success is no refusal", "451 4.7.1 Message deferred by content scanner rspamd, try again later"},
		{999, "", "nonsense", "451 4.7.1 Message deferred by content scanner rspamd, try again later"},
	} {
		se := MilterReply(tt.code, tt.enh, tt.text, "rspamd")
		got := fmt.Sprintf("%d %d.%d.%d %s", se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2], se.Message)
		if got != tt.want {
			t.Errorf("MilterReply(%d, %q, %q) = %q, want %q", tt.code, tt.enh, tt.text, got, tt.want)
		}
	}
	long := MilterReply(550, "5.7.1", strings.Repeat("x", 2000)+"\n"+strings.Repeat("line\n", 100), "m")
	lines := strings.Split(long.Message, "\n")
	if len(lines) != maxMilterLines || len(lines[0]) > maxReplyText {
		t.Errorf("a long milter reply: %d lines, first of %d octets", len(lines), len(lines[0]))
	}
}

// TestLine: the replies smtpd writes itself.
func TestLine(t *testing.T) {
	for _, tt := range []struct {
		got, want string
	}{
		{Line(TooManyConnections(), "mx.example.test", false), "421 4.7.0 mx.example.test too many connections, try again later\r\n"},
		{Line(Greeting("mx.example.test"), "", true), "220-mx.example.test ESMTP ready\r\n"},
		{Line(ProtocolViolation("bare newline in a command", "end commands with CRLF"), "mx.example.test", false),
			"554 5.5.1 mx.example.test protocol error: bare newline in a command; end commands with CRLF\r\n"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}
