// Package config is Lookaside's configuration tree: one YAML file with a
// section per concern (Consul, limits, load reports, DNS, TLS, admin) and a
// section per service, its defaults, and the one validation rule every
// value goes through: a bad value is rejected with its field's path and the
// value, every error at once, and nothing is clamped silently.
//
// Default is the configuration of an empty file (the defaults of
// lbserver's flags). Parse and Load decode a file on top of it strictly:
// unknown keys, ill-typed values and keys set twice are errors with their
// line. Validate checks every field by the bounds the packages enforce and
// the fields against each other. Both return Errors, one FieldError per
// problem; LoadValid does both and Locate gives validation errors the
// line of their key in the file. Reloadable tells which changed fields a running replica cannot
// apply without a restart. Marshal prints the effective configuration,
// secrets redacted. Aliases, Zones, ChildPolicies and Canonical give the
// names in the form lbserver and dnsserver take them.
//
// Everything here is a pure function of its inputs (Validate and Load also
// read files) and safe for concurrent use. docs/config.md describes every
// key.
package config
