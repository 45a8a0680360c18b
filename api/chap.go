package api

import (
	"net/http"
	"net/url"
	"sort"

	"github.com/labstack/echo/v4"

	"github.com/anvilproject/anvil/service"
)

// InitiatorCHAPStatus is one initiator's own CHAP setting on a target,
// without its secrets.
type InitiatorCHAPStatus struct {
	Initiator string `json:"initiator"`
	CHAPStatus
}

func chapStatus(c *service.CHAP) CHAPStatus {
	if c == nil {
		return CHAPStatus{}
	}
	return CHAPStatus{Enabled: true, User: c.User, Mutual: c.MutualUser != "", MutualUser: c.MutualUser}
}

func initiatorCHAPView(m map[string]service.CHAP) []InitiatorCHAPStatus {
	out := make([]InitiatorCHAPStatus, 0, len(m))
	for ini, c := range m {
		out = append(out, InitiatorCHAPStatus{Initiator: ini, CHAPStatus: chapStatus(&c)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Initiator < out[j].Initiator })
	return out
}

func (r CHAPRequest) record() *service.CHAP {
	return &service.CHAP{User: r.User, Secret: r.Secret, MutualUser: r.MutualUser, MutualSecret: r.MutualSecret}
}

// initiatorParam returns the {initiator} path parameter, unescaped.
func initiatorParam(c echo.Context) (string, error) {
	v, err := url.PathUnescape(c.Param("initiator"))
	if err != nil {
		return "", badRequest("initiator", "bad escaping in %q", c.Param("initiator"))
	}
	return v, nil
}

func (s *server) setInitiatorCHAP(c echo.Context) error {
	iqn, err := iqnParam(c)
	if err != nil {
		return err
	}
	ini, err := initiatorParam(c)
	if err != nil {
		return err
	}
	var req CHAPRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if err := s.svc.SetInitiatorCHAP(iqn, ini, req.record()); err != nil {
		return err
	}
	return s.respondTarget(c, http.StatusOK, iqn)
}

func (s *server) deleteInitiatorCHAP(c echo.Context) error {
	iqn, err := iqnParam(c)
	if err != nil {
		return err
	}
	ini, err := initiatorParam(c)
	if err != nil {
		return err
	}
	if err := s.svc.SetInitiatorCHAP(iqn, ini, nil); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *server) getDiscoveryCHAP(c echo.Context) error {
	return c.JSON(http.StatusOK, chapStatus(s.svc.DiscoveryCHAP()))
}

func (s *server) setDiscoveryCHAP(c echo.Context) error {
	var req CHAPRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if err := s.svc.SetDiscoveryCHAP(req.record()); err != nil {
		return err
	}
	return c.JSON(http.StatusOK, chapStatus(s.svc.DiscoveryCHAP()))
}

func (s *server) deleteDiscoveryCHAP(c echo.Context) error {
	if err := s.svc.SetDiscoveryCHAP(nil); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
