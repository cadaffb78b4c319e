package lbserver

import (
	"errors"
	"fmt"
	"maps"
	"slices"
)

// Reconfigure validates set and makes it the settings in force, or returns
// every error (each naming the setting and its value) and changes nothing.
// No stream is dropped: limits apply to the streams and connections that
// come next (a limit lowered below the count open refuses new ones only);
// per-service settings, policies and drop bounds reach the watched
// services' streams at once, as new lists where their lists change; a
// stream whose name an alias or zone change maps to another service moves
// to it (Observer: OutcomeMoved, then StreamStarted). MaxStreamsPerConn
// may not be raised above its value at New (HTTP/2's bound, see
// Settings.MaxStreamsPerConn). Safe for concurrent use; calls are
// serialized; it does not wait for the streams.
func (s *Server) Reconfigure(set Settings) error {
	errs := set.validate(s.cfg.MaxNameLength, s.cfg.ClientStatsInterval > 0)
	if set.MaxStreamsPerConn > s.cfg.MaxStreamsPerConn {
		errs = append(errs, fmt.Errorf("max streams per connection %d is above %d, its value at start, which bounds HTTP/2 streams per connection; restart to raise it",
			set.MaxStreamsPerConn, s.cfg.MaxStreamsPerConn))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lbserver: invalid settings: %w", err)
	}
	l, err := newLive(set, s.cfg.MaxNameLength)
	if err != nil {
		return fmt.Errorf("lbserver: invalid settings: %w", err)
	}

	s.reconfMu.Lock()
	defer s.reconfMu.Unlock()
	old := s.set.Swap(l)
	s.slots.set(set.MaxStreams, set.MaxStreamsPerIP, set.MaxStreamsPerConn)
	s.conns.set(set.MaxConns, set.MaxConnsPerIP)
	s.rates.set(set.MaxStreamRatePerIP, float64(set.StreamBurstPerIP))
	s.clientStats.SetMaxCallRate(set.MaxClientCallRate)
	// Streams re-map their names; planners take the new settings.
	close(old.changed)
	for _, svc := range s.reg.all() {
		svc.wake()
		svc.wakeParked()
	}
	s.log.Info("settings reloaded", "policy", set.Policy, "services", len(set.Services), "aliases", len(set.Aliases),
		"zones", len(set.Zones), "max_streams", set.MaxStreams)
	return nil
}

// Settings returns a copy of the settings in force: as given to New or
// the last successful Reconfigure, with Aliases and the keys of Services
// in canonical form. Safe for concurrent use.
func (s *Server) Settings() Settings {
	set := s.live().Settings
	set.Services = maps.Clone(set.Services)
	set.Aliases = maps.Clone(set.Aliases)
	set.Zones = slices.Clone(set.Zones)
	return set
}
