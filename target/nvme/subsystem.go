package nvme

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
)

// Errors of the Subsystem methods.
var (
	ErrNamespaceExists  = errors.New("nvme: namespace ID in use")
	ErrNoNamespace      = errors.New("nvme: no such namespace")
	ErrInvalidNSID      = errors.New("nvme: namespace ID out of range")
	ErrSubsystemClosed  = errors.New("nvme: subsystem closed")
	errControllerIDsOut = errors.New("nvme: no free controller ID")
)

// SubsystemConfig describes an NVM subsystem.
type SubsystemConfig struct {
	// NQN is the subsystem's NVMe Qualified Name.
	NQN string
	// Serial is the serial number every controller reports (at most 20
	// ASCII characters), unique per subsystem.
	Serial string
	// Model is the model number; empty means "Anvil Volume".
	Model string
	// Firmware is the firmware revision (at most 8 characters); empty
	// means "0001".
	Firmware string
	// AllowAnyHost admits every host NQN; otherwise only Hosts.
	AllowAnyHost bool
	// Hosts are the host NQNs admitted.
	Hosts []string
	// Logger receives the subsystem's logs; nil means slog.Default().
	Logger *slog.Logger
}

// Subsystem is an NVM subsystem: namespaces and the controllers hosts
// connected to them. All methods are safe for concurrent use.
type Subsystem struct {
	cfg       SubsystemConfig
	log       *slog.Logger
	discovery bool

	mu       sync.Mutex
	anyHost  bool
	hosts    map[string]bool
	ns       map[uint32]*nsEntry
	ctrls    map[uint16]*Controller
	nextID   uint16
	closed   bool
	watchers []*Target
}

// nsEntry counts the commands running on a namespace so that
// RemoveNamespace can wait for them.
type nsEntry struct {
	ns *Namespace
	wg sync.WaitGroup
}

// NewSubsystem returns an empty subsystem.
func NewSubsystem(cfg SubsystemConfig) *Subsystem {
	if cfg.Model == "" {
		cfg.Model = "Anvil Volume"
	}
	if cfg.Firmware == "" {
		cfg.Firmware = "0001"
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Subsystem{
		cfg:    cfg,
		log:    cfg.Logger.With("subsystem", cfg.NQN),
		ns:     make(map[uint32]*nsEntry),
		ctrls:  make(map[uint16]*Controller),
		nextID: 1,
	}
	s.setHosts(cfg.AllowAnyHost, cfg.Hosts)
	return s
}

// NQN is the subsystem's NQN.
func (s *Subsystem) NQN() string { return s.cfg.NQN }

// Serial is the serial number its controllers report.
func (s *Subsystem) Serial() string { return s.cfg.Serial }

func (s *Subsystem) setHosts(any bool, hosts []string) {
	s.anyHost = any
	s.hosts = make(map[string]bool, len(hosts))
	for _, h := range hosts {
		s.hosts[h] = true
	}
}

// SetHosts replaces the access list. Controllers of hosts no longer
// admitted are torn down, and the discovery logs change.
func (s *Subsystem) SetHosts(any bool, hosts []string) {
	s.mu.Lock()
	s.setHosts(any, hosts)
	var gone []*Controller
	for _, c := range s.ctrls {
		if !s.allowsLocked(c.hostNQN) {
			gone = append(gone, c)
		}
	}
	watchers := slices.Clone(s.watchers)
	s.mu.Unlock()
	for _, c := range gone {
		c.teardown("host no longer admitted")
	}
	for _, t := range watchers {
		t.DiscoveryChanged()
	}
}

// Allows reports whether hostNQN may connect.
func (s *Subsystem) Allows(hostNQN string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.allowsLocked(hostNQN)
}

func (s *Subsystem) allowsLocked(hostNQN string) bool {
	return s.discovery || s.anyHost || s.hosts[hostNQN]
}

// AddNamespace attaches ns to the subsystem, live: every controller gets
// the Namespace Attribute Changed event.
func (s *Subsystem) AddNamespace(ns *Namespace) error {
	id := ns.ID()
	if id == 0 || id > maxNSID {
		return fmt.Errorf("nvme: add namespace %d to %s: %w", id, s.cfg.NQN, ErrInvalidNSID)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("nvme: add namespace %d to %s: %w", id, s.cfg.NQN, ErrSubsystemClosed)
	}
	if _, ok := s.ns[id]; ok {
		s.mu.Unlock()
		return fmt.Errorf("nvme: add namespace %d to %s: %w", id, s.cfg.NQN, ErrNamespaceExists)
	}
	s.ns[id] = &nsEntry{ns: ns}
	s.mu.Unlock()
	s.log.Info("namespace added", "nsid", id, "volume", ns.Volume().Name())
	s.NamespaceChanged(id)
	return nil
}

// RemoveNamespace detaches namespace nsid, live. Commands already running
// on it finish first; later ones fail with Invalid Namespace. Every
// controller gets the Namespace Attribute Changed event.
func (s *Subsystem) RemoveNamespace(nsid uint32) error {
	s.mu.Lock()
	e, ok := s.ns[nsid]
	if ok {
		delete(s.ns, nsid)
	}
	s.mu.Unlock()
	if !ok {
		return fmt.Errorf("nvme: remove namespace %d from %s: %w", nsid, s.cfg.NQN, ErrNoNamespace)
	}
	e.wg.Wait()
	s.log.Info("namespace removed", "nsid", nsid)
	s.NamespaceChanged(nsid)
	return nil
}

// NamespaceChanged raises the Namespace Attribute Changed event for nsid
// on every controller (the namespace was resized, added or removed).
func (s *Subsystem) NamespaceChanged(nsid uint32) {
	for _, c := range s.controllers() {
		c.namespaceChanged(nsid)
	}
}

// Namespaces lists the attached namespaces in NSID order.
func (s *Subsystem) Namespaces() []*Namespace {
	s.mu.Lock()
	out := make([]*Namespace, 0, len(s.ns))
	for _, e := range s.ns {
		out = append(out, e.ns)
	}
	s.mu.Unlock()
	slices.SortFunc(out, func(a, b *Namespace) int { return cmpU32(a.ID(), b.ID()) })
	return out
}

func cmpU32(a, b uint32) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// acquire returns namespace nsid and holds it against removal until
// release is called.
func (s *Subsystem) acquire(nsid uint32) (ns *Namespace, release func(), ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.ns[nsid]
	if !ok {
		return nil, nil, false
	}
	e.wg.Add(1)
	return e.ns, e.wg.Done, true
}

// Close deletes the subsystem: its controllers are torn down and new
// connections are refused.
func (s *Subsystem) Close() {
	s.mu.Lock()
	s.closed = true
	watchers := slices.Clone(s.watchers)
	s.watchers = nil
	s.mu.Unlock()
	for _, c := range s.controllers() {
		c.teardown("subsystem deleted")
	}
	for _, t := range watchers {
		t.unwatch(s)
		t.DiscoveryChanged()
	}
}

func (s *Subsystem) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

func (s *Subsystem) addWatcher(t *Target) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed && !slices.Contains(s.watchers, t) {
		s.watchers = append(s.watchers, t)
	}
}

