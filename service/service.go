// Package service owns Anvil's live state: the catalog, the open engine
// volumes, and the SCSI targets that export them. Start-up restores it from
// the catalog, the REST API changes it through the same methods, and the
// iSCSI front end resolves logins through it (it implements
// iscsi.Registry). Every change is persisted in one catalog transaction
// before it is applied to the running targets, so a crash never leaves the
// catalog describing something the daemon did not do, or the reverse for
// longer than one call.
package service

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/engine"
	"github.com/anvilproject/anvil/internal/rangelock"
	"github.com/anvilproject/anvil/target/scsi"
)

// Demo volume and target created on an empty data directory.
const (
	DemoVolume = "demo"
	DemoIQN    = "iqn.2026-11.io.anvil:demo"
	DemoSize   = 1 << 30
)

// Errors callers map to API status codes; test with errors.Is.
var (
	ErrNotFound = catalog.ErrNotFound
	ErrExists   = catalog.ErrExists
	ErrInUse    = errors.New("in use")
	ErrInvalid  = errors.New("invalid")
)

// FieldError is an invalid request field; the API reports Field with a 400.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

// Unwrap lets errors.Is(err, ErrInvalid) match.
func (e *FieldError) Unwrap() error { return ErrInvalid }

func invalid(field, format string, args ...any) error {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Options configure Open.
type Options struct {
	// DataDir holds catalog.db and the volumes' data files.
	DataDir string
	// Demo creates the demo volume and target the first time the data
	// directory is used.
	Demo bool
	// Engine tunes the engine every volume opens with.
	Engine EngineOptions
	// DefaultBackend is the backend of new volumes that name none: "file"
	// (default) or "mmap".
	DefaultBackend string
	// ImportDirs are the directories whose files ImportPath may read;
	// empty allows none.
	ImportDirs []string
	// BlockDevices are the device paths or globs that block volumes and
	// ImportPath may use; empty allows none.
	BlockDevices []string
	// Logger receives the service's logs; nil means slog.Default().
	Logger *slog.Logger
	// SpaceWarnPercent is the share of the data directory's file system
	// in use at which thin volumes' initiators get the soft threshold
	// unit attention; 0 turns the check off.
	SpaceWarnPercent int
	// SpaceCheckInterval is how often that is checked; 0 means
	// DefaultSpaceCheckInterval.
	SpaceCheckInterval time.Duration
}

// EngineOptions are the engine settings shared by every volume.
type EngineOptions struct {
	// Cache is the buffer cache all volumes share (one memory budget);
	// nil means engine.DefaultCache().
	Cache *engine.Cache
	// FlushInterval is the background commit period; 0 means the engine's
	// default (5 s).
	FlushInterval time.Duration
	// UndoSize is the size of a new volume's undo FIFO; 0 means the
	// engine's default (256 MiB).
	UndoSize int64
}

// Service is the daemon's live state.
type Service struct {
	dataDir        string
	lock           *os.File // flock on LockFile, held until Close
	space          space    // the data directory's file system; its own lock
	cat            *catalog.Catalog
	log            *slog.Logger
	engine         EngineOptions
	defaultBackend string
	importDirs     []string
	blockDevices   []string

	// mu guards the maps. Changes hold it exclusively across the catalog
	// transaction and the live update, so the two never disagree as seen
	// by another caller.
	mu      sync.RWMutex
	volumes map[string]*liveVolume
	offline map[string]*offlineVolume // catalogued volumes restore could not open
	targets map[string]*liveTarget    // key: lower-case IQN
	// subsystems are the NVMe subsystems, keyed by NQN (case-sensitive).
	subsystems map[string]*liveSubsystem
	// discCHAP are the discovery sessions' CHAP credentials (nil: none).
	discCHAP *catalog.CHAP

	// accessHook is called after every change that can revoke a live
	// session's access (SetAccessHook).
	accessHook atomic.Pointer[func()]
	// nvmeHook is called after a subsystem is created or deleted
	// (SetNVMeDiscoveryHook).
	nvmeHook atomic.Pointer[func()]
}

type liveVolume struct {
	rec catalog.Volume
	vol engine.Volume
	lu  *scsi.LogicalUnit
	// locks are the volume's block range locks, shared by its logical
	// unit and every namespace exporting it, so that a Compare-and-Write
	// on one front end is atomic against writes on the other.
	locks *rangelock.Locks
}

const metaInitialized = "initialized"

// Open opens the catalog in opts.DataDir, opens every volume and builds
// every target it records. On a data directory used for the first time it
// creates the demo volume and target when opts.Demo is set.
func Open(opts Options) (*Service, error) {
	log := opts.Logger
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(filepath.Join(opts.DataDir, "volumes"), 0o750); err != nil {
		return nil, fmt.Errorf("create data directory: %w", err)
	}
	lock, err := lockDataDir(opts.DataDir)
	if err != nil {
		return nil, err
	}
	cat, err := catalog.Open(filepath.Join(opts.DataDir, "catalog.db"))
	if err != nil {
		lock.Close()
		return nil, err
	}
	backend, err := validateBackend(opts.DefaultBackend, string(engine.BackendFile))
	if err != nil || backend == string(engine.BackendBlock) {
		cat.Close()
		lock.Close()
		return nil, fmt.Errorf("default volume backend %q: must be file or mmap", opts.DefaultBackend)
	}
	if err := checkAllowLists(opts.ImportDirs, opts.BlockDevices); err != nil {
		cat.Close()
		return nil, err
	}
	if opts.Engine.Cache == nil {
		opts.Engine.Cache = engine.DefaultCache()
	}
	s := &Service{
		importDirs:     opts.ImportDirs,
		blockDevices:   opts.BlockDevices,
		dataDir:        opts.DataDir,
		lock:           lock,
		cat:            cat,
		log:            log,
		engine:         opts.Engine,
		defaultBackend: backend,
		volumes:        map[string]*liveVolume{},
		offline:        map[string]*offlineVolume{},
		targets:        map[string]*liveTarget{},
		subsystems:     map[string]*liveSubsystem{},
		space:          space{warnPercent: opts.SpaceWarnPercent, statfs: statfsFree},
	}
	if err := s.restore(); err != nil {
		s.Close()
		return nil, err
	}
	var first bool
	err = cat.Update(func(tx *catalog.Tx) error {
		first = tx.Meta(metaInitialized) == nil
		return tx.SetMeta(metaInitialized, []byte(time.Now().UTC().Format(time.RFC3339)))
	})
	if err != nil {
		s.Close()
		return nil, fmt.Errorf("mark data directory initialized: %w", err)
	}
	if first && opts.Demo {
		if err := s.createDemo(); err != nil {
			s.Close()
			return nil, fmt.Errorf("create demo volume: %w", err)
		}
	}
	s.startSpaceMonitor(opts.SpaceCheckInterval)
	return s, nil
}

func (s *Service) createDemo() error {
	ctx := context.Background()
	if _, err := s.CreateVolume(ctx, VolumeSpec{Name: DemoVolume, SizeBytes: DemoSize}); err != nil {
		return err
	}
	if _, err := s.CreateTarget(TargetSpec{IQN: DemoIQN, Alias: "Anvil demo", ACL: catalog.ACL{Open: true}}); err != nil {
		return err
	}
	if err := s.MapLUN(DemoIQN, 0, DemoVolume); err != nil {
		return err
	}
	if _, err := s.CreateSubsystem(SubsystemSpec{NQN: DemoNQN, AllowAnyHost: true}); err != nil {
		return err
	}
	if _, err := s.AddNamespace(DemoNQN, 1, DemoVolume); err != nil {
		return err
	}
	s.log.Info("created demo volume", "volume", DemoVolume, "target", DemoIQN, "lun", 0, "subsystem", DemoNQN, "nsid", 1, "size_bytes", DemoSize)
	return nil
}

// restore opens every catalogued volume and target.
func (s *Service) restore() error {
	var vols []catalog.Volume
	var tgts []catalog.Target
	var subs []catalog.Subsystem
	err := s.cat.View(func(tx *catalog.Tx) error {
		var err error
		if vols, err = tx.Volumes(); err != nil {
			return err
		}
		if tgts, err = tx.Targets(); err != nil {
			return err
		}
		if subs, err = tx.Subsystems(); err != nil {
			return err
		}
		s.discCHAP, err = tx.DiscoveryCHAP()
		return err
	})
	if err != nil {
		return fmt.Errorf("read catalog: %w", err)
	}
	for _, rec := range vols {
		lv, err := s.openCatalogued(rec)
		if err != nil {
			// One volume's damaged files must not keep the daemon, and
			// every healthy volume, down; this one waits for an operator.
			s.log.Error("volume is offline", "volume", rec.Name, "reason", err)
			s.offline[rec.Name] = &offlineVolume{rec: rec, reason: err.Error()}
			continue
		}
		s.volumes[rec.Name] = lv
	}
	for _, rec := range tgts {
		lt, err := s.buildTarget(rec)
		if err != nil {
			return err
		}
		s.targets[strings.ToLower(rec.IQN)] = lt
	}
	for _, rec := range subs {
		ls, err := s.buildSubsystem(rec)
		if err != nil {
			return err
		}
		s.subsystems[rec.NQN] = ls
	}
	s.log.Info("restored state from catalog", "volumes", len(vols), "offline", len(s.offline), "targets", len(tgts), "subsystems", len(subs))
	return nil
}

// Close flushes and closes every volume, then the catalog. It is the last
// step of a graceful shutdown.
func (s *Service) Close() error {
	s.stopSpaceMonitor()
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for name, lv := range s.volumes {
		if err := lv.vol.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close volume %q: %w", name, err))
		}
	}
	s.volumes = map[string]*liveVolume{}
	s.offline = map[string]*offlineVolume{}
	s.targets = map[string]*liveTarget{}
	for _, ls := range s.subsystems {
		ls.nvme.Close()
	}
	s.subsystems = map[string]*liveSubsystem{}
	if s.cat != nil {
		if err := s.cat.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close catalog: %w", err))
		}
		s.cat = nil
	}
	if s.lock != nil {
		s.lock.Close() // releases the flock
		s.lock = nil
	}
	return errors.Join(errs...)
}

