package nvme

import (
	"context"
	"log/slog"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// DiscoveryNQN is the well-known NQN of the discovery subsystem.
const DiscoveryNQN = "nqn.2014-08.org.nvmexpress.discovery"

// Defaults of TargetConfig's zero fields.
const (
	DefaultMaxQueueEntries   = 128
	DefaultMaxIOQueues       = 8
	DefaultInCapsuleDataSize = 8192
	DefaultMaxDataTransfer   = 1 << 20

	// adminInCapsuleDataSize is what every admin queue accepts in a
	// capsule: Connect data (1024 bytes) and Set Features data fit, and
	// the issue asks for 8 KiB.
	adminInCapsuleDataSize = 8192

	// maxNSID is the highest namespace ID a subsystem hands out (Identify
	// NN) and the length of the lists that enumerate namespaces.
	maxNSID = 1024

	// discoveryDefaultKATO is the keep-alive a discovery controller gets
	// when the host asks for none, so that stale discovery sessions of
	// hosts that vanished are cleaned up (Linux nvmet does the same).
	discoveryDefaultKATO = 120 * time.Second
)

// Registry is how the core finds the I/O subsystems; the service
// implements it. Lookups are by NQN, case-sensitive as the specification
// says.
type Registry interface {
	// Subsystem returns the live subsystem called nqn.
	Subsystem(nqn string) (*Subsystem, bool)
	// Subsystems lists every I/O subsystem, for the discovery log page.
	Subsystems() []*Subsystem
}

// Port is one transport address the discovery log page advertises.
type Port struct {
	// ID is the port identifier (PORTID).
	ID uint16
	// TransportType is TRTYPE: 3 for TCP.
	TransportType uint8
	// AddressFamily is ADRFAM: 1 for IPv4, 2 for IPv6.
	AddressFamily uint8
	// Address is TRADDR. A wildcard address (0.0.0.0, ::, empty) is
	// replaced by the local address of the discovery connection asking.
	Address string
	// ServiceID is TRSVCID, the TCP port number as text.
	ServiceID string
	// Discovery marks a port that only serves discovery controllers
	// (8009): the discovery log does not list I/O subsystems on it.
	Discovery bool
}

// Transport types and address families for Port.
const (
	TransportTCP = 3
	AddrIPv4     = 1
	AddrIPv6     = 2
)

// TargetConfig configures a Target. Zero fields take the Default values.
type TargetConfig struct {
	// Registry finds the I/O subsystems; nil means there are none (only
	// the discovery subsystem answers).
	Registry Registry
	// Ports are the addresses the discovery log advertises.
	Ports []Port
	// MaxQueueEntries is the largest queue a host may create (CAP.MQES
	// plus one), and MAXCMD.
	MaxQueueEntries int
	// MaxIOQueues is the most I/O queues one controller gets (Number of
	// Queues feature).
	MaxIOQueues int
	// InCapsuleDataSize is the in-capsule data an I/O queue accepts, in
	// bytes (IOCCSZ); admin queues always take 8 KiB.
	InCapsuleDataSize int
	// MaxDataTransfer is the largest data transfer of one command, in
	// bytes (MDTS); it is rounded down to a power of two times 4 KiB.
	MaxDataTransfer int
	// Logger receives the core's logs; nil means slog.Default().
	Logger *slog.Logger

	// keepAliveSlack is added to KATO before a silent controller is torn
	// down, covering network delay (the specification allows a grace).
	keepAliveSlack time.Duration
}

// Target is the NVMe command core, one per daemon. It owns the discovery
// subsystem and keeps every controller for Controllers and Stats.
type Target struct {
	cfg  TargetConfig
	log  *slog.Logger
	disc *Subsystem

	mu     sync.Mutex
	ports  []Port
	ctrls  map[*Controller]struct{}
	genctr uint64
	// lastDisc is the set of subsystem NQNs the discovery log was last
	// built from; a change bumps GENCTR even when nobody called
	// DiscoveryChanged.
	lastDisc string
	watched  map[*Subsystem]struct{}

	start time.Time
	stats targetStats
}

// NewTarget returns a Target serving the subsystems cfg.Registry knows.
func NewTarget(cfg TargetConfig) *Target {
	if cfg.MaxQueueEntries <= 1 {
		cfg.MaxQueueEntries = DefaultMaxQueueEntries
	}
	if cfg.MaxQueueEntries > 1<<16 {
		cfg.MaxQueueEntries = 1 << 16
	}
	if cfg.MaxIOQueues <= 0 {
		cfg.MaxIOQueues = DefaultMaxIOQueues
	}
	if cfg.MaxIOQueues > 0xfffe {
		cfg.MaxIOQueues = 0xfffe
	}
	if cfg.InCapsuleDataSize <= 0 {
		cfg.InCapsuleDataSize = DefaultInCapsuleDataSize
	}
	// IOCCSZ is a 32-bit count of 16-byte units including the SQE.
	cfg.InCapsuleDataSize &^= 15
	if cfg.MaxDataTransfer < 4096 {
		cfg.MaxDataTransfer = DefaultMaxDataTransfer
	}
	if cfg.keepAliveSlack == 0 {
		cfg.keepAliveSlack = time.Second
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	t := &Target{
		cfg:     cfg,
		log:     cfg.Logger,
		ports:   slices.Clone(cfg.Ports),
		ctrls:   make(map[*Controller]struct{}),
		watched: make(map[*Subsystem]struct{}),
		genctr:  1,
		start:   time.Now(),
	}
	t.stats.errors = make(map[Status]uint64)
	t.disc = NewSubsystem(SubsystemConfig{
		NQN:          DiscoveryNQN,
		Serial:       "anvil-discovery",
		Model:        "Anvil Discovery",
		AllowAnyHost: true,
		Logger:       cfg.Logger,
	})
	t.disc.discovery = true
	return t
}

// SetPorts replaces the ports the discovery log advertises; the serve
// command calls it once its listeners are bound.
func (t *Target) SetPorts(ports []Port) {
	t.mu.Lock()
	t.ports = slices.Clone(ports)
	t.mu.Unlock()
	t.DiscoveryChanged()
}

// DiscoveryChanged tells the target that what the discovery log shows may
// have changed (a subsystem was created or deleted): it bumps GENCTR and
// raises the Discovery Log Change event on every discovery controller.
// Host list changes of a subsystem the target has seen call it by
// themselves.
func (t *Target) DiscoveryChanged() {
	t.mu.Lock()
	t.genctr++
	t.mu.Unlock()
	t.disc.discoveryLogChanged()
}

// watch makes s report its host list changes to t's discovery log.
func (t *Target) watch(s *Subsystem) {
	t.mu.Lock()
	_, seen := t.watched[s]
	if !seen {
		t.watched[s] = struct{}{}
	}
	t.mu.Unlock()
	if !seen {
		s.addWatcher(t)
	}
}

func (t *Target) unwatch(s *Subsystem) {
	t.mu.Lock()
	delete(t.watched, s)
	t.mu.Unlock()
}

// subsystem finds an I/O or the discovery subsystem by NQN.
func (t *Target) subsystem(nqn string) (*Subsystem, bool) {
	if nqn == DiscoveryNQN {
		return t.disc, true
	}
	if t.cfg.Registry == nil {
		return nil, false
	}
	s, ok := t.cfg.Registry.Subsystem(nqn)
	if !ok || s == nil || s.isClosed() {
		return nil, false
	}
	t.watch(s)
	return s, true
}

// subsystems lists the I/O subsystems, sorted by NQN so that the discovery
// log is stable between chunked reads.
func (t *Target) subsystems() []*Subsystem {
	if t.cfg.Registry == nil {
		return nil
	}
	var out []*Subsystem
	for _, s := range t.cfg.Registry.Subsystems() {
		if s != nil && !s.discovery && !s.isClosed() {
			out = append(out, s)
		}
	}
	slices.SortFunc(out, func(a, b *Subsystem) int { return strings.Compare(a.NQN(), b.NQN()) })
	for _, s := range out {
		t.watch(s)
	}
	return out
}

// Connect executes a Fabrics Connect command, the first capsule of every
// connection. On success it returns the queue the connection now serves;
// on failure the queue is nil and the completion says why. local is the
// connection's local address, used for the discovery log's TRADDR when a
// port listens on a wildcard address.
func (t *Target) Connect(ctx context.Context, cmd *Command, local net.Addr) (q *Queue, c Completion) {
	t.stats.fabrics.Add(1)
	defer func() {
		if r := recover(); r != nil {
			t.stats.panics.Add(1)
			t.log.Error("nvme: panic in Connect", "panic", r)
			q, c = nil, Completion{Status: StatusInternal}
		}
		if !c.Status.OK() {
			t.countError(c.Status)
		}
	}()
	return t.connect(ctx, cmd, local)
}

// ControllerInfo describes one controller for the API and metrics.
type ControllerInfo struct {
	// ID is the controller ID (CNTLID).
	ID uint16
	// Subsystem is the subsystem NQN.
	Subsystem string
	// HostNQN and HostID identify the host.
	HostNQN string
	HostID  [16]byte
	// LocalAddr is the target address of the admin queue's connection.
	LocalAddr string
	// Discovery marks a discovery controller.
	Discovery bool
	// Queues counts the admin queue and the I/O queues.
	Queues int
	// KeepAliveTimeout is KATO; zero means no keep-alive timer.
	KeepAliveTimeout time.Duration
	// Connected is when the admin queue connected.
	Connected time.Time
}

// Controllers lists the live controllers, ordered by subsystem and ID.
func (t *Target) Controllers() []ControllerInfo {
	t.mu.Lock()
	ctrls := make([]*Controller, 0, len(t.ctrls))
	for c := range t.ctrls {
		ctrls = append(ctrls, c)
	}
	t.mu.Unlock()
	out := make([]ControllerInfo, 0, len(ctrls))
	for _, c := range ctrls {
		out = append(out, c.info())
	}
	slices.SortFunc(out, func(a, b ControllerInfo) int {
		if d := strings.Compare(a.Subsystem, b.Subsystem); d != 0 {
			return d
		}
		return int(a.ID) - int(b.ID)
	})
	return out
}

func (t *Target) addController(c *Controller) {
	t.mu.Lock()
	t.ctrls[c] = struct{}{}
	t.mu.Unlock()
}

func (t *Target) removeController(c *Controller) {
	t.mu.Lock()
	delete(t.ctrls, c)
	t.mu.Unlock()
}

// Stats are the core's counters for metrics.
type Stats struct {
	// Controllers and Queues are the live controllers and queues
	// (admin queues included).
	Controllers, Queues int
	// AdminCommands, IOCommands and FabricsCommands count executed
	// commands by class.
	AdminCommands, IOCommands, FabricsCommands uint64
	// Errors counts failed commands by status (SCT and SC; the DNR and
	// More bits are cleared).
	Errors map[Status]uint64
}

type targetStats struct {
	admin, io, fabrics atomic.Uint64
	queues             atomic.Int64
	// panics counts panics recovered while executing commands; the fuzz
	// test asserts it stays zero.
	panics atomic.Uint64

	mu     sync.Mutex
	errors map[Status]uint64
}

func (t *Target) countError(s Status) {
	t.stats.mu.Lock()
	t.stats.errors[s&0x7ff]++
	t.stats.mu.Unlock()
}

// Stats returns a snapshot of the counters.
func (t *Target) Stats() Stats {
	t.mu.Lock()
	n := len(t.ctrls)
	t.mu.Unlock()
	st := Stats{
		Controllers:     n,
		Queues:          int(t.stats.queues.Load()),
		AdminCommands:   t.stats.admin.Load(),
		IOCommands:      t.stats.io.Load(),
		FabricsCommands: t.stats.fabrics.Load(),
		Errors:          make(map[Status]uint64),
	}
	t.stats.mu.Lock()
	for k, v := range t.stats.errors {
		st.Errors[k] = v
	}
	t.stats.mu.Unlock()
	return st
}
