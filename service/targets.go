package service

import (
	"fmt"
	"regexp"
	"sort"
	"strings"
	"time"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/target/scsi"
)

// liveTarget is a running target: its catalog record and the SCSI target
// that routes commands to its LUNs. It is what the iSCSI front end sees
// through iscsi.Registry.
type liveTarget struct {
	svc  *Service
	rec  catalog.Target
	scsi *scsi.Target
}

// Name returns the target's IQN.
func (t *liveTarget) Name() string { return t.rec.IQN }

// Alias returns the target's alias, sent as TargetAlias at login.
func (t *liveTarget) Alias() string {
	t.svc.mu.RLock()
	defer t.svc.mu.RUnlock()
	return t.rec.Alias
}

// Allow reports whether the ACL admits the initiator.
func (t *liveTarget) Allow(initiator string) bool {
	t.svc.mu.RLock()
	defer t.svc.mu.RUnlock()
	return allowed(t.rec.ACL, initiator)
}

func allowed(acl catalog.ACL, initiator string) bool {
	if acl.Open {
		return true
	}
	for _, name := range acl.Initiators {
		if strings.EqualFold(name, initiator) {
			return true
		}
	}
	return false
}

// Tasks hands the iSCSI front end the SCSI target itself, as its task
// manager: commands and task management go straight to the SCSI core.
func (t *liveTarget) Tasks() *scsi.TaskManager { return t.scsi.Tasks() }

// CHAP returns the target's CHAP credentials, or nil when login needs none.
func (t *liveTarget) CHAP() *catalog.CHAP {
	t.svc.mu.RLock()
	defer t.svc.mu.RUnlock()
	if t.rec.CHAP == nil {
		return nil
	}
	c := *t.rec.CHAP
	return &c
}

// ---- iscsi.Registry ----

// Target resolves a target by IQN for a login (case-insensitively, as
// RFC 3722 normalises iSCSI names).
func (s *Service) Target(iqn string) (*liveTarget, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.targets[strings.ToLower(iqn)]
	return t, ok
}

// Targets lists the IQNs of the targets whose ACL admits initiator, for
// SendTargets discovery: an initiator never learns of targets it may not
// log in to.
func (s *Service) Targets(initiator string) []string {
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []string
	for _, t := range s.targets {
		if allowed(t.rec.ACL, initiator) {
			out = append(out, t.rec.IQN)
		}
	}
	sort.Strings(out)
	return out
}

// ---- target management ----

// TargetSpec is a request to create a target.
type TargetSpec struct {
	IQN   string
	Alias string
	ACL   catalog.ACL
}

// iscsiName matches the iqn., eui. and naa. name formats of RFC 3720
// §3.2.6.3 after RFC 3722 normalisation (lower case).
var iscsiName = regexp.MustCompile(`^(iqn\.[0-9]{4}-(0[1-9]|1[0-2])\.[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*(:[a-z0-9.:-]+)?|eui\.[0-9a-f]{16}|naa\.([0-9a-f]{16}|[0-9a-f]{32}))$`)

// ValidateIQN checks an iSCSI name and returns its normalised (lower-case)
// form.
func ValidateIQN(field, name string) (string, error) {
	n := strings.ToLower(name)
	if len(n) > 223 || !iscsiName.MatchString(n) {
		return "", invalid(field, "%q is not a valid iSCSI name (iqn.YYYY-MM.reversed.domain[:suffix], eui.<16 hex> or naa.<16|32 hex>)", name)
	}
	return n, nil
}

// CreateTarget creates a target with no LUNs.
func (s *Service) CreateTarget(spec TargetSpec) (catalog.Target, error) {
	iqn, err := ValidateIQN("iqn", spec.IQN)
	if err != nil {
		return catalog.Target{}, err
	}
	if len(spec.Alias) > 255 {
		return catalog.Target{}, invalid("alias", "longer than 255 bytes")
	}
	acl := spec.ACL
	for i, name := range acl.Initiators {
		if acl.Initiators[i], err = ValidateIQN(fmt.Sprintf("acl.initiators[%d]", i), name); err != nil {
			return catalog.Target{}, err
		}
	}
	rec := catalog.Target{IQN: iqn, Alias: spec.Alias, ACL: acl, LUNs: []catalog.LUN{}, Created: time.Now().UTC()}

	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.targets[iqn]; ok {
		return catalog.Target{}, fmt.Errorf("target %q: %w", iqn, ErrExists)
	}
	lt, err := s.buildTarget(rec)
	if err != nil {
		return catalog.Target{}, err
	}
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.CreateTarget(rec) }); err != nil {
		return catalog.Target{}, err
	}
	s.targets[iqn] = lt
	s.log.Info("created target", "target", iqn)
	return rec, nil
}

// buildTarget makes the running SCSI target for rec. The caller holds mu
// (or is restoring before anyone else can see the service).
func (s *Service) buildTarget(rec catalog.Target) (*liveTarget, error) {
	st := scsi.NewTarget(rec.IQN)
	for _, l := range rec.LUNs {
		lv, ok := s.volumes[l.Volume]
		if !ok {
			if _, off := s.offline[l.Volume]; off {
				// Not served (the LUN is absent) until RecheckVolume
				// brings the volume back.
				s.log.Warn("LUN left out: its volume is offline", "target", rec.IQN, "lun", l.LUN, "volume", l.Volume)
				continue
			}
			return nil, fmt.Errorf("target %q LUN %d: volume %q: %w", rec.IQN, l.LUN, l.Volume, ErrNotFound)
		}
		if err := st.AddLUN(l.LUN, lv.lu); err != nil {
			return nil, fmt.Errorf("target %q: %w", rec.IQN, err)
		}
	}
	return &liveTarget{svc: s, rec: rec, scsi: st}, nil
}

