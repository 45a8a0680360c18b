package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/labstack/echo/v4"

	"github.com/anvilproject/anvil/service"
	"github.com/anvilproject/anvil/web"
)

const testToken = "test-token-0123456789"

var quiet = slog.New(slog.DiscardHandler)

type fakeSessions struct {
	mu        sync.Mutex
	list      []service.SessionInfo
	loggedOut []uint16
}

func (f *fakeSessions) Sessions() []service.SessionInfo {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]service.SessionInfo(nil), f.list...)
}

func (f *fakeSessions) Logout(tsih uint16) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, s := range f.list {
		if s.TSIH == tsih {
			f.loggedOut = append(f.loggedOut, tsih)
			return nil
		}
	}
	return fmt.Errorf("logout %d: %w", tsih, service.ErrNotFound)
}

type env struct {
	t    *testing.T
	dir  string
	svc  *service.Service
	sess *fakeSessions
	srv  *httptest.Server
}

func newEnv(t *testing.T) *env {
	t.Helper()
	dir := t.TempDir()
	svc, err := service.Open(service.Options{DataDir: dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	e := &env{t: t, dir: dir, svc: svc, sess: &fakeSessions{}}
	// TestAuth makes more failed requests than the default budget allows.
	e.srv = httptest.NewServer(New(Options{Service: svc, Sessions: e.sess, UI: web.Handler(), Token: testToken, AuthFailuresPerMinute: 1000}))
	t.Cleanup(func() {
		e.srv.Close()
		if e.svc != nil {
			e.svc.Close()
		}
	})
	return e
}

// do sends a request with the test token; body may be nil, a string (sent
// verbatim as JSON) or a value to marshal.
func (e *env) do(method, path string, body any) (int, []byte) {
	e.t.Helper()
	return e.doAuth(method, path, body, "Bearer "+testToken)
}

func (e *env) doAuth(method, path string, body any, auth string) (int, []byte) {
	e.t.Helper()
	var r io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		r = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			e.t.Fatal(err)
		}
		r = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, e.srv.URL+path, r)
	if err != nil {
		e.t.Fatal(err)
	}
	if r != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		e.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, err := io.ReadAll(resp.Body)
	if err != nil {
		e.t.Fatal(err)
	}
	return resp.StatusCode, out
}

// must sends a request and fails the test unless the status is want; it
// decodes the body into v when v is not nil.
func (e *env) must(method, path string, body any, want int, v any) {
	e.t.Helper()
	code, out := e.do(method, path, body)
	if code != want {
		e.t.Fatalf("%s %s: status %d, want %d: %s", method, path, code, want, out)
	}
	if v != nil {
		if err := json.Unmarshal(out, v); err != nil {
			e.t.Fatalf("%s %s: decode %s: %v", method, path, out, err)
		}
	}
}

func TestAuth(t *testing.T) {
	e := newEnv(t)
	for _, p := range []string{"/api/v1/volumes", "/api/v1/targets", "/api/v1/sessions", "/metrics", "/api/v1/openapi.json", "/api/v1/nonexistent"} {
		for _, auth := range []string{"", "Bearer wrong", "Basic " + testToken, "Bearer " + testToken + "x"} {
			code, body := e.doAuth("GET", p, nil, auth)
			if code != http.StatusUnauthorized {
				t.Errorf("GET %s with %q: status %d, want 401", p, auth, code)
				continue
			}
			var eb ErrorBody
			if err := json.Unmarshal(body, &eb); err != nil || eb.Error == "" {
				t.Errorf("GET %s: 401 body %q is not an error JSON", p, body)
			}
		}
	}
	// A mutating request without the token changes nothing.
	if code, _ := e.doAuth("POST", "/api/v1/volumes", `{"name":"x","size_bytes":1048576}`, ""); code != 401 {
		t.Errorf("unauthenticated create: %d", code)
	}
	if n := len(e.svc.Volumes()); n != 0 {
		t.Errorf("unauthenticated create made %d volumes", n)
	}
	// Health and the UI need no token.
	code, body := e.doAuth("GET", "/api/v1/health", nil, "")
	if code != 200 || !strings.Contains(string(body), `"status":"ok"`) {
		t.Errorf("health: %d %s", code, body)
	}
	code, body = e.doAuth("GET", "/", nil, "")
	if code != 200 || !strings.Contains(strings.ToLower(string(body)), "<!doctype html") {
		t.Errorf("UI: %d %.80s", code, body)
	}
}

