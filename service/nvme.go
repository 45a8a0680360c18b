package service

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/target/nvme"
)

// The NVMe records the service hands out, under the service's names (see
// status.go).
type (
	// SubsystemRecord is an NVMe subsystem's persistent record.
	SubsystemRecord = catalog.Subsystem
	// NamespaceRecord is one namespace of a subsystem.
	NamespaceRecord = catalog.Namespace
)

// DemoNQN is the NVMe subsystem that exports the demo volume as namespace
// 1 on a fresh data directory.
const DemoNQN = "nqn.2026-11.io.anvil:demo"

// MaxNSID is the highest namespace ID a subsystem takes; the NVMe core
// reports it as Identify Controller NN.
const MaxNSID = 1024

// liveSubsystem is a running NVMe subsystem: its catalog record and the
// core's subsystem the NVMe front end finds through nvme.Registry.
type liveSubsystem struct {
	rec  catalog.Subsystem
	nvme *nvme.Subsystem
}

// nqnName matches the two NQN formats of NVMe Base 2.0 section 4.5: a
// date and reverse domain name owned by the naming authority with a
// colon-separated string of its choosing, and the UUID form.
var (
	nqnName = regexp.MustCompile(`^nqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)+:[\x21-\x7e]+$`)
	nqnUUID = regexp.MustCompile(`^nqn\.2014-08\.org\.nvmexpress:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$`)
)

// ValidateNQN checks an NVMe Qualified Name. NQNs are compared byte for
// byte (the spec makes them case-sensitive), so unlike IQNs nothing is
// normalised. The discovery NQN is refused: no subsystem or host may take
// the name the discovery controller answers to.
func ValidateNQN(field, name string) error {
	if name == nvme.DiscoveryNQN {
		return invalid(field, "%q is the well-known discovery NQN", name)
	}
	// 223 bytes is SUBNQN's limit: the 256-byte field holds a NUL too
	// and the spec keeps the rest reserved.
	if len(name) > 223 || !(nqnName.MatchString(name) || nqnUUID.MatchString(name)) {
		return invalid(field, "%q is not a valid NQN (nqn.YYYY-MM.reverse.domain:name or nqn.2014-08.org.nvmexpress:uuid:<uuid>, at most 223 bytes)", name)
	}
	return nil
}

// SubsystemSpec is a request to create a subsystem.
type SubsystemSpec struct {
	NQN string
	// Serial is Identify Controller SN (up to 20 printable ASCII
	// characters); empty generates one.
	Serial       string
	AllowAnyHost bool
	Hosts        []string
}

func validateHosts(hosts []string) ([]string, error) {
	out := make([]string, 0, len(hosts))
	seen := map[string]bool{}
	for i, h := range hosts {
		if err := ValidateNQN(fmt.Sprintf("hosts[%d]", i), h); err != nil {
			return nil, err
		}
		if !seen[h] {
			seen[h] = true
			out = append(out, h)
		}
	}
	sort.Strings(out)
	return out, nil
}

