package api

import (
	"reflect"
	"slices"
	"testing"
	"time"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/service"
	"github.com/anvilproject/anvil/target/iscsi"
)

// jsonTags lists the JSON tags (name and options) of t's fields.
func jsonTags(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		if tag, ok := t.Field(i).Tag.Lookup("json"); ok {
			out = append(out, tag)
		}
	}
	return out
}

// TestSchemaMatchesLowerLayers: the API's own types answer with exactly
// the JSON the REST API gave when it served the catalog's and the iSCSI
// package's types, so clients (the CLI, the web UI, scripts) see no
// change.
func TestSchemaMatchesLowerLayers(t *testing.T) {
	for _, c := range []struct {
		name     string
		api, old reflect.Type
		prefix   bool // api adds fields after the old ones
	}{
		{"Session", reflect.TypeFor[Session](), reflect.TypeFor[iscsi.SessionInfo](), false},
		{"SessionParams", reflect.TypeFor[SessionParams](), reflect.TypeFor[iscsi.Params](), false},
		{"LUN", reflect.TypeFor[LUN](), reflect.TypeFor[catalog.LUN](), false},
		{"Volume", reflect.TypeFor[Volume](), reflect.TypeFor[catalog.Volume](), true},
	} {
		got, want := jsonTags(c.api), jsonTags(c.old)
		if c.prefix && len(got) >= len(want) {
			got = got[:len(want)]
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s JSON fields:\n got %v\nwant %v", c.name, got, want)
		}
	}
	// The fields the API adds to a volume.
	extra := jsonTags(reflect.TypeFor[Volume]())[len(jsonTags(reflect.TypeFor[catalog.Volume]())):]
	want := []string{"mapped_by", "error,omitempty", "stats,omitempty", "state", "reason,omitempty", "warnings,omitempty"}
	if !slices.Equal(extra, want) {
		t.Errorf("Volume's own fields: %v, want %v", extra, want)
	}
}

// TestSessionViewCopiesEveryField: the API shows every field the service
// reports for a session.
func TestSessionViewCopiesEveryField(t *testing.T) {
	var si service.SessionInfo
	fillStruct(reflect.ValueOf(&si).Elem())
	v := reflect.ValueOf(sessionView(si))
	var zero []string
	var walk func(v reflect.Value, prefix string)
	walk = func(v reflect.Value, prefix string) {
		for i := 0; i < v.NumField(); i++ {
			f, name := v.Field(i), prefix+v.Type().Field(i).Name
			if f.Kind() == reflect.Struct && f.Type() != reflect.TypeFor[time.Time]() {
				walk(f, name+".")
			} else if f.IsZero() {
				zero = append(zero, name)
			}
		}
	}
	walk(v, "")
	if len(zero) != 0 {
		t.Errorf("fields not copied: %v", zero)
	}
}

// fillStruct sets every field of the struct v to a non-zero value.
func fillStruct(v reflect.Value) {
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("x")
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Int:
			f.SetInt(7)
		case reflect.Uint16, reflect.Uint32:
			f.SetUint(7)
		case reflect.Struct:
			if f.Type() == reflect.TypeFor[time.Time]() {
				f.Set(reflect.ValueOf(time.Unix(1, 0)))
			} else {
				fillStruct(f)
			}
		}
	}
}
