// Package iscsi is Anvil's iSCSI target transport (RFC 7143, target side).
//
// It accepts TCP connections, runs the login phase (security and operational
// negotiation), serves discovery sessions (SendTargets) and carries SCSI
// commands of normal sessions to a Target's SCSI task manager
// (scsi.TaskManager), moving their data with immediate data, unsolicited
// Data-Out, R2T/Data-Out and Data-In PDUs. It keeps what is iSCSI's: the
// CmdSN window and command ordering, ITTs, R2T and Data-In/Out sequencing,
// PDUs. What SAM gives the device server (task sets and task attributes,
// task management across sessions, LUN addressing, sense data) is the SCSI
// core's: a command becomes a scsi.Task, and a TMF PDU one Manage call.
//
// The implementation supports ErrorRecoveryLevel 0 with one connection per
// session, which is what every mainstream initiator uses by default, plus
// CHAP and mutual CHAP, CRC32C header and data digests, NOP-In keep-alive,
// task management and session reinstatement. A malformed PDU gets a Reject
// or closes its connection (session recovery at ERL 0); a broken Data-Out
// sequence fails only its task with CHECK CONDITION, and a stalled one
// (Config.DataOutTimeout) closes its connection. Nothing a peer sends
// affects other sessions. Connections, and the memory held for write data
// not yet received, are bounded per initiator and server-wide.
//
// Each connection has one reader goroutine (login, then PDU dispatch), one
// writer goroutine for queued PDUs (StatSN is assigned in wire order and
// flushes are coalesced with writev), and one goroutine per executing
// command, so the commands of a session run concurrently. Two shortcuts
// keep queue depth 1 from paying for goroutine wake-ups: a finished
// command writes its own response when nothing is queued, and a lone read
// runs on the reader itself.
package iscsi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anvilproject/anvil/internal/netguard"
	"github.com/anvilproject/anvil/target/scsi"
)

// Registry resolves target names for logins and discovery.
type Registry interface {
	// Target returns the target named iqn (compared case-insensitively), or
	// false.
	Target(iqn string) (Target, bool)
	// Targets lists the names of the targets the initiator named initiator
	// may see (SendTargets=All), sorted.
	Targets(initiator string) []string
}

// Target is one iSCSI target as the transport needs it: access control
// (name, alias, ACL) next to the SCSI target device itself.
type Target interface {
	// Name is the target's iSCSI name (iqn./eui./naa.).
	Name() string
	// Alias is sent as TargetAlias at login; "" means don't send one.
	Alias() string
	// Allow is the ACL check at login; false fails the login with
	// "authorization failure" (0x0202).
	Allow(initiatorName string) bool
	// Tasks is the SCSI target device behind the name, as its task
	// manager: the transport adds every command to it, runs commands
	// through it and hands it task management functions.
	Tasks() *scsi.TaskManager
}

// CHAPCredentials are a target's CHAP secrets (RFC 7143 §12.1.3). A target
// that implements CHAPTarget and returns Required=true makes CHAP mandatory
// for normal sessions to it.
type CHAPCredentials struct {
	// Required makes initiators authenticate with CHAP.
	Required bool
	// User and Secret authenticate the initiator to the target.
	User, Secret string
	// MutualUser and MutualSecret, when set, let the initiator authenticate
	// the target (mutual CHAP). Empty MutualSecret refuses mutual CHAP.
	MutualUser, MutualSecret string
}

// CHAPTarget is implemented by Targets that can require CHAP.
type CHAPTarget interface {
	// Credentials returns the CHAP secrets to use for logins from
	// initiatorName.
	Credentials(initiatorName string) CHAPCredentials
}

// DiscoveryCHAP is implemented by Registries that can require CHAP for
// discovery sessions. Required=true makes CHAP mandatory for them; the
// credentials otherwise mean what they mean for a target.
type DiscoveryCHAP interface {
	// DiscoveryCredentials returns the CHAP secrets for a discovery
	// session from initiatorName.
	DiscoveryCredentials(initiatorName string) CHAPCredentials
}

