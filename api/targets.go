package api

import (
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/anvilproject/anvil/service"
)

// Target is a target as the API shows it. CHAP secrets are never included;
// only whether CHAP is on and the user names.
type Target struct {
	IQN     string     `json:"iqn"`
	Alias   string     `json:"alias,omitempty"`
	LUNs    []LUN      `json:"luns"`
	ACL     ACL        `json:"acl"`
	CHAP    CHAPStatus `json:"chap"`
	Created time.Time  `json:"created"`

	// InitiatorCHAP lists the initiators with credentials of their own,
	// sorted by name.
	InitiatorCHAP []InitiatorCHAPStatus `json:"initiator_chap"`
}

// LUN is one logical unit of a target and the volume behind it.
type LUN struct {
	LUN    uint64 `json:"lun"`
	Volume string `json:"volume"`
}

// ACL is a target's access list as the API shows it: initiators is always
// present, empty when the list is.
type ACL struct {
	Open       bool     `json:"open"`
	Initiators []string `json:"initiators"`
}

// CHAPStatus describes a target's CHAP setting without its secrets.
type CHAPStatus struct {
	Enabled    bool   `json:"enabled"`
	User       string `json:"user,omitempty"`
	Mutual     bool   `json:"mutual"`
	MutualUser string `json:"mutual_user,omitempty"`
}

func targetView(rec service.TargetRecord) Target {
	t := Target{IQN: rec.IQN, Alias: rec.Alias, LUNs: make([]LUN, 0, len(rec.LUNs)), ACL: ACL{Open: rec.ACL.Open, Initiators: rec.ACL.Initiators}, Created: rec.Created}
	for _, l := range rec.LUNs {
		t.LUNs = append(t.LUNs, LUN{LUN: l.LUN, Volume: l.Volume})
	}
	if t.ACL.Initiators == nil {
		t.ACL.Initiators = []string{}
	}
	if c := rec.CHAP; c != nil {
		t.CHAP = chapStatus(c)
	}
	t.InitiatorCHAP = initiatorCHAPView(rec.InitiatorCHAP)
	return t
}

// iqnParam returns the {iqn} path parameter, unescaped: clients may send
// the colon of an IQN as %3A.
func iqnParam(c echo.Context) (string, error) {
	v, err := url.PathUnescape(c.Param("iqn"))
	if err != nil {
		return "", badRequest("iqn", "bad escaping in %q", c.Param("iqn"))
	}
	return v, nil
}

func (s *server) listTargets(c echo.Context) error {
	recs := s.svc.ListTargets()
	out := make([]Target, 0, len(recs))
	for _, r := range recs {
		out = append(out, targetView(r))
	}
	return c.JSON(http.StatusOK, out)
}

func (s *server) getTarget(c echo.Context) error {
	iqn, err := iqnParam(c)
	if err != nil {
		return err
	}
	return s.respondTarget(c, http.StatusOK, iqn)
}

// respondTarget answers with the target's current record: what every
// call that reads or changes a target returns.
func (s *server) respondTarget(c echo.Context, status int, iqn string) error {
	rec, err := s.svc.GetTarget(iqn)
	if err != nil {
		return err
	}
	return c.JSON(status, targetView(rec))
}

// ACLRequest is the body of PUT /api/v1/targets/{iqn}/acl, and the acl of
// a create request: a list of initiator names, or open to admit everyone.
type ACLRequest struct {
	Open       bool     `json:"open,omitempty"`
	Initiators []string `json:"initiators,omitempty"`
}

// CreateTargetRequest is the body of POST /api/v1/targets. Without an acl
// the target admits nobody until one is set.
type CreateTargetRequest struct {
	IQN   string      `json:"iqn"`
	Alias string      `json:"alias,omitempty"`
	ACL   *ACLRequest `json:"acl,omitempty"`
}

func (s *server) createTarget(c echo.Context) error {
	var req CreateTargetRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	spec := service.TargetSpec{IQN: req.IQN, Alias: req.Alias}
	if req.ACL != nil {
		spec.ACL = service.ACL{Open: req.ACL.Open, Initiators: req.ACL.Initiators}
	}
	rec, err := s.svc.CreateTarget(spec)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, targetView(rec))
}

func (s *server) deleteTarget(c echo.Context) error {
	iqn, err := iqnParam(c)
	if err != nil {
		return err
	}
	if err := s.svc.DeleteTarget(iqn); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// MapLUNRequest is the body of POST /api/v1/targets/{iqn}/luns.
type MapLUNRequest struct {
	LUN    *uint64 `json:"lun"`
	Volume string  `json:"volume"`
}

func (s *server) mapLUN(c echo.Context) error {
	iqn, err := iqnParam(c)
	if err != nil {
		return err
	}
	var req MapLUNRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.LUN == nil {
		return badRequest("lun", "lun is required (0..%d)", service.MaxLUN)
	}
	if req.Volume == "" {
		return badRequest("volume", "volume is required")
	}
	if _, err := s.svc.Volume(req.Volume); err != nil {
		// The target may exist; say which of the two is missing.
		if _, terr := s.svc.GetTarget(iqn); terr == nil {
			return &apiError{status: http.StatusNotFound, field: "volume", msg: err.Error()}
		}
	}
	if err := s.svc.MapLUN(iqn, *req.LUN, req.Volume); err != nil {
		return err
	}
	return s.respondTarget(c, http.StatusCreated, iqn)
}

func (s *server) unmapLUN(c echo.Context) error {
	iqn, err := iqnParam(c)
	if err != nil {
		return err
	}
	lun, err := strconv.ParseUint(c.Param("lun"), 10, 64)
	if err != nil {
		return badRequest("lun", "%q is not a LUN number", c.Param("lun"))
	}
	if err := s.svc.UnmapLUN(iqn, lun); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

func (s *server) setACL(c echo.Context) error {
	iqn, err := iqnParam(c)
	if err != nil {
		return err
	}
	var req ACLRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Open && len(req.Initiators) > 0 {
		return badRequest("initiators", "an open target admits every initiator; give either open or initiators")
	}
	if err := s.svc.SetACL(iqn, service.ACL{Open: req.Open, Initiators: req.Initiators}); err != nil {
		return err
	}
	return s.respondTarget(c, http.StatusOK, iqn)
}

// CHAPRequest is the body of PUT /api/v1/targets/{iqn}/chap. The secrets
// are write-only: no response ever contains them.
type CHAPRequest struct {
	User         string `json:"user"`
	Secret       string `json:"secret"`
	MutualUser   string `json:"mutual_user,omitempty"`
	MutualSecret string `json:"mutual_secret,omitempty"`
}

func (s *server) setCHAP(c echo.Context) error {
	iqn, err := iqnParam(c)
	if err != nil {
		return err
	}
	var req CHAPRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	err = s.svc.SetCHAP(iqn, &service.CHAP{User: req.User, Secret: req.Secret, MutualUser: req.MutualUser, MutualSecret: req.MutualSecret})
	if err != nil {
		return err
	}
	return s.respondTarget(c, http.StatusOK, iqn)
}

func (s *server) deleteCHAP(c echo.Context) error {
	iqn, err := iqnParam(c)
	if err != nil {
		return err
	}
	if err := s.svc.SetCHAP(iqn, nil); err != nil {
		return err
	}
	return c.NoContent(http.StatusNoContent)
}