func (s *Subsystem) controllers() []*Controller {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Controller, 0, len(s.ctrls))
	for _, c := range s.ctrls {
		out = append(out, c)
	}
	return out
}

// multiController reports whether more than one controller may attach
// (CMIC bit 1, NMIC bit 0): always, since every host and path gets its
// own controller.
func (s *Subsystem) multiController() bool { return !s.discovery }

// register gives c a controller ID unique in the subsystem, from 1 to
// 0xFFEF, handing IDs out round-robin so that a reconnecting host does
// not get the ID of a controller it may still be tearing down.
func (s *Subsystem) register(c *Controller) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrSubsystemClosed
	}
	for range 0xffef {
		id := s.nextID
		s.nextID++
		if s.nextID > 0xffef {
			s.nextID = 1
		}
		if _, used := s.ctrls[id]; !used {
			c.id = id
			s.ctrls[id] = c
			return nil
		}
	}
	return errControllerIDsOut
}

func (s *Subsystem) unregister(c *Controller) {
	s.mu.Lock()
	if s.ctrls[c.id] == c {
		delete(s.ctrls, c.id)
	}
	s.mu.Unlock()
}

func (s *Subsystem) controller(id uint16) (*Controller, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c, ok := s.ctrls[id]
	return c, ok
}

// flushAll flushes every namespace, for a controller shutdown.
func (s *Subsystem) flushAll(ctx context.Context) error {
	var errs []error
	for _, ns := range s.Namespaces() {
		if err := ns.Volume().Flush(ctx); err != nil {
			errs = append(errs, fmt.Errorf("nvme: flush namespace %d: %w", ns.ID(), err))
		}
	}
	return errors.Join(errs...)
}

// discoveryLogChanged raises the Discovery Log Change event on every
// controller of the discovery subsystem.
func (s *Subsystem) discoveryLogChanged() {
	for _, c := range s.controllers() {
		c.raiseEvent(eventDiscoveryChange)
	}
}
