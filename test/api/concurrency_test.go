package apitest

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"sync"
	"testing"

	"github.com/anvilproject/anvil/test/harness"
)

// TestConcurrentClients runs 32 API clients against the daemon at once,
// each creating volumes and targets, mapping them (also into one shared
// target) and tearing half of it down again. Afterwards the live state is
// consistent, iscsi-ls sees exactly the surviving targets, and a restarted
// daemon restores the same state from its catalog.
func TestConcurrentClients(t *testing.T) {
	harness.NeedTool(t, "iscsi-ls")
	d := start(t, harness.Options{Args: []string{"--no-demo"}})
	const shared = "iqn.2026-11.io.anvil:shared"
	d.must("POST", "/api/v1/targets", `{"iqn":"`+shared+`","acl":{"open":true}}`, 201, nil)
	const clients, rounds = 32, 4
	var wg sync.WaitGroup
	errs := make(chan string, clients*rounds*8)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for r := range rounds {
				name := fmt.Sprintf("c%d-r%d", c, r)
				iqn := "iqn.2026-11.io.anvil:" + name
				lun := c*rounds + r
				steps := [][4]string{
					{"POST", "/api/v1/volumes", fmt.Sprintf(`{"name":%q,"size_bytes":4194304}`, name), "201"},
					{"POST", "/api/v1/targets", fmt.Sprintf(`{"iqn":%q,"acl":{"open":true}}`, iqn), "201"},
					{"POST", "/api/v1/targets/" + iqn + "/luns", fmt.Sprintf(`{"lun":0,"volume":%q}`, name), "201"},
					{"POST", "/api/v1/targets/" + shared + "/luns", fmt.Sprintf(`{"lun":%d,"volume":%q}`, lun, name), "201"},
					{"DELETE", "/api/v1/volumes/" + name, "", "409"},
				}
				if r%2 == 1 {
					steps = append(steps,
						[4]string{"DELETE", fmt.Sprintf("/api/v1/targets/%s/luns/%d", shared, lun), "", "204"},
						[4]string{"DELETE", "/api/v1/targets/" + iqn, "", "204"},
						[4]string{"DELETE", "/api/v1/volumes/" + name, "", "204"},
					)
				}
				for _, s := range steps {
					req, _ := http.NewRequest(s[0], "http://"+d.API+s[1], strings.NewReader(s[2]))
					req.Header.Set("Authorization", "Bearer "+d.token)
					if s[2] != "" {
						req.Header.Set("Content-Type", "application/json")
					}
					resp, err := http.DefaultClient.Do(req)
					if err != nil {
						errs <- err.Error()
						return
					}
					b, _ := io.ReadAll(resp.Body)
					resp.Body.Close()
					if fmt.Sprint(resp.StatusCode) != s[3] {
						errs <- fmt.Sprintf("%s %s: %d, want %s: %s", s[0], s[1], resp.StatusCode, s[3], b)
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}

	snapshot := func(when string) string {
		var vols []struct {
			Name     string   `json:"name"`
			MappedBy []string `json:"mapped_by"`
		}
		var tgts []struct {
			IQN  string `json:"iqn"`
			LUNs []struct {
				LUN    int    `json:"lun"`
				Volume string `json:"volume"`
			} `json:"luns"`
		}
		d.must("GET", "/api/v1/volumes", "", 200, &vols)
		d.must("GET", "/api/v1/targets", "", 200, &tgts)
		want := clients * rounds / 2
		if len(vols) != want || len(tgts) != want+1 {
			t.Errorf("%s: %d volumes and %d targets, want %d and %d", when, len(vols), len(tgts), want, want+1)
		}
		names := map[string]bool{}
		for _, v := range vols {
			names[v.Name] = true
			if len(v.MappedBy) != 2 {
				t.Errorf("%s: volume %s mapped by %v, want its own target and the shared one", when, v.Name, v.MappedBy)
			}
		}
		for _, tg := range tgts {
			for _, l := range tg.LUNs {
				if !names[l.Volume] {
					t.Errorf("%s: %s LUN %d maps missing volume %s", when, tg.IQN, l.LUN, l.Volume)
				}
			}
			if tg.IQN == shared && len(tg.LUNs) != want {
				t.Errorf("%s: shared target has %d LUNs, want %d", when, len(tg.LUNs), want)
			}
		}
		// What initiators see matches the API.
		out, err := run(t, "iscsi-ls", "iscsi://"+d.ISCSI)
		if err != nil {
			t.Fatalf("iscsi-ls: %v\n%s", err, out)
		}
		var seen []string
		for _, l := range strings.Split(out, "\n") {
			if rest, ok := strings.CutPrefix(l, "Target:"); ok {
				seen = append(seen, strings.Fields(rest)[0])
			}
		}
		var api []string
		for _, tg := range tgts {
			api = append(api, tg.IQN)
		}
		sort.Strings(seen)
		sort.Strings(api)
		if strings.Join(seen, ",") != strings.Join(api, ",") {
			t.Errorf("%s: iscsi-ls discovers %v, the API lists %v", when, seen, api)
		}
		b, _ := json.Marshal([]any{vols, tgts})
		return string(b)
	}
	before := snapshot("live")
	d.restart()
	if after := snapshot("after restart"); after != before {
		t.Errorf("state after restart differs from the live state before it")
	}
}