// FlushAll flushes every volume, returning the first errors joined.
func (s *Service) FlushAll(ctx context.Context) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var errs []error
	for name, lv := range s.volumes {
		if err := lv.vol.Flush(ctx); err != nil {
			errs = append(errs, fmt.Errorf("flush volume %q: %w", name, err))
		}
	}
	return errors.Join(errs...)
}

// ---- volumes ----

// VolumeSpec is a request to create a volume.
type VolumeSpec struct {
	Name       string
	SizeBytes  int64
	BlockSize  int   // 512 (default) or 4096
	WriteCache *bool // default on
	ReadOnly   bool
	// Backend is "file" or "mmap" (a raw image in the data directory) or
	// "block" (the raw block device Device); empty means the service's
	// default backend.
	Backend string
	// Device is the block device of a "block" volume. Its size is the
	// volume's size; SizeBytes may be left zero.
	Device string
}

var volumeName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// MaxVolumeSize bounds a volume at 64 TiB, well inside every field that
// reports capacity (READ CAPACITY 16, NVMe NSZE) and the filesystems that
// hold sparse files.
const MaxVolumeSize = 64 << 40

// validateBackend checks a backend name; empty means def.
func validateBackend(b, def string) (string, error) {
	if b == "" {
		b = def
	}
	switch engine.Backend(b) {
	case engine.BackendFile, engine.BackendMmap, engine.BackendBlock:
		return b, nil
	}
	return "", invalid("backend", "%q: must be file, mmap or block", b)
}

