// Package all registers every policy of this module. Import it for its side
// effect:
//
//	import _ "github.com/lookaside-lb/lookaside/policy/all"
package all

import (
	_ "github.com/lookaside-lb/lookaside/policy/leastconn"          // least_connections
	_ "github.com/lookaside-lb/lookaside/policy/leastload"          // least_load
	_ "github.com/lookaside-lb/lookaside/policy/random"             // random
	_ "github.com/lookaside-lb/lookaside/policy/roundrobin"         // round_robin
	_ "github.com/lookaside-lb/lookaside/policy/sourcehash"         // source_hash
	_ "github.com/lookaside-lb/lookaside/policy/weightedrandom"     // weighted_random
	_ "github.com/lookaside-lb/lookaside/policy/weightedroundrobin" // weighted_round_robin
)
