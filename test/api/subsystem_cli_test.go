package apitest

import (
	"encoding/json"
	"testing"

	"github.com/anvilproject/anvil/test/harness"
)

const cliHostNQN = "nqn.2014-08.org.nvmexpress:uuid:1b4e28ba-2fa1-11d2-883f-0016d3cca427"

// TestSubsystemCLI drives `anvil subsystem` and `anvil controller` against
// a running daemon: the demo subsystem is there, a new one takes
// namespaces and hosts, bad input is refused with the field named.
func TestSubsystemCLI(t *testing.T) {
	d := start(t, harness.Options{})
	c := cli{t: t, bin: harness.Binary(t), d: d}
	const nqn = "nqn.2026-11.io.anvil:cli"

	contains(t, "subsystem list", c.ok("subsystem", "list"), "NQN", "nqn.2026-11.io.anvil:demo", "1=demo", "any")
	c.ok("volume", "create", "nv1", "--size", "16M")
	contains(t, "subsystem create", c.ok("subsystem", "create", nqn, "--host", cliHostNQN, "--serial", "CLI0001"), nqn, "CLI0001", cliHostNQN)
	contains(t, "subsystem create twice", c.fails("subsystem", "create", nqn), "HTTP 409")
	contains(t, "subsystem create bad", c.fails("subsystem", "create", "nqn.2014-08.org.nvmexpress.discovery"), "nqn", "HTTP 400")
	contains(t, "add-namespace", c.ok("subsystem", "add-namespace", nqn, "nv1", "--nsid", "4"), "4=nv1")
	contains(t, "add-namespace missing volume", c.fails("subsystem", "add-namespace", nqn, "nosuch"), "volume", "HTTP 404")
	contains(t, "subsystem show", c.ok("subsystem", "show", nqn), "NSID", "nv1", "Serial:  CLI0001")
	var sub struct {
		Namespaces []struct {
			NSID  uint32 `json:"nsid"`
			NGUID string `json:"nguid"`
			UUID  string `json:"uuid"`
		} `json:"namespaces"`
	}
	if err := json.Unmarshal([]byte(c.ok("subsystem", "show", nqn, "-o", "json")), &sub); err != nil || len(sub.Namespaces) != 1 || len(sub.Namespaces[0].NGUID) != 32 {
		t.Fatalf("subsystem show -o json: %+v %v", sub, err)
	}
	contains(t, "volume delete exported", c.fails("volume", "delete", "nv1"), "HTTP 409")
	contains(t, "set-hosts any", c.ok("subsystem", "set-hosts", nqn, "--allow-any-host"), "any")
	contains(t, "set-hosts none", c.ok("subsystem", "set-hosts", nqn), "none")
	contains(t, "set-hosts bad", c.fails("subsystem", "set-hosts", nqn, "bogus"), "hosts[0]", "HTTP 400")
	contains(t, "remove-namespace", c.ok("subsystem", "remove-namespace", nqn, "4"), "removed namespace 4")
	contains(t, "remove-namespace bad", c.fails("subsystem", "remove-namespace", nqn, "0"), "namespace ID")
	contains(t, "subsystem delete", c.ok("subsystem", "delete", nqn), "deleted subsystem")
	contains(t, "controller list", c.ok("controller", "list"), "ID", "SUBSYSTEM", "HOST")
}