func (spec *VolumeSpec) validate(defaultBackend string) error {
	if !volumeName.MatchString(spec.Name) {
		return invalid("name", "%q: 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit", spec.Name)
	}
	if spec.BlockSize == 0 {
		spec.BlockSize = 512
	}
	if spec.BlockSize != 512 && spec.BlockSize != 4096 {
		return invalid("block_size", "%d: must be 512 or 4096", spec.BlockSize)
	}
	var err error
	if spec.Backend, err = validateBackend(spec.Backend, defaultBackend); err != nil {
		return err
	}
	if spec.Backend == string(engine.BackendBlock) {
		st, err := os.Stat(spec.Device)
		if spec.Device == "" || err != nil || st.Mode()&os.ModeDevice == 0 || st.Mode()&os.ModeCharDevice != 0 {
			return invalid("device", "%q: a block volume needs an existing block device", spec.Device)
		}
		if spec.SizeBytes != 0 {
			return invalid("size_bytes", "a block volume takes its size from the device; leave size_bytes out")
		}
		return nil
	}
	if spec.Device != "" {
		return invalid("device", "only a block volume has a device")
	}
	if spec.SizeBytes <= 0 || spec.SizeBytes > MaxVolumeSize || spec.SizeBytes%int64(spec.BlockSize) != 0 {
		return invalid("size_bytes", "%d: must be a positive multiple of the block size (%d), at most %d", spec.SizeBytes, spec.BlockSize, int64(MaxVolumeSize))
	}
	return nil
}

