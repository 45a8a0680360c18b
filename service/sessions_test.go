package service

import (
	"reflect"
	"testing"
	"time"

	"github.com/anvilproject/anvil/target/iscsi"
)

// fill sets every field of the struct v points to a non-zero value.
func fill(v reflect.Value) {
	for i := 0; i < v.NumField(); i++ {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("x")
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Int, reflect.Uint16, reflect.Uint32:
			if f.CanInt() {
				f.SetInt(7)
			} else {
				f.SetUint(7)
			}
		case reflect.Struct:
			if f.Type() == reflect.TypeFor[time.Time]() {
				f.Set(reflect.ValueOf(time.Unix(1, 0)))
			} else {
				fill(f)
			}
		}
	}
}

// zeroFields names the fields of v left at their zero value.
func zeroFields(v reflect.Value, prefix string) []string {
	var out []string
	for i := 0; i < v.NumField(); i++ {
		f, name := v.Field(i), prefix+v.Type().Field(i).Name
		if f.Kind() == reflect.Struct && f.Type() != reflect.TypeFor[time.Time]() {
			out = append(out, zeroFields(f, name+".")...)
		} else if f.IsZero() {
			out = append(out, name)
		}
	}
	return out
}

// TestSessionInfoCopiesEveryField: the adapter over the iSCSI portal drops
// nothing the API shows.
func TestSessionInfoCopiesEveryField(t *testing.T) {
	var si iscsi.SessionInfo
	fill(reflect.ValueOf(&si).Elem())
	if z := zeroFields(reflect.ValueOf(sessionInfo(si)), ""); len(z) != 0 {
		t.Errorf("fields not copied: %v", z)
	}
}
