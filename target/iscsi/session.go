package iscsi

import (
	"context"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anvilproject/anvil/target/scsi"
)

// session is one iSCSI session: one I_T nexus with its command window and
// its tasks by ITT (the SCSI task sets they belong to are the task
// manager's). Sessions have exactly one connection (MaxConnections=1).
type session struct {
	srv            *Server
	tsih           uint16
	isid           [6]byte
	initiatorName  string
	initiatorAlias string
	targetName     string
	target         Target // nil for discovery sessions
	// tm is the target's SCSI task manager (nil for discovery sessions):
	// the session's tasks live in its task sets.
	tm          *scsi.TaskManager
	discovery   bool
	nexus       *scsi.Nexus
	params      Params
	established time.Time
	conn        *conn
	// creds are the CHAP credentials in force when the session logged
	// in; a session whose credentials change is dropped (Revalidate).
	creds      CHAPCredentials
	authMethod string
	chapAlg    string
	mutualCHAP bool

	ctx    context.Context
	cancel context.CancelFunc

	// sn holds ExpCmdSN (high 32 bits) and MaxCmdSN (low 32 bits) so the
	// writer reads a consistent pair without a lock. Updates take snMu.
	sn       atomic.Uint64
	snMu     sync.Mutex
	window   uint32
	inflight int // commands counted against the window; under snMu

	// pending holds non-immediate requests that arrived ahead of ExpCmdSN,
	// keyed by CmdSN; only the connection's reader touches it.
	pending map[uint32]func() error

	// active counts registered tasks that have not finished.
	active atomic.Int32
	// dataOut is the Data-Out buffer memory reserved by live tasks
	// (Server.reserveDataOut).
	dataOut atomic.Int64

	mu    sync.Mutex
	tasks map[uint32]*task // by ITT
	// abortedSN records CmdSNs that ABORT TASK named before the command
	// arrived (RFC 7143 §11.5.1 case b): such a command is dropped.
	abortedSN map[uint32]struct{}
	ended     bool
	endOnce   sync.Once
}

func newSession(srv *Server, c *conn, cmdSN uint32) *session {
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{
		srv:         srv,
		conn:        c,
		ctx:         ctx,
		cancel:      cancel,
		window:      srv.cfg.MaxQueuedCommands,
		pending:     map[uint32]func() error{},
		tasks:       map[uint32]*task{},
		abortedSN:   map[uint32]struct{}{},
		established: time.Now(),
	}
	s.sn.Store(uint64(cmdSN)<<32 | uint64(cmdSN+s.window-1))
	return s
}

// cmdSNs returns ExpCmdSN and MaxCmdSN.
func (s *session) cmdSNs() (exp, maxSN uint32) {
	v := s.sn.Load()
	return uint32(v >> 32), uint32(v)
}

// cmdVerdict says what to do with a request's CmdSN.
type cmdVerdict int

const (
	cmdNow   cmdVerdict = iota // deliver now
	cmdQueue                   // ahead of ExpCmdSN: hold until the gap fills
	cmdDrop                    // outside the window: silently ignore
)

// checkCmdSN classifies a non-immediate request's CmdSN against the window
// (RFC 7143 §4.2.2.1, serial arithmetic).
func (s *session) checkCmdSN(cmdSN uint32) cmdVerdict {
	exp, maxSN := s.cmdSNs()
	switch {
	case cmdSN == exp:
		return cmdNow
	case snLess(exp, cmdSN) && snLE(cmdSN, maxSN):
		if _, dup := s.pending[cmdSN]; dup {
			return cmdDrop
		}
		return cmdQueue
	default:
		return cmdDrop
	}
}

// advance consumes ExpCmdSN for one delivered request. A request that
// holds a slot until it completes (a SCSI task) keeps MaxCmdSN where it is;
// others move the window along at once.
func (s *session) advance(holdsSlot bool) {
	s.snMu.Lock()
	exp, maxSN := s.cmdSNs()
	exp++
	if holdsSlot {
		s.inflight++
	} else {
		maxSN = exp + s.window - 1 - uint32(s.inflight)
	}
	s.sn.Store(uint64(exp)<<32 | uint64(maxSN))
	s.snMu.Unlock()
}

// release returns a task's window slot; MaxCmdSN grows by one.
func (s *session) release() {
	s.snMu.Lock()
	if s.inflight > 0 {
		s.inflight--
	}
	exp, maxSN := s.cmdSNs()
	if m := exp + s.window - 1 - uint32(s.inflight); snLess(maxSN, m) {
		maxSN = m
	}
	s.sn.Store(uint64(exp)<<32 | uint64(maxSN))
	s.snMu.Unlock()
}