// newNAA makes a locally assigned NAA designator (NAA 3): the high nibble is
// 3 and the other 60 bits are random, unique with overwhelming probability.
func newNAA() ([]byte, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return nil, err
	}
	b[0] = 0x30 | b[0]&0x0f
	return b, nil
}

// newRecord builds the catalog record of a new volume from a validated
// spec, with a fresh NAA identifier and serial number.
func (s *Service) newRecord(spec VolumeSpec) (catalog.Volume, error) {
	naa, err := newNAA()
	if err != nil {
		return catalog.Volume{}, fmt.Errorf("generate NAA identifier: %w", err)
	}
	rec := catalog.Volume{
		Name:       spec.Name,
		SizeBytes:  spec.SizeBytes,
		BlockSize:  spec.BlockSize,
		Thin:       spec.Backend != string(engine.BackendBlock),
		Backend:    spec.Backend,
		Path:       s.newFiles(spec.Name).Data,
		WriteCache: spec.WriteCache == nil || *spec.WriteCache,
		ReadOnly:   spec.ReadOnly,
		Serial:     hex.EncodeToString(naa[1:]),
		NAA:        hex.EncodeToString(naa),
		Created:    time.Now().UTC(),
	}
	if spec.Backend == string(engine.BackendBlock) {
		rec.Path = spec.Device
	}
	return rec, nil
}

// newFiles names the files of a new volume in the data directory.
func (s *Service) newFiles(name string) engine.Files {
	return engine.FilesFor(filepath.Join(s.dataDir, "volumes"), name)
}

// files names the files of a catalogued volume: its data where the catalog
// says (a block device, or a data file) and its undo FIFO always in the
// data directory, also for block volumes, whose device holds only data.
func (s *Service) files(rec catalog.Volume) engine.Files {
	return s.newFiles(rec.Name).WithData(rec.Path)
}

