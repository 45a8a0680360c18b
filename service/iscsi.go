package service

import (
	"strings"

	"github.com/anvilproject/anvil/catalog"
	"github.com/anvilproject/anvil/target/iscsi"
)

// ISCSIRegistry returns the view of the service the iSCSI front end
// resolves logins and discovery through.
func (s *Service) ISCSIRegistry() iscsi.Registry { return iscsiRegistry{s} }

type iscsiRegistry struct{ s *Service }

func (r iscsiRegistry) Target(iqn string) (iscsi.Target, bool) {
	t, ok := r.s.Target(iqn)
	if !ok {
		return nil, false
	}
	return t, true
}

func (r iscsiRegistry) Targets(initiator string) []string { return r.s.Targets(initiator) }

// DiscoveryCredentials implements iscsi.DiscoveryCHAP: once discovery CHAP
// is set, every discovery session must authenticate with it.
func (r iscsiRegistry) DiscoveryCredentials(string) iscsi.CHAPCredentials {
	return credentials(r.s.DiscoveryCHAP())
}

// Credentials implements iscsi.CHAPTarget: an initiator with credentials
// of its own on the target must log in with those; otherwise, once the
// target has CHAP credentials, every normal-session login to it must
// authenticate with them.
func (t *liveTarget) Credentials(initiator string) iscsi.CHAPCredentials {
	t.svc.mu.RLock()
	c, ok := t.rec.InitiatorCHAP[strings.ToLower(initiator)]
	t.svc.mu.RUnlock()
	if ok {
		return credentials(&c)
	}
	return credentials(t.CHAP())
}

func credentials(c *catalog.CHAP) iscsi.CHAPCredentials {
	if c == nil {
		return iscsi.CHAPCredentials{}
	}
	return iscsi.CHAPCredentials{
		Required:     true,
		User:         c.User,
		Secret:       c.Secret,
		MutualUser:   c.MutualUser,
		MutualSecret: c.MutualSecret,
	}
}

var (
	_ iscsi.CHAPTarget    = (*liveTarget)(nil)
	_ iscsi.DiscoveryCHAP = iscsiRegistry{}
)
