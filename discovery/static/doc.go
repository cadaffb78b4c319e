// Package static is the embedded discovery.Source: a fixed list of endpoints
// per service, for demos, tests and users without Consul.
//
// The list comes from a flag value (ParseSpec) or a JSON file (LoadFile),
// or is built in code. It never changes: Watch publishes a service's
// snapshot once and then waits for its context. A service the list does not
// name positively has no instances, so it gets an empty snapshot; so does a
// name with a tag filter ("user-srv@srv"), since static endpoints carry no
// tags.
package static