// Config configures a Server. Zero values select the defaults documented on
// each field.
type Config struct {
	// PortalGroupTag is the target portal group tag (default 1).
	PortalGroupTag uint16
	// Portals are the "host:port" addresses advertised in SendTargets
	// responses. An unspecified host (0.0.0.0, ::) is replaced by the
	// local address of the discovery connection. Empty means the local
	// address of the connection.
	Portals []string
	// MaxRecvDataSegmentLength is the largest data segment we accept
	// (default 256 KiB).
	MaxRecvDataSegmentLength uint32
	// MaxBurstLength is our limit for a Data-In or solicited Data-Out
	// sequence (default 1 MiB).
	MaxBurstLength uint32
	// FirstBurstLength is our limit for unsolicited data (default 256 KiB).
	FirstBurstLength uint32
	// MaxOutstandingR2T is the number of R2Ts per task we keep in flight
	// (default 16).
	MaxOutstandingR2T uint32
	// InitialR2T is our InitialR2T value. The default (false) lets
	// initiators send unsolicited data, which saves a round trip per write.
	InitialR2T bool
	// NoImmediateData refuses immediate data (ImmediateData=No).
	NoImmediateData bool
	// DisableDigests refuses CRC32C header/data digests.
	DisableDigests bool
	// DefaultTime2Wait and DefaultTime2Retain are our values for those keys
	// (defaults 2 and 20 seconds).
	DefaultTime2Wait, DefaultTime2Retain uint32
	// MaxQueuedCommands is the CmdSN window: how many commands a session may
	// have outstanding (default 128, minimum 16).
	MaxQueuedCommands uint32
	// MaxTransferLength caps a command's expected data transfer length for
	// writes, bounding the memory one command can pin (default 32 MiB).
	MaxTransferLength uint32
	// MaxSessionDataOut bounds the Data-Out buffer memory one session may
	// hold at once (default 1 GiB, at least MaxTransferLength). A write
	// that would exceed it is answered with TASK SET FULL, so that one
	// initiator cannot make the target allocate without limit.
	MaxSessionDataOut int64
	// MaxDataOut bounds the Data-Out buffer memory all sessions together
	// may hold at once (default 256 MiB, at least MaxTransferLength): the
	// per-session bound alone lets a few sessions that never send their
	// last Data-Out pin gigabytes. A write past it is answered with TASK
	// SET FULL, which initiators retry. Past the bound, up to a quarter
	// more is kept for initiator addresses holding less than an equal
	// share of it, so that hosts whose sessions sit on their buffers
	// cannot starve the others.
	MaxDataOut int64
	// DataOutTimeout is how long a write may wait for Data-Out (or for the
	// commands ahead of it in CmdSN order) without any progress before its
	// connection is dropped, which frees its buffers (default 30 s). At
	// ErrorRecoveryLevel 0 the target cannot ask for the data again
	// (recovery R2Ts need ERL 1), so the RFC 7143 recovery left is
	// session recovery: the initiator logs in again and retries.
	DataOutTimeout time.Duration
	// MaxConnections caps the TCP connections the server keeps at once,
	// including those still logging in (default 1024). Connections past
	// it are closed as soon as they are accepted.
	MaxConnections int
	// MaxConnectionsPerAddress caps the connections from one initiator IP
	// address (default 64), so that one host cannot use up MaxConnections
	// or the file descriptors.
	MaxConnectionsPerAddress int
	// NopInterval is how long a connection may stay silent before we ping
	// the initiator with a NOP-In. Zero or negative disables keep-alive
	// (anvil serve's configuration defaults it to 30 s).
	NopInterval time.Duration
	// NopTimeout is how long we wait for the NOP-Out answer before
	// dropping the connection (default 30 s).
	NopTimeout time.Duration
	// LoginTimeout bounds the whole login phase (default 30 s).
	LoginTimeout time.Duration
	// LogoutGrace is how long Server.Logout waits for the initiator to log
	// out after the asynchronous logout request before dropping the
	// connection (default 10 s).
	LogoutGrace time.Duration
	// Logger receives the transport's logs (default slog.Default()).
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.PortalGroupTag == 0 {
		c.PortalGroupTag = 1
	}
	if c.MaxRecvDataSegmentLength == 0 {
		c.MaxRecvDataSegmentLength = 256 << 10
	}
	c.MaxRecvDataSegmentLength = clamp(c.MaxRecvDataSegmentLength, 8192, 1<<24-1)
	if c.MaxBurstLength == 0 {
		c.MaxBurstLength = 1 << 20
	}
	c.MaxBurstLength = clamp(c.MaxBurstLength, 262144, 1<<24-1)
	if c.FirstBurstLength == 0 {
		c.FirstBurstLength = 256 << 10
	}
	c.FirstBurstLength = clamp(c.FirstBurstLength, 65536, c.MaxBurstLength)
	if c.MaxOutstandingR2T == 0 {
		c.MaxOutstandingR2T = 16
	}
	c.MaxOutstandingR2T = clamp(c.MaxOutstandingR2T, 1, 65535)
	if c.DefaultTime2Wait == 0 {
		c.DefaultTime2Wait = 2
	}
	if c.DefaultTime2Retain == 0 {
		c.DefaultTime2Retain = 20
	}
	if c.MaxQueuedCommands == 0 {
		c.MaxQueuedCommands = 128
	}
	c.MaxQueuedCommands = clamp(c.MaxQueuedCommands, 16, 1<<20)
	if c.MaxTransferLength == 0 {
		c.MaxTransferLength = 32 << 20
	}
	if c.MaxSessionDataOut <= 0 {
		c.MaxSessionDataOut = 1 << 30
	}
	c.MaxSessionDataOut = max(c.MaxSessionDataOut, int64(c.MaxTransferLength))
	if c.MaxDataOut <= 0 {
		c.MaxDataOut = 256 << 20
	}
	c.MaxDataOut = max(c.MaxDataOut, int64(c.MaxTransferLength))
	if c.DataOutTimeout <= 0 {
		c.DataOutTimeout = 30 * time.Second
	}
	if c.MaxConnections <= 0 {
		c.MaxConnections = 1024
	}
	if c.MaxConnectionsPerAddress <= 0 {
		c.MaxConnectionsPerAddress = 64
	}
	if c.NopTimeout <= 0 {
		c.NopTimeout = 30 * time.Second
	}
	if c.LoginTimeout <= 0 {
		c.LoginTimeout = 30 * time.Second
	}
	if c.LogoutGrace <= 0 {
		c.LogoutGrace = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

func clamp(v, lo, hi uint32) uint32 { return max(lo, min(v, hi)) }

// ourParams are the values we bring to negotiation.
func (c *Config) ourParams() Params {
	p := defaultParams()
	p.MaxConnections = 1
	p.InitialR2T = c.InitialR2T
	p.ImmediateData = !c.NoImmediateData
	p.MaxRecvDataSegmentLength = c.MaxRecvDataSegmentLength
	p.MaxBurstLength = c.MaxBurstLength
	p.FirstBurstLength = c.FirstBurstLength
	p.DefaultTime2Wait = c.DefaultTime2Wait
	p.DefaultTime2Retain = c.DefaultTime2Retain
	p.MaxOutstandingR2T = c.MaxOutstandingR2T
	p.ErrorRecoveryLevel = 0
	return p
}

// SessionInfo describes one live session for the management API.
type SessionInfo struct {
	// InitiatorName and InitiatorAlias are what the initiator declared.
	InitiatorName  string `json:"initiator_name"`
	InitiatorAlias string `json:"initiator_alias,omitempty"`
	// ISID is the initiator session ID in hex (12 digits).
	ISID string `json:"isid"`
	// TSIH is the target session handle we assigned.
	TSIH uint16 `json:"tsih"`
	// Target is the target's name; empty for discovery sessions.
	Target    string `json:"target,omitempty"`
	Discovery bool   `json:"discovery"`
	// RemoteAddr and LocalAddr are the connection's endpoints.
	RemoteAddr string `json:"remote_addr"`
	LocalAddr  string `json:"local_addr"`
	// Params are the negotiated operational parameters.
	Params Params `json:"params"`
	// AuthMethod is how the initiator authenticated: "None" or "CHAP".
	AuthMethod string `json:"auth_method"`
	// CHAPAlgorithm is the CHAP digest used ("MD5", "SHA-256",
	// "SHA3-256"); empty without CHAP.
	CHAPAlgorithm string `json:"chap_algorithm,omitempty"`
	// MutualCHAP: the target authenticated itself to the initiator too.
	MutualCHAP bool `json:"mutual_chap,omitempty"`
	// InFlight counts commands received and not yet answered.
	InFlight int `json:"commands_in_flight"`
	// Established is when login completed.
	Established time.Time `json:"established"`
}

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("iscsi: server closed")

// ErrNoSession is returned by Logout for an unknown TSIH.
var ErrNoSession = errors.New("iscsi: no such session")

// Server is an iSCSI target portal group: it serves any number of listeners
// and keeps the sessions established through them.
type Server struct {
	cfg Config
	reg Registry
	log *slog.Logger

	mu        sync.Mutex
	listeners map[net.Listener]struct{}
	conns     map[*conn]string // value: the peer's IP address
	peers     map[string]*peer // by IP address, while it has connections
	caps      *netguard.Caps   // MaxConnections and MaxConnectionsPerAddress
	sessions  map[uint16]*session
	nextTSIH  uint16
	closing   bool
	connWG    sync.WaitGroup

	res resources
}

// NewServer returns a Server for the targets in reg.
func NewServer(cfg Config, reg Registry) *Server {
	cfg.setDefaults()
	s := &Server{
		cfg:       cfg,
		reg:       reg,
		log:       cfg.Logger.With("component", "iscsi"),
		listeners: map[net.Listener]struct{}{},
		conns:     map[*conn]string{},
		peers:     map[string]*peer{},
		sessions:  map[uint16]*session{},
		nextTSIH:  1,
	}
	s.caps = netguard.NewCaps(s.cfg.MaxConnections, s.cfg.MaxConnectionsPerAddress)
	return s
}

// Serve accepts connections on ln until ln is closed or Shutdown is called.
// Accept errors other than a closed listener (running out of file
// descriptors, say) are logged and retried with backoff, never returned:
// a client opening connections must not be able to stop the portal.
// Connections over MaxConnections or MaxConnectionsPerAddress are closed
// at once, before login.
func (s *Server) Serve(ln net.Listener) error {
	gl := netguard.NewListener(ln, s.log)
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		return ErrServerClosed
	}
	s.listeners[gl] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, gl)
		s.mu.Unlock()
		s.res.acceptErrors.Add(gl.Errors())
	}()
	for {
		nc, err := gl.Accept()
		if err != nil {
			s.mu.Lock()
			closing := s.closing
			s.mu.Unlock()
			if closing {
				return ErrServerClosed
			}
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("iscsi: accept: %w", err)
		}
		addr := netguard.PeerIP(nc)
		s.mu.Lock()
		if s.closing {
			s.mu.Unlock()
			nc.Close()
			continue
		}
		if why := s.caps.Admit(addr); why != "" {
			s.mu.Unlock()
			nc.Close()
			s.caps.LogRefusal(s.log, addr, why)
			continue
		}
		c := newConn(s, nc)
		p := s.peers[addr]
		if p == nil {
			p = &peer{}
			s.peers[addr] = p
		}
		p.conns++
		c.peer = p
		s.conns[c] = addr
		s.connWG.Add(1)
		s.mu.Unlock()
		go c.serve()
	}
}

