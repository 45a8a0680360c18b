package service

import (
	"errors"
	"fmt"
	"time"

	"github.com/anvilproject/anvil/target/iscsi"
)

// SessionInfo describes one live front-end session, in the service's own
// terms so that callers do not depend on the transport package.
type SessionInfo struct {
	// InitiatorName and InitiatorAlias are what the initiator declared.
	InitiatorName, InitiatorAlias string
	// ISID is the initiator session ID in hex (12 digits).
	ISID string
	// TSIH is the target session handle.
	TSIH uint16
	// Target is the target's name; empty for discovery sessions.
	Target    string
	Discovery bool
	// RemoteAddr and LocalAddr are the connection's endpoints.
	RemoteAddr, LocalAddr string
	// Params are the negotiated operational parameters.
	Params SessionParams
	// AuthMethod is "None" or "CHAP"; CHAPAlgorithm the digest used.
	AuthMethod, CHAPAlgorithm string
	// MutualCHAP: the target authenticated itself to the initiator too.
	MutualCHAP bool
	// InFlight counts commands received and not yet answered.
	InFlight int
	// Established is when login completed.
	Established time.Time
}

// SessionParams are a session's negotiated iSCSI operational parameters
// (RFC 7143 section 13).
type SessionParams struct {
	HeaderDigest, DataDigest                           string
	MaxConnections                                     uint32
	InitialR2T, ImmediateData                          bool
	MaxRecvDataSegmentLength, MaxXmitDataSegmentLength uint32
	MaxBurstLength, FirstBurstLength                   uint32
	DefaultTime2Wait, DefaultTime2Retain               uint32
	MaxOutstandingR2T                                  uint32
	DataPDUInOrder, DataSequenceInOrder                bool
	ErrorRecoveryLevel                                 uint32
}

// Sessions is a front end's session management as the service's callers
// see it.
type Sessions interface {
	// Sessions lists the live sessions, ordered by TSIH.
	Sessions() []SessionInfo
	// Logout asks the initiator of a session to log out and drops it if it
	// does not; an unknown session is ErrNotFound.
	Logout(tsih uint16) error
}

// ISCSISessions adapts the iSCSI portal to Sessions.
func ISCSISessions(srv *iscsi.Server) Sessions { return iscsiSessions{srv} }

type iscsiSessions struct{ srv *iscsi.Server }

func (a iscsiSessions) Sessions() []SessionInfo {
	list := a.srv.Sessions()
	out := make([]SessionInfo, 0, len(list))
	for _, si := range list {
		out = append(out, sessionInfo(si))
	}
	return out
}

func (a iscsiSessions) Logout(tsih uint16) error {
	err := a.srv.Logout(tsih)
	if errors.Is(err, iscsi.ErrNoSession) {
		return fmt.Errorf("session %d: %w", tsih, ErrNotFound)
	}
	return err
}

func sessionInfo(si iscsi.SessionInfo) SessionInfo {
	p := si.Params
	return SessionInfo{
		InitiatorName: si.InitiatorName, InitiatorAlias: si.InitiatorAlias,
		ISID: si.ISID, TSIH: si.TSIH, Target: si.Target, Discovery: si.Discovery,
		RemoteAddr: si.RemoteAddr, LocalAddr: si.LocalAddr,
		// Same fields, own tags: a conversion copies every one of them.
		Params:     SessionParams(p),
		AuthMethod: si.AuthMethod, CHAPAlgorithm: si.CHAPAlgorithm, MutualCHAP: si.MutualCHAP,
		InFlight: si.InFlight, Established: si.Established,
	}
}