// checkNewLocked fails if a volume named rec.Name exists or its files are
// already there. The caller holds s.mu.
func (s *Service) checkNewLocked(rec catalog.Volume) error {
	if _, ok := s.volumes[rec.Name]; ok {
		return fmt.Errorf("volume %q: %w", rec.Name, ErrExists)
	}
	if _, ok := s.offline[rec.Name]; ok {
		return fmt.Errorf("volume %q (offline): %w", rec.Name, ErrExists)
	}
	if p := s.files(rec).Existing(engine.Backend(rec.Backend)); p != "" {
		return fmt.Errorf("volume %q: %s already exists: %w", rec.Name, p, ErrExists)
	}
	for _, lv := range s.volumes {
		if lv.rec.Path == rec.Path {
			return fmt.Errorf("volume %q: %s is already used by volume %q: %w", rec.Name, rec.Path, lv.rec.Name, ErrInUse)
		}
	}
	for _, off := range s.offline {
		if off.rec.Path == rec.Path {
			return fmt.Errorf("volume %q: %s is already used by offline volume %q: %w", rec.Name, rec.Path, off.rec.Name, ErrInUse)
		}
	}
	return nil
}

// registerLocked opens a new volume and records it in the catalog; on
// failure it removes the files it made. The caller holds s.mu.
func (s *Service) registerLocked(rec catalog.Volume, create bool) (catalog.Volume, error) {
	lv, err := s.openVolume(rec, create)
	if err != nil {
		s.removeFiles(rec)
		return catalog.Volume{}, err
	}
	rec = lv.rec // a block volume learns its size from the device
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.CreateVolume(rec) }); err != nil {
		lv.vol.Close()
		s.removeFiles(rec)
		return catalog.Volume{}, err
	}
	s.volumes[rec.Name] = lv
	return rec, nil
}

// removeFiles deletes a volume's undo FIFO and, unless it is a block
// device, its data file.
func (s *Service) removeFiles(rec catalog.Volume) error {
	if err := engine.Remove(s.files(rec), engine.Backend(rec.Backend)); err != nil {
		return fmt.Errorf("volume %q: %w", rec.Name, err)
	}
	return nil
}