// Shutdown stops accepting connections, waits for in-flight commands to
// finish (aborting them when ctx expires), closes every connection and
// reports nexus loss for every session.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closing = true
	for ln := range s.listeners {
		ln.Close()
	}
	sessions := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		sessions = append(sessions, ss)
	}
	s.mu.Unlock()

	var err error
	// Let running commands finish.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
wait:
	for {
		busy := 0
		for _, ss := range sessions {
			busy += ss.inFlight()
		}
		if busy == 0 {
			break
		}
		select {
		case <-ctx.Done():
			err = ctx.Err()
			break wait
		case <-tick.C:
		}
	}
	// Close every connection once its queued responses are out; each
	// connection's exit aborts its session's remaining tasks and reports
	// nexus loss. Connections still in login have no writer yet and are
	// closed at once.
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	for _, c := range conns {
		if c.inFFP.Load() && err == nil {
			c.closeGracefully()
		} else {
			c.close(errors.New("server shutdown"))
		}
	}
	done := make(chan struct{})
	go func() { s.connWG.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		if err == nil {
			err = ctx.Err()
		}
		for _, c := range conns {
			c.close(errors.New("server shutdown deadline"))
		}
	}
	if err != nil {
		return fmt.Errorf("iscsi: shutdown: %w", err)
	}
	return nil
}

