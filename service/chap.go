package service

import (
	"fmt"
	"maps"

	"github.com/anvilproject/anvil/catalog"
)

// SetAccessHook sets the function called after every change that can
// revoke a live session's access: an ACL replaced, CHAP credentials
// (target-wide, per initiator or for discovery) set or removed, a target
// deleted. The daemon passes the iSCSI server's Revalidate, which drops
// the sessions that may no longer exist. It is called without the
// service's lock held.
func (s *Service) SetAccessHook(fn func()) {
	if fn == nil {
		s.accessHook.Store(nil)
		return
	}
	s.accessHook.Store(&fn)
}

func (s *Service) accessChanged() {
	if fn := s.accessHook.Load(); fn != nil {
		(*fn)()
	}
}

// DiscoveryCHAP returns the credentials discovery sessions must use, or
// nil when discovery needs no authentication.
func (s *Service) DiscoveryCHAP() *catalog.CHAP {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.discCHAP == nil {
		return nil
	}
	c := *s.discCHAP
	return &c
}

// SetDiscoveryCHAP sets (or with nil, removes) the CHAP credentials of
// discovery sessions. Once set, SendTargets discovery needs them; the
// change applies to new logins at once and drops discovery sessions
// logged in under the old setting.
func (s *Service) SetDiscoveryCHAP(c *catalog.CHAP) error {
	c, err := validCHAP(c)
	if err != nil {
		return err
	}
	s.mu.Lock()
	err = s.cat.Update(func(tx *catalog.Tx) error { return tx.SetDiscoveryCHAP(c) })
	if err == nil {
		s.discCHAP = c
	}
	s.mu.Unlock()
	if err != nil {
		return fmt.Errorf("set discovery CHAP: %w", err)
	}
	s.log.Info("set discovery CHAP", "enabled", c != nil, "mutual", c != nil && c.MutualUser != "")
	s.accessChanged()
	return nil
}

// SetInitiatorCHAP sets (or with nil, removes) the CHAP credentials one
// initiator uses on a target, in place of the target-wide ones. Sessions
// of that initiator logged in under other credentials are dropped.
func (s *Service) SetInitiatorCHAP(iqn, initiator string, c *catalog.CHAP) error {
	ini, err := ValidateIQN("initiator", initiator)
	if err != nil {
		return err
	}
	if c, err = validCHAP(c); err != nil {
		return err
	}
	rec, err := s.updateTarget(iqn, func(rec *catalog.Target) error {
		m := maps.Clone(rec.InitiatorCHAP)
		if c == nil {
			if _, ok := m[ini]; !ok {
				return fmt.Errorf("target %q has no CHAP credentials for initiator %q: %w", rec.IQN, ini, ErrNotFound)
			}
			delete(m, ini)
		} else {
			if m == nil {
				m = map[string]catalog.CHAP{}
			}
			m[ini] = *c
		}
		if len(m) == 0 {
			m = nil
		}
		rec.InitiatorCHAP = m
		return nil
	})
	if err != nil {
		return err
	}
	s.log.Info("set initiator CHAP", "target", rec.IQN, "initiator", ini, "enabled", c != nil,
		"mutual", c != nil && c.MutualUser != "")
	s.accessChanged()
	return nil
}