// deliverPending runs queued requests whose turn has come.
func (s *session) deliverPending() error {
	for {
		exp, _ := s.cmdSNs()
		fn, ok := s.pending[exp]
		if !ok {
			return nil
		}
		delete(s.pending, exp)
		if err := fn(); err != nil {
			return err
		}
	}
}

// sequence runs fn for a request in CmdSN order: immediately for
// immediate requests and for CmdSN == ExpCmdSN (advancing the window and
// then delivering any queued successors), later for requests ahead of the
// window, never for requests outside it. fn is responsible for calling
// advance when it consumes the CmdSN, since only it knows whether the
// request holds a slot.
func (s *session) sequence(cmdSN uint32, immediate bool, fn func() error) error {
	if immediate {
		return fn()
	}
	switch s.checkCmdSN(cmdSN) {
	case cmdNow:
		if err := fn(); err != nil {
			return err
		}
		return s.deliverPending()
	case cmdQueue:
		s.pending[cmdSN] = fn
		return nil
	default:
		s.srv.log.Debug("iscsi: dropping command outside CmdSN window", "cmdsn", cmdSN, "tsih", s.tsih)
		return nil
	}
}

// inFlight counts tasks received and not finished: a task stops counting
// once its status is queued for the writer (or it was aborted).
func (s *session) inFlight() int { return int(s.active.Load()) }

func (s *session) info() SessionInfo {
	inf := SessionInfo{
		InitiatorName:  s.initiatorName,
		InitiatorAlias: s.initiatorAlias,
		ISID:           hex.EncodeToString(s.isid[:]),
		TSIH:           s.tsih,
		Target:         s.targetName,
		Discovery:      s.discovery,
		Params:         s.params,
		AuthMethod:     s.authMethod,
		CHAPAlgorithm:  s.chapAlg,
		MutualCHAP:     s.mutualCHAP,
		InFlight:       s.inFlight(),
		Established:    s.established,
	}
	if c := s.conn; c != nil {
		inf.RemoteAddr = c.nc.RemoteAddr().String()
		inf.LocalAddr = c.nc.LocalAddr().String()
		inf.Params.MaxXmitDataSegmentLength = c.maxXmit.Load()
	}
	return inf
}

// stale reports why the session may no longer exist under the Registry's
// current state, or "" if it still may: its target is gone, the ACL no
// longer admits the initiator, or the CHAP credentials it logged in under
// have changed.
func (s *session) stale() string {
	reg := s.srv.reg
	var now CHAPCredentials
	if s.discovery {
		if dc, ok := reg.(DiscoveryCHAP); ok {
			now = dc.DiscoveryCredentials(s.initiatorName)
		}
	} else {
		t, ok := reg.Target(s.targetName)
		if !ok || !strings.EqualFold(t.Name(), s.targetName) {
			return "target removed"
		}
		if !t.Allow(s.initiatorName) {
			return "initiator no longer in the target's ACL"
		}
		if ct, ok := t.(CHAPTarget); ok {
			now = ct.Credentials(s.initiatorName)
		}
	}
	if now != s.creds {
		return "CHAP credentials changed"
	}
	return ""
}

// lookup returns the live task with the given ITT.
func (s *session) lookup(itt uint32) *task {
	s.mu.Lock()
	t := s.tasks[itt]
	s.mu.Unlock()
	return t
}

// end tears the session down once: the task manager aborts the nexus's
// tasks, waits for running ones and reports the nexus loss; then the
// session is forgotten. Safe to call from any goroutine except a task's
// own.
func (s *session) end(reason string) {
	s.endOnce.Do(func() {
		s.mu.Lock()
		s.ended = true
		s.mu.Unlock()
		if s.tm != nil && s.nexus != nil {
			s.tm.EndNexus(s.nexus)
		}
		s.cancel()
		s.srv.removeSession(s)
		s.srv.log.Info("iscsi: session ended", "tsih", s.tsih, "initiator", s.initiatorName,
			"isid", hex.EncodeToString(s.isid[:]), "target", s.targetName, "reason", reason)
	})
}

// requestLogout sends an asynchronous logout request and drops the
// connection if the initiator has not logged out after grace.
func (s *session) requestLogout(grace time.Duration) {
	c := s.conn
	if c == nil {
		return
	}
	secs := uint16(min(grace/time.Second, 3600))
	c.sendAsyncLogout(secs)
	time.AfterFunc(grace, func() {
		c.close(errors.New("initiator did not log out when asked"))
	})
}
