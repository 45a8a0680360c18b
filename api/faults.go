package api

import (
	"net/http"

	"github.com/labstack/echo/v4"
)

// FaultRequest sets a volume's fault injection.
type FaultRequest struct {
	// Rate is the number of backing I/Os in every 10,000 that fail with
	// EIO; 0 turns injection off.
	Rate int `json:"rate"`
	// Seed makes the failure pattern repeatable.
	Seed uint64 `json:"seed"`
	// Error is the failure injected: "eio" (default, every kind of I/O)
	// or "enospc" (writes only, as on a full file system).
	Error string `json:"error,omitempty"`
}

func (s *server) setFaults(c echo.Context) error {
	name := c.Param("name")
	var req FaultRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Error != "" && req.Error != "eio" && req.Error != "enospc" {
		return badRequest("error", "%q: must be eio or enospc", req.Error)
	}
	if err := s.svc.SetFaultInjection(name, req.Rate, req.Seed, req.Error == "enospc"); err != nil {
		return err
	}
	v, err := s.volumeOf(name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

// recheck tries again to bring an offline volume online, after an operator
// restored its files.
func (s *server) recheck(c echo.Context) error {
	name := c.Param("name")
	if err := s.svc.RecheckVolume(name); err != nil {
		return err
	}
	v, err := s.volumeOf(name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}

func (s *server) clearError(c echo.Context) error {
	name := c.Param("name")
	if err := s.svc.ClearError(name); err != nil {
		return err
	}
	v, err := s.volumeOf(name)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, v)
}