// CreateVolume creates a volume's data file (thin) and catalog record and
// opens it.
func (s *Service) CreateVolume(ctx context.Context, spec VolumeSpec) (catalog.Volume, error) {
	if spec.Backend == string(engine.BackendBlock) && spec.Device != "" {
		dev, err := s.CheckBlockDevice(spec.Device)
		if err != nil {
			return catalog.Volume{}, err
		}
		spec.Device = dev
	}
	if err := spec.validate(s.defaultBackend); err != nil {
		return catalog.Volume{}, err
	}
	rec, err := s.newRecord(spec)
	if err != nil {
		return catalog.Volume{}, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.checkNewLocked(rec); err != nil {
		return catalog.Volume{}, err
	}
	if rec, err = s.registerLocked(rec, true); err != nil {
		return catalog.Volume{}, clientFault(err)
	}
	s.log.Info("created volume", "volume", rec.Name, "size_bytes", rec.SizeBytes, "block_size", rec.BlockSize, "backend", rec.Backend)
	return rec, nil
}

// openVolume opens the engine volume for rec and wraps it in a logical unit.
func (s *Service) openVolume(rec catalog.Volume, create bool) (*liveVolume, error) {
	open := engine.OpenFiles // a missing image must not be recreated empty
	if create {
		open = engine.Create
	}
	ev, err := open(s.files(rec), engine.Options{
		Name:          rec.Name,
		Size:          rec.SizeBytes,
		BlockSize:     rec.BlockSize,
		Backend:       engine.Backend(rec.Backend),
		UndoSize:      s.engine.UndoSize,
		Cache:         s.engine.Cache,
		FlushInterval: s.engine.FlushInterval,
		WriteCacheOff: !rec.WriteCache,
		ReadOnly:      rec.ReadOnly,
		// The API's fault injection (SetFaultInjection) needs it.
		FaultInjection: true,
		Logger:         s.log.With("volume", rec.Name),
	})
	if err != nil {
		return nil, fmt.Errorf("open volume %q: %w", rec.Name, err)
	}
	if rec.Backend == string(engine.BackendBlock) {
		rec.SizeBytes = ev.Size()
	} else if ev.Size() < rec.SizeBytes {
		ev.Close()
		return nil, fmt.Errorf("volume %q: data file %s is %d bytes, shorter than the volume's %d bytes in the catalog", rec.Name, rec.Path, ev.Size(), rec.SizeBytes)
	} else if ev.Size() != rec.SizeBytes {
		s.log.Warn("data file size differs from the catalog; using the file's", "volume", rec.Name, "catalog", rec.SizeBytes, "file", ev.Size())
		rec.SizeBytes = ev.Size()
	}
	vol := engine.Volume(ev)
	naa, err := hex.DecodeString(rec.NAA)
	if err != nil {
		vol.Close()
		return nil, fmt.Errorf("volume %q: NAA %q: %w", rec.Name, rec.NAA, err)
	}
	pr, err := s.loadReservation(rec.Name)
	if err != nil {
		vol.Close()
		return nil, err
	}
	name := rec.Name
	locks := new(rangelock.Locks)
	lu := scsi.NewLogicalUnit(vol, scsi.LUConfig{
		RangeLocks:     locks,
		VendorID:       "ANVIL",
		ProductID:      "Anvil Volume",
		Revision:       "0001",
		Serial:         rec.Serial,
		NAA:            naa,
		PR:             pr,
		SavePR:         func(st scsi.PRState) error { return s.saveReservation(name, st) },
		SaveWriteCache: func(on bool) error { return s.saveWriteCache(name, on) },
		Logger:         s.log.With("volume", rec.Name),
	})
	return &liveVolume{rec: rec, vol: vol, lu: lu, locks: locks}, nil
}

// loadReservation reads the persistent reservation state a volume's logical
// unit saved with APTPL, or nil if it has none.
func (s *Service) loadReservation(volume string) (*scsi.PRState, error) {
	var raw []byte
	s.cat.View(func(tx *catalog.Tx) error { raw = tx.Reservation(volume); return nil })
	if raw == nil {
		return nil, nil
	}
	var st scsi.PRState
	if err := json.Unmarshal(raw, &st); err != nil {
		return nil, fmt.Errorf("volume %q: saved reservation state: %w", volume, err)
	}
	return &st, nil
}

// saveReservation persists a logical unit's reservation state (APTPL). The
// SCSI core calls it before it answers PERSISTENT RESERVE OUT, so an
// acknowledged APTPL change survives a restart. It does not take s.mu:
// the catalog transaction is its own lock.
func (s *Service) saveReservation(volume string, st scsi.PRState) error {
	var raw []byte
	if st.APTPL || len(st.Registrations) > 0 {
		var err error
		if raw, err = json.Marshal(st); err != nil {
			return err
		}
	}
	return s.cat.Update(func(tx *catalog.Tx) error { return tx.PutReservation(volume, raw) })
}

// saveWriteCache records a write cache change made by an initiator (MODE
// SELECT of the caching page) so that WCE survives a restart.
func (s *Service) saveWriteCache(volume string, on bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lv, ok := s.volumes[volume]
	if !ok || lv.rec.WriteCache == on {
		return nil
	}
	rec := lv.rec
	rec.WriteCache = on
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutVolume(rec) }); err != nil {
		return fmt.Errorf("save write cache of volume %q: %w", volume, err)
	}
	lv.rec = rec
	return nil
}