// GetTarget returns a target's record.
func (s *Service) GetTarget(iqn string) (catalog.Target, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	t, ok := s.targets[strings.ToLower(iqn)]
	if !ok {
		return catalog.Target{}, fmt.Errorf("target %q: %w", iqn, ErrNotFound)
	}
	return t.rec, nil
}

// ListTargets returns every target's record, sorted by IQN.
func (s *Service) ListTargets() []catalog.Target {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make([]catalog.Target, 0, len(s.targets))
	for _, t := range s.targets {
		out = append(out, t.rec)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].IQN < out[j].IQN })
	return out
}

// DeleteTarget removes a target. Sessions logged in to it are dropped
// (through the access hook); new logins fail.
func (s *Service) DeleteTarget(iqn string) error {
	key := strings.ToLower(iqn)
	// Deferred before the unlock, so it runs after it: the hook looks the
	// target up again.
	defer s.accessChanged()
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.targets[key]; !ok {
		return fmt.Errorf("target %q: %w", iqn, ErrNotFound)
	}
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.DeleteTarget(key) }); err != nil {
		return err
	}
	delete(s.targets, key)
	s.log.Info("deleted target", "target", key)
	return nil
}

// MaxLUN is the highest LUN Anvil maps: SAM-5 flat space addressing holds
// 14 bits.
const MaxLUN = 16383

// MapLUN exports a volume as a LUN of a target. A volume may be mapped by
// several targets (multipath through different target names).
func (s *Service) MapLUN(iqn string, lun uint64, volume string) error {
	if lun > MaxLUN {
		return invalid("lun", "%d: must be 0..%d", lun, MaxLUN)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	lt, ok := s.targets[strings.ToLower(iqn)]
	if !ok {
		return fmt.Errorf("target %q: %w", iqn, ErrNotFound)
	}
	lv, ok := s.volumes[volume]
	if !ok {
		return s.missingLocked(volume)
	}
	for _, l := range lt.rec.LUNs {
		if l.LUN == lun {
			return fmt.Errorf("target %q LUN %d is mapped to volume %q: %w", lt.rec.IQN, lun, l.Volume, ErrExists)
		}
	}
	rec := lt.rec
	rec.LUNs = append(append([]catalog.LUN(nil), rec.LUNs...), catalog.LUN{LUN: lun, Volume: volume})
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutTarget(rec) }); err != nil {
		return err
	}
	if err := lt.scsi.AddLUN(lun, lv.lu); err != nil {
		return fmt.Errorf("target %q: %w", rec.IQN, err)
	}
	sort.Slice(rec.LUNs, func(i, j int) bool { return rec.LUNs[i].LUN < rec.LUNs[j].LUN })
	lt.rec = rec
	s.log.Info("mapped LUN", "target", rec.IQN, "lun", lun, "volume", volume)
	return nil
}

// UnmapLUN removes a LUN from a target.
func (s *Service) UnmapLUN(iqn string, lun uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	lt, ok := s.targets[strings.ToLower(iqn)]
	if !ok {
		return fmt.Errorf("target %q: %w", iqn, ErrNotFound)
	}
	rec := lt.rec
	rec.LUNs = nil
	var volume string
	for _, l := range lt.rec.LUNs {
		if l.LUN != lun {
			rec.LUNs = append(rec.LUNs, l)
		} else {
			volume = l.Volume
		}
	}
	if len(rec.LUNs) == len(lt.rec.LUNs) {
		return fmt.Errorf("target %q LUN %d: %w", lt.rec.IQN, lun, ErrNotFound)
	}
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutTarget(rec) }); err != nil {
		return err
	}
	// An offline volume's LUN was never added to the live target.
	if _, off := s.offline[volume]; off {
		lt.rec = rec
		s.log.Info("unmapped LUN of an offline volume", "target", rec.IQN, "lun", lun, "volume", volume)
		return nil
	}
	if err := lt.scsi.RemoveLUN(lun); err != nil {
		return fmt.Errorf("target %q: %w", rec.IQN, err)
	}
	lt.rec = rec
	s.log.Info("unmapped LUN", "target", rec.IQN, "lun", lun)
	return nil
}

// SetACL replaces a target's access list.
func (s *Service) SetACL(iqn string, acl catalog.ACL) error {
	var err error
	for i, name := range acl.Initiators {
		if acl.Initiators[i], err = ValidateIQN(fmt.Sprintf("initiators[%d]", i), name); err != nil {
			return err
		}
	}
	rec, err := s.updateTarget(iqn, func(rec *catalog.Target) error { rec.ACL = acl; return nil })
	if err != nil {
		return err
	}
	s.log.Info("set ACL", "target", rec.IQN, "open", acl.Open, "initiators", len(acl.Initiators))
	s.accessChanged()
	return nil
}

// updateTarget applies change to a copy of a target's record, saves it in
// one catalog transaction and only then makes it the live record, so a
// failed save changes nothing.
func (s *Service) updateTarget(iqn string, change func(*catalog.Target) error) (catalog.Target, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	lt, ok := s.targets[strings.ToLower(iqn)]
	if !ok {
		return catalog.Target{}, fmt.Errorf("target %q: %w", iqn, ErrNotFound)
	}
	rec := lt.rec
	if err := change(&rec); err != nil {
		return catalog.Target{}, err
	}
	if err := s.cat.Update(func(tx *catalog.Tx) error { return tx.PutTarget(rec) }); err != nil {
		return catalog.Target{}, err
	}
	lt.rec = rec
	return rec, nil
}
