package api

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/anvilproject/anvil/target/iscsi"
)

func (s *server) listSessions(c echo.Context) error {
	list := s.sessions.Sessions()
	if tgt := c.QueryParam("target"); tgt != "" {
		kept := list[:0:0]
		for _, si := range list {
			if strings.EqualFold(si.Target, tgt) {
				kept = append(kept, si)
			}
		}
		list = kept
	}
	if list == nil {
		list = []iscsi.SessionInfo{}
	}
	return c.JSON(http.StatusOK, list)
}

// logoutSession asks the initiator to log out (iSCSI asynchronous message)
// and drops the session if it does not comply in time.
func (s *server) logoutSession(c echo.Context) error {
	tsih, err := strconv.ParseUint(c.Param("tsih"), 10, 16)
	if err != nil || tsih == 0 {
		return badRequest("tsih", "%q is not a session handle (1..65535)", c.Param("tsih"))
	}
	if err := s.sessions.Logout(uint16(tsih)); err != nil {
		return err
	}
	return c.NoContent(http.StatusAccepted)
}