// Volume returns a volume's record, also for an offline volume.
func (s *Service) Volume(name string) (catalog.Volume, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	lv, ok := s.volumes[name]
	if !ok {
		if off, ok := s.offline[name]; ok {
			return off.rec, nil
		}
		return catalog.Volume{}, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	return lv.rec, nil
}

// EngineVolume returns the open engine volume (for statistics).
func (s *Service) EngineVolume(name string) (engine.Volume, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	lv, ok := s.volumes[name]
	if !ok {
		if err := s.offlineErrLocked(name); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("volume %q: %w", name, ErrNotFound)
	}
	return lv.vol, nil
}

// Volumes lists every volume's record, offline ones included, sorted by
// name.
func (s *Service) Volumes() []catalog.Volume {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]catalog.Volume, 0, len(s.volumes)+len(s.offline))
	for _, lv := range s.volumes {
		out = append(out, lv.rec)
	}
	for _, off := range s.offline {
		out = append(out, off.rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// DeleteVolume closes and removes a volume and its data file. A volume
// mapped by a target or exported as a namespace is refused with ErrInUse
// unless force is set, in which case its mappings and namespaces are
// removed first. An offline volume is deleted the
// same way (whatever is left of its files goes).
func (s *Service) DeleteVolume(name string, force bool) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lv, ok := s.volumes[name]
	if !ok {
		off, ok := s.offline[name]
		if !ok {
			return fmt.Errorf("volume %q: %w", name, ErrNotFound)
		}
		lv = &liveVolume{rec: off.rec}
	}
	var mappedBy, exportedBy []string
	err := s.cat.Update(func(tx *catalog.Tx) error {
		var err error
		if mappedBy, err = tx.MappedBy(name); err != nil {
			return err
		}
		if exportedBy, err = tx.ExportedBy(name); err != nil {
			return err
		}
		if users := append(append([]string(nil), mappedBy...), exportedBy...); len(users) > 0 && !force {
			return fmt.Errorf("volume %q is mapped by %s: %w", name, strings.Join(users, ", "), ErrInUse)
		}
		for _, nqn := range exportedBy {
			sub, err := tx.Subsystem(nqn)
			if err != nil {
				return err
			}
			sub.Namespaces = dropNamespaces(sub.Namespaces, name)
			if err := tx.PutSubsystem(sub); err != nil {
				return err
			}
		}
		for _, iqn := range mappedBy {
			tg, err := tx.Target(iqn)
			if err != nil {
				return err
			}
			tg.LUNs = dropVolume(tg.LUNs, name)
			if err := tx.PutTarget(tg); err != nil {
				return err
			}
		}
		return tx.DeleteVolume(name)
	})
	if err != nil {
		return err
	}
	for _, iqn := range mappedBy {
		lt := s.targets[strings.ToLower(iqn)]
		for _, l := range lt.rec.LUNs {
			if l.Volume == name && lv.vol != nil {
				lt.scsi.RemoveLUN(l.LUN)
			}
		}
		lt.rec.LUNs = dropVolume(lt.rec.LUNs, name)
	}
	for _, nqn := range exportedBy {
		ls := s.subsystems[nqn]
		for _, n := range ls.rec.Namespaces {
			if n.Volume == name && lv.vol != nil {
				ls.nvme.RemoveNamespace(n.NSID)
			}
		}
		ls.rec.Namespaces = dropNamespaces(ls.rec.Namespaces, name)
	}
	delete(s.volumes, name)
	delete(s.offline, name)
	if lv.vol != nil {
		if err := lv.vol.Close(); err != nil {
			s.log.Warn("closing deleted volume", "volume", name, "err", err)
		}
	}
	if err := s.removeFiles(lv.rec); err != nil {
		return err
	}
	s.log.Info("deleted volume", "volume", name, "unmapped_from", mappedBy, "unexported_from", exportedBy)
	return nil
}

func dropVolume(luns []catalog.LUN, name string) []catalog.LUN {
	out := luns[:0:0]
	for _, l := range luns {
		if l.Volume != name {
			out = append(out, l)
		}
	}
	return out
}

func dropNamespaces(nss []catalog.Namespace, name string) []catalog.Namespace {
	out := []catalog.Namespace{}
	for _, n := range nss {
		if n.Volume != name {
			out = append(out, n)
		}
	}
	return out
}