// Sessions lists the live sessions, ordered by TSIH.
func (s *Server) Sessions() []SessionInfo {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		list = append(list, ss)
	}
	s.mu.Unlock()
	out := make([]SessionInfo, 0, len(list))
	for _, ss := range list {
		out = append(out, ss.info())
	}
	sort.Slice(out, func(i, j int) bool { return out[i].TSIH < out[j].TSIH })
	return out
}

// Logout asks the initiator of session tsih to log out (asynchronous
// message, event 1) and drops the connection if it has not done so within
// Config.LogoutGrace.
func (s *Server) Logout(tsih uint16) error {
	s.mu.Lock()
	ss := s.sessions[tsih]
	s.mu.Unlock()
	if ss == nil {
		return fmt.Errorf("logout session %d: %w", tsih, ErrNoSession)
	}
	ss.requestLogout(s.cfg.LogoutGrace)
	return nil
}

// Revalidate checks every live session against the Registry as it is now
// and drops (closes the connection of) each session whose target is gone,
// whose ACL no longer admits its initiator, or whose CHAP credentials
// changed since it logged in. The management layer calls it after each
// such change so that a revoked initiator loses access at once, not at its
// next login. It returns the number of sessions dropped.
func (s *Server) Revalidate() int {
	s.mu.Lock()
	list := make([]*session, 0, len(s.sessions))
	for _, ss := range s.sessions {
		list = append(list, ss)
	}
	s.mu.Unlock()
	dropped := 0
	for _, ss := range list {
		reason := ss.stale()
		if reason == "" {
			continue
		}
		dropped++
		s.log.Info("iscsi: dropping session", "tsih", ss.tsih, "initiator", ss.initiatorName,
			"target", ss.targetName, "discovery", ss.discovery, "reason", reason)
		if c := ss.conn; c != nil {
			c.close(fmt.Errorf("access revoked: %s", reason))
		}
	}
	return dropped
}

