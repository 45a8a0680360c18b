// Package apitest drives a real Anvil daemon through its REST API and CLI,
// and checks the effect with real iSCSI initiators (libiscsi's tools, plus
// a minimal in-test initiator where a session must outlive an API call).
package apitest

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/test/harness"
)

// daemon is a started daemon with an API client.
type daemon struct {
	*harness.Daemon
	t     *testing.T
	token string
}

func start(t *testing.T, o harness.Options) *daemon {
	t.Helper()
	d := &daemon{Daemon: harness.Start(t, o), t: t}
	d.waitAPI()
	return d
}

// waitAPI waits for the API to answer health and reads the token.
func (d *daemon) waitAPI() {
	d.t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		resp, err := http.Get("http://" + d.API + "/api/v1/health")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		if time.Now().After(deadline) {
			d.t.Fatalf("API on %s did not become healthy: %v\n%s", d.API, err, d.Log())
		}
		time.Sleep(50 * time.Millisecond)
	}
	b, err := os.ReadFile(filepath.Join(d.DataDir, "api.token"))
	if err != nil {
		d.t.Fatalf("token file: %v", err)
	}
	d.token = strings.TrimSpace(string(b))
}

func (d *daemon) restart() {
	d.t.Helper()
	if err := d.Stop(); err != nil {
		d.t.Fatal(err)
	}
	d.Restart()
	d.waitAPI()
}

// call sends a JSON request with the token and returns status and body.
func (d *daemon) call(method, path, body string) (int, []byte) {
	d.t.Helper()
	return d.callAuth(method, path, body, "Bearer "+d.token)
}

