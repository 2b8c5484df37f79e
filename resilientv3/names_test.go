package resilientv3

import (
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"testing"

	"github.com/ThreeDotsLabs/watermill-amqp/v3/pkg/amqp"

	"github.com/resilientmq/watermill-rabbitmq/core"
	"github.com/resilientmq/watermill-rabbitmq/internal/doortest"
)

// exported returns the exported names a file declares at top level.
func exported(t *testing.T, path string) map[string]bool {
	t.Helper()
	f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]bool{}
	for name, obj := range f.Scope.Objects {
		if ast.IsExported(name) && obj != nil {
			names[name] = true
		}
	}
	return names
}

// A v3 user finds here every name a v2 user finds in package resilient
// (but the one kept there for old code only), so that neither imports core.
func TestOffersTheNamesOfTheV2Door(t *testing.T) {
	v3 := exported(t, "names.go")
	for name := range exported(t, "../resilient/names.go") {
		if name == "ReconnectConfig" { // deprecated there: Backoff
			continue
		}
		if !v3[name] {
			t.Errorf("resilient.%s has no resilientv3.%s", name, name)
		}
	}
}

// go doc on Config shows no fields (a defined type over core.Config): its
// doc lists them, and must list each one core.Config has.
func TestConfigDocListsEveryField(t *testing.T) {
	doortest.ConfigDocListsEveryField(t, "resilientv3.go", reflect.TypeFor[core.Config[amqp.Config]]())
}