// allocTSIH returns an unused, non-zero TSIH. Called with s.mu held.
func (s *Server) allocTSIH() uint16 {
	for {
		t := s.nextTSIH
		s.nextTSIH++
		if s.nextTSIH == 0 {
			s.nextTSIH = 1
		}
		if _, used := s.sessions[t]; !used && t != 0 {
			return t
		}
	}
}

// findSession returns the session with the given initiator name, ISID and
// target (for reinstatement), if any.
func (s *Server) findSession(initiator string, isid [6]byte, target string) *session {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, ss := range s.sessions {
		if ss.isid == isid && strings.EqualFold(ss.initiatorName, initiator) && strings.EqualFold(ss.targetName, target) && !ss.discovery {
			return ss
		}
	}
	return nil
}

// targetSessions returns the live normal sessions to target t.
func (s *Server) targetSessions(name string) []*session {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []*session
	for _, ss := range s.sessions {
		if !ss.discovery && strings.EqualFold(ss.targetName, name) {
			out = append(out, ss)
		}
	}
	return out
}

func (s *Server) removeSession(ss *session) {
	s.mu.Lock()
	if s.sessions[ss.tsih] == ss {
		delete(s.sessions, ss.tsih)
	}
	s.mu.Unlock()
}

func (s *Server) removeConn(c *conn) {
	s.mu.Lock()
	if addr, ok := s.conns[c]; ok {
		delete(s.conns, c)
		s.caps.Release(addr)
		if p := s.peers[addr]; p != nil {
			if p.conns--; p.conns <= 0 {
				delete(s.peers, addr)
			}
		}
	}
	s.mu.Unlock()
	s.connWG.Done()
}

// nexusFor builds the SCSI I_T nexus for a session.
func (s *Server) nexusFor(initiator string, isid [6]byte, target string) *scsi.Nexus {
	tpgt := s.cfg.PortalGroupTag
	return &scsi.Nexus{
		InitiatorPort:        fmt.Sprintf("%s,i,0x%x", initiator, isid[:]),
		InitiatorName:        initiator,
		TargetPort:           fmt.Sprintf("%s,t,0x%04x", target, tpgt),
		RelativeTargetPortID: tpgt,
		TargetPortGroup:      tpgt,
	}
}

// counter is a small helper for unique tags.
type counter struct{ v atomic.Uint32 }

// next returns the next tag, skipping the reserved 0xffffffff.
func (c *counter) next() uint32 {
	for {
		v := c.v.Add(1)
		if v != tagNone {
			return v
		}
	}
}