// newSerial makes a subsystem serial number: 20 hex digits, the width of
// Identify Controller SN, random so that two subsystems never share one.
func newSerial() (string, error) {
	var b [10]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("generate serial: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}

// CreateSubsystem creates an NVMe subsystem with no namespaces.
func (s *Service) CreateSubsystem(spec SubsystemSpec) (SubsystemRecord, error) {
	if err := ValidateNQN("nqn", spec.NQN); err != nil {
		return SubsystemRecord{}, err
	}
	if len(spec.Serial) > 20 {
		return SubsystemRecord{}, invalid("serial", "longer than 20 characters")
	}
	for _, c := range []byte(spec.Serial) {
		if c < 0x20 || c > 0x7e {
			return SubsystemRecord{}, invalid("serial", "must be printable ASCII")
		}
	}
	hosts, err := validateHosts(spec.Hosts)
	if err != nil {
		return SubsystemRecord{}, err
	}
	serial := strings.TrimSpace(spec.Serial)
	if serial == "" {
		if serial, err = newSerial(); err != nil {
			return SubsystemRecord{}, err
		}
	}
	rec := catalog.Subsystem{NQN: spec.NQN, Serial: serial, AllowAnyHost: spec.AllowAnyHost, Hosts: hosts, Namespaces: []catalog.Namespace{}, Created: time.Now().UTC()}
	s.mu.Lock()
	if _, ok := s.subsystems[rec.NQN]; ok {
		s.mu.Unlock()
		return SubsystemRecord{}, fmt.Errorf("subsystem %q: %w", rec.NQN, ErrExists)
	}
	ls, err := s.buildSubsystem(rec)
	if err == nil {
		err = s.cat.Update(func(tx *catalog.Tx) error { return tx.CreateSubsystem(rec) })
	}
	if err != nil {
		s.mu.Unlock()
		return SubsystemRecord{}, err
	}
	s.subsystems[rec.NQN] = ls
	s.mu.Unlock()
	s.log.Info("created subsystem", "subsystem", rec.NQN, "allow_any_host", rec.AllowAnyHost, "hosts", len(rec.Hosts))
	s.nvmeDiscoveryChanged()
	return rec, nil
}

// buildSubsystem makes the running subsystem for rec with its namespaces.
// The caller holds mu (or is restoring).
func (s *Service) buildSubsystem(rec catalog.Subsystem) (*liveSubsystem, error) {
	sub := nvme.NewSubsystem(nvme.SubsystemConfig{
		NQN:          rec.NQN,
		Serial:       rec.Serial,
		Model:        "Anvil Volume",
		Firmware:     "0001",
		AllowAnyHost: rec.AllowAnyHost,
		Hosts:        rec.Hosts,
		Logger:       s.log.With("subsystem", rec.NQN),
	})
	for _, n := range rec.Namespaces {
		if _, off := s.offline[n.Volume]; off {
			s.log.Warn("namespace left out: its volume is offline", "subsystem", rec.NQN, "nsid", n.NSID, "volume", n.Volume)
			continue
		}
		ns, err := s.namespace(n)
		if err == nil {
			err = sub.AddNamespace(ns)
		}
		if err != nil {
			sub.Close()
			return nil, fmt.Errorf("subsystem %q namespace %d: %w", rec.NQN, n.NSID, err)
		}
	}
	return &liveSubsystem{rec: rec, nvme: sub}, nil
}

// namespace makes the core's namespace for a catalogued one: the volume
// with its stored identifiers and the range locks its LU shares. The
// caller holds mu.
func (s *Service) namespace(n catalog.Namespace) (*nvme.Namespace, error) {
	lv, ok := s.volumes[n.Volume]
	if !ok {
		return nil, s.missingLocked(n.Volume)
	}
	nguid, err := hex.DecodeString(n.NGUID)
	if err != nil || len(nguid) != 16 {
		return nil, fmt.Errorf("stored NGUID %q is not 32 hex digits", n.NGUID)
	}
	uuid, err := parseUUID(n.UUID)
	if err != nil {
		return nil, err
	}
	name := n.Volume
	cfg := nvme.NamespaceConfig{
		NSID:           n.NSID,
		UUID:           uuid,
		Locks:          lv.locks,
		SaveWriteCache: func(on bool) error { return s.saveWriteCache(name, on) },
		Logger:         s.log.With("volume", name, "nsid", n.NSID),
	}
	copy(cfg.NGUID[:], nguid)
	return nvme.NewNamespace(lv.vol, cfg), nil
}

// parseUUID reads the RFC 9562 text form.
func parseUUID(text string) ([16]byte, error) {
	var u [16]byte
	h := strings.ReplaceAll(text, "-", "")
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != 16 || len(text) != 36 {
		return u, fmt.Errorf("stored UUID %q is not in 8-4-4-4-12 form", text)
	}
	copy(u[:], b)
	return u, nil
}

func formatUUID(u [16]byte) string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:]
}

// newIdentifiers makes a namespace's NGUID and a version 4 UUID, both
// random and never zero (a zero value means "none" to a host), and unlike
// every identifier already catalogued, so that no two namespaces of any
// subsystems ever share one. The caller holds mu.
func (s *Service) newIdentifiers() (nguid, uuid string, err error) {
	used := map[string]bool{}
	for _, ls := range s.subsystems {
		for _, n := range ls.rec.Namespaces {
			used[n.NGUID], used[n.UUID] = true, true
		}
	}
	var zero [16]byte
	for {
		var g, u [16]byte
		if _, err := rand.Read(g[:]); err != nil {
			return "", "", fmt.Errorf("generate NGUID: %w", err)
		}
		if _, err := rand.Read(u[:]); err != nil {
			return "", "", fmt.Errorf("generate UUID: %w", err)
		}
		u[6] = u[6]&0x0f | 0x40 // version 4
		u[8] = u[8]&0x3f | 0x80 // variant 10
		nguid, uuid = hex.EncodeToString(g[:]), formatUUID(u)
		if g != zero && !used[nguid] && !used[uuid] {
			return nguid, uuid, nil
		}
	}
}

// lookupSubsystem finds a live subsystem. The caller holds mu.
func (s *Service) lookupSubsystem(nqn string) (*liveSubsystem, error) {
	ls, ok := s.subsystems[nqn]
	if !ok {
		return nil, fmt.Errorf("subsystem %q: %w", nqn, ErrNotFound)
	}
	return ls, nil
}

