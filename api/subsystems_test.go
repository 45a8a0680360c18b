package api

import (
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/anvilproject/anvil/service"
)

type fakeNVMe struct{}

func (fakeNVMe) Controllers() []service.NVMeControllerInfo {
	return []service.NVMeControllerInfo{{ID: 7, Subsystem: service.DemoNQN, HostNQN: hostNQN, HostID: "00112233445566778899aabbccddeeff", LocalAddr: "127.0.0.1:4420", Queues: 3, KeepAliveTimeout: 5 * time.Second}}
}

func (fakeNVMe) Stats() service.NVMeStats {
	return service.NVMeStats{Controllers: 1, Queues: 3, Commands: map[string]uint64{"admin": 10, "io": 42, "fabrics": 4}, Errors: map[string]uint64{"sct=0x0 sc=0x0b": 2}}
}

const hostNQN = "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"

// nvmeEnv is newEnv with an NVMe front end that reports one controller.
func nvmeEnv(t *testing.T) *env {
	e := newEnv(t)
	e.srv.Close()
	e.srv = httptest.NewServer(New(Options{Service: e.svc, Sessions: e.sess, NVMe: fakeNVMe{}, Token: testToken}))
	return e
}

func TestSubsystemsAPI(t *testing.T) {
	e := nvmeEnv(t)
	e.must("POST", "/api/v1/volumes", map[string]any{"name": "v1", "size_bytes": 1 << 20}, 201, nil)
	const nqn = "nqn.2026-11.io.anvil:s1"
	var sub Subsystem
	e.must("POST", "/api/v1/subsystems", map[string]any{"nqn": nqn, "hosts": []string{hostNQN}}, 201, &sub)
	if sub.NQN != nqn || len(sub.Hosts) != 1 || sub.AllowAnyHost || len(sub.Namespaces) != 0 || sub.Serial == "" {
		t.Fatalf("created %+v", sub)
	}
	e.must("POST", "/api/v1/subsystems/"+strings.ReplaceAll(nqn, ":", "%3A")+"/namespaces", map[string]any{"volume": "v1"}, 201, &sub)
	if len(sub.Namespaces) != 1 || sub.Namespaces[0].NSID != 1 || len(sub.Namespaces[0].NGUID) != 32 || len(sub.Namespaces[0].UUID) != 36 {
		t.Fatalf("after add-namespace %+v", sub)
	}
	e.must("GET", "/api/v1/subsystems/"+nqn, nil, 200, &sub)
	var list []Subsystem
	e.must("GET", "/api/v1/subsystems", nil, 200, &list)
	if len(list) != 1 || list[0].Namespaces[0].Volume != "v1" {
		t.Fatalf("list %+v", list)
	}
	e.must("PUT", "/api/v1/subsystems/"+nqn+"/hosts", map[string]any{"allow_any_host": true}, 200, &sub)
	if !sub.AllowAnyHost || len(sub.Hosts) != 0 {
		t.Fatalf("after set-hosts %+v", sub)
	}
	// An exported volume is in use.
	e.must("DELETE", "/api/v1/volumes/v1", nil, 409, nil)
	e.must("DELETE", "/api/v1/subsystems/"+nqn+"/namespaces/1", nil, 204, nil)
	e.must("DELETE", "/api/v1/subsystems/"+nqn+"/namespaces/1", nil, 404, nil)
	e.must("DELETE", "/api/v1/subsystems/"+nqn, nil, 204, nil)
	e.must("GET", "/api/v1/subsystems/"+nqn, nil, 404, nil)

	var ctrls []Controller
	e.must("GET", "/api/v1/controllers", nil, 200, &ctrls)
	if len(ctrls) != 1 || ctrls[0].ID != 7 || ctrls[0].KeepAliveMS != 5000 || ctrls[0].Queues != 3 || ctrls[0].HostNQN != hostNQN {
		t.Fatalf("controllers %+v", ctrls)
	}
}

