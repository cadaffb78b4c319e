#!/usr/bin/env bash
# Builds the Consul release pinned by tools/consul from source (never a
# prebuilt download) into a per-user cache, once, and prints the binary's
# absolute path on stdout. Logs go to stderr.
#
#   LOOKASIDE_CACHE  cache directory (default: $HOME/.cache/lookaside)
#
# Tests find the binary there on their own (internal/consultest); set
# LOOKASIDE_CONSUL to use another one.
set -euo pipefail

version=v1.13.9

script_dir=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd -P)
repo_root=$(cd -- "$script_dir/.." && pwd -P)
tools_dir=$repo_root/tools/consul

cache=${LOOKASIDE_CACHE:-${HOME:?HOME is not set}/.cache/lookaside}
mkdir -p -- "$cache"
cache=$(cd -- "$cache" && pwd -P)
dest_dir=$cache/consul-$version
dest=$dest_dir/consul

log() { printf 'consul.sh: %s\n' "$*" >&2; }

if [[ -x $dest ]]; then
	printf '%s\n' "$dest"
	exit 0
fi

pinned=$(cd -- "$tools_dir" && go list -m -f '{{.Version}}' github.com/hashicorp/consul)
if [[ $pinned != "$version" ]]; then
	log "tools/consul pins github.com/hashicorp/consul $pinned, this script expects $version"
	exit 1
fi

mkdir -p -- "$dest_dir"
tmp=$(mktemp "$dest_dir/.consul.XXXXXX")
trap 'rm -f -- "$tmp"' EXIT

log "building Consul $version from source into $dest (takes a few minutes the first time)"
start=$SECONDS
(
	cd -- "$tools_dir"
	CGO_ENABLED=0 go build -mod=readonly -trimpath \
		-ldflags "-s -w" \
		-o "$tmp" github.com/hashicorp/consul
) >&2
chmod 0755 "$tmp"
"$tmp" version >&2
mv -f -- "$tmp" "$dest"
trap - EXIT
log "built in $((SECONDS - start))s"
printf '%s\n' "$dest"
