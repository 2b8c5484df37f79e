// Package doortest holds the checks both front doors (resilient for
// watermill-amqp v2, resilientv3 for v3) run on themselves.
package doortest

import (
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"strings"
	"testing"
)

// ConfigDocListsEveryField checks that the doc comment of type Config in
// source (a file of the calling package) lists every field of fields: go doc
// on a defined type over core.Config shows no fields, so the doc lists them.
func ConfigDocListsEveryField(t *testing.T, source string, fields reflect.Type) {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), source, nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	for _, d := range f.Decls {
		if g, ok := d.(*ast.GenDecl); ok && g.Tok == token.TYPE && g.Specs[0].(*ast.TypeSpec).Name.Name == "Config" {
			doc = g.Doc.Text()
		}
	}
	if doc == "" {
		t.Fatalf("%s: no doc comment on type Config", source)
	}
	for i := range fields.NumField() {
		if name := fields.Field(i).Name; !strings.Contains(doc, "\t"+name+" ") {
			t.Errorf("Config's doc does not list core.Config's field %s", name)
		}
	}
}