func TestSubsystemsAPIBadInput(t *testing.T) {
	e := nvmeEnv(t)
	e.must("POST", "/api/v1/volumes", map[string]any{"name": "v1", "size_bytes": 1 << 20}, 201, nil)
	const nqn = "nqn.2026-11.io.anvil:s1"
	e.must("POST", "/api/v1/subsystems", map[string]any{"nqn": nqn}, 201, nil)
	for _, c := range []struct {
		method, path string
		body         any
		status       int
		field        string
	}{
		{"POST", "/api/v1/subsystems", map[string]any{}, 400, "nqn"},
		{"POST", "/api/v1/subsystems", map[string]any{"nqn": "iqn.2026-11.io.anvil:x"}, 400, "nqn"},
		{"POST", "/api/v1/subsystems", map[string]any{"nqn": "nqn.2014-08.org.nvmexpress.discovery"}, 400, "nqn"},
		{"POST", "/api/v1/subsystems", map[string]any{"nqn": "nqn.2026-11.io.anvil:s2", "hosts": []string{"nope"}}, 400, "hosts[0]"},
		{"POST", "/api/v1/subsystems", map[string]any{"nqn": "nqn.2026-11.io.anvil:s2", "allow_any_host": true, "hosts": []string{hostNQN}}, 400, "hosts"},
		{"POST", "/api/v1/subsystems", map[string]any{"nqn": "nqn.2026-11.io.anvil:s2", "serial": strings.Repeat("s", 21)}, 400, "serial"},
		{"POST", "/api/v1/subsystems", map[string]any{"nqn": nqn}, 409, ""},
		{"POST", "/api/v1/subsystems", `{"nqn": 5}`, 400, "nqn"},
		{"POST", "/api/v1/subsystems/" + nqn + "/namespaces", map[string]any{}, 400, "volume"},
		{"POST", "/api/v1/subsystems/" + nqn + "/namespaces", map[string]any{"volume": "nope"}, 404, "volume"},
		{"POST", "/api/v1/subsystems/" + nqn + "/namespaces", map[string]any{"volume": "v1", "nsid": 5000}, 400, "nsid"},
		{"POST", "/api/v1/subsystems/" + nqn + "/namespaces", map[string]any{"volume": "v1", "nsid": -1}, 400, "nsid"},
		{"POST", "/api/v1/subsystems/nqn.2026-11.io.anvil:none/namespaces", map[string]any{"volume": "v1"}, 404, ""},
		{"DELETE", "/api/v1/subsystems/" + nqn + "/namespaces/x", nil, 400, "nsid"},
		{"DELETE", "/api/v1/subsystems/" + nqn + "/namespaces/0", nil, 400, "nsid"},
		{"PUT", "/api/v1/subsystems/" + nqn + "/hosts", map[string]any{"hosts": []string{"nqn.2014-08.org.nvmexpress.discovery"}}, 400, "hosts[0]"},
		{"PUT", "/api/v1/subsystems/nqn.2026-11.io.anvil:none/hosts", map[string]any{"allow_any_host": true}, 404, ""},
		{"DELETE", "/api/v1/subsystems/nqn.2026-11.io.anvil:none", nil, 404, ""},
	} {
		code, body := e.do(c.method, c.path, c.body)
		if code != c.status || (c.field != "" && !strings.Contains(string(body), `"field":"`+c.field+`"`)) {
			t.Errorf("%s %s %v: %d %s, want %d naming %q", c.method, c.path, c.body, code, body, c.status, c.field)
		}
	}
}

func TestNVMeMetrics(t *testing.T) {
	e := nvmeEnv(t)
	code, body := e.do("GET", "/metrics", nil)
	if code != 200 {
		t.Fatal(code)
	}
	for _, want := range []string{
		"anvil_nvme_controllers 1", "anvil_nvme_queues 3",
		`anvil_nvme_commands_total{class="io"} 42`, `anvil_nvme_commands_total{class="admin"} 10`, `anvil_nvme_commands_total{class="fabrics"} 4`,
		`anvil_nvme_errors_total{status="sct=0x0 sc=0x0b"} 2`, "anvil_nvme_subsystems 0",
	} {
		if !strings.Contains(string(body), want+"\n") {
			t.Errorf("metrics lack %q", want)
		}
	}
}