func (d *daemon) callAuth(method, path, body, auth string) (int, []byte) {
	d.t.Helper()
	var r io.Reader
	if body != "" {
		r = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, "http://"+d.API+path, r)
	if err != nil {
		d.t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	if auth != "" {
		req.Header.Set("Authorization", auth)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		d.t.Fatal(err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, out
}

func (d *daemon) must(method, path, body string, want int, v any) {
	d.t.Helper()
	code, out := d.call(method, path, body)
	if code != want {
		d.t.Fatalf("%s %s %s: status %d, want %d: %s", method, path, body, code, want, out)
	}
	if v != nil {
		if err := json.Unmarshal(out, v); err != nil {
			d.t.Fatalf("%s %s: decode %s: %v", method, path, out, err)
		}
	}
}

// wantError checks a 4xx JSON error naming field.
func (d *daemon) wantError(method, path, body string, status int, field string) {
	d.t.Helper()
	code, out := d.call(method, path, body)
	var eb struct{ Error, Field string }
	if err := json.Unmarshal(out, &eb); err != nil || eb.Error == "" {
		d.t.Errorf("%s %s %s: body %q is not an error JSON", method, path, body, out)
		return
	}
	if code != status || eb.Field != field {
		d.t.Errorf("%s %s %s: %d field %q, want %d field %q (%s)", method, path, body, code, eb.Field, status, field, eb.Error)
	}
}

func run(t *testing.T, name string, args ...string) (string, error) {
	t.Helper()
	return harness.Run(context.Background(), 30*time.Second, name, args...)
}

const dbIQN = "iqn.2026-11.io.anvil:db"

// TestVolumeLifecycleWithInitiators is the operator story end to end:
// create and map through the API, see it from libiscsi, resize with a
// session open and get the unit attention, restart and find it all again.
func TestVolumeLifecycleWithInitiators(t *testing.T) {
	harness.NeedTool(t, "iscsi-ls", "iscsi-readcapacity16")
	d := start(t, harness.Options{Args: []string{"--no-demo"}})

	st, err := os.Stat(filepath.Join(d.DataDir, "api.token"))
	if err != nil || st.Mode().Perm() != 0o600 || len(d.token) < 32 {
		t.Fatalf("api.token: %v %v (len %d)", st.Mode(), err, len(d.token))
	}
	if code, _ := d.callAuth("GET", "/api/v1/volumes", "", ""); code != 401 {
		t.Errorf("no token: %d, want 401", code)
	}
	if code, _ := d.callAuth("POST", "/api/v1/volumes", `{"name":"x","size_bytes":1048576}`, "Bearer nope"); code != 401 {
		t.Errorf("bad token: %d, want 401", code)
	}

	d.must("POST", "/api/v1/volumes", `{"name":"db1","size_bytes":1073741824}`, 201, nil)
	d.must("POST", "/api/v1/targets", `{"iqn":"`+dbIQN+`","acl":{"open":true}}`, 201, nil)
	d.must("POST", "/api/v1/targets/"+dbIQN+"/luns", `{"lun":0,"volume":"db1"}`, 201, nil)

	out, err := run(t, "iscsi-ls", "-s", "iscsi://"+d.ISCSI)
	if err != nil || !strings.Contains(out, "Target:"+dbIQN) || !regexp.MustCompile(`Lun:0\s+Type:DIRECT_ACCESS`).MatchString(out) {
		t.Fatalf("iscsi-ls does not show the new LUN: %v\n%s", err, out)
	}
	lunURL := "iscsi://" + d.ISCSI + "/" + dbIQN + "/0"
	if out, err := run(t, "iscsi-readcapacity16", "-s", lunURL); err != nil || strings.TrimSpace(out) != "1073741824" {
		t.Fatalf("capacity before resize: %v %q", err, out)
	}

	// A session that lives across the resize.
	ini, err := dialInitiator(d.ISCSI, "iqn.2026-11.io.anvil.test:resize", dbIQN)
	if err != nil {
		t.Fatalf("login: %v\n%s", err, d.Log())
	}
	defer ini.Close()
	for i := 0; ; i++ { // clear the power-on unit attention of a new nexus
		r, err := ini.testUnitReady()
		if err != nil {
			t.Fatal(err)
		}
		if r.status == 0 {
			break
		}
		if i > 5 {
			t.Fatalf("TEST UNIT READY keeps failing: %+v", r)
		}
	}
	// Some reads so the volume's statistics move.
	for range 4 {
		cdb := make([]byte, 16)
		cdb[0] = 0x88 // READ(16)
		binary.BigEndian.PutUint32(cdb[10:14], 8)
		if r, err := ini.command(cdb, 8*512); err != nil || r.status != 0 || len(r.data) != 4096 {
			t.Fatalf("READ(16): %v %+v", err, r)
		}
	}

	var vol struct {
		SizeBytes int64 `json:"size_bytes"`
		Stats     struct {
			Read struct{ Ops, Bytes uint64 }
		}
	}
	d.must("PATCH", "/api/v1/volumes/db1", `{"size_bytes":2147483648}`, 200, &vol)
	if vol.SizeBytes != 2<<30 {
		t.Errorf("PATCH answered size %d", vol.SizeBytes)
	}
	if vol.Stats.Read.Ops < 4 || vol.Stats.Read.Bytes < 4*4096 {
		t.Errorf("volume stats did not count the reads: %+v", vol.Stats)
	}
	r, err := ini.testUnitReady()
	if err != nil {
		t.Fatal(err)
	}
	if r.status != 0x02 || r.key != 0x6 || r.asc != 0x2a || r.ascq != 0x09 {
		t.Errorf("after resize TEST UNIT READY = status %#x sense %x/%02x/%02x, want CHECK CONDITION UNIT ATTENTION 2A/09", r.status, r.key, r.asc, r.ascq)
	}
	blocks, bs, r, err := ini.readCapacity16()
	if err != nil || blocks*uint64(bs) != 2<<30 {
		t.Errorf("READ CAPACITY(16) in the old session: %d blocks of %d (%+v, %v)", blocks, bs, r, err)
	}
	if out, err := run(t, "iscsi-readcapacity16", "-s", lunURL); err != nil || strings.TrimSpace(out) != "2147483648" {
		t.Errorf("libiscsi capacity after resize: %v %q", err, out)
	}

	// Metrics carry the volume.
	code, body := d.call("GET", "/metrics", "")
	if code != 200 || !strings.Contains(string(body), `anvil_volume_size_bytes{volume="db1"} 2.147483648e+09`) ||
		!regexp.MustCompile(`anvil_volume_ops_total\{op="read",volume="db1"\} [1-9]`).Match(body) ||
		!regexp.MustCompile(`anvil_iscsi_sessions\{target="`+regexp.QuoteMeta(dbIQN)+`"\} [1-9]`).Match(body) {
		t.Errorf("metrics (%d) lack the volume, its reads or the session:\n%s", code, grepLines(body, "anvil_"))
	}
	ini.Close()

	// Refused while mapped, with a JSON error.
	d.wantError("DELETE", "/api/v1/volumes/db1", "", 409, "")
	d.wantError("PATCH", "/api/v1/volumes/db1", `{"size_bytes":1024}`, 400, "size_bytes")
	d.wantError("POST", "/api/v1/volumes", `{"name":"db2","size_bytes":1073741824,"colour":"red"}`, 400, "colour")
	d.wantError("POST", "/api/v1/targets/"+dbIQN+"/luns", `{"lun":1,"volume":"missing"}`, 404, "volume")

	// Everything survives a restart, including the token.
	tok := d.token
	d.restart()
	if d.token != tok {
		t.Errorf("token changed across restart")
	}
	var tg struct {
		LUNs []struct {
			LUN    int
			Volume string
		}
		ACL struct{ Open bool }
	}
	d.must("GET", "/api/v1/targets/"+dbIQN, "", 200, &tg)
	if len(tg.LUNs) != 1 || tg.LUNs[0].Volume != "db1" || !tg.ACL.Open {
		t.Errorf("target after restart: %+v", tg)
	}
	if out, err := run(t, "iscsi-readcapacity16", "-s", lunURL); err != nil || strings.TrimSpace(out) != "2147483648" {
		t.Errorf("capacity after restart: %v %q", err, out)
	}

	// Unmap, then delete works and the initiator no longer sees the LUN.
	d.must("DELETE", "/api/v1/targets/"+dbIQN+"/luns/0", "", 204, nil)
	d.must("DELETE", "/api/v1/volumes/db1", "", 204, nil)
	out, _ = run(t, "iscsi-ls", "-s", "iscsi://"+d.ISCSI)
	if strings.Contains(out, "Lun:0") {
		t.Errorf("LUN still visible after unmap:\n%s", out)
	}
}

func grepLines(b []byte, prefix string) string {
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestACL checks that an initiator not in a target's ACL neither discovers
// the target nor logs in to it, while a listed one does both.
func TestACL(t *testing.T) {
	harness.NeedTool(t, "iscsi-ls", "iscsi-inq")
	d := start(t, harness.Options{Args: []string{"--no-demo"}})
	const allowed, other = "iqn.2026-11.io.anvil.test:allowed", "iqn.2026-11.io.anvil.test:other"
	d.must("POST", "/api/v1/volumes", `{"name":"acl1","size_bytes":16777216}`, 201, nil)
	d.must("POST", "/api/v1/targets", `{"iqn":"`+dbIQN+`"}`, 201, nil)
	d.must("POST", "/api/v1/targets/"+dbIQN+"/luns", `{"lun":0,"volume":"acl1"}`, 201, nil)
	url := "iscsi://" + d.ISCSI + "/" + dbIQN + "/0"

	// Empty ACL: nobody.
	if out, err := run(t, "iscsi-inq", "-i", allowed, url); err == nil {
		t.Errorf("login with an empty ACL succeeded:\n%s", out)
	}
	d.must("PUT", "/api/v1/targets/"+dbIQN+"/acl", `{"initiators":["`+allowed+`"]}`, 200, nil)
	if out, err := run(t, "iscsi-inq", "-i", allowed, url); err != nil || !strings.Contains(out, "ANVIL") {
		t.Errorf("allowed initiator cannot log in: %v\n%s", err, out)
	}
	if out, err := run(t, "iscsi-inq", "-i", other, url); err == nil {
		t.Errorf("initiator outside the ACL logged in:\n%s", out)
	}
	if out, _ := run(t, "iscsi-ls", "-i", other, "iscsi://"+d.ISCSI); strings.Contains(out, dbIQN) {
		t.Errorf("initiator outside the ACL discovered the target:\n%s", out)
	}
	if out, _ := run(t, "iscsi-ls", "-i", allowed, "iscsi://"+d.ISCSI); !strings.Contains(out, dbIQN) {
		t.Errorf("allowed initiator does not discover the target:\n%s", out)
	}
	// Opening the target admits everyone, live.
	d.must("PUT", "/api/v1/targets/"+dbIQN+"/acl", `{"open":true}`, 200, nil)
	if out, err := run(t, "iscsi-inq", "-i", other, url); err != nil {
		t.Errorf("open target refused a login: %v\n%s", err, out)
	}
	d.wantError("PUT", "/api/v1/targets/"+dbIQN+"/acl", `{"initiators":["not an iqn"]}`, 400, "initiators[0]")
}

// TestSessions lists a live session and forces it to log out.
func TestSessions(t *testing.T) {
	d := start(t, harness.Options{})
	const name = "iqn.2026-11.io.anvil.test:sess"
	ini, err := dialInitiator(d.ISCSI, name, harness.DemoIQN)
	if err != nil {
		t.Fatalf("login to the demo target: %v", err)
	}
	defer ini.Close()
	var list []struct {
		InitiatorName string `json:"initiator_name"`
		TSIH          uint16 `json:"tsih"`
		Target        string `json:"target"`
		RemoteAddr    string `json:"remote_addr"`
		Params        map[string]any
	}
	d.must("GET", "/api/v1/sessions", "", 200, &list)
	if len(list) != 1 || list[0].InitiatorName != name || list[0].Target != harness.DemoIQN || list[0].TSIH == 0 || list[0].RemoteAddr == "" || len(list[0].Params) == 0 {
		t.Fatalf("sessions: %+v", list)
	}
	d.must("DELETE", "/api/v1/sessions/"+strconv.Itoa(int(list[0].TSIH)), "", 202, nil)
	// The initiator receives an asynchronous logout request (event 1).
	h, _, err := ini.recv()
	if err != nil || h[0]&0x3f != 0x32 || h[36] != 1 {
		t.Fatalf("expected Async Message event 1, got opcode %#x event %d: %v", h[0]&0x3f, h[36], err)
	}
	var lo [48]byte
	lo[0], lo[1] = 0x46, 0x80 // Logout Request (immediate), close the session
	ini.itt++
	binary.BigEndian.PutUint32(lo[16:20], ini.itt)
	binary.BigEndian.PutUint32(lo[24:28], ini.cmdSN)
	binary.BigEndian.PutUint32(lo[28:32], ini.expStatSN)
	if err := ini.send(lo, nil); err != nil {
		t.Fatal(err)
	}
	if h, _, err := ini.recv(); err != nil || h[0]&0x3f != 0x26 || h[2] != 0 {
		t.Fatalf("logout response: opcode %#x response %d: %v", h[0]&0x3f, h[2], err)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		d.must("GET", "/api/v1/sessions", "", 200, &list)
		if len(list) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("session still listed after logout: %+v", list)
		}
		time.Sleep(50 * time.Millisecond)
	}
	d.wantError("DELETE", "/api/v1/sessions/999", "", 404, "")
}

// TestEnvToken checks that ANVIL_API_TOKEN replaces the token file.
func TestEnvToken(t *testing.T) {
	h := harness.Start(t, harness.Options{Env: []string{"ANVIL_API_TOKEN=env-token-1234567890"}})
	d := &daemon{Daemon: h, t: t}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if resp, err := http.Get("http://" + d.API + "/api/v1/health"); err == nil {
			resp.Body.Close()
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("API not up")
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := os.Stat(filepath.Join(d.DataDir, "api.token")); !os.IsNotExist(err) {
		t.Errorf("api.token written although ANVIL_API_TOKEN is set: %v", err)
	}
	if code, _ := d.callAuth("GET", "/api/v1/volumes", "", "Bearer env-token-1234567890"); code != 200 {
		t.Errorf("env token refused: %d", code)
	}
	if code, _ := d.callAuth("GET", "/api/v1/volumes", "", ""); code != 401 {
		t.Errorf("no token: %d", code)
	}
}

// TestImportUpload uploads an image and reads it back through iSCSI.
func TestImportUpload(t *testing.T) {
	d := start(t, harness.Options{})
	img := bytes.Repeat([]byte("anvil-import-test"), 100000) // ~1.6 MB, not block aligned
	req, _ := http.NewRequest("POST", "http://"+d.API+"/api/v1/volumes/import?name=imp", bytes.NewReader(img))
	req.Header.Set("Content-Type", "application/octet-stream")
	req.Header.Set("Authorization", "Bearer "+d.token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 201 {
		t.Fatalf("import: %d %s", resp.StatusCode, body)
	}
	d.must("POST", "/api/v1/targets/"+harness.DemoIQN+"/luns", `{"lun":1,"volume":"imp"}`, 201, nil)
	ini, err := dialInitiator(d.ISCSI, "iqn.2026-11.io.anvil.test:imp", harness.DemoIQN)
	if err != nil {
		t.Fatal(err)
	}
	defer ini.Close()
	cdb := make([]byte, 16)
	cdb[0] = 0x88
	binary.BigEndian.PutUint64(cdb[2:10], 0)
	binary.BigEndian.PutUint32(cdb[10:14], 16)
	var got []byte
	for i := 0; i < 3; i++ { // unit attentions of a new nexus first
		r, err := ini.commandLUN(1, cdb, 16*512)
		if err != nil {
			t.Fatal(err)
		}
		if r.status == 0 {
			got = r.data
			break
		}
	}
	if !bytes.Equal(got, img[:16*512]) {
		t.Errorf("data read through iSCSI differs from the imported image (%d bytes)", len(got))
	}
}
