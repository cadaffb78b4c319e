# The Consul ACL policy a Lookaside replica needs (Consul 1.4 and later,
# checked with 1.13.9 by e2e/deploy_test.go, TestDeployACLPolicy).
#
#   consul acl policy create -name lookaside -rules @lookaside-acl.hcl \
#       -description "Lookaside balancer replicas"
#   consul acl token create -description "lookaside on $(hostname)" -policy-name lookaside
#
# Put the token's SecretID in a file only the lookaside user can read and
# name it in consul.token_file (or -consul-token-file). docs/deploy.md says
# more.

# Reading backends. The balancer asks /v1/catalog/services (which services
# exist), /v1/health/state/any (whose checks changed) and
# /v1/health/service/<name> (the instances of a watched service). Consul
# filters those answers by ACL: an instance is only returned when the token
# may read its service AND its node, so without node read every instance is
# hidden and clients get fallback. To limit the balancer to some services,
# replace "" with a prefix (service_prefix "user-") or list services one by
# one; node read is still needed for the nodes they run on.
service_prefix "" {
  policy = "read"
}
node_prefix "" {
  policy = "read"
}

# Registering the replica itself (register.enabled, or -register): the
# agent's /v1/agent/service/register and /deregister need write on the
# service name the replicas register under (register.service, default
# "lookaside"). Leave this block out when replicas do not register.
service "lookaside" {
  policy = "write"
}

# /v1/status/leader (the probe while Consul is unreachable) needs no ACL.
