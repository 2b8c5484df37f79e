package resilient

import (
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"strings"
	"testing"

	"github.com/ThreeDotsLabs/watermill-amqp/v2/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/core"
)

// go doc on Config shows no fields (a defined type over core.Config): its
// doc lists them, and must list each one core.Config has.
func TestConfigDocListsEveryField(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "resilient.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	var doc string
	for _, d := range f.Decls {
		if g, ok := d.(*ast.GenDecl); ok && g.Tok == token.TYPE && g.Specs[0].(*ast.TypeSpec).Name.Name == "Config" {
			doc = g.Doc.Text()
		}
	}
	fields := reflect.TypeFor[core.Config[amqp.Config]]()
	for i := range fields.NumField() {
		if name := fields.Field(i).Name; !strings.Contains(doc, "\t"+name+" ") {
			t.Errorf("Config's doc does not list core.Config's field %s", name)
		}
	}
}
