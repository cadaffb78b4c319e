// Package config is Lookaside's configuration tree: one YAML file with a
// section per concern (Consul, limits, load reports, DNS, TLS, admin) and a
// section per service, its defaults, and the one validation rule every
// value goes through: a bad value is rejected with its field's path and the
// value, every error at once, and nothing is clamped silently.
package config
