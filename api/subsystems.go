package api

import (
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/anvilproject/anvil/service"
)

// NVMeControllers is the NVMe front end's controller list and counters
// (service.NVMeTarget over the NVMe core).
type NVMeControllers = service.NVMeControllers

// Subsystem is an NVMe subsystem as the API shows it.
type Subsystem struct {
	NQN          string      `json:"nqn"`
	Serial       string      `json:"serial"`
	AllowAnyHost bool        `json:"allow_any_host"`
	Hosts        []string    `json:"hosts"`
	Namespaces   []Namespace `json:"namespaces"`
	Created      time.Time   `json:"created"`
}

// Namespace is one namespace of a subsystem and the volume behind it.
type Namespace struct {
	NSID   uint32 `json:"nsid"`
	Volume string `json:"volume"`
	NGUID  string `json:"nguid"`
	UUID   string `json:"uuid"`
}

// Controller is one live NVMe controller.
type Controller struct {
	ID          uint16    `json:"id"`
	Subsystem   string    `json:"subsystem"`
	Discovery   bool      `json:"discovery"`
	HostNQN     string    `json:"host_nqn"`
	HostID      string    `json:"host_id"`
	LocalAddr   string    `json:"local_addr,omitempty"`
	Queues      int       `json:"queues"`
	KeepAliveMS int64     `json:"keep_alive_ms"`
	Connected   time.Time `json:"connected"`
}

func subsystemView(rec service.SubsystemRecord) Subsystem {
	out := Subsystem{NQN: rec.NQN, Serial: rec.Serial, AllowAnyHost: rec.AllowAnyHost, Hosts: append([]string{}, rec.Hosts...), Namespaces: make([]Namespace, 0, len(rec.Namespaces)), Created: rec.Created}
	for _, n := range rec.Namespaces {
		out.Namespaces = append(out.Namespaces, namespaceView(n))
	}
	return out
}

func namespaceView(n service.NamespaceRecord) Namespace {
	return Namespace{NSID: n.NSID, Volume: n.Volume, NGUID: n.NGUID, UUID: n.UUID}
}

// nqnParam returns the {nqn} path parameter, unescaped: clients may send
// the colon of an NQN as %3A.
func nqnParam(c echo.Context) (string, error) {
	v, err := url.PathUnescape(c.Param("nqn"))
	if err != nil {
		return "", badRequest("nqn", "bad escaping in %q", c.Param("nqn"))
	}
	return v, nil
}

func (s *server) listSubsystems(c echo.Context) error {
	recs := s.svc.Subsystems()
	out := make([]Subsystem, 0, len(recs))
	for _, r := range recs {
		out = append(out, subsystemView(r))
	}
	return c.JSON(http.StatusOK, out)
}

func (s *server) getSubsystem(c echo.Context) error {
	nqn, err := nqnParam(c)
	if err != nil {
		return err
	}
	return s.respondSubsystem(c, http.StatusOK, nqn)
}

func (s *server) respondSubsystem(c echo.Context, status int, nqn string) error {
	rec, err := s.svc.Subsystem(nqn)
	if err != nil {
		return err
	}
	return c.JSON(status, subsystemView(rec))
}

// CreateSubsystemRequest is the body of POST /api/v1/subsystems. Without
// allow_any_host or hosts the subsystem admits nobody until hosts are set.
type CreateSubsystemRequest struct {
	NQN          string   `json:"nqn"`
	Serial       string   `json:"serial,omitempty"`
	AllowAnyHost bool     `json:"allow_any_host,omitempty"`
	Hosts        []string `json:"hosts,omitempty"`
}

func (s *server) createSubsystem(c echo.Context) error {
	var req CreateSubsystemRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.NQN == "" {
		return badRequest("nqn", "nqn is required")
	}
	if req.AllowAnyHost && len(req.Hosts) > 0 {
		return badRequest("hosts", "a subsystem that allows any host admits every host; give either allow_any_host or hosts")
	}
	rec, err := s.svc.CreateSubsystem(service.SubsystemSpec{NQN: req.NQN, Serial: req.Serial, AllowAnyHost: req.AllowAnyHost, Hosts: req.Hosts})
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, subsystemView(rec))
}

func (s *server) deleteSubsystem(c echo.Context) error {
	nqn, err := nqnParam(c)
	if err != nil {
		return err
	}
	if err := s.svc.DeleteSubsystem(nqn); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// AddNamespaceRequest is the body of POST /api/v1/subsystems/{nqn}/namespaces.
// Without nsid (or with 0) the lowest free namespace ID is taken.
type AddNamespaceRequest struct {
	NSID   uint32 `json:"nsid,omitempty"`
	Volume string `json:"volume"`
}

func (s *server) addNamespace(c echo.Context) error {
	nqn, err := nqnParam(c)
	if err != nil {
		return err
	}
	var req AddNamespaceRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Volume == "" {
		return badRequest("volume", "volume is required")
	}
	if _, err := s.svc.Volume(req.Volume); err != nil {
		// The subsystem may exist; say which of the two is missing.
		if _, serr := s.svc.Subsystem(nqn); serr == nil {
			return &apiError{status: http.StatusNotFound, field: "volume", msg: err.Error()}
		}
	}
	if _, err := s.svc.AddNamespace(nqn, req.NSID, req.Volume); err != nil {
		return err
	}
	return s.respondSubsystem(c, http.StatusCreated, nqn)
}

func (s *server) removeNamespace(c echo.Context) error {
	nqn, err := nqnParam(c)
	if err != nil {
		return err
	}
	nsid, err := strconv.ParseUint(c.Param("nsid"), 10, 32)
	if err != nil || nsid == 0 {
		return badRequest("nsid", "%q is not a namespace ID", c.Param("nsid"))
	}
	if err := s.svc.RemoveNamespace(nqn, uint32(nsid)); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// HostsRequest is the body of PUT /api/v1/subsystems/{nqn}/hosts: a list
// of host NQNs, or allow_any_host to admit every host.
type HostsRequest struct {
	AllowAnyHost bool     `json:"allow_any_host,omitempty"`
	Hosts        []string `json:"hosts,omitempty"`
}

func (s *server) setHosts(c echo.Context) error {
	nqn, err := nqnParam(c)
	if err != nil {
		return err
	}
	var req HostsRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.AllowAnyHost && len(req.Hosts) > 0 {
		return badRequest("hosts", "a subsystem that allows any host admits every host; give either allow_any_host or hosts")
	}
	rec, err := s.svc.SetSubsystemHosts(nqn, req.AllowAnyHost, req.Hosts)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, subsystemView(rec))
}

func (s *server) listControllers(c echo.Context) error {
	list := s.nvme.Controllers()
	out := make([]Controller, 0, len(list))
	for _, ci := range list {
		out = append(out, Controller{
			ID: ci.ID, Subsystem: ci.Subsystem, Discovery: ci.Discovery, HostNQN: ci.HostNQN, HostID: ci.HostID,
			LocalAddr: ci.LocalAddr, Queues: ci.Queues, KeepAliveMS: ci.KeepAliveTimeout.Milliseconds(), Connected: ci.Connected,
		})
	}
	return c.JSON(http.StatusOK, out)
}

// noNVMe stands in when NVMe/TCP is off: no controllers, zero counters.
type noNVMe struct{}

func (noNVMe) Controllers() []service.NVMeControllerInfo { return nil }
func (noNVMe) Stats() service.NVMeStats                  { return service.NVMeStats{} }
