package api

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// forbiddenImports are the layers below the service: the API reaches them
// only through package service, so that their types, file paths and
// sentinels never become the REST schema.
var forbiddenImports = []string{
	"github.com/anvilproject/anvil/catalog",
	"github.com/anvilproject/anvil/engine",
	"github.com/anvilproject/anvil/target",
	"github.com/anvilproject/anvil/web",
}

// pendingImports are known exceptions, by file; none are left.
var pendingImports = map[string]string{}

// TestImportsOnlyService fails if a production file of package api imports
// the catalog, the engine, a target front end or the web UI.
func TestImportsOnlyService(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		af, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatalf("parse %s: %v", f, err)
		}
		checked++
		for _, is := range af.Imports {
			p, _ := strconv.Unquote(is.Path.Value)
			for _, bad := range forbiddenImports {
				if (p == bad || strings.HasPrefix(p, bad+"/")) && pendingImports[f] != p {
					t.Errorf("%s imports %s: the API must go through package service", f, p)
				}
			}
		}
	}
	if checked == 0 {
		t.Fatal("no production files found")
	}
}
