package service

import "github.com/anvilproject/anvil/target/iscsi"

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

// Credentials implements iscsi.CHAPTarget: once a target has CHAP
// credentials, every normal-session login to it must authenticate.
func (t *liveTarget) Credentials(string) iscsi.CHAPCredentials {
	c := t.CHAP()
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

var _ iscsi.CHAPTarget = (*liveTarget)(nil)
