package core

import (
	"reflect"
	"testing"
	"time"

	amqp091 "github.com/rabbitmq/amqp091-go"
)

// Every knob of Config reaches settings: a field added to Config and not
// to newSettings fails here.
func TestNewSettingsCopiesEveryField(t *testing.T) {
	var cfg Config[struct{}]
	v := reflect.ValueOf(&cfg).Elem()
	for i := 0; i < v.NumField(); i++ {
		f, name := v.Field(i), v.Type().Field(i).Name
		switch name {
		case "AMQP":
			continue // replaced by the Wiring
		case "Reconnect":
			cfg.Reconnect = Backoff{InitialWait: time.Second, MaxWait: 2 * time.Second, Multiplier: 3, Jitter: 0.25}
			continue
		case "OnEvent":
			cfg.OnEvent = func(Event) {}
			continue
		case "OnStateChange":
			cfg.OnStateChange = func(StateChange) {}
			continue
		}
		switch f.Kind() {
		case reflect.Bool:
			f.SetBool(true)
		case reflect.String:
			f.SetString("x")
		case reflect.Int, reflect.Int64:
			f.SetInt(int64(7 * time.Second)) // a duration or a count: non-zero
			if f.Type() == reflect.TypeOf(0) {
				f.SetInt(7)
			}
		case reflect.Float64:
			f.SetFloat(0.5)
		case reflect.Slice:
			f.Set(reflect.MakeSlice(f.Type(), 1, 1))
		default:
			t.Fatalf("field %s of kind %s: teach this test to fill it", name, f.Kind())
		}
	}
	s := newSettings(cfg, Wiring{}, "default")
	got := reflect.ValueOf(s.Config)
	for i := 0; i < v.NumField(); i++ {
		name := v.Type().Field(i).Name
		if name == "AMQP" {
			continue
		}
		want, have := v.Field(i), got.FieldByName(name)
		if want.Kind() == reflect.Func {
			if have.IsNil() {
				t.Errorf("%s not copied", name)
			}
			continue
		}
		if !reflect.DeepEqual(want.Interface(), have.Interface()) {
			t.Errorf("%s: set %v, settings has %v", name, want.Interface(), have.Interface())
		}
	}
}

// A watermill-amqp user who named the connection in AmqpConfig's
// properties keeps that name through a switch of door; ConnectionName,
// when set, wins.
func TestConnectionNameFromTheAMQPConfigsProperties(t *testing.T) {
	named := &amqp091.Config{Properties: amqp091.Table{"connection_name": "orders-service"}}
	for _, c := range []struct {
		name string
		cfg  Config[struct{}]
		w    Wiring
		want string
	}{
		{"unset", Config[struct{}]{}, Wiring{}, defaultSubscriberConnectionName},
		{"from the properties", Config[struct{}]{}, Wiring{AMQPConfig: named}, "orders-service"},
		{"ConnectionName wins", Config[struct{}]{ConnectionName: "billing"}, Wiring{AMQPConfig: named}, "billing"},
		{"properties without a name", Config[struct{}]{}, Wiring{AMQPConfig: &amqp091.Config{Properties: amqp091.Table{"product": "x"}}}, defaultSubscriberConnectionName},
	} {
		if got := newSettings(c.cfg, c.w, defaultSubscriberConnectionName).ConnectionName; got != c.want {
			t.Errorf("%s: ConnectionName %q, want %q", c.name, got, c.want)
		}
	}
}