// Subsystem returns a subsystem's record.
func (s *Service) Subsystem(nqn string) (SubsystemRecord, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	ls, err := s.lookupSubsystem(nqn)
	if err != nil {
		return SubsystemRecord{}, err
	}
	return ls.rec, nil
}

// Subsystems returns every subsystem's record, sorted by NQN.
func (s *Service) Subsystems() []SubsystemRecord {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]SubsystemRecord, 0, len(s.subsystems))
	for _, ls := range s.subsystems {
		out = append(out, ls.rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NQN < out[j].NQN })
	return out
}

// DeleteSubsystem removes a subsystem; its controllers are torn down.
func (s *Service) DeleteSubsystem(nqn string) error {
	s.mu.Lock()
	ls, err := s.lookupSubsystem(nqn)
	if err == nil {
		err = s.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteSubsystem(nqn) })
	}
	if err != nil {
		s.mu.Unlock()
		return err
	}
	delete(s.subsystems, nqn)
	s.mu.Unlock()
	ls.nvme.Close()
	s.log.Info("deleted subsystem", "subsystem", nqn)
	s.nvmeDiscoveryChanged()
	return nil
}

// AddNamespace exports a volume as namespace nsid of a subsystem, live:
// connected hosts learn of it through the Namespace Attribute Changed
// event. nsid 0 takes the lowest free ID. One volume may be a namespace of
// several subsystems and a LUN of iSCSI targets at once; they share its
// range locks.
func (s *Service) AddNamespace(nqn string, nsid uint32, volume string) (NamespaceRecord, error) {
	if nsid > MaxNSID {
		return NamespaceRecord{}, invalid("nsid", "%d: must be 1..%d (0 picks the lowest free)", nsid, MaxNSID)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	ls, err := s.lookupSubsystem(nqn)
	if err != nil {
		return NamespaceRecord{}, err
	}
	if _, ok := s.volumes[volume]; !ok {
		return NamespaceRecord{}, s.missingLocked(volume)
	}
	taken := map[uint32]bool{}
	for _, n := range ls.rec.Namespaces {
		taken[n.NSID] = true
		if n.Volume == volume {
			return NamespaceRecord{}, fmt.Errorf("volume %q is already namespace %d of %q: %w", volume, n.NSID, nqn, ErrExists)
		}
	}
	if nsid == 0 {
		for nsid = 1; taken[nsid]; nsid++ {
		}
		if nsid > MaxNSID {
			return NamespaceRecord{}, fmt.Errorf("subsystem %q has no free namespace ID: %w", nqn, ErrInUse)
		}
	} else if taken[nsid] {
		return NamespaceRecord{}, fmt.Errorf("subsystem %q namespace %d: %w", nqn, nsid, ErrExists)
	}
	nr := catalog.Namespace{NSID: nsid, Volume: volume}
	if nr.NGUID, nr.UUID, err = s.newIdentifiers(); err != nil {
		return NamespaceRecord{}, err
	}
	ns, err := s.namespace(nr)
	if err != nil {
		return NamespaceRecord{}, err
	}
	rec := ls.rec
	rec.Namespaces = append(append([]catalog.Namespace(nil), rec.Namespaces...), nr)
	sort.Slice(rec.Namespaces, func(i, j int) bool { return rec.Namespaces[i].NSID < rec.Namespaces[j].NSID })
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutSubsystem(rec) }); err != nil {
		return NamespaceRecord{}, err
	}
	if err := ls.nvme.AddNamespace(ns); err != nil {
		// Undo the record so that catalog and live state agree.
		if uerr := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutSubsystem(ls.rec) }); uerr != nil {
			s.log.Error("undo namespace record after live failure", "subsystem", nqn, "nsid", nsid, "err", uerr)
		}
		return NamespaceRecord{}, fmt.Errorf("subsystem %q: %w", nqn, err)
	}
	ls.rec = rec
	s.log.Info("added namespace", "subsystem", nqn, "nsid", nsid, "volume", volume, "nguid", nr.NGUID, "uuid", nr.UUID)
	return nr, nil
}

