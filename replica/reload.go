package replica

import (
	"log/slog"

	"github.com/lookaside-lb/lookaside/config"
	"github.com/lookaside-lb/lookaside/internal/tlsfiles"
)

// Reload applies next's reloadable part to the running replica: the
// services section, the balancer's defaults, limits, rate-limit and
// overload knobs, the log level and the TLS certificates (read again from
// their files). A next that fails validation, or that the balancer
// refuses, changes nothing and is returned as the error. Settings that
// only take effect on restart (listen addresses, Consul, registration,
// DNS, admin) keep their running values; a warning names them. Safe for
// concurrent use.
func (r *Replica) Reload(next config.Config) error {
	if err := next.Validate(); err != nil {
		return err
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	// Certificates first: one that does not load refuses the whole reload.
	for _, s := range []*tlsfiles.Store{r.serverTLS, r.orcaTLS} {
		if s == nil {
			continue
		}
		if err := s.Reload(); err != nil {
			return err
		}
	}
	if err := r.srv.Reconfigure(lbSettings(next)); err != nil {
		return err
	}
	if r.level != nil {
		var l slog.Level
		if err := l.UnmarshalText([]byte(next.Log.Level)); err == nil {
			r.level.Set(l)
		}
	}
	if restart := r.cfg.Reloadable(next); len(restart) > 0 {
		r.log.Warn("reload: these settings only change on restart and keep their running values", "fields", restart)
	}
	for _, w := range Warnings(next) {
		r.log.Warn("configuration: " + w)
	}
	r.cfg = next
	return nil
}
