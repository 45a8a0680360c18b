package api

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/anvilproject/anvil/service"
)

// Session is one live front-end session as the API shows it.
type Session struct {
	// InitiatorName and InitiatorAlias are what the initiator declared.
	InitiatorName  string `json:"initiator_name"`
	InitiatorAlias string `json:"initiator_alias,omitempty"`
	// ISID is the initiator session ID in hex (12 digits).
	ISID string `json:"isid"`
	// TSIH is the target session handle.
	TSIH uint16 `json:"tsih"`
	// Target is the target's name; empty for discovery sessions.
	Target    string `json:"target,omitempty"`
	Discovery bool   `json:"discovery"`
	// RemoteAddr and LocalAddr are the connection's endpoints.
	RemoteAddr string `json:"remote_addr"`
	LocalAddr  string `json:"local_addr"`
	// Params are the negotiated operational parameters.
	Params SessionParams `json:"params"`
	// AuthMethod is how the initiator authenticated: "None" or "CHAP".
	AuthMethod string `json:"auth_method"`
	// CHAPAlgorithm is the CHAP digest used; empty without CHAP.
	CHAPAlgorithm string `json:"chap_algorithm,omitempty"`
	// MutualCHAP: the target authenticated itself to the initiator too.
	MutualCHAP bool `json:"mutual_chap,omitempty"`
	// InFlight counts commands received and not yet answered.
	InFlight int `json:"commands_in_flight"`
	// Established is when login completed.
	Established time.Time `json:"established"`
}

// SessionParams are a session's negotiated iSCSI operational parameters.
type SessionParams struct {
	HeaderDigest             string `json:"header_digest"`
	DataDigest               string `json:"data_digest"`
	MaxConnections           uint32 `json:"max_connections"`
	InitialR2T               bool   `json:"initial_r2t"`
	ImmediateData            bool   `json:"immediate_data"`
	MaxRecvDataSegmentLength uint32 `json:"max_recv_data_segment_length"`
	MaxXmitDataSegmentLength uint32 `json:"max_xmit_data_segment_length"`
	MaxBurstLength           uint32 `json:"max_burst_length"`
	FirstBurstLength         uint32 `json:"first_burst_length"`
	DefaultTime2Wait         uint32 `json:"default_time2wait"`
	DefaultTime2Retain       uint32 `json:"default_time2retain"`
	MaxOutstandingR2T        uint32 `json:"max_outstanding_r2t"`
	DataPDUInOrder           bool   `json:"data_pdu_in_order"`
	DataSequenceInOrder      bool   `json:"data_sequence_in_order"`
	ErrorRecoveryLevel       uint32 `json:"error_recovery_level"`
}

func sessionView(si service.SessionInfo) Session {
	p := si.Params
	return Session{
		InitiatorName: si.InitiatorName, InitiatorAlias: si.InitiatorAlias,
		ISID: si.ISID, TSIH: si.TSIH, Target: si.Target, Discovery: si.Discovery,
		RemoteAddr: si.RemoteAddr, LocalAddr: si.LocalAddr,
		// Same fields, own tags: a conversion copies every one of them.
		Params:     SessionParams(p),
		AuthMethod: si.AuthMethod, CHAPAlgorithm: si.CHAPAlgorithm, MutualCHAP: si.MutualCHAP,
		InFlight: si.InFlight, Established: si.Established,
	}
}

func (s *server) listSessions(c echo.Context) error {
	tgt := c.QueryParam("target")
	list := []Session{}
	for _, si := range s.sessions.Sessions() {
		if tgt == "" || strings.EqualFold(si.Target, tgt) {
			list = append(list, sessionView(si))
		}
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