// RemoveNamespace removes a namespace from a subsystem, live.
func (s *Service) RemoveNamespace(nqn string, nsid uint32) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	ls, err := s.lookupSubsystem(nqn)
	if err != nil {
		return err
	}
	rec := ls.rec
	rec.Namespaces = nil
	var volume string
	for _, n := range ls.rec.Namespaces {
		if n.NSID == nsid {
			volume = n.Volume
		} else {
			rec.Namespaces = append(rec.Namespaces, n)
		}
	}
	if len(rec.Namespaces) == len(ls.rec.Namespaces) {
		return fmt.Errorf("subsystem %q namespace %d: %w", nqn, nsid, ErrNotFound)
	}
	if rec.Namespaces == nil {
		rec.Namespaces = []catalog.Namespace{}
	}
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutSubsystem(rec) }); err != nil {
		return err
	}
	ls.rec = rec
	// An offline volume's namespace was never added to the live subsystem.
	if _, off := s.offline[volume]; !off {
		if err := ls.nvme.RemoveNamespace(nsid); err != nil {
			s.log.Warn("remove live namespace", "subsystem", nqn, "nsid", nsid, "err", err)
		}
	}
	s.log.Info("removed namespace", "subsystem", nqn, "nsid", nsid, "volume", volume)
	return nil
}

// SetSubsystemHosts replaces a subsystem's access list. Controllers of
// hosts no longer admitted are torn down; discovery logs change.
func (s *Service) SetSubsystemHosts(nqn string, anyHost bool, hosts []string) (SubsystemRecord, error) {
	hosts, err := validateHosts(hosts)
	if err != nil {
		return SubsystemRecord{}, err
	}
	s.mu.Lock()
	ls, err := s.lookupSubsystem(nqn)
	if err != nil {
		s.mu.Unlock()
		return SubsystemRecord{}, err
	}
	rec := ls.rec
	rec.AllowAnyHost, rec.Hosts = anyHost, hosts
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutSubsystem(rec) }); err != nil {
		s.mu.Unlock()
		return SubsystemRecord{}, err
	}
	ls.rec = rec
	s.mu.Unlock()
	// Outside mu: tearing controllers down waits for their commands,
	// which may need the service (a write cache save).
	ls.nvme.SetHosts(anyHost, hosts)
	s.log.Info("set subsystem hosts", "subsystem", nqn, "allow_any_host", anyHost, "hosts", len(hosts))
	return rec, nil
}

// exportedLocked lists the live subsystems and NSIDs exporting a volume.
// The caller holds mu.
func (s *Service) exportedLocked(volume string) map[*liveSubsystem][]uint32 {
	out := map[*liveSubsystem][]uint32{}
	for _, ls := range s.subsystems {
		for _, n := range ls.rec.Namespaces {
			if n.Volume == volume {
				out[ls] = append(out[ls], n.NSID)
			}
		}
	}
	return out
}

// namespacesChangedLocked tells every subsystem exporting the volume that
// its namespace changed (a resize), so hosts get the AEN. The caller holds
// mu.
func (s *Service) namespacesChangedLocked(volume string) {
	for ls, ids := range s.exportedLocked(volume) {
		for _, id := range ids {
			ls.nvme.NamespaceChanged(id)
		}
	}
}

// addNamespacesLocked puts a volume back into the subsystems that export
// it, when RecheckVolume brings it online. The caller holds mu.
func (s *Service) addNamespacesLocked(volume string) {
	for ls := range s.exportedLocked(volume) {
		for _, n := range ls.rec.Namespaces {
			if n.Volume != volume {
				continue
			}
			ns, err := s.namespace(n)
			if err == nil {
				err = ls.nvme.AddNamespace(ns)
			}
			if err != nil {
				s.log.Error("export rechecked volume", "volume", volume, "subsystem", ls.rec.NQN, "nsid", n.NSID, "err", err)
			}
		}
	}
}

// SetNVMeDiscoveryHook sets the function called after a subsystem is
// created or deleted (serve passes the NVMe target's DiscoveryChanged).
func (s *Service) SetNVMeDiscoveryHook(fn func()) {
	if fn == nil {
		s.nvmeHook.Store(nil)
		return
	}
	s.nvmeHook.Store(&fn)
}

func (s *Service) nvmeDiscoveryChanged() {
	if fn := s.nvmeHook.Load(); fn != nil {
		(*fn)()
	}
}

// NVMeRegistry returns the view of the service the NVMe core finds its
// subsystems through.
func (s *Service) NVMeRegistry() nvme.Registry { return nvmeRegistry{s} }

type nvmeRegistry struct{ s *Service }

func (r nvmeRegistry) Subsystem(nqn string) (*nvme.Subsystem, bool) {
	r.s.mu.RLock()
	defer r.s.mu.RUnlock()
	ls, ok := r.s.subsystems[nqn]
	if !ok {
		return nil, false
	}
	return ls.nvme, true
}

func (r nvmeRegistry) Subsystems() []*nvme.Subsystem {
	r.s.mu.RLock()
	defer r.s.mu.RUnlock()
	out := make([]*nvme.Subsystem, 0, len(r.s.subsystems))
	for _, ls := range r.s.subsystems {
		out = append(out, ls.nvme)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NQN() < out[j].NQN() })
	return out
}