func TestVolumeLifecycle(t *testing.T) {
	e := newEnv(t)
	var v Volume
	e.must("POST", "/api/v1/volumes", `{"name":"db1","size_bytes":1073741824}`, 201, &v)
	if v.Name != "db1" || v.SizeBytes != 1<<30 || v.BlockSize != 512 || !v.WriteCache || v.ReadOnly || v.NAA == "" || v.Serial == "" {
		t.Fatalf("created volume: %+v", v)
	}
	if v.Stats == nil {
		t.Errorf("created volume has no stats")
	}
	var list []Volume
	e.must("GET", "/api/v1/volumes", nil, 200, &list)
	if len(list) != 1 || list[0].Name != "db1" {
		t.Fatalf("list: %+v", list)
	}

	e.must("PATCH", "/api/v1/volumes/db1", `{"size_bytes":2147483648}`, 200, &v)
	if v.SizeBytes != 2<<30 {
		t.Errorf("after resize: size %d", v.SizeBytes)
	}
	ev, err := e.svc.EngineVolume("db1")
	if err != nil || ev.Size() != 2<<30 {
		t.Errorf("engine volume size after resize: %v %v", ev.Size(), err)
	}
	// A request with one bad field changes nothing, not even its good ones.
	status, body := e.do("PATCH", "/api/v1/volumes/db1", `{"size_bytes":512,"write_cache":false,"read_only":true}`)
	if status != 400 || !strings.Contains(string(body), `"field":"size_bytes"`) {
		t.Errorf("PATCH with a bad size: %d %s", status, body)
	}
	if rec, _ := e.svc.Volume("db1"); !rec.WriteCache || rec.ReadOnly || rec.SizeBytes != 2<<30 {
		t.Errorf("a refused PATCH changed the volume: %+v", rec)
	}
	if !ev.WriteCache() || ev.ReadOnly() {
		t.Errorf("a refused PATCH changed the engine: wc=%v ro=%v", ev.WriteCache(), ev.ReadOnly())
	}
	e.must("PATCH", "/api/v1/volumes/db1", `{"write_cache":false,"read_only":true}`, 200, &v)
	if v.WriteCache || !v.ReadOnly {
		t.Errorf("after patch: %+v", v)
	}
	if ev.WriteCache() || !ev.ReadOnly() {
		t.Errorf("engine not updated live: wc=%v ro=%v", ev.WriteCache(), ev.ReadOnly())
	}

	// Map it; delete is refused while mapped.
	e.must("POST", "/api/v1/targets", `{"iqn":"iqn.2026-11.io.anvil:db"}`, 201, nil)
	var tg Target
	e.must("POST", "/api/v1/targets/iqn.2026-11.io.anvil:db/luns", `{"lun":0,"volume":"db1"}`, 201, &tg)
	if len(tg.LUNs) != 1 || tg.LUNs[0].Volume != "db1" {
		t.Fatalf("map: %+v", tg)
	}
	e.must("GET", "/api/v1/volumes/db1", nil, 200, &v)
	if len(v.MappedBy) != 1 || v.MappedBy[0] != "iqn.2026-11.io.anvil:db" {
		t.Errorf("mapped_by: %v", v.MappedBy)
	}
	code, body := e.do("DELETE", "/api/v1/volumes/db1", nil)
	if code != 409 || !strings.Contains(string(body), "mapped") {
		t.Errorf("delete while mapped: %d %s", code, body)
	}

	// State survives a restart of the service (the catalog on disk).
	e.srv.Close()
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	svc, err := service.Open(service.Options{DataDir: e.dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc
	e.srv = httptest.NewServer(New(Options{Service: svc, Sessions: e.sess, UI: web.Handler(), Token: testToken}))
	e.must("GET", "/api/v1/volumes/db1", nil, 200, &v)
	if v.SizeBytes != 2<<30 || v.WriteCache || !v.ReadOnly || len(v.MappedBy) != 1 {
		t.Errorf("after restart: %+v", v)
	}

	e.must("DELETE", "/api/v1/volumes/db1?force=true", nil, 204, nil)
	e.must("GET", "/api/v1/targets/iqn.2026-11.io.anvil:db", nil, 200, &tg)
	if len(tg.LUNs) != 0 {
		t.Errorf("forced delete left LUNs: %+v", tg.LUNs)
	}
	e.must("GET", "/api/v1/volumes/db1", nil, 404, nil)
	if _, err := os.Stat(filepath.Join(e.dir, "volumes", "db1.raw")); !os.IsNotExist(err) {
		t.Errorf("data file still there: %v", err)
	}
}

func TestTargetsACLCHAP(t *testing.T) {
	e := newEnv(t)
	const iqn = "iqn.2026-11.io.anvil:t1"
	var tg Target
	e.must("POST", "/api/v1/targets", `{"iqn":"IQN.2026-11.io.anvil:T1","alias":"first"}`, 201, &tg)
	if tg.IQN != iqn || tg.Alias != "first" || tg.ACL.Open || len(tg.ACL.Initiators) != 0 {
		t.Fatalf("created: %+v", tg)
	}
	e.must("PUT", "/api/v1/targets/"+iqn+"/acl", `{"initiators":["iqn.1993-08.org.debian:01:abc"]}`, 200, &tg)
	if len(tg.ACL.Initiators) != 1 || tg.ACL.Open {
		t.Errorf("acl: %+v", tg.ACL)
	}
	lt, ok := e.svc.Target(iqn)
	if !ok || !lt.Allow("iqn.1993-08.org.debian:01:abc") || lt.Allow("iqn.1993-08.org.debian:01:other") {
		t.Errorf("live ACL does not match")
	}
	e.must("PUT", "/api/v1/targets/"+iqn+"/acl", `{"open":true}`, 200, &tg)
	if !tg.ACL.Open || !lt.Allow("iqn.1993-08.org.debian:01:other") {
		t.Errorf("open ACL not applied: %+v", tg.ACL)
	}

	const secret, msecret = "s3cret-s3cret-1", "mutual-s3cret-2"
	e.must("PUT", "/api/v1/targets/"+iqn+"/chap",
		fmt.Sprintf(`{"user":"alice","secret":%q,"mutual_user":"tgt","mutual_secret":%q}`, secret, msecret), 200, &tg)
	if !tg.CHAP.Enabled || tg.CHAP.User != "alice" || !tg.CHAP.Mutual {
		t.Errorf("chap status: %+v", tg.CHAP)
	}
	if c := lt.CHAP(); c == nil || c.Secret != secret || c.MutualSecret != msecret {
		t.Errorf("live CHAP: %+v", c)
	}
	for _, p := range []string{"/api/v1/targets", "/api/v1/targets/" + iqn} {
		_, body := e.do("GET", p, nil)
		if strings.Contains(string(body), secret) || strings.Contains(string(body), msecret) || strings.Contains(string(body), "secret\"") {
			t.Errorf("GET %s leaks a CHAP secret: %s", p, body)
		}
	}
	e.must("DELETE", "/api/v1/targets/"+iqn+"/chap", nil, 204, nil)
	if lt.CHAP() != nil {
		t.Errorf("CHAP not removed")
	}
	// URL-escaped IQN.
	e.must("GET", "/api/v1/targets/iqn.2026-11.io.anvil%3At1", nil, 200, &tg)
	e.must("DELETE", "/api/v1/targets/"+iqn, nil, 204, nil)
	e.must("GET", "/api/v1/targets/"+iqn, nil, 404, nil)
}

// TestErrors checks that every error path answers a 4xx JSON error that
// names the field at fault.
func TestErrors(t *testing.T) {
	e := newEnv(t)
	e.must("POST", "/api/v1/volumes", `{"name":"v","size_bytes":1048576}`, 201, nil)
	e.must("POST", "/api/v1/targets", `{"iqn":"iqn.2026-11.io.anvil:t"}`, 201, nil)
	e.must("POST", "/api/v1/targets/iqn.2026-11.io.anvil:t/luns", `{"lun":3,"volume":"v"}`, 201, nil)
	const tp = "/api/v1/targets/iqn.2026-11.io.anvil:t"
	cases := []struct {
		method, path, body string
		status             int
		field              string
	}{
		{"POST", "/api/v1/volumes", `{"name":"a","size_bytes":1048576,"bogus":1}`, 400, "bogus"},
		{"POST", "/api/v1/volumes", `{"name":"a","size_bytes":0}`, 400, "size_bytes"},
		{"POST", "/api/v1/volumes", `{"name":"a","size_bytes":-512}`, 400, "size_bytes"},
		{"POST", "/api/v1/volumes", `{"name":"a","size_bytes":1000}`, 400, "size_bytes"},
		{"POST", "/api/v1/volumes", `{"name":"a","size_bytes":1152921504606846976}`, 400, "size_bytes"},
		{"POST", "/api/v1/volumes", `{"name":"a","size_bytes":"big"}`, 400, "size_bytes"},
		{"POST", "/api/v1/volumes", `{"name":"a","size_bytes":4096,"block_size":1024}`, 400, "block_size"},
		{"POST", "/api/v1/volumes", `{"name":"../etc","size_bytes":4096}`, 400, "name"},
		{"POST", "/api/v1/volumes", `{"name":"","size_bytes":4096}`, 400, "name"},
		{"POST", "/api/v1/volumes", `{"name":"v","size_bytes":4096}`, 409, ""},
		{"POST", "/api/v1/volumes", `{"name":"a",`, 400, ""},
		{"POST", "/api/v1/volumes", ``, 400, ""},
		{"POST", "/api/v1/volumes", `{"name":"a","size_bytes":4096} {}`, 400, ""},
		{"PATCH", "/api/v1/volumes/v", `{}`, 400, ""},
		{"PATCH", "/api/v1/volumes/v", `{"size_bytes":512}`, 400, "size_bytes"},
		{"PATCH", "/api/v1/volumes/v", `{"size_bytes":1048577}`, 400, "size_bytes"},
		{"PATCH", "/api/v1/volumes/v", `{"size_bytes":1,"name":"x"}`, 400, "name"},
		{"PATCH", "/api/v1/volumes/nope", `{"read_only":true}`, 404, ""},
		{"GET", "/api/v1/volumes/nope", ``, 404, ""},
		{"DELETE", "/api/v1/volumes/nope", ``, 404, ""},
		{"DELETE", "/api/v1/volumes/v", ``, 409, ""},
		{"DELETE", "/api/v1/volumes/v?force=maybe", ``, 400, "force"},
		{"DELETE", "/api/v1/volumes/v?forse=true", ``, 400, "forse"},
		{"GET", "/api/v1/volumes?limit=3", ``, 400, "limit"},
		{"GET", "/api/v1/sessions?target=x&all=1", ``, 400, "all"},
		{"POST", "/api/v1/targets", `{"iqn":"not-an-iqn"}`, 400, "iqn"},
		{"POST", "/api/v1/targets", `{"iqn":"iqn.2026-13.io.anvil:x"}`, 400, "iqn"},
		{"POST", "/api/v1/targets", `{"iqn":"iqn.2026-11.io.anvil:t"}`, 409, ""},
		{"POST", "/api/v1/targets", `{"iqn":"iqn.2026-11.io.anvil:u","acl":{"initiators":["bad"]}}`, 400, "acl.initiators[0]"},
		{"POST", "/api/v1/targets", `{"iqn":"iqn.2026-11.io.anvil:u","acl":{"everyone":true}}`, 400, "everyone"},
		{"POST", tp + "/luns", `{"lun":20000,"volume":"v"}`, 400, "lun"},
		{"POST", tp + "/luns", `{"volume":"v"}`, 400, "lun"},
		{"POST", tp + "/luns", `{"lun":1}`, 400, "volume"},
		{"POST", tp + "/luns", `{"lun":-1,"volume":"v"}`, 400, "lun"},
		{"POST", tp + "/luns", `{"lun":1,"volume":"nope"}`, 404, "volume"},
		{"POST", tp + "/luns", `{"lun":3,"volume":"v"}`, 409, ""},
		{"POST", "/api/v1/targets/iqn.2026-11.io.anvil:none/luns", `{"lun":1,"volume":"v"}`, 404, ""},
		{"DELETE", tp + "/luns/abc", ``, 400, "lun"},
		{"DELETE", tp + "/luns/9", ``, 404, ""},
		{"PUT", tp + "/acl", `{"initiators":["iqn.2026-11.io.anvil:i","nope"]}`, 400, "initiators[1]"},
		{"PUT", tp + "/acl", `{"open":true,"initiators":["iqn.2026-11.io.anvil:i"]}`, 400, "initiators"},
		{"PUT", tp + "/chap", `{"user":"u","secret":"short"}`, 400, "secret"},
		{"PUT", tp + "/chap", `{"user":"","secret":"long-enough-secret"}`, 400, "user"},
		{"PUT", tp + "/chap", `{"user":"u","secret":"long-enough-secret","mutual_user":"m","mutual_secret":"long-enough-secret"}`, 400, "mutual_secret"},
		{"PUT", tp + "/chap", `{"user":"u","secret":"long-enough-secret","mutual_secret":"another-long-secret"}`, 400, "mutual_user"},
		{"DELETE", "/api/v1/sessions/0", ``, 400, "tsih"},
		{"DELETE", "/api/v1/sessions/70000", ``, 400, "tsih"},
		{"DELETE", "/api/v1/sessions/5", ``, 404, ""},
		{"GET", "/api/v1/nope", ``, 404, ""},
		{"PUT", "/api/v1/volumes", `{}`, 405, ""},
	}
	for _, c := range cases {
		var body any
		if c.body != "" {
			body = c.body
		}
		code, out := e.do(c.method, c.path, body)
		if code != c.status {
			t.Errorf("%s %s %s: status %d, want %d: %s", c.method, c.path, c.body, code, c.status, out)
			continue
		}
		var eb ErrorBody
		if err := json.Unmarshal(out, &eb); err != nil || eb.Error == "" {
			t.Errorf("%s %s %s: body %q is not an error JSON", c.method, c.path, c.body, out)
			continue
		}
		if eb.Field != c.field {
			t.Errorf("%s %s %s: field %q, want %q (%s)", c.method, c.path, c.body, eb.Field, c.field, eb.Error)
		}
	}
	// Nothing the failed requests did changed the state.
	var vols []Volume
	e.must("GET", "/api/v1/volumes", nil, 200, &vols)
	if len(vols) != 1 || vols[0].SizeBytes != 1048576 {
		t.Errorf("failed requests changed volumes: %+v", vols)
	}
	var tgts []Target
	e.must("GET", "/api/v1/targets", nil, 200, &tgts)
	if len(tgts) != 1 || len(tgts[0].LUNs) != 1 || tgts[0].CHAP.Enabled || len(tgts[0].ACL.Initiators) != 0 {
		t.Errorf("failed requests changed targets: %+v", tgts)
	}
}

func TestImport(t *testing.T) {
	importDir := t.TempDir()
	e := newEnvWith(t, service.Options{ImportDirs: []string{importDir}}, Options{})
	// 1 MiB + 100 bytes: a data block, a hole, a tail that is not a whole block.
	img := make([]byte, 1<<20+100)
	for i := range 4096 {
		img[i] = byte(i*7 + 1)
	}
	img[len(img)-1] = 0xAB
	req, _ := http.NewRequest("POST", e.srv.URL+"/api/v1/volumes/import?name=img&block_size=512", bytes.NewReader(img))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("upload import: %d %s", resp.StatusCode, body)
	}
	var v Volume
	if err := json.Unmarshal(body, &v); err != nil {
		t.Fatal(err)
	}
	want := int64(len(img)+511) / 512 * 512
	if v.SizeBytes != want {
		t.Errorf("imported size %d, want %d", v.SizeBytes, want)
	}
	got, err := os.ReadFile(v.Path)
	if err != nil {
		t.Fatal(err)
	}
	if int64(len(got)) != want || !bytes.Equal(got[:len(img)], img) || !bytes.Equal(got[len(img):], make([]byte, int(want)-len(img))) {
		t.Errorf("imported data differs from the image")
	}

	// From a path on the daemon's machine.
	src := filepath.Join(importDir, "src.raw")
	if err := os.WriteFile(src, img[:8192], 0o600); err != nil {
		t.Fatal(err)
	}
	e.must("POST", "/api/v1/volumes/import", map[string]any{"name": "img2", "path": src, "block_size": 4096}, 201, &v)
	if v.SizeBytes != 8192 || v.BlockSize != 4096 {
		t.Errorf("path import: %+v", v)
	}
	got, _ = os.ReadFile(v.Path)
	if !bytes.Equal(got, img[:8192]) {
		t.Errorf("path import data differs")
	}
	for _, c := range []struct {
		body  any
		code  int
		field string
	}{
		{map[string]any{"name": "img3", "path": "relative.raw"}, 400, "path"},
		{map[string]any{"name": "img3", "path": "/nonexistent/x.raw"}, 403, "path"},
		{map[string]any{"name": "img3", "path": filepath.Join(importDir, "nonexistent.raw")}, 400, "path"},
		{map[string]any{"name": "img3", "path": t.TempDir()}, 403, "path"},
		{map[string]any{"name": "img", "path": src}, 409, ""},
		{map[string]any{"name": "bad/name", "path": src}, 400, "name"},
		{map[string]any{"name": "img3", "path": src, "block_size": 7}, 400, "block_size"},
	} {
		code, out := e.do("POST", "/api/v1/volumes/import", c.body)
		var eb ErrorBody
		json.Unmarshal(out, &eb)
		if code != c.code || eb.Field != c.field {
			t.Errorf("import %v: %d field %q, want %d %q: %s", c.body, code, eb.Field, c.code, c.field, out)
		}
	}
	// No stray temporary files are left behind by the failures.
	ents, _ := os.ReadDir(filepath.Join(e.dir, "volumes"))
	for _, de := range ents {
		if strings.HasPrefix(de.Name(), ".import-") {
			t.Errorf("leftover %s", de.Name())
		}
	}
}

func TestSessions(t *testing.T) {
	e := newEnv(t)
	e.sess.list = []service.SessionInfo{
		{InitiatorName: "iqn.1993-08.org.debian:01:a", TSIH: 1, Target: "iqn.2026-11.io.anvil:x", InFlight: 2},
		{InitiatorName: "iqn.1993-08.org.debian:01:b", TSIH: 2, Target: "iqn.2026-11.io.anvil:y"},
	}
	var list []Session
	e.must("GET", "/api/v1/sessions", nil, 200, &list)
	if len(list) != 2 || list[0].InFlight != 2 {
		t.Errorf("sessions: %+v", list)
	}
	e.must("GET", "/api/v1/sessions?target=iqn.2026-11.io.anvil:y", nil, 200, &list)
	if len(list) != 1 || list[0].TSIH != 2 {
		t.Errorf("filtered sessions: %+v", list)
	}
	e.must("DELETE", "/api/v1/sessions/2", nil, 202, nil)
	if len(e.sess.loggedOut) != 1 || e.sess.loggedOut[0] != 2 {
		t.Errorf("logout not forwarded: %v", e.sess.loggedOut)
	}
}

func TestMetrics(t *testing.T) {
	e := newEnv(t)
	e.must("POST", "/api/v1/volumes", `{"name":"m1","size_bytes":1048576}`, 201, nil)
	e.must("POST", "/api/v1/targets", `{"iqn":"iqn.2026-11.io.anvil:m"}`, 201, nil)
	e.sess.list = []service.SessionInfo{{TSIH: 1, Target: "iqn.2026-11.io.anvil:m"}}
	code, body := e.do("GET", "/metrics", nil)
	if code != 200 {
		t.Fatalf("metrics: %d", code)
	}
	for _, want := range []string{
		`anvil_volume_size_bytes{volume="m1"} 1.048576e+06`,
		`anvil_volume_ops_total{op="read",volume="m1"} 0`,
		// The engine's log2 layout: the bucket of 2^10 µs.
		`anvil_volume_op_duration_seconds_bucket{op="write",volume="m1",le="0.001024"} 0`,
		`anvil_iscsi_sessions{target="iqn.2026-11.io.anvil:m"} 1`,
		`anvil_api_requests_total{code="201",method="POST",route="/api/v1/volumes"} 1`,
		`anvil_targets 1`,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

func TestResolveToken(t *testing.T) {
	dir := t.TempDir()
	tok, created, err := ResolveToken(dir, "")
	if err != nil || !created || len(tok) != 64 {
		t.Fatalf("first: %q %v %v", tok, created, err)
	}
	st, err := os.Stat(filepath.Join(dir, TokenFile))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("token file mode: %v %v", st.Mode(), err)
	}
	again, created, err := ResolveToken(dir, "")
	if err != nil || created || again != tok {
		t.Errorf("second: %q %v %v", again, created, err)
	}
	dir2 := t.TempDir()
	got, created, err := ResolveToken(dir2, "from-env")
	if err != nil || created || got != "from-env" {
		t.Errorf("configured: %q %v %v", got, created, err)
	}
	if _, err := os.Stat(filepath.Join(dir2, TokenFile)); !os.IsNotExist(err) {
		t.Errorf("configured token still wrote a file: %v", err)
	}
}

// TestOpenAPICoversRoutes checks that every route echo serves is in the
// OpenAPI document with the same method, and the reverse.
func TestOpenAPICoversRoutes(t *testing.T) {
	svc, err := service.Open(service.Options{DataDir: t.TempDir(), Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	defer svc.Close()
	e := newEcho(Options{Service: svc, Token: testToken})
	paths := openAPIDoc["paths"].(obj)
	documented := map[string]bool{}
	for p, item := range paths {
		for m := range item.(obj) {
			if m != "parameters" {
				documented[strings.ToUpper(m)+" "+p] = true
			}
		}
	}
	served := map[string]bool{}
	for _, r := range e.Routes() {
		if r.Path == "/*" {
			continue // the UI's static files
		}
		p := r.Path
		for _, seg := range strings.Split(p, "/") {
			if strings.HasPrefix(seg, ":") {
				p = strings.Replace(p, seg, "{"+seg[1:]+"}", 1)
			}
		}
		key := r.Method + " " + p
		served[key] = true
		if !documented[key] {
			t.Errorf("route %s is not in the OpenAPI document", key)
		}
	}
	for k := range documented {
		if !served[k] {
			t.Errorf("OpenAPI documents %s, which is not served", k)
		}
	}
	if len(served) < 15 {
		t.Errorf("only %d routes found; the route walk is broken", len(served))
	}
	// The served document is the same one, and is valid JSON.
	srv := httptest.NewServer(e)
	defer srv.Close()
	req, _ := http.NewRequest("GET", srv.URL+"/api/v1/openapi.json", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var doc map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil || doc["openapi"] != "3.0.3" {
		t.Errorf("served document: %v %v", doc["openapi"], err)
	}
}

// TestConcurrentChanges runs 32 clients creating, mapping, unmapping and
// deleting volumes and targets at once, then checks that the live state
// is consistent and that a service reopened from the catalog sees exactly
// the same state.
func TestConcurrentChanges(t *testing.T) {
	e := newEnv(t)
	// A shared target every client maps into, to contend on one record.
	e.must("POST", "/api/v1/targets", `{"iqn":"iqn.2026-11.io.anvil:shared","acl":{"open":true}}`, 201, nil)
	const clients, rounds = 32, 6
	var wg sync.WaitGroup
	errs := make(chan string, clients*rounds*8)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				name := fmt.Sprintf("c%d-r%d", c, r)
				iqn := fmt.Sprintf("iqn.2026-11.io.anvil:c%d-r%d", c, r)
				steps := []struct {
					method, path, body string
					want               int
				}{
					{"POST", "/api/v1/volumes", fmt.Sprintf(`{"name":%q,"size_bytes":1048576}`, name), 201},
					{"POST", "/api/v1/targets", fmt.Sprintf(`{"iqn":%q}`, iqn), 201},
					{"POST", "/api/v1/targets/" + iqn + "/luns", fmt.Sprintf(`{"lun":0,"volume":%q}`, name), 201},
					{"POST", "/api/v1/targets/iqn.2026-11.io.anvil:shared/luns", fmt.Sprintf(`{"lun":%d,"volume":%q}`, c*rounds+r, name), 201},
					{"DELETE", "/api/v1/volumes/" + name, "", 409},
				}
				// Half the rounds tear everything down again, one by force.
				if r%2 == 0 {
					steps = append(steps,
						struct {
							method, path, body string
							want               int
						}{"DELETE", fmt.Sprintf("/api/v1/targets/iqn.2026-11.io.anvil:shared/luns/%d", c*rounds+r), "", 204},
						struct {
							method, path, body string
							want               int
						}{"DELETE", "/api/v1/volumes/" + name + "?force=true", "", 204},
						struct {
							method, path, body string
							want               int
						}{"DELETE", "/api/v1/targets/" + iqn, "", 204},
					)
				}
				for _, s := range steps {
					req, _ := http.NewRequest(s.method, e.srv.URL+s.path, strings.NewReader(s.body))
					req.Header.Set("Authorization", "Bearer "+testToken)
					if s.body != "" {
						req.Header.Set("Content-Type", "application/json")
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						errs <- err.Error()
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if resp.StatusCode != s.want {
						errs <- fmt.Sprintf("%s %s: %d, want %d: %s", s.method, s.path, resp.StatusCode, s.want, b)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for msg := range errs {
		t.Error(msg)
	}

	check := func(svc *service.Service, when string) (vols, tgts string) {
		vl := svc.Volumes()
		tl := svc.ListTargets()
		names := map[string]bool{}
		for _, v := range vl {
			names[v.Name] = true
			if _, err := os.Stat(v.Path); err != nil {
				t.Errorf("%s: volume %s has no data file: %v", when, v.Name, err)
			}
		}
		if len(vl) != clients*rounds/2 {
			t.Errorf("%s: %d volumes, want %d", when, len(vl), clients*rounds/2)
		}
		if len(tl) != 1+clients*rounds/2 {
			t.Errorf("%s: %d targets, want %d", when, len(tl), 1+clients*rounds/2)
		}
		for _, tg := range tl {
			lt, ok := svc.Target(tg.IQN)
			if !ok {
				t.Errorf("%s: target %s listed but not resolvable", when, tg.IQN)
				continue
			}
			for _, l := range tg.LUNs {
				if !names[l.Volume] {
					t.Errorf("%s: target %s LUN %d maps missing volume %s", when, tg.IQN, l.LUN, l.Volume)
				}
				if !lt.Tasks().HasLUN(l.LUN) {
					t.Errorf("%s: target %s LUN %d is in the record but not live", when, tg.IQN, l.LUN)
				}
			}
			if tg.IQN == "iqn.2026-11.io.anvil:shared" && len(tg.LUNs) != clients*rounds/2 {
				t.Errorf("%s: shared target has %d LUNs, want %d", when, len(tg.LUNs), clients*rounds/2)
			}
		}
		vj, _ := json.Marshal(vl)
		tj, _ := json.Marshal(tl)
		return string(vj), string(tj)
	}
	v1, t1 := check(e.svc, "live")
	// The data directory holds exactly the live volumes' files: a raw
	// image and an undo FIFO each.
	ents, _ := os.ReadDir(filepath.Join(e.dir, "volumes"))
	if len(ents) != 2*clients*rounds/2 {
		t.Errorf("volumes directory holds %d files, want %d (data + undo per volume)", len(ents), 2*clients*rounds/2)
	}
	e.srv.Close()
	if err := e.svc.Close(); err != nil {
		t.Fatal(err)
	}
	svc, err := service.Open(service.Options{DataDir: e.dir, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	e.svc = svc
	v2, t2 := check(svc, "reopened")
	if v1 != v2 || t1 != t2 {
		t.Errorf("reopened catalog differs from the live state")
	}
}

// TestPromBuckets checks the conversion of the engine's log2 histogram
// into cumulative Prometheus buckets.
func TestPromBuckets(t *testing.T) {
	h := service.Histogram{Counts: make([]uint64, len(service.LatencyBuckets)+1)}
	h.Counts[0] = 2 // < 1µs
	h.Counts[3] = 5 // < 8µs
	h.Counts[len(h.Counts)-1] = 7
	b := promBuckets(h)
	if len(b) != len(h.Counts)-1 {
		t.Fatalf("%d buckets", len(b))
	}
	last := service.LatencyBuckets[len(service.LatencyBuckets)-1]
	if b[1e-6] != 2 || b[4e-6] != 2 || b[8e-6] != 7 || b[last] != 7 {
		t.Errorf("buckets: %v", b)
	}
}

// TestRecover checks that a handler panic becomes a 500 JSON answer for
// that request only.
func TestRecover(t *testing.T) {
	s := &server{log: quiet}
	e := echo.New()
	e.HTTPErrorHandler = s.handleError
	e.Use(s.recover)
	e.GET("/boom", func(echo.Context) error { panic("kaboom") })
	e.GET("/fine", func(c echo.Context) error { return c.String(200, "ok") })
	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest("GET", "/boom", nil))
	var eb ErrorBody
	if rec.Code != 500 || json.Unmarshal(rec.Body.Bytes(), &eb) != nil || !strings.Contains(eb.Error, "kaboom") {
		t.Errorf("panic answer: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest("GET", "/fine", nil))
	if rec.Code != 200 {
		t.Errorf("after a panic: %d", rec.Code)
	}
}
