package api

import (
	"strings"
	"testing"
)

func TestDiscoveryCHAPAPI(t *testing.T) {
	e := newEnv(t)
	var st CHAPStatus
	e.must("GET", "/api/v1/discovery/chap", nil, 200, &st)
	if st.Enabled {
		t.Fatalf("fresh daemon: %+v", st)
	}
	hooks := 0
	e.svc.SetAccessHook(func() { hooks++ })
	const secret = "discovery-secret-1"
	_, body := e.do("PUT", "/api/v1/discovery/chap", `{"user":"disco","secret":"`+secret+`","mutual_user":"tgt","mutual_secret":"mutual-secret-22"}`)
	if strings.Contains(string(body), secret) {
		t.Fatalf("response leaks the secret: %s", body)
	}
	e.must("GET", "/api/v1/discovery/chap", nil, 200, &st)
	if !st.Enabled || st.User != "disco" || !st.Mutual || st.MutualUser != "tgt" {
		t.Fatalf("status %+v", st)
	}
	if c := e.svc.DiscoveryCHAP(); c == nil || c.Secret != secret {
		t.Fatalf("live discovery CHAP %+v", c)
	}
	if hooks != 1 {
		t.Fatalf("access hook called %d times", hooks)
	}
	for _, c := range []struct{ body, field string }{
		{`{"user":"u","secret":"short"}`, "secret"},
		{`{"user":"","secret":"long-enough-secret"}`, "user"},
		{`{"user":"u","secret":"long-enough-secret","extra":1}`, "extra"},
	} {
		code, out := e.do("PUT", "/api/v1/discovery/chap", c.body)
		if code != 400 || !strings.Contains(string(out), `"field":"`+c.field+`"`) {
			t.Errorf("PUT %s: %d %s, want 400 naming %s", c.body, code, out, c.field)
		}
	}
	e.must("DELETE", "/api/v1/discovery/chap", nil, 204, nil)
	e.must("GET", "/api/v1/discovery/chap", nil, 200, &st)
	if st.Enabled || e.svc.DiscoveryCHAP() != nil {
		t.Fatalf("not removed: %+v", st)
	}
}

func TestInitiatorCHAPAPI(t *testing.T) {
	e := newEnv(t)
	const iqn = "iqn.2026-11.io.anvil:t1"
	const ini = "iqn.1993-08.org.debian:01:abc"
	e.must("POST", "/api/v1/targets", `{"iqn":"`+iqn+`","acl":{"open":true}}`, 201, nil)
	var tg Target
	const secret = "initiator-secret-1"
	e.must("PUT", "/api/v1/targets/"+iqn+"/initiators/"+strings.ReplaceAll(ini, ":", "%3A")+"/chap",
		`{"user":"alice","secret":"`+secret+`"}`, 200, &tg)
	if len(tg.InitiatorCHAP) != 1 || tg.InitiatorCHAP[0].Initiator != ini || tg.InitiatorCHAP[0].User != "alice" || !tg.InitiatorCHAP[0].Enabled || tg.CHAP.Enabled {
		t.Fatalf("target %+v", tg)
	}
	lt, _ := e.svc.Target(iqn)
	if c := lt.Credentials(ini); !c.Required || c.Secret != secret {
		t.Fatalf("live credentials %+v", c)
	}
	if c := lt.Credentials("iqn.1993-08.org.debian:01:other"); c.Required {
		t.Fatalf("other initiator needs CHAP: %+v", c)
	}
	_, body := e.do("GET", "/api/v1/targets/"+iqn, nil)
	if strings.Contains(string(body), secret) {
		t.Fatalf("GET leaks the secret: %s", body)
	}
	for _, c := range []struct {
		path, body string
		code       int
		field      string
	}{
		{"/api/v1/targets/" + iqn + "/initiators/nope/chap", `{"user":"u","secret":"long-enough-secret"}`, 400, "initiator"},
		{"/api/v1/targets/" + iqn + "/initiators/" + ini + "/chap", `{"user":"u","secret":"short"}`, 400, "secret"},
		{"/api/v1/targets/iqn.2026-11.io.anvil:none/initiators/" + ini + "/chap", `{"user":"u","secret":"long-enough-secret"}`, 404, ""},
	} {
		code, out := e.do("PUT", c.path, c.body)
		if code != c.code || (c.field != "" && !strings.Contains(string(out), `"field":"`+c.field+`"`)) {
			t.Errorf("PUT %s %s: %d %s", c.path, c.body, code, out)
		}
	}
	e.must("DELETE", "/api/v1/targets/"+iqn+"/initiators/"+ini+"/chap", nil, 204, nil)
	e.must("DELETE", "/api/v1/targets/"+iqn+"/initiators/"+ini+"/chap", nil, 404, nil)
	e.must("GET", "/api/v1/targets/"+iqn, nil, 200, &tg)
	if len(tg.InitiatorCHAP) != 0 || lt.Credentials(ini).Required {
		t.Fatalf("not removed: %+v", tg)
	}
}

// Changing a target's ACL or CHAP, or deleting it, through the API runs the
// access hook that drops revoked sessions.
func TestAccessChangesRunHook(t *testing.T) {
	e := newEnv(t)
	const iqn = "iqn.2026-11.io.anvil:t1"
	e.must("POST", "/api/v1/targets", `{"iqn":"`+iqn+`","acl":{"open":true}}`, 201, nil)
	hooks := 0
	e.svc.SetAccessHook(func() { hooks++ })
	e.must("PUT", "/api/v1/targets/"+iqn+"/acl", `{"initiators":["iqn.1993-08.org.debian:01:abc"]}`, 200, nil)
	e.must("PUT", "/api/v1/targets/"+iqn+"/chap", `{"user":"u","secret":"long-enough-secret"}`, 200, nil)
	e.must("DELETE", "/api/v1/targets/"+iqn+"/chap", nil, 204, nil)
	e.must("DELETE", "/api/v1/targets/"+iqn, nil, 204, nil)
	if hooks != 4 {
		t.Fatalf("access hook called %d times, want 4", hooks)
	}
}
